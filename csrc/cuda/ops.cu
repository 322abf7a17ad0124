// Small fp32 ops of the decoder forward: RMSNorm, RoPE (normal / neox), SwiGLU, residual add, bias,
// embedding row gather (dequantizing GGUF rows).
#include "cuda/common.cuh"

namespace xsil::cuda {

namespace {

__global__ void k_rms_norm(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y,
                           int64_t n, float eps) {
  const float* xr = x + (int64_t)blockIdx.x * n;
  float* yr = y + (int64_t)blockIdx.x * n;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) ss += xr[i] * xr[i];
  __shared__ float part[32];
  ss = warp_sum(ss);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x / 32] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    float v = threadIdx.x < blockDim.x / 32 ? part[threadIdx.x] : 0.0f;
    v = warp_sum(v);
    if (threadIdx.x == 0) part[0] = v;
  }
  __syncthreads();
  const float scale = (float)(1.0 / sqrt((double)part[0] / (double)n + (double)eps));
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) yr[i] = xr[i] * scale * w[i];
}

// One thread per rotated pair. The angle is computed in double (as the CPU reference does) so long
// positions keep their precision.
__global__ void k_rope(float* __restrict__ x, int64_t n_tok, int64_t n_vec, int64_t hd, int64_t pos0, int mode,
                       double base, double fscale, const float* __restrict__ ff, const int64_t* __restrict__ dpos) {
  if (dpos) pos0 = *dpos;
  const int64_t half = hd / 2;
  const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= n_tok * n_vec * half) return;
  const int64_t i = idx % half;
  const int64_t hv = idx / half;  // t * n_vec + h
  const int64_t t = hv / n_vec;
  double inv = pow(base, -2.0 * (double)i / (double)hd);
  if (ff) inv /= (double)ff[i];  // per-pair frequency factors divide the frequency (RopeParams)
  const double th = (double)(pos0 + t) * fscale * inv;
  double sd, cd;
  sincos(th, &sd, &cd);
  const float c = (float)cd, s = (float)sd;
  float* v = x + hv * hd;
  const int64_t i0 = mode == 0 ? 2 * i : i;
  const int64_t i1 = mode == 0 ? 2 * i + 1 : i + half;
  const float a = v[i0], b = v[i1];
  v[i0] = a * c - b * s;
  v[i1] = a * s + b * c;
}

// One CTA per row: (x += add), sum of squares, then each warp normalizes and quantizes whole
// 32-blocks (when qs != nullptr).
__global__ void k_rms_norm_q(float* __restrict__ x, const float* __restrict__ add, const float* __restrict__ w,
                             float* __restrict__ y, int8_t* __restrict__ qs, float* __restrict__ qd,
                             float* __restrict__ qsum, int64_t n, float eps) {
  const int64_t r = blockIdx.x;
  float* xr = x + r * n;
  const float* ar = add ? add + r * n : nullptr;
  float* yr = y + r * n;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    float v = xr[i];
    if (ar) {
      v += ar[i];
      xr[i] = v;
    }
    ss += v * v;
  }
  __shared__ float part[32];
  ss = warp_sum(ss);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x / 32] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    float v = threadIdx.x < blockDim.x / 32 ? part[threadIdx.x] : 0.0f;
    v = warp_sum(v);
    if (threadIdx.x == 0) part[0] = v;
  }
  __syncthreads();
  const float scale = (float)(1.0 / sqrt((double)part[0] / (double)n + (double)eps));
  if (!qs) {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) yr[i] = xr[i] * scale * w[i];
    return;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32, nw = blockDim.x / 32;
  const int64_t nb = n / 32;
  for (int64_t b = warp; b < nb; b += nw) {
    const int64_t i = b * 32 + lane;
    const float v = xr[i] * scale * w[i];
    yr[i] = v;
    quant_block_warp(v, lane, qs + r * n + b * 32, qd + r * nb + b, qsum + r * nb + b);
  }
}

// One warp per 32-block of g: SwiGLU then q8a.
__global__ void k_swiglu_q(float* __restrict__ g, const float* __restrict__ u, int8_t* __restrict__ qs,
                           float* __restrict__ qd, float* __restrict__ qsum, int64_t n_blocks) {
  const int64_t blk = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (blk >= n_blocks) return;
  const int64_t i = blk * 32 + lane;
  const float a = g[i];
  const float v = a / (1.0f + expf(-a)) * u[i];
  g[i] = v;
  quant_block_warp(v, lane, qs + blk * 32, qd + blk, qsum + blk);
}

__global__ void k_swiglu(float* __restrict__ g, const float* __restrict__ u, int64_t n) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    const float v = g[i];
    g[i] = v / (1.0f + expf(-v)) * u[i];
  }
}

__global__ void k_add(float* __restrict__ y, const float* __restrict__ x, int64_t n) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] += x[i];
}

__global__ void k_add_bias(float* __restrict__ y, const float* __restrict__ b, int64_t total, int64_t n) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < total) y[i] += b[i % n];
}

