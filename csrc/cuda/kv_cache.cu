// Device storage of the paged KV cache (pool allocation, page copies, context shifts) and the KV
// write through a page table (RoPE fused, f32 / f16 / Q8_0 rows).
#include <algorithm>
#include <cmath>
#include <string>

#include "cuda/kv_rows.cuh"

namespace xsil::cuda {

namespace {

std::string str(int64_t v) { return std::to_string(v); }

// One CTA (hd threads) per (token, head): q heads first (rotated in place), then the kv heads (k
// rotated unless !rotate_k, stored with v through the page table).
__global__ void k_paged_rope_qkv_write(float* __restrict__ q, int nqh, const float* __restrict__ k,
                                       const float* __restrict__ v, DevKV kv, int layer, const int32_t* __restrict__ pt,
                                       int64_t pos0, const int64_t* __restrict__ dpos, int mode, double base,
                                       double fscale, const float* __restrict__ ff, int rotate_k) {
  __shared__ float sx[256];
  if (dpos) pos0 = *dpos;
  const int nh = nqh + kv.n_kv;
  const int64_t t = blockIdx.x / nh;
  const int hh = (int)(blockIdx.x % nh);
  const int i = threadIdx.x, hd = kv.hd;
  const int64_t pos = pos0 + t;
  const bool is_q = hh < nqh;
  const float* src = is_q ? q + (t * nqh + hh) * hd : k + (t * kv.n_kv + (hh - nqh)) * hd;
  sx[i] = src[i];
  __syncthreads();
  const float r = (is_q || rotate_k) ? rope_elem(sx, i, hd, mode, (double)pos, base, fscale, ff) : sx[i];
  if (is_q) {
    q[(t * nqh + hh) * hd + i] = r;
    return;
  }
  const int h = hh - nqh;
  const int32_t page = pt[pos / kv.page_size];
  const int64_t off = pos % kv.page_size;
  kv_store_dt(kv.k_dtype, kv.pool + kv_k_off(kv, page, layer, h) + off * kv.k_row, i, r);
  kv_store_dt(kv.v_dtype, kv.pool + kv_v_off(kv, page, layer, h) + off * kv.v_row, i,
              v[(t * kv.n_kv + h) * hd + i]);
}

// Page copy: CTA (layer * n_kv + head, K or V) copies one chunk.
__global__ void k_copy_page(DevKV kv, int32_t src, int32_t dst) {
  const int lh = blockIdx.x;
  const int layer = lh / kv.n_kv, head = lh % kv.n_kv;
  const bool is_v = blockIdx.y == 1;
  const int64_t bytes = is_v ? kv.v_chunk : kv.k_chunk;
  const uint8_t* s = kv.pool + (is_v ? kv_v_off(kv, src, layer, head) : kv_k_off(kv, src, layer, head));
  uint8_t* d = kv.pool + (is_v ? kv_v_off(kv, dst, layer, head) : kv_k_off(kv, dst, layer, head));
  if ((((uintptr_t)s | (uintptr_t)d | (uintptr_t)bytes) & 3) == 0) {
    for (int64_t w = threadIdx.x; w < bytes / 4; w += blockDim.x) ((uint32_t*)d)[w] = ((const uint32_t*)s)[w];
  } else {
    for (int64_t b = threadIdx.x; b < bytes; b += blockDim.x) d[b] = s[b];
  }
}

// Context shift, in chunks of n tokens (ascending): gather tokens [j0 + d, j0 + d + n) into tmp
// (keys re-rotated by -d), then scatter tmp to tokens [j0, j0 + n). CTA (hd threads) per
// (token, layer, head). tmp: [n][n_layers][n_kv] K rows, then the same of V rows.
__global__ void k_shift_gather(DevKV kv, const int32_t* __restrict__ pt, int64_t j0, int64_t d, int rotate,
                               int mode, double base, double fscale, const float* __restrict__ ff,
                               uint8_t* __restrict__ tmp, int64_t n) {
  __shared__ float sx[256];
  const int64_t lh_all = (int64_t)kv.n_layers * kv.n_kv;
  const int64_t jj = blockIdx.x / lh_all;
  const int64_t lh = blockIdx.x % lh_all;
  const int layer = (int)(lh / kv.n_kv), head = (int)(lh % kv.n_kv);
  const int i = threadIdx.x, hd = kv.hd;
  const int64_t src = j0 + jj + d;
  const int32_t page = pt[src / kv.page_size];
  const int64_t off = src % kv.page_size;
  const uint8_t* ks = kv.pool + kv_k_off(kv, page, layer, head) + off * kv.k_row;
  const uint8_t* vs = kv.pool + kv_v_off(kv, page, layer, head) + off * kv.v_row;
  uint8_t* kd = tmp + (jj * lh_all + lh) * kv.k_row;
  uint8_t* vd = tmp + n * lh_all * kv.k_row + (jj * lh_all + lh) * kv.v_row;
  if (rotate) {
    sx[i] = kv_load_dt(kv.k_dtype, ks, i);
    __syncthreads();
    kv_store_dt(kv.k_dtype, kd, i, rope_elem(sx, i, hd, mode, (double)(-d), base, fscale, ff));
  } else {
    for (int64_t b = i; b < kv.k_row; b += blockDim.x) kd[b] = ks[b];
  }
  for (int64_t b = i; b < kv.v_row; b += blockDim.x) vd[b] = vs[b];
}

__global__ void k_shift_scatter(DevKV kv, const int32_t* __restrict__ pt, int64_t j0, const uint8_t* __restrict__ tmp,
                                int64_t n) {
  const int64_t lh_all = (int64_t)kv.n_layers * kv.n_kv;
  const int64_t jj = blockIdx.x / lh_all;
  const int64_t lh = blockIdx.x % lh_all;
  const int layer = (int)(lh / kv.n_kv), head = (int)(lh % kv.n_kv);
  const int64_t dst = j0 + jj;
  const int32_t page = pt[dst / kv.page_size];
  const int64_t off = dst % kv.page_size;
  uint8_t* kd = kv.pool + kv_k_off(kv, page, layer, head) + off * kv.k_row;
  uint8_t* vd = kv.pool + kv_v_off(kv, page, layer, head) + off * kv.v_row;
  const uint8_t* ks = tmp + (jj * lh_all + lh) * kv.k_row;
  const uint8_t* vs = tmp + n * lh_all * kv.k_row + (jj * lh_all + lh) * kv.v_row;
  for (int64_t b = threadIdx.x; b < kv.k_row; b += blockDim.x) kd[b] = ks[b];
  for (int64_t b = threadIdx.x; b < kv.v_row; b += blockDim.x) vd[b] = vs[b];
}

// q [n_seqs][n_q][n_heads][hd]: row (s, i) rotated at lens[s] - n_q + i. CTA (hd threads) per row.
__global__ void k_rope_at_lengths(float* __restrict__ q, int64_t n_q, int64_t n_heads, int hd,
                                  const int32_t* __restrict__ lens, int mode, double base, double fscale,
                                  const float* __restrict__ ff) {
  __shared__ float sx[256];
  const int64_t row = blockIdx.x;
  const int64_t s = row / (n_q * n_heads), qi = (row / n_heads) % n_q;
  const int i = threadIdx.x;
  float* x = q + row * hd;
  sx[i] = x[i];
  __syncthreads();
  x[i] = rope_elem(sx, i, hd, mode, (double)(lens[s] - n_q + qi), base, fscale, ff);
}

// RAII device buffer for the shift's page table and staging rows.
struct Tmp {
  void* p = nullptr;
  explicit Tmp(size_t n) { check(cudaMalloc(&p, std::max<size_t>(n, 16)), "cudaMalloc(kv_cache)"); }
  ~Tmp() { if (p) cudaFree(p); }
};

void require_dev_kv(const DevKV& kv, const char* kernel) {
  require(kv.pool != nullptr, kernel, "the cache has no pool");
  require(kv.hd >= 32 && kv.hd <= 256 && kv.hd % 32 == 0, kernel,
          "head_dim=" + str(kv.hd) + " must be a multiple of 32 in [32, 256]");
  for (int dt : {kv.k_dtype, kv.v_dtype})
    require(dt == kDtF32 || dt == kDtF16 || dt == kDtQ8, kernel, "unsupported KV dtype id " + str(dt));
}

}  // namespace

void require_rope(const RopeParams& rp, const float* dff, int64_t hd, const char* kernel) {
  require(rp.mode == RopeMode::None || rp.mode == RopeMode::Normal || rp.mode == RopeMode::Neox, kernel,
          "unknown rope mode");
  // The kernels read the factors from dff only: host factors without their device copy (or the
  // reverse) would silently rotate with the wrong angles.
  require((rp.freq_factors != nullptr) == (dff != nullptr), kernel,
          rp.freq_factors ? "rope frequency factors given without their device copy"
                          : "a device copy of rope frequency factors given without the factors");
  require(!rp.freq_factors || rp.n_freq_factors == hd / 2, kernel,
          "rope frequency factors: " + str(rp.n_freq_factors) + " given, expected head_dim / 2 = " + str(hd / 2));
}

namespace {

}  // namespace

DevKV dev_kv(const KVLayout& L, uint8_t* pool) {
  DevKV d;
  d.pool = pool;
  d.n_layers = L.n_layers;
  d.n_kv = L.n_kv_heads;
  d.hd = L.head_dim;
  d.page_size = L.page_size;
  d.k_dtype = (int32_t)L.k_dtype;
  d.v_dtype = (int32_t)L.v_dtype;
  d.n_pages = L.n_pages;
  d.k_row = L.k_row;
  d.v_row = L.v_row;
  d.k_chunk = L.k_chunk;
  d.v_chunk = L.v_chunk;
  d.v_region = L.v_region;
  return d;
}

void paged_rope_qkv_write(float* q, int64_t n_q_heads, const float* k, const float* v, const DevKV& kv, int32_t layer,
                          const int32_t* pt, int64_t n_tok, int64_t pos0, const RopeParams& rp, const float* dff,
                          bool rotate_k, cudaStream_t st, const int64_t* dpos) {
  const char* kn = "kv_write";
  require_dev_kv(kv, kn);
  require_rope(rp, dff, kv.hd, kn);
  require(k && v && pt && (q || n_q_heads == 0), kn, "null buffer");
  require(layer >= 0 && layer < kv.n_layers, kn, "layer=" + str(layer) + " out of range");
  require(n_tok >= 1 && n_q_heads >= 0 && n_q_heads <= 4096 && pos0 >= 0, kn, "bad sizes");
  const int64_t blocks = n_tok * (n_q_heads + kv.n_kv);
  require(blocks <= 0x7fffffff, kn, "too many rows");
  k_paged_rope_qkv_write<<<(unsigned)blocks, kv.hd, 0, st>>>(q, (int)n_q_heads, k, v, kv, layer, pt, pos0, dpos,
                                                             (int)rp.mode, (double)rp.freq_base,
                                                             (double)rp.freq_scale, dff, rotate_k ? 1 : 0);
  check_launch(kn);
}

void kv_copy_page(const DevKV& kv, int32_t src, int32_t dst, cudaStream_t st) {
  const char* kn = "kv_copy_page";
  require(kv.pool != nullptr, kn, "the cache has no pool");
  require(src >= 0 && src < kv.n_pages && dst >= 0 && dst < kv.n_pages, kn, "page out of range");
  k_copy_page<<<dim3((unsigned)(kv.n_layers * kv.n_kv), 2), 256, 0, st>>>(kv, src, dst);
  check_launch(kn);
}

void rope_at_lengths(float* q, int64_t n_seqs, int64_t n_q, int64_t n_heads, int64_t hd, const int32_t* lens,
                     const RopeParams& rp, const float* dff, cudaStream_t st) {
  const char* kn = "rope";
  require_rope(rp, dff, hd, kn);
  require(hd >= 32 && hd <= 256 && hd % 32 == 0, kn, "head_dim must be a multiple of 32 in [32, 256]");
  require(n_seqs >= 1 && n_q >= 1 && n_heads >= 1 && n_seqs * n_q * n_heads <= 0x7fffffff, kn, "bad sizes");
  if (rp.mode == RopeMode::None) return;
  k_rope_at_lengths<<<(unsigned)(n_seqs * n_q * n_heads), (unsigned)hd, 0, st>>>(
      q, n_q, n_heads, (int)hd, lens, (int)rp.mode, (double)rp.freq_base, (double)rp.freq_scale, dff);
  check_launch(kn);
}

// --- storage -------------------------------------------------------------------------------------

CudaKVStorage::~CudaKVStorage() {
  if (pool_) cudaFree(pool_);
  if (ff_) cudaFree(ff_);
}

void CudaKVStorage::upload_freq_factors(const RopeParams& rp, int64_t hd) {
  check_rope_freq_factors(rp, hd, "kv_cache");
  if (!rp.freq_factors || ff_) return;
  const size_t bytes = (size_t)rp.n_freq_factors * 4;
  ff_ = (float*)device_alloc(bytes, "the RoPE frequency factors", "free device memory");
  check(cudaMemcpy(ff_, rp.freq_factors, bytes, cudaMemcpyHostToDevice), "upload rope frequency factors");
}

uint8_t* CudaKVStorage::allocate(const KVLayout& L) {
  pool_ = device_alloc((size_t)std::max<int64_t>(L.pool_bytes(), 16), "the KV cache",
                       "lower n_ctx (or kv_budget_tokens), or use kv_dtype='q8_0' (half the bytes of f16)");
  // Zeroed so that never-written rows (a caller's bug) read as 0, not as garbage NaNs; on the cache's
  // stream, finished before any other stream can touch the pool.
  check(cudaMemsetAsync(pool_, 0, (size_t)L.pool_bytes(), st_), "cudaMemset(kv_cache)");
  check(cudaStreamSynchronize(st_), "cudaMemset(kv_cache)");
  return (uint8_t*)pool_;
}

void CudaKVStorage::copy_page(const KVLayout& L, uint8_t* pool, int32_t src, int32_t dst) {
  kv_copy_page(dev_kv(L, pool), src, dst, st_);
}

void CudaKVStorage::shift_rows(const KVLayout& L, uint8_t* pool, const RopeParams& rp,
                               const std::vector<int32_t>& pages, int64_t keep, int64_t new_len, int64_t d) {
  const char* kn = "kv_shift";
  const DevKV kv = dev_kv(L, pool);
  require_dev_kv(kv, kn);
  require_rope(rp, ff_, L.head_dim, kn);
  const int64_t total = new_len - keep;
  if (total <= 0 || d <= 0) return;
  require(pages.size() * (size_t)L.page_size >= (size_t)(new_len + d), kn, "page table shorter than the sequence");
  Tmp dpt(pages.size() * 4);
  check(cudaMemcpyAsync(dpt.p, pages.data(), pages.size() * 4, cudaMemcpyHostToDevice, st_), kn);
  const int64_t lh = (int64_t)L.n_layers * L.n_kv_heads;
  const int64_t per_tok = lh * (L.k_row + L.v_row);
  // Chunks of up to `chunk` tokens, bounded so the staging buffer stays <= 64 MiB.
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(total, (64ll << 20) / per_tok));
  require(chunk * lh <= 0x7fffffff, kn, "too many rows per chunk");
  Tmp tmp((size_t)(chunk * per_tok));
  const int rotate = rp.mode != RopeMode::None;
  for (int64_t j0 = keep; j0 < new_len; j0 += chunk) {
    const int64_t n = std::min(chunk, new_len - j0);
    k_shift_gather<<<(unsigned)(n * lh), (unsigned)L.head_dim, 0, st_>>>(
        kv, (const int32_t*)dpt.p, j0, d, rotate, (int)rp.mode, (double)rp.freq_base, (double)rp.freq_scale, ff_,
        (uint8_t*)tmp.p, n);
    check_launch("kv_shift_gather");
    k_shift_scatter<<<(unsigned)(n * lh), (unsigned)L.head_dim, 0, st_>>>(kv, (const int32_t*)dpt.p, j0,
                                                                          (const uint8_t*)tmp.p, n);
    check_launch("kv_shift_scatter");
  }
  check(cudaStreamSynchronize(st_), kn);  // before the staging buffers go
}

