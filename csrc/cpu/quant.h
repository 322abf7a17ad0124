// Weight (de)quantization between fp32 and GGUF block rows. Scalar, bit-exact with gguf-py
// (gguf.quants.quantize / dequantize); driven over rows in parallel by the thread pool.
#pragma once
#include <cstdint>

#include "xsil/blocks.h"

namespace xsil {

// x: rows x cols floats (row-major, contiguous). out: rows * (cols / block) blocks.
// Q4_0 and Q8_0 only. Non-finite input is rejected by the caller before this runs.
void quantize_rows(const float* x, void* out, int64_t rows, int64_t cols, Fmt fmt, int threads);
// blocks: rows * (cols / block) blocks. out: rows x cols floats. Q4_0, Q8_0, Q4_K.
void dequantize_rows(const void* blocks, float* out, int64_t rows, int64_t cols, Fmt fmt, int threads);

// One row, scalar: used by the drivers and the exact matmul path.
void dequantize_row(const void* blocks, float* out, int64_t cols, Fmt fmt);
void quantize_row_q4_0(const float* x, block_q4_0* y, int64_t k);
void quantize_row_q8_0(const float* x, block_q8_0* y, int64_t k);

// Q4_K sub-block scale j (0..7) and min, 6 bits each, from the packed 12 bytes.
inline void q4k_scale_min(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

}  // namespace xsil
