#include "cpu/kv_cache.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "core/fp16.h"
#include "cpu/kv_rows.h"
#include "cpu/quant.h"

namespace xsil {

namespace {
std::string str(int64_t v) { return std::to_string(v); }
[[noreturn]] void bad(const char* op, const std::string& msg) {
  throw std::invalid_argument(std::string("[") + op + "] " + msg);
}
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
}  // namespace

int64_t kv_row_bytes(KVDtype dt, int64_t head_dim) {
  switch (dt) {
    case KVDtype::F32: return head_dim * 4;
    case KVDtype::F16: return head_dim * 2;
    case KVDtype::Q8_0: return head_dim / QK8_0 * (int64_t)sizeof(block_q8_0);
  }
  return 0;
}

const char* kv_dtype_name(KVDtype dt) {
  switch (dt) {
    case KVDtype::F32: return "f32";
    case KVDtype::F16: return "f16";
    case KVDtype::Q8_0: return "q8_0";
  }
  return "?";
}

KVDtype parse_kv_dtype(const std::string& s, const char* op) {
  std::string u;
  for (char c : s) u += (char)std::tolower((unsigned char)c);
  if (u == "f32" || u == "fp32" || u == "float32") return KVDtype::F32;
  if (u == "f16" || u == "fp16" || u == "float16") return KVDtype::F16;
  if (u == "q8_0") return KVDtype::Q8_0;
  bad(op, "unsupported KV dtype '" + s + "'; expected one of f32, f16, q8_0");
}

void rope_inplace(float* x, int64_t n_pos, int64_t n_vec, int64_t hd, const int64_t* pos, int64_t pos_offset,
                  const RopeParams& rp) {
  if (rp.mode == RopeMode::None) return;
  const int64_t half = hd / 2;
  thread_local std::vector<double> inv;
  thread_local std::vector<float> cs, sn;
  inv.resize(half);
  cs.resize(half);
  sn.resize(half);
  for (int64_t i = 0; i < half; ++i) inv[i] = std::pow((double)rp.freq_base, -2.0 * (double)i / (double)hd);
  for (int64_t t = 0; t < n_pos; ++t) {
    const double p = (double)((pos ? pos[t] : t) + pos_offset) * (double)rp.freq_scale;
    for (int64_t i = 0; i < half; ++i) {
      const double th = p * inv[i];
      cs[i] = (float)std::cos(th);
      sn[i] = (float)std::sin(th);
    }
    for (int64_t h = 0; h < n_vec; ++h) {
      float* v = x + (t * n_vec + h) * hd;
      if (rp.mode == RopeMode::Normal) {
        for (int64_t i = 0; i < half; ++i) {
          const float a = v[2 * i], b = v[2 * i + 1];
          v[2 * i] = a * cs[i] - b * sn[i];
          v[2 * i + 1] = a * sn[i] + b * cs[i];
        }
      } else {
        for (int64_t i = 0; i < half; ++i) {
          const float a = v[i], b = v[i + half];
          v[i] = a * cs[i] - b * sn[i];
          v[i + half] = a * sn[i] + b * cs[i];
        }
      }
    }
  }
}

void kv_store_row(KVDtype dt, const float* x, uint8_t* dst, int64_t hd) {
  switch (dt) {
    case KVDtype::F32: std::memcpy(dst, x, (size_t)hd * 4); break;
    case KVDtype::F16: {
      uint16_t* d = (uint16_t*)dst;
      for (int64_t i = 0; i < hd; ++i) d[i] = fp32_to_fp16(x[i]);
      break;
    }
    case KVDtype::Q8_0: quantize_row_q8_0(x, (block_q8_0*)dst, hd); break;
  }
}

void kv_load_row(KVDtype dt, const uint8_t* src, float* out, int64_t hd) {
  switch (dt) {
    case KVDtype::F32: std::memcpy(out, src, (size_t)hd * 4); break;
    case KVDtype::F16: {
      const uint16_t* s = (const uint16_t*)src;
      for (int64_t i = 0; i < hd; ++i) out[i] = fp16_to_fp32(s[i]);
      break;
    }
    case KVDtype::Q8_0: {
      const block_q8_0* b = (const block_q8_0*)src;
      for (int64_t j = 0; j < hd / QK8_0; ++j) {
        const float d = fp16_to_fp32(b[j].d);
        for (int i = 0; i < QK8_0; ++i) out[j * QK8_0 + i] = (float)b[j].qs[i] * d;
      }
      break;
    }
  }
}

KVCache::KVCache(const KVCacheParams& p) : p_(p) {
  const char* op = "kv_cache";
  if (p.n_layers < 1 || p.n_layers > 4096) bad(op, "n_layers=" + str(p.n_layers) + " is out of range [1, 4096]");
  if (p.n_kv_heads < 1 || p.n_kv_heads > 4096) bad(op, "n_kv_heads=" + str(p.n_kv_heads) + " is out of range [1, 4096]");
  if (p.head_dim < 2 || p.head_dim > 1024 || p.head_dim % 2 != 0)
    bad(op, "head_dim=" + str(p.head_dim) + " must be even and in [2, 1024]");
  for (KVDtype dt : {p.k_dtype, p.v_dtype}) {
    if (dt != KVDtype::F32 && dt != KVDtype::F16 && dt != KVDtype::Q8_0) bad(op, "unsupported KV dtype id " + str((int)dt));
    if (dt == KVDtype::Q8_0 && p.head_dim % QK8_0 != 0)
      bad(op, "head_dim=" + str(p.head_dim) + " is not a multiple of the Q8_0 block size 32; store this cache as f16");
  }
  if (p.page_size < 1 || p.page_size > 4096) bad(op, "page_size=" + str(p.page_size) + " is out of range [1, 4096]");
  if (p.rope.mode != RopeMode::None && p.rope.mode != RopeMode::Normal && p.rope.mode != RopeMode::Neox)
    bad(op, "unknown rope mode " + str((int)p.rope.mode));
  if (!(p.rope.freq_base > 0.0f) || !std::isfinite(p.rope.freq_base))
    bad(op, "rope_freq_base must be finite and > 0");
  if (!(p.rope.freq_scale > 0.0f) || !std::isfinite(p.rope.freq_scale))
    bad(op, "rope_freq_scale must be finite and > 0");
  if (p.shift != ShiftPolicy::Error && p.shift != ShiftPolicy::Shift) bad(op, "unknown context-shift policy");

  k_row_ = kv_row_bytes(p.k_dtype, p.head_dim);
  v_row_ = kv_row_bytes(p.v_dtype, p.head_dim);
  k_block_ = (int64_t)p.n_kv_heads * p.page_size * k_row_;
  layer_bytes_ = k_block_ + (int64_t)p.n_kv_heads * p.page_size * v_row_;
  page_bytes_ = (layer_bytes_ * p.n_layers + 63) / 64 * 64;  // pages start 64-byte aligned

  if (p.budget_bytes < 0 || p.budget_tokens < 0) bad(op, "the budget must not be negative");
  if (p.budget_bytes > 0) {
    n_pages_ = p.budget_bytes / page_bytes_;
    if (n_pages_ < 1)
      bad(op, "budget of " + str(p.budget_bytes) + " bytes is smaller than one page (" + str(page_bytes_) + " bytes = " +
                  str(p.page_size) + " tokens)");
  } else if (p.budget_tokens > 0) {
    n_pages_ = p.budget_tokens / p.page_size;
    if (n_pages_ < 1)
      bad(op, "budget of " + str(p.budget_tokens) + " tokens is smaller than one page of " + str(p.page_size));
  } else {
    bad(op, "set a budget: budget_bytes or budget_tokens must be > 0");
  }
  if (n_pages_ > INT32_MAX / 2) bad(op, "budget is too large (" + str(n_pages_) + " pages)");
  const int64_t total = n_pages_ * page_bytes_;
  n_ctx_ = p.n_ctx > 0 ? p.n_ctx : n_pages_ * p.page_size;
  if (p.n_ctx < 0) bad(op, "n_ctx=" + str(p.n_ctx) + " must be >= 0 (0 = the whole budget)");
  if (p.n_keep < 0 || p.n_keep >= n_ctx_) bad(op, "n_keep=" + str(p.n_keep) + " must be in [0, n_ctx=" + str(n_ctx_) + ")");

  void* mem = std::aligned_alloc(64, (size_t)total);
  if (!mem) throw std::bad_alloc();
  mem_ = std::unique_ptr<uint8_t, void (*)(void*)>((uint8_t*)mem, std::free);
  pool_ = (uint8_t*)mem;
  refs_.assign((size_t)n_pages_, 0);
  free_.reserve((size_t)n_pages_);
  for (int64_t i = n_pages_ - 1; i >= 0; --i) free_.push_back((int32_t)i);  // page 0 handed out first
}

int64_t KVCache::bytes_per_token() const { return (int64_t)p_.n_layers * p_.n_kv_heads * (k_row_ + v_row_); }

KVCache::Seq& KVCache::seq(int32_t id, const char* op) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) bad(op, "unknown sequence id " + str(id));
  return it->second;
}
const KVCache::Seq& KVCache::seq(int32_t id, const char* op) const {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) bad(op, "unknown sequence id " + str(id));
  return it->second;
}
void KVCache::require_seq(int32_t id, const char* op) const { (void)seq(id, op); }

