// Block-quantized matmul on the integer path: activations quantized once per call to int8 blocks
// (block_q8a semantics), weights in the SoA device layout (16-byte aligned quant loads), __dp4a dots.
// One warp per weight row; a CTA holds 4 rows. M == 1 (decode) is the GEMV; M > 1 tiles 8 activation
// rows per CTA so each weight block loaded from HBM is used 8 times (register tiling).
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <type_traits>
#include <vector>

#include "cuda/common.cuh"

namespace xsil::cuda {

namespace {

constexpr int kWarps = 4;     // weight rows per CTA
constexpr int kTileM = 8;     // activation rows per CTA for M > 1

// Constant indices only: a dynamically indexed kernel parameter would be copied to local memory.
__device__ __forceinline__ float* out_ptr(const SplitOut& o, int m, int n) {
  if (o.segs > 2 && n >= o.n0[2]) return o.y[2] + (size_t)m * (o.n0[3] - o.n0[2]) + (n - o.n0[2]);
  if (o.segs > 1 && n >= o.n0[1]) return o.y[1] + (size_t)m * (o.n0[2] - o.n0[1]) + (n - o.n0[1]);
  return o.y[0] + (size_t)m * o.n0[1] + n;
}

__global__ void k_quantize_q8a(const float* __restrict__ x, int8_t* __restrict__ qs, float* __restrict__ dd,
                               float* __restrict__ ss, int64_t n_blocks) {
  const int64_t blk = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (blk >= n_blocks) return;
  const float v = x[blk * 32 + lane];
  const float amax = warp_max(fabsf(v));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  const float t = v * id;
  const int q = isfinite(t) ? (int)roundf(t) : 0;
  qs[blk * 32 + lane] = (int8_t)q;
  const int sum = warp_sum_i(q);
  if (lane == 0) {
    dd[blk] = d;
    ss[blk] = d * (float)sum;
  }
}

template <int MT>
__global__ void __launch_bounds__(kWarps * 32) k_mm_q4_0(const uint8_t* __restrict__ wq,
                                                         const uint16_t* __restrict__ wd,
                                                         const int8_t* __restrict__ xq, const float* __restrict__ xd,
                                                         const float* __restrict__ xs, SplitOut out, int N,
                                                         int K, int M) {
  const int lane = threadIdx.x & 31;
  const int n = blockIdx.x * kWarps + threadIdx.x / 32;
  if (n >= N) return;
  const int m0 = blockIdx.y * MT;
  const int nb = K / 32;
  const uint8_t* wr = wq + (size_t)n * nb * 16;
  const uint16_t* wdr = wd + (size_t)n * nb;
  float acc[MT];
#pragma unroll
  for (int m = 0; m < MT; ++m) acc[m] = 0.0f;
  // kU blocks per lane per step, all loaded before the first is used (kU 16-byte loads in flight).
  constexpr int kU = 4;
  for (int b0 = lane; b0 < nb; b0 += 32 * kU) {
    uint4 w4[kU];
    float dw[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int b = b0 + u * 32;
      if (b < nb) {
        w4[u] = ld_stream16(wr + (size_t)b * 16);
        dw[u] = h2f(wdr[b]);
      }
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int b = b0 + u * 32;
      if (b >= nb) break;
      const int w[4] = {(int)w4[u].x, (int)w4[u].y, (int)w4[u].z, (int)w4[u].w};
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        if (MT > 1 && m0 + m >= M) break;
        const size_t xb = (size_t)(m0 + m) * nb + b;
        const int4* xr = (const int4*)(xq + xb * 32);
        const int4 xa = xr[0], xc = xr[1];
        const int xl[4] = {xa.x, xa.y, xa.z, xa.w}, xh[4] = {xc.x, xc.y, xc.z, xc.w};
        int s = 0;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          s = __dp4a(w[i] & 0x0F0F0F0F, xl[i], s);          // elements 4i..4i+3 (low nibbles)
          s = __dp4a((w[i] >> 4) & 0x0F0F0F0F, xh[i], s);   // elements 16+4i.. (high nibbles)
        }
        acc[m] += dw[u] * (xd[xb] * (float)s - 8.0f * xs[xb]);
      }
    }
  }
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    if (MT > 1 && m0 + m >= M) break;
    const float v = warp_sum(acc[m]);
    if (lane == 0) *out_ptr(out, m0 + m, n) = v;
  }
}

template <int MT>
__global__ void __launch_bounds__(kWarps * 32) k_mm_q8_0(const int8_t* __restrict__ wq,
                                                         const uint16_t* __restrict__ wd,
                                                         const int8_t* __restrict__ xq, const float* __restrict__ xd,
                                                         SplitOut out, int N, int K, int M) {
  const int lane = threadIdx.x & 31;
  const int n = blockIdx.x * kWarps + threadIdx.x / 32;
  if (n >= N) return;
  const int m0 = blockIdx.y * MT;
  const int nb = K / 32;
  const int8_t* wr = wq + (size_t)n * K;
  const uint16_t* wdr = wd + (size_t)n * nb;
  float acc[MT];
#pragma unroll
  for (int m = 0; m < MT; ++m) acc[m] = 0.0f;
  constexpr int kU = 2;  // blocks per lane per step: 2 x 2 16-byte loads in flight
  for (int b0 = lane; b0 < nb; b0 += 32 * kU) {
    uint4 w0[kU], w1[kU];
    float dw[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int b = b0 + u * 32;
      if (b < nb) {
        w0[u] = ld_stream16(wr + (size_t)b * 32);
        w1[u] = ld_stream16(wr + (size_t)b * 32 + 16);
        dw[u] = h2f(wdr[b]);
      }
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int b = b0 + u * 32;
      if (b >= nb) break;
      const int w[8] = {(int)w0[u].x, (int)w0[u].y, (int)w0[u].z, (int)w0[u].w,
                        (int)w1[u].x, (int)w1[u].y, (int)w1[u].z, (int)w1[u].w};
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        if (MT > 1 && m0 + m >= M) break;
        const size_t xb = (size_t)(m0 + m) * nb + b;
        const int4* xr = (const int4*)(xq + xb * 32);
        const int4 xa = xr[0], xc = xr[1];
        const int xv[8] = {xa.x, xa.y, xa.z, xa.w, xc.x, xc.y, xc.z, xc.w};
        int s = 0;
#pragma unroll
        for (int i = 0; i < 8; ++i) s = __dp4a(w[i], xv[i], s);
        acc[m] += dw[u] * xd[xb] * (float)s;
      }
    }
  }
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    if (MT > 1 && m0 + m >= M) break;
    const float v = warp_sum(acc[m]);
    if (lane == 0) *out_ptr(out, m0 + m, n) = v;
  }
}