__global__ void k_get_rows(const uint8_t* __restrict__ w, int fmt, int64_t n, const int32_t* __restrict__ tok,
                           float* __restrict__ out) {
  const int64_t r = tok[blockIdx.x];
  float* o = out + (int64_t)blockIdx.x * n;
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) {
    float v;
    if (fmt == (int)Fmt::F32) {
      v = ((const float*)w)[r * n + k];
    } else if (fmt == (int)Fmt::F16) {
      v = h2f(((const uint16_t*)w)[r * n + k]);
    } else if (fmt == (int)Fmt::Q4_0) {
      const uint8_t* b = w + (r * (n / 32) + k / 32) * 18;
      const int j = (int)(k % 32);
      const float d = h2f((uint16_t)(b[0] | (b[1] << 8)));
      const int q = j < 16 ? (b[2 + j] & 0xF) : (b[2 + j - 16] >> 4);
      v = d * (float)(q - 8);
    } else if (fmt == (int)Fmt::Q8_0) {
      const uint8_t* b = w + (r * (n / 32) + k / 32) * 34;
      const float d = h2f((uint16_t)(b[0] | (b[1] << 8)));
      v = d * (float)(int8_t)b[2 + k % 32];
    } else if (fmt == (int)Fmt::Q4_1 || fmt == (int)Fmt::Q5_0 || fmt == (int)Fmt::Q5_1) {
      // the CPU dequantizer's roundings: d * q + m (Q4_1, Q5_1), d * (q - 16) (Q5_0), no fma
      const int bs = fmt == (int)Fmt::Q4_1 ? 20 : fmt == (int)Fmt::Q5_0 ? 22 : 24;
      const uint8_t* b = w + (r * (n / 32) + k / 32) * bs;
      const int j = (int)(k % 32);
      const float d = h2f((uint16_t)(b[0] | (b[1] << 8)));
      const uint8_t* qs = b + (fmt == (int)Fmt::Q5_0 ? 6 : fmt == (int)Fmt::Q5_1 ? 8 : 4);
      int q = (j < 16 ? qs[j] : qs[j - 16] >> 4) & 0x0F;
      if (fmt != (int)Fmt::Q4_1) {
        const uint8_t* qh = b + (fmt == (int)Fmt::Q5_0 ? 2 : 4);
        q |= ((qh[j / 8] >> (j % 8)) & 1) << 4;  // bit j of the little-endian uint32
      }
      if (fmt == (int)Fmt::Q5_0) {
        v = __fmul_rn(d, (float)(q - 16));
      } else {
        const float m = h2f((uint16_t)(b[2] | (b[3] << 8)));
        v = __fadd_rn(__fmul_rn(d, (float)q), m);
      }
    } else if (fmt == (int)Fmt::Q5_K) {  // as Q4_K plus bit j of qh[l]
      const uint8_t* b = w + (r * (n / 256) + k / 256) * 176;
      const int e = (int)(k % 256), j = e / 32, l = e % 32;
      int sc, m;
      q4k_sc_m(j, b + 4, &sc, &m);
      const float d1 = __fmul_rn(h2f((uint16_t)(b[0] | (b[1] << 8))), (float)sc);
      const float m1 = __fmul_rn(h2f((uint16_t)(b[2] | (b[3] << 8))), (float)m);
      const int q = ((b[48 + 32 * (j / 2) + l] >> (4 * (j & 1))) & 0x0F) | (((b[16 + l] >> j) & 1) << 4);
      v = __fsub_rn(__fmul_rn(d1, (float)q), m1);
    } else if (fmt == (int)Fmt::Q6_K) {  // (d * sc) * (q - 32); ql, qh, scales, then d at byte 208
      const uint8_t* b = w + (r * (n / 256) + k / 256) * 210;
      const int e = (int)(k % 256), h = e / 128, sq = (e % 128) / 32, l = e % 32;
      const int lo = (b[64 * h + 32 * (sq & 1) + l] >> (4 * (sq >> 1))) & 0x0F;
      const int hi = (b[128 + 32 * h + l] >> (2 * sq)) & 0x03;
      const float d = h2f((uint16_t)(b[208] | (b[209] << 8)));
      v = __fmul_rn(__fmul_rn(d, (float)(int8_t)b[192 + e / 16]), (float)((lo | (hi << 4)) - 32));
    } else {  // Q4_K: element e of a super-block is in group e / 64, low nibbles first
      const uint8_t* b = w + (r * (n / 256) + k / 256) * 144;
      const int e = (int)(k % 256), grp = e / 64, hi = (e / 32) & 1, l = e % 32;
      int sc, m;
      q4k_sc_m(2 * grp + hi, b + 4, &sc, &m);
      const float d1 = __fmul_rn(h2f((uint16_t)(b[0] | (b[1] << 8))), (float)sc);
      const float m1 = __fmul_rn(h2f((uint16_t)(b[2] | (b[3] << 8))), (float)m);
      const int q = (b[16 + 32 * grp + l] >> (4 * hi)) & 0xF;
      v = __fsub_rn(__fmul_rn(d1, (float)q), m1);  // no fma: the same rounding as the CPU dequantize
    }
    o[k] = v;
  }
}

}  // namespace

