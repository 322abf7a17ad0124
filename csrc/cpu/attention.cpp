#include "cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <stdexcept>
#include <unordered_set>
#include <vector>

#include "core/threadpool.h"

namespace xsil {

namespace {
std::string str(int64_t v) { return std::to_string(v); }
[[noreturn]] void bad(const char* op, const std::string& msg) {
  throw std::invalid_argument(std::string("[") + op + "] " + msg);
}

// 64-byte aligned per-thread scratch (grows, never shrinks). slot separates buffers of one thread.
float* tl_scratch(int slot, size_t floats) {
  thread_local std::unique_ptr<float, void (*)(void*)> buf[3] = {{nullptr, std::free}, {nullptr, std::free}, {nullptr, std::free}};
  thread_local size_t cap[3] = {0, 0, 0};
  if (floats > cap[slot]) {
    const size_t bytes = (floats * 4 + 63) & ~(size_t)63;
    void* p = std::aligned_alloc(64, bytes);
    if (!p) throw std::bad_alloc();
    buf[slot].reset((float*)p);
    cap[slot] = bytes / 4;
  }
  return buf[slot].get();
}

// Span arguments shared by decode and prefill: `rows` query rows (rotated, pre-scaled) with their
// online-softmax state m/l/acc, against the cache's K/V rows; scratch sized for one page.
AttnSpanArgs span_args(const KVCache& c, const float* q, int32_t rows, const int32_t* n_valid, int64_t hd,
                       int64_t page_size, float* m, float* l, float* acc) {
  AttnSpanArgs a;
  a.q = q;
  a.rows = rows;
  a.n_valid = n_valid;
  a.head_dim = (int32_t)hd;
  a.k_dtype = c.params().k_dtype;
  a.v_dtype = c.params().v_dtype;
  a.k_row_bytes = c.k_row_bytes();
  a.v_row_bytes = c.v_row_bytes();
  a.m = m;
  a.l = l;
  a.acc = acc;
  a.scratch = tl_scratch(0, (size_t)AttentionKernels::scratch_floats(rows, page_size, hd));
  return a;
}

void check_common(const char* op, const KVCache* c, int32_t layer, int32_t n_heads, const float* q, const float* out,
                  float scale, int threads) {
  if (!c) bad(op, "null cache");
  const KVCacheParams& cp = c->params();
  if (layer < 0 || layer >= cp.n_layers) bad(op, "layer=" + str(layer) + " is out of range [0, " + str(cp.n_layers) + ")");
  if (n_heads < 1 || n_heads % cp.n_kv_heads != 0)
    bad(op, "n_heads=" + str(n_heads) + " must be a positive multiple of n_kv_heads=" + str(cp.n_kv_heads));
  if (n_heads / cp.n_kv_heads > 256) bad(op, "GQA group of " + str(n_heads / cp.n_kv_heads) + " heads is too large (max 256)");
  if (!q || !out) bad(op, "null q or out buffer");
  if (!std::isfinite(scale) || scale < 0.0f) bad(op, "scale must be finite and > 0 (0 = 1/sqrt(head_dim))");
  if (threads < 0 || threads > 1024) bad(op, "threads=" + str(threads) + " is out of range [1, 1024]");
}

int n_threads(int threads) {
  const int pool = ThreadPool::global().num_threads();
  return threads == 0 ? pool : std::min(threads, pool);
}

// Rotated, scaled copy of the queries: rows [n_pos][n_heads][hd], row t at position pos[t].
float* prepare_q(const float* q, int64_t n_pos, int64_t n_heads, int64_t hd, const int64_t* pos, bool rotated,
                 float scale, const RopeParams& rp) {
  const int64_t n = n_pos * n_heads * hd;
  float* qs = tl_scratch(2, (size_t)n);
  std::copy(q, q + n, qs);
  if (!rotated) rope_inplace(qs, n_pos, n_heads, hd, pos, 0, rp);
  for (int64_t i = 0; i < n; ++i) qs[i] *= scale;
  return qs;
}

}  // namespace

const AttentionKernels& attention_kernels(Tier t) {
  switch (t) {
#if defined(XSIL_X86_TIERS)
    case Tier::Avx2: return attention_kernels_avx2();
    case Tier::Avx512: return attention_kernels_avx512();
#endif
#if defined(XSIL_ARM_TIERS)
    case Tier::Neon: return attention_kernels_neon(false);
    case Tier::NeonDotprod: return attention_kernels_neon(true);
#endif
    default: return attention_kernels_ref();
  }
}

void check_attention_decode(const AttnDecodeParams& p, int threads) {
  const char* op = "attention_decode";
  check_common(op, p.cache, p.layer, p.n_heads, p.q, p.out, p.scale, threads);
  if (p.n_seqs < 1) bad(op, "n_seqs=" + str(p.n_seqs) + " must be >= 1");
  if (!p.seq_ids) bad(op, "null seq_ids");
  std::unordered_set<int32_t> seen;
  for (int32_t i = 0; i < p.n_seqs; ++i) {
    const int32_t id = p.seq_ids[i];
    p.cache->require_seq(id, op);
    if (!seen.insert(id).second) bad(op, "sequence id " + str(id) + " appears twice");
    if (p.cache->length(id) < 1) bad(op, "sequence " + str(id) + " is empty: write its K/V before attending");
  }
}

void check_attention_prefill(const AttnPrefillParams& p, int threads) {
  const char* op = "attention_prefill";
  check_common(op, p.cache, p.layer, p.n_heads, p.q, p.out, p.scale, threads);
  p.cache->require_seq(p.seq_id, op);
  const int64_t len = p.cache->length(p.seq_id);
  if (p.n_q < 1 || p.n_q > len)
    bad(op, "n_q=" + str(p.n_q) + " query tokens, but sequence " + str(p.seq_id) + " has " + str(len) +
                " cached tokens (write the chunk's K/V first; n_q must be in [1, length])");
}

void attention_decode(const AttnDecodeParams& p, const AttentionKernels& kk, int threads) {
  check_attention_decode(p, threads);
  const KVCache& c = *p.cache;
  const KVCacheParams& cp = c.params();
  const int64_t hd = cp.head_dim, nkv = cp.n_kv_heads, ps = cp.page_size, H = p.n_heads, r = H / nkv;
  const float scale = p.scale > 0.0f ? p.scale : 1.0f / std::sqrt((float)hd);
  const int nthr = n_threads(threads);

  // Queries, rotated at each sequence's last position and scaled.
  std::vector<int64_t> pos((size_t)p.n_seqs);
  for (int32_t s = 0; s < p.n_seqs; ++s) pos[s] = c.length(p.seq_ids[s]) - 1;
  // prepare_q rotates row t (one sequence, H heads) at pos[t].
  const float* qs = prepare_q(p.q, p.n_seqs, H, hd, pos.data(), p.q_rotated, scale, cp.rope);

  // Tasks: (sequence, KV head, chunk of pages). Split a sequence's pages when there are too few
  // (sequence, head) pairs to keep every thread busy; chunks have >= 256 tokens.
  struct Task {
    int32_t s, g;
    int32_t pg0, pg1;
  };
  std::vector<Task> tasks;
  std::vector<int64_t> first_task((size_t)p.n_seqs * nkv + 1);
  const int64_t base = (int64_t)p.n_seqs * nkv;
  const int64_t want = base >= 4 * nthr ? 1 : (4 * nthr + base - 1) / base;
  const int64_t min_pages = std::max<int64_t>(1, 256 / ps);
  for (int32_t s = 0; s < p.n_seqs; ++s) {
    const int64_t np = (int64_t)c.page_table(p.seq_ids[s]).size();
    const int64_t split = std::max<int64_t>(1, std::min(want, np / min_pages));
    for (int32_t g = 0; g < nkv; ++g) {
      first_task[s * nkv + g] = (int64_t)tasks.size();
      for (int64_t i = 0; i < split; ++i)
        tasks.push_back({s, g, (int32_t)(np * i / split), (int32_t)(np * (i + 1) / split)});
    }
  }
  first_task[base] = (int64_t)tasks.size();
  const int64_t stride = r * (hd + 2);  // partial state: m[r], l[r], acc[r][hd]
  std::vector<float> partial((size_t)(tasks.size() * stride));

  ThreadPool::global().parallel_for((int64_t)tasks.size(), nthr, [&](int64_t ti, int) {
    const Task& t = tasks[ti];
    const int32_t sid = p.seq_ids[t.s];
    const std::vector<int32_t>& pt = c.page_table(sid);
    const int64_t len = c.length(sid);
    float* st = partial.data() + ti * stride;
    float* m = st;
    float* l = st + r;
    float* acc = st + 2 * r;
    std::fill(m, m + r, -std::numeric_limits<float>::infinity());
    std::fill(l, l + r + r * hd, 0.0f);
    int32_t nv[256];
    AttnSpanArgs a = span_args(c, qs + ((int64_t)t.s * H + (int64_t)t.g * r) * hd, (int32_t)r, nv, hd, ps, m, l, acc);
    for (int32_t pg = t.pg0; pg < t.pg1; ++pg) {
      const int32_t n = (int32_t)std::min<int64_t>(ps, len - (int64_t)pg * ps);
      std::fill(nv, nv + r, n);
      a.n = n;
      a.k = c.k_rows(pt[pg], p.layer, t.g);
      a.v = c.v_rows(pt[pg], p.layer, t.g);
      kk.span(a);
    }
  });

  // Reduction over the chunks of each (sequence, KV head).
  for (int64_t sg = 0; sg < base; ++sg) {
    const int64_t s = sg / nkv, g = sg % nkv;
    const int64_t t0 = first_task[sg], t1 = first_task[sg + 1];
    for (int64_t j = 0; j < r; ++j) {
      float M = -std::numeric_limits<float>::infinity();
      for (int64_t t = t0; t < t1; ++t) M = std::max(M, partial[t * stride + j]);
      float L = 0.0f;
      float* o = p.out + ((s * H) + g * r + j) * hd;
      std::fill(o, o + hd, 0.0f);
      for (int64_t t = t0; t < t1; ++t) {
        const float* st = partial.data() + t * stride;
        if (st[r + j] == 0.0f) continue;
        const float w = std::exp(st[j] - M);
        L += st[r + j] * w;
        const float* acc = st + 2 * r + j * hd;
        for (int64_t i = 0; i < hd; ++i) o[i] += acc[i] * w;
      }
      const float inv = 1.0f / L;
      for (int64_t i = 0; i < hd; ++i) o[i] *= inv;
    }
  }
}

void attention_prefill(const AttnPrefillParams& p, const AttentionKernels& kk, int threads) {
  check_attention_prefill(p, threads);
  const KVCache& c = *p.cache;
  const KVCacheParams& cp = c.params();
  const int64_t hd = cp.head_dim, nkv = cp.n_kv_heads, ps = cp.page_size, H = p.n_heads, r = H / nkv;
  const float scale = p.scale > 0.0f ? p.scale : 1.0f / std::sqrt((float)hd);
  const int nthr = n_threads(threads);
  const int64_t len = c.length(p.seq_id);
  const int64_t q0 = len - p.n_q;  // position of query 0
  std::vector<int64_t> pos((size_t)p.n_q);
  for (int64_t i = 0; i < p.n_q; ++i) pos[i] = q0 + i;
  const float* qs = prepare_q(p.q, p.n_q, H, hd, pos.data(), p.q_rotated, scale, cp.rope);
  const std::vector<int32_t>& pt = c.page_table(p.seq_id);

  // Tiles of tq query tokens x r GQA heads (<= 64 rows): state and scores are O(rows x (hd + page)).
  const int64_t tq = std::max<int64_t>(1, 64 / r);
  const int64_t n_tiles = (p.n_q + tq - 1) / tq;
  ThreadPool::global().parallel_for(n_tiles * nkv, nthr, [&](int64_t task, int) {
    // Later tiles see more keys: hand them out first for balance.
    const int64_t tile = n_tiles - 1 - task / nkv, g = task % nkv;
    const int64_t i0 = tile * tq, i1 = std::min<int64_t>(p.n_q, i0 + tq);
    const int64_t rows = (i1 - i0) * r;
    float* buf = tl_scratch(1, (size_t)(rows * (2 * hd + 2) + rows));
    float* q = buf;
    float* m = q + rows * hd;
    float* l = m + rows;
    float* acc = l + rows;
    int32_t* nv = (int32_t*)(acc + rows * hd);
    for (int64_t i = i0; i < i1; ++i)
      std::copy(qs + (i * H + g * r) * hd, qs + (i * H + g * r + r) * hd, q + (i - i0) * r * hd);
    std::fill(m, m + rows, -std::numeric_limits<float>::infinity());
    std::fill(l, l + rows, 0.0f);
    std::fill(acc, acc + rows * hd, 0.0f);
    AttnSpanArgs a = span_args(c, q, (int32_t)rows, nv, hd, ps, m, l, acc);
    const int64_t last_pos = q0 + i1 - 1;
    for (int64_t pg = 0; pg <= last_pos / ps; ++pg) {
      const int64_t start = pg * ps;
      const int32_t n = (int32_t)std::min<int64_t>(ps, len - start);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t vis = std::clamp<int64_t>(q0 + i - start + 1, 0, n);
        std::fill(nv + (i - i0) * r, nv + (i - i0 + 1) * r, (int32_t)vis);
      }
      a.n = n;
      a.k = c.k_rows(pt[pg], p.layer, (int32_t)g);
      a.v = c.v_rows(pt[pg], p.layer, (int32_t)g);
      kk.span(a);
    }
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t j = 0; j < r; ++j) {
        const int64_t row = (i - i0) * r + j;
        const float inv = 1.0f / l[row];
        float* o = p.out + (i * H + g * r + j) * hd;
        const float* ac = acc + row * hd;
        for (int64_t e = 0; e < hd; ++e) o[e] = ac[e] * inv;
      }
  });
}

}  // namespace xsil
