// Page bookkeeping of the paged, budgeted KV cache, shared by the host cache (cpu/kv_cache.h) and the
// device cache (cuda/kv_cache.h): sequences, page tables, refcounts, the free list, budget errors,
// fork / copy-on-write, truncate, remove, reserve and the context-shift decisions all live here.
// Where the pool's bytes are and how rows move inside it is a KVStorage's job (host memory with
// memcpy, or device memory with kernels); KVPages decides, the storage moves bytes.
//
// Layout. One pool of n_pages pages is allocated when the cache is created and never grows. A page
// holds page_size consecutive tokens of one sequence for ALL layers, so a sequence has a single page
// table shared by its layers (one allocation decision per token, not per layer). The pool is
// head-major so that attention streams:
//   K region [n_layers][n_kv_heads][n_pages][page_size][k_row_bytes], then
//   V region [n_layers][n_kv_heads][n_pages][page_size][v_row_bytes]
// i.e. page p of a sequence is the slot p of every (layer, head) array. A sequence's next page is
// the first free page after its last one, so its K (or V) rows of one head in one layer are mostly
// one contiguous run of memory.
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

// Throws invalid_argument "[op] ..." unless rp's frequency factors are absent (nullptr, count 0) or
// exactly head_dim / 2 finite values > 0.
void check_rope_freq_factors(const RopeParams& rp, int64_t head_dim, const char* op);

// Bytes of one cached row of head_dim elements in dtype.
int64_t kv_row_bytes(KVDtype dt, int64_t head_dim);
const char* kv_dtype_name(KVDtype dt);
// Parses "f32"/"fp32"/"float32", "f16"/"fp16"/"float16", "q8_0" (case-insensitive); throws naming op.
KVDtype parse_kv_dtype(const std::string& s, const char* op);

struct KVStats {
  int64_t pages_total = 0, pages_used = 0, pages_free = 0, pages_shared = 0;
  int64_t page_bytes = 0, pool_bytes = 0, bytes_used = 0;
  int64_t tokens_cached = 0;   // sum of sequence lengths (shared tokens counted per sequence)
  int64_t budget_tokens = 0;   // pages_total * page_size
  int64_t bytes_per_token = 0; // all layers, K and V
  int64_t n_seqs = 0;
  int64_t refs_total = 0;      // sum of page refcounts (= page-table entries of all sequences)
};

// Geometry of the pool: byte offsets of the rows of (page, layer, head). Same math on host and device.
struct KVLayout {
  int32_t n_layers = 0, n_kv_heads = 0, head_dim = 0, page_size = 0;
  KVDtype k_dtype = KVDtype::F16, v_dtype = KVDtype::F16;
  int64_t n_pages = 0;
  int64_t k_row = 0, v_row = 0;      // bytes of one row
  int64_t k_chunk = 0, v_chunk = 0;  // bytes of the page_size rows of one (page, layer, head)
  int64_t v_region = 0;              // byte offset of the V region
  int64_t page_bytes = 0;            // one page, all layers, K and V
  int64_t pool_bytes() const { return n_pages * page_bytes; }
  int64_t k_off(int64_t page, int64_t layer, int64_t head) const {
    return ((layer * n_kv_heads + head) * n_pages + page) * k_chunk;
  }
  int64_t v_off(int64_t page, int64_t layer, int64_t head) const {
    return v_region + ((layer * n_kv_heads + head) * n_pages + page) * v_chunk;
  }
};

// Where the pool lives and how its bytes move. KVPages calls these only with validated arguments.
class KVStorage {
 public:
  virtual ~KVStorage() = default;
  // Allocates the pool of L.pool_bytes() bytes (owned by the storage) and returns its base address.
  virtual uint8_t* allocate(const KVLayout& L) = 0;
  // Copies every (layer, head) K and V chunk of page src to page dst.
  virtual void copy_page(const KVLayout& L, uint8_t* pool, int32_t src, int32_t dst) = 0;
  // Context shift of one sequence with page table `pages` (destination pages already private):
  // token j in [keep, new_len) becomes token j + d, its key re-rotated by -d (rope), for every layer
  // and head. Sequentially equivalent to j = keep, keep + 1, ... (sources overlap destinations).
  virtual void shift_rows(const KVLayout& L, uint8_t* pool, const RopeParams& rope, const std::vector<int32_t>& pages,
                          int64_t keep, int64_t new_len, int64_t d) = 0;
};

class KVPages {
 public:
  // Validates p, computes the layout and lets `storage` allocate the pool; throws invalid_argument.
  // p.rope.freq_factors (if any) is copied: params().rope.freq_factors points at the cache's copy.
  KVPages(const KVCacheParams& p, std::unique_ptr<KVStorage> storage);
  virtual ~KVPages() = default;
  KVPages(const KVPages&) = delete;
  KVPages& operator=(const KVPages&) = delete;

