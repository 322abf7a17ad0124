// Attention over a device-resident fp16 KV cache, contiguous per sequence ([n_ctx][n_kv * hd] per
// layer; no paging in this slice). One CTA per (query token, head); its warps split the visible keys
// and keep an online softmax each (lanes hold hd/32 elements), merged through shared memory at the
// end. Prefill (causal, n_q > 1) stages K/V tiles in shared memory for 8 queries at a time.
#include <cmath>

#include "cuda/common.cuh"

namespace xsil::cuda {

namespace {

constexpr int kAttnWarps = 8;
constexpr int kMaxE = 8;  // hd <= 256

__global__ void k_kv_write(uint16_t* __restrict__ kc, uint16_t* __restrict__ vc, const float* __restrict__ k,
                           const float* __restrict__ v, int64_t off, int64_t total, const int64_t* __restrict__ dpos,
                           int64_t kvd) {
  if (dpos) off = *dpos * kvd;
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < total) {
    kc[off + i] = f2h(k[i]);
    vc[off + i] = f2h(v[i]);
  }
}

// One thread per rotated pair of q (when q != nullptr, rotated in place) and of k (rotated and written
// to the fp16 cache with the matching v pair). Same angle computation as k_rope.
__global__ void k_rope_qkv(float* __restrict__ q, int64_t n_q_heads, const float* __restrict__ k,
                           const float* __restrict__ v, uint16_t* __restrict__ kc, uint16_t* __restrict__ vc,
                           int64_t n_tok, int64_t n_kv, int64_t hd, int64_t pos0, int mode, double base, double fscale,
                           const int64_t* __restrict__ dpos) {
  if (dpos) pos0 = *dpos;
  const int64_t half = hd / 2;
  const int64_t nh = n_q_heads + n_kv;  // q heads first, then k heads, per token
  const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= n_tok * nh * half) return;
  const int64_t i = idx % half;
  const int64_t th_idx = idx / half;
  const int64_t t = th_idx / nh, hh = th_idx % nh;
  const int64_t i0 = mode == 0 ? 2 * i : i;
  const int64_t i1 = mode == 0 ? 2 * i + 1 : i + half;
  float c = 1.0f, s = 0.0f;
  if (mode >= 0) {
    const double th = (double)(pos0 + t) * fscale * pow(base, -2.0 * (double)i / (double)hd);
    double sd, cd;
    sincos(th, &sd, &cd);
    c = (float)cd;
    s = (float)sd;
  }
  if (hh < n_q_heads) {
    float* qr = q + (t * n_q_heads + hh) * hd;
    const float a = qr[i0], b = qr[i1];
    qr[i0] = a * c - b * s;
    qr[i1] = a * s + b * c;
    return;
  }
  const int64_t hv = t * n_kv + (hh - n_q_heads);
  const float* kr = k + hv * hd;
  const float a = kr[i0], b = kr[i1];
  const float r0 = mode >= 0 ? a * c - b * s : a, r1 = mode >= 0 ? a * s + b * c : b;
  const int64_t off = (pos0 * n_kv) * hd + hv * hd;  // cache row of position pos0 + t, head h
  kc[off + i0] = f2h(r0);
  kc[off + i1] = f2h(r1);
  vc[off + i0] = f2h(v[hv * hd + i0]);
  vc[off + i1] = f2h(v[hv * hd + i1]);
}

