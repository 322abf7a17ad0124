// Paged, budgeted KV cache shared by many sequences.
//
// Layout. One pool of n_pages pages is allocated when the cache is created and never grows. A page
// holds page_size consecutive tokens of one sequence for ALL layers, so a sequence has a single page
// table shared by its layers (one allocation decision per token, not per layer). Inside a page:
//   layer l: K block [n_kv_heads][page_size][k_row_bytes], then V block [n_kv_heads][page_size][v_row_bytes]
// so the K (or V) rows of one head within a page are contiguous: the attention kernels stream them.
// Rows are fp32, fp16 or GGUF Q8_0 blocks (head_dim / 32 blocks of 34 bytes).
//
// Positions. Token i of a sequence is at position i. K is stored already rotated (RoPE) at its
// position. A context shift drops tokens [n_keep, n_keep + n_discard), moves the later ones down and
// re-rotates their keys by -n_discard, so cached keys always sit at their current positions.
//
// Sharing. fork() makes a new sequence whose page table references the source's pages (refcount +1).
// A page is copied before the first write into it by a sequence that does not own it alone
// (copy-on-write), so a shared prompt costs its memory once.
//
// Not thread-safe: one thread mutates a cache at a time; the attention kernels only read it.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "xsil/params.h"

namespace xsil {

// Bytes of one cached row of head_dim elements in dtype.
int64_t kv_row_bytes(KVDtype dt, int64_t head_dim);
const char* kv_dtype_name(KVDtype dt);
// Parses "f32"/"fp32"/"float32", "f16"/"fp16"/"float16", "q8_0" (case-insensitive); throws naming op.
KVDtype parse_kv_dtype(const std::string& s, const char* op);

// Rotate n_vec vectors of head_dim at each of n_pos positions: x[n_pos][n_vec][head_dim], position of
// row t = pos[t] (+ offset). Pair angles computed in double.
void rope_inplace(float* x, int64_t n_pos, int64_t n_vec, int64_t head_dim, const int64_t* pos, int64_t pos_offset,
                  const RopeParams& rp);

struct KVStats {
  int64_t pages_total = 0, pages_used = 0, pages_free = 0, pages_shared = 0;
  int64_t page_bytes = 0, pool_bytes = 0, bytes_used = 0;
  int64_t tokens_cached = 0;   // sum of sequence lengths (shared tokens counted per sequence)
  int64_t budget_tokens = 0;   // pages_total * page_size
  int64_t bytes_per_token = 0; // all layers, K and V
  int64_t n_seqs = 0;
  int64_t refs_total = 0;      // sum of page refcounts (= page-table entries of all sequences)
};

class KVCache {
 public:
  explicit KVCache(const KVCacheParams& p);  // validates p, allocates the pool; throws invalid_argument
  KVCache(const KVCache&) = delete;
  KVCache& operator=(const KVCache&) = delete;

  const KVCacheParams& params() const { return p_; }

  // --- sequences ---
  int32_t add_sequence();                   // new empty sequence, returns its id (ids are never reused)
  void remove_sequence(int32_t id);         // frees its pages (shared ones when the last user goes)
  int32_t fork(int32_t src);                // new sequence sharing src's tokens (copy-on-write)
  void truncate(int32_t id, int64_t len);   // keep the first len tokens (len <= length)
  // Make room for n more tokens at the end of sequence id; returns the first new position. Applies
  // the context-shift policy if the sequence would pass n_ctx or the pool runs dry. Pages the new
  // tokens land in become private (copy-on-write). Throws (changing nothing) when it cannot.
  int64_t reserve(int32_t id, int64_t n);
  // Writes one layer's K/V for reserved positions (rotating K). Validates everything first.
  void write(const KVWriteParams& w);
  // Drops n_discard tokens after the first n_keep, shifting later tokens down (keys re-rotated).
  void shift(int32_t id, int64_t n_discard);

  bool has(int32_t id) const { return seqs_.count(id) != 0; }
  int64_t length(int32_t id) const;
  int64_t n_shifted(int32_t id) const;      // tokens discarded by shifts so far
  std::vector<int32_t> sequence_ids() const;
  const std::vector<int32_t>& page_table(int32_t id) const;

  // --- read access for the attention kernels ---
  const uint8_t* k_rows(int32_t page, int32_t layer, int32_t head) const {
    return pool_ + (int64_t)page * page_bytes_ + (int64_t)layer * layer_bytes_ + (int64_t)head * p_.page_size * k_row_;
  }
  const uint8_t* v_rows(int32_t page, int32_t layer, int32_t head) const {
    return pool_ + (int64_t)page * page_bytes_ + (int64_t)layer * layer_bytes_ + k_block_ +
           (int64_t)head * p_.page_size * v_row_;
  }
  int64_t k_row_bytes() const { return k_row_; }
  int64_t v_row_bytes() const { return v_row_; }
  int64_t page_bytes() const { return page_bytes_; }
  int64_t n_pages() const { return n_pages_; }
  int64_t budget_tokens() const { return n_pages_ * p_.page_size; }
  int64_t n_ctx() const { return n_ctx_; }
  int64_t bytes_per_token() const;
  int32_t refcount(int32_t page) const { return refs_[page]; }

  KVStats stats() const;
  // Checks refcounts against the page tables, the free list against the refcounts, and sequence
  // lengths against their page tables. Returns "" when consistent, otherwise what is wrong.
  std::string check() const;

  // Throws invalid_argument "[op] unknown sequence id N" when id is not live.
  void require_seq(int32_t id, const char* op) const;

 private:
  struct Seq {
    std::vector<int32_t> pages;
    int64_t len = 0;
    int64_t shifted = 0;
  };
  Seq& seq(int32_t id, const char* op);
  const Seq& seq(int32_t id, const char* op) const;
  int32_t alloc_page();
  void unref(int32_t page);
  uint8_t* page_ptr(int32_t page) { return pool_ + (int64_t)page * page_bytes_; }
  void make_private(Seq& s, int64_t page_idx);  // copy-on-write of s.pages[page_idx]
  void budget_error(int64_t want_pages) const;
  void shift_impl(Seq& s, int64_t n_discard);

  KVCacheParams p_;
  int64_t k_row_ = 0, v_row_ = 0, k_block_ = 0, layer_bytes_ = 0, page_bytes_ = 0;
  int64_t n_pages_ = 0, n_ctx_ = 0;
  std::unique_ptr<uint8_t, void (*)(void*)> mem_{nullptr, nullptr};
  uint8_t* pool_ = nullptr;
  std::vector<int32_t> refs_;      // per page: number of page-table entries referencing it
  std::vector<int32_t> free_;      // free page stack
  std::unordered_map<int32_t, Seq> seqs_;
  int32_t next_id_ = 0;
};

}  // namespace xsil