// Q4_K sub-block b (32 weights; super-block b / 8, sub-block b % 8) of one row, for the per-32
// activations: w[i] = the unsigned nibbles of elements 4i..4i+3 (one per byte), dsc = d * sc,
// dmm = dmin * m. qrow / rrow: the row's quants and super-block records (DevMatrix Q4_K layout).
__device__ __forceinline__ void q4k_load(const uint8_t* __restrict__ qrow, const uint8_t* __restrict__ rrow, int b,
                                         int w[8], float& dsc, float& dmm) {
  const int i = b >> 3, j = b & 7;
  const uint8_t* q = qrow + (size_t)i * 128 + (j >> 1) * 32;  // group j/2: sub-block j in its low/high nibbles
  const uint4 q0 = ld_stream16(q), q1 = ld_stream16(q + 16);
  const int sh = (j & 1) * 4;
  w[0] = (int)((q0.x >> sh) & 0x0F0F0F0Fu);
  w[1] = (int)((q0.y >> sh) & 0x0F0F0F0Fu);
  w[2] = (int)((q0.z >> sh) & 0x0F0F0F0Fu);
  w[3] = (int)((q0.w >> sh) & 0x0F0F0F0Fu);
  w[4] = (int)((q1.x >> sh) & 0x0F0F0F0Fu);
  w[5] = (int)((q1.y >> sh) & 0x0F0F0F0Fu);
  w[6] = (int)((q1.z >> sh) & 0x0F0F0F0Fu);
  w[7] = (int)((q1.w >> sh) & 0x0F0F0F0Fu);
  const uint8_t* r = rrow + (size_t)i * kQ4KRecord;
  dsc = h2f(*(const uint16_t*)r) * (float)r[4 + j];
  dmm = h2f(*(const uint16_t*)(r + 2)) * (float)r[12 + j];
}
// One sub-block's term, written once so the GEMV and the GEMM round identically (batch == step).
__device__ __forceinline__ float q4k_term(float dsc, float dmm, float xd, float xs, int isum) {
  return dsc * (xd * (float)isum) - dmm * xs;
}

// Q4_K GEMV / small-M matmul: one warp per weight row, lane l owns sub-blocks l, l + 32, ... (the
// same per-lane order as the Q4_K GEMM, so the two agree bitwise).
template <int MT>
__global__ void __launch_bounds__(kWarps * 32) k_mm_q4_k(const uint8_t* __restrict__ wq,
                                                         const uint8_t* __restrict__ wr,
                                                         const int8_t* __restrict__ xq, const float* __restrict__ xd,
                                                         const float* __restrict__ xs, SplitOut out, int N, int K,
                                                         int M) {
  const int lane = threadIdx.x & 31;
  const int n = blockIdx.x * kWarps + threadIdx.x / 32;
  if (n >= N) return;
  const int m0 = blockIdx.y * MT;
  const int nb = K / 32;
  const uint8_t* qrow = wq + (size_t)n * (K / 2);
  const uint8_t* rrow = wr + (size_t)n * (K / 256) * kQ4KRecord;
  float acc[MT];
#pragma unroll
  for (int m = 0; m < MT; ++m) acc[m] = 0.0f;
  constexpr int kU = 2;
  for (int b0 = lane; b0 < nb; b0 += 32 * kU) {
    int w[kU][8];
    float dsc[kU], dmm[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u)
      if (b0 + u * 32 < nb) q4k_load(qrow, rrow, b0 + u * 32, w[u], dsc[u], dmm[u]);
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int b = b0 + u * 32;
      if (b >= nb) break;
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        if (MT > 1 && m0 + m >= M) break;
        const size_t xb = (size_t)(m0 + m) * nb + b;
        const int4* xr = (const int4*)(xq + xb * 32);
        const int4 xa = xr[0], xc = xr[1];
        const int xv[8] = {xa.x, xa.y, xa.z, xa.w, xc.x, xc.y, xc.z, xc.w};
        int s = 0;
#pragma unroll
        for (int i = 0; i < 8; ++i) s = __dp4a(w[u][i], xv[i], s);
        acc[m] += q4k_term(dsc[u], dmm[u], xd[xb], xs[xb], s);
      }
    }
  }
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    if (MT > 1 && m0 + m >= M) break;
    const float v = warp_sum(acc[m]);
    if (lane == 0) *out_ptr(out, m0 + m, n) = v;
  }
}

enum { kF_Q4_0 = 0, kF_Q8_0 = 1, kF_Q4_K = 2, kF_Q4_1 = 3, kF_Q5_0 = 4, kF_Q5_1 = 5, kF_Q5_K = 6, kF_Q6_K = 7 };
constexpr const char* kKfName[] = {"q4_0", "q8_0", "q4_k", "q4_1", "q5_0", "q5_1", "q5_k", "q6_k"};

// Calls fn(std::integral_constant<int, kF_x>()) for block format f (one switch for every launcher that
// instantiates a kernel template per format); false when f is not a block format.
template <class Fn>
bool with_block_fmt(Fmt f, Fn&& fn) {
  switch (f) {
    case Fmt::Q4_0: fn(std::integral_constant<int, kF_Q4_0>()); return true;
    case Fmt::Q8_0: fn(std::integral_constant<int, kF_Q8_0>()); return true;
    case Fmt::Q4_K: fn(std::integral_constant<int, kF_Q4_K>()); return true;
    case Fmt::Q4_1: fn(std::integral_constant<int, kF_Q4_1>()); return true;
    case Fmt::Q5_0: fn(std::integral_constant<int, kF_Q5_0>()); return true;
    case Fmt::Q5_1: fn(std::integral_constant<int, kF_Q5_1>()); return true;
    case Fmt::Q5_K: fn(std::integral_constant<int, kF_Q5_K>()); return true;
    case Fmt::Q6_K: fn(std::integral_constant<int, kF_Q6_K>()); return true;
    default: return false;
  }
}

// --- Q4_1 / Q5_0 / Q5_1 / Q5_K / Q6_K (DevMatrix layouts in kernels.h) ---------------------------
// One weight block of 32 for a per-32 activation block: w[i] = elements 4i..4i+3 as bytes (unsigned
// q, or for Q6_K the signed q - 32), a / c its factors, s0 / s1 the Q6_K int8 sub-block scales.
struct WBlk {
  int w[8];
  float a, c;
  int s0, s1;
};

// 16 nibble-order bytes -> w[0..3] (elements 0..15, low nibbles), w[4..7] (16..31, high nibbles)
__device__ __forceinline__ void unpack_nibbles(const uint4 q, int w[8]) {
  const uint32_t v[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    w[i] = (int)(v[i] & 0x0F0F0F0Fu);
    w[4 + i] = (int)((v[i] >> 4) & 0x0F0F0F0Fu);
  }
}
// 5-bit plane order: bit 8k + 4h + i of h5 is bit 4 of element 16h + 4i + k
__device__ __forceinline__ void add_bit4(uint32_t h5, int w[8]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    w[i] |= (int)(((h5 >> i) & 0x01010101u) << 4);
    w[4 + i] |= (int)(((h5 >> (4 + i)) & 0x01010101u) << 4);
  }
}

template <int F>
__device__ __forceinline__ void load_blk(const uint8_t* __restrict__ wq, const uint8_t* __restrict__ wd, int n, int K,
                                         int b, WBlk& o) {
  const int nb = K / 32;
  if (F == kF_Q4_1 || F == kF_Q5_0 || F == kF_Q5_1) {
    const size_t blk = (size_t)n * nb + b;
    unpack_nibbles(ld_stream16(wq + blk * 16), o.w);
    if (F == kF_Q4_1) {
      const uint32_t dm = *(const uint32_t*)(wd + blk * 4);
      o.a = h2f((uint16_t)(dm & 0xFFFF));
      o.c = h2f((uint16_t)(dm >> 16));
    } else {
      const uint2 r = *(const uint2*)(wd + blk * 8);
      add_bit4(r.x, o.w);
      o.a = h2f((uint16_t)(r.y & 0xFFFF));
      o.c = h2f((uint16_t)(r.y >> 16));
    }
  } else if (F == kF_Q5_K) {
    const size_t sb = (size_t)n * (K / 256) + (b >> 3);
    const int j = b & 7;
    const uint8_t* q = wq + sb * kQ5KBytes;
    unpack_nibbles(ld_stream16(q + j * 16), o.w);
    add_bit4(*(const uint32_t*)(q + 128 + j * 4), o.w);
    const uint8_t* r = wd + sb * kQ4KRecord;
    o.a = h2f(*(const uint16_t*)r) * (float)r[4 + j];
    o.c = h2f(*(const uint16_t*)(r + 2)) * (float)r[12 + j];
  } else {  // Q6_K
    const size_t sb = (size_t)n * (K / 256) + (b >> 3);
    const int j = b & 7;
    const uint8_t* q = wq + sb * kQ6KBytes;
    unpack_nibbles(ld_stream16(q + j * 16), o.w);
    const uint2 h = *(const uint2*)(q + 128 + j * 8);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint32_t lo = (uint32_t)o.w[i] | (((h.x >> (2 * i)) & 0x03030303u) << 4);
      const uint32_t hi = (uint32_t)o.w[4 + i] | (((h.y >> (2 * i)) & 0x03030303u) << 4);
      // q in [0, 63] per byte -> q - 32 as int8, per byte without borrows: ((q | 0x80) - 32) ^ 0x80
      o.w[i] = (int)(((lo | 0x80808080u) - 0x20202020u) ^ 0x80808080u);
      o.w[4 + i] = (int)(((hi | 0x80808080u) - 0x20202020u) ^ 0x80808080u);
    }
    const uint8_t* r = wd + sb * kQ6KRecord;
    o.a = h2f(*(const uint16_t*)r);
    o.s0 = (int8_t)r[2 + 2 * j];
    o.s1 = (int8_t)r[3 + 2 * j];
  }
}