  const KVCacheParams& params() const { return p_; }
  const KVLayout& layout() const { return L_; }

  // --- sequences ---
  int32_t add_sequence();                   // new empty sequence, returns its id (ids are never reused)
  void remove_sequence(int32_t id);         // frees its pages (shared ones when the last user goes)
  int32_t fork(int32_t src);                // new sequence sharing src's tokens (copy-on-write)
  void truncate(int32_t id, int64_t len);   // keep the first len tokens (len <= length)
  // Make room for n more tokens at the end of sequence id; returns the first new position. Applies
  // the context-shift policy if the sequence would pass n_ctx or the pool runs dry. Pages the new
  // tokens land in become private (copy-on-write). Throws when it cannot; nothing is changed then,
  // except that with the shift policy a shift already done to make room stays done.
  int64_t reserve(int32_t id, int64_t n);
  // Drops n_discard tokens after the first n_keep, shifting later tokens down (keys re-rotated).
  void shift(int32_t id, int64_t n_discard);

  // --- writes (the storage-specific write calls these two, then stores the rows) ---
  // Throws "[op] ..." unless layer is valid, sequence seq_id exists, n_tokens >= 1 and the positions
  // [pos0, pos0 + n_tokens) lie inside the sequence.
  void check_write(int32_t layer, int32_t seq_id, int64_t pos0, int64_t n_tokens, const char* op) const;
  // Copy-on-write of the pages holding positions [pos0, pos0 + n_tokens) (budget error if it cannot).
  void make_writable(int32_t seq_id, int64_t pos0, int64_t n_tokens);

  bool has(int32_t id) const { return seqs_.count(id) != 0; }
  int64_t length(int32_t id) const;
  int64_t n_shifted(int32_t id) const;      // tokens discarded by shifts so far
  std::vector<int32_t> sequence_ids() const;
  const std::vector<int32_t>& page_table(int32_t id) const;

  // --- read access for the attention kernels (host or device addresses, per the storage) ---
  // The page_size K (V) rows of (page, layer, head), k_row_bytes (v_row_bytes) apart.
  const uint8_t* k_rows(int32_t page, int32_t layer, int32_t head) const { return pool_ + L_.k_off(page, layer, head); }
  const uint8_t* v_rows(int32_t page, int32_t layer, int32_t head) const { return pool_ + L_.v_off(page, layer, head); }
  const uint8_t* pool() const { return pool_; }
  int64_t k_row_bytes() const { return L_.k_row; }
  int64_t v_row_bytes() const { return L_.v_row; }
  int64_t page_bytes() const { return L_.page_bytes; }
  int64_t n_pages() const { return L_.n_pages; }
  int64_t budget_tokens() const { return L_.n_pages * p_.page_size; }
  int64_t n_ctx() const { return n_ctx_; }
  int64_t bytes_per_token() const;
  int32_t refcount(int32_t page) const { return refs_[page]; }

  KVStats stats() const;
  // Checks refcounts against the page tables, the free list against the refcounts, and sequence
  // lengths against their page tables. Returns "" when consistent, otherwise what is wrong.
  std::string check() const;

  // Throws invalid_argument "[op] unknown sequence id N" when id is not live.
  void require_seq(int32_t id, const char* op) const;

 protected:
  uint8_t* mutable_pool() { return pool_; }
  KVStorage& storage() { return *storage_; }

 private:
  struct Seq {
    std::vector<int32_t> pages;
    int64_t len = 0;
    int64_t shifted = 0;
  };
  Seq& seq(int32_t id, const char* op);
  const Seq& seq(int32_t id, const char* op) const;
  int32_t alloc_page(int64_t hint);  // lowest free page >= hint (else the lowest), refcount 1
  void unref(int32_t page);
  void make_private(Seq& s, int64_t page_idx);  // copy-on-write of s.pages[page_idx]
  void budget_error(int64_t want_pages) const;
  void shift_impl(Seq& s, int64_t n_discard);

  KVCacheParams p_;                // p_.rope.freq_factors points at rope_ff_ (or is null)
  std::vector<float> rope_ff_;     // the cache's own copy of the RoPE frequency factors
  KVLayout L_;
  int64_t n_ctx_ = 0;
  std::unique_ptr<KVStorage> storage_;
  uint8_t* pool_ = nullptr;
  std::vector<int32_t> refs_;      // per page: number of page-table entries referencing it
  std::vector<uint64_t> free_bits_;  // bit p set = page p free
  int64_t n_free_ = 0;
  std::unordered_map<int32_t, Seq> seqs_;
  int32_t next_id_ = 0;
};

}  // namespace xsil
