// Kernel tables, one per ISA tier, filled once from the CPU's features (cpuid + XGETBV on x86,
// hwcap on aarch64). XSIL_CPU_ISA (read by the Python layer) or an explicit per-call tier overrides
// the default choice.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "xsil/blocks.h"

namespace xsil {

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

// ISA tiers. Tier availability is decided once here; each kernel family (matmul, attention, ...)
// keeps its own table per tier (see q4_matmul.h, attention.h), as MLAS keeps one dispatch struct
// per kernel family.
enum class Tier : int { Ref = 0, Avx2, Avx512, Neon, NeonDotprod };

const char* tier_name(Tier t);

// Tiers compiled into this build, in preference order (best last), and whether this CPU runs them.
struct TierInfo {
  Tier tier;
  std::string name;
  bool available;
  std::string reason;        // why unavailable ("" when available)
};
std::vector<TierInfo> tiers();

// Tier by name; throws std::invalid_argument naming the tier and the available ones if unknown or
// not runnable on this CPU. "" or "auto" means the current default.
Tier resolve_tier(const std::string& name);
// Current default tier (best available unless set_default_tier was called).
Tier default_tier();
void set_default_tier(const std::string& name);

}  // namespace xsil