// One block's term, written once so the GEMV and the GEMM round identically (batch == step).
template <int F>
__device__ __forceinline__ float blk_term(const WBlk& o, const int xv[8], float xd, float xs) {
  if (F == kF_Q6_K) {
    int s0 = 0, s1 = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      s0 = __dp4a(o.w[i], xv[i], s0);
      s1 = __dp4a(o.w[4 + i], xv[4 + i], s1);
    }
    // |sc * s| <= 128 * 16 * 32 * 127 each: the sum is exact in int32 and in fp32 (< 2^24)
    return o.a * (xd * (float)(o.s0 * s0 + o.s1 * s1));
  }
  int s = 0;
#pragma unroll
  for (int i = 0; i < 8; ++i) s = __dp4a(o.w[i], xv[i], s);
  if (F == kF_Q5_0) return o.a * (xd * (float)s - 16.0f * xs);
  if (F == kF_Q5_K) return o.a * (xd * (float)s) - o.c * xs;  // as q4k_term
  return o.a * (xd * (float)s) + o.c * xs;                      // Q4_1 / Q5_1: w = d * q + m
}

// GEMV / small-M matmul for the types above: one warp per weight row, lane l owns blocks l, l + 32,
// ... (the same per-lane order as the dp4a GEMM, so the two agree bitwise).
template <int F, int MT>
__global__ void __launch_bounds__(kWarps * 32) k_mm_x(const uint8_t* __restrict__ wq, const uint8_t* __restrict__ wd,
                                                      const int8_t* __restrict__ xq, const float* __restrict__ xd,
                                                      const float* __restrict__ xs, SplitOut out, int N, int K, int M) {
  const int lane = threadIdx.x & 31;
  const int n = blockIdx.x * kWarps + threadIdx.x / 32;
  if (n >= N) return;
  const int m0 = blockIdx.y * MT;
  const int nb = K / 32;
  float acc[MT];
#pragma unroll
  for (int m = 0; m < MT; ++m) acc[m] = 0.0f;
  constexpr int kU = 2;
  for (int b0 = lane; b0 < nb; b0 += 32 * kU) {
    WBlk wb[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u)
      if (b0 + u * 32 < nb) load_blk<F>(wq, wd, n, K, b0 + u * 32, wb[u]);
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int b = b0 + u * 32;
      if (b >= nb) break;
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        if (MT > 1 && m0 + m >= M) break;
        const size_t xb = (size_t)(m0 + m) * nb + b;
        const int4* xr = (const int4*)(xq + xb * 32);
        const int4 xa = xr[0], xc = xr[1];
        const int xv[8] = {xa.x, xa.y, xa.z, xa.w, xc.x, xc.y, xc.z, xc.w};
        acc[m] += blk_term<F>(wb[u], xv, xd[xb], xs[xb]);
      }
    }
  }
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    if (MT > 1 && m0 + m >= M) break;
    const float v = warp_sum(acc[m]);
    if (lane == 0) *out_ptr(out, m0 + m, n) = v;
  }
}

// Prefill GEMM (M > 1) for every block-quantized type, tiled through shared memory: a CTA computes kGW weight rows
// (one warp each) x kGM activation rows. K is walked in chunks of 32 blocks: the chunk's quantized
// activations (kGM rows x 32 blocks: quants, scales, sums) are staged in shared memory once and read
// by every warp; each lane owns one block of the chunk, loads its weight block once and reuses it
// for the kGM activation rows.
constexpr int kGW = 8, kGM = 16, kGC = 32;

template <int F>
__global__ void __launch_bounds__(kGW * 32) k_gemm_q(const uint8_t* __restrict__ wq, const void* __restrict__ wdv,
                                                    const int8_t* __restrict__ xq, const float* __restrict__ xd,
                                                    const float* __restrict__ xs, SplitOut out, int N, int K, int M) {
  __shared__ __align__(16) int8_t sq[kGM][kGC][32];  // 16 KB
  __shared__ float sd[kGM][kGC], ss[kGM][kGC];
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  const int n = blockIdx.x * kGW + warp;
  const int m0 = blockIdx.y * kGM;
  const int nb = K / 32;
  constexpr bool Q4 = F == kF_Q4_0;
  const int bytes_per_block = Q4 ? 16 : 32;
  const uint16_t* wd = (const uint16_t*)wdv;
  float acc[kGM];
#pragma unroll
  for (int m = 0; m < kGM; ++m) acc[m] = 0.0f;
  for (int c0 = 0; c0 < nb; c0 += kGC) {
    __syncthreads();  // the previous chunk has been consumed
    // stage kGM x kGC activation blocks: 16-byte pieces, 2 per block
    for (int i = threadIdx.x; i < kGM * kGC * 2; i += blockDim.x) {
      const int m = i / (kGC * 2), r = i % (kGC * 2), b = r / 2, half = r % 2;
      int4 v = make_int4(0, 0, 0, 0);
      if (m0 + m < M && c0 + b < nb) v = *(const int4*)(xq + ((size_t)(m0 + m) * nb + c0 + b) * 32 + half * 16);
      *(int4*)&sq[m][b][half * 16] = v;
    }
    for (int i = threadIdx.x; i < kGM * kGC; i += blockDim.x) {
      const int m = i / kGC, b = i % kGC;
      const bool ok = m0 + m < M && c0 + b < nb;
      sd[m][b] = ok ? xd[(size_t)(m0 + m) * nb + c0 + b] : 0.0f;
      ss[m][b] = ok ? xs[(size_t)(m0 + m) * nb + c0 + b] : 0.0f;
    }
    __syncthreads();
    const int b = c0 + lane;
    if (F == kF_Q4_K && n < N && b < nb) {
      int w[8];
      float dsc, dmm;
      q4k_load(wq + (size_t)n * (K / 2), (const uint8_t*)wdv + (size_t)n * (K / 256) * kQ4KRecord, b, w, dsc, dmm);
#pragma unroll
      for (int m = 0; m < kGM; ++m) {
        const int4 xa = *(const int4*)&sq[m][lane][0], xc = *(const int4*)&sq[m][lane][16];
        const int xv[8] = {xa.x, xa.y, xa.z, xa.w, xc.x, xc.y, xc.z, xc.w};
        int s = 0;
#pragma unroll
        for (int i = 0; i < 8; ++i) s = __dp4a(w[i], xv[i], s);
        acc[m] += q4k_term(dsc, dmm, sd[m][lane], ss[m][lane], s);
      }
    } else if (F >= kF_Q4_1 && n < N && b < nb) {
      WBlk wb;
      load_blk<F>(wq, (const uint8_t*)wdv, n, K, b, wb);
#pragma unroll
      for (int m = 0; m < kGM; ++m) {
        const int4 xa = *(const int4*)&sq[m][lane][0], xc = *(const int4*)&sq[m][lane][16];
        const int xv[8] = {xa.x, xa.y, xa.z, xa.w, xc.x, xc.y, xc.z, xc.w};
        acc[m] += blk_term<F>(wb, xv, sd[m][lane], ss[m][lane]);
      }
    } else if ((F == kF_Q4_0 || F == kF_Q8_0) && n < N && b < nb) {
      const uint8_t* wb = wq + ((size_t)n * nb + b) * bytes_per_block;
      const float dw = h2f(wd[(size_t)n * nb + b]);
      int w[8];
      const uint4 w0 = ld_stream16(wb);
      w[0] = (int)w0.x; w[1] = (int)w0.y; w[2] = (int)w0.z; w[3] = (int)w0.w;
      if (!Q4) {
        const uint4 w1 = ld_stream16(wb + 16);
        w[4] = (int)w1.x; w[5] = (int)w1.y; w[6] = (int)w1.z; w[7] = (int)w1.w;
      }
#pragma unroll
      for (int m = 0; m < kGM; ++m) {
        const int4 xa = *(const int4*)&sq[m][lane][0], xc = *(const int4*)&sq[m][lane][16];
        const int xl[4] = {xa.x, xa.y, xa.z, xa.w}, xh[4] = {xc.x, xc.y, xc.z, xc.w};
        int s = 0;
        if (Q4) {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            s = __dp4a(w[i] & 0x0F0F0F0F, xl[i], s);
            s = __dp4a((w[i] >> 4) & 0x0F0F0F0F, xh[i], s);
          }
          acc[m] += dw * (sd[m][lane] * (float)s - 8.0f * ss[m][lane]);
        } else {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            s = __dp4a(w[i], xl[i], s);
            s = __dp4a(w[4 + i], xh[i], s);
          }
          acc[m] += dw * sd[m][lane] * (float)s;
        }
      }
    }
  }
  if (n >= N) return;
