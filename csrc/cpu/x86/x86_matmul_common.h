// Shared x86 matmul code, included by each per-ISA translation unit (matmul_avx2.cpp,
// matmul_avx512.cpp, matmul_avx512vnni.cpp). Everything here lives in an anonymous namespace so
// each TU gets its own copy compiled with its own ISA flags: the linker can never merge an AVX-512
// build of a helper into the AVX2 tier (ODR hazard of inline functions across ISA flags).
//
// Everything here needs AVX2 + FMA + F16C (the baseline of all x86 tiers). Where the TU is built with
// AVX512-VNNI (+VL), the 256-bit u8 x s8 dot uses vpdpbusd instead of vpmaddubsw + vpmaddwd.
//
// Arithmetic contract (all x86 tiers): every output is computed with exactly the scalar ref tier's
// operation order -- exact int32 block dot products, then per block acc += (d_w * d_x) * (float)isum
// (Q4_0 / Q8_0) or acc += d*(float)sum_sc - dmin*(float)sum_m (Q4_K), blocks in order -- so the
// SIMD tiers are bit-identical to ref, independent of thread count, tiling and packing.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "cpu/q4_matmul.h"
#include "xsil/blocks.h"

namespace xsil {
namespace {

inline float h2f(uint16_t h) { return _cvtsh_ss(h); }
inline uint16_t ld16(const void* p) { uint16_t v; std::memcpy(&v, p, 2); return v; }
inline int32_t ld32(const void* p) { int32_t v; std::memcpy(&v, p, 4); return v; }

// Per-thread scratch that grows and is freed at thread exit (internal linkage: no ODR sharing).
struct Scratch {
  void* p = nullptr;
  size_t cap = 0;
  ~Scratch() { std::free(p); }
  void* get(size_t n) {
    if (n > cap) {
      std::free(p);
      cap = (n + 63) & ~(size_t)63;
      p = std::aligned_alloc(64, cap);
      if (!p) { cap = 0; std::abort(); }
    }
    return p;
  }
};

// Software prefetch of every cache line of the `bytes` bytes at p + kPrefetchAhead (packed weight
// streams). Measured on the dev box (Zen, cold Q4_0 GEMV, 1 thread): 8 KiB ahead covering every
// line ~33 -> ~37 GB/s; 2 KiB ahead with one line per block was no better than no prefetch.
constexpr int64_t kPrefetchAhead = 8192;
inline void prefetch_ahead(const void* p, int bytes) {
  const char* q = (const char*)p + kPrefetchAhead;
  for (int l = 0; l < bytes; l += 64) _mm_prefetch(q + l, _MM_HINT_T0);
}

inline int hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

inline float hmax_ps(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

// int32x8 partial sums of u[i] * s[i] (u unsigned bytes, s signed bytes). Without VNNI the int16
// pair sums of vpmaddubsw must not saturate: callers guarantee |u*s + u'*s'| <= 32767.
inline __m256i dot_u8s8(__m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

// --- Activation quantization: byte-identical to the ref tier ----------------------------------
// d = amax / 127 (fp32 division), id = 1 / d, q = round-half-even(x * id) (vcvtps2dq in the default
// rounding mode, as lrintf), s = d * (float)sum(q).

// round-half-even(v) as int32, but 0 where v is NaN or out of int32 range (vcvtps2dq gives
// INT32_MIN there): the ref's (int)lrintf(v) gives 0 in those cases too (x86-64: the low 32 bits of
// the 64-bit "integer indefinite"). Only reachable with non-finite activations, or with a block so
// tiny that 1 / d overflows to inf.
inline __m256i cvt_q(__m256 v) {
  const __m256i q = _mm256_cvtps_epi32(v);
  return _mm256_andnot_si256(_mm256_cmpeq_epi32(q, _mm256_set1_epi32(INT32_MIN)), q);
}

// max(|v|, m) that ignores NaN in v like fmax (vmaxps returns its second operand when either is NaN).
inline __m256 absmax_acc(__m256 v, __m256 m) {
  return _mm256_max_ps(_mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff))), m);
}

// Four int32x8 -> 32 int8 in element order.
inline __m256i pack_i32x4_to_i8(__m256i q0, __m256i q1, __m256i q2, __m256i q3) {
  const __m256i a = _mm256_packs_epi32(q0, q1);  // lanes: q0lo q1lo | q0hi q1hi (int16)
  const __m256i b = _mm256_packs_epi32(q2, q3);
  const __m256i c = _mm256_packs_epi16(a, b);    // dword order 0 2 4 6 1 3 5 7 after both packs
  return _mm256_permutevar8x32_epi32(c, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

void quantize_act_q8a_x86(const float* x, void* out, int64_t K) {
  block_q8a* y = (block_q8a*)out;
  for (int64_t i = 0; i < K / 32; ++i) {
    const float* xb = x + i * 32;
    const __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8);
    const __m256 v2 = _mm256_loadu_ps(xb + 16), v3 = _mm256_loadu_ps(xb + 24);
    const __m256 m = absmax_acc(v3, absmax_acc(v2, absmax_acc(v1, absmax_acc(v0, _mm256_setzero_ps()))));
    const float amax = hmax_ps(m);
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const __m256 vid = _mm256_set1_ps(id);
    const __m256i q0 = cvt_q(_mm256_mul_ps(v0, vid));
    const __m256i q1 = cvt_q(_mm256_mul_ps(v1, vid));
    const __m256i q2 = cvt_q(_mm256_mul_ps(v2, vid));
    const __m256i q3 = cvt_q(_mm256_mul_ps(v3, vid));
    _mm256_storeu_si256((__m256i*)y[i].qs, pack_i32x4_to_i8(q0, q1, q2, q3));
    const int sum = hsum_i32(_mm256_add_epi32(_mm256_add_epi32(q0, q1), _mm256_add_epi32(q2, q3)));
    y[i].d = d;
    y[i].s = d * (float)sum;
  }
}

void quantize_act_q8k_x86(const float* x, void* out, int64_t K) {
  block_q8k* y = (block_q8k*)out;
  for (int64_t i = 0; i < K / QK_K; ++i) {
    const float* xb = x + i * QK_K;
    __m256 m = _mm256_setzero_ps();
    for (int j = 0; j < QK_K; j += 8) m = absmax_acc(_mm256_loadu_ps(xb + j), m);
    const float amax = hmax_ps(m);
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const __m256 vid = _mm256_set1_ps(id);
    for (int j = 0; j < QK_K; j += 32) {
      const __m256i q0 = cvt_q(_mm256_mul_ps(_mm256_loadu_ps(xb + j), vid));
      const __m256i q1 = cvt_q(_mm256_mul_ps(_mm256_loadu_ps(xb + j + 8), vid));
      const __m256i q2 = cvt_q(_mm256_mul_ps(_mm256_loadu_ps(xb + j + 16), vid));
      const __m256i q3 = cvt_q(_mm256_mul_ps(_mm256_loadu_ps(xb + j + 24), vid));
      _mm256_storeu_si256((__m256i*)(y[i].qs + j), pack_i32x4_to_i8(q0, q1, q2, q3));
      y[i].bsums[j / 16] = (int16_t)hsum_i32(_mm256_add_epi32(q0, q1));
      y[i].bsums[j / 16 + 1] = (int16_t)hsum_i32(_mm256_add_epi32(q2, q3));
    }
    y[i].d = d;
  }
}

// -8 * sum(qs) of every activation block of M rows (Q4_0: the integer offset correction, so the
// kernels multiply unsigned nibbles and still produce the exact signed block dot product).
void q8a_offsets(const GemmArgs& a, int64_t nb, int32_t* out) {
  const __m256i ones8 = _mm256_set1_epi8(1);
  for (int64_t m = 0; m < a.M; ++m) {
    const block_q8a* x = (const block_q8a*)((const uint8_t*)a.xq + m * a.xq_row_bytes);
    for (int64_t b = 0; b < nb; ++b) {
      const __m256i q = _mm256_loadu_si256((const __m256i*)x[b].qs);
      const __m256i s16 = _mm256_maddubs_epi16(ones8, q);
      out[m * nb + b] = -8 * hsum_i32(_mm256_madd_epi16(s16, _mm256_set1_epi16(1)));
    }
  }
}

// --- Q8_0: row-wise kernels (GGUF rows, no packed layout) ---------------------------------------
// Signed x signed via |w| * sign(x, w). Four W rows at a time share each activation block; the four
// int32x8 partial sums are reduced together (exact integers), then the float steps are the ref's.
inline __m256i q8_dot(const block_q8_0* w, const int8_t* xq) {
  const __m256i wv = _mm256_loadu_si256((const __m256i*)w->qs);
  const __m256i xv = _mm256_loadu_si256((const __m256i*)xq);
  return dot_u8s8(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
}

inline __m128i hsum4_i32(__m256i v0, __m256i v1, __m256i v2, __m256i v3) {
  const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(v0, v1), _mm256_hadd_epi32(v2, v3));
  return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

// 4 W rows x R activation rows: |w| and the 4 fp16 scales are computed once per block and reused.
template <int R>
void q8_0_tile4(const block_q8_0* const* w, const block_q8a* const* x, int64_t nb, float* const* y) {
  __m128 acc[R];
  for (int m = 0; m < R; ++m) acc[m] = _mm_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    __m256i wv[4], wa[4];
    for (int r = 0; r < 4; ++r) {
      wv[r] = _mm256_loadu_si256((const __m256i*)w[r][b].qs);
      wa[r] = _mm256_sign_epi8(wv[r], wv[r]);
    }
    const __m128 dw = _mm_cvtph_ps(_mm_setr_epi16((short)w[0][b].d, (short)w[1][b].d, (short)w[2][b].d,
                                                  (short)w[3][b].d, 0, 0, 0, 0));
    for (int m = 0; m < R; ++m) {
      const __m256i xv = _mm256_loadu_si256((const __m256i*)x[m][b].qs);
      const __m128i isum = hsum4_i32(dot_u8s8(wa[0], _mm256_sign_epi8(xv, wv[0])),
                                     dot_u8s8(wa[1], _mm256_sign_epi8(xv, wv[1])),
                                     dot_u8s8(wa[2], _mm256_sign_epi8(xv, wv[2])),
                                     dot_u8s8(wa[3], _mm256_sign_epi8(xv, wv[3])));
      acc[m] = _mm_add_ps(acc[m], _mm_mul_ps(_mm_mul_ps(dw, _mm_set1_ps(x[m][b].d)), _mm_cvtepi32_ps(isum)));
    }
  }
  for (int m = 0; m < R; ++m) _mm_storeu_ps(y[m], acc[m]);
}

void gemm_q8_0_x86(const GemmArgs& a, int64_t n0, int64_t n1) {
  const int64_t nb = a.K / QK8_0;
  const uint8_t* W = (const uint8_t*)a.w;
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    const block_q8_0* w[4];
    for (int r = 0; r < 4; ++r) w[r] = (const block_q8_0*)(W + (n + r) * a.w_row_bytes);
    for (int64_t m0 = 0; m0 < a.M; m0 += 4) {
      const int R = (int)(a.M - m0 < 4 ? a.M - m0 : 4);
      const block_q8a* x[4];
      float* y[4];
      for (int m = 0; m < R; ++m) {
        x[m] = (const block_q8a*)((const uint8_t*)a.xq + (m0 + m) * a.xq_row_bytes);
        y[m] = a.y + (m0 + m) * a.ldy + n;
      }
      switch (R) {
        case 1: q8_0_tile4<1>(w, x, nb, y); break;
        case 2: q8_0_tile4<2>(w, x, nb, y); break;
        case 3: q8_0_tile4<3>(w, x, nb, y); break;
        default: q8_0_tile4<4>(w, x, nb, y); break;
      }
    }
  }
  for (; n < n1; ++n) {
    const block_q8_0* w = (const block_q8_0*)(W + n * a.w_row_bytes);
    for (int64_t m = 0; m < a.M; ++m) {
      const block_q8a* x = (const block_q8a*)((const uint8_t*)a.xq + m * a.xq_row_bytes);
      float acc = 0.0f;
      for (int64_t b = 0; b < nb; ++b) acc += h2f(w[b].d) * x[b].d * (float)hsum_i32(q8_dot(w + b, x[b].qs));
      a.y[m * a.ldy + n] = acc;
    }
  }
}

// --- Q4_K: row-wise kernels (GGUF rows) ---------------------------------------------------------
// The 8 6-bit scales and mins of a Q4_K super-block (SWAR on three 32-bit words):
//   sc[0..3] = q[0..3] & 63                      mn[0..3] = q[4..7] & 63
//   sc[4..7] = (q[8..11] & 15) | (q[0..3] >> 6) << 4   mn[4..7] = (q[8..11] >> 4) | (q[4..7] >> 6) << 4
inline void q4k_scales_mins(const uint8_t* q, uint8_t* sc, uint8_t* mn) {
  uint32_t a, b, c;
  std::memcpy(&a, q, 4);
  std::memcpy(&b, q + 4, 4);
  std::memcpy(&c, q + 8, 4);
  const uint32_t s_lo = a & 0x3f3f3f3fu, m_lo = b & 0x3f3f3f3fu;
  const uint32_t s_hi = (c & 0x0f0f0f0fu) | ((a >> 2) & 0x30303030u);
  const uint32_t m_hi = ((c >> 4) & 0x0f0f0f0fu) | ((b >> 2) & 0x30303030u);
  std::memcpy(sc, &s_lo, 4);
  std::memcpy(sc + 4, &s_hi, 4);
  std::memcpy(mn, &m_lo, 4);
  std::memcpy(mn + 4, &m_hi, 4);
}

// One W row x R activation rows. Per super-block the 6-bit scales/mins are decoded and the 8
// nibble vectors unpacked once, then reused for every activation row. Nibble x int8 pair sums
// (<= 3810) fit int16; vpmaddwd with the 6-bit scale gives exact int32 (<= 480060 per lane); the
// super-block total fits int32. Float steps per output exactly as the ref tier.
template <int R>
void q4_k_tile(const block_q4_K* w, const block_q8k* const* x, int64_t nb, float* const* y) {
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  float acc[R];
  for (int m = 0; m < R; ++m) acc[m] = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    uint8_t sc[8], mn[8];
    q4k_scales_mins(w[i].scales, sc, mn);
    __m256i u[8], s16[8];
    for (int g = 0; g < 4; ++g) {
      const __m256i q = _mm256_loadu_si256((const __m256i*)(w[i].qs + 32 * g));
      u[2 * g] = _mm256_and_si256(q, m4);
      u[2 * g + 1] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
      s16[2 * g] = _mm256_set1_epi16(sc[2 * g]);
      s16[2 * g + 1] = _mm256_set1_epi16(sc[2 * g + 1]);
    }
    const __m128i mn8 = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i*)mn));  // m0..m7 as int16
    const __m256i mins16 = _mm256_setr_m128i(_mm_unpacklo_epi16(mn8, mn8), _mm_unpackhi_epi16(mn8, mn8));
    const float wd = h2f(w[i].d), wdmin = h2f(w[i].dmin);
    for (int m = 0; m < R; ++m) {
      const block_q8k* xb = x[m] + i;
      __m256i t = _mm256_setzero_si256();
      for (int j = 0; j < 8; ++j) {
        const __m256i p = _mm256_maddubs_epi16(u[j], _mm256_loadu_si256((const __m256i*)(xb->qs + 32 * j)));
        t = _mm256_add_epi32(t, _mm256_madd_epi16(p, s16[j]));
      }
      // sum_m = sum_j m_j * (bsums[2j] + bsums[2j+1]): one vpmaddwd (exact: |bsum| <= 2032, m <= 63).
      const __m256i tm = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i*)xb->bsums), mins16);
      const __m128i h = _mm_hadd_epi32(_mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1)),
                                       _mm_add_epi32(_mm256_castsi256_si128(tm), _mm256_extracti128_si256(tm, 1)));
      const __m128i h2 = _mm_hadd_epi32(h, h);  // [sum_sc, sum_m, sum_sc, sum_m]
      const int sum_sc = _mm_cvtsi128_si32(h2);
      const int sum_m = _mm_extract_epi32(h2, 1);
      const float d = wd * xb->d;
      const float dmin = wdmin * xb->d;
      acc[m] += d * (float)sum_sc - dmin * (float)sum_m;
    }
  }
  for (int m = 0; m < R; ++m) *y[m] = acc[m];
}


