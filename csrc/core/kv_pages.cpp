#include "core/kv_pages.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <stdexcept>

#include "xsil/blocks.h"

namespace xsil {

namespace {
std::string str(int64_t v) { return std::to_string(v); }
[[noreturn]] void bad(const char* op, const std::string& msg) {
  throw std::invalid_argument(std::string("[") + op + "] " + msg);
}
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
}  // namespace

void check_rope_freq_factors(const RopeParams& rp, int64_t head_dim, const char* op) {
  if (!rp.freq_factors) {
    if (rp.n_freq_factors != 0)
      bad(op, "rope n_freq_factors=" + str(rp.n_freq_factors) + " given without the factors");
    return;
  }
  if (rp.n_freq_factors != head_dim / 2)
    bad(op, "rope frequency factors: " + str(rp.n_freq_factors) + " given, expected head_dim / 2 = " +
                str(head_dim / 2));
  for (int32_t i = 0; i < rp.n_freq_factors; ++i) {
    const float f = rp.freq_factors[i];
    if (!(f > 0.0f) || !std::isfinite(f))
      bad(op, "rope frequency factor " + str(i) + " must be finite and > 0");
  }
}

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

KVPages::KVPages(const KVCacheParams& p, std::unique_ptr<KVStorage> storage) : p_(p), storage_(std::move(storage)) {
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
  check_rope_freq_factors(p.rope, p.head_dim, op);
  if (p.rope.freq_factors) {  // own copy: the caller's array may go away after construction
    rope_ff_.assign(p.rope.freq_factors, p.rope.freq_factors + p.rope.n_freq_factors);
    p_.rope.freq_factors = rope_ff_.data();
  }

  L_.k_row = kv_row_bytes(p.k_dtype, p.head_dim);
  L_.v_row = kv_row_bytes(p.v_dtype, p.head_dim);
  L_.k_chunk = (int64_t)p.page_size * L_.k_row;
  L_.v_chunk = (int64_t)p.page_size * L_.v_row;
  L_.page_bytes = (int64_t)p.n_layers * p.n_kv_heads * (L_.k_chunk + L_.v_chunk);

  if (p.budget_bytes < 0 || p.budget_tokens < 0) bad(op, "the budget must not be negative");
  if (p.budget_bytes > 0) {
    L_.n_pages = p.budget_bytes / L_.page_bytes;
    if (L_.n_pages < 1)
      bad(op, "budget of " + str(p.budget_bytes) + " bytes is smaller than one page (" + str(L_.page_bytes) + " bytes = " +
                  str(p.page_size) + " tokens)");
  } else if (p.budget_tokens > 0) {
    L_.n_pages = p.budget_tokens / p.page_size;
    if (L_.n_pages < 1)
      bad(op, "budget of " + str(p.budget_tokens) + " tokens is smaller than one page of " + str(p.page_size));
  } else {
    bad(op, "set a budget: budget_bytes or budget_tokens must be > 0");
  }
  if (L_.n_pages > INT32_MAX / 2) bad(op, "budget is too large (" + str(L_.n_pages) + " pages)");
  // The pool (rounded up to the 64-byte allocation granule) must fit in a byte budget.
  while (p.budget_bytes > 0 && L_.n_pages > 1 && (L_.n_pages * L_.page_bytes + 63) / 64 * 64 > p.budget_bytes) --L_.n_pages;
  if (p.budget_bytes > 0 && (L_.n_pages * L_.page_bytes + 63) / 64 * 64 > p.budget_bytes)
    bad(op, "budget of " + str(p.budget_bytes) + " bytes is smaller than one page (" + str(L_.page_bytes) + " bytes = " +
                str(p.page_size) + " tokens)");
  L_.v_region = L_.n_pages * (int64_t)p.n_layers * p.n_kv_heads * L_.k_chunk;
  n_ctx_ = p.n_ctx > 0 ? p.n_ctx : L_.n_pages * p.page_size;
  if (p.n_ctx < 0) bad(op, "n_ctx=" + str(p.n_ctx) + " must be >= 0 (0 = the whole budget)");
  if (p.n_keep < 0 || p.n_keep >= n_ctx_) bad(op, "n_keep=" + str(p.n_keep) + " must be in [0, n_ctx=" + str(n_ctx_) + ")");

  L_.n_layers = p.n_layers;
  L_.n_kv_heads = p.n_kv_heads;
  L_.head_dim = p.head_dim;
  L_.page_size = p.page_size;
  L_.k_dtype = p.k_dtype;
  L_.v_dtype = p.v_dtype;
  if (!storage_) bad(op, "no storage for the pool");
  pool_ = storage_->allocate(L_);
  refs_.assign((size_t)L_.n_pages, 0);
  free_bits_.assign((size_t)((L_.n_pages + 63) / 64), ~(uint64_t)0);
  if (L_.n_pages % 64) free_bits_.back() = ((uint64_t)1 << (L_.n_pages % 64)) - 1;
  n_free_ = L_.n_pages;
}

int64_t KVPages::bytes_per_token() const { return (int64_t)p_.n_layers * p_.n_kv_heads * (L_.k_row + L_.v_row); }

KVPages::Seq& KVPages::seq(int32_t id, const char* op) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) bad(op, "unknown sequence id " + str(id));
  return it->second;
}
const KVPages::Seq& KVPages::seq(int32_t id, const char* op) const {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) bad(op, "unknown sequence id " + str(id));
  return it->second;
}
void KVPages::require_seq(int32_t id, const char* op) const { (void)seq(id, op); }