#pragma unroll
  for (int m = 0; m < kGM; ++m) {
    const float v = warp_sum(acc[m]);
    if (lane == 0 && m0 + m < M) *out_ptr(out, m0 + m, n) = v;
  }
}

// Tensor-core prefill GEMM (every block type): a CTA of 4 warps computes a 64 (weight rows) x
// 64 (activation rows) tile; K is walked 4 blocks (128 values) at a time. Per chunk the weights are
// unpacked to int8 in shared memory (Q4_0: nibble - 8, Q5_0: q - 16, Q6_K: q - 32, Q4_K / Q5_K /
// Q4_1 / Q5_1: the unsigned q, Q8_0: as stored; Q6_K runs one mma per sub-block of 16, the other
// half's A registers zeroed, and combines the two int32 dots with its int8 scales)
// with their per-(row, block) factors, the q8a activations copied next to them; then each warp (a
// 32 x 32 sub-tile) runs one m16n8k32 mma per (16 weight rows, 8 activation rows, block): exactly the
// int32 block dot, scaled by d_w * d_x (Q4_K: minus dmin*m * s_x) and accumulated in fp32.
// A = weights (16 x 32, row-major = a weight row's 32 values), B = activations (32 x 8, column-major
// = an activation row's 32 values). Shared rows are padded to 144 bytes: the 8 rows x 4 k-offsets a
// fragment load touches fall in 32 distinct banks.
constexpr int kMN = 64, kMM = 64, kMKB = 4, kMRow = kMKB * 32 + 16;

