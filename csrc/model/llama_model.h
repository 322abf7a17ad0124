// Llama-family decoder forward (llama, qwen2, qwen3) run entirely in the core: one call per chunk of
// tokens does every layer (norms, block-quantized matmuls, RoPE + paged KV cache, attention,
// SwiGLU) without returning to Python.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cpu/dispatch.h"
#include "cpu/kv_cache.h"
#include "xsil/params.h"

namespace xsil {

// A weight tensor the model reads in place (a view of the GGUF mapping, or packed weights).
struct WeightRef {
  const void* data = nullptr;  // rows x cols in fmt (GGUF rows), or the tier's packed layout
  Fmt fmt = Fmt::F32;          // F32, F16 or a block format (fmt_info)
  int64_t rows = 0, cols = 0;  // NumPy shape: rows of cols elements (a 1-D tensor has rows = 1)
  int64_t nbytes = 0;          // size of data
  bool packed = false;         // data is in tier's packed layout
  Tier tier = Tier::Ref;       // the tier that packed it (when packed)
  bool present() const { return data != nullptr; }
};

struct LlamaLayer {
  WeightRef attn_norm, wq, wk, wv, wo, bq, bk, bv, ffn_norm, w_gate, w_up, w_down;
  WeightRef q_norm, k_norm;  // per-head RMSNorm weights [head_dim] (qwen3; required when cfg.qk_norm)
};

struct LlamaConfig {
  int64_t n_embd = 0, n_layer = 0, n_head = 0, n_head_kv = 0, head_dim = 0, n_ff = 0, n_vocab = 0;
  float rms_eps = 1e-5f;
  RopeParams rope;            // mode (normal for llama, neox for qwen2/qwen3), base, linear scale,
                              // optional per-pair frequency factors (copied by the constructor)
  // qwen3: q and k are RMS-normalized per head (over head_dim, weights q_norm / k_norm, eps rms_eps)
  // after the projections and before RoPE. head_dim need not be n_embd / n_head.
  bool qk_norm = false;
};

class LlamaModel {
 public:
  // Validates every tensor's shape and format against cfg (throws invalid_argument naming the
  // tensor) and creates the KV cache from kv (n_layers/n_kv_heads/head_dim/rope are taken from cfg).
  LlamaModel(const LlamaConfig& cfg, WeightRef tok_embd, WeightRef output_norm, WeightRef output,
             std::vector<LlamaLayer> layers, KVCacheParams kv, Tier tier, int threads);

  // Appends n tokens to sequence seq (reserving KV space first: throws KVBudgetError, changing
  // nothing, when the budget is exhausted) and writes logits: [n, n_vocab] if all_logits, else the
  // last position's [n_vocab]. tokens are checked against n_vocab.
  void forward(const int32_t* tokens, int64_t n, int32_t seq, float* logits, bool all_logits);

  KVCache& cache() { return *cache_; }
  const LlamaConfig& config() const { return cfg_; }
  Tier tier() const { return tier_; }
  int threads() const { return threads_; }
  void set_threads(int t) { threads_ = t; }
  // exact: block-quantized matmuls dequantize to fp32 instead of the int8-activation fast path
  // (slow; for checking the forward against a float reference). Packed weights are not allowed then.
  void set_exact(bool e);
  bool exact() const { return exact_; }
  // Bytes of weights read per decoded token (every matmul weight + the output matrix).
  int64_t weight_bytes_per_token() const;

 private:
  void linear(const WeightRef& w, const float* x, float* y, int64_t M);
  void ensure_scratch(int64_t n);

  LlamaConfig cfg_;
  WeightRef tok_embd_, output_norm_, output_;
  std::vector<LlamaLayer> layers_;
  std::unique_ptr<KVCache> cache_;
  Tier tier_;
  int threads_;
  bool exact_ = false;
  int64_t cap_ = 0;
  std::vector<float> x_, h_, q_, k_, v_, att_, g_, u_;
};

}  // namespace xsil
