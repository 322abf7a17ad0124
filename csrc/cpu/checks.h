// Argument validation shared by every front end (the pybind11 module and the C ABI), so both
// reject the same inputs with the same "[op] ..." messages. Each check throws std::invalid_argument
// before any kernel touches memory. (The matmul checks are check_matmul / parse_fmt in q4_matmul.h.)
#pragma once
#include <cstdint>

#include "xsil/blocks.h"

namespace xsil {

// An explicit thread count: [1, 1024]. (Front ends map "not given" to 0 = the whole pool.)
void check_threads(int64_t threads, const char* op);

// Format from a GGML type id; throws naming `op` and the supported formats if unknown (or, with
// allow_no_quantizer = false, a format xsil cannot quantize to: the K-quants).
Fmt fmt_from_id(int64_t id, const char* op, bool allow_no_quantizer = true);

// `value` (named `what`, e.g. "cols" or "K") must be a multiple of fmt's block size, and >= 1 when
// `positive` (>= 0 otherwise). Returns the bytes of one row of `value` weights.
int64_t check_block_multiple(Fmt fmt, int64_t value, const char* op, const char* what, bool positive);

// rows * row_bytes without overflow; throws naming op otherwise.
int64_t checked_bytes(int64_t rows, int64_t row_bytes, const char* op);

// Quantization needs finite input: throws naming the first non-finite flat index.
void check_finite(const float* x, int64_t n, const char* op);

}  // namespace xsil
