// Llama-family decoder forward on one CUDA device: mirrors xsil::LlamaModel::forward (csrc/model)
// op for op, with every weight uploaded once (plain cudaMalloc) and every activation device-resident.
// KV cache: the paged device cache (cuda/kv_cache.h; f16 or Q8_0 rows), one sequence per session.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cuda/kv_cache.h"
// clang-format off
#include <cuda_runtime.h>
#include "cuda/kernels.h"
// clang-format on

namespace xsil::cuda {

struct HostWeight {
  const void* data = nullptr;  // host bytes in GGUF layout
  Fmt fmt = Fmt::F32;
  int64_t rows = 0, cols = 0, nbytes = 0;
  bool present() const { return data != nullptr; }
};

struct HostLayer {
  HostWeight attn_norm, wq, wk, wv, wo, bq, bk, bv, ffn_norm, w_gate, w_up, w_down;
  HostWeight q_norm, k_norm;  // per-head RMSNorm weights [head_dim] (qwen3: required when cfg.qk_norm)
};

struct CudaLlamaConfig {
  int64_t n_embd = 0, n_layer = 0, n_head = 0, n_head_kv = 0, head_dim = 0, n_ff = 0, n_vocab = 0;
  float rms_eps = 1e-5f;
  RopeParams rope;
  bool qk_norm = false;  // qwen3: q and k RMS-normalized per head (over head_dim) before RoPE
};

// KV cache of a CudaLlama: n_ctx tokens per sequence, a pool of budget_tokens (0 = n_ctx) rounded
// up to whole pages.
struct CudaKVOptions {
  KVDtype dtype = KVDtype::F16;  // K and V rows: F16 or Q8_0 (F32 accepted)
  int32_t page_size = 16;
  int64_t budget_tokens = 0;
  // decode split-K: tokens per split before another split is used (then max_splits from n_ctx);
  // 0 = paged_decode_plan: 64 tokens per split, splits up to ~2 CTAs per SM (SM count queried once)
  int32_t split_tokens = 0;
};

class CudaLlama {
 public:
  CudaLlama(const CudaLlamaConfig& cfg, const HostWeight& tok_embd, const HostWeight& output_norm,
            const HostWeight& output, const std::vector<HostLayer>& layers, int64_t n_ctx, int device,
            const CudaKVOptions& kv = {});
  ~CudaLlama();
  CudaLlama(const CudaLlama&) = delete;
  CudaLlama& operator=(const CudaLlama&) = delete;

  // Appends n tokens at position n_past (throws the KV cache's invalid_argument "[kv_cache] ... past
  // n_ctx ..." / "... exhausted ..." when they do not fit, changing nothing) and writes logits to
  // host memory: [n, n_vocab] if all_logits else [n_vocab].
  void forward(const int32_t* tokens, int64_t n, float* host_logits, bool all_logits);
  int64_t n_past() const { return cache_->length(seq_); }
  int64_t n_ctx() const { return n_ctx_; }
  void reset() { cache_->truncate(seq_, 0); }
  // Keeps the first n positions (for speculative callers); n <= n_past.
  void truncate(int64_t n);
  const CudaKVCache& cache() const { return *cache_; }
  int64_t weight_bytes() const { return weight_bytes_; }
  int64_t kv_bytes() const { return kv_bytes_; }
  int device() const { return device_; }
  // Decode (one token) replays a CUDA graph of the whole forward captured at the first decode
  // (positions are read from device memory); default on, XSIL_CUDA_GRAPHS=0 or this turns it off.
  void set_graphs(bool on);
  bool graphs() const { return graphs_; }
  const CudaLlamaConfig& config() const { return cfg_; }

 private:
  struct DevLayer {
    DevMatrix wq, wk, wv, wo, w_gate, w_up, w_down;
    // Q|K|V and gate|up stacked into one matrix each at upload (when their formats agree): one
    // launch instead of three / two, and enough rows to fill the GPU for the small K/V matrices.
    DevMatrix wqkv, wgu;
    bool qkv_fused = false, gu_fused = false;
    const float *attn_norm = nullptr, *ffn_norm = nullptr, *bq = nullptr, *bk = nullptr, *bv = nullptr;
    const float *q_norm = nullptr, *k_norm = nullptr;  // [head_dim] (qk_norm)
  };
  void* dalloc(size_t bytes);
  DevMatrix upload_matrix(const HostWeight& w, const std::string& name, int64_t rows, int64_t cols);
  // Rows of several matrices (same format and cols) stacked into one device matrix.
  DevMatrix upload_stacked(const std::vector<const HostWeight*>& ws, const std::vector<std::string>& names,
                           const std::vector<int64_t>& rows, int64_t cols);
  const float* upload_vec(const HostWeight& w, const std::string& name, int64_t n);
  void ensure_scratch(int64_t n);
  void linear(const DevMatrix& w, const float* x, bool xq_ready, float* y, int64_t M);
  void free_scratch();
  void linear_prep(const DevMatrix& w, const float* x, int64_t M);  // quantize x unless xq_ holds it
  // forward() after the cache reserved positions [pos0, pos0 + n)
  void forward_at(const int32_t* tokens, int64_t pos0, int64_t n, float* host_logits, bool all_logits);
  void run_layers(int64_t n, int64_t pos0, bool all_logits, const int64_t* dpos);
  void drop_graph();

  CudaLlamaConfig cfg_;
  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  std::vector<void*> allocs_;
  const void* tok_embd_ = nullptr;
  Fmt tok_fmt_ = Fmt::F32;
  const float* output_norm_ = nullptr;
  DevMatrix output_;
  std::vector<DevLayer> layers_;
  int64_t n_ctx_ = 0;
  CudaKVOptions kvo_;
  std::unique_ptr<CudaKVCache> cache_;
  int32_t seq_ = 0;
  int64_t max_pages_ = 0;              // page-table entries of one sequence (n_ctx / page_size, rounded up)
  int32_t max_splits_ = 1;             // decode split-K launch shape (fixed for the graph)
  int32_t* d_pt_ = nullptr;            // device page table [max_pages_] and length [1] (d_pt_ + max_pages_)
  int32_t* h_pt_ = nullptr;            // pinned host staging of the same
  float* work_ = nullptr;              // split-K partials
  int64_t weight_bytes_ = 0, kv_bytes_ = 0;
  // scratch (grown on demand)
  int64_t cap_ = 0;
  std::vector<void*> scratch_;
  int32_t* tok_ = nullptr;
  float *x_ = nullptr, *h_ = nullptr, *q_ = nullptr, *k_ = nullptr, *v_ = nullptr, *att_ = nullptr, *g_ = nullptr,
        *u_ = nullptr, *logits_ = nullptr;
  float *qn_ = nullptr, *kn_ = nullptr;  // per-head normalized q / k (qk_norm only; RoPE runs on these)
  DevQ8a xq_;
  int64_t xq_k_ = 0;  // K of the activations currently quantized in xq_ (0: none)
  bool graphs_ = true;
  int64_t* dpos_ = nullptr;            // device copy of pos0 for graph replays
  int64_t* hpos_ = nullptr;            // pinned host staging of pos0
  void upload_pages();                 // page table + length of seq_ -> d_pt_ (async, on stream_)
  cudaGraphExec_t graph_ = nullptr;     // decode graph (n = 1, last logits), tied to the scratch buffers
};

}  // namespace xsil::cuda
