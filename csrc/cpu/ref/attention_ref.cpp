// Portable scalar span kernel: the "ref" attention tier.
#include <cmath>
#include <limits>

#include "cpu/attention.h"
#include "cpu/kv_rows.h"

namespace xsil {

namespace {

void span_ref(const AttnSpanArgs& a) {
  const int64_t hd = a.head_dim;
  int32_t nmax = 0;
  for (int32_t j = 0; j < a.rows; ++j) nmax = a.n_valid[j] > nmax ? a.n_valid[j] : nmax;
  if (nmax == 0) return;
  float* kf = a.scratch;
  float* vf = kf + (int64_t)a.n * hd;
  float* sc = vf + (int64_t)a.n * hd;
  for (int32_t t = 0; t < nmax; ++t) {
    kv_load_row(a.k_dtype, a.k + t * a.k_row_bytes, kf + t * hd, hd);
    kv_load_row(a.v_dtype, a.v + t * a.v_row_bytes, vf + t * hd, hd);
  }
  for (int32_t j = 0; j < a.rows; ++j) {
    const int32_t nv = a.n_valid[j];
    if (nv == 0) continue;
    const float* q = a.q + j * hd;
    float mx = -std::numeric_limits<float>::infinity();
    for (int32_t t = 0; t < nv; ++t) {
      float s = 0.0f;
      for (int64_t i = 0; i < hd; ++i) s += q[i] * kf[t * hd + i];
      sc[t] = s;
      mx = s > mx ? s : mx;
    }
    const float m_new = a.m[j] > mx ? a.m[j] : mx;
    const float alpha = std::isinf(a.m[j]) ? 0.0f : std::exp(a.m[j] - m_new);
    float* acc = a.acc + j * hd;
    float l = a.l[j] * alpha;
    for (int64_t i = 0; i < hd; ++i) acc[i] *= alpha;
    for (int32_t t = 0; t < nv; ++t) {
      const float p = std::exp(sc[t] - m_new);
      l += p;
      const float* v = vf + t * hd;
      for (int64_t i = 0; i < hd; ++i) acc[i] += p * v[i];
    }
    a.l[j] = l;
    a.m[j] = m_new;
  }
}

}  // namespace

const AttentionKernels& attention_kernels_ref() {
  static const AttentionKernels k = [] {
    AttentionKernels t;
    t.tier = Tier::Ref;
    t.span = span_ref;
    return t;
  }();
  return k;
}

}  // namespace xsil