void rms_norm(const float* x, const float* w, float* y, int64_t rows, int64_t n, float eps, cudaStream_t st) {
  require(rows > 0 && rows < (1LL << 31) && n > 0, "rms_norm", "rows and n must be positive");
  k_rms_norm<<<(unsigned)rows, 256, 0, st>>>(x, w, y, n, eps);
  check_launch("rms_norm");
}

void rms_norm_q(float* x, const float* add, const float* w, float* h, DevQ8a xq, int64_t rows, int64_t n, float eps,
                cudaStream_t st) {
  require(rows > 0 && rows < (1LL << 31) && n > 0, "rms_norm", "rows and n must be positive");
  require(!xq.qs || n % 32 == 0, "rms_norm", "n must be a multiple of 32 to quantize");
  k_rms_norm_q<<<(unsigned)rows, 256, 0, st>>>(x, add, w, h, xq.qs, xq.d, xq.s, n, eps);
  check_launch("rms_norm");
}

void swiglu_q(float* g, const float* u, DevQ8a xq, int64_t rows, int64_t n, cudaStream_t st) {
  require(rows > 0 && n > 0 && n % 32 == 0, "swiglu", "n must be a positive multiple of 32");
  const int64_t nblk = rows * n / 32;
  k_swiglu_q<<<grid1(nblk, 8), 256, 0, st>>>(g, u, xq.qs, xq.d, xq.s, nblk);
  check_launch("swiglu");
}

void rope(float* x, int64_t n_tok, int64_t n_vec, int64_t hd, int64_t pos0, const RopeParams& rp, const float* dff,
          cudaStream_t st, const int64_t* dpos) {
  if (rp.mode == RopeMode::None) return;
  require(hd > 0 && hd % 2 == 0, "rope", "head_dim must be even and positive");
  require(rp.mode == RopeMode::Normal || rp.mode == RopeMode::Neox, "rope", "unknown rope mode");
  require(rp.freq_base > 0 && rp.freq_scale > 0, "rope", "freq_base and freq_scale must be > 0");
  require(pos0 >= 0 && n_tok > 0 && n_vec > 0, "rope", "bad sizes");
  require((rp.freq_factors != nullptr) == (dff != nullptr), "rope",
          "rope frequency factors need their device copy (and only then)");
  require(!rp.freq_factors || rp.n_freq_factors == hd / 2, "rope", "rope frequency factors: expected head_dim / 2");
  const int64_t total = n_tok * n_vec * (hd / 2);
  k_rope<<<grid1(total, 256), 256, 0, st>>>(x, n_tok, n_vec, hd, pos0, (int)rp.mode, (double)rp.freq_base,
                                            (double)rp.freq_scale, dff, dpos);
  check_launch("rope");
}

void swiglu(float* g, const float* u, int64_t count, cudaStream_t st) {
  require(count > 0, "swiglu", "count must be positive");
  k_swiglu<<<grid1(count, 256), 256, 0, st>>>(g, u, count);
  check_launch("swiglu");
}

void add_inplace(float* y, const float* x, int64_t count, cudaStream_t st) {
  require(count > 0, "add", "count must be positive");
  k_add<<<grid1(count, 256), 256, 0, st>>>(y, x, count);
  check_launch("add");
}

void add_bias(float* y, const float* b, int64_t rows, int64_t n, cudaStream_t st) {
  require(rows > 0 && n > 0, "add_bias", "rows and n must be positive");
  k_add_bias<<<grid1(rows * n, 256), 256, 0, st>>>(y, b, rows * n, n);
  check_launch("add_bias");
}

void get_rows(const void* w, Fmt fmt, int64_t n_rows, int64_t n, const int32_t* tokens, int64_t n_tok, float* out,
              cudaStream_t st) {
  require(cuda_supports(fmt), "get_rows",
          std::string("embedding type ") + cuda_fmt_name(fmt) + " not supported (supported: " + kCudaTypeList + ")");
  if (fmt != Fmt::F32 && fmt != Fmt::F16) {
    const int bsz = fmt_info(fmt)->block_size;
    require(n % bsz == 0, "get_rows",
            "n=" + std::to_string(n) + " must be a multiple of " + std::to_string(bsz) + " for " + cuda_fmt_name(fmt));
  }
  require(n_tok > 0 && n_tok < (1LL << 31) && n > 0 && n_rows > 0, "get_rows", "bad sizes");
  k_get_rows<<<(unsigned)n_tok, 256, 0, st>>>((const uint8_t*)w, (int)fmt, n, tokens, out);
  check_launch("get_rows");
}

}  // namespace xsil::cuda