int64_t KVPages::length(int32_t id) const { return seq(id, "kv_cache").len; }
int64_t KVPages::n_shifted(int32_t id) const { return seq(id, "kv_cache").shifted; }
const std::vector<int32_t>& KVPages::page_table(int32_t id) const { return seq(id, "kv_cache").pages; }

std::vector<int32_t> KVPages::sequence_ids() const {
  std::vector<int32_t> ids;
  for (const auto& kv : seqs_) ids.push_back(kv.first);
  std::sort(ids.begin(), ids.end());
  return ids;
}

int32_t KVPages::add_sequence() {
  if (next_id_ == INT32_MAX) bad("kv_cache", "sequence ids exhausted");
  const int32_t id = next_id_++;
  seqs_[id] = Seq{};
  return id;
}

int32_t KVPages::alloc_page(int64_t hint) {
  // Callers check n_free_ first; this is the last line of defence against an overrun.
  if (n_free_ == 0) budget_error(1);
  if (hint < 0 || hint >= L_.n_pages) hint = 0;
  const int64_t n_words = (int64_t)free_bits_.size();
  int64_t pg = -1;
  int64_t w = hint >> 6;
  uint64_t bits = free_bits_[w] & (~(uint64_t)0 << (hint & 63));
  for (int64_t k = 0; k <= n_words; ++k) {  // from the hint to the end, then from page 0
    if (bits) {
      pg = w * 64 + __builtin_ctzll(bits);
      break;
    }
    w = (w + 1) % n_words;
    bits = free_bits_[w];
  }
  if (pg < 0) budget_error(1);
  free_bits_[pg >> 6] &= ~((uint64_t)1 << (pg & 63));
  --n_free_;
  refs_[pg] = 1;
  return (int32_t)pg;
}

void KVPages::unref(int32_t pg) {
  if (--refs_[pg] == 0) {
    free_bits_[pg >> 6] |= (uint64_t)1 << (pg & 63);
    ++n_free_;
  }
}

