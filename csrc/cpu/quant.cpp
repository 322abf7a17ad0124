#include "cpu/quant.h"

#include <cmath>

#include "core/fp16.h"
#include "core/threadpool.h"

namespace xsil {

// trunc(t) clipped to [0, 15]. t >= 0 for finite blocks. When d underflows to an fp32 subnormal,
// 1/d is inf and t is inf or NaN: fp16(d) is 0 then, so every weight dequantizes to 0 whatever the
// nibble; we write 0 there, as gguf-py's float->uint8 cast does on x86 (C's cast would be undefined).
static inline int q4_0_level(float t) {
  if (!(t >= 0.0f) || t >= 2147483648.0f) return 0;
  const int q = (int)t;
  return q > 15 ? 15 : q;
}

// round(t), half away from zero. |t| <= 127.5 for finite blocks with a normal d. When d underflows
// to an fp32 subnormal, fp16(d) is 0 and every weight dequantizes to 0 whatever q, but t can be
// inf or NaN (1/d overflows) or just above 127.5 (d lost precision): we write 0 for a non-finite t
// and wrap 128 to -128, as the x86 float->int32->int8 conversion behind gguf-py's astype does; a
// direct float->int8 cast would be undefined in C++ for those values.
static inline int8_t q8_0_level(float t) {
  if (!(std::fabs(t) < 2147483648.0f)) return 0;
  return (int8_t)(uint8_t)(uint32_t)(int32_t)std::roundf(t);
}

void quantize_row_q4_0(const float* x, block_q4_0* y, int64_t k) {
  const int64_t nb = k / QK4_0;
  for (int64_t i = 0; i < nb; ++i) {
    const float* xb = x + i * QK4_0;
    // The element of largest magnitude, first one on ties (numpy argmax semantics), keeps its sign:
    // it maps to q = 0 exactly, so the block uses the full [-8, 7] range on its side.
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < QK4_0; ++j) {
      const float v = xb[j];
      if (std::fabs(v) > amax) { amax = std::fabs(v); max = v; }
    }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = fp32_to_fp16(d);
    for (int j = 0; j < QK4_0 / 2; ++j) {
      const int q0 = q4_0_level(xb[j] * id + 8.5f);
      const int q1 = q4_0_level(xb[j + QK4_0 / 2] * id + 8.5f);
      y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
    }
  }
}

void quantize_row_q8_0(const float* x, block_q8_0* y, int64_t k) {
  const int64_t nb = k / QK8_0;
  for (int64_t i = 0; i < nb; ++i) {
    const float* xb = x + i * QK8_0;
    float amax = 0.0f;
    for (int j = 0; j < QK8_0; ++j) amax = std::fmax(amax, std::fabs(xb[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = fp32_to_fp16(d);
    for (int j = 0; j < QK8_0; ++j) y[i].qs[j] = q8_0_level(xb[j] * id);
  }
}

static void dequantize_row_q4_0(const block_q4_0* x, float* y, int64_t k) {
  const int64_t nb = k / QK4_0;
  for (int64_t i = 0; i < nb; ++i) {
    const float d = fp16_to_fp32(x[i].d);
    for (int j = 0; j < QK4_0 / 2; ++j) {
      y[i * QK4_0 + j] = d * (float)((x[i].qs[j] & 0x0F) - 8);
      y[i * QK4_0 + j + QK4_0 / 2] = d * (float)((x[i].qs[j] >> 4) - 8);
    }
  }
}

static void dequantize_row_q8_0(const block_q8_0* x, float* y, int64_t k) {
  const int64_t nb = k / QK8_0;
  for (int64_t i = 0; i < nb; ++i) {
    const float d = fp16_to_fp32(x[i].d);
    for (int j = 0; j < QK8_0; ++j) y[i * QK8_0 + j] = (float)x[i].qs[j] * d;
  }
}

static void dequantize_row_q4_k(const block_q4_K* x, float* y, int64_t k) {
  const int64_t nb = k / QK_K;
  for (int64_t i = 0; i < nb; ++i) {
    const float d = fp16_to_fp32(x[i].d);
    const float dmin = fp16_to_fp32(x[i].dmin);
    const uint8_t* q = x[i].qs;
    float* yb = y + i * QK_K;
    for (int g = 0; g < 4; ++g) {
      uint8_t sc, m;
      q4k_scale_min(2 * g, x[i].scales, &sc, &m);
      const float d1 = d * (float)sc, m1 = dmin * (float)m;
      q4k_scale_min(2 * g + 1, x[i].scales, &sc, &m);
      const float d2 = d * (float)sc, m2 = dmin * (float)m;
      for (int l = 0; l < 32; ++l) yb[64 * g + l] = d1 * (float)(q[32 * g + l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l) yb[64 * g + 32 + l] = d2 * (float)(q[32 * g + l] >> 4) - m2;
    }
  }
}

void dequantize_row(const void* blocks, float* out, int64_t cols, Fmt fmt) {
  switch (fmt) {
    case Fmt::Q4_0: dequantize_row_q4_0((const block_q4_0*)blocks, out, cols); break;
    case Fmt::Q8_0: dequantize_row_q8_0((const block_q8_0*)blocks, out, cols); break;
    case Fmt::Q4_K: dequantize_row_q4_k((const block_q4_K*)blocks, out, cols); break;
    default: break;
  }
}

static int64_t row_bytes(int64_t cols, Fmt fmt) {
  const FmtInfo* fi = fmt_info(fmt);
  return cols / fi->block_size * fi->type_size;
}

// Rows per task: enough work per task to amortize dispatch, small enough to balance.
static int64_t rows_per_task(int64_t cols) {
  int64_t r = (1 << 16) / (cols > 0 ? cols : 1);
  return r < 1 ? 1 : r;
}

void quantize_rows(const float* x, void* out, int64_t rows, int64_t cols, Fmt fmt, int threads) {
  const int64_t rb = row_bytes(cols, fmt);
  const int64_t per = rows_per_task(cols);
  const int64_t n_tasks = (rows + per - 1) / per;
  ThreadPool::global().parallel_for(n_tasks, threads, [&](int64_t t, int) {
    const int64_t r1 = (t + 1) * per < rows ? (t + 1) * per : rows;
    for (int64_t r = t * per; r < r1; ++r) {
      uint8_t* dst = (uint8_t*)out + r * rb;
      if (fmt == Fmt::Q4_0) quantize_row_q4_0(x + r * cols, (block_q4_0*)dst, cols);
      else quantize_row_q8_0(x + r * cols, (block_q8_0*)dst, cols);
    }
  });
}

void dequantize_rows(const void* blocks, float* out, int64_t rows, int64_t cols, Fmt fmt, int threads) {
  const int64_t rb = row_bytes(cols, fmt);
  const int64_t per = rows_per_task(cols);
  const int64_t n_tasks = (rows + per - 1) / per;
  ThreadPool::global().parallel_for(n_tasks, threads, [&](int64_t t, int) {
    const int64_t r1 = (t + 1) * per < rows ? (t + 1) * per : rows;
    for (int64_t r = t * per; r < r1; ++r)
      dequantize_row((const uint8_t*)blocks + r * rb, out + r * cols, cols, fmt);
  });
}

}  // namespace xsil
