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

// --- The matmul family's per-tier table ---------------------------------------------------------
// Quantize one row of K activations (K % block == 0) to the activation blocks of a weight format.
using QuantizeActFn = void (*)(const float* x, void* out, int64_t K);
// Integer-path GEMM: y[m, n] for m in [0, M), n in [n0, n1). n0 is a multiple of the table's
// n_tile, n1 too unless n1 == N; each output is computed the same way whatever range it falls in,
// so results do not depend on the thread count.
using GemmFn = void (*)(const GemmArgs& a, int64_t n0, int64_t n1);
// Repack one group of n_rows (<= pack_rows) consecutive GGUF rows into the tier's layout. The packed
// group has exactly the source group's size (a permutation of bytes within the group), so a packed
// matrix can replace the original, and packing in place needs only one group of scratch.
// src and dst do not overlap.
using PackFn = void (*)(const void* src, void* dst, int64_t n_rows, int64_t K);

struct FmtKernels {
  QuantizeActFn quantize_act = nullptr;
  GemmFn gemm = nullptr;          // reads GGUF rows
  GemmFn gemm_packed = nullptr;   // reads packed rows; nullptr when the tier has no packed layout
  PackFn pack = nullptr;          // nullptr when the tier has no packed layout
  int64_t pack_rows = 1;          // rows per packed group; divides MatmulKernels::n_tile
};

struct MatmulKernels {
  Tier tier = Tier::Ref;
  int64_t n_tile = 16;            // N granularity of work splitting (see GemmFn)
  FmtKernels q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q5_k, q6_k;
  const FmtKernels* for_fmt(Fmt f) const {
    switch (f) {
      case Fmt::Q4_0: return &q4_0;
      case Fmt::Q4_1: return &q4_1;
      case Fmt::Q5_0: return &q5_0;
      case Fmt::Q5_1: return &q5_1;
      case Fmt::Q8_0: return &q8_0;
      case Fmt::Q4_K: return &q4_k;
      case Fmt::Q5_K: return &q5_k;
      case Fmt::Q6_K: return &q6_k;
      default: return nullptr;
    }
  }
};

// The table of a tier (which must be available: see resolve_tier).
const MatmulKernels& matmul_kernels(Tier t);
// Defined by each tier's translation units.
const MatmulKernels& matmul_kernels_ref();
#if defined(XSIL_X86_TIERS)
const MatmulKernels& matmul_kernels_avx2();
const MatmulKernels& matmul_kernels_avx512(bool vnni);
#endif
#if defined(XSIL_ARM_TIERS)
const MatmulKernels& matmul_kernels_neon(bool dotprod);
#endif

// Bytes of one GGUF row of K weights in fmt (K must be a multiple of the block size).
int64_t fmt_row_bytes(Fmt fmt, int64_t K);
// Parses a block format name ("Q4_0", "Q6_K", ...; case-insensitive); throws std::invalid_argument
// naming `op` and the supported formats. allow_no_quantizer = false: only formats with a quantizer.
Fmt parse_fmt(const std::string& name, const char* op, bool allow_no_quantizer = true);

// Validates sizes of a matmul before anything touches memory; throws std::invalid_argument with the
// op name and the offending value. w_bytes is the size of the weight buffer.
void check_matmul(const MatmulParams& p, int64_t w_bytes, int threads);

// y = x . W^T. exact=false: activations quantized to 8-bit blocks, integer dot products (fast).
// exact=true: each weight row dequantized to fp32, fp32 accumulation (slow; for checking).
void matmul(const MatmulParams& p, const MatmulKernels& k, int threads, bool exact);

// Weights repacked once into a tier's layout; same byte size as the GGUF rows it came from.
struct PackedWeights {
  Tier tier = Tier::Ref;          // tier whose kernels read this layout
  Fmt fmt = Fmt::Q4_0;
  int64_t N = 0, K = 0;
  std::shared_ptr<uint8_t> owner; // storage when the packed copy owns its memory
  uint8_t* data = nullptr;        // packed bytes (owner.get() or the caller's buffer for in-place)
  int64_t nbytes = 0;
};

// Packs N rows of GGUF blocks for `k`. If dst is non-null the result is written there (dst may equal
// src: in place); otherwise a new buffer is allocated. Returns false if the tier has no packed layout
// for fmt (then nothing is written).
bool pack_weights(const void* src, uint8_t* dst, Fmt fmt, int64_t N, int64_t K, const MatmulKernels& k,
                  int threads, PackedWeights* out);

}  // namespace xsil
