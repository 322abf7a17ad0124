// Tier registry: which tiers this build has, which this CPU can run, and the default.
#include "cpu/dispatch.h"

#include <atomic>
#include <stdexcept>

namespace xsil {

namespace {

std::vector<TierInfo> build_tiers() {
  const CpuFeatures& f = cpu_features();
  std::vector<TierInfo> t;
  t.push_back({Tier::Ref, "ref", true, ""});
#if defined(XSIL_X86_TIERS)
  {
    const bool ok = f.avx2 && f.fma && f.f16c;
    t.push_back({Tier::Avx2, "avx2", ok, ok ? "" : "needs AVX2 + FMA + F16C with OS YMM support"});
  }
  {
    const bool ok = f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.fma && f.f16c;
    t.push_back({Tier::Avx512, "avx512", ok, ok ? "" : "needs AVX-512 F/BW/VL/DQ with OS ZMM support"});
  }
#endif
#if defined(XSIL_ARM_TIERS)
  t.push_back({Tier::Neon, "neon", f.neon, f.neon ? "" : "needs Advanced SIMD"});
  t.push_back({Tier::NeonDotprod, "neon-dotprod", f.dotprod, f.dotprod ? "" : "needs the dotprod extension (ARMv8.2)"});
#endif
  (void)f;
  return t;
}

const std::vector<TierInfo>& tier_list() {
  static const std::vector<TierInfo> t = build_tiers();
  return t;
}

Tier best_available() {
  Tier best = Tier::Ref;
  for (const auto& e : tier_list())
    if (e.available) best = e.tier;
  return best;
}

std::atomic<int> g_default{-1};

std::string available_list() {
  std::string s;
  for (const auto& e : tier_list())
    if (e.available) s += (s.empty() ? "" : ", ") + e.name;
  return s;
}
}  // namespace

const char* tier_name(Tier t) {
  switch (t) {
    case Tier::Ref: return "ref";
    case Tier::Avx2: return "avx2";
    case Tier::Avx512: return "avx512";
    case Tier::Neon: return "neon";
    case Tier::NeonDotprod: return "neon-dotprod";
  }
  return "?";
}

std::vector<TierInfo> tiers() { return tier_list(); }

Tier resolve_tier(const std::string& name) {
  if (name.empty() || name == "auto") return default_tier();
  for (const auto& e : tier_list()) {
    if (e.name != name) continue;
    if (!e.available)
      throw std::invalid_argument("[cpu] ISA tier '" + name + "' is not supported by this CPU (" + e.reason +
                                  "); available tiers: " + available_list());
    return e.tier;
  }
  std::string all;
  for (const auto& e : tier_list()) all += (all.empty() ? "" : ", ") + e.name;
  throw std::invalid_argument("[cpu] unknown ISA tier '" + name + "'; tiers in this build: " + all +
                              " (available here: " + available_list() + ")");
}

Tier default_tier() {
  int t = g_default.load(std::memory_order_acquire);
  if (t < 0) {
    t = (int)best_available();
    g_default.store(t, std::memory_order_release);
  }
  return (Tier)t;
}

void set_default_tier(const std::string& name) {
  if (name.empty() || name == "auto") {
    g_default.store((int)best_available(), std::memory_order_release);
    return;
  }
  g_default.store((int)resolve_tier(name), std::memory_order_release);
}

}  // namespace xsil
