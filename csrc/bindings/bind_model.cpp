// The native Llama-family model (xsil._core.LlamaModel): built from weight views the Python loader
// hands over (zero-copy), run one chunk of tokens per call with the GIL released.
#include <cstring>

#include "bindings/common.h"
#include "model/llama_model.h"

namespace xsil::bind {

namespace {

struct PyModel {
  std::unique_ptr<LlamaModel> model;
  py::list keepalive;  // arrays / PackedWeights the model reads
};

Fmt parse_weight_fmt(const std::string& f, const std::string& name) {
  if (f == "F32") return Fmt::F32;
  if (f == "F16") return Fmt::F16;
  for (Fmt b : {Fmt::Q4_0, Fmt::Q4_1, Fmt::Q5_0, Fmt::Q5_1, Fmt::Q8_0, Fmt::Q4_K, Fmt::Q5_K, Fmt::Q6_K})
    if (f == fmt_info(b)->name) return b;
  throw std::invalid_argument("[model] tensor " + name + " has type " + f + "; supported weight types: F32, F16, " +
                              kBlockFormatList);
}

// weights[name] = (array | PackedWeights, fmt, rows, cols)
WeightRef weight(const py::dict& weights, const std::string& name, py::list& keep, bool optional = false) {
  WeightRef w;
  if (!weights.contains(name)) {
    if (optional) return w;
    throw std::invalid_argument("[model] tensor " + name + " is missing");
  }
  py::tuple t = weights[py::str(name)].cast<py::tuple>();
  if (t.size() != 4) throw std::invalid_argument("[model] weights[" + name + "] must be (data, fmt, rows, cols)");
  py::object obj = t[0];
  w.fmt = parse_weight_fmt(t[1].cast<std::string>(), name);
  w.rows = t[2].cast<int64_t>();
  w.cols = t[3].cast<int64_t>();
  if (py::isinstance<PyPacked>(obj)) {
    const PyPacked& pk = obj.cast<const PyPacked&>();
    if (pk.pw.fmt != w.fmt || pk.pw.N != w.rows || pk.pw.K != w.cols)
      throw std::invalid_argument("[model] packed tensor " + name + " does not match its declared shape/format");
    w.data = pk.pw.data;
    w.nbytes = pk.pw.nbytes;
    w.packed = true;
    w.tier = pk.pw.tier;
  } else {
    py::array a = obj.cast<py::array>();
    if (!(a.flags() & py::array::c_style))
      throw std::invalid_argument("[model] tensor " + name + " must be C-contiguous");
    w.data = a.data();
    w.nbytes = a.nbytes();
  }
  keep.append(obj);
  return w;
}

int64_t geti(const py::dict& d, const char* k) {
  if (!d.contains(k)) throw std::invalid_argument(std::string("[model] config is missing ") + k);
  return d[k].cast<int64_t>();
}

std::unique_ptr<PyModel> make_model(const py::dict& cfgd, const py::dict& weights, const py::dict& kvd,
                                    const std::string& isa, int threads) {
  LlamaConfig c;
  c.n_embd = geti(cfgd, "n_embd");
  c.n_layer = geti(cfgd, "n_layer");
  c.n_head = geti(cfgd, "n_head");
  c.n_head_kv = geti(cfgd, "n_head_kv");
  c.head_dim = geti(cfgd, "head_dim");
  c.n_ff = geti(cfgd, "n_ff");
  c.n_vocab = geti(cfgd, "n_vocab");
  c.rms_eps = cfgd["rms_eps"].cast<float>();
  const std::string rope = cfgd["rope_mode"].cast<std::string>();
  c.rope.mode = rope == "neox" ? RopeMode::Neox : RopeMode::Normal;
  c.rope.freq_base = cfgd["rope_freq_base"].cast<float>();
  c.rope.freq_scale = cfgd["rope_freq_scale"].cast<float>();
  // RoPE frequency factors (rope_freqs.weight): the model's cache copies them, so a local is enough.
  const std::vector<float> ff =
      pyargs::rope_freq_factors_arg(cfgd.contains("rope_freq_factors") ? py::object(cfgd["rope_freq_factors"]) : py::object(py::none()),
                                    "model");
  pyargs::set_rope_freq_factors(c.rope, ff);
  c.qk_norm = cfgd.contains("qk_norm") && cfgd["qk_norm"].cast<bool>();
  if (c.n_layer > 4096) throw std::invalid_argument("[model] n_layer is absurd");

  auto pm = std::make_unique<PyModel>();
  py::list& keep = pm->keepalive;
  WeightRef tok = weight(weights, "token_embd.weight", keep);
  WeightRef onorm = weight(weights, "output_norm.weight", keep);
  WeightRef out = weights.contains("output.weight") ? weight(weights, "output.weight", keep) : tok;
  std::vector<LlamaLayer> layers(c.n_layer);
  for (int64_t i = 0; i < c.n_layer; ++i) {
    const std::string b = "blk." + std::to_string(i) + ".";
    LlamaLayer& L = layers[i];
    L.attn_norm = weight(weights, b + "attn_norm.weight", keep);
    L.wq = weight(weights, b + "attn_q.weight", keep);
    L.wk = weight(weights, b + "attn_k.weight", keep);
    L.wv = weight(weights, b + "attn_v.weight", keep);
    L.wo = weight(weights, b + "attn_output.weight", keep);
    L.bq = weight(weights, b + "attn_q.bias", keep, true);
    L.bk = weight(weights, b + "attn_k.bias", keep, true);
    L.bv = weight(weights, b + "attn_v.bias", keep, true);
    L.ffn_norm = weight(weights, b + "ffn_norm.weight", keep);
    L.w_gate = weight(weights, b + "ffn_gate.weight", keep);
    L.w_up = weight(weights, b + "ffn_up.weight", keep);
    L.w_down = weight(weights, b + "ffn_down.weight", keep);
    L.q_norm = weight(weights, b + "attn_q_norm.weight", keep, true);
    L.k_norm = weight(weights, b + "attn_k_norm.weight", keep, true);
  }
  KVCacheParams kv;
  kv.page_size = (int32_t)kvd["page_size"].cast<int64_t>();
  kv.k_dtype = parse_kv_dtype(kvd["k_dtype"].cast<std::string>(), "model");
  kv.v_dtype = parse_kv_dtype(kvd["v_dtype"].cast<std::string>(), "model");
  kv.budget_tokens = kvd["budget_tokens"].cast<int64_t>();
  kv.n_ctx = kvd["n_ctx"].cast<int64_t>();
  const std::string shift = kvd["context_shift"].cast<std::string>();
  if (shift != "error" && shift != "shift")
    throw std::invalid_argument("[model] context_shift must be 'error' or 'shift', got '" + shift + "'");
  kv.shift = shift == "shift" ? ShiftPolicy::Shift : ShiftPolicy::Error;
  kv.n_keep = (int32_t)kvd["n_keep"].cast<int64_t>();
  if (threads < 0 || threads > 1024) throw std::invalid_argument("[model] threads out of range");
  pm->model = std::make_unique<LlamaModel>(c, tok, onorm, out, std::move(layers), kv, resolve_tier(isa), threads);
  return pm;
}

py::array_t<float> py_forward(PyModel& pm, const py::array& tokens, int32_t seq, bool all_logits) {
  require<int32_t>(tokens, "forward", "tokens", "int32");
  if (tokens.ndim() != 1 || tokens.shape(0) < 1)
    throw std::invalid_argument("[forward] tokens must be a non-empty 1-D int32 array");
  const int64_t n = tokens.shape(0);
  const int64_t V = pm.model->config().n_vocab;
  py::array_t<float> out = all_logits ? py::array_t<float>({(py::ssize_t)n, (py::ssize_t)V})
                                      : py::array_t<float>({(py::ssize_t)V});
  float* po = out.mutable_data();
  const int32_t* pt = (const int32_t*)tokens.data();
  {
    py::gil_scoped_release nogil;
    pm.model->forward(pt, n, seq, po, all_logits);
  }
  return out;
}

}  // namespace

void register_model(py::module_& m) {
  py::class_<PyModel>(m, "LlamaModel", "Native Llama-family decoder (use xsil.model.llama.load).")
      .def(py::init(&make_model), py::arg("config"), py::arg("weights"), py::arg("kv"), py::arg("isa") = "",
           py::arg("threads") = 0)
      .def("forward", &py_forward, py::arg("tokens"), py::arg("seq_id"), py::arg("all_logits") = true,
           "Append tokens to sequence seq_id; logits [n, vocab] (all_logits) or [vocab] (last position).")
      .def_property_readonly("cache", [](PyModel& pm) -> KVCache& { return pm.model->cache(); },
                             py::return_value_policy::reference_internal)
      .def_property_readonly("tier", [](PyModel& pm) { return std::string(tier_name(pm.model->tier())); })
      .def_property("threads", [](PyModel& pm) { return pm.model->threads(); },
                    [](PyModel& pm, int t) {
                      if (t < 0 || t > 1024) throw std::invalid_argument("[model] threads out of range");
                      pm.model->set_threads(t);
                    })
      .def_property("exact", [](PyModel& pm) { return pm.model->exact(); },
                    [](PyModel& pm, bool e) { pm.model->set_exact(e); })
      .def_property_readonly("weight_bytes_per_token", [](PyModel& pm) { return pm.model->weight_bytes_per_token(); });
}

}  // namespace xsil::bind
