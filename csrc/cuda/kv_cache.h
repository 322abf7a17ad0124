// Device-resident paged KV cache: the CPU cache's bookkeeping (core/kv_pages.h: sequences, page
// tables, refcounts, fork / copy-on-write, truncate, reserve, context-shift decisions, the same
// budget errors) with the pool in device memory and its bytes moved by kernels (kv_cache.cu).
// Same pool layout as the CPU cache ([layers][kv_heads][pages][page_size][row], K region then V
// region), so a page table means the same thing on both sides.
//
// Attention over it (attention_paged.cu) reads the page tables and lengths from device memory, so a
// captured CUDA graph can be replayed after the host updated them.
#pragma once
// (Standard headers before the CUDA ones: the emulator's CUDA headers define attribute macros.)
#include <cstdint>
#include <memory>
#include <vector>

#include "core/kv_pages.h"
// clang-format off
#include <cuda_runtime.h>
#include "cuda/kernels.h"
// clang-format on

namespace xsil::cuda {

// What the kernels need of a cache (plain values; the pool is a device pointer).
struct DevKV {
  uint8_t* pool = nullptr;
  int32_t n_layers = 0, n_kv = 0, hd = 0, page_size = 0;
  int32_t k_dtype = 1, v_dtype = 1;  // KVDtype values
  int64_t n_pages = 0, k_row = 0, v_row = 0, k_chunk = 0, v_chunk = 0, v_region = 0;
};
DevKV dev_kv(const KVLayout& L, uint8_t* pool);

// Pool in device memory (cudaMalloc); page copies and shifts run on `stream` (synchronized before
// returning, so host bookkeeping and device bytes never disagree for the next caller).
class CudaKVStorage : public KVStorage {
 public:
  explicit CudaKVStorage(cudaStream_t st) : st_(st) {}
  ~CudaKVStorage() override;
  uint8_t* allocate(const KVLayout& L) override;
  void copy_page(const KVLayout& L, uint8_t* pool, int32_t src, int32_t dst) override;
  void shift_rows(const KVLayout& L, uint8_t* pool, const RopeParams& rope, const std::vector<int32_t>& pages,
                  int64_t keep, int64_t new_len, int64_t d) override;
  // Uploads rp's frequency factors (if any; validated against head_dim) once; the storage owns them.
  void upload_freq_factors(const RopeParams& rp, int64_t head_dim);
  const float* freq_factors() const { return ff_; }  // device copy, or nullptr

 private:
  cudaStream_t st_ = nullptr;
  void* pool_ = nullptr;
  float* ff_ = nullptr;  // device copy of the RoPE frequency factors (shift re-rotation, writes)
};

class CudaKVCache : public KVPages {
 public:
  // Validates p as the CPU cache does, plus the device limits (head_dim a multiple of 32, <= 256).
  explicit CudaKVCache(const KVCacheParams& p, cudaStream_t st = nullptr);
  DevKV dev() const { return dev_kv(layout(), const_cast<uint8_t*>(pool())); }
  cudaStream_t stream() const { return st_; }
  // Writes layer `layer` of positions [pos0, pos0 + n) of sequence seq_id (reserved first) from the
  // device arrays k, v [n][n_kv_heads][head_dim] fp32; K is rotated at its positions unless
  // k_rotated. Copy-on-write of shared pages first, exactly as the CPU cache. Synchronous.
  void write(int32_t layer, int32_t seq_id, int64_t pos0, int32_t n, const float* k, const float* v, bool k_rotated);
  // Device copy of params().rope's frequency factors (nullptr when it has none), alive as long as the
  // cache: what the RoPE kernels take next to params().rope.
  const float* dev_freq_factors() const { return storage_->freq_factors(); }

