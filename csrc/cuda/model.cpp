#include "cuda/model.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <stdexcept>

namespace xsil::cuda {

namespace {
std::string s(int64_t v) { return std::to_string(v); }
bool is_quant(Fmt f) { return cuda_block_quant(f); }

// GGUF bytes of a rows x cols tensor of type f; -1 for a type the CUDA backend does not take or a row
// length that is not a whole number of blocks.
int64_t gguf_bytes(Fmt f, int64_t rows, int64_t cols) {
  if (f == Fmt::F32) return rows * cols * 4;
  if (f == Fmt::F16) return rows * cols * 2;
  const FmtInfo* fi = fmt_info(f);
  if (!fi || !cuda_supports(f) || cols % fi->block_size) return -1;
  return rows * (cols / fi->block_size) * fi->type_size;
}

void check_weight(const HostWeight& w, const std::string& name, int64_t rows, int64_t cols) {
  if (!w.present()) throw std::invalid_argument("[model] tensor " + name + " is missing");
  if (w.rows != rows || w.cols != cols)
    throw std::invalid_argument("[model] tensor " + name + " has shape [" + s(w.rows) + ", " + s(w.cols) +
                                "], expected [" + s(rows) + ", " + s(cols) + "]");
  const int64_t eb = gguf_bytes(w.fmt, rows, cols);
  if (eb < 0) {
    const FmtInfo* fi = fmt_info(w.fmt);
    if (cuda_supports(w.fmt) && fi)
      throw std::invalid_argument("[model] tensor " + name + ": " + fi->name + " needs a row length that is a multiple of " +
                                  s(fi->block_size));
    throw std::invalid_argument("[model] tensor " + name + ": weight type " + cuda_fmt_name(w.fmt) +
                                " not supported by the CUDA backend (supported: " + kCudaTypeList + ")");
  }
  if (eb != w.nbytes)
    throw std::invalid_argument("[model] tensor " + name + " has " + s(w.nbytes) + " bytes, expected " + s(eb));
}
}  // namespace

void* CudaLlama::dalloc(size_t bytes) {
  void* p = nullptr;
  p = device_alloc(bytes, "the model",
                   "the weights (and scratch) do not fit on this GPU: use a smaller or more quantized model, or "
                   "another backend");
  allocs_.push_back(p);
  return p;
}

DevMatrix CudaLlama::upload_matrix(const HostWeight& w, const std::string& name, int64_t rows, int64_t cols) {
  check_weight(w, name, rows, cols);
  DevMatrix m;
  m.fmt = w.fmt;
  m.N = rows;
  m.K = cols;
  size_t qb = 0, db = 0;
  dev_matrix_sizes(w.fmt, rows, cols, &qb, &db);
  void* qs = dalloc(qb);
  if (is_quant(w.fmt)) {
    std::vector<uint8_t> hq(qb);
    std::vector<uint16_t> hd(db / 2);
    repack_host(w.fmt, w.data, rows, cols, hq.data(), hd.data());
    uint16_t* d = (uint16_t*)dalloc(db);
    check(cudaMemcpy(qs, hq.data(), qb, cudaMemcpyHostToDevice), "upload");
    check(cudaMemcpy(d, hd.data(), db, cudaMemcpyHostToDevice), "upload");
    m.d = d;
  } else {
    check(cudaMemcpy(qs, w.data, qb, cudaMemcpyHostToDevice), "upload");
  }
  m.qs = qs;
  weight_bytes_ += (int64_t)(qb + db);
  return m;
}

DevMatrix CudaLlama::upload_stacked(const std::vector<const HostWeight*>& ws, const std::vector<std::string>& names,
                                    const std::vector<int64_t>& rows, int64_t cols) {
  int64_t N = 0;
  for (size_t i = 0; i < ws.size(); ++i) {
    check_weight(*ws[i], names[i], rows[i], cols);
    N += rows[i];
  }
  const Fmt f = ws[0]->fmt;
  DevMatrix m;
  m.fmt = f;
  m.N = N;
  m.K = cols;
  size_t qb = 0, db = 0;
  dev_matrix_sizes(f, N, cols, &qb, &db);
  std::vector<uint8_t> hq(qb);
  std::vector<uint16_t> hd(db / 2 + 1);
  size_t oq = 0, od = 0;
  for (size_t i = 0; i < ws.size(); ++i) {
    size_t q1 = 0, d1 = 0;
    dev_matrix_sizes(f, rows[i], cols, &q1, &d1);
    repack_host(f, ws[i]->data, rows[i], cols, hq.data() + oq, hd.data() + od / 2);
    oq += q1;
    od += d1;
  }
  void* qs = dalloc(qb);
  check(cudaMemcpy(qs, hq.data(), qb, cudaMemcpyHostToDevice), "upload");
  m.qs = qs;
  if (db) {
    uint16_t* d = (uint16_t*)dalloc(db);
    check(cudaMemcpy(d, hd.data(), db, cudaMemcpyHostToDevice), "upload");
    m.d = d;
  }
  weight_bytes_ += (int64_t)(qb + db);
  return m;
}

const float* CudaLlama::upload_vec(const HostWeight& w, const std::string& name, int64_t n) {
  check_weight(w, name, 1, n);
  if (w.fmt != Fmt::F32) throw std::invalid_argument("[model] tensor " + name + " must be F32 (norms and biases)");
  float* p = (float*)dalloc(n * 4);
  check(cudaMemcpy(p, w.data, n * 4, cudaMemcpyHostToDevice), "upload");
  weight_bytes_ += n * 4;
  return p;
}

CudaLlama::CudaLlama(const CudaLlamaConfig& cfg, const HostWeight& tok_embd, const HostWeight& output_norm,
                     const HostWeight& output, const std::vector<HostLayer>& layers, int64_t n_ctx, int device,
                     const CudaKVOptions& kv)
    : cfg_(cfg), device_(device), n_ctx_(n_ctx), kvo_(kv) {
  const auto& c = cfg_;
  if (c.n_embd <= 0 || c.n_layer <= 0 || c.n_head <= 0 || c.n_head_kv <= 0 || c.head_dim <= 0 || c.n_ff <= 0 ||
      c.n_vocab <= 0)
    throw std::invalid_argument("[model] every dimension of the config must be positive");
  if (c.n_head % c.n_head_kv)
    throw std::invalid_argument("[model] n_head=" + s(c.n_head) + " is not a multiple of n_head_kv=" + s(c.n_head_kv));
  if (c.head_dim % 32 || c.head_dim > 256)
    throw std::invalid_argument("[model] head_dim=" + s(c.head_dim) + " unsupported by the CUDA attention (a multiple of 32, <= 256)");
  check_rope_freq_factors(c.rope, c.head_dim, "model");
  if ((int64_t)layers.size() != c.n_layer) throw std::invalid_argument("[model] layer count does not match the config");
  if (n_ctx < 1 || n_ctx > INT32_MAX / 2) throw std::invalid_argument("[model] n_ctx must be in [1, 2^30)");
  if (kv.budget_tokens < 0) throw std::invalid_argument("[model] the KV budget must not be negative");
  if (kv.split_tokens < 0) throw std::invalid_argument("[model] split_tokens must be >= 0 (0 = from the SM count)");
  int count = 0;
  check(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
  if (device < 0 || device >= count)
    throw std::invalid_argument("[model] device " + s(device) + " out of range (" + s(count) + " CUDA devices)");
  check(cudaSetDevice(device), "cudaSetDevice");
  check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  if (const char* e = std::getenv("XSIL_CUDA_GRAPHS")) graphs_ = std::string(e) != "0";
  try {
    dpos_ = (int64_t*)dalloc(sizeof(int64_t));
    check(cudaMallocHost(&hpos_, sizeof(int64_t)), "cudaMallocHost");
    const int64_t qd = c.n_head * c.head_dim, kd = c.n_head_kv * c.head_dim, E = c.n_embd;
    check_weight(tok_embd, "token_embd.weight", c.n_vocab, E);
    {
      void* p = dalloc(tok_embd.nbytes);
      check(cudaMemcpy(p, tok_embd.data, tok_embd.nbytes, cudaMemcpyHostToDevice), "upload");
      tok_embd_ = p;
      tok_fmt_ = tok_embd.fmt;
      weight_bytes_ += tok_embd.nbytes;
    }
    output_norm_ = upload_vec(output_norm, "output_norm.weight", E);
    output_ = upload_matrix(output.present() ? output : tok_embd, "output.weight", c.n_vocab, E);
    layers_.resize(c.n_layer);
    for (int64_t i = 0; i < c.n_layer; ++i) {
      const HostLayer& L = layers[i];
      DevLayer& D = layers_[i];
      const std::string b = "blk." + s(i) + ".";
      D.attn_norm = upload_vec(L.attn_norm, b + "attn_norm.weight", E);
      if (L.wq.fmt == L.wk.fmt && L.wq.fmt == L.wv.fmt) {
        D.wqkv = upload_stacked({&L.wq, &L.wk, &L.wv}, {b + "attn_q.weight", b + "attn_k.weight", b + "attn_v.weight"},
                                {qd, kd, kd}, E);
        D.qkv_fused = true;
      } else {
        D.wq = upload_matrix(L.wq, b + "attn_q.weight", qd, E);
        D.wk = upload_matrix(L.wk, b + "attn_k.weight", kd, E);
        D.wv = upload_matrix(L.wv, b + "attn_v.weight", kd, E);
      }
      D.wo = upload_matrix(L.wo, b + "attn_output.weight", E, qd);
      if (L.bq.present()) D.bq = upload_vec(L.bq, b + "attn_q.bias", qd);
      if (L.bk.present()) D.bk = upload_vec(L.bk, b + "attn_k.bias", kd);
      if (L.bv.present()) D.bv = upload_vec(L.bv, b + "attn_v.bias", kd);
      if (!c.qk_norm && (L.q_norm.present() || L.k_norm.present()))
        throw std::invalid_argument("[model] tensor " + b + "attn_q_norm/attn_k_norm given but the config has no qk_norm");
      if (c.qk_norm) {
        D.q_norm = upload_vec(L.q_norm, b + "attn_q_norm.weight", c.head_dim);
        D.k_norm = upload_vec(L.k_norm, b + "attn_k_norm.weight", c.head_dim);
      }
      D.ffn_norm = upload_vec(L.ffn_norm, b + "ffn_norm.weight", E);
      if (L.w_gate.fmt == L.w_up.fmt) {
        D.wgu = upload_stacked({&L.w_gate, &L.w_up}, {b + "ffn_gate.weight", b + "ffn_up.weight"}, {c.n_ff, c.n_ff}, E);
        D.gu_fused = true;
      } else {
        D.w_gate = upload_matrix(L.w_gate, b + "ffn_gate.weight", c.n_ff, E);
        D.w_up = upload_matrix(L.w_up, b + "ffn_up.weight", c.n_ff, E);
      }
      D.w_down = upload_matrix(L.w_down, b + "ffn_down.weight", E, c.n_ff);
    }
    // The paged KV cache: one sequence, n_ctx tokens, a pool of the budget rounded up to pages.
    KVCacheParams kp;
    kp.n_layers = (int32_t)c.n_layer;
    kp.n_kv_heads = (int32_t)c.n_head_kv;
    kp.head_dim = (int32_t)c.head_dim;
    kp.page_size = kv.page_size;
    kp.k_dtype = kp.v_dtype = kv.dtype;
    if (kv.page_size >= 1) {
      const int64_t want = kv.budget_tokens > 0 ? kv.budget_tokens : n_ctx;
      kp.budget_tokens = (want + kv.page_size - 1) / kv.page_size * kv.page_size;
    }
    kp.n_ctx = n_ctx;
    kp.rope = c.rope;
    cache_ = std::make_unique<CudaKVCache>(kp, stream_);  // validates page_size and dtype
    cfg_.rope = cache_->params().rope;  // frequency factors: the cache's copies (host and device)
    seq_ = cache_->add_sequence();
    kv_bytes_ = cache_->stats().pool_bytes;
    max_pages_ = (n_ctx + kv.page_size - 1) / kv.page_size;
    if (kv.split_tokens > 0) {
      max_splits_ = paged_max_splits(n_ctx, kv.split_tokens);
    } else {  // the default plan from the SM count, queried once here (not per step)
      cudaDeviceProp prop;
      check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
      const DecodeSplitPlan plan = paged_decode_plan(n_ctx, c.n_head_kv, 1, prop.multiProcessorCount);
      kvo_.split_tokens = plan.split_tokens;
      max_splits_ = plan.max_splits;
    }
    d_pt_ = (int32_t*)dalloc((size_t)(max_pages_ + 1) * 4);
    check(cudaMallocHost(&h_pt_, (size_t)(max_pages_ + 1) * 4), "cudaMallocHost");
    work_ = (float*)dalloc((size_t)paged_decode_work_floats(1, c.n_head, c.head_dim, max_splits_) * 4);
    // First use of the tensor-core prefill GEMM for each weight format: checked against the dp4a
    // GEMM once per process and format; a mismatch switches it off for that format (mma_status() says why).
    for (const DevLayer& D : layers_)
      for (const DevMatrix* m : {&D.wq, &D.wk, &D.wv, &D.wo, &D.w_gate, &D.w_up, &D.w_down, &D.wqkv, &D.wgu})
        if (m->qs) mma_self_check(m->fmt, stream_);
    mma_self_check(output_.fmt, stream_);
  } catch (...) {
    for (void* p : allocs_) cudaFree(p);
    allocs_.clear();
    if (hpos_) cudaFreeHost(hpos_);
    if (h_pt_) cudaFreeHost(h_pt_);
    cache_.reset();
    cudaStreamDestroy(stream_);
    throw;
  }
}

void CudaLlama::drop_graph() {
  if (graph_) cudaGraphExecDestroy(graph_);
  graph_ = nullptr;
}

void CudaLlama::set_graphs(bool on) {
  if (!on) drop_graph();
  graphs_ = on;
}

void CudaLlama::free_scratch() {
  drop_graph();  // the graph holds the scratch pointers
  for (void* p : scratch_) cudaFree(p);
  scratch_.clear();
  cap_ = 0;
}

CudaLlama::~CudaLlama() {
  cudaSetDevice(device_);
  free_scratch();
  for (void* p : allocs_) cudaFree(p);
  if (hpos_) cudaFreeHost(hpos_);
  if (h_pt_) cudaFreeHost(h_pt_);
  cache_.reset();
  if (stream_) cudaStreamDestroy(stream_);
}

void CudaLlama::ensure_scratch(int64_t n) {
  if (n <= cap_) return;
  free_scratch();
  const auto& c = cfg_;
  const int64_t qd = c.n_head * c.head_dim, kd = c.n_head_kv * c.head_dim;
  const int64_t kmax = std::max({c.n_embd, qd, c.n_ff});
  auto a = [&](size_t bytes) {
    void* p = nullptr;
    check(cudaMalloc(&p, std::max<size_t>(bytes, 16)), "cudaMalloc(scratch)");
    scratch_.push_back(p);
    return p;
  };
  tok_ = (int32_t*)a(n * 4);
  x_ = (float*)a(n * c.n_embd * 4);
  h_ = (float*)a(n * c.n_embd * 4);
  q_ = (float*)a(n * qd * 4);
  k_ = (float*)a(n * kd * 4);
  v_ = (float*)a(n * kd * 4);
  att_ = (float*)a(n * qd * 4);
  g_ = (float*)a(n * c.n_ff * 4);
  u_ = (float*)a(n * c.n_ff * 4);
  logits_ = (float*)a(n * c.n_vocab * 4);
  if (c.qk_norm) {
    qn_ = (float*)a(n * qd * 4);
    kn_ = (float*)a(n * kd * 4);
  }
  xq_.qs = (int8_t*)a(n * kmax);
  xq_.d = (float*)a(n * (kmax / 32) * 4 + 16);
  xq_.s = (float*)a(n * (kmax / 32) * 4 + 16);
  cap_ = n;
}

// y = x . W^T. For block-quantized W the activations are quantized once per distinct input: callers
// pass xq_ready = true for the 2nd/3rd matmul reading the same x (K/V after Q, up after gate).
void CudaLlama::linear_prep(const DevMatrix& w, const float* x, int64_t M) {
  if (xq_k_ != w.K) {
    quantize_q8a(x, xq_, M, w.K, stream_);
    xq_k_ = w.K;
  }
}

void CudaLlama::linear(const DevMatrix& w, const float* x, bool xq_ready, float* y, int64_t M) {
  if (!xq_ready) xq_k_ = 0;
  if (is_quant(w.fmt) && xq_k_ != w.K) {
    quantize_q8a(x, xq_, M, w.K, stream_);
    xq_k_ = w.K;
  }
  matmul(w, x, xq_, y, M, stream_);
}

void CudaLlama::truncate(int64_t n) {
  if (n < 0 || n > n_past()) throw std::invalid_argument("[model] truncate: n out of range");
  cache_->truncate(seq_, n);
}

void CudaLlama::upload_pages() {
  const std::vector<int32_t>& pt = cache_->page_table(seq_);
  if ((int64_t)pt.size() > max_pages_) throw std::logic_error("[model] page table longer than n_ctx");
  std::copy(pt.begin(), pt.end(), h_pt_);
  h_pt_[max_pages_] = (int32_t)cache_->length(seq_);
  check(cudaMemcpyAsync(d_pt_, h_pt_, (size_t)(max_pages_ + 1) * 4, cudaMemcpyHostToDevice, stream_),
        "upload page table");
}

void CudaLlama::forward(const int32_t* tokens, int64_t n, float* host_logits, bool all_logits) {
  const auto& c = cfg_;
  if (n <= 0) throw std::invalid_argument("[forward] no tokens");
  for (int64_t i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= c.n_vocab)
      throw std::invalid_argument("[forward] token id " + s(tokens[i]) + " at index " + s(i) +
                                  " is out of range [0, " + s(c.n_vocab) + ")");
  check(cudaSetDevice(device_), "cudaSetDevice");
  ensure_scratch(n);
  const int64_t pos0 = n_past();
  cache_->reserve(seq_, n);  // "[kv_cache] ... past n_ctx ..." / "... exhausted": nothing changed
  try {
    forward_at(tokens, pos0, n, host_logits, all_logits);
  } catch (...) {
    cache_->truncate(seq_, pos0);
    throw;
  }
}

void CudaLlama::forward_at(const int32_t* tokens, int64_t pos0, int64_t n, float* host_logits, bool all_logits) {
  const auto& c = cfg_;
  const int64_t rows = all_logits ? n : 1;
  check(cudaMemcpyAsync(tok_, tokens, n * 4, cudaMemcpyHostToDevice, stream_), "upload tokens");
  upload_pages();
  if (n == 1 && graphs_) {
    // Decode: replay one graph of the whole forward; the position comes from dpos_.
    *hpos_ = pos0;
    check(cudaMemcpyAsync(dpos_, hpos_, sizeof(int64_t), cudaMemcpyHostToDevice, stream_), "upload pos");
    if (!graph_) {
      cudaGraph_t g = nullptr;
      check(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "graph capture");
      try {
        run_layers(1, pos0, false, dpos_);
      } catch (...) {
        cudaStreamEndCapture(stream_, &g);
        if (g) cudaGraphDestroy(g);
        throw;
      }
      check(cudaStreamEndCapture(stream_, &g), "graph capture");
      cudaError_t e = cudaGraphInstantiate(&graph_, g, 0);
      cudaGraphDestroy(g);
      check(e, "graph instantiate");
    }
    check(cudaGraphLaunch(graph_, stream_), "graph launch");
  } else {
    run_layers(n, pos0, all_logits, nullptr);
  }
  check(cudaMemcpyAsync(host_logits, logits_, rows * c.n_vocab * 4, cudaMemcpyDeviceToHost, stream_),
        "download logits");
  check(cudaStreamSynchronize(stream_), "forward");
}

// The forward's kernels (no host synchronization, so it can be captured): tokens are in tok_, the
// logits go to logits_. dpos: device position for rope / KV write / attention (graph replays).
void CudaLlama::run_layers(int64_t n, int64_t pos0, bool all_logits, const int64_t* dpos) {
  const auto& c = cfg_;
  const int64_t E = c.n_embd, qd = c.n_head * c.head_dim, kd = c.n_head_kv * c.head_dim;
  const bool qE = E % 32 == 0, qF = c.n_ff % 32 == 0;
  const DevQ8a none{};
  // norm (+ the residual add of the previous block, fused) and the quantization of its output
  auto norm = [&](float* x, const float* add, const float* w, int64_t rows) {
    rms_norm_q(x, add, w, h_, qE ? xq_ : none, rows, E, c.rms_eps, stream_);
    xq_k_ = qE ? E : 0;
  };
  get_rows(tok_embd_, tok_fmt_, c.n_vocab, E, tok_, n, x_, stream_);
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const DevLayer& L = layers_[l];
    norm(x_, l == 0 ? nullptr : h_, L.attn_norm, n);  // x += ffn output of layer l-1
    if (L.qkv_fused) {
      SplitOut o;
      o.y[0] = q_;
      o.y[1] = k_;
      o.y[2] = v_;
      o.n0[1] = (int)qd;
      o.n0[2] = (int)(qd + kd);
      o.n0[3] = (int)(qd + 2 * kd);
      o.segs = 3;
      if (is_quant(L.wqkv.fmt)) linear_prep(L.wqkv, h_, n);
      matmul_split(L.wqkv, h_, xq_, o, n, stream_);
    } else {
      linear(L.wq, h_, true, q_, n);
      linear(L.wk, h_, true, k_, n);
      linear(L.wv, h_, true, v_, n);
    }
    if (L.bq) add_bias(q_, L.bq, n, qd, stream_);
    if (L.bk) add_bias(k_, L.bk, n, kd, stream_);
    if (L.bv) add_bias(v_, L.bv, n, kd, stream_);
    // qwen3: RMSNorm of every head's head_dim values of q and k (one row per token and head)
    float *q = q_, *k = k_;
    if (c.qk_norm) {
      rms_norm(q_, L.q_norm, qn_, n * c.n_head, c.head_dim, c.rms_eps, stream_);
      rms_norm(k_, L.k_norm, kn_, n * c.n_head_kv, c.head_dim, c.rms_eps, stream_);
      q = qn_;
      k = kn_;
    }
    // RoPE(q, k) and the K/V store through the page table (device memory: replays see new pages)
    const DevKV kv = cache_->dev();
    paged_rope_qkv_write(q, c.n_head, k, v_, kv, (int32_t)l, d_pt_, n, pos0, c.rope, cache_->dev_freq_factors(), true,
                         stream_, dpos);
    const bool q_att = is_quant(L.wo.fmt);
    if (n == 1) {  // decode (plain and graph replays alike): split-K over the pages
      PagedDecodeArgs a;
      a.kv = kv;
      a.layer = (int32_t)l;
      a.n_seqs = 1;
      a.n_heads = (int32_t)c.n_head;
      a.pt = d_pt_;
      a.pt_stride = (int32_t)max_pages_;
      a.lens = d_pt_ + max_pages_;
      a.q = q;
      a.out = att_;
      a.qout = q_att ? xq_ : none;
      a.max_splits = max_splits_;
      a.split_tokens = kvo_.split_tokens;
      a.work = work_;
      paged_attention_decode(a, stream_);
    } else {
      PagedPrefillArgs a;
      a.kv = kv;
      a.layer = (int32_t)l;
      a.n_q = (int32_t)n;
      a.n_heads = (int32_t)c.n_head;
      a.pt = d_pt_;
      a.lens = d_pt_ + max_pages_;
      a.q = q;
      a.out = att_;
      a.qout = q_att ? xq_ : none;
      paged_attention_prefill(a, stream_);
    }
    xq_k_ = q_att ? qd : 0;
    linear(L.wo, att_, true, h_, n);
    norm(x_, h_, L.ffn_norm, n);  // x += attention output
    if (L.gu_fused) {
      SplitOut o;
      o.y[0] = g_;
      o.y[1] = u_;
      o.n0[1] = (int)c.n_ff;
      o.n0[2] = (int)(2 * c.n_ff);
      o.segs = 2;
      if (is_quant(L.wgu.fmt)) linear_prep(L.wgu, h_, n);
      matmul_split(L.wgu, h_, xq_, o, n, stream_);
    } else {
      linear(L.w_gate, h_, true, g_, n);
      linear(L.w_up, h_, true, u_, n);
    }
    if (qF) {
      swiglu_q(g_, u_, xq_, n, c.n_ff, stream_);
      xq_k_ = c.n_ff;
    } else {
      swiglu(g_, u_, n * c.n_ff, stream_);
      xq_k_ = 0;
    }
    linear(L.w_down, g_, true, h_, n);
  }
  // x += ffn output of the last layer, fused into the output norm (only the rows that are read)
  const int64_t rows = all_logits ? n : 1;
  const int64_t r0 = all_logits ? 0 : n - 1;
  norm(x_ + r0 * E, h_ + r0 * E, output_norm_, rows);
  linear(output_, h_, true, logits_, rows);
}

}  // namespace xsil::cuda
