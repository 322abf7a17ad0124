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

inline unsigned grid1(int64_t n, int threads) { return (unsigned)((n + threads - 1) / threads); }

inline void require(bool ok, const char* kernel, const std::string& msg) {
  if (!ok) throw std::invalid_argument(std::string("[cuda:") + kernel + "] " + msg);
}

}  // namespace xsil::cuda
