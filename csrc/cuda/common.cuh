// Device helpers shared by the CUDA kernel files.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "cuda/kernels.h"

namespace xsil::cuda {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ int warp_sum_i(int v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float h2f(uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ uint16_t f2h(float f) { return __half_as_ushort(__float2half_rn(f)); }

// 16-byte streaming load (weights are read once per token: keep them out of L1).
__device__ __forceinline__ uint4 ld_stream16(const void* p) { return __ldcs((const uint4*)p); }

// One warp quantizes one 32-block (lane = element) to q8a, exactly as k_quantize_q8a.
__device__ __forceinline__ void quant_block_warp(float v, int lane, int8_t* qs, float* d_out, float* s_out) {
  const float amax = warp_max(fabsf(v));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  const float t = v * id;
  const int q = isfinite(t) ? (int)roundf(t) : 0;
  qs[lane] = (int8_t)q;
  const int sum = warp_sum_i(q);
  if (lane == 0) {
    *d_out = d;
    *s_out = d * (float)sum;
  }
}

// Q4_K sub-block j (0..7): 6-bit scale and min from the 12 packed bytes (GGUF get_scale_min_k4).
__host__ __device__ __forceinline__ void q4k_sc_m(int j, const uint8_t* q, int* sc, int* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Tensor cores: D = A . B + C for one 16x32 (A, int8, row-major) by 32x8 (B, int8, column-major)
// tile, int32 accumulate: PTX `mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32`, executed by the
// whole warp (every lane must call it, converged). Fragments, with g = lane >> 2, t = lane & 3,
// byte i of a register = element i (low byte first):
//   a[0]: A row g,   k 4t..4t+3        a[1]: A row g+8, k 4t..4t+3
//   a[2]: A row g,   k 16+4t..16+4t+3  a[3]: A row g+8, k 16+4t..16+4t+3
//   b[0]: B col g,   k 4t..4t+3        b[1]: B col g,   k 16+4t..16+4t+3
//   c[0], c[1]: row g, cols 2t, 2t+1   c[2], c[3]: row g+8, cols 2t, 2t+1
// (PTX ISA, section "Matrix Fragments for mma.m16n8k32", .s8/.u8 multiplicands and .s32
// accumulators: 9.7.13.4.10 in PTX ISA 8.x, 9.7.15.5.10 in 9.x.) c is read and overwritten with D.
#ifndef XSIL_CUDA_EMU
__device__ __forceinline__ void mma_s8_m16n8k32(int c[4], const uint32_t a[4], const uint32_t b[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  __trap();  // the build targets sm_80+; the host dispatch never selects this kernel below that
#endif
}
#else
// Emulator model of the same instruction, written from the PTX fragment tables above (not from the
// kernels that use it): every lane publishes its registers, the full A, B, C matrices are rebuilt
// from the documented (row, col) of each fragment element, and each lane takes its own D elements.
// Each matrix element must be covered exactly once; anything else aborts.
__device__ inline void mma_s8_m16n8k32(int c[4], const uint32_t a[4], const uint32_t b[2]) {
  struct Frag {
    uint32_t a[4], b[2];
    int32_t c[4];
  };
  Frag mine;
  for (int i = 0; i < 4; ++i) mine.a[i] = a[i], mine.c[i] = c[i];
  mine.b[0] = b[0];
  mine.b[1] = b[1];
  Frag all[32];
  xemu::warp_allgather(&mine, all, sizeof(Frag));
  int A[16][32], B[32][8], C[16][8];
  int seenA[16][32] = {}, seenB[32][8] = {}, seenC[16][8] = {};
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 16; ++i) {  // A: a0..a15, 4 per register
      const int row = (i < 4 || (i >= 8 && i < 12)) ? g : g + 8;
      const int col = t * 4 + (i & 3) + (i >= 8 ? 16 : 0);
      A[row][col] = (int8_t)((all[lane].a[i / 4] >> (8 * (i & 3))) & 0xFF);
      ++seenA[row][col];
    }
    for (int i = 0; i < 8; ++i) {  // B: b0..b7, 4 per register
      const int row = t * 4 + (i & 3) + (i >= 4 ? 16 : 0);
      const int col = g;
      B[row][col] = (int8_t)((all[lane].b[i / 4] >> (8 * (i & 3))) & 0xFF);
      ++seenB[row][col];
    }
    for (int i = 0; i < 4; ++i) {  // C: c0..c3
      const int row = i < 2 ? g : g + 8;
      const int col = t * 2 + (i & 1);
      C[row][col] = all[lane].c[i];
      ++seenC[row][col];
    }
  }
  for (int r = 0; r < 16; ++r)
    for (int k = 0; k < 32; ++k)
      if (seenA[r][k] != 1) __builtin_trap();
  for (int k = 0; k < 32; ++k)
    for (int n = 0; n < 8; ++n)
      if (seenB[k][n] != 1) __builtin_trap();
  for (int r = 0; r < 16; ++r)
    for (int n = 0; n < 8; ++n)
      if (seenC[r][n] != 1) __builtin_trap();
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  for (int i = 0; i < 4; ++i) {
    const int row = i < 2 ? g : g + 8, col = t * 2 + (i & 1);
    int acc = C[row][col];
    for (int k = 0; k < 32; ++k) acc += A[row][k] * B[k][col];
    c[i] = acc;
  }
}
#endif

inline unsigned grid1(int64_t n, int threads) { return (unsigned)((n + threads - 1) / threads); }

inline void require(bool ok, const char* kernel, const std::string& msg) {
  if (!ok) throw std::invalid_argument(std::string("[cuda:") + kernel + "] " + msg);
}

}  // namespace xsil::cuda