// --- cache ---------------------------------------------------------------------------------------

namespace {
const KVCacheParams& device_checked(const KVCacheParams& p) {
  // (Values the shared validation rejects anyway are left to it, so its messages come first.)
  const bool cpu_valid_hd = p.head_dim >= 2 && p.head_dim <= 1024 && p.head_dim % 2 == 0;
  if (cpu_valid_hd && (p.head_dim % 32 != 0 || p.head_dim > 256))
    throw std::invalid_argument("[kv_cache] head_dim=" + str(p.head_dim) +
                                " is not supported by the CUDA cache (a multiple of 32, at most 256)");
  // fp32 V rows must stay 4-byte aligned after the K region: Q8_0 K chunks of an odd number of
  // blocks (page_size * head_dim / 32 odd) would shift them by 2 bytes.
  if (p.v_dtype == KVDtype::F32 && p.k_dtype == KVDtype::Q8_0 && (int64_t)p.page_size * (p.head_dim / 32) % 2 == 1)
    throw std::invalid_argument("[kv_cache] f32 V after q8_0 K needs an even page_size * head_dim / 32 on the CUDA "
                                "cache (got page_size=" + str(p.page_size) + ", head_dim=" + str(p.head_dim) + ")");
  return p;
}
}  // namespace

CudaKVCache::CudaKVCache(const KVCacheParams& p, cudaStream_t st)
    : KVPages(device_checked(p), std::make_unique<CudaKVStorage>(st)), st_(st) {
  // The device copy of the (already host-copied, validated) frequency factors, owned by the storage.
  storage_ = &static_cast<CudaKVStorage&>(storage());
  storage_->upload_freq_factors(params().rope, params().head_dim);
}

void CudaKVCache::write(int32_t layer, int32_t seq_id, int64_t pos0, int32_t n, const float* k, const float* v,
                        bool k_rotated) {
  const char* op = "kv_cache.write";
  check_write(layer, seq_id, pos0, n, op);
  if (!k || !v) throw std::invalid_argument(std::string("[") + op + "] null K or V buffer");
  make_writable(seq_id, pos0, n);
  const std::vector<int32_t>& pages = page_table(seq_id);
  Tmp dpt(pages.size() * 4);
  cuda::check(cudaMemcpyAsync(dpt.p, pages.data(), pages.size() * 4, cudaMemcpyHostToDevice, st_), "upload page table");
  paged_rope_qkv_write(nullptr, 0, k, v, dev(), layer, (const int32_t*)dpt.p, n, pos0, params().rope, dev_freq_factors(), !k_rotated,
                       st_);
  cuda::check(cudaStreamSynchronize(st_), "kv_write");
}

}  // namespace xsil::cuda
