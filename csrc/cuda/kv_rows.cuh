// Device helpers for the paged KV cache: row addressing (the CPU cache's layout), element loads and
// stores of f32 / f16 / Q8_0 rows (Q8_0 quantized per 32 exactly as the CPU's quantize_row_q8_0),
// and the RoPE of one element with the CPU's angle computation (double angles, no FMA contraction).
#pragma once
#include "cuda/kv_cache.h"
// clang-format off
#include "cuda/common.cuh"
// clang-format on

namespace xsil::cuda {

constexpr int kDtF32 = 0, kDtF16 = 1, kDtQ8 = 8;  // KVDtype values
constexpr int kQ8Bytes = 34;                      // GGUF block_q8_0: fp16 d + 32 int8

__device__ __forceinline__ int64_t kv_k_off(const DevKV& kv, int64_t page, int64_t layer, int64_t head) {
  return ((layer * kv.n_kv + head) * kv.n_pages + page) * kv.k_chunk;
}
__device__ __forceinline__ int64_t kv_v_off(const DevKV& kv, int64_t page, int64_t layer, int64_t head) {
  return kv.v_region + ((layer * kv.n_kv + head) * kv.n_pages + page) * kv.v_chunk;
}

// Element i of a row stored in dtype DT.
template <int DT>
__device__ __forceinline__ float kv_load(const uint8_t* row, int i) {
  if (DT == kDtF16) return h2f(((const uint16_t*)row)[i]);
  if (DT == kDtQ8) {
    const uint8_t* b = row + (i >> 5) * kQ8Bytes;
    return (float)(int8_t)b[2 + (i & 31)] * h2f(*(const uint16_t*)b);
  }
  return ((const float*)row)[i];
}
__device__ __forceinline__ float kv_load_dt(int dt, const uint8_t* row, int i) {
  return dt == kDtF16 ? kv_load<kDtF16>(row, i) : dt == kDtQ8 ? kv_load<kDtQ8>(row, i) : kv_load<kDtF32>(row, i);
}

// round(t) half away from zero into an int8 level; 0 for a non-finite t (as the CPU's q8_0_level).
__device__ __forceinline__ int8_t q8_level(float t) {
  if (!(fabsf(t) < 2147483648.0f)) return 0;
  return (int8_t)(uint8_t)(uint32_t)(int32_t)roundf(t);
}

// Stores element i of a row in dtype dt. For Q8_0 this is warp-collective: the 32 lanes of a warp
// hold the 32 elements of one block (lane = i & 31), and every lane must call it.
__device__ __forceinline__ void kv_store_dt(int dt, uint8_t* row, int i, float x) {
  if (dt == kDtF16) {
    ((uint16_t*)row)[i] = f2h(x);
  } else if (dt == kDtQ8) {
    const float amax = warp_max(fabsf(x));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    uint8_t* b = row + (i >> 5) * kQ8Bytes;
    b[2 + (i & 31)] = (uint8_t)q8_level(x * id);
    if ((i & 31) == 0) *(uint16_t*)b = f2h(d);
  } else {
    ((float*)row)[i] = x;
  }
}

// Float ops the compiler must not fuse into an FMA (the CPU rotation is compiled with
// -ffp-contract=off). The emulator build is host code compiled with -ffp-contract=off as well.
#if defined(XSIL_CUDA_EMU)
__device__ __forceinline__ float mul_rn(float a, float b) { return a * b; }
__device__ __forceinline__ float add_rn(float a, float b) { return a + b; }
__device__ __forceinline__ float sub_rn(float a, float b) { return a - b; }
#else
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
#endif

// Element i of x[hd] (all elements in shared memory) rotated at position pos: the pair angle is
// pos * fscale * (base^(-2 p / hd) / ff[p]) in double (ff: the device copy of the RoPE frequency
// factors, or nullptr for none; the same expression as the CPU's rope_inplace), cos / sin rounded to
// float, products not fused.
__device__ __forceinline__ float rope_elem(const float* x, int i, int hd, int mode, double pos, double base,
                                           double fscale, const float* __restrict__ ff) {
  if (mode < 0) return x[i];
  const int half = hd / 2;
  int p;
  bool first;
  float a, b;
  if (mode == 0) {
    p = i >> 1;
    first = (i & 1) == 0;
    a = x[i & ~1];
    b = x[i | 1];
  } else {
    p = i < half ? i : i - half;
    first = i < half;
    a = x[p];
    b = x[p + half];
  }
  double inv = pow(base, -2.0 * (double)p / (double)hd);
  if (ff) inv /= (double)ff[p];
  const double th = pos * fscale * inv;
  const float c = (float)cos(th), s = (float)sin(th);
  return first ? sub_rn(mul_rn(a, c), mul_rn(b, s)) : add_rn(mul_rn(a, s), mul_rn(b, c));
}

}  // namespace xsil::cuda
