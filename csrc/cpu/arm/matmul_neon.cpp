// "neon" matmul tier (baseline AArch64 Advanced SIMD, no dotprod): int8 products with vmull_s8 /
// vmlal_high_s8 (two products per int16 lane, at most 2 * 128 * 127), widened and summed into int32
// with vpaddlq_s16 / vpadalq_s16. The kernels themselves are in matmul_neon_impl.inc.
#include <arm_neon.h>

#include <algorithm>
#include <cstring>

#include "cpu/q4_matmul.h"

namespace xsil {

// Defined in matmul_neon_dotprod.cpp (compiled with +dotprod; only called when the CPU has it).
const MatmulKernels& matmul_kernels_neon_dotprod_table();

namespace mm_neon {

static inline int32x4_t dot32(int8x16_t w0, int8x16_t w1, int8x16_t a0, int8x16_t a1) {
  int16x8_t p0 = vmull_s8(vget_low_s8(w0), vget_low_s8(a0));
  p0 = vmlal_high_s8(p0, w0, a0);
  int16x8_t p1 = vmull_s8(vget_low_s8(w1), vget_low_s8(a1));
  p1 = vmlal_high_s8(p1, w1, a1);
  return vpadalq_s16(vpaddlq_s16(p0), p1);
}

// dot32 for weights in [0, 31] (Q4_K nibbles, Q5_K quants): 4 products per int16 lane (at most
// 4 * 31 * 128 = 15872), one widening pairwise add at the end (5 instructions instead of 6).
static inline int32x4_t dot32_u4(int8x16_t w0, int8x16_t w1, int8x16_t a0, int8x16_t a1) {
  int16x8_t p = vmull_s8(vget_low_s8(w0), vget_low_s8(a0));
  p = vmlal_high_s8(p, w0, a0);
  p = vmlal_s8(p, vget_low_s8(w1), vget_low_s8(a1));
  p = vmlal_high_s8(p, w1, a1);
  return vpaddlq_s16(p);
}

// 16-element dot product (Q6_K sub-blocks, |w| <= 32): two products per int16 lane (at most
// 2 * 32 * 128), one widening pairwise add.
static inline int32x4_t dot16(int8x16_t w, int8x16_t a) {
  return vpaddlq_s16(vmlal_high_s8(vmull_s8(vget_low_s8(w), vget_low_s8(a)), w, a));
}

// [sum_i w_r[i] * a[i] for r = 0..3] over one 32-element block, weights |w| <= 8 (Q4_0): a row's 32
// products add up to at most 32 * 8 * 127 = 32512, so everything stays in int16 until one final
// widening pairwise add (20 instructions for the 4 rows instead of 27).
static inline int32x4_t dot4rows_w8(const int8x16_t lo[4], const int8x16_t hi[4], int8x16_t a0, int8x16_t a1) {
  int16x8_t p[4];
  for (int r = 0; r < 4; ++r) {
    int16x8_t t = vmull_s8(vget_low_s8(lo[r]), vget_low_s8(a0));
    t = vmlal_high_s8(t, lo[r], a0);
    t = vmlal_s8(t, vget_low_s8(hi[r]), vget_low_s8(a1));
    p[r] = vmlal_high_s8(t, hi[r], a1);
  }
  return vpaddlq_s16(vpaddq_s16(vpaddq_s16(p[0], p[1]), vpaddq_s16(p[2], p[3])));
}

#include "cpu/arm/matmul_neon_impl.inc"

}  // namespace mm_neon

const MatmulKernels& matmul_kernels_neon(bool dotprod) {
  if (dotprod) return matmul_kernels_neon_dotprod_table();
  static const MatmulKernels k = mm_neon::make_table(Tier::Neon);
  return k;
}

}  // namespace xsil