template <int F>
__global__ void __launch_bounds__(128) k_gemm_mma(const uint8_t* __restrict__ wq, const void* __restrict__ wdv,
                                                  const int8_t* __restrict__ xq, const float* __restrict__ xd,
                                                  const float* __restrict__ xs, SplitOut out, int N, int K, int M) {
  __shared__ __align__(16) int8_t sw[kMN][kMRow];
  __shared__ __align__(16) int8_t sx[kMM][kMRow];
  __shared__ float sfa[kMN][kMKB], sfb[kMN][kMKB], sxd[kMM][kMKB], sxs[kMM][kMKB];
  __shared__ int ssc[kMN][kMKB][2];  // Q6_K: the int8 scales of the block's two sub-blocks of 16
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int n0 = blockIdx.x * kMN, m0 = blockIdx.y * kMM;
  const int wn = (warp & 1) * 32, wm = (warp >> 1) * 32;
  const int nb = K / 32;
  float acc[2][4][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;
  for (int c0 = 0; c0 < nb; c0 += kMKB) {
    __syncthreads();  // the previous chunk has been consumed
    for (int i = tid; i < kMN * kMKB; i += blockDim.x) {
      const int r = i / kMKB, kb = i % kMKB, n = n0 + r, b = c0 + kb;
      uint32_t v[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      float fa = 0.0f, fb = 0.0f;
      int s0 = 0, s1 = 0;
      if (n < N && b < nb) {
        if (F == kF_Q4_0) {
          const uint4 q = ld_stream16(wq + ((size_t)n * nb + b) * 16);
          const uint32_t qw[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            // bytes 0..15 -> byte - 8 as int8, per byte without borrows: ((x | 0x80) - 8) ^ 0x80
            v[k] = ((( qw[k]       & 0x0F0F0F0Fu) | 0x80808080u) - 0x08080808u) ^ 0x80808080u;  // elements 4k..
            v[4 + k] = ((((qw[k] >> 4) & 0x0F0F0F0Fu) | 0x80808080u) - 0x08080808u) ^ 0x80808080u;  // 16+4k..
          }
          fa = h2f(((const uint16_t*)wdv)[(size_t)n * nb + b]);
        } else if (F == kF_Q8_0) {
          const uint8_t* p = wq + ((size_t)n * nb + b) * 32;
          const uint4 q0 = ld_stream16(p), q1 = ld_stream16(p + 16);
          v[0] = q0.x; v[1] = q0.y; v[2] = q0.z; v[3] = q0.w;
          v[4] = q1.x; v[5] = q1.y; v[6] = q1.z; v[7] = q1.w;
          fa = h2f(((const uint16_t*)wdv)[(size_t)n * nb + b]);
        } else if (F == kF_Q4_K) {
          int w[8];
          q4k_load(wq + (size_t)n * (K / 2), (const uint8_t*)wdv + (size_t)n * (K / 256) * kQ4KRecord, b, w, fa, fb);
#pragma unroll
          for (int k = 0; k < 8; ++k) v[k] = (uint32_t)w[k];
        } else {
          // Q4_1 / Q5_1: unsigned q (<= 31), fb = -m; Q5_K: as Q4_K; Q5_0: q - 16 as int8; Q6_K: q - 32
          // (load_blk), fa = d, the two sub-block scales in ssc
          WBlk o;
          load_blk<F>(wq, (const uint8_t*)wdv, n, K, b, o);
#pragma unroll
          for (int k = 0; k < 8; ++k) {
            const uint32_t q = (uint32_t)o.w[k];
            v[k] = F == kF_Q5_0 ? (((q | 0x80808080u) - 0x10101010u) ^ 0x80808080u) : q;
          }
          fa = o.a;
          fb = F == kF_Q5_K ? o.c : (F == kF_Q4_1 || F == kF_Q5_1) ? -o.c : 0.0f;
          if (F == kF_Q6_K) s0 = o.s0, s1 = o.s1;
        }
      }
      if (F == kF_Q6_K) {
        ssc[r][kb][0] = s0;
        ssc[r][kb][1] = s1;
      }
      uint4* dst = (uint4*)&sw[r][kb * 32];
      dst[0] = make_uint4(v[0], v[1], v[2], v[3]);
      dst[1] = make_uint4(v[4], v[5], v[6], v[7]);
      sfa[r][kb] = fa;
      sfb[r][kb] = fb;
    }
    for (int i = tid; i < kMM * kMKB * 2; i += blockDim.x) {
      const int r = i / (kMKB * 2), kb = (i / 2) % kMKB, h = i % 2, m = m0 + r, b = c0 + kb;
      int4 v = make_int4(0, 0, 0, 0);
      if (m < M && b < nb) v = *(const int4*)(xq + ((size_t)m * nb + b) * 32 + h * 16);
      *(int4*)&sx[r][kb * 32 + h * 16] = v;
    }
    for (int i = tid; i < kMM * kMKB; i += blockDim.x) {
      const int r = i / kMKB, kb = i % kMKB, m = m0 + r, b = c0 + kb;
      const bool ok = m < M && b < nb;
      sxd[r][kb] = ok ? xd[(size_t)m * nb + b] : 0.0f;
      sxs[r][kb] = ok ? xs[(size_t)m * nb + b] : 0.0f;
    }
    __syncthreads();
    for (int kb = 0; kb < kMKB && c0 + kb < nb; ++kb) {
      uint32_t a[2][4], bf[4][2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int r = wn + 16 * i + g;
        a[i][0] = *(const uint32_t*)&sw[r][kb * 32 + 4 * t];
        a[i][1] = *(const uint32_t*)&sw[r + 8][kb * 32 + 4 * t];
        a[i][2] = *(const uint32_t*)&sw[r][kb * 32 + 16 + 4 * t];
        a[i][3] = *(const uint32_t*)&sw[r + 8][kb * 32 + 16 + 4 * t];
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int r = wm + 8 * j + g;
        bf[j][0] = *(const uint32_t*)&sx[r][kb * 32 + 4 * t];
        bf[j][1] = *(const uint32_t*)&sx[r][kb * 32 + 16 + 4 * t];
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          int c[4] = {0, 0, 0, 0};
          int c1[4] = {0, 0, 0, 0};
          if (F == kF_Q6_K) {
            // one mma per sub-block of 16: a[0], a[1] hold k 0..15 of the block, a[2], a[3] k 16..31
            const uint32_t lo[4] = {a[i][0], a[i][1], 0u, 0u}, hi[4] = {0u, 0u, a[i][2], a[i][3]};
            mma_s8_m16n8k32(c, lo, bf[j]);
            mma_s8_m16n8k32(c1, hi, bf[j]);
          } else {
            mma_s8_m16n8k32(c, a[i], bf[j]);
          }
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int wr = wn + 16 * i + g + (e >> 1) * 8;  // c0, c1: row g; c2, c3: row g + 8
            const int tk = wm + 8 * j + 2 * t + (e & 1);   // columns 2t, 2t + 1
            if (F == kF_Q6_K)
              acc[i][j][e] += sfa[wr][kb] * (sxd[tk][kb] * (float)(ssc[wr][kb][0] * c[e] + ssc[wr][kb][1] * c1[e]));
            else if (F == kF_Q4_K || F == kF_Q5_K || F == kF_Q4_1 || F == kF_Q5_1)
              acc[i][j][e] += sfa[wr][kb] * (sxd[tk][kb] * (float)c[e]) - sfb[wr][kb] * sxs[tk][kb];
            else
              acc[i][j][e] += sfa[wr][kb] * sxd[tk][kb] * (float)c[e];
          }
        }
    }
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int n = n0 + wn + 16 * i + g + (e >> 1) * 8, m = m0 + wm + 8 * j + 2 * t + (e & 1);
        if (n < N && m < M) *out_ptr(out, m, n) = acc[i][j][e];
      }
}

// Dense fp16 / fp32 weights (tensors that are not block-quantized), fp32 activations.
template <int MT, bool F16>
__global__ void __launch_bounds__(kWarps * 32) k_mm_dense(const void* __restrict__ w, const float* __restrict__ x,
                                                          SplitOut out, int N, int K, int M) {
  const int lane = threadIdx.x & 31;
  const int n = blockIdx.x * kWarps + threadIdx.x / 32;
  if (n >= N) return;
  const int m0 = blockIdx.y * MT;
  float acc[MT];
#pragma unroll
  for (int m = 0; m < MT; ++m) acc[m] = 0.0f;
  for (int k = lane * 2; k < K; k += 64) {
    float w0, w1;
    if (F16) {
      const __half2 h = *(const __half2*)((const __half*)w + (size_t)n * K + k);
      w0 = __low2float(h);
      w1 = __high2float(h);
    } else {
      const float2 f = *(const float2*)((const float*)w + (size_t)n * K + k);
      w0 = f.x;
      w1 = f.y;
    }
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (MT > 1 && m0 + m >= M) break;
      const float2 xv = *(const float2*)(x + (size_t)(m0 + m) * K + k);
      acc[m] += w0 * xv.x + w1 * xv.y;
    }
  }
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    if (MT > 1 && m0 + m >= M) break;
    const float v = warp_sum(acc[m]);
    if (lane == 0) *out_ptr(out, m0 + m, n) = v;
  }
}

}  // namespace

bool cuda_supports(Fmt f) {
  switch (f) {
    case Fmt::F32: case Fmt::F16: case Fmt::Q4_0: case Fmt::Q4_1: case Fmt::Q5_0: case Fmt::Q5_1:
    case Fmt::Q8_0: case Fmt::Q4_K: case Fmt::Q5_K: case Fmt::Q6_K:
      return true;
  }
  return false;
}
bool cuda_block_quant(Fmt f) { return cuda_supports(f) && f != Fmt::F32 && f != Fmt::F16; }
bool cuda_has_mma(Fmt f) { return cuda_block_quant(f); }
const char* cuda_fmt_name(Fmt f) {
  if (f == Fmt::F32) return "F32";
  if (f == Fmt::F16) return "F16";
  const FmtInfo* fi = fmt_info(f);
  return fi ? fi->name : "unknown";
}

namespace {
const char* fmt_name(Fmt f) { return cuda_fmt_name(f); }

// --- host-side repack helpers (formats as documented in xsil/blocks.h) -----------------------------
// 32 quants (low 4 bits used) -> 16 bytes in nibble order
void put_nibbles(const uint8_t q[32], uint8_t* out) {
  for (int l = 0; l < 16; ++l) out[l] = (uint8_t)((q[l] & 0x0F) | ((q[16 + l] & 0x0F) << 4));
}
// bit 4 of 32 quants -> the 5-bit plane word (bit 8k + 4h + i = element 16h + 4i + k)
uint32_t plane5(const uint8_t q[32]) {
  uint32_t w = 0;
  for (int e = 0; e < 32; ++e) {
    const int h = e / 16, i = (e % 16) / 4, k = e % 4;
    w |= (uint32_t)((q[e] >> 4) & 1) << (8 * k + 4 * h + i);
  }
  return w;
}
// bits 4-5 of 16 quants (one half) -> the 6-bit plane word (bits 8k + 2i.. = element 4i + k)
uint32_t plane6(const uint8_t q[16]) {
  uint32_t w = 0;
  for (int e = 0; e < 16; ++e) w |= (uint32_t)((q[e] >> 4) & 3) << (8 * (e % 4) + 2 * (e / 4));
  return w;
}
// the 32 5-bit quants of a Q5_0 / Q5_1 block from its qs / qh
void q5_quants(const uint8_t* qs, const uint8_t* qh, uint8_t q[32]) {
  uint32_t h;
  std::memcpy(&h, qh, 4);  // little-endian, element j at bit j
  for (int j = 0; j < 32; ++j)
    q[j] = (uint8_t)(((j < 16 ? qs[j] : qs[j - 16] >> 4) & 0x0F) | (((h >> j) & 1) << 4));
}
void put_q4k_record(uint16_t d, uint16_t dmin, const uint8_t* scales, uint8_t* r) {
  std::memcpy(r, &d, 2);
  std::memcpy(r + 2, &dmin, 2);
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    q4k_sc_m(j, scales, &sc, &m);
    r[4 + j] = (uint8_t)sc;
    r[12 + j] = (uint8_t)m;
  }
}

}  // namespace

