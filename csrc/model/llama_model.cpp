#include "model/llama_model.h"

#include <algorithm>
#include <stdexcept>

#include "cpu/attention.h"
#include "cpu/q4_matmul.h"
#include "model/ops.h"

namespace xsil {

namespace {
std::string s(int64_t v) { return std::to_string(v); }

const char* fmt_str(Fmt f) {
  switch (f) {
    case Fmt::F32: return "F32";
    case Fmt::F16: return "F16";
    default: return fmt_info(f) ? fmt_info(f)->name : "?";
  }
}

int64_t expected_bytes(const WeightRef& w) {
  switch (w.fmt) {
    case Fmt::F32: return w.rows * w.cols * 4;
    case Fmt::F16: return w.rows * w.cols * 2;
    default: {
      const FmtInfo* fi = fmt_info(w.fmt);
      if (!fi || w.cols % fi->block_size) return -1;
      return w.rows * (w.cols / fi->block_size) * fi->type_size;
    }
  }
}

void check(const WeightRef& w, const std::string& name, int64_t rows, int64_t cols, bool vector_f32 = false) {
  if (!w.present()) throw std::invalid_argument("[model] tensor " + name + " is missing");
  if (w.rows != rows || w.cols != cols)
    throw std::invalid_argument("[model] tensor " + name + " has shape [" + s(w.rows) + ", " + s(w.cols) +
                                "], expected [" + s(rows) + ", " + s(cols) + "]");
  if (vector_f32 && w.fmt != Fmt::F32)
    throw std::invalid_argument("[model] tensor " + name + " must be F32 (norms and biases), got " + fmt_str(w.fmt));
  const int64_t eb = expected_bytes(w);
  if (eb < 0 || eb != w.nbytes)
    throw std::invalid_argument("[model] tensor " + name + " (" + fmt_str(w.fmt) + ") has " + s(w.nbytes) +
                                " bytes, expected " + s(eb));
}
}  // namespace

LlamaModel::LlamaModel(const LlamaConfig& cfg, WeightRef tok_embd, WeightRef output_norm, WeightRef output,
                       std::vector<LlamaLayer> layers, KVCacheParams kv, Tier tier, int threads)
    : cfg_(cfg), tok_embd_(tok_embd), output_norm_(output_norm), output_(output), layers_(std::move(layers)),
      tier_(tier), threads_(threads) {
  const auto& c = cfg_;
  if (c.n_embd <= 0 || c.n_layer <= 0 || c.n_head <= 0 || c.n_head_kv <= 0 || c.head_dim <= 0 || c.n_ff <= 0 ||
      c.n_vocab <= 0)
    throw std::invalid_argument("[model] every dimension of the config must be positive");
  if (c.n_head % c.n_head_kv)
    throw std::invalid_argument("[model] n_head=" + s(c.n_head) + " is not a multiple of n_head_kv=" + s(c.n_head_kv));
  if ((int64_t)layers_.size() != c.n_layer)
    throw std::invalid_argument("[model] " + s((int64_t)layers_.size()) + " layers given, config says " + s(c.n_layer));
  const int64_t qd = c.n_head * c.head_dim, kd = c.n_head_kv * c.head_dim;
  check(tok_embd_, "token_embd.weight", c.n_vocab, c.n_embd);
  check(output_norm_, "output_norm.weight", 1, c.n_embd, true);
  check(output_, "output.weight", c.n_vocab, c.n_embd);
  for (int64_t i = 0; i < c.n_layer; ++i) {
    const LlamaLayer& L = layers_[i];
    const std::string b = "blk." + s(i) + ".";
    check(L.attn_norm, b + "attn_norm.weight", 1, c.n_embd, true);
    check(L.wq, b + "attn_q.weight", qd, c.n_embd);
    check(L.wk, b + "attn_k.weight", kd, c.n_embd);
    check(L.wv, b + "attn_v.weight", kd, c.n_embd);
    check(L.wo, b + "attn_output.weight", c.n_embd, qd);
    if (L.bq.present()) check(L.bq, b + "attn_q.bias", 1, qd, true);
    if (L.bk.present()) check(L.bk, b + "attn_k.bias", 1, kd, true);
    if (L.bv.present()) check(L.bv, b + "attn_v.bias", 1, kd, true);
    if (c.qk_norm) {
      check(L.q_norm, b + "attn_q_norm.weight", 1, c.head_dim, true);
      check(L.k_norm, b + "attn_k_norm.weight", 1, c.head_dim, true);
    } else if (L.q_norm.present() || L.k_norm.present()) {
      throw std::invalid_argument("[model] tensor " + b + "attn_q_norm/attn_k_norm given but the config has no qk_norm");
    }
    check(L.ffn_norm, b + "ffn_norm.weight", 1, c.n_embd, true);
    check(L.w_gate, b + "ffn_gate.weight", c.n_ff, c.n_embd);
    check(L.w_up, b + "ffn_up.weight", c.n_ff, c.n_embd);
    check(L.w_down, b + "ffn_down.weight", c.n_embd, c.n_ff);
  }
  kv.n_layers = (int32_t)c.n_layer;
  kv.n_kv_heads = (int32_t)c.n_head_kv;
  kv.head_dim = (int32_t)c.head_dim;
  check_rope_freq_factors(c.rope, c.head_dim, "model");
  kv.rope = c.rope;
  cache_ = std::make_unique<KVCache>(kv);
  // The cache holds its own copy of the frequency factors: point the config at it, so the model
  // never reads the caller's array after construction.
  cfg_.rope = cache_->params().rope;
}

int64_t LlamaModel::weight_bytes_per_token() const {
  int64_t b = output_.nbytes;
  for (const auto& L : layers_)
    b += L.wq.nbytes + L.wk.nbytes + L.wv.nbytes + L.wo.nbytes + L.w_gate.nbytes + L.w_up.nbytes + L.w_down.nbytes;
  return b;
}

void LlamaModel::set_exact(bool e) {
  if (e) {
    auto packed = [](const WeightRef& w) { return w.packed; };
    bool any = packed(output_);
    for (const auto& L : layers_)
      any = any || packed(L.wq) || packed(L.wk) || packed(L.wv) || packed(L.wo) || packed(L.w_gate) ||
            packed(L.w_up) || packed(L.w_down);
    if (any) throw std::invalid_argument("[model] exact mode reads GGUF rows; load the model with pack=False");
  }
  exact_ = e;
}

void LlamaModel::ensure_scratch(int64_t n) {
  if (n <= cap_) return;
  const auto& c = cfg_;
  x_.resize(n * c.n_embd);
  h_.resize(n * c.n_embd);
  q_.resize(n * c.n_head * c.head_dim);
  k_.resize(n * c.n_head_kv * c.head_dim);
  v_.resize(n * c.n_head_kv * c.head_dim);
  att_.resize(n * c.n_head * c.head_dim);
  g_.resize(n * c.n_ff);
  u_.resize(n * c.n_ff);
  cap_ = n;
}

void LlamaModel::linear(const WeightRef& w, const float* x, float* y, int64_t M) {
  if (w.fmt == Fmt::F32 || w.fmt == Fmt::F16) {
    ops::matmul_dense(x, w.data, w.fmt, y, M, w.rows, w.cols, threads_);
    return;
  }
  MatmulParams p;
  p.x = x;
  p.ldx = w.cols;
  p.w = w.data;
  p.w_packed = w.packed;
  p.y = y;
  p.ldy = w.rows;
  p.M = M;
  p.N = w.rows;
  p.K = w.cols;
  p.fmt = w.fmt;
  matmul(p, matmul_kernels(w.packed ? w.tier : tier_), threads_, exact_);
}

void LlamaModel::forward(const int32_t* tokens, int64_t n, int32_t seq, float* logits, bool all_logits) {
  const auto& c = cfg_;
  if (n <= 0) throw std::invalid_argument("[forward] no tokens");
  for (int64_t i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= c.n_vocab)
      throw std::invalid_argument("[forward] token id " + s(tokens[i]) + " at index " + s(i) +
                                  " is out of range [0, " + s(c.n_vocab) + ")");
  cache_->require_seq(seq, "forward");
  const int64_t pos0 = cache_->reserve(seq, n);  // throws before anything is written
  ensure_scratch(n);
  const int64_t E = c.n_embd, qd = c.n_head * c.head_dim, kd = c.n_head_kv * c.head_dim;
  float* x = x_.data();
  float* h = h_.data();
  for (int64_t t = 0; t < n; ++t) ops::get_row(tok_embd_.data, tok_embd_.fmt, E, tokens[t], x + t * E);
  const AttentionKernels& ak = attention_kernels(tier_);
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const LlamaLayer& L = layers_[l];
    ops::rms_norm(x, (const float*)L.attn_norm.data, h, n, E, c.rms_eps, threads_);
    linear(L.wq, h, q_.data(), n);
    linear(L.wk, h, k_.data(), n);
    linear(L.wv, h, v_.data(), n);
    if (L.bq.present()) ops::add_bias(q_.data(), (const float*)L.bq.data, n, qd);
    if (L.bk.present()) ops::add_bias(k_.data(), (const float*)L.bk.data, n, kd);
    if (L.bv.present()) ops::add_bias(v_.data(), (const float*)L.bv.data, n, kd);
    if (c.qk_norm) {  // per-head RMSNorm (rows = tokens x heads of head_dim), in place, before RoPE
      ops::rms_norm(q_.data(), (const float*)L.q_norm.data, q_.data(), n * c.n_head, c.head_dim, c.rms_eps,
                    threads_);
      ops::rms_norm(k_.data(), (const float*)L.k_norm.data, k_.data(), n * c.n_head_kv, c.head_dim, c.rms_eps,
                    threads_);
    }
    KVWriteParams w;
    w.layer = (int32_t)l;
    w.seq_id = seq;
    w.pos0 = pos0;
    w.n_tokens = (int32_t)n;
    w.k = k_.data();
    w.v = v_.data();
    cache_->write(w);
    if (n == 1) {
      AttnDecodeParams a;
      a.cache = cache_.get();
      a.layer = (int32_t)l;
      a.n_seqs = 1;
      a.seq_ids = &seq;
      a.n_heads = (int32_t)c.n_head;
      a.q = q_.data();
      a.out = att_.data();
      attention_decode(a, ak, threads_);
    } else {
      AttnPrefillParams a;
      a.cache = cache_.get();
      a.layer = (int32_t)l;
      a.seq_id = seq;
      a.n_q = (int32_t)n;
      a.n_heads = (int32_t)c.n_head;
      a.q = q_.data();
      a.out = att_.data();
      attention_prefill(a, ak, threads_);
    }
    linear(L.wo, att_.data(), h, n);
    ops::add_inplace(x, h, n * E);
    ops::rms_norm(x, (const float*)L.ffn_norm.data, h, n, E, c.rms_eps, threads_);
    linear(L.w_gate, h, g_.data(), n);
    linear(L.w_up, h, u_.data(), n);
    ops::swiglu(g_.data(), u_.data(), n, c.n_ff, threads_);
    linear(L.w_down, g_.data(), h, n);
    ops::add_inplace(x, h, n * E);
  }
  if (all_logits) {
    ops::rms_norm(x, (const float*)output_norm_.data, h, n, E, c.rms_eps, threads_);
    linear(output_, h, logits, n);
  } else {
    ops::rms_norm(x + (n - 1) * E, (const float*)output_norm_.data, h, 1, E, c.rms_eps, threads_);
    linear(output_, h, logits, 1);
  }
}

}  // namespace xsil
