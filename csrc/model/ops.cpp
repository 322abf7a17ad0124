#include "model/ops.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/fp16.h"
#include "core/threadpool.h"
#include "cpu/quant.h"

namespace xsil::ops {

void rms_norm(const float* x, const float* w, float* y, int64_t rows, int64_t n, float eps, int threads) {
  ThreadPool::global().parallel_for(rows, rows >= 8 ? threads : 1, [&](int64_t r, int) {
    const float* xr = x + r * n;
    float* yr = y + r * n;
    double ss = 0.0;
    for (int64_t i = 0; i < n; ++i) ss += (double)xr[i] * xr[i];
    const float scale = (float)(1.0 / std::sqrt(ss / (double)n + (double)eps));
    for (int64_t i = 0; i < n; ++i) yr[i] = xr[i] * scale * w[i];
  });
}

void swiglu(float* g, const float* u, int64_t rows, int64_t n, int threads) {
  const int64_t total = rows * n;
  const int64_t chunk = 16384;
  const int64_t tasks = (total + chunk - 1) / chunk;
  ThreadPool::global().parallel_for(tasks, threads, [&](int64_t t, int) {
    const int64_t i1 = std::min(total, (t + 1) * chunk);
    for (int64_t i = t * chunk; i < i1; ++i) {
      const float v = g[i];
      g[i] = v / (1.0f + std::exp(-v)) * u[i];
    }
  });
}

void add_inplace(float* y, const float* x, int64_t count) {
  for (int64_t i = 0; i < count; ++i) y[i] += x[i];
}

void add_bias(float* y, const float* b, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < n; ++i) y[r * n + i] += b[i];
}

static int64_t row_bytes_any(Fmt fmt, int64_t n) {
  switch (fmt) {
    case Fmt::F32: return n * 4;
    case Fmt::F16: return n * 2;
    default: {
      const FmtInfo* fi = fmt_info(fmt);
      return n / fi->block_size * fi->type_size;
    }
  }
}

void get_row(const void* w, Fmt fmt, int64_t n, int64_t row, float* out) {
  const uint8_t* p = (const uint8_t*)w + row * row_bytes_any(fmt, n);
  if (fmt == Fmt::F32) {
    std::copy((const float*)p, (const float*)p + n, out);
  } else if (fmt == Fmt::F16) {
    const uint16_t* h = (const uint16_t*)p;
    for (int64_t i = 0; i < n; ++i) out[i] = fp16_to_fp32(h[i]);
  } else {
    dequantize_row(p, out, n, fmt);
  }
}

// fp32 dot with 8 independent partial sums (fixed order: deterministic, vectorizable).
static inline float dot_f32(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

void matmul_dense(const float* x, const void* w, Fmt fmt, float* y, int64_t M, int64_t N, int64_t K, int threads) {
  const int64_t tile = 16;
  const int64_t tasks = (N + tile - 1) / tile;
  ThreadPool::global().parallel_for(tasks, threads, [&](int64_t t, int) {
    thread_local std::vector<float> row;
    if (fmt == Fmt::F16 && (int64_t)row.size() < K) row.resize(K);
    const int64_t n1 = std::min(N, (t + 1) * tile);
    for (int64_t n = t * tile; n < n1; ++n) {
      const float* wr;
      if (fmt == Fmt::F32) {
        wr = (const float*)w + n * K;
      } else {
        const uint16_t* h = (const uint16_t*)w + n * K;
        for (int64_t i = 0; i < K; ++i) row[i] = fp16_to_fp32(h[i]);
        wr = row.data();
      }
      for (int64_t m = 0; m < M; ++m) y[m * N + n] = dot_f32(x + m * K, wr, K);
    }
  });
}

}  // namespace xsil::ops