// --- Q4_1 / Q5_0 / Q5_1: row-wise kernels (GGUF rows, block_q8a activations) ------------------
// Quants are decoded to unsigned bytes (0..15 or 0..31) and dotted with the int8 activations
// (vpmaddubsw pair sums <= 2 * 31 * 127, or vpdpbusd). Q5_0's "-16" is applied in integers:
// isum = sum q_w q_x - 16 * sum q_x. The _1 formats add m * s (s = d_x * sum q_x) per block, as ref.

// 32 bytes 0..15: element j (< 16) = low nibble of qs[j], element j + 16 = high nibble.
inline __m256i nibbles32(const uint8_t* qs) {
  const __m128i v = _mm_loadu_si128((const __m128i*)qs);
  const __m128i m4 = _mm_set1_epi8(0x0F);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m4), _mm_and_si128(v, m4));
}

// Bit j of the little-endian 32-bit word at qh as 0x10 in byte j (the 5th bit of Q5_0 / Q5_1).
inline __m256i q5_high32(const uint8_t* qh) {
  const __m256i v = _mm256_set1_epi32(ld32(qh));
  const __m256i sel = _mm256_shuffle_epi8(
      v, _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
  const __m256i bit = _mm256_set1_epi64x((int64_t)0x8040201008040201ull);
  return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(sel, bit), bit), _mm256_set1_epi8(0x10));
}

