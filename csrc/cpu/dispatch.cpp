// Tier registry: which tables this build has, which this CPU can run, and the default.
#include "cpu/dispatch.h"

#include <atomic>
#include <mutex>
#include <stdexcept>

namespace xsil {

namespace {
struct TierEntry {
  std::string name;
  bool available;
  std::string reason;
  const Kernels* table;
};

std::vector<TierEntry> build_tiers() {
  const CpuFeatures& f = cpu_features();
  std::vector<TierEntry> t;
  t.push_back({"ref", true, "", &ref_kernels()});
#if defined(XSIL_TIER_AVX2)
  {
    const bool ok = f.avx2 && f.fma && f.f16c;
    t.push_back({"avx2", ok, ok ? "" : "needs AVX2 + FMA + F16C with OS YMM support",
                 ok ? &avx2_kernels() : nullptr});
  }
#endif
#if defined(XSIL_TIER_AVX512)
  {
    const bool ok = f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.fma && f.f16c;
    t.push_back({"avx512", ok, ok ? "" : "needs AVX-512 F/BW/VL/DQ with OS ZMM support",
                 ok ? &avx512_kernels(f.avx512vnni) : nullptr});
  }
#endif
#if defined(XSIL_TIER_NEON)
  t.push_back({"neon", f.neon, f.neon ? "" : "needs Advanced SIMD", f.neon ? &neon_kernels(false) : nullptr});
  t.push_back({"neon-dotprod", f.dotprod, f.dotprod ? "" : "needs the dotprod extension (ARMv8.2)",
               f.dotprod ? &neon_kernels(true) : nullptr});
#endif
  return t;
}

const std::vector<TierEntry>& tier_entries() {
  static const std::vector<TierEntry> t = build_tiers();
  return t;
}

const Kernels* best_available() {
  const Kernels* best = nullptr;
  for (const auto& e : tier_entries())
    if (e.available) best = e.table;
  return best;
}

std::atomic<const Kernels*> g_default{nullptr};

std::string available_list() {
  std::string s;
  for (const auto& e : tier_entries())
    if (e.available) s += (s.empty() ? "" : ", ") + e.name;
  return s;
}
}  // namespace

std::vector<TierInfo> tiers() {
  std::vector<TierInfo> out;
  for (const auto& e : tier_entries()) out.push_back({e.name, e.available, e.reason});
  return out;
}

const Kernels& kernels_for(const std::string& tier) {
  if (tier.empty() || tier == "auto") return default_kernels();
  for (const auto& e : tier_entries()) {
    if (e.name != tier) continue;
    if (!e.available)
      throw std::invalid_argument("[cpu] ISA tier '" + tier + "' is not supported by this CPU (" + e.reason +
                                  "); available tiers: " + available_list());
    return *e.table;
  }
  std::string all;
  for (const auto& e : tier_entries()) all += (all.empty() ? "" : ", ") + e.name;
  throw std::invalid_argument("[cpu] unknown ISA tier '" + tier + "'; tiers in this build: " + all +
                              " (available here: " + available_list() + ")");
}

const Kernels& default_kernels() {
  const Kernels* k = g_default.load(std::memory_order_acquire);
  if (!k) {
    k = best_available();
    g_default.store(k, std::memory_order_release);
  }
  return *k;
}

void set_default_tier(const std::string& tier) {
  if (tier.empty() || tier == "auto") {
    g_default.store(best_available(), std::memory_order_release);
    return;
  }
  g_default.store(&kernels_for(tier), std::memory_order_release);
}

}  // namespace xsil