int64_t KVCache::length(int32_t id) const { return seq(id, "kv_cache").len; }
int64_t KVCache::n_shifted(int32_t id) const { return seq(id, "kv_cache").shifted; }
const std::vector<int32_t>& KVCache::page_table(int32_t id) const { return seq(id, "kv_cache").pages; }

std::vector<int32_t> KVCache::sequence_ids() const {
  std::vector<int32_t> ids;
  for (const auto& kv : seqs_) ids.push_back(kv.first);
  std::sort(ids.begin(), ids.end());
  return ids;
}

int32_t KVCache::add_sequence() {
  if (next_id_ == INT32_MAX) bad("kv_cache", "sequence ids exhausted");
  const int32_t id = next_id_++;
  seqs_[id] = Seq{};
  return id;
}

int32_t KVCache::alloc_page() {
  // Callers check free_ first; this is the last line of defence against an overrun.
  if (free_.empty()) budget_error(1);
  const int32_t pg = free_.back();
  free_.pop_back();
  refs_[pg] = 1;
  return pg;
}

void KVCache::unref(int32_t pg) {
  if (--refs_[pg] == 0) free_.push_back(pg);
}

void KVCache::budget_error(int64_t want_pages) const {
  const int64_t used = n_pages_ - (int64_t)free_.size();
  std::string msg = "budget of " + str(budget_tokens()) + " tokens exhausted: " + str((int64_t)seqs_.size()) +
                    (seqs_.size() == 1 ? " sequence holds " : " sequences hold ") + str(used * p_.page_size) +
                    " (" + str(want_pages) + " more page(s) of " + str(p_.page_size) + " tokens needed); ";
  msg += p_.shift == ShiftPolicy::Shift ? "free a sequence or raise the budget (context shift could not free enough)"
                                        : "free a sequence, raise the budget, or enable context shift";
  bad("kv_cache", msg);
}