void KVPages::budget_error(int64_t want_pages) const {
  const int64_t used = L_.n_pages - n_free_;
  std::string msg = "budget of " + str(budget_tokens()) + " tokens exhausted: " + str((int64_t)seqs_.size()) +
                    (seqs_.size() == 1 ? " sequence holds " : " sequences hold ") + str(used * p_.page_size) +
                    " (" + str(want_pages) + " more page(s) of " + str(p_.page_size) + " tokens needed); ";
  msg += p_.shift == ShiftPolicy::Shift ? "free a sequence or raise the budget (context shift could not free enough)"
                                        : "free a sequence, raise the budget, or enable context shift";
  bad("kv_cache", msg);
}

void KVPages::remove_sequence(int32_t id) {
  Seq& s = seq(id, "kv_cache.remove");
  for (int32_t pg : s.pages) unref(pg);
  seqs_.erase(id);
}

int32_t KVPages::fork(int32_t src) {
  const Seq& s = seq(src, "kv_cache.fork");
  if (next_id_ == INT32_MAX) bad("kv_cache.fork", "sequence ids exhausted");
  Seq c = s;
  for (int32_t pg : c.pages) ++refs_[pg];
  const int32_t id = next_id_++;
  seqs_[id] = std::move(c);
  return id;
}

