// Paged, budgeted KV cache in host memory, shared by many sequences. The page bookkeeping (layout,
// sequences, page tables, refcounts, fork / copy-on-write, truncate, reserve, context shift, budget
// errors) is KVPages (core/kv_pages.h), shared with the CUDA cache; this file adds the host storage
// (memcpy copies, scalar re-rotation on shifts) and the host write path.
//
// Rows are fp32, fp16 or GGUF Q8_0 blocks (head_dim / 32 blocks of 34 bytes); k_rows() / v_rows()
// are host addresses the CPU attention kernels stream.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/kv_pages.h"
#include "xsil/params.h"

namespace xsil {

// Rotate n_vec vectors of head_dim at each of n_pos positions: x[n_pos][n_vec][head_dim], position of
// row t = pos[t] (+ offset). Pair angles computed in double.
void rope_inplace(float* x, int64_t n_pos, int64_t n_vec, int64_t head_dim, const int64_t* pos, int64_t pos_offset,
                  const RopeParams& rp);

// The pool in host memory (64-byte aligned); copies with memcpy, shifts row by row.
class HostKVStorage : public KVStorage {
 public:
  uint8_t* allocate(const KVLayout& L) override;
  void copy_page(const KVLayout& L, uint8_t* pool, int32_t src, int32_t dst) override;
  void shift_rows(const KVLayout& L, uint8_t* pool, const RopeParams& rope, const std::vector<int32_t>& pages,
                  int64_t keep, int64_t new_len, int64_t d) override;

 private:
  std::unique_ptr<uint8_t, void (*)(void*)> mem_{nullptr, nullptr};
};

class KVCache : public KVPages {
 public:
  explicit KVCache(const KVCacheParams& p);  // validates p, allocates the pool; throws invalid_argument

  // Writes one layer's K/V for reserved positions (rotating K). Validates everything first.
  void write(const KVWriteParams& w);
};

}  // namespace xsil
