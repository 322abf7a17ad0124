// Helpers shared by the binding files: strict NumPy argument checks with op-prefixed errors.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "cpu/checks.h"

namespace py = pybind11;

#include "cpu/q4_matmul.h"

namespace xsil::bind {

// Python-side handle of packed weights (xsil.PackedWeights).
struct PyPacked {
  PackedWeights pw;
  py::object keepalive;  // the caller's array when packed in place
};

inline std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  if (a.ndim() == 1) s += ",";
  return s + ")";
}

inline std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// Requires dtype T and C-contiguity; names the op, the argument and what to do.
template <typename T>
void require(const py::array& a, const char* op, const char* arg, const char* expect_dtype) {
  if (!a.dtype().equal(py::dtype::of<T>()))  // equivalent dtypes (e.g. from ctypes buffers) pass
    throw std::invalid_argument(std::string("[") + op + "] " + arg + " must be " + expect_dtype + ", got " +
                                dtype_str(a) + " (convert with .astype(np." + expect_dtype + "))");
  if (!(a.flags() & py::array::c_style))
    throw std::invalid_argument(std::string("[") + op + "] " + arg +
                                " must be C-contiguous (use np.ascontiguousarray)");
}

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