void dev_matrix_sizes(Fmt fmt, int64_t N, int64_t K, size_t* qs_bytes, size_t* d_bytes) {
  require(N > 0 && K > 0, "matmul", "N and K must be positive");
  const auto need = [&](int64_t mult) {
    require(K % mult == 0, "matmul",
            "K=" + std::to_string(K) + " must be a multiple of " + std::to_string(mult) + " for " + fmt_name(fmt));
  };
  switch (fmt) {
    case Fmt::Q4_0:
      need(32);
      *qs_bytes = (size_t)N * K / 2;
      *d_bytes = (size_t)N * (K / 32) * 2;
      return;
    case Fmt::Q8_0:
      need(32);
      *qs_bytes = (size_t)N * K;
      *d_bytes = (size_t)N * (K / 32) * 2;
      return;
    case Fmt::Q4_1:
      need(32);
      *qs_bytes = (size_t)N * K / 2;
      *d_bytes = (size_t)N * (K / 32) * 4;
      return;
    case Fmt::Q5_0:
    case Fmt::Q5_1:
      need(32);
      *qs_bytes = (size_t)N * K / 2;
      *d_bytes = (size_t)N * (K / 32) * 8;
      return;
    case Fmt::Q4_K:
      need(256);
      *qs_bytes = (size_t)N * K / 2;
      *d_bytes = (size_t)N * (K / 256) * kQ4KRecord;
      return;
    case Fmt::Q5_K:
      need(256);
      *qs_bytes = (size_t)N * (K / 256) * kQ5KBytes;
      *d_bytes = (size_t)N * (K / 256) * kQ4KRecord;
      return;
    case Fmt::Q6_K:
      need(256);
      *qs_bytes = (size_t)N * (K / 256) * kQ6KBytes;
      *d_bytes = (size_t)N * (K / 256) * kQ6KRecord;
      return;
    case Fmt::F16:
      require(K % 2 == 0, "matmul", "K must be even for F16");
      *qs_bytes = (size_t)N * K * 2;
      *d_bytes = 0;
      return;
    case Fmt::F32:
      require(K % 2 == 0, "matmul", "K must be even for F32");
      *qs_bytes = (size_t)N * K * 4;
      *d_bytes = 0;
      return;
  }
  throw std::invalid_argument(std::string("[cuda:matmul] weight type ") + fmt_name(fmt) +
                              " is not supported by the CUDA backend (supported: " + kCudaTypeList + ")");
}

void repack_host(Fmt fmt, const void* src, int64_t N, int64_t K, void* qs, uint16_t* d) {
  size_t qb, db;
  dev_matrix_sizes(fmt, N, K, &qb, &db);  // validates fmt and K
  const int64_t nb = K / 32;
  const uint8_t* s = (const uint8_t*)src;
  uint8_t* oq = (uint8_t*)qs;
  uint8_t* od = (uint8_t*)d;
  uint8_t q[32];
  if (fmt == Fmt::Q4_0) {
    for (int64_t i = 0; i < N * nb; ++i) {
      const block_q4_0* b = (const block_q4_0*)(s + i * sizeof(block_q4_0));
      d[i] = b->d;
      std::memcpy(oq + i * 16, b->qs, 16);
    }
  } else if (fmt == Fmt::Q8_0) {
    for (int64_t i = 0; i < N * nb; ++i) {
      const block_q8_0* b = (const block_q8_0*)(s + i * sizeof(block_q8_0));
      d[i] = b->d;
      std::memcpy(oq + i * 32, b->qs, 32);
    }
  } else if (fmt == Fmt::Q4_1) {
    for (int64_t i = 0; i < N * nb; ++i) {
      const block_q4_1* b = (const block_q4_1*)(s + i * sizeof(block_q4_1));
      std::memcpy(oq + i * 16, b->qs, 16);
      std::memcpy(od + i * 4, &b->d, 2);
      std::memcpy(od + i * 4 + 2, &b->m, 2);
    }
  } else if (fmt == Fmt::Q5_0 || fmt == Fmt::Q5_1) {
    const bool one = fmt == Fmt::Q5_1;
    const size_t bs = one ? sizeof(block_q5_1) : sizeof(block_q5_0);
    for (int64_t i = 0; i < N * nb; ++i) {
      const uint8_t* bp = s + i * bs;
      uint16_t dd, mm = 0;
      const uint8_t *bqs, *bqh;
      if (one) {
        const block_q5_1* b = (const block_q5_1*)bp;
        dd = b->d, mm = b->m, bqs = b->qs, bqh = b->qh;
      } else {
        const block_q5_0* b = (const block_q5_0*)bp;
        dd = b->d, bqs = b->qs, bqh = b->qh;
      }
      q5_quants(bqs, bqh, q);
      std::memcpy(oq + i * 16, bqs, 16);  // GGUF's nibble bytes are already in nibble order
      const uint32_t h = plane5(q);
      std::memcpy(od + i * 8, &h, 4);
      std::memcpy(od + i * 8 + 4, &dd, 2);
      std::memcpy(od + i * 8 + 6, &mm, 2);
    }
  } else if (fmt == Fmt::Q4_K) {
    for (int64_t i = 0; i < N * (K / 256); ++i) {
      const block_q4_K* b = (const block_q4_K*)(s + i * sizeof(block_q4_K));
      std::memcpy(oq + i * 128, b->qs, 128);
      put_q4k_record(b->d, b->dmin, b->scales, od + i * kQ4KRecord);
    }
  } else if (fmt == Fmt::Q5_K) {
    for (int64_t i = 0; i < N * (K / 256); ++i) {
      const block_q5_K* b = (const block_q5_K*)(s + i * sizeof(block_q5_K));
      uint8_t* o = oq + i * kQ5KBytes;
      for (int j = 0; j < 8; ++j) {
        for (int l = 0; l < 32; ++l)
          q[l] = (uint8_t)(((b->qs[32 * (j / 2) + l] >> (4 * (j & 1))) & 0x0F) | (((b->qh[l] >> j) & 1) << 4));
        put_nibbles(q, o + 16 * j);
        const uint32_t h = plane5(q);
        std::memcpy(o + 128 + 4 * j, &h, 4);
      }
      put_q4k_record(b->d, b->dmin, b->scales, od + i * kQ4KRecord);
    }
  } else if (fmt == Fmt::Q6_K) {
    for (int64_t i = 0; i < N * (K / 256); ++i) {
      const block_q6_K* b = (const block_q6_K*)(s + i * sizeof(block_q6_K));
      uint8_t* o = oq + i * kQ6KBytes;
      for (int j = 0; j < 8; ++j) {
        for (int l = 0; l < 32; ++l) {  // element e = 32j + l: half e / 128, quarter (e % 128) / 32
          const int h = j / 4, sq = j % 4;
          const int lo = (b->ql[64 * h + 32 * (sq & 1) + l] >> (4 * (sq >> 1))) & 0x0F;
          const int hi = (b->qh[32 * h + l] >> (2 * sq)) & 0x03;
          q[l] = (uint8_t)(lo | (hi << 4));
        }
        put_nibbles(q, o + 16 * j);
        const uint32_t h0 = plane6(q), h1 = plane6(q + 16);
        std::memcpy(o + 128 + 8 * j, &h0, 4);
        std::memcpy(o + 128 + 8 * j + 4, &h1, 4);
      }
      uint8_t* r = od + i * kQ6KRecord;
      std::memcpy(r, &b->d, 2);
      std::memcpy(r + 2, b->scales, 16);
    }
  } else {
    std::memcpy(qs, src, qb);
  }
}

