// matmul and weight packing.
#include "bindings/common.h"
#include "cpu/checks.h"
#include "cpu/q4_matmul.h"

namespace xsil::bind {

namespace {

const char* fmt_name(Fmt f) { return fmt_info(f)->name; }

py::array_t<float> py_matmul(const py::array& x, const py::object& w, const std::string& fmt_s, py::object threads,
                             const std::string& isa, bool exact) {
  const char* op = "matmul";
  const Fmt fmt = parse_fmt(fmt_s, op);
  require<float>(x, op, "x", "float32");
  if (x.ndim() != 2)
    throw std::invalid_argument("[matmul] x must be 2-D [M, K], got shape " + shape_str(x));
  const int nt = check_threads(threads, op);
  MatmulParams p;
  p.fmt = fmt;
  p.M = x.shape(0);
  p.K = x.shape(1);
  p.ldx = p.K;
  p.x = (const float*)x.data();
  const MatmulKernels* k = &matmul_kernels(resolve_tier(isa));
  int64_t w_bytes = 0;
  const FmtInfo* fi = fmt_info(fmt);
  if (py::isinstance<PyPacked>(w)) {
    const PyPacked& pk = w.cast<const PyPacked&>();
    if (pk.pw.fmt != fmt)
      throw std::invalid_argument(std::string("[matmul] packed weights are ") + fmt_name(pk.pw.fmt) + ", not " + fi->name);
    if (!isa.empty() && isa != "auto" && isa != tier_name(pk.pw.tier))
      throw std::invalid_argument(std::string("[matmul] weights were packed for tier '") + tier_name(pk.pw.tier) +
                                  "', not '" + isa + "'");
    if (pk.pw.K != p.K)
      throw std::invalid_argument("[matmul] x has K=" + std::to_string(p.K) + " but the packed weights have K=" +
                                  std::to_string(pk.pw.K));
    k = &matmul_kernels(pk.pw.tier);
    p.w = pk.pw.data;
    p.w_packed = true;
    p.N = pk.pw.N;
    w_bytes = pk.pw.nbytes;
    if (exact) throw std::invalid_argument("[matmul] exact=True reads GGUF rows; pass the unpacked weights");
  } else {
    if (!py::isinstance<py::array>(w))
      throw std::invalid_argument("[matmul] w must be a uint8 numpy array of GGUF rows or PackedWeights");
    py::array wa = w.cast<py::array>();
    require<uint8_t>(wa, op, "w", "uint8");
    if (wa.ndim() != 2)
      throw std::invalid_argument("[matmul] w must be 2-D [N, K/" + std::to_string(fi->block_size) + "*" +
                                  std::to_string(fi->type_size) + "] uint8, got shape " + shape_str(wa));
    const int64_t rb = check_block_multiple(fmt, p.K, op, "K", /*positive=*/false);
    if (wa.shape(1) != rb)
      throw std::invalid_argument("[matmul] w has " + std::to_string(wa.shape(1)) + " bytes per row; K=" +
                                  std::to_string(p.K) + " in " + fi->name + " needs " + std::to_string(rb));
    p.N = wa.shape(0);
    p.w = wa.data();
    w_bytes = wa.nbytes();
  }
  p.ldy = p.N;
  check_matmul(p, w_bytes, nt);
  py::array_t<float> y({(py::ssize_t)p.M, (py::ssize_t)p.N});
  p.y = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    matmul(p, *k, nt, exact);
  }
  return y;
}

py::object py_pack(py::array w, const std::string& fmt_s, const std::string& isa, bool inplace, py::object threads) {
  const char* op = "pack";
  const Fmt fmt = parse_fmt(fmt_s, op);
  require<uint8_t>(w, op, "w", "uint8");
  const FmtInfo* fi = fmt_info(fmt);
  if (w.ndim() != 2) throw std::invalid_argument("[pack] w must be 2-D [N, row_bytes] uint8, got shape " + shape_str(w));
  const int64_t rb = w.shape(1);
  if (rb <= 0 || rb % fi->type_size != 0)
    throw std::invalid_argument("[pack] w has " + std::to_string(rb) + " bytes per row, not a whole number of " +
                                fi->name + " blocks (" + std::to_string(fi->type_size) + " bytes)");
  const int64_t K = rb / fi->type_size * fi->block_size;
  const int nt = check_threads(threads, op);
  const MatmulKernels& k = matmul_kernels(resolve_tier(isa));
  if (inplace && !w.writeable())
    throw std::invalid_argument("[pack] inplace=True needs a writeable array (the mmap is read-only?)");
  auto res = std::make_unique<PyPacked>();
  bool ok;
  {
    uint8_t* dst = inplace ? (uint8_t*)w.mutable_data() : nullptr;
    const void* src = w.data();
    const int64_t N = w.shape(0);
    py::gil_scoped_release nogil;
    ok = pack_weights(src, dst, fmt, N, K, k, nt, &res->pw);
  }
  if (!ok) return py::none();
  if (inplace) res->keepalive = w;
  return py::cast(std::move(res));
}

}  // namespace

void register_matmul(py::module_& m) {
  py::class_<PyPacked>(m, "PackedWeights",
                       "Weights repacked once for one ISA tier; same byte size as the GGUF rows they came from.")
      .def_property_readonly("fmt", [](const PyPacked& p) { return std::string(fmt_name(p.pw.fmt)); })
      .def_property_readonly("tier", [](const PyPacked& p) { return std::string(tier_name(p.pw.tier)); })
      .def_property_readonly("shape", [](const PyPacked& p) { return py::make_tuple(p.pw.N, p.pw.K); })
      .def_property_readonly("nbytes", [](const PyPacked& p) { return p.pw.nbytes; })
      .def_property_readonly("inplace", [](const PyPacked& p) { return !p.keepalive.is_none(); })
      .def("__repr__", [](const PyPacked& p) {
        return "PackedWeights(fmt=" + std::string(fmt_name(p.pw.fmt)) + ", tier=" + tier_name(p.pw.tier) + ", shape=(" +
               std::to_string(p.pw.N) + ", " + std::to_string(p.pw.K) + "), nbytes=" + std::to_string(p.pw.nbytes) + ")";
      });
  m.def("matmul", &py_matmul, py::arg("x"), py::arg("w"), py::arg("fmt"), py::arg("threads") = py::none(),
        py::arg("isa") = "", py::arg("exact") = false,
        "y[M, N] = x[M, K] . W[N, K]^T; W as GGUF rows (uint8 [N, K/bs*ts]) or PackedWeights.");
  m.def("pack", &py_pack, py::arg("w"), py::arg("fmt"), py::arg("isa") = "", py::arg("inplace") = false,
        py::arg("threads") = py::none(),
        "Repack GGUF rows for a tier's kernels. Returns PackedWeights, or None if the tier reads GGUF rows as they are.");
}

}  // namespace xsil::bind
