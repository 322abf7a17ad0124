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

// float -> uint8 as NumPy's astype(np.uint8) does it on x86 (through int32, keeping the low byte; 0
// for NaN, infinities and values outside int32). gguf-py's Q4_1 / Q5_0 / Q5_1 quantizers cast before
// clipping; for finite blocks with a normal scale the value is in [0, 33) and this is plain trunc.
static inline int numpy_u8(float t) {
  if (!(std::fabs(t) < 2147483648.0f)) return 0;
  return (int)(uint8_t)(uint32_t)(int32_t)t;
}

// The element of largest magnitude with its sign, first one on ties (numpy argmax semantics).
static inline float signed_absmax(const float* xb, int n) {
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < n; ++j)
    if (std::fabs(xb[j]) > amax) { amax = std::fabs(xb[j]); max = xb[j]; }
  return max;
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

// Q4_1 / Q5_1: d = (max - min) / levels, q = trunc((x - min) * id + 0.5) clipped, m = min.
template <int LEVELS>
static void quantize_min_max(const float* xb, uint16_t* d16, uint16_t* m16, int q[32]) {
  float mx = xb[0], mn = xb[0];
  for (int j = 1; j < 32; ++j) {
    mx = std::fmax(mx, xb[j]);
    mn = std::fmin(mn, xb[j]);
  }
  const float d = (mx - mn) / (float)LEVELS;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  for (int j = 0; j < 32; ++j) {
    const int v = numpy_u8(std::trunc((xb[j] - mn) * id + 0.5f));
    q[j] = v > LEVELS ? LEVELS : v;
  }
  *d16 = fp32_to_fp16(d);
  *m16 = fp32_to_fp16(mn);
}

// Low nibbles of 32 quants as Q4_0 (element j low, j + 16 high) and their 5th bits as a uint32.
static void pack_q5(const int q[32], uint8_t qs[16], uint8_t qh[4]) {
  uint32_t h = 0;
  for (int j = 0; j < 16; ++j) qs[j] = (uint8_t)((q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4));
  for (int j = 0; j < 32; ++j) h |= (uint32_t)((q[j] >> 4) & 1) << j;
  for (int b = 0; b < 4; ++b) qh[b] = (uint8_t)(h >> (8 * b));
}

void quantize_row_q4_1(const float* x, block_q4_1* y, int64_t k) {
  for (int64_t i = 0; i < k / QK4_1; ++i) {
    int q[32];
    quantize_min_max<15>(x + i * QK4_1, &y[i].d, &y[i].m, q);
    for (int j = 0; j < 16; ++j) y[i].qs[j] = (uint8_t)(q[j] | (q[j + 16] << 4));
  }
}

void quantize_row_q5_1(const float* x, block_q5_1* y, int64_t k) {
  for (int64_t i = 0; i < k / QK5_1; ++i) {
    int q[32];
    quantize_min_max<31>(x + i * QK5_1, &y[i].d, &y[i].m, q);
    pack_q5(q, y[i].qs, y[i].qh);
  }
}

// Q5_0: d = max / -16 (max: signed largest magnitude), q = trunc(x * id + 16.5) clipped to [0, 31].
void quantize_row_q5_0(const float* x, block_q5_0* y, int64_t k) {
  for (int64_t i = 0; i < k / QK5_0; ++i) {
    const float* xb = x + i * QK5_0;
    const float d = signed_absmax(xb, QK5_0) / -16.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    int q[32];
    for (int j = 0; j < 32; ++j) {
      const int v = numpy_u8(std::trunc(xb[j] * id + 16.5f));
      q[j] = v > 31 ? 31 : v;
    }
    y[i].d = fp32_to_fp16(d);
    pack_q5(q, y[i].qs, y[i].qh);
  }
}

static inline uint32_t q5_high_bits(const uint8_t qh[4]) {
  return (uint32_t)qh[0] | ((uint32_t)qh[1] << 8) | ((uint32_t)qh[2] << 16) | ((uint32_t)qh[3] << 24);
}

