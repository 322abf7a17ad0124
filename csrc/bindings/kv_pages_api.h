// The Python API of a paged KV cache, shared by the CPU cache (xsil._core.KVCache) and the device
// cache (xsil._cuda.KVCache): both are KVPages (core/kv_pages.h) with their own storage, so the
// constructor, the bookkeeping methods, stats and properties are defined here once and the two
// classes cannot drift apart. Each binding adds only its storage-specific methods (write, append,
// read) and its attention entry points.
#pragma once
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <stdexcept>
#include <string>

#include "bindings/arrays.h"
#include "core/kv_pages.h"

namespace xsil::kvapi {

namespace py = pybind11;

inline RopeMode parse_rope_mode(const std::string& s, const char* op) {
  if (s == "normal") return RopeMode::Normal;
  if (s == "neox") return RopeMode::Neox;
  if (s == "none") return RopeMode::None;
  throw std::invalid_argument(std::string("[") + op + "] rope mode '" + s + "' is not one of 'normal', 'neox', 'none'");
}

inline const char* rope_mode_name(RopeMode m) {
  return m == RopeMode::Normal ? "normal" : m == RopeMode::Neox ? "neox" : "none";
}

inline KVCacheParams params_from_args(int n_layers, int n_kv_heads, int head_dim, int page_size,
                                      const std::string& k_dtype, const std::string& v_dtype, int64_t budget_bytes,
                                      int64_t budget_tokens, int64_t n_ctx, const std::string& context_shift,
                                      int n_keep, const std::string& rope, double freq_base, double freq_scale,
                                      const std::vector<float>& freq_factors) {
  const char* op = "kv_cache";
  KVCacheParams p;
  p.n_layers = n_layers;
  p.n_kv_heads = n_kv_heads;
  p.head_dim = head_dim;
  p.page_size = page_size;
  p.k_dtype = parse_kv_dtype(k_dtype, op);
  p.v_dtype = parse_kv_dtype(v_dtype, op);
  p.budget_bytes = budget_bytes;
  p.budget_tokens = budget_tokens;
  p.n_ctx = n_ctx;
  if (context_shift == "error") p.shift = ShiftPolicy::Error;
  else if (context_shift == "shift") p.shift = ShiftPolicy::Shift;
  else throw std::invalid_argument("[kv_cache] context_shift must be 'error' or 'shift', got '" + context_shift + "'");
  p.n_keep = n_keep;
  p.rope.mode = parse_rope_mode(rope, op);
  p.rope.freq_base = (float)freq_base;
  p.rope.freq_scale = (float)freq_scale;
  pyargs::set_rope_freq_factors(p.rope, freq_factors);  // the cache copies them (KVPages)
  return p;
}

inline py::dict stats_dict(const KVPages& c) {
  const KVStats s = c.stats();
  py::dict d;
  d["pages_total"] = s.pages_total;
  d["pages_used"] = s.pages_used;
  d["pages_free"] = s.pages_free;
  d["pages_shared"] = s.pages_shared;
  d["page_bytes"] = s.page_bytes;
  d["pool_bytes"] = s.pool_bytes;
  d["bytes_used"] = s.bytes_used;
  d["tokens_cached"] = s.tokens_cached;
  d["budget_tokens"] = s.budget_tokens;
  d["bytes_per_token"] = s.bytes_per_token;
  d["n_seqs"] = s.n_seqs;
  d["refs_total"] = s.refs_total;
  py::dict lens;
  for (int32_t id : c.sequence_ids()) lens[py::int_(id)] = c.length(id);
  d["lengths"] = lens;
  return d;
}

// Tokens in an append's k / v: [n_layers, n, n_kv_heads, head_dim] (or [n, n_kv_heads, head_dim] for
// a one-layer cache); validates both arrays' shapes and that n >= 1.
inline int64_t append_tokens(const KVCacheParams& cp, const py::array& k, const py::array& v, const char* op) {
  int64_t n;
  if (k.ndim() == 3 && cp.n_layers == 1) {
    n = k.shape(0);
    pyargs::require_shape(k, {n, cp.n_kv_heads, cp.head_dim}, op, "k");
    pyargs::require_shape(v, {n, cp.n_kv_heads, cp.head_dim}, op, "v");
  } else {
    if (k.ndim() != 4)
      throw std::invalid_argument(std::string("[") + op +
                                  "] k must be 4-D [n_layers, n_tokens, n_kv_heads, head_dim] (3-D [n_tokens, "
                                  "n_kv_heads, head_dim] for a 1-layer cache), got " + pyargs::shape_str(k));
    n = k.shape(1);
    pyargs::require_shape(k, {cp.n_layers, n, cp.n_kv_heads, cp.head_dim}, op, "k");
    pyargs::require_shape(v, {cp.n_layers, n, cp.n_kv_heads, cp.head_dim}, op, "v");
  }
  if (n < 1) throw std::invalid_argument(std::string("[") + op + "] no tokens to append");
  return n;
}

// Constructor (through Make: KVCacheParams -> std::unique_ptr<C>), bookkeeping methods, stats and
// read-only properties of class C (a KVPages).
template <class C, std::unique_ptr<C> (*Make)(const KVCacheParams&), class... Extra>
void def_kv_pages(py::class_<C, Extra...>& cls) {
  cls.def(py::init([](int n_layers, int n_kv_heads, int head_dim, int page_size, const std::string& k_dtype,
                      const std::string& v_dtype, int64_t budget_bytes, int64_t budget_tokens, int64_t n_ctx,
                      const std::string& context_shift, int n_keep, const std::string& rope, double freq_base,
                      double freq_scale, const py::object& freq_factors) {
            const std::vector<float> ff = pyargs::rope_freq_factors_arg(freq_factors, "kv_cache");
            return Make(params_from_args(n_layers, n_kv_heads, head_dim, page_size, k_dtype, v_dtype, budget_bytes,
                                         budget_tokens, n_ctx, context_shift, n_keep, rope, freq_base, freq_scale,
                                         ff));
          }),
          py::arg("n_layers"), py::arg("n_kv_heads"), py::arg("head_dim"), py::arg("page_size") = 16,
          py::arg("k_dtype") = "f16", py::arg("v_dtype") = "f16", py::arg("budget_bytes") = 0,
          py::arg("budget_tokens") = 0, py::arg("n_ctx") = 0, py::arg("context_shift") = "error",
          py::arg("n_keep") = 0, py::arg("rope") = "normal", py::arg("rope_freq_base") = 10000.0,
          py::arg("rope_freq_scale") = 1.0, py::arg("rope_freq_factors") = py::none())
      .def("add_sequence", [](C& c) { return c.add_sequence(); })
      .def("remove_sequence", [](C& c, int32_t id) { c.remove_sequence(id); }, py::arg("seq_id"))
      .def("fork", [](C& c, int32_t id) { return c.fork(id); }, py::arg("seq_id"))
      .def("truncate", [](C& c, int32_t id, int64_t len) { c.truncate(id, len); }, py::arg("seq_id"),
           py::arg("length"))
      .def("reserve", [](C& c, int32_t id, int64_t n) { return c.reserve(id, n); }, py::arg("seq_id"),
           py::arg("n_tokens"))
      .def("shift", [](C& c, int32_t id, int64_t n) { c.shift(id, n); }, py::arg("seq_id"), py::arg("n_discard"))
      .def("length", [](const C& c, int32_t id) { return c.length(id); }, py::arg("seq_id"))
      .def("n_shifted", [](const C& c, int32_t id) { return c.n_shifted(id); }, py::arg("seq_id"))
      .def("has", [](const C& c, int32_t id) { return c.has(id); }, py::arg("seq_id"))
      .def("page_table", [](const C& c, int32_t id) { return c.page_table(id); }, py::arg("seq_id"))
      .def("refcount", [](const C& c, int32_t pg) {
        if (pg < 0 || pg >= c.n_pages()) throw std::invalid_argument("[kv_cache] page " + std::to_string(pg) + " out of range");
        return c.refcount(pg);
      }, py::arg("page"))
      .def("stats", [](const C& c) { return stats_dict(c); })
      .def("check", [](const C& c) { return c.check(); })
      .def_property_readonly("sequences", [](const C& c) { return c.sequence_ids(); })
      .def_property_readonly("bytes_per_token", [](const C& c) { return c.bytes_per_token(); })
      .def_property_readonly("budget_tokens", [](const C& c) { return c.budget_tokens(); })
      .def_property_readonly("n_pages", [](const C& c) { return c.n_pages(); })
      .def_property_readonly("page_bytes", [](const C& c) { return c.page_bytes(); })
      .def_property_readonly("n_ctx", [](const C& c) { return c.n_ctx(); })
      .def_property_readonly("n_layers", [](const C& c) { return c.params().n_layers; })
      .def_property_readonly("n_kv_heads", [](const C& c) { return c.params().n_kv_heads; })
      .def_property_readonly("head_dim", [](const C& c) { return c.params().head_dim; })
      .def_property_readonly("page_size", [](const C& c) { return c.params().page_size; })
      .def_property_readonly("n_keep", [](const C& c) { return c.params().n_keep; })
      .def_property_readonly("k_dtype", [](const C& c) { return std::string(kv_dtype_name(c.params().k_dtype)); })
      .def_property_readonly("v_dtype", [](const C& c) { return std::string(kv_dtype_name(c.params().v_dtype)); })
      .def_property_readonly("context_shift", [](const C& c) {
        return std::string(c.params().shift == ShiftPolicy::Shift ? "shift" : "error");
      })
      .def_property_readonly("rope", [](const C& c) {
        const RopeParams& r = c.params().rope;
        return py::make_tuple(rope_mode_name(r.mode), r.freq_base, r.freq_scale);
      })
      .def_property_readonly("rope_freq_factors", [](const C& c) -> py::object {
        const RopeParams& r = c.params().rope;  // the cache's own copy
        if (!r.freq_factors) return py::none();
        return py::array_t<float>((py::ssize_t)r.n_freq_factors, r.freq_factors);
      });
}

}  // namespace xsil::kvapi