 private:
  cudaStream_t st_ = nullptr;
  CudaKVStorage* storage_ = nullptr;  // the base's storage
};

// --- kernels over a DevKV (kv_cache.cu) -----------------------------------------------------------
// RoPE of q (n_q_heads per token, in place; q may be null) and of k at positions pos0 + t (pos0 read
// from *dpos when given), and the store of k and v [n_tok][n_kv][hd] fp32 into layer `layer` through
// the page table pt (device int32, one sequence): f32, f16, or Q8_0 quantized per 32 as the CPU.
// rotate_k = false stores k as given. dff: the device copy of rp's frequency factors (nullptr iff
// rp.freq_factors is; e.g. CudaKVCache::dev_freq_factors()).
void paged_rope_qkv_write(float* q, int64_t n_q_heads, const float* k, const float* v, const DevKV& kv, int32_t layer,
                          const int32_t* pt, int64_t n_tok, int64_t pos0, const RopeParams& rp, const float* dff,
                          bool rotate_k, cudaStream_t st, const int64_t* dpos = nullptr);
// Throws unless rp's mode is known and dff is given exactly when rp has frequency factors (and then
// head_dim / 2 of them): every RoPE launcher checks this before a kernel reads dff.
void require_rope(const RopeParams& rp, const float* dff, int64_t head_dim, const char* kernel);
// Copies page src to page dst (every layer and head, K and V).
void kv_copy_page(const DevKV& kv, int32_t src, int32_t dst, cudaStream_t st);

// --- paged attention (attention_paged.cu) --------------------------------------------------------
// Decode (one query per sequence at its last position, q already rotated), split-K over pages with
// GQA grouping: CTA (KV head, seq, split) loads each K/V row of its chunk of whole pages once (into
// shared memory) and reduces it for every query head of the group to a partial (max, sum, acc) per
// query head; a merge kernel combines the splits. The split count is derived ON THE DEVICE from each
// sequence's length (ceil(len / split_tokens), at most max_splits and the page count), so short
// contexts use few splits and the launch shape (max_splits) is fixed for a CUDA graph; splits past
// the count do nothing.
struct PagedDecodeArgs {
  DevKV kv;
  int32_t layer = 0;
  int32_t n_seqs = 0, n_heads = 0;
  const int32_t* pt = nullptr;    // [n_seqs][pt_stride] page tables (device)
  int32_t pt_stride = 0;
  const int32_t* lens = nullptr;  // [n_seqs] lengths (device), each >= 1
  const float* q = nullptr;       // [n_seqs][n_heads][hd], rotated
  float scale = 0.0f;             // 0 = 1 / sqrt(hd)
  float* out = nullptr;           // [n_seqs][n_heads][hd]
  DevQ8a qout;                    // qs set: also write out quantized to q8a (the next matmul's input)
  int32_t max_splits = 1;         // grid size in splits (>= 1, <= kMaxSplits)
  int32_t split_tokens = 512;     // tokens per split before another split is used
  float* work = nullptr;          // paged_decode_work_floats() floats (device)
};
constexpr int kMaxSplits = 64;
int64_t paged_decode_work_floats(int64_t n_seqs, int64_t n_heads, int64_t hd, int64_t max_splits);
// max_splits for sequences up to max_len tokens (what a graph's launch shape is sized for).
int32_t paged_max_splits(int64_t max_len, int32_t split_tokens);
// Default (split_tokens, max_splits) for sequences up to max_len tokens on a device with sm_count
// SMs (cudaDeviceProp::multiProcessorCount, queried once): kMinSplitTokens per split, splits up to
// ~2 CTAs per SM (see attention_paged.cu).
constexpr int kMinSplitTokens = 64;
struct DecodeSplitPlan {
  int32_t split_tokens = kMinSplitTokens, max_splits = 1;
};
DecodeSplitPlan paged_decode_plan(int64_t max_len, int64_t n_kv, int64_t n_seqs, int sm_count);
void paged_attention_decode(const PagedDecodeArgs& a, cudaStream_t st);

// Causal prefill of one sequence: queries at positions [len - n_q, len) (len = *lens), q rotated.
// CTA (head, tile of 8 queries), K/V tiles of 16 tokens gathered through the page table into shared
// memory as fp32.
struct PagedPrefillArgs {
  DevKV kv;
  int32_t layer = 0;
  int32_t n_q = 0, n_heads = 0;
  const int32_t* pt = nullptr;    // the sequence's page table (device)
  const int32_t* lens = nullptr;  // its length (device, one int32)
  const float* q = nullptr;       // [n_q][n_heads][hd], rotated
  float scale = 0.0f;
  float* out = nullptr;           // [n_q][n_heads][hd]
  DevQ8a qout;
};
void paged_attention_prefill(const PagedPrefillArgs& a, cudaStream_t st);

// Rotates q [n_seqs][n_heads][hd] of sequence s at position lens[s] - n_q + i for query row i
// (n_q rows per sequence) (used by the test entry points; the model fuses q's RoPE into the write).
void rope_at_lengths(float* q, int64_t n_seqs, int64_t n_q, int64_t n_heads, int64_t hd, const int32_t* lens,
                     const RopeParams& rp, const float* dff, cudaStream_t st);

}  // namespace xsil::cuda
