// Portable scalar kernels: the "ref" tier. Always built, always selectable; every SIMD tier is
// checked against the same NumPy reference these are.
#include <cmath>
#include <cstdlib>

#include "core/fp16.h"
#include "cpu/q4_matmul.h"
#include "cpu/quant.h"

namespace xsil {

namespace {

// Activation row -> block_q8a: d = amax / 127, q = round(x / d), s = d * sum(q).
void quantize_act_q8a(const float* x, void* out, int64_t K) {
  block_q8a* y = (block_q8a*)out;
  for (int64_t i = 0; i < K / 32; ++i) {
    const float* xb = x + i * 32;
    float amax = 0.0f;
    for (int j = 0; j < 32; ++j) amax = std::fmax(amax, std::fabs(xb[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    int sum = 0;
    for (int j = 0; j < 32; ++j) {
      const int q = (int)std::lrintf(xb[j] * id);
      y[i].qs[j] = (int8_t)q;
      sum += q;
    }
    y[i].d = d;
    y[i].s = d * (float)sum;
  }
}

// Activation row -> block_q8k (one scale per 256, sums of each 16 quants).
void quantize_act_q8k(const float* x, void* out, int64_t K) {
  block_q8k* y = (block_q8k*)out;
  for (int64_t i = 0; i < K / QK_K; ++i) {
    const float* xb = x + i * QK_K;
    float amax = 0.0f;
    for (int j = 0; j < QK_K; ++j) amax = std::fmax(amax, std::fabs(xb[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < QK_K; ++j) y[i].qs[j] = (int8_t)std::lrintf(xb[j] * id);
    for (int g = 0; g < QK_K / 16; ++g) {
      int s = 0;
      for (int j = 0; j < 16; ++j) s += y[i].qs[16 * g + j];
      y[i].bsums[g] = (int16_t)s;
    }
    y[i].d = d;
  }
}

float dot_q4_0(const block_q4_0* w, const block_q8a* x, int64_t nb) {
  float acc = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    int isum = 0;
    for (int j = 0; j < 16; ++j) {
      isum += ((w[i].qs[j] & 0x0F) - 8) * x[i].qs[j];
      isum += ((w[i].qs[j] >> 4) - 8) * x[i].qs[j + 16];
    }
    acc += fp16_to_fp32(w[i].d) * x[i].d * (float)isum;
  }
  return acc;
}

float dot_q8_0(const block_q8_0* w, const block_q8a* x, int64_t nb) {
  float acc = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    int isum = 0;
    for (int j = 0; j < 32; ++j) isum += w[i].qs[j] * x[i].qs[j];
    acc += fp16_to_fp32(w[i].d) * x[i].d * (float)isum;
  }
  return acc;
}

float dot_q4_k(const block_q4_K* w, const block_q8k* x, int64_t nb) {
  float acc = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    const float d = fp16_to_fp32(w[i].d) * x[i].d;
    const float dmin = fp16_to_fp32(w[i].dmin) * x[i].d;
    int sum_sc = 0, sum_m = 0;
    for (int j = 0; j < 8; ++j) {
      uint8_t sc, m;
      q4k_scale_min(j, w[i].scales, &sc, &m);
      const uint8_t* q = w[i].qs + 32 * (j / 2);
      const int shift = (j & 1) * 4;
      const int8_t* a = x[i].qs + 32 * j;
      int isum = 0;
      for (int l = 0; l < 32; ++l) isum += ((q[l] >> shift) & 0xF) * a[l];
      sum_sc += sc * isum;
      sum_m += m * (x[i].bsums[2 * j] + x[i].bsums[2 * j + 1]);
    }
    acc += d * (float)sum_sc - dmin * (float)sum_m;
  }
  return acc;
}

// Q4_1: sum_k (d q_k + m) x_k with x_k ~ d_x qx_k is (d d_x) isum + m (d_x sum qx) = ... + m * s.
float dot_q4_1(const block_q4_1* w, const block_q8a* x, int64_t nb) {
  float acc = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    int isum = 0;
    for (int j = 0; j < 16; ++j) {
      isum += (w[i].qs[j] & 0x0F) * x[i].qs[j];
      isum += (w[i].qs[j] >> 4) * x[i].qs[j + 16];
    }
    acc += fp16_to_fp32(w[i].d) * x[i].d * (float)isum + fp16_to_fp32(w[i].m) * x[i].s;
  }
  return acc;
}

float dot_q5_0(const block_q5_0* w, const block_q8a* x, int64_t nb) {
  float acc = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    int isum = 0;
    for (int j = 0; j < 32; ++j) isum += (q5_quant(w[i].qs, w[i].qh, j) - 16) * x[i].qs[j];
    acc += fp16_to_fp32(w[i].d) * x[i].d * (float)isum;
  }
  return acc;
}

float dot_q5_1(const block_q5_1* w, const block_q8a* x, int64_t nb) {
  float acc = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    int isum = 0;
    for (int j = 0; j < 32; ++j) isum += q5_quant(w[i].qs, w[i].qh, j) * x[i].qs[j];
    acc += fp16_to_fp32(w[i].d) * x[i].d * (float)isum + fp16_to_fp32(w[i].m) * x[i].s;
  }
  return acc;
}

// Q5_K: as Q4_K with 5-bit quants.
float dot_q5_k(const block_q5_K* w, const block_q8k* x, int64_t nb) {
  float acc = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    const float d = fp16_to_fp32(w[i].d) * x[i].d;
    const float dmin = fp16_to_fp32(w[i].dmin) * x[i].d;
    int sum_sc = 0, sum_m = 0;
    for (int j = 0; j < 8; ++j) {
      uint8_t sc, m;
      q4k_scale_min(j, w[i].scales, &sc, &m);
      int isum = 0;
      for (int l = 0; l < 32; ++l) isum += q5k_quant(w[i], 32 * j + l) * x[i].qs[32 * j + l];
      sum_sc += sc * isum;
      sum_m += m * (x[i].bsums[2 * j] + x[i].bsums[2 * j + 1]);
    }
    acc += d * (float)sum_sc - dmin * (float)sum_m;
  }
  return acc;
}