void quantize_q8a(const float* x, DevQ8a xq, int64_t M, int64_t K, cudaStream_t st) {
  require(K % 32 == 0 && M > 0, "quantize_q8a", "K must be a multiple of 32 and M positive");
  const int64_t nblk = M * (K / 32);
  k_quantize_q8a<<<grid1(nblk, 8), 256, 0, st>>>(x, xq.qs, xq.d, xq.s, nblk);
  check_launch("quantize_q8a");
}

template <int MT>
static void launch_mm(const DevMatrix& w, const float* x, DevQ8a xq, const SplitOut& y, int64_t M, cudaStream_t st) {
  const dim3 grid(grid1(w.N, kWarps), (unsigned)((M + MT - 1) / MT));
  const int N = (int)w.N, K = (int)w.K, Mi = (int)M;
  switch (w.fmt) {
    case Fmt::Q4_0:
      k_mm_q4_0<MT><<<grid, kWarps * 32, 0, st>>>((const uint8_t*)w.qs, w.d, xq.qs, xq.d, xq.s, y, N, K, Mi);
      check_launch("matmul_q4_0");
      break;
    case Fmt::Q8_0:
      k_mm_q8_0<MT><<<grid, kWarps * 32, 0, st>>>((const int8_t*)w.qs, w.d, xq.qs, xq.d, y, N, K, Mi);
      check_launch("matmul_q8_0");
      break;
    case Fmt::Q4_K:
      k_mm_q4_k<MT><<<grid, kWarps * 32, 0, st>>>((const uint8_t*)w.qs, (const uint8_t*)w.d, xq.qs, xq.d, xq.s, y, N,
                                                  K, Mi);
      check_launch("matmul_q4_k");
      break;
    case Fmt::Q4_1:
    case Fmt::Q5_0:
    case Fmt::Q5_1:
    case Fmt::Q5_K:
    case Fmt::Q6_K:
      with_block_fmt(w.fmt, [&](auto kf) {
        constexpr int F = decltype(kf)::value;
        if constexpr (F != kF_Q4_0 && F != kF_Q8_0 && F != kF_Q4_K) {  // those have their own kernels
          k_mm_x<F, MT><<<grid, kWarps * 32, 0, st>>>((const uint8_t*)w.qs, (const uint8_t*)w.d, xq.qs, xq.d, xq.s,
                                                      y, N, K, Mi);
          check_launch((std::string("matmul_") + kKfName[F]).c_str());
        }
      });
      break;
    case Fmt::F16:
      k_mm_dense<MT, true><<<grid, kWarps * 32, 0, st>>>(w.qs, x, y, N, K, Mi);
      check_launch("matmul_f16");
      break;
    case Fmt::F32:
      k_mm_dense<MT, false><<<grid, kWarps * 32, 0, st>>>(w.qs, x, y, N, K, Mi);
      check_launch("matmul_f32");
      break;
    default: {
      size_t a, b;
      dev_matrix_sizes(w.fmt, w.N, w.K, &a, &b);  // throws naming the supported types
    }
  }
}

namespace {
std::mutex g_mma_mu;
int g_mma_on = -1;  // -1: not yet read from XSIL_CUDA_MMA
std::string g_mma_why;
int g_mma_checked = 0;  // bit per format: self-check done
int g_mma_failed = 0;   // bit per format: self-check failed (mma stays off for that format only)
std::string g_mma_failed_why;
int fmt_bit(Fmt f) { return 1 << ((int)f & 15); }  // GGML type ids of the block formats are < 16


void mma_init_locked() {
  if (g_mma_on >= 0) return;
  const char* e = std::getenv("XSIL_CUDA_MMA");
  g_mma_on = !(e && std::string(e) == "0");
  if (!g_mma_on) g_mma_why = "XSIL_CUDA_MMA=0";
}
}  // namespace

bool mma_enabled() {
  std::lock_guard<std::mutex> lk(g_mma_mu);
  mma_init_locked();
  return g_mma_on == 1;
}

void set_mma_enabled(bool on, const std::string& reason) {
  std::lock_guard<std::mutex> lk(g_mma_mu);
  mma_init_locked();
  g_mma_on = on ? 1 : 0;
  g_mma_why = on ? "" : reason;
}

bool mma_enabled_for(Fmt fmt) {
  std::lock_guard<std::mutex> lk(g_mma_mu);
  mma_init_locked();
  return g_mma_on == 1 && !(g_mma_failed & fmt_bit(fmt));
}

std::string mma_status() {
  std::lock_guard<std::mutex> lk(g_mma_mu);
  mma_init_locked();
  if (!g_mma_on) return "off: " + g_mma_why;
  std::string s = "on (quantized GEMMs with M >= " + std::to_string(kMmaMinM) + ")";
  if (g_mma_failed) s += "; off for " + g_mma_failed_why;
  return s;
}

void matmul(const DevMatrix& w, const float* x, DevQ8a xq, float* y, int64_t M, cudaStream_t st, GemmPath path) {
  SplitOut o;
  o.y[0] = y;
  o.n0[1] = (int)w.N;
  matmul_split(w, x, xq, o, M, st, path);
}

void matmul_split(const DevMatrix& w, const float* x, DevQ8a xq, const SplitOut& y, int64_t M, cudaStream_t st,
                  GemmPath path) {
  require(y.segs >= 1 && y.segs <= 3 && y.n0[0] == 0 && y.n0[y.segs] == w.N, "matmul", "bad output split");
  size_t a, b;
  dev_matrix_sizes(w.fmt, w.N, w.K, &a, &b);
  require(M > 0 && M <= 65535LL * kTileM && w.N < (1LL << 31) && w.K < (1LL << 31), "matmul", "sizes out of range");
  const bool quant = cuda_block_quant(w.fmt);
  const bool has_mma = cuda_has_mma(w.fmt);
  require(path != GemmPath::Mma || has_mma, "matmul",
          std::string("the tensor-core GEMM takes block-quantized weights, not ") + fmt_name(w.fmt));
  require(!quant || (xq.qs && xq.d && xq.s), "matmul", "quantized weights need the q8a activations");
  const int N = (int)w.N, K = (int)w.K, Mi = (int)M;
  const bool mma =
      path == GemmPath::Mma || (path == GemmPath::Auto && has_mma && M >= kMmaMinM && mma_enabled_for(w.fmt));
  if (mma) {
    require(M <= 65535LL * kMM, "matmul", "M too large");
    const dim3 grid(grid1(w.N, kMN), (unsigned)((M + kMM - 1) / kMM));
    const bool ok = with_block_fmt(w.fmt, [&](auto kf) {
      constexpr int F = decltype(kf)::value;
      k_gemm_mma<F><<<grid, 128, 0, st>>>((const uint8_t*)w.qs, w.d, xq.qs, xq.d, xq.s, y, N, K, Mi);
      check_launch((std::string("gemm_mma_") + kKfName[F]).c_str());
    });
    if (!ok) throw std::logic_error("[cuda:matmul] no tensor-core GEMM for " + std::string(fmt_name(w.fmt)));
  } else if (M == 1) {
    launch_mm<1>(w, x, xq, y, M, st);
  } else if (quant) {
    require(M <= 65535LL * kGM, "matmul", "M too large");
    const dim3 grid(grid1(w.N, kGW), (unsigned)((M + kGM - 1) / kGM));
    const bool ok = with_block_fmt(w.fmt, [&](auto kf) {
      constexpr int F = decltype(kf)::value;
      k_gemm_q<F><<<grid, kGW * 32, 0, st>>>((const uint8_t*)w.qs, w.d, xq.qs, xq.d, xq.s, y, N, K, Mi);
      check_launch((std::string("gemm_") + kKfName[F]).c_str());
    });
    if (!ok) throw std::logic_error("[cuda:matmul] no dp4a GEMM for " + std::string(fmt_name(w.fmt)));
  } else {
    launch_mm<kTileM>(w, x, xq, y, M, st);
  }
}