void KVCache::remove_sequence(int32_t id) {
  Seq& s = seq(id, "kv_cache.remove");
  for (int32_t pg : s.pages) unref(pg);
  seqs_.erase(id);
}

int32_t KVCache::fork(int32_t src) {
  const Seq& s = seq(src, "kv_cache.fork");
  if (next_id_ == INT32_MAX) bad("kv_cache.fork", "sequence ids exhausted");
  Seq c = s;
  for (int32_t pg : c.pages) ++refs_[pg];
  const int32_t id = next_id_++;
  seqs_[id] = std::move(c);
  return id;
}

void KVCache::truncate(int32_t id, int64_t len) {
  Seq& s = seq(id, "kv_cache.truncate");
  if (len < 0 || len > s.len)
    bad("kv_cache.truncate", "length " + str(len) + " is out of range [0, " + str(s.len) + "] for sequence " + str(id));
  const int64_t keep = ceil_div(len, p_.page_size);
  while ((int64_t)s.pages.size() > keep) {
    unref(s.pages.back());
    s.pages.pop_back();
  }
  s.len = len;
}

void KVCache::make_private(Seq& s, int64_t idx) {
  const int32_t old = s.pages[idx];
  if (refs_[old] == 1) return;
  const int32_t np = alloc_page();
  std::memcpy(page_ptr(np), page_ptr(old), (size_t)page_bytes_);
  --refs_[old];  // still > 0: other sequences use it
  s.pages[idx] = np;
}

