// xsil._cuda.KVCache and its attention entry points: the device paged KV cache with the CPU
// binding's Python API (csrc/bindings/bind_attention.cpp) and the same argument errors, so tests run
// one scenario against both. Arrays cross as host NumPy arrays (uploaded / downloaded per call).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <unordered_set>
#include <vector>

#include "core/fp16.h"
#include "bindings/arrays.h"
#include "bindings/kv_pages_api.h"
#include "cuda/kv_cache.h"

namespace py = pybind11;

namespace xsil::cuda {

namespace {

std::string str(int64_t v) { return std::to_string(v); }
[[noreturn]] void bad(const char* op, const std::string& msg) {
  throw std::invalid_argument(std::string("[") + op + "] " + msg);
}

using pyargs::require_shape;
using pyargs::shape_str;
template <typename T>
void require_arr(const py::array& a, const char* op, const char* arg, const char* expect_dtype) {
  pyargs::require<T>(a, op, arg, expect_dtype);
}


// RAII device buffer.
struct DBuf {
  void* p = nullptr;
  explicit DBuf(size_t n) { check(cudaMalloc(&p, std::max<size_t>(n, 16)), "cudaMalloc"); }
  ~DBuf() { if (p) cudaFree(p); }
  DBuf(const DBuf&) = delete;
  DBuf& operator=(const DBuf&) = delete;
  template <class T> T* as() const { return (T*)p; }
  void up(const void* h, size_t n) { check(cudaMemcpy(p, h, n, cudaMemcpyHostToDevice), "upload"); }
  void down(void* h, size_t n) const { check(cudaMemcpy(h, p, n, cudaMemcpyDeviceToHost), "download"); }
};

std::unique_ptr<CudaKVCache> make_cache(const KVCacheParams& p) { return std::make_unique<CudaKVCache>(p, nullptr); }

// k, v host [n, n_kv, hd] float32 for one layer: uploaded, then written (K rotated unless k_rotated).
void write_layer(CudaKVCache& c, int layer, int seq_id, int64_t pos0, const float* k, const float* v, int64_t n,
                 bool k_rotated) {
  const KVCacheParams& cp = c.params();
  const size_t bytes = (size_t)(n * cp.n_kv_heads * cp.head_dim * 4);
  c.check_write(layer, seq_id, pos0, n, "kv_cache.write");
  DBuf dk(bytes), dv(bytes);
  dk.up(k, bytes);
  dv.up(v, bytes);
  c.write(layer, seq_id, pos0, (int32_t)n, dk.as<float>(), dv.as<float>(), k_rotated);
}

void py_write(CudaKVCache& c, int layer, int seq_id, int64_t pos0, const py::array& k, const py::array& v,
              bool k_rotated) {
  const char* op = "kv_cache.write";
  const KVCacheParams& cp = c.params();
  require_arr<float>(k, op, "k", "float32");
  require_arr<float>(v, op, "v", "float32");
  if (k.ndim() != 3) bad(op, "k must be 3-D [n_tokens, n_kv_heads, head_dim], got " + shape_str(k));
  const int64_t n = k.shape(0);
  require_shape(k, {n, cp.n_kv_heads, cp.head_dim}, op, "k");
  require_shape(v, {n, cp.n_kv_heads, cp.head_dim}, op, "v");
  if (n > INT32_MAX) bad(op, "too many tokens");
  write_layer(c, layer, seq_id, pos0, (const float*)k.data(), (const float*)v.data(), n, k_rotated);
}

int64_t py_append(CudaKVCache& c, int seq_id, const py::array& k, const py::array& v) {
  const char* op = "kv_cache.append";
  const KVCacheParams& cp = c.params();
  require_arr<float>(k, op, "k", "float32");
  require_arr<float>(v, op, "v", "float32");
  c.require_seq(seq_id, op);
  const int64_t n = kvapi::append_tokens(cp, k, v, op);
  c.reserve(seq_id, n);
  const int64_t pos0 = c.length(seq_id) - n;  // a context shift in reserve may have moved the end
  const int64_t per_layer = n * cp.n_kv_heads * cp.head_dim;
  for (int l = 0; l < cp.n_layers; ++l)
    write_layer(c, l, seq_id, pos0, (const float*)k.data() + l * per_layer, (const float*)v.data() + l * per_layer, n,
                false);
  return pos0;
}

void load_row(KVDtype dt, const uint8_t* src, float* out, int64_t hd) {
  switch (dt) {
    case KVDtype::F32: std::memcpy(out, src, (size_t)hd * 4); break;
    case KVDtype::F16:
      for (int64_t i = 0; i < hd; ++i) out[i] = fp16_to_fp32(((const uint16_t*)src)[i]);
      break;
    case KVDtype::Q8_0:
      for (int64_t b = 0; b < hd / 32; ++b) {
        const uint8_t* blk = src + b * 34;
        uint16_t dh;
        std::memcpy(&dh, blk, 2);
        const float d = fp16_to_fp32(dh);
        for (int i = 0; i < 32; ++i) out[b * 32 + i] = (float)(int8_t)blk[2 + i] * d;
      }
      break;
  }
}

// (K, V) of one layer of a sequence, [len, n_kv, hd] float32 dequantized (the pool is downloaded).
py::tuple py_read(const CudaKVCache& c, int layer, int seq_id) {
  const char* op = "kv_cache.read";
  const KVCacheParams& cp = c.params();
  if (layer < 0 || layer >= cp.n_layers) bad(op, "layer out of range");
  c.require_seq(seq_id, op);
  const KVLayout& L = c.layout();
  const int64_t len = c.length(seq_id), hd = cp.head_dim, nkv = cp.n_kv_heads, ps = cp.page_size;
  std::vector<uint8_t> pool((size_t)L.pool_bytes());
  check(cudaMemcpy(pool.data(), c.pool(), pool.size(), cudaMemcpyDeviceToHost), "download kv_cache");
  py::array_t<float> K({(py::ssize_t)len, (py::ssize_t)nkv, (py::ssize_t)hd});
  py::array_t<float> V({(py::ssize_t)len, (py::ssize_t)nkv, (py::ssize_t)hd});
  const auto& pt = c.page_table(seq_id);
  for (int64_t t = 0; t < len; ++t)
    for (int64_t h = 0; h < nkv; ++h) {
      load_row(cp.k_dtype, pool.data() + L.k_off(pt[t / ps], layer, h) + (t % ps) * L.k_row,
               K.mutable_data() + (t * nkv + h) * hd, hd);
      load_row(cp.v_dtype, pool.data() + L.v_off(pt[t / ps], layer, h) + (t % ps) * L.v_row,
               V.mutable_data() + (t * nkv + h) * hd, hd);
    }
  return py::make_tuple(K, V);
}


void check_common(const char* op, const CudaKVCache& c, int layer, int64_t n_heads, double scale) {
  const KVCacheParams& cp = c.params();
  if (layer < 0 || layer >= cp.n_layers) bad(op, "layer=" + str(layer) + " is out of range [0, " + str(cp.n_layers) + ")");
  if (n_heads < 1 || n_heads % cp.n_kv_heads != 0)
    bad(op, "n_heads=" + str(n_heads) + " must be a positive multiple of n_kv_heads=" + str(cp.n_kv_heads));
  if (n_heads / cp.n_kv_heads > 256) bad(op, "GQA group of " + str(n_heads / cp.n_kv_heads) + " heads is too large (max 256)");
  if (!std::isfinite(scale) || scale < 0.0) bad(op, "scale must be finite and > 0 (0 = 1/sqrt(head_dim))");
}

RopeParams rope_of(const CudaKVCache& c) { return c.params().rope; }  // factors: c.dev_freq_factors()

int sm_count() {
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  cudaDeviceProp prop;
  check(cudaGetDeviceProperties(&prop, dev), "cudaGetDeviceProperties");
  return prop.multiProcessorCount;
}

// Decode over the device cache: one query per sequence at its last position. split_tokens: tokens
// per split-K chunk before another split is used (0 = the model's default plan, paged_decode_plan);
// max_splits: the launch's split count (0 = sized for the cache's n_ctx, as a model's graph would be).
py::array_t<float> py_decode(const CudaKVCache& c, int layer, const py::array& seq_ids, const py::array& q,
                             double scale, bool q_rotated, int split_tokens, int max_splits) {
  const char* op = "attention_decode";
  require_arr<int32_t>(seq_ids, op, "seq_ids", "int32");
  require_arr<float>(q, op, "q", "float32");
  if (seq_ids.ndim() != 1) bad(op, "seq_ids must be 1-D, got " + shape_str(seq_ids));
  const int64_t ns = seq_ids.shape(0);
  if (q.ndim() != 3) bad(op, "q must be 3-D [n_seqs, n_heads, head_dim], got " + shape_str(q));
  const int64_t hd = c.params().head_dim, H = q.shape(1);
  require_shape(q, {ns, H, hd}, op, "q");
  check_common(op, c, layer, H, scale);
  if (ns < 1) bad(op, "n_seqs=" + str(ns) + " must be >= 1");
  if (ns > 65535) bad(op, "n_seqs=" + str(ns) + " is more than 65535");
  if (split_tokens < 0) bad(op, "split_tokens=" + str(split_tokens) + " must be >= 0 (0 = the model's default plan)");
  if (max_splits < 0 || max_splits > kMaxSplits)
    bad(op, "max_splits=" + str(max_splits) + " must be in [0, " + str(kMaxSplits) + "] (0 = from n_ctx)");
  const int32_t* ids = (const int32_t*)seq_ids.data();
  std::unordered_set<int32_t> seen;
  int64_t stride = 1;
  std::vector<int32_t> lens((size_t)ns);
  for (int64_t i = 0; i < ns; ++i) {
    c.require_seq(ids[i], op);
    if (!seen.insert(ids[i]).second) bad(op, "sequence id " + str(ids[i]) + " appears twice");
    if (c.length(ids[i]) < 1) bad(op, "sequence " + str(ids[i]) + " is empty: write its K/V before attending");
    lens[i] = (int32_t)c.length(ids[i]);
    stride = std::max<int64_t>(stride, (int64_t)c.page_table(ids[i]).size());
  }
  std::vector<int32_t> pt((size_t)(ns * stride), 0);
  for (int64_t i = 0; i < ns; ++i) {
    const auto& p = c.page_table(ids[i]);
    std::copy(p.begin(), p.end(), pt.begin() + i * stride);
  }
  int32_t ms = max_splits;
  if (split_tokens == 0) {  // the model's plan for this device (SM count), sized for n_ctx
    const DecodeSplitPlan plan = paged_decode_plan(c.n_ctx(), c.params().n_kv_heads, ns, sm_count());
    split_tokens = plan.split_tokens;
    if (ms == 0) ms = plan.max_splits;
  }
  if (ms == 0) ms = paged_max_splits(c.n_ctx(), split_tokens);
  const size_t qbytes = (size_t)(ns * H * hd * 4);
  DBuf dpt(pt.size() * 4), dlen(lens.size() * 4), dq(qbytes), dout(qbytes),
      work((size_t)paged_decode_work_floats(ns, H, hd, ms) * 4);
  dpt.up(pt.data(), pt.size() * 4);
  dlen.up(lens.data(), lens.size() * 4);
  dq.up(q.data(), qbytes);
  if (!q_rotated) rope_at_lengths(dq.as<float>(), ns, 1, H, hd, dlen.as<int32_t>(), rope_of(c), c.dev_freq_factors(), nullptr);
  PagedDecodeArgs a;
  a.kv = c.dev();
  a.layer = layer;
  a.n_seqs = (int32_t)ns;
  a.n_heads = (int32_t)H;
  a.pt = dpt.as<int32_t>();
  a.pt_stride = (int32_t)stride;
  a.lens = dlen.as<int32_t>();
  a.q = dq.as<float>();
  a.scale = (float)scale;
  a.out = dout.as<float>();
  a.max_splits = ms;
  a.split_tokens = split_tokens;
  a.work = work.as<float>();
  paged_attention_decode(a, nullptr);
  check(cudaDeviceSynchronize(), "attention_decode");
  py::array_t<float> out({(py::ssize_t)ns, (py::ssize_t)H, (py::ssize_t)hd});
  dout.down(out.mutable_data(), qbytes);
  return out;
}

py::array_t<float> py_prefill(const CudaKVCache& c, int layer, int seq_id, const py::array& q, double scale,
                              bool q_rotated) {
  const char* op = "attention_prefill";
  require_arr<float>(q, op, "q", "float32");
  if (q.ndim() != 3) bad(op, "q must be 3-D [n_q, n_heads, head_dim], got " + shape_str(q));
  const int64_t hd = c.params().head_dim, nq = q.shape(0), H = q.shape(1);
  require_shape(q, {nq, H, hd}, op, "q");
  check_common(op, c, layer, H, scale);
  c.require_seq(seq_id, op);
  const int64_t len = c.length(seq_id);
  if (nq < 1 || nq > len)
    bad(op, "n_q=" + str(nq) + " query tokens, but sequence " + str(seq_id) + " has " + str(len) +
                " cached tokens (write the chunk's K/V first; n_q must be in [1, length])");
  const auto& pt = c.page_table(seq_id);
  const int32_t len32 = (int32_t)len;
  const size_t qbytes = (size_t)(nq * H * hd * 4);
  DBuf dpt(pt.size() * 4), dlen(4), dq(qbytes), dout(qbytes);
  dpt.up(pt.data(), pt.size() * 4);
  dlen.up(&len32, 4);
  dq.up(q.data(), qbytes);
  if (!q_rotated) rope_at_lengths(dq.as<float>(), 1, nq, H, hd, dlen.as<int32_t>(), rope_of(c), c.dev_freq_factors(), nullptr);
  PagedPrefillArgs a;
  a.kv = c.dev();
  a.layer = layer;
  a.n_q = (int32_t)nq;
  a.n_heads = (int32_t)H;
  a.pt = dpt.as<int32_t>();
  a.lens = dlen.as<int32_t>();
  a.q = dq.as<float>();
  a.scale = (float)scale;
  a.out = dout.as<float>();
  paged_attention_prefill(a, nullptr);
  check(cudaDeviceSynchronize(), "attention_prefill");
  py::array_t<float> out({(py::ssize_t)nq, (py::ssize_t)H, (py::ssize_t)hd});
  dout.down(out.mutable_data(), qbytes);
  return out;
}


// Decode attention micro-benchmark: one layer of a cache of n_kv heads x head_dim holding one
// sequence of ctx random tokens, n_heads query heads, the model's default split plan (split_tokens
// 0) or split_tokens per split; `iters` launches (decode + merge) timed with CUDA events.
py::dict bench_attention_decode(int n_heads, int n_kv, int hd, int64_t ctx, const std::string& kv_dtype, int iters,
                                int split_tokens) {
  const char* op = "bench_attention_decode";
  if (n_kv < 1 || n_heads < 1 || n_heads % n_kv) bad(op, "n_heads=" + str(n_heads) + " must be a positive multiple of n_kv=" + str(n_kv));
  if (ctx < 1 || ctx > (1 << 24)) bad(op, "ctx=" + str(ctx) + " must be in [1, 2^24]");
  if (iters < 1) bad(op, "iters must be >= 1");
  if (split_tokens < 0) bad(op, "split_tokens must be >= 0 (0 = the default plan)");
  KVCacheParams p;
  p.n_layers = 1;
  p.n_kv_heads = n_kv;
  p.head_dim = hd;
  p.page_size = 16;
  p.k_dtype = p.v_dtype = parse_kv_dtype(kv_dtype, op);
  p.budget_tokens = (ctx + 15) / 16 * 16;
  p.n_ctx = ctx;
  p.rope.mode = RopeMode::None;
  CudaKVCache c(p, nullptr);  // validates head_dim
  const int32_t sid = c.add_sequence();
  {
    const size_t nel = (size_t)(ctx * n_kv * hd);
    std::vector<float> hk(nel);
    uint32_t x = 12345;
    for (float& f : hk) {
      x = x * 1664525u + 1013904223u;
      f = (float)((x >> 8) & 0xffff) / 32768.0f - 1.0f;
    }
    DBuf dk(nel * 4);
    dk.up(hk.data(), nel * 4);
    c.reserve(sid, ctx);
    c.write(0, sid, 0, (int32_t)ctx, dk.as<float>(), dk.as<float>(), true);
  }
  int32_t st = split_tokens, ms;
  if (st == 0) {
    const DecodeSplitPlan plan = paged_decode_plan(ctx, n_kv, 1, sm_count());
    st = plan.split_tokens;
    ms = plan.max_splits;
  } else {
    ms = paged_max_splits(ctx, st);
  }
  const auto& pt = c.page_table(sid);
  const int32_t len = (int32_t)ctx;
  const size_t qbytes = (size_t)n_heads * hd * 4;
  DBuf dpt(pt.size() * 4), dlen(4), dq(qbytes), dout(qbytes),
      work((size_t)paged_decode_work_floats(1, n_heads, hd, ms) * 4);
  dpt.up(pt.data(), pt.size() * 4);
  dlen.up(&len, 4);
  {
    std::vector<float> hq((size_t)n_heads * hd, 0.05f);
    dq.up(hq.data(), qbytes);
  }
  PagedDecodeArgs a;
  a.kv = c.dev();
  a.n_seqs = 1;
  a.n_heads = n_heads;
  a.pt = dpt.as<int32_t>();
  a.pt_stride = (int32_t)pt.size();
  a.lens = dlen.as<int32_t>();
  a.q = dq.as<float>();
  a.out = dout.as<float>();
  a.max_splits = ms;
  a.split_tokens = st;
  a.work = work.as<float>();
  cudaEvent_t e0, e1;
  check(cudaEventCreate(&e0), "event");
  check(cudaEventCreate(&e1), "event");
  for (int i = 0; i < 3; ++i) paged_attention_decode(a, nullptr);
  check(cudaEventRecord(e0, 0), "event");
  for (int i = 0; i < iters; ++i) paged_attention_decode(a, nullptr);
  check(cudaEventRecord(e1, 0), "event");
  check(cudaEventSynchronize(e1), "event");
  float ms_total = 0;
  check(cudaEventElapsedTime(&ms_total, e0, e1), "event");
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  const KVLayout& L = c.layout();
  const double us = ms_total * 1e3 / iters;
  const double kv_bytes = (double)ctx * n_kv * (double)(L.k_row + L.v_row);
  const int n_pg = (int)((ctx + 15) / 16);
  int ns = (int)std::min<int64_t>(std::min<int64_t>((ctx + st - 1) / st, ms), n_pg);
  ns = std::max(ns, 1);
  const int pps = (n_pg + ns - 1) / ns;
  ns = (n_pg + pps - 1) / pps;
  py::dict r;
  r["us"] = us;
  r["kv_bytes"] = kv_bytes;
  r["GBps"] = kv_bytes / (us * 1e-6) / 1e9;
  r["split_tokens"] = st;
  r["max_splits"] = ms;
  r["splits"] = ns;
  r["ctas"] = ns * n_kv;
  return r;
}

}  // namespace

void register_kv(py::module_& m) {
  py::class_<CudaKVCache> cls(m, "KVCache", py::module_local(),
                             "Paged, budgeted KV cache in device memory (the CPU KVCache's API).");
  kvapi::def_kv_pages<CudaKVCache, &make_cache>(cls);
  cls.def("write", &py_write, py::arg("layer"), py::arg("seq_id"), py::arg("pos0"), py::arg("k"), py::arg("v"),
          py::arg("k_rotated") = false)
      .def("append", &py_append, py::arg("seq_id"), py::arg("k"), py::arg("v"))
      .def("read", &py_read, py::arg("layer"), py::arg("seq_id"));
  m.def("attention_decode", &py_decode, py::arg("cache"), py::arg("layer"), py::arg("seq_ids"), py::arg("q"),
        py::arg("scale") = 0.0, py::arg("q_rotated") = false, py::arg("split_tokens") = 512,
        py::arg("max_splits") = 0,
        "Decode attention over the device cache (split-K: one split per split_tokens tokens, at most max_splits)");
  m.def("bench_attention_decode", &bench_attention_decode, py::arg("n_heads"), py::arg("n_kv"), py::arg("head_dim"),
        py::arg("ctx"), py::arg("kv_dtype") = "f16", py::arg("iters") = 50, py::arg("split_tokens") = 0,
        "Times decode attention (+ merge) over one layer of ctx tokens: us per call, KV GB/s, the split plan");
  m.def("attention_prefill", &py_prefill, py::arg("cache"), py::arg("layer"), py::arg("seq_id"), py::arg("q"),
        py::arg("scale") = 0.0, py::arg("q_rotated") = false);
}

}  // namespace xsil::cuda
