// quantize / dequantize between fp32 and GGUF block rows.
#include "bindings/common.h"
#include "cpu/checks.h"
#include "cpu/q4_matmul.h"
#include "cpu/quant.h"

namespace xsil::bind {

static py::array_t<uint8_t> py_quantize(const py::array& x, const std::string& fmt_name, py::object threads) {
  const char* op = "quantize";
  const Fmt fmt = parse_fmt(fmt_name, op, /*allow_no_quantizer=*/false);
  require<float>(x, op, "x", "float32");
  if (x.ndim() != 2)
    throw std::invalid_argument(std::string("[quantize] x must be 2-D [rows, cols], got shape ") + shape_str(x));
  const int64_t rows = x.shape(0), cols = x.shape(1);
  check_block_multiple(fmt, cols, op, "cols", /*positive=*/false);
  const int nt = check_threads(threads, op);
  const float* px = (const float*)x.data();
  check_finite(px, rows * cols, op);
  const int64_t rb = fmt_row_bytes(fmt, cols);
  py::array_t<uint8_t> out({(py::ssize_t)rows, (py::ssize_t)rb});
  uint8_t* po = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    quantize_rows(px, po, rows, cols, fmt, nt);
  }
  return out;
}

static py::array_t<float> py_dequantize(const py::array& blocks, const std::string& fmt_name, int64_t cols,
                                        py::object threads) {
  const char* op = "dequantize";
  const Fmt fmt = parse_fmt(fmt_name, op);
  require<uint8_t>(blocks, op, "blocks", "uint8");
  const FmtInfo* fi = fmt_info(fmt);
  check_block_multiple(fmt, cols, op, "cols", /*positive=*/true);
  const int64_t rb = fmt_row_bytes(fmt, cols);
  int64_t rows;
  if (blocks.ndim() == 2) {
    if (blocks.shape(1) != rb)
      throw std::invalid_argument("[dequantize] blocks have " + std::to_string(blocks.shape(1)) +
                                  " bytes per row; cols=" + std::to_string(cols) + " in " + fi->name + " need " +
                                  std::to_string(rb));
    rows = blocks.shape(0);
  } else if (blocks.ndim() == 1) {
    if (blocks.shape(0) % rb != 0)
      throw std::invalid_argument("[dequantize] blocks have " + std::to_string(blocks.shape(0)) +
                                  " bytes, not a whole number of rows of " + std::to_string(rb) + " bytes (cols=" +
                                  std::to_string(cols) + " in " + fi->name + ")");
    rows = blocks.shape(0) / rb;
  } else {
    throw std::invalid_argument("[dequantize] blocks must be 1-D or 2-D uint8, got shape " + shape_str(blocks));
  }
  const int nt = check_threads(threads, op);
  py::array_t<float> out({(py::ssize_t)rows, (py::ssize_t)cols});
  float* po = out.mutable_data();
  const void* pb = blocks.data();
  {
    py::gil_scoped_release nogil;
    dequantize_rows(pb, po, rows, cols, fmt, nt);
  }
  return out;
}

void register_quant(py::module_& m) {
  m.def("quantize", &py_quantize, py::arg("x"), py::arg("fmt"), py::arg("threads") = py::none(),
        "Quantize float32 [rows, cols] to GGUF Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 rows: uint8 [rows, cols/32*type_size].");
  m.def("dequantize", &py_dequantize, py::arg("blocks"), py::arg("fmt"), py::arg("cols"),
        py::arg("threads") = py::none(), "Dequantize GGUF rows (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) to float32 [rows, cols].");
  m.def("format_info", [](const std::string& name) {
    const FmtInfo* fi = fmt_info(parse_fmt(name, "format_info"));
    py::dict d;
    d["name"] = fi->name;
    d["ggml_type"] = (int)fi->fmt;
    d["block_size"] = fi->block_size;
    d["type_size"] = fi->type_size;
    return d;
  }, py::arg("fmt"), "Block size and bytes per block of a format.");
}

}  // namespace xsil::bind