void KVCache::shift_impl(Seq& s, int64_t d) {
  const int64_t keep = p_.n_keep, ps = p_.page_size, hd = p_.head_dim;
  if (d <= 0) return;
  if (d > s.len - keep) d = s.len - keep;
  if (d <= 0) return;
  const int64_t new_len = s.len - d;
  // Destination pages [keep/ps, ceil(new_len/ps)) are rewritten: they must be private.
  const int64_t p0 = keep / ps, p1 = ceil_div(new_len, ps);
  int64_t need = 0;
  for (int64_t i = p0; i < p1; ++i) need += refs_[s.pages[i]] > 1;
  if (need > (int64_t)free_.size()) budget_error(need - (int64_t)free_.size());
  for (int64_t i = p0; i < p1; ++i) make_private(s, i);
  std::vector<float> row((size_t)hd);
  const RopeParams& rp = p_.rope;
  const int64_t delta = -d;
  for (int64_t j = keep; j < new_len; ++j) {
    const int64_t src = j + d;
    const int32_t sp = s.pages[src / ps], dp = s.pages[j / ps];
    const int64_t so = src % ps, dof = j % ps;
    for (int32_t l = 0; l < p_.n_layers; ++l) {
      for (int32_t h = 0; h < p_.n_kv_heads; ++h) {
        const uint8_t* ks = k_rows(sp, l, h) + so * k_row_;
        uint8_t* kd = (uint8_t*)k_rows(dp, l, h) + dof * k_row_;
        if (rp.mode == RopeMode::None) {
          std::memmove(kd, ks, (size_t)k_row_);
        } else {
          kv_load_row(p_.k_dtype, ks, row.data(), hd);
          rope_inplace(row.data(), 1, 1, hd, &delta, 0, rp);  // rotation by -d composes with the stored one
          kv_store_row(p_.k_dtype, row.data(), kd, hd);
        }
        std::memmove((uint8_t*)v_rows(dp, l, h) + dof * v_row_, v_rows(sp, l, h) + so * v_row_, (size_t)v_row_);
      }
    }
  }
  const int64_t keep_pages = ceil_div(new_len, ps);
  while ((int64_t)s.pages.size() > keep_pages) {
    unref(s.pages.back());
    s.pages.pop_back();
  }
  s.len = new_len;
  s.shifted += d;
}

void KVCache::shift(int32_t id, int64_t n_discard) {
  Seq& s = seq(id, "kv_cache.shift");
  if (n_discard < 1 || n_discard > s.len - p_.n_keep)
    bad("kv_cache.shift", "n_discard=" + str(n_discard) + " is out of range [1, " + str(s.len - p_.n_keep) +
                              "] (sequence " + str(id) + " has " + str(s.len) + " tokens, n_keep=" + str(p_.n_keep) + ")");
  shift_impl(s, n_discard);
}

int64_t KVCache::reserve(int32_t id, int64_t n) {
  const char* op = "kv_cache";
  Seq& s = seq(id, "kv_cache.reserve");
  if (n < 0 || n > n_ctx_) bad(op, "cannot reserve " + str(n) + " tokens (n_ctx=" + str(n_ctx_) + ")");
  if (n == 0) return s.len;
  const int64_t ps = p_.page_size;
  const bool can_shift = p_.shift == ShiftPolicy::Shift;
  if (s.len + n > n_ctx_) {
    if (!can_shift)
      bad(op, "sequence " + str(id) + " would reach " + str(s.len + n) + " tokens, past n_ctx=" + str(n_ctx_) +
                  "; truncate it, raise n_ctx, or enable context shift");
    if (n > n_ctx_ - p_.n_keep)
      bad(op, "cannot append " + str(n) + " tokens to sequence " + str(id) + ": even after a context shift only " +
                  str(n_ctx_ - p_.n_keep) + " fit after the n_keep=" + str(p_.n_keep) + " kept tokens");
    const int64_t d = std::max(s.len + n - n_ctx_, (s.len - p_.n_keep) / 2);
    shift_impl(s, d);
  }
  auto pages_needed = [&]() {
    int64_t need = ceil_div(s.len + n, ps) - (int64_t)s.pages.size();
    if (s.len % ps != 0 && refs_[s.pages.back()] > 1) need += 1;  // copy-on-write of the partial last page
    return need;
  };
  int64_t need = pages_needed();
  if (need > (int64_t)free_.size() && can_shift && s.len > p_.n_keep) {
    const int64_t cap_tokens = ((int64_t)s.pages.size() + (int64_t)free_.size()) * ps;
    int64_t d = std::max(s.len + n - cap_tokens, (s.len - p_.n_keep) / 2);
    d = std::min(d, s.len - p_.n_keep);
    if (d > 0) shift_impl(s, d);
    need = pages_needed();
  }
  if (need > (int64_t)free_.size()) budget_error(need - (int64_t)free_.size());
  if (s.len % ps != 0) make_private(s, (int64_t)s.pages.size() - 1);
  const int64_t pos0 = s.len;
  while ((int64_t)s.pages.size() < ceil_div(s.len + n, ps)) s.pages.push_back(alloc_page());
  s.len += n;
  return pos0;
}