struct X86Q4_1 {
  static constexpr int kBytes = 20, kOffset = 0;
  static constexpr bool kMin = true;
  static __m256i quants(const uint8_t* b) { return nibbles32(b + 4); }
};
struct X86Q5_0 {
  static constexpr int kBytes = 22, kOffset = 16;
  static constexpr bool kMin = false;
  static __m256i quants(const uint8_t* b) { return _mm256_or_si256(nibbles32(b + 6), q5_high32(b + 2)); }
};
struct X86Q5_1 {
  static constexpr int kBytes = 24, kOffset = 0;
  static constexpr bool kMin = true;
  static __m256i quants(const uint8_t* b) { return _mm256_or_si256(nibbles32(b + 8), q5_high32(b + 4)); }
};

// 4 W rows (row pointers; a partial group repeats its last row, only nvalid outputs are stored) x R
// activation rows. The 4 rows' quants and scales are decoded once per block.
template <class F, int R>
void q32_tile4(const uint8_t* const* rows, const block_q8a* const* x, int64_t nb, float* const* y, int nvalid) {
  __m128 acc[R];
  for (int m = 0; m < R; ++m) acc[m] = _mm_setzero_ps();
  const __m256i ones8 = _mm256_set1_epi8(1);
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t off = b * F::kBytes;
    __m256i q[4];
    for (int r = 0; r < 4; ++r) q[r] = F::quants(rows[r] + off);
    const __m128 dw = _mm_cvtph_ps(_mm_setr_epi16((short)ld16(rows[0] + off), (short)ld16(rows[1] + off),
                                                  (short)ld16(rows[2] + off), (short)ld16(rows[3] + off), 0, 0, 0, 0));
    __m128 mw = _mm_setzero_ps();
    if (F::kMin)
      mw = _mm_cvtph_ps(_mm_setr_epi16((short)ld16(rows[0] + off + 2), (short)ld16(rows[1] + off + 2),
                                       (short)ld16(rows[2] + off + 2), (short)ld16(rows[3] + off + 2), 0, 0, 0, 0));
    for (int m = 0; m < R; ++m) {
      const __m256i xv = _mm256_loadu_si256((const __m256i*)x[m][b].qs);
      __m128i isum = hsum4_i32(dot_u8s8(q[0], xv), dot_u8s8(q[1], xv), dot_u8s8(q[2], xv), dot_u8s8(q[3], xv));
      if (F::kOffset) isum = _mm_sub_epi32(isum, _mm_set1_epi32(F::kOffset * hsum_i32(dot_u8s8(ones8, xv))));
      __m128 t = _mm_mul_ps(_mm_mul_ps(dw, _mm_set1_ps(x[m][b].d)), _mm_cvtepi32_ps(isum));
      if (F::kMin) t = _mm_add_ps(t, _mm_mul_ps(mw, _mm_set1_ps(x[m][b].s)));
      acc[m] = _mm_add_ps(acc[m], t);
    }
  }
  for (int m = 0; m < R; ++m) {
    if (nvalid == 4) {
      _mm_storeu_ps(y[m], acc[m]);
    } else {
      alignas(16) float t[4];
      _mm_store_ps(t, acc[m]);
      for (int r = 0; r < nvalid; ++r) y[m][r] = t[r];
    }
  }
}

