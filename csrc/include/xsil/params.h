// Plain parameter structs, one per kernel family. Drivers fill them; ISA kernels read them.
// CPU and CUDA kernels take the same structs.
#pragma once
#include <cstddef>
#include <cstdint>

#include "xsil/blocks.h"

namespace xsil {

// y[M, N] = x[M, K] . W[N, K]^T with W in a block format.
struct MatmulParams {
  const float* x = nullptr;   // activations, M rows of K floats, row stride ldx (elements)
  int64_t ldx = 0;
  const void* w = nullptr;    // weights: N rows of K / block_size blocks (GGUF layout), or a packed layout
  bool w_packed = false;      // true when w was produced by the tier's pack() (layout owned by that tier)
  float* y = nullptr;         // output, M rows of N floats, row stride ldy (elements)
  int64_t ldy = 0;
  int64_t M = 0, N = 0, K = 0;
  Fmt fmt = Fmt::Q4_0;
};

// Arguments of an ISA GEMM kernel on the integer path: activations were already quantized to the
// activation block format of `fmt` (block_q8a for Q4_0/Q8_0, block_q8k for Q4_K).
struct GemmArgs {
  const void* xq = nullptr;   // M rows of quantized activations
  size_t xq_row_bytes = 0;    // bytes per quantized activation row
  const void* w = nullptr;    // weights (GGUF rows, or the tier's packed layout when w_packed)
  bool w_packed = false;
  size_t w_row_bytes = 0;     // bytes per GGUF weight row (K / block_size * type_size)
  float* y = nullptr;         // output rows, stride ldy
  int64_t ldy = 0;
  int64_t M = 0, N = 0, K = 0;
};

}  // namespace xsil
