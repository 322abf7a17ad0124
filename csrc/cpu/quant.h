// Weight (de)quantization between fp32 and GGUF block rows. Scalar, bit-exact with gguf-py
// (gguf.quants.quantize / dequantize); driven over rows in parallel by the thread pool.
#pragma once
#include <cstdint>

#include "xsil/blocks.h"

namespace xsil {

// x: rows x cols floats (row-major, contiguous). out: rows * (cols / block) blocks.
// Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 (the formats gguf-py quantizes). Non-finite input is rejected by the caller before this runs.
void quantize_rows(const float* x, void* out, int64_t rows, int64_t cols, Fmt fmt, int threads);
// blocks: rows * (cols / block) blocks. out: rows x cols floats. Every format in fmt_info.
void dequantize_rows(const void* blocks, float* out, int64_t rows, int64_t cols, Fmt fmt, int threads);

// One row, scalar: used by the drivers and the exact matmul path.
void dequantize_row(const void* blocks, float* out, int64_t cols, Fmt fmt);
void quantize_row_q4_0(const float* x, block_q4_0* y, int64_t k);
void quantize_row_q8_0(const float* x, block_q8_0* y, int64_t k);
void quantize_row_q4_1(const float* x, block_q4_1* y, int64_t k);
void quantize_row_q5_0(const float* x, block_q5_0* y, int64_t k);
void quantize_row_q5_1(const float* x, block_q5_1* y, int64_t k);

// Q6_K quant of element e (0..255) of a block, in [0, 63] (the weight is d * sc[e / 16] * (q - 32)).
inline int q6k_quant(const block_q6_K& b, int e) {
  const int h = e / 128, s = (e % 128) / 32, l = e % 32;
  const int lo = (b.ql[64 * h + 32 * (s & 1) + l] >> (4 * (s >> 1))) & 0x0F;
  const int hi = (b.qh[32 * h + l] >> (2 * s)) & 0x03;
  return lo | (hi << 4);
}

// Q5_K quant of element e (0..255), in [0, 31].
inline int q5k_quant(const block_q5_K& b, int e) {
  const int j = e / 32, l = e % 32;
  return ((b.qs[32 * (j / 2) + l] >> (4 * (j & 1))) & 0x0F) | (((b.qh[l] >> j) & 1) << 4);
}

// Q5_0 / Q5_1 quant of element j (0..31) given the block's qs and qh, in [0, 31].
inline int q5_quant(const uint8_t* qs, const uint8_t* qh, int j) {
  const int lo = (j < 16 ? qs[j] : qs[j - 16] >> 4) & 0x0F;
  return lo | (((qh[j / 8] >> (j % 8)) & 1) << 4);
}

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