template <class F>
void gemm_q32_x86(const GemmArgs& a, int64_t n0, int64_t n1) {
  const int64_t nb = a.K / 32;
  const uint8_t* W = (const uint8_t*)a.w;
  for (int64_t n = n0; n < n1; n += 4) {
    const int nv = (int)(n1 - n < 4 ? n1 - n : 4);
    const uint8_t* rows[4];
    for (int r = 0; r < 4; ++r) rows[r] = W + (n + (r < nv ? r : nv - 1)) * a.w_row_bytes;  // never past n1
    for (int64_t m0 = 0; m0 < a.M; m0 += 4) {
      const int R = (int)(a.M - m0 < 4 ? a.M - m0 : 4);
      const block_q8a* x[4];
      float* y[4];
      for (int m = 0; m < R; ++m) {
        x[m] = (const block_q8a*)((const uint8_t*)a.xq + (m0 + m) * a.xq_row_bytes);
        y[m] = a.y + (m0 + m) * a.ldy + n;
      }
      switch (R) {
        case 1: q32_tile4<F, 1>(rows, x, nb, y, nv); break;
        case 2: q32_tile4<F, 2>(rows, x, nb, y, nv); break;
        case 3: q32_tile4<F, 3>(rows, x, nb, y, nv); break;
        default: q32_tile4<F, 4>(rows, x, nb, y, nv); break;
      }
    }
  }
}

