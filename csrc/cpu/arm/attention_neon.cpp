// NEON attention tier (4 floats per vector), used by both aarch64 tiers (attention has no int8
// dot products, so neon-dotprod has nothing more to use). The span kernel is the one the x86 tiers
// use (cpu/attention_span.inc, plain C++ over the vector-traits struct VT below).
#include <arm_neon.h>

#include <cmath>
#include <cstring>

#include "core/fp16.h"
#include "cpu/attention.h"
#include "cpu/kv_rows.h"

namespace xsil {
namespace attn_neon {

struct VT {
  // fp16 -> fp32 for Q8_0 block scales (exact, as fp16_to_fp32), with the AArch64 conversion.
  static float h2f(uint16_t h) { return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0); }
  using V = float32x4_t;
  static constexpr int W = 4;
  static constexpr int RB = 2;  // query rows per register block
  static V load(const float* p) { return vld1q_f32(p); }
  static void store(float* p, V v) { vst1q_f32(p, v); }
  static V set1(float x) { return vdupq_n_f32(x); }
  static V max(V a, V b) { return vmaxq_f32(a, b); }
  static float hmax(V v) { return vmaxvq_f32(v); }
  static V zero() { return vdupq_n_f32(0.0f); }
  static V fma(V a, V b, V c) { return vfmaq_f32(c, a, b); }  // a * b + c
  static V mul(V a, V b) { return vmulq_f32(a, b); }
  static V add(V a, V b) { return vaddq_f32(a, b); }
  static V sub(V a, V b) { return vsubq_f32(a, b); }
  static float hsum(V v) { return vaddvq_f32(v); }
  // out[i] = sum of the lanes of the i-th argument
  static void hsum4(V a, V b, V c, V d, float* out) { vst1q_f32(out, vpaddq_f32(vpaddq_f32(a, b), vpaddq_f32(c, d))); }
  static V cvt_f16(const uint16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
  // exactly 4 int8 read (a row's last block ends there)
  static V cvt_i8(const int8_t* p) {
    int32_t t;
    std::memcpy(&t, p, 4);
    const int16x8_t h = vmovl_s8(vreinterpret_s8_s32(vdup_n_s32(t)));
    return vcvtq_f32_s32(vmovl_s16(vget_low_s16(h)));
  }
  // e^x for x <= 0 (x below -87.3 clamps to ~1e-38): x = n ln2 + f, e^f by a degree-6 polynomial,
  // 2^n through the exponent bits. Same constants and steps as the x86 tiers.
  static V exp(V x) {
    x = vmaxq_f32(x, vdupq_n_f32(-87.3f));
    const V n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(1.44269504088896341f)));
    V f = vfmsq_f32(x, n, vdupq_n_f32(0.693359375f));         // x - n * c1
    f = vfmsq_f32(f, n, vdupq_n_f32(-2.12194440e-4f));        // f - n * c2
    V p = vdupq_n_f32(1.9875691500e-4f);
    p = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), p, f);
    p = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p, f);
    p = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p, f);
    p = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p, f);
    p = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p, f);
    p = vfmaq_f32(vaddq_f32(f, vdupq_n_f32(1.0f)), p, vmulq_f32(f, f));
    const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127)), 23);
    return vmulq_f32(p, vreinterpretq_f32_s32(e));
  }
};

#include "cpu/attention_span.inc"

}  // namespace attn_neon

const AttentionKernels& attention_kernels_neon(bool dotprod) {
  static const AttentionKernels k = [] {
    AttentionKernels t;
    t.tier = Tier::Neon;
    t.span = attn_neon::span_simd;
    return t;
  }();
  static const AttentionKernels kd = [] {
    AttentionKernels t = k;
    t.tier = Tier::NeonDotprod;
    return t;
  }();
  return dotprod ? kd : k;
}

}  // namespace xsil
