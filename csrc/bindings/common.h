// Helpers shared by the binding files: strict NumPy argument checks with op-prefixed errors.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "bindings/arrays.h"
#include "cpu/checks.h"

namespace py = pybind11;

#include "cpu/q4_matmul.h"

namespace xsil::bind {

// Python-side handle of packed weights (xsil.PackedWeights).
struct PyPacked {
  PackedWeights pw;
  py::object keepalive;  // the caller's array when packed in place
};

using pyargs::dtype_str;
using pyargs::require;
using pyargs::require_shape;
using pyargs::shape_str;

// None = the whole pool (0); otherwise the shared range check (cpu/checks.h).
inline int check_threads(py::object threads, const char* op) {
  if (threads.is_none()) return 0;
  const long long t = threads.cast<long long>();
  xsil::check_threads(t, op);
  return (int)t;
}

void register_cpu(py::module_& m);
void register_quant(py::module_& m);
void register_matmul(py::module_& m);
void register_model(py::module_& m);
void register_attention(py::module_& m);

}  // namespace xsil::bind