// --- Q5_K: row-wise kernel (GGUF rows) -----------------------------------------------------------
// As q4_k_tile, with the 5th bit of sub-block j (bit j of qh[l]) or-ed in as 0x10: quants 0..31,
// vpmaddubsw pair sums <= 7874, times the 6-bit scale with vpmaddwd (exact int32).
template <int R>
void q5_k_tile(const block_q5_K* w, const block_q8k* const* x, int64_t nb, float* const* y) {
  const __m256i m4 = _mm256_set1_epi8(0x0F), b4 = _mm256_set1_epi8(0x10);
  float acc[R];
  for (int m = 0; m < R; ++m) acc[m] = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    uint8_t sc[8], mn[8];
    q4k_scales_mins(w[i].scales, sc, mn);
    const __m256i qh = _mm256_loadu_si256((const __m256i*)w[i].qh);
    __m256i u[8], s16[8];
    for (int g = 0; g < 4; ++g) {
      const __m256i q = _mm256_loadu_si256((const __m256i*)(w[i].qs + 32 * g));
      const __m256i bit0 = _mm256_set1_epi8((char)(1 << (2 * g))), bit1 = _mm256_set1_epi8((char)(2 << (2 * g)));
      const __m256i h0 = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bit0), bit0), b4);
      const __m256i h1 = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bit1), bit1), b4);
      u[2 * g] = _mm256_or_si256(_mm256_and_si256(q, m4), h0);
      u[2 * g + 1] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), h1);
      s16[2 * g] = _mm256_set1_epi16(sc[2 * g]);
      s16[2 * g + 1] = _mm256_set1_epi16(sc[2 * g + 1]);
    }
    const __m128i mn8 = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i*)mn));
    const __m256i mins16 = _mm256_setr_m128i(_mm_unpacklo_epi16(mn8, mn8), _mm_unpackhi_epi16(mn8, mn8));
    const float wd = h2f(w[i].d), wdmin = h2f(w[i].dmin);
    for (int m = 0; m < R; ++m) {
      const block_q8k* xb = x[m] + i;
      __m256i t = _mm256_setzero_si256();
      for (int j = 0; j < 8; ++j) {
        const __m256i p = _mm256_maddubs_epi16(u[j], _mm256_loadu_si256((const __m256i*)(xb->qs + 32 * j)));
        t = _mm256_add_epi32(t, _mm256_madd_epi16(p, s16[j]));
      }
      const __m256i tm = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i*)xb->bsums), mins16);
      const int sum_sc = hsum_i32(t);
      const int sum_m = hsum_i32(tm);
      const float d = wd * xb->d;
      const float dmin = wdmin * xb->d;
      acc[m] += d * (float)sum_sc - dmin * (float)sum_m;
    }
  }
  for (int m = 0; m < R; ++m) *y[m] = acc[m];
}

