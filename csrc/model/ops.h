// Small dense ops of the decoder forward (fp32 activations): norms, activations, embedding rows,
// and the fp32/fp16 weight matmul for tensors that are not block-quantized.
#pragma once
#include <cstdint>

#include "xsil/blocks.h"

namespace xsil::ops {

// y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w, for `rows` rows of n (y may be x: in place).
void rms_norm(const float* x, const float* w, float* y, int64_t rows, int64_t n, float eps, int threads);
// g[i] = silu(g[i]) * u[i]  (SwiGLU), rows x n, in place on g.
void swiglu(float* g, const float* u, int64_t rows, int64_t n, int threads);
// y[r] += x[r] (residual), rows x n.
void add_inplace(float* y, const float* x, int64_t count);
// y[r, :] += b for rows x n.
void add_bias(float* y, const float* b, int64_t rows, int64_t n);
// Row `row` of a [rows, n] weight in fmt (F32, F16 or a block format) as fp32.
void get_row(const void* w, Fmt fmt, int64_t n, int64_t row, float* out);
// y[M, N] = x[M, K] . W[N, K]^T for F32 or F16 weights.
void matmul_dense(const float* x, const void* w, Fmt fmt, float* y, int64_t M, int64_t N, int64_t K, int threads);

}  // namespace xsil::ops