__global__ void __launch_bounds__(kAttnWarps * 32)
    k_attention(const float* __restrict__ q, const uint16_t* __restrict__ kc, const uint16_t* __restrict__ vc,
                float* __restrict__ out, int64_t pos0, int n_heads, int n_kv, int hd, float scale,
                const int64_t* __restrict__ dpos, int8_t* __restrict__ oq, float* __restrict__ od,
                float* __restrict__ os) {
  if (dpos) pos0 = *dpos;
  const int h = blockIdx.x;
  const int64_t qi = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int kvh = h / (n_heads / n_kv);
  const int64_t kvd = (int64_t)n_kv * hd;
  const int E = hd / 32;
  const int64_t n_keys = pos0 + qi + 1;
  const float* qr = q + (qi * n_heads + h) * hd + lane * E;
  float qv[kMaxE], acc[kMaxE];
#pragma unroll
  for (int e = 0; e < kMaxE; ++e) {
    qv[e] = e < E ? qr[e] * scale : 0.0f;
    acc[e] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int64_t j = warp; j < n_keys; j += kAttnWarps) {
    const uint16_t* kr = kc + j * kvd + (int64_t)kvh * hd + lane * E;
    float s = 0.0f;
#pragma unroll
    for (int e = 0; e < kMaxE; ++e)
      if (e < E) s += qv[e] * h2f(kr[e]);
    s = warp_sum(s);
    const float mn = fmaxf(m, s);
    const float c = expf(m - mn), p = expf(s - mn);
    l = l * c + p;
    const uint16_t* vr = vc + j * kvd + (int64_t)kvh * hd + lane * E;
#pragma unroll
    for (int e = 0; e < kMaxE; ++e)
      if (e < E) acc[e] = acc[e] * c + p * h2f(vr[e]);
    m = mn;
  }
  __shared__ float sm_m[kAttnWarps], sm_l[kAttnWarps];
  __shared__ float sm_acc[kAttnWarps][256];
  if (lane == 0) {
    sm_m[warp] = m;
    sm_l[warp] = l;
  }
#pragma unroll
  for (int e = 0; e < kMaxE; ++e)
    if (e < E) sm_acc[warp][lane * E + e] = acc[e];
  __syncthreads();
  float M = -INFINITY;
  for (int w = 0; w < kAttnWarps; ++w) M = fmaxf(M, sm_m[w]);
  float L = 0.0f, f[kAttnWarps];
  for (int w = 0; w < kAttnWarps; ++w) {
    f[w] = sm_m[w] == -INFINITY ? 0.0f : expf(sm_m[w] - M);
    L += sm_l[w] * f[w];
  }
  // blockDim (256) >= hd and hd % 32 == 0: thread i owns output element i, warp w owns its 32-block
  const int64_t e0 = (qi * n_heads + h) * hd;
  const int i = threadIdx.x;
  if (i < hd) {
    float a = 0.0f;
    for (int w = 0; w < kAttnWarps; ++w) a += sm_acc[w][i] * f[w];
    const float val = a / L;
    out[e0 + i] = val;
    if (oq) {  // q8a of the output for the next matmul (warp-uniform branch)
      const int64_t b = (e0 + (i & ~31)) / 32;
      quant_block_warp(val, lane, oq + b * 32, od + b, os + b);
    }
  }
}

// Causal prefill: one CTA per (head, tile of kQT query tokens), one warp per query. K/V tiles of
// kKT tokens are staged in shared memory once and read by all kQT queries of the CTA (each warp keeps
// its own online softmax and writes its row; no merge needed).
constexpr int kQT = 8, kKT = 32;

__global__ void __launch_bounds__(kQT * 32)
    k_attention_prefill(const float* __restrict__ q, const uint16_t* __restrict__ kc, const uint16_t* __restrict__ vc,
                        float* __restrict__ out, int64_t n_q, int64_t pos0, int n_heads, int n_kv, int hd,
                        float scale) {
  __shared__ __align__(16) uint16_t sk[kKT][256];
  __shared__ __align__(16) uint16_t sv[kKT][256];
  const int h = blockIdx.x;
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int64_t q_first = (int64_t)blockIdx.y * kQT;
  const int64_t qi = q_first + warp;
  const bool active = qi < n_q;
  const int kvh = h / (n_heads / n_kv);
  const int64_t kvd = (int64_t)n_kv * hd;
  const int E = hd / 32;
  const int64_t my_last = pos0 + qi;  // last visible position of this warp's query
  const int64_t cta_last = pos0 + min(q_first + kQT, n_q) - 1;
  float qv[kMaxE], acc[kMaxE];
#pragma unroll
  for (int e = 0; e < kMaxE; ++e) {
    qv[e] = (active && e < E) ? q[(qi * n_heads + h) * hd + lane * E + e] * scale : 0.0f;
    acc[e] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  const int words = hd / 2;  // 4-byte words per row
  for (int64_t t0 = 0; t0 <= cta_last; t0 += kKT) {
    __syncthreads();  // the previous tile has been consumed
    for (int i = threadIdx.x; i < kKT * words; i += blockDim.x) {
      const int r = i / words, c = (i % words) * 2;
      const int64_t tok = t0 + r;
      uint32_t kw = 0, vw = 0;
      if (tok <= cta_last) {
        kw = *(const uint32_t*)(kc + tok * kvd + (int64_t)kvh * hd + c);
        vw = *(const uint32_t*)(vc + tok * kvd + (int64_t)kvh * hd + c);
      }
      *(uint32_t*)&sk[r][c] = kw;
      *(uint32_t*)&sv[r][c] = vw;
    }
    __syncthreads();
    if (active) {
      const int64_t jmax = min((int64_t)kKT, my_last - t0 + 1);
      for (int j = 0; j < jmax; ++j) {
        float s = 0.0f;
#pragma unroll
        for (int e = 0; e < kMaxE; ++e)
          if (e < E) s += qv[e] * h2f(sk[j][lane * E + e]);
        s = warp_sum(s);
        const float mn = fmaxf(m, s);
        const float c = expf(m - mn), p = expf(s - mn);
        l = l * c + p;
#pragma unroll
        for (int e = 0; e < kMaxE; ++e)
          if (e < E) acc[e] = acc[e] * c + p * h2f(sv[j][lane * E + e]);
        m = mn;
      }
    }
  }
  if (active) {
    float* o = out + (qi * n_heads + h) * hd + lane * E;
#pragma unroll
    for (int e = 0; e < kMaxE; ++e)
      if (e < E) o[e] = acc[e] / l;
  }
}

}  // namespace