// --- Q6_K: row-wise kernel (GGUF rows) -----------------------------------------------------------
// Chunk c = 4h + s (elements 128h + 32s .. +31, sub-blocks 2c and 2c + 1) is decoded to unsigned
// quants 0..63: low nibbles from ql, bits 2s..2s+1 of qh moved to bits 4..5. vpmaddubsw pair sums
// (<= 2 * 63 * 127 = 16002) times the int8 sub-block scale with vpmaddwd (low 128-bit lane: scale
// 2c, high lane: 2c + 1) are exact int32; the "-32" is applied once per super-block in integers:
// isum = sum_j sc_j (sum q_w q_x) - 32 sum_j sc_j bsum_j. Then acc += (d * d_x) * isum, as ref.
template <int R>
void q6_k_tile(const block_q6_K* w, const block_q8k* const* x, int64_t nb, float* const* y) {
  const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
  float acc[R];
  for (int m = 0; m < R; ++m) acc[m] = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    __m256i q[8], s16[8];
    for (int h = 0; h < 2; ++h) {
      const __m256i l0 = _mm256_loadu_si256((const __m256i*)(w[i].ql + 64 * h));
      const __m256i l1 = _mm256_loadu_si256((const __m256i*)(w[i].ql + 64 * h + 32));
      const __m256i qh = _mm256_loadu_si256((const __m256i*)(w[i].qh + 32 * h));
      q[4 * h + 0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
      q[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
      q[4 * h + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(qh, m30));
      q[4 * h + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                     _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
    }
    for (int c = 0; c < 8; ++c)
      s16[c] = _mm256_set_m128i(_mm_set1_epi16(w[i].scales[2 * c + 1]), _mm_set1_epi16(w[i].scales[2 * c]));
    const __m256i sc_all = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)w[i].scales));
    const float wd = h2f(w[i].d);
    for (int m = 0; m < R; ++m) {
      const block_q8k* xb = x[m] + i;
      __m256i t = _mm256_setzero_si256();
      for (int c = 0; c < 8; ++c) {
        const __m256i p = _mm256_maddubs_epi16(q[c], _mm256_loadu_si256((const __m256i*)(xb->qs + 32 * c)));
        t = _mm256_add_epi32(t, _mm256_madd_epi16(p, s16[c]));
      }
      const __m256i off = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i*)xb->bsums), sc_all);
      const int isum = hsum_i32(_mm256_sub_epi32(t, _mm256_slli_epi32(off, 5)));
      const float d = wd * xb->d;
      acc[m] += d * (float)isum;
    }
  }
  for (int m = 0; m < R; ++m) *y[m] = acc[m];
}

// One W row x up to 4 activation rows per call, for the row-wise K-quant kernels.
template <class WB, void (*TILE1)(const WB*, const block_q8k* const*, int64_t, float* const*),
          void (*TILE2)(const WB*, const block_q8k* const*, int64_t, float* const*),
          void (*TILE3)(const WB*, const block_q8k* const*, int64_t, float* const*),
          void (*TILE4)(const WB*, const block_q8k* const*, int64_t, float* const*)>
void gemm_kq_rows_x86(const GemmArgs& a, int64_t n0, int64_t n1) {
  const int64_t nb = a.K / QK_K;
  for (int64_t n = n0; n < n1; ++n) {
    const WB* w = (const WB*)((const uint8_t*)a.w + n * a.w_row_bytes);
    for (int64_t m0 = 0; m0 < a.M; m0 += 4) {
      const int R = (int)(a.M - m0 < 4 ? a.M - m0 : 4);
      const block_q8k* x[4];
      float* y[4];
      for (int m = 0; m < R; ++m) {
        x[m] = (const block_q8k*)((const uint8_t*)a.xq + (m0 + m) * a.xq_row_bytes);
        y[m] = a.y + (m0 + m) * a.ldy + n;
      }
      switch (R) {
        case 1: TILE1(w, x, nb, y); break;
        case 2: TILE2(w, x, nb, y); break;
        case 3: TILE3(w, x, nb, y); break;
        default: TILE4(w, x, nb, y); break;
      }
    }
  }
}

void gemm_q4_k_x86(const GemmArgs& a, int64_t n0, int64_t n1) {
  gemm_kq_rows_x86<block_q4_K, q4_k_tile<1>, q4_k_tile<2>, q4_k_tile<3>, q4_k_tile<4>>(a, n0, n1);
}
void gemm_q5_k_x86(const GemmArgs& a, int64_t n0, int64_t n1) {
  gemm_kq_rows_x86<block_q5_K, q5_k_tile<1>, q5_k_tile<2>, q5_k_tile<3>, q5_k_tile<4>>(a, n0, n1);
}
void gemm_q6_k_x86(const GemmArgs& a, int64_t n0, int64_t n1) {
  gemm_kq_rows_x86<block_q6_K, q6_k_tile<1>, q6_k_tile<2>, q6_k_tile<3>, q6_k_tile<4>>(a, n0, n1);
}

// fn(std::integral_constant<int, r>()) for r = R in [1, MR]: the activation-row count as a template
// argument of a tile kernel.
template <int MR, class Fn>
inline void with_rows(int R, Fn&& fn) {
  if constexpr (MR > 1) {
    if (R < MR) return with_rows<MR - 1>(R, fn);
  }
  fn(std::integral_constant<int, MR>());
}

