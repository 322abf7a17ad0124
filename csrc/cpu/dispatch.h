// Kernel tables, one per ISA tier, filled once from the CPU's features (cpuid + XGETBV on x86,
// hwcap on aarch64). XSIL_CPU_ISA (read by the Python layer) or an explicit per-call tier overrides
// the default choice.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "xsil/blocks.h"
#include "xsil/params.h"

namespace xsil {

// Quantize one row of K activations (K % block == 0) to the activation blocks of a weight format.
using QuantizeActFn = void (*)(const float* x, void* out, int64_t K);
// Integer-path GEMM: y[m, n] for m in [0, M), n in [n0, n1). n0/n1 are multiples of the tier's
// n_tile (except n1 == N); each output is computed the same way whatever range it falls in, so
// results do not depend on the thread count.
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
  int64_t pack_rows = 1;          // rows per packed group; divides Kernels::n_tile
};

struct Kernels {
  const char* name = "ref";
  int64_t n_tile = 16;            // N granularity of work splitting (see GemmFn)
  FmtKernels q4_0, q8_0, q4_k;
  const FmtKernels* for_fmt(Fmt f) const {
    switch (f) {
      case Fmt::Q4_0: return &q4_0;
      case Fmt::Q8_0: return &q8_0;
      case Fmt::Q4_K: return &q4_k;
      default: return nullptr;
    }
  }
};

struct CpuFeatures {
  std::string arch;          // "x86_64", "aarch64", or "other"
  std::string vendor;        // cpuid vendor string or ""
  std::vector<std::string> flags;   // features found and usable (OS support checked)
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false, avx512vnni = false;
  bool avx_vnni = false, amx_tile = false, amx_int8 = false;
  bool neon = false, dotprod = false;
};

const CpuFeatures& cpu_features();

// Tiers compiled into this build, in preference order (best last), and whether this CPU runs them.
struct TierInfo {
  std::string name;
  bool available;
  std::string reason;        // why unavailable ("" when available)
};
std::vector<TierInfo> tiers();

// Table for a tier by name; throws std::invalid_argument naming the tier and the available ones if
// unknown or not runnable on this CPU. "" or "auto" means the current default.
const Kernels& kernels_for(const std::string& tier);
// Current default tier (best available unless set_default_tier was called).
const Kernels& default_kernels();
void set_default_tier(const std::string& tier);

// Tables defined in the ISA translation units.
const Kernels& ref_kernels();
#if defined(XSIL_TIER_AVX2)
const Kernels& avx2_kernels();
#endif
#if defined(XSIL_TIER_AVX512)
const Kernels& avx512_kernels(bool vnni);
#endif
#if defined(XSIL_TIER_NEON)
const Kernels& neon_kernels(bool dotprod);
#endif

}  // namespace xsil
