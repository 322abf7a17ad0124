// Block-quantized matmul driver: validation, activation quantization, tiling and threading.
// The arithmetic itself lives in the tier tables (cpu/dispatch.h).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "cpu/dispatch.h"
#include "xsil/params.h"

namespace xsil {

// Bytes of one GGUF row of K weights in fmt (K must be a multiple of the block size).
int64_t fmt_row_bytes(Fmt fmt, int64_t K);
// Parses "Q4_0" / "Q8_0" / "Q4_K" (case-insensitive); throws std::invalid_argument naming `op`.
Fmt parse_fmt(const std::string& name, const char* op, bool allow_q4k = true);

// Validates sizes of a matmul before anything touches memory; throws std::invalid_argument with the
// op name and the offending value. w_bytes is the size of the weight buffer.
void check_matmul(const MatmulParams& p, int64_t w_bytes, int threads);

// y = x . W^T. exact=false: activations quantized to 8-bit blocks, integer dot products (fast).
// exact=true: each weight row dequantized to fp32, fp32 accumulation (slow; for checking).
void matmul(const MatmulParams& p, const Kernels& k, int threads, bool exact);

// Weights repacked once into a tier's layout; same byte size as the GGUF rows it came from.
struct PackedWeights {
  std::string tier;               // tier whose kernels read this layout
  const Kernels* kernels = nullptr;
  Fmt fmt = Fmt::Q4_0;
  int64_t N = 0, K = 0;
  std::shared_ptr<uint8_t> owner; // storage when the packed copy owns its memory
  uint8_t* data = nullptr;        // packed bytes (owner.get() or the caller's buffer for in-place)
  int64_t nbytes = 0;
};

// Packs N rows of GGUF blocks for `k`. If dst is non-null the result is written there (dst may equal
// src: in place); otherwise a new buffer is allocated. Returns false if the tier has no packed layout
// for fmt (then nothing is written).
bool pack_weights(const void* src, uint8_t* dst, Fmt fmt, int64_t N, int64_t K, const Kernels& k,
                  int threads, PackedWeights* out);

}  // namespace xsil