// The loop every packed K-quant GEMM shares: whole groups of GR weight rows, up to MR activation rows
// at a time, tile(wp, g0, nb, x, y, r) with r the row count as an integral_constant (g0: group-block
// number of the group's first column, for layouts that alternate by position); the final partial
// group runs rows_fallback on the GGUF rows.
template <int GR, int MR, class Tile>
inline void gemm_kq_packed_groups(const GemmArgs& a, int64_t n0, int64_t n1,
                                  void (*rows_fallback)(const GemmArgs&, int64_t, int64_t), Tile tile) {
  const int64_t nb = a.K / QK_K;
  const uint8_t* W = (const uint8_t*)a.w;
  int64_t n = n0;
  for (; n + GR <= n1; n += GR) {
    const uint8_t* wp = W + n * (int64_t)a.w_row_bytes;
    const int64_t g0 = (n / GR) * nb;
    for (int64_t m0 = 0; m0 < a.M; m0 += MR) {
      const int R = (int)(a.M - m0 < MR ? a.M - m0 : MR);
      const block_q8k* x[MR];
      float* y[MR];
      for (int m = 0; m < R; ++m) {
        x[m] = (const block_q8k*)((const uint8_t*)a.xq + (m0 + m) * a.xq_row_bytes);
        y[m] = a.y + (m0 + m) * a.ldy + n;
      }
      with_rows<MR>(R, [&](auto r) { tile(wp, g0, nb, x, y, r); });
    }
  }
  if (n < n1) rows_fallback(a, n, n1);  // final partial group: GGUF rows
}

// The row-wise entries of the newer formats in a tier table (the tiers add their packed layouts).
inline void set_row_wise_kernels_x86(MatmulKernels& k) {
  k.q4_1.quantize_act = quantize_act_q8a_x86;
  k.q4_1.gemm = gemm_q32_x86<X86Q4_1>;
  k.q5_0.quantize_act = quantize_act_q8a_x86;
  k.q5_0.gemm = gemm_q32_x86<X86Q5_0>;
  k.q5_1.quantize_act = quantize_act_q8a_x86;
  k.q5_1.gemm = gemm_q32_x86<X86Q5_1>;
  k.q5_k.quantize_act = quantize_act_q8k_x86;
  k.q5_k.gemm = gemm_q5_k_x86;
  k.q6_k.quantize_act = quantize_act_q8k_x86;
  k.q6_k.gemm = gemm_q6_k_x86;
}

// --- Q4_0 packed layout (group of G rows) -------------------------------------------------------
// For each block column b (0 .. K/32-1), one packed group-block of G * 18 bytes:
//   [G fp16 scales, row order][4 chunks of 4*G bytes: chunk c holds, for each row r, the 4 bytes
//   qs[4c .. 4c+3] of row r's block b]
// so one 4G-byte vector load gives lane r = row r; low nibbles are elements 4c..4c+3 and high
// nibbles elements 16+4c..16+4c+3. A final partial group (< G rows) is left in GGUF row layout.
template <int G>
void pack_q4_0_rows(const void* src, void* dst, int64_t n_rows, int64_t K) {
  const int64_t nb = K / 32;
  const int64_t rb = nb * (int64_t)sizeof(block_q4_0);
  const uint8_t* s = (const uint8_t*)src;
  uint8_t* d = (uint8_t*)dst;
  if (n_rows < G) {
    std::memcpy(d, s, (size_t)(n_rows * rb));
    return;
  }
  for (int64_t b = 0; b < nb; ++b) {
    uint8_t* o = d + b * G * 18;
    for (int r = 0; r < G; ++r) {
      const uint8_t* blk = s + r * rb + b * 18;
      std::memcpy(o + 2 * r, blk, 2);
      for (int c = 0; c < 4; ++c) std::memcpy(o + 2 * G + 4 * G * c + 4 * r, blk + 2 + 4 * c, 4);
    }
  }
}


// --- Q6_K packed layout (groups of G rows; G = 8 on avx2, 16 on avx512) ----------------------------
// VB = 4G bytes: one vector holding 4 bytes of each of the G rows (lane r = row r). Rows n .. n+G-1
// (n a multiple of G) hold nb = K/256 group-blocks of G * 210 = 52.5 VB bytes, one per super-block
// column i; group-block number g = (n / G) * nb + i of the matrix starts at byte g * 52.5 VB. Its
// 52 VB of vectors come first when g is even and after the G fp16 d when g is odd, so from a
// VB-aligned matrix every vector load is VB-aligned (52.5 VB is not a multiple of VB). Vectors:
//   [0, 4VB)        scales: byte G*j + r = row r's scales[j] (j = 0..15), so one 16-byte (8-byte)
//                   vpmovsxbd load gives sub-block j's int8 scale of every row as int32 lanes
//   [4VB, 52VB)     4 steps q = 2h + half (h: 128-element half, half: l < 16 or l >= 16), 12 VB each:
//                     chunk c (c = 0..3)      lane r = row r's ql[4t .. 4t+3], t = 16h + 4half + c
//                     chunk 4 + c             lane r = row r's ql[4t .. 4t+3], t = 16h + 8 + 4half + c
//                     chunk 8 + c             lane r = row r's qh[4u .. 4u+3], u = 8h + 4half + c
//                   so chunks c / 8 + c give low nibbles of sub-block j = 8h + half (s = 0) and high
//                   nibbles of j + 4 (s = 2); chunks 4 + c / 8 + c give s = 1 (j + 2) and s = 3 (j + 6);
//                   the 4 bytes of every lane are elements 16j + 4c .. 16j + 4c + 3 of one sub-block.
//   d: the G fp16 d, row order (2G = VB/2 bytes)
// The pack group is 2G rows (so its first group-block number is even whatever nb is); rows past the
// last full G-row group stay in GGUF row layout (row-wise kernel).
template <int G>
inline int64_t q6k_vec_offset(int64_t g) { return (g & 1) ? 2 * G : 0; }   // start of the vectors
template <int G>
inline int64_t q6k_d_offset(int64_t g) { return (g & 1) ? 0 : 52 * 4 * G; }  // start of the fp16 d