namespace {
// Deterministic pseudo-random GGUF rows for the self-check (no dependence on the host RNG).
struct Lcg {
  uint64_t s;
  uint32_t next() {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(s >> 33);
  }
};

std::vector<uint8_t> random_gguf_rows(Fmt fmt, int64_t N, int64_t K, Lcg& r) {
  const FmtInfo* fi = fmt_info(fmt);
  const int64_t nblk = N * K / fi->block_size;
  std::vector<uint8_t> v((size_t)(nblk * fi->type_size));
  for (auto& b : v) b = (uint8_t)r.next();
  for (int64_t i = 0; i < nblk; ++i) {
    uint8_t* p = v.data() + i * fi->type_size;
    // fp16 scales in [2^-8, 2^-7): positive, normal, small
    const uint16_t d = (uint16_t)(0x1C00 | (r.next() & 0x3FF));
    std::memcpy(p + (fmt == Fmt::Q6_K ? 208 : 0), &d, 2);  // Q6_K keeps d last
    if (fmt == Fmt::Q4_K || fmt == Fmt::Q5_K || fmt == Fmt::Q4_1 || fmt == Fmt::Q5_1) {
      // dmin (K-quants) or m (Q4_1 / Q5_1, signed: the sign bit stays random)
      const bool sign = fmt == Fmt::Q4_1 || fmt == Fmt::Q5_1;
      const uint16_t m = (uint16_t)(0x1C00 | (r.next() & (sign ? 0x83FF : 0x3FF)));
      std::memcpy(p + 2, &m, 2);
    }
  }
  return v;
}
}  // namespace

std::string mma_self_check(Fmt fmt, cudaStream_t st) {
  if (!cuda_has_mma(fmt) || !mma_enabled()) return "";
  const int bit = fmt_bit(fmt);
  {
    std::lock_guard<std::mutex> lk(g_mma_mu);
    if (g_mma_checked & bit) return "";
    g_mma_checked |= bit;
  }
  // odd sizes: N and M not multiples of the 64 tile, K an odd number of 32-blocks (Q4_K: of 256)
  const int64_t N = 72, M = 37, K = fmt_info(fmt)->block_size == 256 ? 768 : 352;
  Lcg r{0x9E3779B97F4A7C15ULL + (uint64_t)fmt};
  const std::vector<uint8_t> rows = random_gguf_rows(fmt, N, K, r);
  std::vector<float> x((size_t)(M * K));
  for (auto& v : x) v = (float)((int)(r.next() % 2001) - 1000) / 500.0f;
  size_t qb, db;
  dev_matrix_sizes(fmt, N, K, &qb, &db);
  std::vector<uint8_t> hq(qb), hd(db);
  repack_host(fmt, rows.data(), N, K, hq.data(), (uint16_t*)hd.data());
  std::vector<float> y1((size_t)(M * N)), y2((size_t)(M * N));
  std::vector<void*> bufs;
  std::string why;
  auto alloc = [&](size_t n) {
    void* p = nullptr;
    check(cudaMalloc(&p, n), "cudaMalloc(mma self-check)");
    bufs.push_back(p);
    return p;
  };
  try {
    void* dq = alloc(qb);
    void* dd = alloc(db);
    float* dx = (float*)alloc(x.size() * 4);
    int8_t* xqs = (int8_t*)alloc((size_t)(M * K));
    float* xd = (float*)alloc((size_t)(M * K / 32) * 4);
    float* xs = (float*)alloc((size_t)(M * K / 32) * 4);
    float* dy1 = (float*)alloc(y1.size() * 4);
    float* dy2 = (float*)alloc(y2.size() * 4);
    check(cudaMemcpyAsync(dq, hq.data(), qb, cudaMemcpyHostToDevice, st), "mma self-check upload");
    check(cudaMemcpyAsync(dd, hd.data(), db, cudaMemcpyHostToDevice, st), "mma self-check upload");
    check(cudaMemcpyAsync(dx, x.data(), x.size() * 4, cudaMemcpyHostToDevice, st), "mma self-check upload");
    const DevMatrix w{fmt, N, K, dq, (const uint16_t*)dd};
    const DevQ8a q{xqs, xd, xs};
    quantize_q8a(dx, q, M, K, st);
    matmul(w, dx, q, dy1, M, st, GemmPath::Dp4a);
    matmul(w, dx, q, dy2, M, st, GemmPath::Mma);
    check(cudaMemcpyAsync(y1.data(), dy1, y1.size() * 4, cudaMemcpyDeviceToHost, st), "mma self-check download");
    check(cudaMemcpyAsync(y2.data(), dy2, y2.size() * 4, cudaMemcpyDeviceToHost, st), "mma self-check download");
    check(cudaStreamSynchronize(st), "mma self-check");
    double amax = 0.0, dmax = 0.0;
    for (size_t i = 0; i < y1.size(); ++i) {
      amax = std::fmax(amax, std::fabs((double)y1[i]));
      const double dv = std::fabs((double)y1[i] - (double)y2[i]);
      dmax = std::isnan(dv) ? INFINITY : std::fmax(dmax, dv);
    }
    // both compute the same int32 block dots; only the fp32 scaling order differs
    if (!(dmax <= 1e-4 * amax + 1e-6))
      why = std::string("self-check failed: the tensor-core GEMM (") + fmt_name(fmt) + ") differs from the dp4a GEMM by " +
            std::to_string(amax > 0 ? dmax / amax : dmax) + " of max|y|";
  } catch (const std::exception& e) {
    why = std::string("self-check failed (") + fmt_name(fmt) + "): " + e.what();
  }
  // fault injection for tests: XSIL_CUDA_MMA_FAIL=Q6_K,Q4_0 fails those formats' checks
  if (const char* f = std::getenv("XSIL_CUDA_MMA_FAIL"); f && why.empty()) {
    const std::string list = std::string(",") + f + ",";
    if (list.find(std::string(",") + fmt_name(fmt) + ",") != std::string::npos)
      why = std::string("self-check failed (") + fmt_name(fmt) + "): forced by XSIL_CUDA_MMA_FAIL";
  }
  for (void* p : bufs) cudaFree(p);
  if (!why.empty()) {  // only this format falls back to the dp4a GEMM
    std::lock_guard<std::mutex> lk(g_mma_mu);
    g_mma_failed |= bit;
    g_mma_failed_why += (g_mma_failed_why.empty() ? "" : "; ") + std::string(fmt_name(fmt)) + " (" + why + ")";
  }
  return why;
}

void copy_d2d(void* dst, const void* src, size_t bytes, cudaStream_t st) {
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, st), "copy_d2d");
}

}  // namespace xsil::cuda
