// Attention over the paged device KV cache (cuda/kv_cache.h).
//
// Decode is flash-decoding (split-K) grouped by KV head: CTA (KV head, sequence, split) walks a
// chunk of whole pages of its sequence in tiles gathered into shared memory as fp32 (each K/V row
// loaded and dequantized once per CTA) and keeps an online softmax for every query head of the GQA
// group (warps hold up to 4 heads each in registers; tokens round-robin over the warps that share a
// chunk of heads), merged in shared memory into per-query-head partials (max, sum, acc) in the
// workspace; k_paged_merge combines a (head, sequence)'s splits, normalizes and optionally quantizes
// the output for the next matmul. The split count comes from the length in device memory.
//
// Prefill: CTA (head, tile of 8 queries), one warp per query; K/V tiles of 16 tokens are gathered
// through the page table into shared memory as fp32 (any storage dtype) once for the 8 queries.
#include <algorithm>
#include <cmath>
#include <string>

#include "cuda/kv_rows.cuh"

namespace xsil::cuda {

namespace {

constexpr int kDecWarps = 4;
constexpr int kMaxE = 8;  // hd <= 256
constexpr int kQT = 8, kKT = 16;
// GQA decode: a warp keeps the online softmax of up to kHC query heads in registers; a pass over a
// split's keys serves kPassHeads = kDecWarps * kHC heads of the group (G <= 16: one pass, every K/V
// row loaded once per CTA; larger groups, e.g. MQA, stream the split once per 16 heads).
constexpr int kHC = 4;
constexpr int kPassHeads = kDecWarps * kHC;
// K and V tiles in shared memory as fp32: kTileFloats / hd tokens per tile (16 at hd 256, 64 at
// hd 64), 16 KiB each. The K tile is reused for the warps' partials: kDecWarps * kHC * 256 floats.
constexpr int kTileFloats = 4096;
static_assert(kDecWarps * kHC * 256 <= kTileFloats, "the partials must fit in the K tile");

// Splits of a sequence of len tokens: ceil(len / split_tokens), at most max_splits and the page
// count, then reduced so that every split gets at least one page (pps pages each, the last fewer):
// no split is empty. Decode and merge kernels both derive it from the length in device memory.
__device__ __forceinline__ int n_splits_for(int len, int ps, int max_splits, int split_tokens, int* pages_per_split) {
  const int n_pg = (len + ps - 1) / ps;
  int ns = (len + split_tokens - 1) / split_tokens;
  ns = min(ns, max_splits);
  ns = max(min(ns, n_pg), 1);
  const int pps = (n_pg + ns - 1) / ns;
  if (pages_per_split) *pages_per_split = pps;
  return (n_pg + pps - 1) / pps;
}

// Flash-decoding with GQA grouping: CTA (KV head, sequence, split) computes the partial softmax of
// all G = n_heads / n_kv query heads that share the KV head over the split's whole pages. Per tile,
// the 128 threads gather K and V rows (any storage dtype) through the page table into shared memory
// as fp32, coalesced, dequantized once; the warps then read them for their heads. A pass's heads are
// cut into nwc = ceil(hp / kHC) warp chunks; the 4 / nwc warps of a chunk (4, 2, 1 or 1) take the
// tile's tokens round-robin and are merged in shared memory at the end of the pass. Partials go to
// the workspace per query head ([seq][head][split]), exactly what k_paged_merge reads.
template <int KD, int VD>
__global__ void __launch_bounds__(kDecWarps * 32) k_paged_decode(PagedDecodeArgs a, float scale) {
  __shared__ float sk[kTileFloats];
  __shared__ float sv[kTileFloats];
  __shared__ float sm_m[kDecWarps][kHC], sm_l[kDecWarps][kHC];
  const int kvh = blockIdx.x, s = blockIdx.y, sp = blockIdx.z;
  const DevKV& kv = a.kv;
  const int len = a.lens[s];
  const int ps = kv.page_size, hd = kv.hd, E = hd / 32;
  int pps = 1;
  const int ns = n_splits_for(len, ps, a.max_splits, a.split_tokens, &pps);
  if (sp >= ns) return;  // an unused split of this length (uniform in the CTA): the merge does not read it
  const int t0 = sp * pps * ps, t1 = min(len, (sp + 1) * pps * ps);
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int G = a.n_heads / kv.n_kv;
  const int TT = kTileFloats / hd;  // tokens per tile
  const int32_t* pt = a.pt + (int64_t)s * a.pt_stride;
  const uint8_t* kbase = kv.pool + kv_k_off(kv, 0, a.layer, kvh);
  const uint8_t* vbase = kv.pool + kv_v_off(kv, 0, a.layer, kvh);
  const int64_t n_part = (int64_t)a.n_seqs * a.n_heads * a.max_splits;
  float* wm = a.work;
  float* wl = a.work + n_part;
  float* wacc = a.work + 2 * n_part;
  for (int p0 = 0; p0 < G; p0 += kPassHeads) {
    const int hp = min(kPassHeads, G - p0);   // heads of this pass
    const int nwc = (hp + kHC - 1) / kHC;     // warp chunks (1..4)
    const int wpc = kDecWarps / nwc;          // warps per chunk, splitting the tokens
    const int c = warp / wpc, r = warp % wpc;
    const int nh = c < nwc ? min(kHC, hp - c * kHC) : 0;  // this warp's heads (0: idle this pass)
    const int64_t h0 = (int64_t)s * a.n_heads + (int64_t)kvh * G + p0 + c * kHC;  // its first q row
    float qv[kHC][kMaxE], acc[kHC][kMaxE], m[kHC], l[kHC];
#pragma unroll
    for (int i = 0; i < kHC; ++i) {
#pragma unroll
      for (int e = 0; e < kMaxE; ++e) {
        qv[i][e] = (i < nh && e < E) ? a.q[(h0 + i) * hd + e * 32 + lane] * scale : 0.0f;
        acc[i][e] = 0.0f;
      }
      m[i] = -INFINITY;
      l[i] = 0.0f;
    }
    for (int tt = t0; tt < t1; tt += TT) {
      const int n = min(TT, t1 - tt);
      __syncthreads();  // the previous tile (or pass's partials) has been consumed
      for (int idx = threadIdx.x; idx < n * hd; idx += blockDim.x) {
        const int j = idx / hd, col = idx - j * hd;
        const int tok = tt + j;
        const int64_t page = pt[tok / ps], off = tok % ps;
        sk[idx] = kv_load<KD>(kbase + page * kv.k_chunk + off * kv.k_row, col);
        sv[idx] = kv_load<VD>(vbase + page * kv.v_chunk + off * kv.v_row, col);
      }
      __syncthreads();
      if (nh > 0) {
        for (int j = r; j < n; j += wpc) {
          const float* kr = sk + j * hd;
          const float* vr = sv + j * hd;
          float kx[kMaxE], vx[kMaxE];
#pragma unroll
          for (int e = 0; e < kMaxE; ++e) {
            kx[e] = e < E ? kr[e * 32 + lane] : 0.0f;
            vx[e] = e < E ? vr[e * 32 + lane] : 0.0f;
          }
#pragma unroll
          for (int i = 0; i < kHC; ++i) {
            if (i < nh) {  // warp-uniform
              float sc = 0.0f;
#pragma unroll
              for (int e = 0; e < kMaxE; ++e) sc += qv[i][e] * kx[e];
              sc = warp_sum(sc);
              const float mn = fmaxf(m[i], sc);
              const float cf = expf(m[i] - mn), p = expf(sc - mn);
              l[i] = l[i] * cf + p;
#pragma unroll
              for (int e = 0; e < kMaxE; ++e) acc[i][e] = acc[i][e] * cf + p * vx[e];
              m[i] = mn;
            }
          }
        }
      }
    }
    __syncthreads();  // the last tile has been consumed: sk holds the partials now
#pragma unroll
    for (int i = 0; i < kHC; ++i) {
      if (i < nh) {
        if (lane == 0) {
          sm_m[warp][i] = m[i];
          sm_l[warp][i] = l[i];
        }
#pragma unroll
        for (int e = 0; e < kMaxE; ++e)
          if (e < E) sk[(warp * kHC + i) * hd + e * 32 + lane] = acc[i][e];
      }
    }
    __syncthreads();
    // head p0 + hh of the group: chunk hh / kHC, slot hh % kHC of that chunk's wpc warps
    for (int idx = threadIdx.x; idx < hp * hd; idx += blockDim.x) {
      const int hh = idx / hd, col = idx - hh * hd;
      const int w0 = (hh / kHC) * wpc, i = hh % kHC;
      float M = -INFINITY;
      for (int w = w0; w < w0 + wpc; ++w) M = fmaxf(M, sm_m[w][i]);
      float L = 0.0f, x = 0.0f;
      for (int w = w0; w < w0 + wpc; ++w) {
        const float f = sm_m[w][i] == -INFINITY ? 0.0f : expf(sm_m[w][i] - M);  // a warp without tokens
        L += sm_l[w][i] * f;
        x += sk[(w * kHC + i) * hd + col] * f;
      }
      const int64_t pi = ((int64_t)s * a.n_heads + (int64_t)kvh * G + p0 + hh) * a.max_splits + sp;
      wacc[pi * hd + col] = x;
      if (col == 0) {
        wm[pi] = M;
        wl[pi] = L;
      }
    }
    // the next pass writes sk only after a barrier (its first tile's, or the one after its tiles)
  }
}

// CTA (head, sequence), hd threads: thread i owns output element i (a warp = one 32-block).
__global__ void k_paged_merge(PagedDecodeArgs a) {
  const int h = blockIdx.x, s = blockIdx.y, i = threadIdx.x, lane = i & 31;
  const DevKV& kv = a.kv;
  const int hd = kv.hd;
  const int ns = n_splits_for(a.lens[s], kv.page_size, a.max_splits, a.split_tokens, nullptr);
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
    const dim3 grid((unsigned)a.kv.n_kv, (unsigned)a.n_seqs, (unsigned)a.max_splits);
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

// The default plan. The grid has n_kv * n_seqs CTAs per split (TinyLlama, one sequence: 4), so the
// old 512 tokens per split left an H100 (132 SMs) with 4 CTAs up to 512 tokens and 64 at 8192.
// Now splits are added as the length grows, one per kMinSplitTokens (64) tokens, until the grid
// reaches ~2 CTAs per SM (enough resident CTAs to hide the latency of the page-table-indirected row
// loads; more only adds merge work); past that, the splits get longer instead. 64 tokens (4 pages of
// 16) is the floor: below it a CTA spends more on its fixed costs (q loads, the in-CTA merge, the
// partial's write and the merge kernel's read) than on keys. TinyLlama on an H100: 8 splits (32
// CTAs) at 512 tokens, 32 (128 CTAs) at 2048, 64 (256 CTAs, 128 tokens each) at 8192.
DecodeSplitPlan paged_decode_plan(int64_t max_len, int64_t n_kv, int64_t n_seqs, int sm_count) {
  const char* kn = "attention_decode_plan";
  require(max_len >= 1 && n_kv >= 1 && n_seqs >= 1 && sm_count >= 1, kn,
          "max_len=" + str(max_len) + ", n_kv=" + str(n_kv) + ", n_seqs=" + str(n_seqs) + ", sm_count=" +
              str(sm_count) + " must all be >= 1");
  DecodeSplitPlan p;
  p.split_tokens = kMinSplitTokens;
  const int64_t per_split = n_kv * n_seqs;  // CTAs per split index
  const int64_t want = (2 * (int64_t)sm_count + per_split - 1) / per_split;
  p.max_splits = (int32_t)std::max<int64_t>(1, std::min<int64_t>(want, paged_max_splits(max_len, kMinSplitTokens)));
  return p;
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
