// Attention over the paged device KV cache (cuda/kv_cache.h).
//
// Decode is flash-decoding (split-K): CTA (head, sequence, split) walks a chunk of whole pages of
// its sequence, its warps taking tokens round-robin with an online softmax each (lane holds elements
// lane, lane + 32, ...: coalesced row reads), merged in shared memory into a partial (max, sum, acc)
// in the workspace; k_paged_merge combines a (head, sequence)'s splits, normalizes and optionally
// quantizes the output for the next matmul. The split count comes from the length in device memory.
//
// Prefill: CTA (head, tile of 8 queries), one warp per query; K/V tiles of 16 tokens are gathered
// through the page table into shared memory as fp32 (any storage dtype) once for the 8 queries.
#include <cmath>
#include <string>

#include "cuda/kv_rows.cuh"

namespace xsil::cuda {

namespace {

constexpr int kDecWarps = 4;
constexpr int kMaxE = 8;  // hd <= 256
constexpr int kQT = 8, kKT = 16;

__device__ __forceinline__ int n_splits_for(int len, int ps, int max_splits, int split_tokens) {
  const int n_pg = (len + ps - 1) / ps;
  int ns = (len + split_tokens - 1) / split_tokens;
  ns = min(ns, max_splits);
  ns = min(ns, n_pg);
  return max(ns, 1);
}

template <int KD, int VD>
__global__ void __launch_bounds__(kDecWarps * 32) k_paged_decode(PagedDecodeArgs a, float scale) {
  const int h = blockIdx.x, s = blockIdx.y, sp = blockIdx.z;
  const DevKV& kv = a.kv;
  const int len = a.lens[s];
  const int ps = kv.page_size, hd = kv.hd, E = hd / 32;
  const int ns = n_splits_for(len, ps, a.max_splits, a.split_tokens);
  if (sp >= ns) return;  // an unused split of this length: the merge does not read it
  const int n_pg = (len + ps - 1) / ps;
  const int pps = (n_pg + ns - 1) / ns;
  const int t0 = sp * pps * ps, t1 = min(len, (sp + 1) * pps * ps);
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int kvh = h / (a.n_heads / kv.n_kv);
  const int32_t* pt = a.pt + (int64_t)s * a.pt_stride;
  const float* qr = a.q + ((int64_t)s * a.n_heads + h) * hd;
  float qv[kMaxE], acc[kMaxE];
#pragma unroll
  for (int e = 0; e < kMaxE; ++e) {
    qv[e] = e < E ? qr[e * 32 + lane] * scale : 0.0f;
    acc[e] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int t = t0 + warp; t < t1; t += kDecWarps) {
    const int32_t page = pt[t / ps];
    const int64_t off = t % ps;
    const uint8_t* kr = kv.pool + kv_k_off(kv, page, a.layer, kvh) + off * kv.k_row;
    float sc = 0.0f;
#pragma unroll
    for (int e = 0; e < kMaxE; ++e)
      if (e < E) sc += qv[e] * kv_load<KD>(kr, e * 32 + lane);
    sc = warp_sum(sc);
    const float mn = fmaxf(m, sc);
    const float c = expf(m - mn), p = expf(sc - mn);
    l = l * c + p;
    const uint8_t* vr = kv.pool + kv_v_off(kv, page, a.layer, kvh) + off * kv.v_row;
#pragma unroll
    for (int e = 0; e < kMaxE; ++e)
      if (e < E) acc[e] = acc[e] * c + p * kv_load<VD>(vr, e * 32 + lane);
    m = mn;
  }
  __shared__ float sm_m[kDecWarps], sm_l[kDecWarps];
  __shared__ float sm_acc[kDecWarps][256];
  if (lane == 0) {
    sm_m[warp] = m;
    sm_l[warp] = l;
  }
#pragma unroll
  for (int e = 0; e < kMaxE; ++e)
    if (e < E) sm_acc[warp][e * 32 + lane] = acc[e];
  __syncthreads();
  float M = -INFINITY;
  for (int w = 0; w < kDecWarps; ++w) M = fmaxf(M, sm_m[w]);
  float L = 0.0f, f[kDecWarps];
  for (int w = 0; w < kDecWarps; ++w) {
    f[w] = sm_m[w] == -INFINITY ? 0.0f : expf(sm_m[w] - M);
    L += sm_l[w] * f[w];
  }
  const int64_t n_part = (int64_t)gridDim.x * gridDim.y * gridDim.z;
  const int64_t pi = ((int64_t)s * a.n_heads + h) * a.max_splits + sp;
  float* wm = a.work;
  float* wl = a.work + n_part;
  float* wacc = a.work + 2 * n_part + pi * hd;
  if (threadIdx.x == 0) {
    wm[pi] = M;
    wl[pi] = L;
  }
  for (int i = threadIdx.x; i < hd; i += blockDim.x) {
    float x = 0.0f;
    for (int w = 0; w < kDecWarps; ++w) x += sm_acc[w][i] * f[w];
    wacc[i] = x;
  }
}

// CTA (head, sequence), hd threads: thread i owns output element i (a warp = one 32-block).
__global__ void k_paged_merge(PagedDecodeArgs a) {
  const int h = blockIdx.x, s = blockIdx.y, i = threadIdx.x, lane = i & 31;
  const DevKV& kv = a.kv;
  const int hd = kv.hd;
  const int ns = n_splits_for(a.lens[s], kv.page_size, a.max_splits, a.split_tokens);
  const int64_t n_part = (int64_t)a.n_seqs * a.n_heads * a.max_splits;
  const int64_t p0 = ((int64_t)s * a.n_heads + h) * a.max_splits;
  const float* wm = a.work + p0;
  const float* wl = a.work + n_part + p0;
  const float* wacc = a.work + 2 * n_part + p0 * hd;
  float M = -INFINITY;
  for (int sp = 0; sp < ns; ++sp) M = fmaxf(M, wm[sp]);
  float L = 0.0f, x = 0.0f;
  for (int sp = 0; sp < ns; ++sp) {
    const float f = wm[sp] == -INFINITY ? 0.0f : expf(wm[sp] - M);
    L += wl[sp] * f;
    x += wacc[sp * hd + i] * f;
  }
  const float val = x / L;
  const int64_t e0 = ((int64_t)s * a.n_heads + h) * hd;
  a.out[e0 + i] = val;
  if (a.qout.qs) {
    const int64_t b = (e0 + (i & ~31)) / 32;
    quant_block_warp(val, lane, a.qout.qs + b * 32, a.qout.d + b, a.qout.s + b);
  }
}

template <int KD, int VD>
__global__ void __launch_bounds__(kQT * 32) k_paged_prefill(PagedPrefillArgs a, float scale) {
  __shared__ float sk[kKT][256];
  __shared__ float sv[kKT][256];
  const DevKV& kv = a.kv;
  const int h = blockIdx.x;
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int hd = kv.hd, E = hd / 32, ps = kv.page_size;
  const int64_t len = *a.lens;
  const int64_t base = len - a.n_q;  // position of query 0
  const int64_t q_first = (int64_t)blockIdx.y * kQT;
  const int64_t qi = q_first + warp;
  const bool active = qi < a.n_q;
  const int kvh = h / (a.n_heads / kv.n_kv);
  const int64_t my_last = base + qi;
  const int64_t cta_last = base + min(q_first + kQT, (int64_t)a.n_q) - 1;
  float qv[kMaxE], acc[kMaxE];
#pragma unroll
  for (int e = 0; e < kMaxE; ++e) {
    qv[e] = (active && e < E) ? a.q[(qi * a.n_heads + h) * hd + e * 32 + lane] * scale : 0.0f;
    acc[e] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int64_t t0 = 0; t0 <= cta_last; t0 += kKT) {
    __syncthreads();  // the previous tile has been consumed
    for (int idx = threadIdx.x; idx < kKT * hd; idx += blockDim.x) {
      const int r = idx / hd, c = idx % hd;
      const int64_t tok = t0 + r;
      float kx = 0.0f, vx = 0.0f;
      if (tok <= cta_last) {
        const int32_t page = a.pt[tok / ps];
        const int64_t off = tok % ps;
        kx = kv_load<KD>(kv.pool + kv_k_off(kv, page, a.layer, kvh) + off * kv.k_row, c);
        vx = kv_load<VD>(kv.pool + kv_v_off(kv, page, a.layer, kvh) + off * kv.v_row, c);
      }
      sk[r][c] = kx;
      sv[r][c] = vx;
    }
    __syncthreads();
    if (active) {
      const int64_t jmax = min((int64_t)kKT, my_last - t0 + 1);
      for (int j = 0; j < jmax; ++j) {
        float sc = 0.0f;
#pragma unroll
        for (int e = 0; e < kMaxE; ++e)
          if (e < E) sc += qv[e] * sk[j][e * 32 + lane];
        sc = warp_sum(sc);
        const float mn = fmaxf(m, sc);
        const float c = expf(m - mn), p = expf(sc - mn);
        l = l * c + p;
#pragma unroll
        for (int e = 0; e < kMaxE; ++e)
          if (e < E) acc[e] = acc[e] * c + p * sv[j][e * 32 + lane];
        m = mn;
      }
    }
  }
  if (active) {
    float* o = a.out + (qi * a.n_heads + h) * hd;
#pragma unroll
    for (int e = 0; e < kMaxE; ++e)
      if (e < E) o[e * 32 + lane] = acc[e] / l;
  }
}

std::string str(int64_t v) { return std::to_string(v); }

void require_common(const DevKV& kv, int layer, int n_heads, const char* kn) {
  require(kv.pool != nullptr, kn, "the cache has no pool");
  require(kv.hd >= 32 && kv.hd <= 256 && kv.hd % 32 == 0, kn,
          "head_dim=" + str(kv.hd) + " must be a multiple of 32 in [32, 256]");
  require(layer >= 0 && layer < kv.n_layers, kn, "layer=" + str(layer) + " out of range");
  require(n_heads >= 1 && n_heads <= 65535 && kv.n_kv >= 1 && n_heads % kv.n_kv == 0, kn,
          "n_heads=" + str(n_heads) + " must be a multiple of n_kv_heads=" + str(kv.n_kv));
  for (int dt : {kv.k_dtype, kv.v_dtype})
    require(dt == kDtF32 || dt == kDtF16 || dt == kDtQ8, kn, "unsupported KV dtype id " + str(dt));
}

// Calls f.template operator()<KD, VD>() for the cache's dtypes.
template <class F>
void dispatch_dtypes(int kd, int vd, F&& f) {
  auto with_v = [&](auto kdc) {
    constexpr int K = decltype(kdc)::value;
    if (vd == kDtF16) f.template operator()<K, kDtF16>();
    else if (vd == kDtQ8) f.template operator()<K, kDtQ8>();
    else f.template operator()<K, kDtF32>();
  };
  if (kd == kDtF16) with_v(std::integral_constant<int, kDtF16>{});
  else if (kd == kDtQ8) with_v(std::integral_constant<int, kDtQ8>{});
  else with_v(std::integral_constant<int, kDtF32>{});
}

struct DecodeLaunch {
  const PagedDecodeArgs& a;
  float scale;
  cudaStream_t st;
  template <int KD, int VD>
  void operator()() const {
    const dim3 grid((unsigned)a.n_heads, (unsigned)a.n_seqs, (unsigned)a.max_splits);
    k_paged_decode<KD, VD><<<grid, kDecWarps * 32, 0, st>>>(a, scale);
  }
};

struct PrefillLaunch {
  const PagedPrefillArgs& a;
  float scale;
  cudaStream_t st;
  template <int KD, int VD>
  void operator()() const {
    const dim3 grid((unsigned)a.n_heads, (unsigned)((a.n_q + kQT - 1) / kQT));
    k_paged_prefill<KD, VD><<<grid, kQT * 32, 0, st>>>(a, scale);
  }
};

}  // namespace

int64_t paged_decode_work_floats(int64_t n_seqs, int64_t n_heads, int64_t hd, int64_t max_splits) {
  return n_seqs * n_heads * max_splits * (hd + 2);
}

int32_t paged_max_splits(int64_t max_len, int32_t split_tokens) {
  if (split_tokens < 1) split_tokens = 1;
  const int64_t n = (max_len + split_tokens - 1) / split_tokens;
  return (int32_t)std::max<int64_t>(1, std::min<int64_t>(n, kMaxSplits));
}

void paged_attention_decode(const PagedDecodeArgs& a, cudaStream_t st) {
  const char* kn = "attention_decode";
  require_common(a.kv, a.layer, a.n_heads, kn);
  require(a.n_seqs >= 1 && a.n_seqs <= 65535, kn, "n_seqs=" + str(a.n_seqs) + " must be in [1, 65535]");
  require(a.max_splits >= 1 && a.max_splits <= kMaxSplits, kn,
          "max_splits=" + str(a.max_splits) + " must be in [1, " + str(kMaxSplits) + "]");
  require(a.split_tokens >= 1, kn, "split_tokens must be >= 1");
  require(a.pt && a.lens && a.q && a.out && a.work, kn, "null buffer");
  require(a.pt_stride >= 1, kn, "pt_stride must be >= 1");
  const float scale = a.scale == 0.0f ? 1.0f / std::sqrt((float)a.kv.hd) : a.scale;
  dispatch_dtypes(a.kv.k_dtype, a.kv.v_dtype, DecodeLaunch{a, scale, st});
  check_launch("attention_decode");
  k_paged_merge<<<dim3((unsigned)a.n_heads, (unsigned)a.n_seqs), (unsigned)a.kv.hd, 0, st>>>(a);
  check_launch("attention_decode_merge");
}

void paged_attention_prefill(const PagedPrefillArgs& a, cudaStream_t st) {
  const char* kn = "attention_prefill";
  require_common(a.kv, a.layer, a.n_heads, kn);
  require(a.n_q >= 1 && (a.n_q + kQT - 1) / kQT <= 65535, kn, "n_q=" + str(a.n_q) + " out of range");
  require(a.pt && a.lens && a.q && a.out, kn, "null buffer");
  const float scale = a.scale == 0.0f ? 1.0f / std::sqrt((float)a.kv.hd) : a.scale;
  dispatch_dtypes(a.kv.k_dtype, a.kv.v_dtype, PrefillLaunch{a, scale, st});
  check_launch("attention_prefill");
  if (a.qout.qs) quantize_q8a(a.out, a.qout, a.n_q, (int64_t)a.n_heads * a.kv.hd, st);
}

}  // namespace xsil::cuda
