// "neon-dotprod" matmul tier (ARMv8.2 dotprod, compiled with -march=armv8.2-a+dotprod): int8 dot
// products with vdotq_s32. The kernels themselves are in matmul_neon_impl.inc.
#include <arm_neon.h>

#include <algorithm>
#include <cstring>

#include "cpu/q4_matmul.h"

namespace xsil {

namespace mm_neon_dotprod {

static inline int32x4_t dot32(int8x16_t w0, int8x16_t w1, int8x16_t a0, int8x16_t a1) {
  return vdotq_s32(vdotq_s32(vdupq_n_s32(0), w0, a0), w1, a1);
}

static inline int32x4_t dot32_u4(int8x16_t w0, int8x16_t w1, int8x16_t a0, int8x16_t a1) {
  return dot32(w0, w1, a0, a1);
}

static inline int32x4_t dot16(int8x16_t w, int8x16_t a) { return vdotq_s32(vdupq_n_s32(0), w, a); }

// [sum_i w_r[i] * a[i] for r = 0..3] over one 32-element block (any int8 weights here).
static inline int32x4_t dot4rows_w8(const int8x16_t lo[4], const int8x16_t hi[4], int8x16_t a0, int8x16_t a1) {
  return vpaddq_s32(vpaddq_s32(dot32(lo[0], hi[0], a0, a1), dot32(lo[1], hi[1], a0, a1)),
                    vpaddq_s32(dot32(lo[2], hi[2], a0, a1), dot32(lo[3], hi[3], a0, a1)));
}

#include "cpu/arm/matmul_neon_impl.inc"

}  // namespace mm_neon_dotprod

const MatmulKernels& matmul_kernels_neon_dotprod_table() {
  static const MatmulKernels k = mm_neon_dotprod::make_table(Tier::NeonDotprod);
  return k;
}

}  // namespace xsil
