// KVCache, attention_decode / attention_prefill and rope.
#include <cmath>

#include "bindings/common.h"
#include "bindings/kv_pages_api.h"
#include "cpu/attention.h"
#include "cpu/kv_cache.h"
#include "cpu/kv_rows.h"
#include "cpu/membench.h"

namespace xsil::bind {

namespace {



std::unique_ptr<KVCache> make_cache(const KVCacheParams& p) { return std::make_unique<KVCache>(p); }

void py_write(KVCache& c, int layer, int seq_id, int64_t pos0, const py::array& k, const py::array& v, bool k_rotated) {
  const char* op = "kv_cache.write";
  const KVCacheParams& cp = c.params();
  require<float>(k, op, "k", "float32");
  require<float>(v, op, "v", "float32");
  if (k.ndim() != 3) throw std::invalid_argument("[kv_cache.write] k must be 3-D [n_tokens, n_kv_heads, head_dim], got " + shape_str(k));
  const int64_t n = k.shape(0);
  require_shape(k, {n, cp.n_kv_heads, cp.head_dim}, op, "k");
  require_shape(v, {n, cp.n_kv_heads, cp.head_dim}, op, "v");
  KVWriteParams w;
  w.layer = layer;
  w.seq_id = seq_id;
  w.pos0 = pos0;
  w.n_tokens = (int32_t)n;
  w.k = (const float*)k.data();
  w.v = (const float*)v.data();
  w.k_rotated = k_rotated;
  c.write(w);
}

int64_t py_append(KVCache& c, int seq_id, const py::array& k, const py::array& v) {
  const char* op = "kv_cache.append";
  const KVCacheParams& cp = c.params();
  require<float>(k, op, "k", "float32");
  require<float>(v, op, "v", "float32");
  c.require_seq(seq_id, op);
  const int64_t n = kvapi::append_tokens(cp, k, v, op);
  const int64_t pos0 = c.reserve(seq_id, n);
  const int64_t per_layer = n * cp.n_kv_heads * cp.head_dim;
  for (int l = 0; l < cp.n_layers; ++l) {
    KVWriteParams w;
    w.layer = l;
    w.seq_id = seq_id;
    w.pos0 = c.length(seq_id) - n;  // a context shift in reserve may have moved the end
    w.n_tokens = (int32_t)n;
    w.k = (const float*)k.data() + l * per_layer;
    w.v = (const float*)v.data() + l * per_layer;
    c.write(w);
  }
  (void)pos0;
  return c.length(seq_id) - n;
}

py::tuple py_read(const KVCache& c, int layer, int seq_id) {
  const char* op = "kv_cache.read";
  const KVCacheParams& cp = c.params();
  if (layer < 0 || layer >= cp.n_layers) throw std::invalid_argument("[kv_cache.read] layer out of range");
  c.require_seq(seq_id, op);
  const int64_t len = c.length(seq_id), hd = cp.head_dim, nkv = cp.n_kv_heads, ps = cp.page_size;
  py::array_t<float> K({(py::ssize_t)len, (py::ssize_t)nkv, (py::ssize_t)hd});
  py::array_t<float> V({(py::ssize_t)len, (py::ssize_t)nkv, (py::ssize_t)hd});
  float* kp = K.mutable_data();
  float* vp = V.mutable_data();
  const auto& pt = c.page_table(seq_id);
  for (int64_t t = 0; t < len; ++t)
    for (int64_t h = 0; h < nkv; ++h) {
      kv_load_row(cp.k_dtype, c.k_rows(pt[t / ps], layer, (int32_t)h) + (t % ps) * c.k_row_bytes(), kp + (t * nkv + h) * hd, hd);
      kv_load_row(cp.v_dtype, c.v_rows(pt[t / ps], layer, (int32_t)h) + (t % ps) * c.v_row_bytes(), vp + (t * nkv + h) * hd, hd);
    }
  return py::make_tuple(K, V);
}


py::array_t<float> py_decode(const KVCache& c, int layer, const py::array& seq_ids, const py::array& q, double scale,
                             bool q_rotated, py::object threads, const std::string& isa) {
  const char* op = "attention_decode";
  require<int32_t>(seq_ids, op, "seq_ids", "int32");
  require<float>(q, op, "q", "float32");
  if (seq_ids.ndim() != 1) throw std::invalid_argument("[attention_decode] seq_ids must be 1-D, got " + shape_str(seq_ids));
  const int64_t ns = seq_ids.shape(0);
  if (q.ndim() != 3) throw std::invalid_argument("[attention_decode] q must be 3-D [n_seqs, n_heads, head_dim], got " + shape_str(q));
  require_shape(q, {ns, q.shape(1), c.params().head_dim}, op, "q");
  const int nt = check_threads(threads, op);
  AttnDecodeParams p;
  p.cache = &c;
  p.layer = layer;
  p.n_seqs = (int32_t)ns;
  p.seq_ids = (const int32_t*)seq_ids.data();
  p.n_heads = (int32_t)q.shape(1);
  p.q = (const float*)q.data();
  p.q_rotated = q_rotated;
  p.scale = (float)scale;
  const AttentionKernels& k = attention_kernels(resolve_tier(isa));
  py::array_t<float> out({(py::ssize_t)ns, (py::ssize_t)p.n_heads, (py::ssize_t)c.params().head_dim});
  p.out = out.mutable_data();
  check_attention_decode(p, nt);
  {
    py::gil_scoped_release nogil;
    attention_decode(p, k, nt);
  }
  return out;
}

py::array_t<float> py_prefill(const KVCache& c, int layer, int seq_id, const py::array& q, double scale, bool q_rotated,
                              py::object threads, const std::string& isa) {
  const char* op = "attention_prefill";
  require<float>(q, op, "q", "float32");
  if (q.ndim() != 3) throw std::invalid_argument("[attention_prefill] q must be 3-D [n_q, n_heads, head_dim], got " + shape_str(q));
  require_shape(q, {q.shape(0), q.shape(1), c.params().head_dim}, op, "q");
  const int nt = check_threads(threads, op);
  AttnPrefillParams p;
  p.cache = &c;
  p.layer = layer;
  p.seq_id = seq_id;
  p.n_q = (int32_t)q.shape(0);
  p.n_heads = (int32_t)q.shape(1);
  p.q = (const float*)q.data();
  p.q_rotated = q_rotated;
  p.scale = (float)scale;
  const AttentionKernels& k = attention_kernels(resolve_tier(isa));
  py::array_t<float> out({(py::ssize_t)p.n_q, (py::ssize_t)p.n_heads, (py::ssize_t)c.params().head_dim});
  p.out = out.mutable_data();
  check_attention_prefill(p, nt);
  {
    py::gil_scoped_release nogil;
    attention_prefill(p, k, nt);
  }
  return out;
}

py::array_t<float> py_rope(const py::array& x, const py::array& positions, const std::string& mode, double base,
                           double scale, const py::object& freq_factors) {
  const char* op = "rope";
  require<float>(x, op, "x", "float32");
  require<int64_t>(positions, op, "positions", "int64");
  if (x.ndim() != 2 && x.ndim() != 3)
    throw std::invalid_argument("[rope] x must be [n, head_dim] or [n, n_heads, head_dim], got " + shape_str(x));
  const int64_t n = x.shape(0), nv = x.ndim() == 3 ? x.shape(1) : 1, hd = x.shape(x.ndim() - 1);
  if (hd < 2 || hd % 2) throw std::invalid_argument("[rope] head_dim=" + std::to_string(hd) + " must be even");
  if (positions.ndim() != 1 || positions.shape(0) != n)
    throw std::invalid_argument("[rope] positions must be 1-D with " + std::to_string(n) + " entries, got " +
                                shape_str(positions));
  RopeParams rp;
  rp.mode = kvapi::parse_rope_mode(mode, op);
  rp.freq_base = (float)base;
  rp.freq_scale = (float)scale;
  if (!(base > 0) || !std::isfinite(base)) throw std::invalid_argument("[rope] freq_base must be finite and > 0");
  if (!(scale > 0) || !std::isfinite(scale)) throw std::invalid_argument("[rope] freq_scale must be finite and > 0");
  const std::vector<float> ff = pyargs::rope_freq_factors_arg(freq_factors, op);
  pyargs::set_rope_freq_factors(rp, ff);
  check_rope_freq_factors(rp, hd, op);
  py::array_t<float> y(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
  std::copy((const float*)x.data(), (const float*)x.data() + n * nv * hd, y.mutable_data());
  rope_inplace(y.mutable_data(), n, nv, hd, (const int64_t*)positions.data(), 0, rp);
  return y;
}

}  // namespace

void register_attention(py::module_& m) {
  py::class_<KVCache> cls(m, "KVCache", "Paged, budgeted KV cache (native). Use xsil.KVCache.");
  kvapi::def_kv_pages<KVCache, &make_cache>(cls);
  cls.def("write", &py_write, py::arg("layer"), py::arg("seq_id"), py::arg("pos0"), py::arg("k"), py::arg("v"),
          py::arg("k_rotated") = false)
      .def("append", &py_append, py::arg("seq_id"), py::arg("k"), py::arg("v"))
      .def("read", &py_read, py::arg("layer"), py::arg("seq_id"));
  m.def("attention_decode", &py_decode, py::arg("cache"), py::arg("layer"), py::arg("seq_ids"), py::arg("q"),
        py::arg("scale") = 0.0, py::arg("q_rotated") = false, py::arg("threads") = py::none(), py::arg("isa") = "");
  m.def("attention_prefill", &py_prefill, py::arg("cache"), py::arg("layer"), py::arg("seq_id"), py::arg("q"),
        py::arg("scale") = 0.0, py::arg("q_rotated") = false, py::arg("threads") = py::none(), py::arg("isa") = "");
  m.def("rope", &py_rope, py::arg("x"), py::arg("positions"), py::arg("mode") = "normal",
        py::arg("freq_base") = 10000.0, py::arg("freq_scale") = 1.0, py::arg("freq_factors") = py::none());
  m.def("_stream_read", [](const py::array& a, py::object threads) {
    require<uint8_t>(a, "stream_read", "a", "uint8");
    if (a.nbytes() % 8 || ((uintptr_t)a.data() & 7))
      throw std::invalid_argument("[stream_read] buffer must be 8-byte aligned with a multiple of 8 bytes");
    const int nt = check_threads(threads, "stream_read");
    const uint8_t* p = (const uint8_t*)a.data();
    const int64_t n = a.nbytes();
    py::gil_scoped_release nogil;
    return stream_read(p, n, nt);
  }, py::arg("a"), py::arg("threads") = py::none(), "Benchmark probe: read a buffer once (memory roofline).");
  m.def("kv_row_bytes", [](const std::string& dt, int64_t hd) {
    const KVDtype d = parse_kv_dtype(dt, "kv_cache");
    if (d == KVDtype::Q8_0 && hd % 32) throw std::invalid_argument("[kv_cache] head_dim must be a multiple of 32 for q8_0");
    return kv_row_bytes(d, hd);
  }, py::arg("dtype"), py::arg("head_dim"));
}

}  // namespace xsil::bind