void KVCache::write(const KVWriteParams& w) {
  const char* op = "kv_cache.write";
  if (w.layer < 0 || w.layer >= p_.n_layers)
    bad(op, "layer=" + str(w.layer) + " is out of range [0, " + str(p_.n_layers) + ")");
  Seq& s = seq(w.seq_id, op);
  if (w.n_tokens < 1) bad(op, "n_tokens=" + str(w.n_tokens) + " must be >= 1");
  if (w.pos0 < 0 || w.pos0 + w.n_tokens > s.len)
    bad(op, "positions [" + str(w.pos0) + ", " + str(w.pos0 + w.n_tokens) + ") are outside sequence " + str(w.seq_id) +
                " of length " + str(s.len) + " (reserve them first)");
  if (!w.k || !w.v) bad(op, "null K or V buffer");
  const int64_t ps = p_.page_size, hd = p_.head_dim, nkv = p_.n_kv_heads;
  const int64_t pg0 = w.pos0 / ps, pg1 = (w.pos0 + w.n_tokens - 1) / ps;
  int64_t need = 0;
  for (int64_t i = pg0; i <= pg1; ++i) need += refs_[s.pages[i]] > 1;
  if (need > (int64_t)free_.size()) budget_error(need - (int64_t)free_.size());
  for (int64_t i = pg0; i <= pg1; ++i) make_private(s, i);
  std::vector<float> krow((size_t)(nkv * hd));
  for (int64_t t = 0; t < w.n_tokens; ++t) {
    const int64_t pos = w.pos0 + t;
    const int32_t pg = s.pages[pos / ps];
    const int64_t off = pos % ps;
    std::memcpy(krow.data(), w.k + t * nkv * hd, (size_t)(nkv * hd) * 4);
    if (!w.k_rotated) rope_inplace(krow.data(), 1, nkv, hd, &pos, 0, p_.rope);
    for (int64_t h = 0; h < nkv; ++h) {
      kv_store_row(p_.k_dtype, krow.data() + h * hd, (uint8_t*)k_rows(pg, w.layer, (int32_t)h) + off * k_row_, hd);
      kv_store_row(p_.v_dtype, w.v + (t * nkv + h) * hd, (uint8_t*)v_rows(pg, w.layer, (int32_t)h) + off * v_row_, hd);
    }
  }
}

KVStats KVCache::stats() const {
  KVStats st;
  st.pages_total = n_pages_;
  st.pages_free = (int64_t)free_.size();
  st.pages_used = n_pages_ - st.pages_free;
  for (int32_t r : refs_) {
    st.pages_shared += r > 1;
    st.refs_total += r;
  }
  st.page_bytes = page_bytes_;
  st.pool_bytes = n_pages_ * page_bytes_;
  st.bytes_used = st.pages_used * page_bytes_;
  for (const auto& kv : seqs_) st.tokens_cached += kv.second.len;
  st.budget_tokens = budget_tokens();
  st.bytes_per_token = bytes_per_token();
  st.n_seqs = (int64_t)seqs_.size();
  return st;
}

std::string KVCache::check() const {
  std::vector<int32_t> count((size_t)n_pages_, 0);
  for (const auto& kv : seqs_) {
    const Seq& s = kv.second;
    if ((int64_t)s.pages.size() != ceil_div(s.len, p_.page_size))
      return "sequence " + str(kv.first) + " has " + str((int64_t)s.pages.size()) + " pages for " + str(s.len) + " tokens";
    if (s.len > n_ctx_) return "sequence " + str(kv.first) + " is longer than n_ctx";
    for (int32_t pg : s.pages) {
      if (pg < 0 || pg >= n_pages_) return "sequence " + str(kv.first) + " references page " + str(pg) + " out of range";
      ++count[pg];
    }
  }
  std::vector<char> is_free((size_t)n_pages_, 0);
  for (int32_t pg : free_) {
    if (pg < 0 || pg >= n_pages_) return "free list holds page " + str(pg) + " out of range";
    if (is_free[pg]) return "page " + str(pg) + " is on the free list twice";
    is_free[pg] = 1;
  }
  for (int64_t i = 0; i < n_pages_; ++i) {
    if (count[i] != refs_[i])
      return "page " + str(i) + " has refcount " + str(refs_[i]) + " but " + str(count[i]) + " page-table entries";
    if ((count[i] == 0) != (bool)is_free[i])
      return "page " + str(i) + (count[i] == 0 ? " is leaked (unreferenced, not free)" : " is both used and free");
  }
  return "";
}

}  // namespace xsil