void KVPages::truncate(int32_t id, int64_t len) {
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

void KVPages::make_private(Seq& s, int64_t idx) {
  const int32_t old = s.pages[idx];
  if (refs_[old] == 1) return;
  const int32_t np = alloc_page(idx > 0 ? (int64_t)s.pages[idx - 1] + 1 : old);
  storage_->copy_page(L_, pool_, old, np);
  --refs_[old];  // still > 0: other sequences use it
  s.pages[idx] = np;
}

void KVPages::shift_impl(Seq& s, int64_t d) {
  const int64_t keep = p_.n_keep, ps = p_.page_size;
  if (d <= 0) return;
  if (d > s.len - keep) d = s.len - keep;
  if (d <= 0) return;
  const int64_t new_len = s.len - d;
  // Destination pages [keep/ps, ceil(new_len/ps)) are rewritten: they must be private.
  const int64_t p0 = keep / ps, p1 = ceil_div(new_len, ps);
  int64_t need = 0;
  for (int64_t i = p0; i < p1; ++i) need += refs_[s.pages[i]] > 1;
  if (need > n_free_) budget_error(need - n_free_);
  for (int64_t i = p0; i < p1; ++i) make_private(s, i);
  storage_->shift_rows(L_, pool_, p_.rope, s.pages, keep, new_len, d);
  const int64_t keep_pages = ceil_div(new_len, ps);
  while ((int64_t)s.pages.size() > keep_pages) {
    unref(s.pages.back());
    s.pages.pop_back();
  }
  s.len = new_len;
  s.shifted += d;
}

void KVPages::shift(int32_t id, int64_t n_discard) {
  Seq& s = seq(id, "kv_cache.shift");
  if (n_discard < 1 || n_discard > s.len - p_.n_keep)
    bad("kv_cache.shift", "n_discard=" + str(n_discard) + " is out of range [1, " + str(s.len - p_.n_keep) +
                              "] (sequence " + str(id) + " has " + str(s.len) + " tokens, n_keep=" + str(p_.n_keep) + ")");
  shift_impl(s, n_discard);
}

int64_t KVPages::reserve(int32_t id, int64_t n) {
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
  if (need > n_free_ && can_shift && s.len > p_.n_keep) {
    const int64_t cap_tokens = ((int64_t)s.pages.size() + n_free_) * ps;
    int64_t d = std::max(s.len + n - cap_tokens, (s.len - p_.n_keep) / 2);
    d = std::min(d, s.len - p_.n_keep);
    if (d > 0) shift_impl(s, d);
    need = pages_needed();
  }
  if (need > n_free_) budget_error(need - n_free_);
  if (s.len % ps != 0) make_private(s, (int64_t)s.pages.size() - 1);
  const int64_t pos0 = s.len;
  while ((int64_t)s.pages.size() < ceil_div(s.len + n, ps))
    s.pages.push_back(alloc_page(s.pages.empty() ? 0 : (int64_t)s.pages.back() + 1));
  s.len += n;
  return pos0;
}

void KVPages::check_write(int32_t layer, int32_t seq_id, int64_t pos0, int64_t n_tokens, const char* op) const {
  if (layer < 0 || layer >= p_.n_layers)
    bad(op, "layer=" + str(layer) + " is out of range [0, " + str(p_.n_layers) + ")");
  const Seq& s = seq(seq_id, op);
  if (n_tokens < 1) bad(op, "n_tokens=" + str(n_tokens) + " must be >= 1");
  if (pos0 < 0 || pos0 + n_tokens > s.len)
    bad(op, "positions [" + str(pos0) + ", " + str(pos0 + n_tokens) + ") are outside sequence " + str(seq_id) +
                " of length " + str(s.len) + " (reserve them first)");
}

void KVPages::make_writable(int32_t seq_id, int64_t pos0, int64_t n_tokens) {
  Seq& s = seq(seq_id, "kv_cache.write");
  const int64_t ps = p_.page_size;
  const int64_t pg0 = pos0 / ps, pg1 = (pos0 + n_tokens - 1) / ps;
  int64_t need = 0;
  for (int64_t i = pg0; i <= pg1; ++i) need += refs_[s.pages[i]] > 1;
  if (need > n_free_) budget_error(need - n_free_);
  for (int64_t i = pg0; i <= pg1; ++i) make_private(s, i);
}

KVStats KVPages::stats() const {
  KVStats st;
  st.pages_total = L_.n_pages;
  st.pages_free = n_free_;
  st.pages_used = L_.n_pages - st.pages_free;
  for (int32_t r : refs_) {
    st.pages_shared += r > 1;
    st.refs_total += r;
  }
  st.page_bytes = L_.page_bytes;
  st.pool_bytes = L_.n_pages * L_.page_bytes;
  st.bytes_used = st.pages_used * L_.page_bytes;
  for (const auto& kv : seqs_) st.tokens_cached += kv.second.len;
  st.budget_tokens = budget_tokens();
  st.bytes_per_token = bytes_per_token();
  st.n_seqs = (int64_t)seqs_.size();
  return st;
}

std::string KVPages::check() const {
  std::vector<int32_t> count((size_t)L_.n_pages, 0);
  for (const auto& kv : seqs_) {
    const Seq& s = kv.second;
    if ((int64_t)s.pages.size() != ceil_div(s.len, p_.page_size))
      return "sequence " + str(kv.first) + " has " + str((int64_t)s.pages.size()) + " pages for " + str(s.len) + " tokens";
    if (s.len > n_ctx_) return "sequence " + str(kv.first) + " is longer than n_ctx";
    for (int32_t pg : s.pages) {
      if (pg < 0 || pg >= L_.n_pages) return "sequence " + str(kv.first) + " references page " + str(pg) + " out of range";
      ++count[pg];
    }
  }
  std::vector<char> is_free((size_t)L_.n_pages, 0);
  int64_t n_free = 0;
  for (int64_t i = 0; i < L_.n_pages; ++i) {
    is_free[i] = (char)((free_bits_[i >> 6] >> (i & 63)) & 1);
    n_free += is_free[i];
  }
  for (int64_t i = L_.n_pages; i < (int64_t)free_bits_.size() * 64; ++i)
    if ((free_bits_[i >> 6] >> (i & 63)) & 1) return "free bitmap marks page " + str(i) + " past the pool";
  if (n_free != n_free_) return "free count " + str(n_free_) + " but " + str(n_free) + " pages marked free";
  for (int64_t i = 0; i < L_.n_pages; ++i) {
    if (count[i] != refs_[i])
      return "page " + str(i) + " has refcount " + str(refs_[i]) + " but " + str(count[i]) + " page-table entries";
    if ((count[i] == 0) != (bool)is_free[i])
      return "page " + str(i) + (count[i] == 0 ? " is leaked (unreferenced, not free)" : " is both used and free");
  }
  return "";
}

}  // namespace xsil
