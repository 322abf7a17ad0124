// NumPy argument checks shared by every binding (xsil._core and xsil._cuda): dtype, contiguity and
// shape, with errors that name the op, the argument and what to do.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace xsil::pyargs {

namespace py = pybind11;

inline std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  if (a.ndim() == 1) s += ",";
  return s + ")";
}

inline std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// Requires dtype T and C-contiguity.
template <typename T>
void require(const py::array& a, const char* op, const char* arg, const char* expect_dtype) {
  if (!a.dtype().equal(py::dtype::of<T>()))  // equivalent dtypes (e.g. from ctypes buffers) pass
    throw std::invalid_argument(std::string("[") + op + "] " + arg + " must be " + expect_dtype + ", got " +
                                dtype_str(a) + " (convert with .astype(np." + expect_dtype + "))");
  if (!(a.flags() & py::array::c_style))
    throw std::invalid_argument(std::string("[") + op + "] " + arg +
                                " must be C-contiguous (use np.ascontiguousarray)");
}

inline void require_shape(const py::array& a, const std::vector<int64_t>& want, const char* op, const char* arg) {
  bool ok = a.ndim() == (py::ssize_t)want.size();
  for (size_t i = 0; ok && i < want.size(); ++i) ok = a.shape(i) == want[i];
  if (!ok) {
    std::string s = "(";
    for (size_t i = 0; i < want.size(); ++i) s += (i ? ", " : "") + std::to_string(want[i]);
    s += want.size() == 1 ? ",)" : ")";
    throw std::invalid_argument(std::string("[") + op + "] " + arg + " must have shape " + s + ", got " +
                                shape_str(a));
  }
}

// Optional RoPE frequency factors (None, or a 1-D float32 array): copied into a vector (empty for
// None). Their count and values are checked where they are used (check_rope_freq_factors).
inline std::vector<float> rope_freq_factors_arg(const py::object& o, const char* op) {
  if (o.is_none()) return {};
  if (!py::isinstance<py::array>(o))
    throw std::invalid_argument(std::string("[") + op + "] rope_freq_factors must be None or a 1-D float32 array");
  py::array a = o.cast<py::array>();
  require<float>(a, op, "rope_freq_factors", "float32");
  if (a.ndim() != 1 || a.shape(0) < 1)
    throw std::invalid_argument(std::string("[") + op + "] rope_freq_factors must be a non-empty 1-D array, got shape " +
                                shape_str(a));
  const float* d = (const float*)a.data();
  return std::vector<float>(d, d + a.shape(0));
}

// Points rp at ff (nullptr when empty). ff must outlive every use of rp.
template <class R>
void set_rope_freq_factors(R& rp, const std::vector<float>& ff) {
  rp.freq_factors = ff.empty() ? nullptr : ff.data();
  rp.n_freq_factors = (int32_t)ff.size();
}

}  // namespace xsil::pyargs
