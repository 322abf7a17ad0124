#include "cpu/kv_cache.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include <unistd.h>

#include "core/fp16.h"
#include "cpu/kv_rows.h"
#include "cpu/quant.h"

namespace xsil {

void rope_inplace(float* x, int64_t n_pos, int64_t n_vec, int64_t hd, const int64_t* pos, int64_t pos_offset,
                  const RopeParams& rp) {
  if (rp.mode == RopeMode::None) return;
  const int64_t half = hd / 2;
  thread_local std::vector<double> inv;
  thread_local std::vector<float> cs, sn;
  inv.resize(half);
  cs.resize(half);
  sn.resize(half);
  // Frequency factors divide the pair's frequency (see RopeParams); dividing by 1.0 is exact, so
  // all-ones factors give bit-identical angles to none.
  const float* ff = rp.freq_factors && rp.n_freq_factors == half ? rp.freq_factors : nullptr;
  if (rp.freq_factors && !ff)
    throw std::invalid_argument("[rope] " + std::to_string(rp.n_freq_factors) +
                                " frequency factors given, expected head_dim / 2 = " + std::to_string(half));
  for (int64_t i = 0; i < half; ++i) {
    inv[i] = std::pow((double)rp.freq_base, -2.0 * (double)i / (double)hd);
    if (ff) inv[i] /= (double)ff[i];
  }
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

uint8_t* HostKVStorage::allocate(const KVLayout& L) {
  const int64_t total = L.pool_bytes();
  // More than the machine's physical memory can never work (with overcommit the allocation itself
  // might succeed and the process die later): refuse it up front, like a failed allocation.
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  const int64_t phys = pages > 0 && page > 0 ? (int64_t)pages * page : INT64_MAX;
  void* mem = total <= phys ? std::aligned_alloc(64, (size_t)((total + 63) / 64 * 64)) : nullptr;
  if (!mem)
    throw std::runtime_error("[kv_cache] cannot allocate the KV cache: it needs " + std::to_string(total >> 20) +
                             " MiB of memory (this machine has " + std::to_string(phys >> 20) +
                             " MiB); lower n_ctx (or the budget), or use kv_dtype='q8_0' (half the bytes of f16)");
  mem_ = std::unique_ptr<uint8_t, void (*)(void*)>((uint8_t*)mem, std::free);
  return (uint8_t*)mem;
}

void HostKVStorage::copy_page(const KVLayout& L, uint8_t* pool, int32_t src, int32_t dst) {
  for (int32_t l = 0; l < L.n_layers; ++l)
    for (int32_t h = 0; h < L.n_kv_heads; ++h) {
      std::memcpy(pool + L.k_off(dst, l, h), pool + L.k_off(src, l, h), (size_t)L.k_chunk);
      std::memcpy(pool + L.v_off(dst, l, h), pool + L.v_off(src, l, h), (size_t)L.v_chunk);
    }
}

void HostKVStorage::shift_rows(const KVLayout& L, uint8_t* pool, const RopeParams& rp, const std::vector<int32_t>& pages,
                               int64_t keep, int64_t new_len, int64_t d) {
  const int64_t ps = L.page_size, hd = L.head_dim;
  std::vector<float> row((size_t)hd);
  const int64_t delta = -d;
  for (int64_t j = keep; j < new_len; ++j) {
    const int64_t src = j + d;
    const int32_t sp = pages[src / ps], dp = pages[j / ps];
    const int64_t so = src % ps, dof = j % ps;
    for (int32_t l = 0; l < L.n_layers; ++l) {
      for (int32_t h = 0; h < L.n_kv_heads; ++h) {
        const uint8_t* ks = pool + L.k_off(sp, l, h) + so * L.k_row;
        uint8_t* kd = pool + L.k_off(dp, l, h) + dof * L.k_row;
        if (rp.mode == RopeMode::None) {
          std::memmove(kd, ks, (size_t)L.k_row);
        } else {
          kv_load_row(L.k_dtype, ks, row.data(), hd);
          rope_inplace(row.data(), 1, 1, hd, &delta, 0, rp);  // rotation by -d composes with the stored one
          kv_store_row(L.k_dtype, row.data(), kd, hd);
        }
        std::memmove(pool + L.v_off(dp, l, h) + dof * L.v_row, pool + L.v_off(sp, l, h) + so * L.v_row, (size_t)L.v_row);
      }
    }
  }
}

KVCache::KVCache(const KVCacheParams& p) : KVPages(p, std::make_unique<HostKVStorage>()) {}

void KVCache::write(const KVWriteParams& w) {
  const char* op = "kv_cache.write";
  check_write(w.layer, w.seq_id, w.pos0, w.n_tokens, op);
  if (!w.k || !w.v) throw std::invalid_argument(std::string("[") + op + "] null K or V buffer");
  make_writable(w.seq_id, w.pos0, w.n_tokens);
  const KVCacheParams& p = params();
  const KVLayout& L = layout();
  const int64_t ps = p.page_size, hd = p.head_dim, nkv = p.n_kv_heads;
  const std::vector<int32_t>& pages = page_table(w.seq_id);
  uint8_t* pool = mutable_pool();
  std::vector<float> krow((size_t)(nkv * hd));
  for (int64_t t = 0; t < w.n_tokens; ++t) {
    const int64_t pos = w.pos0 + t;
    const int32_t pg = pages[pos / ps];
    const int64_t off = pos % ps;
    std::memcpy(krow.data(), w.k + t * nkv * hd, (size_t)(nkv * hd) * 4);
    if (!w.k_rotated) rope_inplace(krow.data(), 1, nkv, hd, &pos, 0, p.rope);
    for (int64_t h = 0; h < nkv; ++h) {
      kv_store_row(p.k_dtype, krow.data() + h * hd, pool + L.k_off(pg, w.layer, h) + off * L.k_row, hd);
      kv_store_row(p.v_dtype, w.v + (t * nkv + h) * hd, pool + L.v_off(pg, w.layer, h) + off * L.v_row, hd);
    }
  }
}

}  // namespace xsil