template <int G>
void pack_q6_k_rows(const void* src, void* dst, int64_t n_rows, int64_t K) {
  constexpr int VB = 4 * G;
  const int64_t nb = K / QK_K;
  const int64_t rb = nb * (int64_t)sizeof(block_q6_K);
  const uint8_t* s = (const uint8_t*)src;
  uint8_t* d = (uint8_t*)dst;
  int64_t r0 = 0;
  for (; r0 + G <= n_rows; r0 += G) {
    for (int64_t i = 0; i < nb; ++i) {
      const int64_t g = (r0 / G) * nb + i;  // group-block number relative to the (even) pack group
      uint8_t* gb = d + r0 * rb + i * G * 210;
      uint8_t* o = gb + q6k_vec_offset<G>(g);
      uint8_t* od = gb + q6k_d_offset<G>(g);
      for (int r = 0; r < G; ++r) {
        const block_q6_K* b = (const block_q6_K*)(s + (r0 + r) * rb + i * 210);
        for (int j = 0; j < 16; ++j) o[G * j + r] = (uint8_t)b->scales[j];
        for (int q = 0; q < 4; ++q) {
          uint8_t* st = o + 4 * VB + 12 * VB * q;
          const int h = q >> 1, half = q & 1;
          for (int c = 0; c < 4; ++c) {
            std::memcpy(st + VB * c + 4 * r, b->ql + 4 * (16 * h + 4 * half + c), 4);
            std::memcpy(st + VB * (4 + c) + 4 * r, b->ql + 4 * (16 * h + 8 + 4 * half + c), 4);
            std::memcpy(st + VB * (8 + c) + 4 * r, b->qh + 4 * (8 * h + 4 * half + c), 4);
          }
        }
        std::memcpy(od + 2 * r, &b->d, 2);
      }
    }
  }
  if (r0 < n_rows) std::memcpy(d + r0 * rb, s + r0 * rb, (size_t)((n_rows - r0) * rb));
}

// --- Q5_K packed layout (groups of G rows; G = 8 on avx2, 16 on avx512) ----------------------------
// VB = 4G bytes, lane r = 4 bytes of row r. For each super-block column, one G * 176 = 44 VB-byte
// group-block (a whole number of vectors: aligned whenever the matrix is):
//   [0, 2G)          G fp16 d             [2G, 4G)   G fp16 dmin
//   [VB + VB*k)      k = 0..2: lane r = row r's scales[4k .. 4k+3]  (as Q4_K packed)
//   [4VB + VB*u)     u = 0..7: lane r = row r's qh[4u .. 4u+3]
//   [12VB + VB*t)    t = 0..31: lane r = row r's qs[4t .. 4t+3]
// qs chunk t = 8g + u holds positions 4u..4u+3 of sub-blocks 2g (low nibbles) and 2g + 1 (high);
// their 5th bits are bits 2g and 2g + 1 of qh chunk u. A final partial group stays in GGUF rows.
template <int G>
void pack_q5_k_rows(const void* src, void* dst, int64_t n_rows, int64_t K) {
  constexpr int VB = 4 * G;
  const int64_t nb = K / QK_K;
  const int64_t rb = nb * (int64_t)sizeof(block_q5_K);
  const uint8_t* s = (const uint8_t*)src;
  uint8_t* d = (uint8_t*)dst;
  if (n_rows < G) {
    std::memcpy(d, s, (size_t)(n_rows * rb));
    return;
  }
  for (int64_t i = 0; i < nb; ++i) {
    uint8_t* o = d + i * G * 176;
    for (int r = 0; r < G; ++r) {
      const uint8_t* blk = s + r * rb + i * 176;
      std::memcpy(o + 2 * r, blk, 2);
      std::memcpy(o + 2 * G + 2 * r, blk + 2, 2);
      for (int k = 0; k < 3; ++k) std::memcpy(o + VB + VB * k + 4 * r, blk + 4 + 4 * k, 4);
      for (int u = 0; u < 8; ++u) std::memcpy(o + 4 * VB + VB * u + 4 * r, blk + 16 + 4 * u, 4);
      for (int t = 0; t < 32; ++t) std::memcpy(o + 12 * VB + VB * t + 4 * r, blk + 48 + 4 * t, 4);
    }
  }
}

}  // namespace
}  // namespace xsil