// Q6_K: isum = sum_j sc_j * sum_{k in j} (q_k - 32) qx_k over the 16 sub-blocks of 16 (exact int32:
// |isum| <= 16 * 128 * 16 * 32 * 127 < 2^31), then acc += (d * d_x) * isum.
float dot_q6_k(const block_q6_K* w, const block_q8k* x, int64_t nb) {
  float acc = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    const float d = fp16_to_fp32(w[i].d) * x[i].d;
    int isum = 0;
    for (int j = 0; j < 16; ++j) {
      int s = 0;
      for (int l = 0; l < 16; ++l) s += (q6k_quant(w[i], 16 * j + l) - 32) * x[i].qs[16 * j + l];
      isum += w[i].scales[j] * s;
    }
    acc += d * (float)isum;
  }
  return acc;
}

template <typename WB, typename XB, float (*DOT)(const WB*, const XB*, int64_t), int QK>
void gemm_ref(const GemmArgs& a, int64_t n0, int64_t n1) {
  const int64_t nb = a.K / QK;
  for (int64_t n = n0; n < n1; ++n) {
    const WB* w = (const WB*)((const uint8_t*)a.w + n * a.w_row_bytes);
    for (int64_t m = 0; m < a.M; ++m) {
      const XB* x = (const XB*)((const uint8_t*)a.xq + m * a.xq_row_bytes);
      a.y[m * a.ldy + n] = DOT(w, x, nb);
    }
  }
}

MatmulKernels make_ref() {
  MatmulKernels k;
  k.tier = Tier::Ref;
  k.n_tile = 16;
  k.q4_0.quantize_act = quantize_act_q8a;
  k.q4_0.gemm = gemm_ref<block_q4_0, block_q8a, dot_q4_0, QK4_0>;
  k.q8_0.quantize_act = quantize_act_q8a;
  k.q8_0.gemm = gemm_ref<block_q8_0, block_q8a, dot_q8_0, QK8_0>;
  k.q4_k.quantize_act = quantize_act_q8k;
  k.q4_k.gemm = gemm_ref<block_q4_K, block_q8k, dot_q4_k, QK_K>;
  k.q4_1.quantize_act = quantize_act_q8a;
  k.q4_1.gemm = gemm_ref<block_q4_1, block_q8a, dot_q4_1, QK4_1>;
  k.q5_0.quantize_act = quantize_act_q8a;
  k.q5_0.gemm = gemm_ref<block_q5_0, block_q8a, dot_q5_0, QK5_0>;
  k.q5_1.quantize_act = quantize_act_q8a;
  k.q5_1.gemm = gemm_ref<block_q5_1, block_q8a, dot_q5_1, QK5_1>;
  k.q5_k.quantize_act = quantize_act_q8k;
  k.q5_k.gemm = gemm_ref<block_q5_K, block_q8k, dot_q5_k, QK_K>;
  k.q6_k.quantize_act = quantize_act_q8k;
  k.q6_k.gemm = gemm_ref<block_q6_K, block_q8k, dot_q6_k, QK_K>;
  return k;
}

}  // namespace

const MatmulKernels& matmul_kernels_ref() {
  static const MatmulKernels k = make_ref();
  return k;
}

}  // namespace xsil
