// Block-quantized matmul on the integer path: activations quantized once per call to int8 blocks
// (block_q8a semantics), weights in the SoA device layout (16-byte aligned quant loads), __dp4a dots.
// One warp per weight row; a CTA holds 4 rows. M == 1 (decode) is the GEMV; M > 1 tiles 8 activation
// rows per CTA so each weight block loaded from HBM is used 8 times (register tiling).
#include <cstring>
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

// Prefill GEMM (M > 1) for Q4_0 / Q8_0, tiled through shared memory: a CTA computes kGW weight rows
// (one warp each) x kGM activation rows. K is walked in chunks of 32 blocks: the chunk's quantized
// activations (kGM rows x 32 blocks: quants, scales, sums) are staged in shared memory once and read
// by every warp; each lane owns one block of the chunk, loads its weight block once and reuses it
// for the kGM activation rows.
constexpr int kGW = 8, kGM = 16, kGC = 32;

template <bool Q4>
__global__ void __launch_bounds__(kGW * 32) k_gemm_q(const uint8_t* __restrict__ wq, const uint16_t* __restrict__ wd,
                                                    const int8_t* __restrict__ xq, const float* __restrict__ xd,
                                                    const float* __restrict__ xs, SplitOut out, int N, int K, int M) {
  __shared__ __align__(16) int8_t sq[kGM][kGC][32];  // 16 KB
  __shared__ float sd[kGM][kGC], ss[kGM][kGC];
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  const int n = blockIdx.x * kGW + warp;
  const int m0 = blockIdx.y * kGM;
  const int nb = K / 32;
  const int bytes_per_block = Q4 ? 16 : 32;
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
    if (n < N && b < nb) {
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

const char* fmt_name(Fmt f) {
  switch (f) {
    case Fmt::F32: return "F32";
    case Fmt::F16: return "F16";
    case Fmt::Q4_0: return "Q4_0";
    case Fmt::Q8_0: return "Q8_0";
    case Fmt::Q4_K: return "Q4_K";
  }
  return "?";
}

}  // namespace

void dev_matrix_sizes(Fmt fmt, int64_t N, int64_t K, size_t* qs_bytes, size_t* d_bytes) {
  require(N > 0 && K > 0, "matmul", "N and K must be positive");
  switch (fmt) {
    case Fmt::Q4_0:
      require(K % 32 == 0, "matmul", "K=" + std::to_string(K) + " must be a multiple of 32 for Q4_0");
      *qs_bytes = (size_t)N * K / 2;
      *d_bytes = (size_t)N * (K / 32) * 2;
      return;
    case Fmt::Q8_0:
      require(K % 32 == 0, "matmul", "K=" + std::to_string(K) + " must be a multiple of 32 for Q8_0");
      *qs_bytes = (size_t)N * K;
      *d_bytes = (size_t)N * (K / 32) * 2;
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
    default:
      throw std::invalid_argument(std::string("[cuda:matmul] weight type ") + fmt_name(fmt) +
                                  " is not supported by the CUDA backend (supported: F32, F16, Q4_0, Q8_0)");
  }
}

void repack_host(Fmt fmt, const void* src, int64_t N, int64_t K, void* qs, uint16_t* d) {
  const int64_t nb = K / 32;
  const uint8_t* s = (const uint8_t*)src;
  if (fmt == Fmt::Q4_0) {
    for (int64_t i = 0; i < N * nb; ++i) {
      const block_q4_0* b = (const block_q4_0*)(s + i * sizeof(block_q4_0));
      d[i] = b->d;
      std::memcpy((uint8_t*)qs + i * 16, b->qs, 16);
    }
  } else if (fmt == Fmt::Q8_0) {
    for (int64_t i = 0; i < N * nb; ++i) {
      const block_q8_0* b = (const block_q8_0*)(s + i * sizeof(block_q8_0));
      d[i] = b->d;
      std::memcpy((uint8_t*)qs + i * 32, b->qs, 32);
    }
  } else {
    size_t qb, db;
    dev_matrix_sizes(fmt, N, K, &qb, &db);
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

void matmul(const DevMatrix& w, const float* x, DevQ8a xq, float* y, int64_t M, cudaStream_t st) {
  SplitOut o;
  o.y[0] = y;
  o.n0[1] = (int)w.N;
  matmul_split(w, x, xq, o, M, st);
}

void matmul_split(const DevMatrix& w, const float* x, DevQ8a xq, const SplitOut& y, int64_t M, cudaStream_t st) {
  require(y.segs >= 1 && y.segs <= 3 && y.n0[0] == 0 && y.n0[y.segs] == w.N, "matmul", "bad output split");
  size_t a, b;
  dev_matrix_sizes(w.fmt, w.N, w.K, &a, &b);
  require(M > 0 && M <= 65535LL * kTileM && w.N < (1LL << 31) && w.K < (1LL << 31), "matmul", "sizes out of range");
  if (M == 1) {
    launch_mm<1>(w, x, xq, y, M, st);
  } else if (w.fmt == Fmt::Q4_0 || w.fmt == Fmt::Q8_0) {
    require(M <= 65535LL * kGM, "matmul", "M too large");
    const dim3 grid(grid1(w.N, kGW), (unsigned)((M + kGM - 1) / kGM));
    if (w.fmt == Fmt::Q4_0)
      k_gemm_q<true><<<grid, kGW * 32, 0, st>>>((const uint8_t*)w.qs, w.d, xq.qs, xq.d, xq.s, y, (int)w.N, (int)w.K,
                                                (int)M);
    else
      k_gemm_q<false><<<grid, kGW * 32, 0, st>>>((const uint8_t*)w.qs, w.d, xq.qs, xq.d, xq.s, y, (int)w.N, (int)w.K,
                                                 (int)M);
    check_launch(w.fmt == Fmt::Q4_0 ? "gemm_q4_0" : "gemm_q8_0");
  } else {
    launch_mm<kTileM>(w, x, xq, y, M, st);
  }
}

void copy_d2d(void* dst, const void* src, size_t bytes, cudaStream_t st) {
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, st), "copy_d2d");
}

}  // namespace xsil::cuda