static void dequantize_row_q4_1(const block_q4_1* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / QK4_1; ++i) {
    const float d = fp16_to_fp32(x[i].d), m = fp16_to_fp32(x[i].m);
    for (int j = 0; j < 16; ++j) {
      y[i * 32 + j] = d * (float)(x[i].qs[j] & 0x0F) + m;
      y[i * 32 + j + 16] = d * (float)(x[i].qs[j] >> 4) + m;
    }
  }
}

static void dequantize_row_q5_0(const block_q5_0* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / QK5_0; ++i) {
    const float d = fp16_to_fp32(x[i].d);
    const uint32_t h = q5_high_bits(x[i].qh);
    for (int j = 0; j < 32; ++j) {
      const int q = ((j < 16 ? x[i].qs[j] : x[i].qs[j - 16] >> 4) & 0x0F) | (int)(((h >> j) & 1) << 4);
      y[i * 32 + j] = d * (float)(q - 16);
    }
  }
}

static void dequantize_row_q5_1(const block_q5_1* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / QK5_1; ++i) {
    const float d = fp16_to_fp32(x[i].d), m = fp16_to_fp32(x[i].m);
    const uint32_t h = q5_high_bits(x[i].qh);
    for (int j = 0; j < 32; ++j) {
      const int q = ((j < 16 ? x[i].qs[j] : x[i].qs[j - 16] >> 4) & 0x0F) | (int)(((h >> j) & 1) << 4);
      y[i * 32 + j] = d * (float)q + m;
    }
  }
}

static void dequantize_row_q5_k(const block_q5_K* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / QK_K; ++i) {
    const float d = fp16_to_fp32(x[i].d), dmin = fp16_to_fp32(x[i].dmin);
    float* yb = y + i * QK_K;
    for (int j = 0; j < 8; ++j) {
      uint8_t sc, m;
      q4k_scale_min(j, x[i].scales, &sc, &m);
      const float d1 = d * (float)sc, m1 = dmin * (float)m;
      const uint8_t* q = x[i].qs + 32 * (j / 2);
      const int shift = 4 * (j & 1);
      for (int l = 0; l < 32; ++l) {
        const int v = ((q[l] >> shift) & 0x0F) | (((x[i].qh[l] >> j) & 1) << 4);
        yb[32 * j + l] = d1 * (float)v - m1;
      }
    }
  }
}

static void dequantize_row_q6_k(const block_q6_K* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / QK_K; ++i) {
    const float d = fp16_to_fp32(x[i].d);
    float* yb = y + i * QK_K;
    for (int e = 0; e < QK_K; ++e) yb[e] = (d * (float)x[i].scales[e / 16]) * (float)(q6k_quant(x[i], e) - 32);
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
    case Fmt::Q4_1: dequantize_row_q4_1((const block_q4_1*)blocks, out, cols); break;
    case Fmt::Q5_0: dequantize_row_q5_0((const block_q5_0*)blocks, out, cols); break;
    case Fmt::Q5_1: dequantize_row_q5_1((const block_q5_1*)blocks, out, cols); break;
    case Fmt::Q5_K: dequantize_row_q5_k((const block_q5_K*)blocks, out, cols); break;
    case Fmt::Q6_K: dequantize_row_q6_k((const block_q6_K*)blocks, out, cols); break;
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
      switch (fmt) {
        case Fmt::Q4_0: quantize_row_q4_0(x + r * cols, (block_q4_0*)dst, cols); break;
        case Fmt::Q4_1: quantize_row_q4_1(x + r * cols, (block_q4_1*)dst, cols); break;
        case Fmt::Q5_0: quantize_row_q5_0(x + r * cols, (block_q5_0*)dst, cols); break;
        case Fmt::Q5_1: quantize_row_q5_1(x + r * cols, (block_q5_1*)dst, cols); break;
        default: quantize_row_q8_0(x + r * cols, (block_q8_0*)dst, cols); break;
      }
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