void kv_write(uint16_t* kc, uint16_t* vc, const float* k, const float* v, int64_t pos0, int64_t n_tok, int64_t kvd,
              cudaStream_t st, const int64_t* dpos) {
  require(pos0 >= 0 && n_tok > 0 && kvd > 0, "kv_write", "bad sizes");
  const int64_t total = n_tok * kvd;
  k_kv_write<<<grid1(total, 256), 256, 0, st>>>(kc, vc, k, v, pos0 * kvd, total, dpos, kvd);
  check_launch("kv_write");
}

void rope_kv_write(const float* k, const float* v, uint16_t* kc, uint16_t* vc, int64_t n_tok, int64_t n_kv,
                   int64_t hd, int64_t pos0, const RopeParams& rp, cudaStream_t st, const int64_t* dpos) {
  require(hd > 0 && hd % 2 == 0 && n_tok > 0 && n_kv > 0 && pos0 >= 0, "kv_write", "bad sizes");
  require(rp.mode == RopeMode::None || rp.mode == RopeMode::Normal || rp.mode == RopeMode::Neox, "kv_write",
          "unknown rope mode");
  const int64_t total = n_tok * n_kv * (hd / 2);
  k_rope_qkv<<<grid1(total, 256), 256, 0, st>>>(nullptr, 0, k, v, kc, vc, n_tok, n_kv, hd, pos0, (int)rp.mode,
                                                (double)rp.freq_base, (double)rp.freq_scale, dpos);
  check_launch("kv_write");
}

void rope_qkv_write(float* q, int64_t n_q_heads, const float* k, const float* v, uint16_t* kc, uint16_t* vc,
                    int64_t n_tok, int64_t n_kv, int64_t hd, int64_t pos0, const RopeParams& rp, cudaStream_t st,
                    const int64_t* dpos) {
  require(hd > 0 && hd % 2 == 0 && n_tok > 0 && n_kv > 0 && n_q_heads >= 0 && pos0 >= 0, "rope", "bad sizes");
  require(rp.mode == RopeMode::None || rp.mode == RopeMode::Normal || rp.mode == RopeMode::Neox, "rope",
          "unknown rope mode");
  const int64_t total = n_tok * (n_q_heads + n_kv) * (hd / 2);
  k_rope_qkv<<<grid1(total, 256), 256, 0, st>>>(q, n_q_heads, k, v, kc, vc, n_tok, n_kv, hd, pos0, (int)rp.mode,
                                                (double)rp.freq_base, (double)rp.freq_scale, dpos);
  check_launch("rope");
}

void attention(const float* q, const uint16_t* kc, const uint16_t* vc, float* out, int64_t n_q, int64_t pos0,
               int n_heads, int n_kv, int hd, float scale, cudaStream_t st, const int64_t* dpos, DevQ8a qout) {
  require(hd >= 32 && hd <= 32 * kMaxE && hd % 32 == 0, "attention",
          "head_dim=" + std::to_string(hd) + " must be a multiple of 32 in [32, 256]");
  require(n_kv > 0 && n_heads > 0 && n_heads % n_kv == 0, "attention", "n_heads must be a multiple of n_kv");
  require(n_q > 0 && n_q <= 65535 && pos0 >= 0, "attention", "n_q must be in [1, 65535]");
  if (scale == 0.0f) scale = 1.0f / std::sqrt((float)hd);
  if (n_q == 1 || dpos) {  // decode (and graph replays): one CTA per head, 8 warps split the keys
    const dim3 grid((unsigned)n_heads, (unsigned)n_q);
    k_attention<<<grid, kAttnWarps * 32, 0, st>>>(q, kc, vc, out, pos0, n_heads, n_kv, hd, scale, dpos, qout.qs,
                                                  qout.d, qout.s);
    check_launch("attention");
  } else {  // prefill: K/V tiles in shared memory shared by kQT queries
    const dim3 grid((unsigned)n_heads, (unsigned)((n_q + kQT - 1) / kQT));
    k_attention_prefill<<<grid, kQT * 32, 0, st>>>(q, kc, vc, out, n_q, pos0, n_heads, n_kv, hd, scale);
    check_launch("attention");
    if (qout.qs) quantize_q8a(out, qout, n_q, (int64_t)n_heads * hd, st);
  }
}

}  // namespace xsil::cuda
