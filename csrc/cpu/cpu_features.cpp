// CPU feature detection: cpuid + XGETBV on x86 (the OS must enable the register state, not just
// the CPU advertise it), getauxval(AT_HWCAP) on aarch64 Linux.
#include <cstring>

#include "cpu/dispatch.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1 << 1)
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#endif

namespace xsil {

#if defined(__x86_64__) || defined(_M_X64)
static uint64_t read_xcr0() {
  uint32_t eax, edx;
  // xgetbv with ecx=0; inline asm so this file needs no -mxsave.
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return ((uint64_t)edx << 32) | eax;
}
#endif

static CpuFeatures detect() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(_M_X64)
  f.arch = "x86_64";
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid(0, &a, &b, &c, &d)) {
    char v[13];
    std::memcpy(v, &b, 4); std::memcpy(v + 4, &d, 4); std::memcpy(v + 8, &c, 4); v[12] = 0;
    f.vendor = v;
  }
  const unsigned max_leaf = a;
  unsigned c1 = 0, d1 = 0;
  __get_cpuid(1, &a, &b, &c1, &d1);
  const bool osxsave = (c1 >> 27) & 1;
  const uint64_t xcr0 = osxsave ? read_xcr0() : 0;
  const bool os_avx = (xcr0 & 0x6) == 0x6;           // XMM + YMM state
  const bool os_avx512 = os_avx && (xcr0 & 0xe0) == 0xe0;  // opmask + ZMM_Hi256 + Hi16_ZMM
  const bool os_amx = (xcr0 & 0x60000) == 0x60000;   // XTILECFG + XTILEDATA
  unsigned b7 = 0, c7 = 0, d7 = 0, a71 = 0;
  if (max_leaf >= 7) {
    __cpuid_count(7, 0, a, b7, c7, d7);
    unsigned bb, cc, dd;
    __cpuid_count(7, 1, a71, bb, cc, dd);
  }
  const bool avx = os_avx && ((c1 >> 28) & 1);
  f.fma = avx && ((c1 >> 12) & 1);
  f.f16c = avx && ((c1 >> 29) & 1);
  f.avx2 = avx && ((b7 >> 5) & 1);
  f.avx512f = os_avx512 && ((b7 >> 16) & 1);
  f.avx512dq = f.avx512f && ((b7 >> 17) & 1);
  f.avx512bw = f.avx512f && ((b7 >> 30) & 1);
  f.avx512vl = f.avx512f && ((b7 >> 31) & 1);
  f.avx512vnni = f.avx512f && ((c7 >> 11) & 1);
  f.avx_vnni = avx && ((a71 >> 4) & 1);
  f.amx_tile = os_amx && ((d7 >> 24) & 1);
  f.amx_int8 = f.amx_tile && ((d7 >> 25) & 1);
  struct { bool on; const char* name; } named[] = {
      {avx, "avx"}, {f.fma, "fma"}, {f.f16c, "f16c"}, {f.avx2, "avx2"},
      {f.avx512f, "avx512f"}, {f.avx512dq, "avx512dq"}, {f.avx512bw, "avx512bw"},
      {f.avx512vl, "avx512vl"}, {f.avx512vnni, "avx512vnni"}, {f.avx_vnni, "avxvnni"},
      {f.amx_tile, "amx_tile"}, {f.amx_int8, "amx_int8"}};
  for (auto& n : named)
    if (n.on) f.flags.push_back(n.name);
#elif defined(__aarch64__)
  f.arch = "aarch64";
  f.neon = true;  // Advanced SIMD is mandatory on AArch64
#if defined(__linux__)
  const unsigned long hw = getauxval(AT_HWCAP);
  f.neon = (hw & HWCAP_ASIMD) != 0;
  f.dotprod = (hw & HWCAP_ASIMDDP) != 0;
#elif defined(__APPLE__)
  f.dotprod = true;  // every Apple arm64 core has dotprod
#endif
  if (f.neon) f.flags.push_back("neon");
  if (f.dotprod) f.flags.push_back("dotprod");
#else
  f.arch = "other";
#endif
  return f;
}

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

}  // namespace xsil
