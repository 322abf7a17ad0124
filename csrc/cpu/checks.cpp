#include "cpu/checks.h"

#include <cmath>
#include <stdexcept>
#include <string>

namespace xsil {

namespace {
std::string str(int64_t v) { return std::to_string(v); }
}  // namespace

void check_threads(int64_t threads, const char* op) {
  if (threads < 1 || threads > 1024)
    throw std::invalid_argument(std::string("[") + op + "] threads=" + str(threads) + " is out of range [1, 1024]");
}

Fmt fmt_from_id(int64_t id, const char* op, bool allow_no_quantizer) {
  const Fmt f = (Fmt)(int32_t)id;
  if (id >= 0 && id <= 64 && fmt_info(f) && (allow_no_quantizer || fmt_has_quantizer(f))) return f;
  throw std::invalid_argument(std::string("[") + op + "] unsupported format id " + str(id) + "; expected one of " +
                              (allow_no_quantizer ? "Q4_0 (2), Q4_1 (3), Q5_0 (6), Q5_1 (7), Q8_0 (8), Q4_K (12), "
                                                    "Q5_K (13), Q6_K (14)"
                                                  : "Q4_0 (2), Q4_1 (3), Q5_0 (6), Q5_1 (7), Q8_0 (8)"));
}

int64_t check_block_multiple(Fmt fmt, int64_t value, const char* op, const char* what, bool positive) {
  const FmtInfo* fi = fmt_info(fmt);
  if (!fi) throw std::invalid_argument(std::string("[") + op + "] unsupported weight format id " + str((int)fmt));
  if (positive ? value < 1 : value < 0)
    throw std::invalid_argument(std::string("[") + op + "] " + what + "=" + str(value) + " is not a " +
                                (positive ? "positive" : "non-negative") + " multiple of the " + fi->name +
                                " block size " + str(fi->block_size));
  if (value % fi->block_size != 0)
    throw std::invalid_argument(std::string("[") + op + "] " + what + "=" + str(value) + " is not a " +
                                (positive ? "positive multiple" : "multiple") + " of the " + fi->name + " block size " +
                                str(fi->block_size));
  return value / fi->block_size * fi->type_size;
}

int64_t checked_bytes(int64_t rows, int64_t row_bytes, const char* op) {
  if (rows < 0) throw std::invalid_argument(std::string("[") + op + "] rows=" + str(rows) + " must be >= 0");
  if (row_bytes > 0 && rows > INT64_MAX / row_bytes)
    throw std::invalid_argument(std::string("[") + op + "] rows=" + str(rows) + " of " + str(row_bytes) +
                                " bytes overflow a 64-bit size");
  return rows * row_bytes;
}

void check_finite(const float* x, int64_t n, const char* op) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i]))
      throw std::invalid_argument(std::string("[") + op + "] x has a non-finite value at flat index " + str(i) +
                                  "; quantization needs finite weights");
}

}  // namespace xsil
