// xsil._core: one pybind11 module; each kernel family registers itself from its own file.
#include "bindings/common.h"

PYBIND11_MODULE(_core, m) {
  m.doc() = "xsil native core: GGUF block kernels with run-time ISA dispatch";
  m.attr("__version__") = "0.1.0";
  xsil::bind::register_cpu(m);
  xsil::bind::register_quant(m);
  xsil::bind::register_matmul(m);
  xsil::bind::register_model(m);
  xsil::bind::register_attention(m);
}
