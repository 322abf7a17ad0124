// AVX-512 (F/BW/VL/DQ) matmul kernels, included by matmul_avx512.cpp (no VNNI: vpmaddubsw +
// vpmaddwd) and matmul_avx512vnni.cpp (compiled with -mavx512vnni; __AVX512VNNI__ selects vpdpbusd
// paths and the VNNI-only packed layouts). Anonymous namespace: each TU keeps its own ISA build.
//   Q4_0: "lane = output row" -- a group of 16 W rows fills the 16 fp32 lanes of a zmm; up to 8
//         activation rows share every unpacked nibble vector (VNNI GEMM: 32 rows x 6 act rows).
//         Packed layout (both builds) or GGUF rows transposed in registers.
//   Q8_0, Q4_K: packed lane-per-row kernels with VNNI; otherwise row-wise kernels from
//         x86_matmul_common.h.
//   Q5_K, Q6_K: packed lane-per-row kernels in both builds (vpdpbusd or vpmaddubsw + vpmaddwd);
//         GGUF rows and a final partial group through the row-wise kernels.
#pragma once
#include "cpu/x86/x86_matmul_common.h"

namespace xsil {
namespace {

constexpr int G16 = 16;  // W rows per group
constexpr int MR8 = 8;   // activation rows per microkernel call

inline __m512i bcast32_512(const void* p) { return _mm512_set1_epi32(ld32(p)); }

struct WBlock16 {
  __m512 dw;
  __m512i v[4];  // vector c: lane r = row r's qs[4c .. 4c+3]
};

inline void load_packed16(const uint8_t* p, WBlock16& w) {
  w.dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p));
  for (int c = 0; c < 4; ++c) w.v[c] = _mm512_loadu_si512((const void*)(p + 2 * G16 + 64 * c));
}

// GGUF rows: z[j] holds rows j, j+4, j+8, j+12 in its four 128-bit lanes; a 4x4 dword transpose
// within lanes then puts row 4L+i's dword c at dword 4L+i of vector c.
inline void load_rows16(const uint8_t* const* rows, int64_t off, WBlock16& w) {
  alignas(32) uint16_t sc[16];
  for (int r = 0; r < 16; ++r) sc[r] = ld16(rows[r] + off);
  w.dw = _mm512_cvtph_ps(_mm256_load_si256((const __m256i*)sc));
  __m512i z[4];
  for (int j = 0; j < 4; ++j) {
    __m512i t = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i*)(rows[j] + off + 2)));
    t = _mm512_inserti32x4(t, _mm_loadu_si128((const __m128i*)(rows[j + 4] + off + 2)), 1);
    t = _mm512_inserti32x4(t, _mm_loadu_si128((const __m128i*)(rows[j + 8] + off + 2)), 2);
    z[j] = _mm512_inserti32x4(t, _mm_loadu_si128((const __m128i*)(rows[j + 12] + off + 2)), 3);
  }
  const __m512i t0 = _mm512_unpacklo_epi32(z[0], z[1]), t1 = _mm512_unpackhi_epi32(z[0], z[1]);
  const __m512i t2 = _mm512_unpacklo_epi32(z[2], z[3]), t3 = _mm512_unpackhi_epi32(z[2], z[3]);
  w.v[0] = _mm512_unpacklo_epi64(t0, t2);
  w.v[1] = _mm512_unpackhi_epi64(t0, t2);
  w.v[2] = _mm512_unpacklo_epi64(t1, t3);
  w.v[3] = _mm512_unpackhi_epi64(t1, t3);
}

template <int R, bool PACKED>
void q4_0_tile16(const uint8_t* wp, const uint8_t* const* rows, int64_t nb, const block_q8a* const* x,
                 const int32_t* const* xoff, float* const* y, int nvalid) {
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  __m512 acc[R];
  for (int m = 0; m < R; ++m) acc[m] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    WBlock16 w;
    if (PACKED) {
      prefetch_ahead(wp + b * G16 * 18, G16 * 18 + 63);
      load_packed16(wp + b * G16 * 18, w);
    } else {
      // G16 row streams advancing 18 B per block: prefetch each row ~512 B ahead every 2 blocks.
      if ((b & 1) == 0)
        for (int r = 0; r < G16; ++r) _mm_prefetch((const char*)(rows[r] + b * 18 + 512), _MM_HINT_T0);
      load_rows16(rows, b * 18, w);
    }
    __m512i isum[R];
#if defined(__AVX512VNNI__)
    // Start from -8 * sum(q_x): vpdpbusd of unsigned nibbles then gives the exact signed dot.
    for (int m = 0; m < R; ++m) isum[m] = _mm512_set1_epi32(xoff[m][b]);
    for (int c = 0; c < 4; ++c) {
      const __m512i lo = _mm512_and_si512(w.v[c], m4);
      const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(w.v[c], 4), m4);
      for (int m = 0; m < R; ++m) {
        isum[m] = _mm512_dpbusd_epi32(isum[m], lo, bcast32_512(x[m][b].qs + 4 * c));
        isum[m] = _mm512_dpbusd_epi32(isum[m], hi, bcast32_512(x[m][b].qs + 16 + 4 * c));
      }
    }
#else
    // Unpack the 8 nibble vectors once, reuse them for every row; two int16 chains per row.
    // int16 sums of 8 vpmaddubsw results: |each| <= 2 * 15 * 127, total <= 30480: no saturation.
    __m512i u[8];
    for (int c = 0; c < 4; ++c) {
      u[2 * c] = _mm512_and_si512(w.v[c], m4);
      u[2 * c + 1] = _mm512_and_si512(_mm512_srli_epi16(w.v[c], 4), m4);
    }
    for (int m = 0; m < R; ++m) {
      const int8_t* q = x[m][b].qs;
      __m512i p0 = _mm512_maddubs_epi16(u[0], bcast32_512(q));
      __m512i p1 = _mm512_maddubs_epi16(u[1], bcast32_512(q + 16));
      p0 = _mm512_add_epi16(p0, _mm512_maddubs_epi16(u[2], bcast32_512(q + 4)));
      p1 = _mm512_add_epi16(p1, _mm512_maddubs_epi16(u[3], bcast32_512(q + 20)));
      p0 = _mm512_add_epi16(p0, _mm512_maddubs_epi16(u[4], bcast32_512(q + 8)));
      p1 = _mm512_add_epi16(p1, _mm512_maddubs_epi16(u[5], bcast32_512(q + 24)));
      p0 = _mm512_add_epi16(p0, _mm512_maddubs_epi16(u[6], bcast32_512(q + 12)));
      p1 = _mm512_add_epi16(p1, _mm512_maddubs_epi16(u[7], bcast32_512(q + 28)));
      isum[m] = _mm512_add_epi32(_mm512_madd_epi16(_mm512_add_epi16(p0, p1), _mm512_set1_epi16(1)),
                                 _mm512_set1_epi32(xoff[m][b]));
    }
#endif
    for (int m = 0; m < R; ++m) {
      const __m512 dwdx = _mm512_mul_ps(w.dw, _mm512_set1_ps(x[m][b].d));
      acc[m] = _mm512_add_ps(acc[m], _mm512_mul_ps(dwdx, _mm512_cvtepi32_ps(isum[m])));
    }
  }
  const __mmask16 mask = (__mmask16)((1u << nvalid) - 1u);
  for (int m = 0; m < R; ++m) _mm512_mask_storeu_ps(y[m], mask, acc[m]);
}

#if defined(__AVX512VNNI__)
// VNNI, packed, two full groups (32 W rows) x R activation rows: each activation broadcast (an
// embedded {1to16} memory operand) feeds two vpdpbusd, and the per-(row, block) float work is
// shared by twice the outputs. Per output the operations are those of q4_0_tile16, so results do
// not depend on which tile computes them.
template <int R>
void q4_0_tile32_vnni(const uint8_t* wp0, const uint8_t* wp1, int64_t nb, const block_q8a* const* x,
                      const int32_t* const* xoff, float* const* y) {
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  __m512 acc0[R], acc1[R];
  for (int m = 0; m < R; ++m) acc0[m] = acc1[m] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* p0 = wp0 + b * G16 * 18;
    const uint8_t* p1 = wp1 + b * G16 * 18;
    __m512i i0[R], i1[R];
    for (int m = 0; m < R; ++m) i0[m] = i1[m] = _mm512_set1_epi32(xoff[m][b]);
    for (int c = 0; c < 4; ++c) {
      const __m512i v0 = _mm512_loadu_si512((const void*)(p0 + 2 * G16 + 64 * c));
      const __m512i v1 = _mm512_loadu_si512((const void*)(p1 + 2 * G16 + 64 * c));
      const __m512i lo0 = _mm512_and_si512(v0, m4), hi0 = _mm512_and_si512(_mm512_srli_epi16(v0, 4), m4);
      const __m512i lo1 = _mm512_and_si512(v1, m4), hi1 = _mm512_and_si512(_mm512_srli_epi16(v1, 4), m4);
      for (int m = 0; m < R; ++m) {
        const __m512i xl = bcast32_512(x[m][b].qs + 4 * c), xh = bcast32_512(x[m][b].qs + 16 + 4 * c);
        i0[m] = _mm512_dpbusd_epi32(i0[m], lo0, xl);
        i1[m] = _mm512_dpbusd_epi32(i1[m], lo1, xl);
        i0[m] = _mm512_dpbusd_epi32(i0[m], hi0, xh);
        i1[m] = _mm512_dpbusd_epi32(i1[m], hi1, xh);
      }
    }
    const __m512 dw0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p0));
    const __m512 dw1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p1));
    for (int m = 0; m < R; ++m) {
      const __m512 dx = _mm512_set1_ps(x[m][b].d);
      acc0[m] = _mm512_add_ps(acc0[m], _mm512_mul_ps(_mm512_mul_ps(dw0, dx), _mm512_cvtepi32_ps(i0[m])));
      acc1[m] = _mm512_add_ps(acc1[m], _mm512_mul_ps(_mm512_mul_ps(dw1, dx), _mm512_cvtepi32_ps(i1[m])));
    }
  }
  for (int m = 0; m < R; ++m) {
    _mm512_storeu_ps(y[m], acc0[m]);
    _mm512_storeu_ps(y[m] + G16, acc1[m]);
  }
}
#endif

template <bool PACKED>
void gemm_q4_0_avx512(const GemmArgs& a, int64_t n0, int64_t n1) {
  const int64_t nb = a.K / 32;
  const int64_t rb = (int64_t)a.w_row_bytes;
  thread_local Scratch s_off;
  int32_t* off = (int32_t*)s_off.get((size_t)(a.M * nb) * sizeof(int32_t));
  q8a_offsets(a, nb, off);
  const uint8_t* W = (const uint8_t*)a.w;
  int64_t n = n0;
#if defined(__AVX512VNNI__)
  if (PACKED && a.M >= 2) {
    // Two full groups (32 rows) x 6 activation rows. (Blocking K so the weights stay in L1 measured
    // no gain: the 2 x K/32 x 288 B of a group pair stream from L2 fast enough.)
    constexpr int MR6 = 6;
    for (; n + 2 * G16 <= n1; n += 2 * G16) {
      const uint8_t* wp0 = W + n * rb;
      const uint8_t* wp1 = W + (n + G16) * rb;
      for (int64_t m0 = 0; m0 < a.M; m0 += MR6) {
        const int R = (int)(a.M - m0 < MR6 ? a.M - m0 : MR6);
        const block_q8a* x[MR6];
        const int32_t* xo[MR6];
        float* y[MR6];
        for (int m = 0; m < R; ++m) {
          x[m] = (const block_q8a*)((const uint8_t*)a.xq + (m0 + m) * a.xq_row_bytes);
          xo[m] = off + (m0 + m) * nb;
          y[m] = a.y + (m0 + m) * a.ldy + n;
        }
        switch (R) {
          case 1: q4_0_tile32_vnni<1>(wp0, wp1, nb, x, xo, y); break;
          case 2: q4_0_tile32_vnni<2>(wp0, wp1, nb, x, xo, y); break;
          case 3: q4_0_tile32_vnni<3>(wp0, wp1, nb, x, xo, y); break;
          case 4: q4_0_tile32_vnni<4>(wp0, wp1, nb, x, xo, y); break;
          case 5: q4_0_tile32_vnni<5>(wp0, wp1, nb, x, xo, y); break;
          default: q4_0_tile32_vnni<6>(wp0, wp1, nb, x, xo, y); break;
        }
      }
    }
  }
#endif
  for (; n < n1; n += G16) {
    const int nv = (int)(n1 - n < G16 ? n1 - n : G16);
    const bool packed = PACKED && nv == G16;
    const uint8_t* rows[G16];
    for (int r = 0; r < G16; ++r) rows[r] = W + (n + (r < nv ? r : nv - 1)) * rb;  // clamp: never read past N
    const uint8_t* wp = W + n * rb;
    for (int64_t m0 = 0; m0 < a.M; m0 += MR8) {
      const int R = (int)(a.M - m0 < MR8 ? a.M - m0 : MR8);
      const block_q8a* x[MR8];
      const int32_t* xo[MR8];
      float* y[MR8];
      for (int m = 0; m < R; ++m) {
        x[m] = (const block_q8a*)((const uint8_t*)a.xq + (m0 + m) * a.xq_row_bytes);
        xo[m] = off + (m0 + m) * nb;
        y[m] = a.y + (m0 + m) * a.ldy + n;
      }
#define XSIL_Q40_CASE(RR)                                        \
  case RR:                                                       \
    if (packed)                                                  \
      q4_0_tile16<RR, true>(wp, rows, nb, x, xo, y, nv);         \
    else                                                         \
      q4_0_tile16<RR, false>(wp, rows, nb, x, xo, y, nv);        \
    break;
      switch (R) {
        XSIL_Q40_CASE(1)
        XSIL_Q40_CASE(2)
        XSIL_Q40_CASE(3)
        XSIL_Q40_CASE(4)
        XSIL_Q40_CASE(5)
        XSIL_Q40_CASE(6)
        XSIL_Q40_CASE(7)
        XSIL_Q40_CASE(8)
      }
#undef XSIL_Q40_CASE
    }
  }
}

inline __m512i dpwssd512(__m512i acc, __m512i a, __m512i b) {
#if defined(__AVX512VNNI__)
  return _mm512_dpwssd_epi32(acc, a, b);
#else
  return _mm512_add_epi32(acc, _mm512_madd_epi16(a, b));
#endif
}

// --- shared by the packed 16-row Q4_K and Q5_K kernels (same 12-byte 6-bit scale/min records) ------
// vpshufb controls: byte j of each dword -> int32 (sel[j], j < 4); bytes (0,1) / (2,3) -> int16 pair
// (sel[4] / sel[5]).
struct KqSel16 {
  __m512i sel[6];
  KqSel16() {
    alignas(64) int8_t ctl[6][64];
    for (int q = 0; q < 64; ++q) {
      const int base = (q & ~3) % 16, pos = q % 4;
      for (int j = 0; j < 4; ++j) ctl[j][q] = pos == 0 ? (int8_t)(base + j) : (int8_t)0x80;
      ctl[4][q] = pos == 0 ? (int8_t)base : pos == 2 ? (int8_t)(base + 1) : (int8_t)0x80;
      ctl[5][q] = pos == 0 ? (int8_t)(base + 2) : pos == 2 ? (int8_t)(base + 3) : (int8_t)0x80;
    }
    for (int j = 0; j < 6; ++j) sel[j] = _mm512_load_si512((const void*)ctl[j]);
  }
};

// The 6-bit scales (s_lo: sub-blocks 0-3, s_hi: 4-7) and mins of 16 rows from the scale records at
// p + 64 .. p + 255 (SWAR per dword, as q4k_scales_mins).
struct KqScales16 {
  __m512i s_lo, m_lo, s_hi, m_hi;
  explicit KqScales16(const uint8_t* p) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i a = _mm512_loadu_si512((const void*)(p + 64));
    const __m512i b = _mm512_loadu_si512((const void*)(p + 128));
    const __m512i c = _mm512_loadu_si512((const void*)(p + 192));
    const __m512i k3f = _mm512_set1_epi8(0x3f), k30 = _mm512_set1_epi8(0x30);
    s_lo = _mm512_and_si512(a, k3f);
    m_lo = _mm512_and_si512(b, k3f);
    s_hi = _mm512_or_si512(_mm512_and_si512(c, m4), _mm512_and_si512(_mm512_srli_epi32(a, 2), k30));
    m_hi = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(c, 4), m4), _mm512_and_si512(_mm512_srli_epi32(b, 2), k30));
  }
};

// Super-block i's end: the mins term (int16 pairs of mins . pair sums of the activations' bsums) and
// acc[m] += (d_w d_x) ssc[m] - (dmin_w d_x) smn[m], with d_w / dmin_w the fp16 rows at p / p + 32.
template <int R>
inline void kq_finish16(const uint8_t* p, const block_q8k* const* x, int64_t i, const KqScales16& sm,
                        const KqSel16& S, const __m512i* ssc, __m512i* smn, __m512* acc) {
  const __m512i mp[4] = {_mm512_shuffle_epi8(sm.m_lo, S.sel[4]), _mm512_shuffle_epi8(sm.m_lo, S.sel[5]),
                         _mm512_shuffle_epi8(sm.m_hi, S.sel[4]), _mm512_shuffle_epi8(sm.m_hi, S.sel[5])};
  const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p));
  const __m512 dmw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(p + 32)));
  for (int m = 0; m < R; ++m) {
    const int16_t* bs = x[m][i].bsums;
    for (int k = 0; k < 4; ++k) {
      const int32_t pr = (int32_t)(uint16_t)(int16_t)(bs[4 * k] + bs[4 * k + 1]) |
                         (int32_t)((uint32_t)(uint16_t)(int16_t)(bs[4 * k + 2] + bs[4 * k + 3]) << 16);
      smn[m] = dpwssd512(smn[m], mp[k], _mm512_set1_epi32(pr));
    }
    const __m512 dx = _mm512_set1_ps(x[m][i].d);
    const __m512 d = _mm512_mul_ps(dw, dx), dmin = _mm512_mul_ps(dmw, dx);
    acc[m] = _mm512_add_ps(acc[m], _mm512_sub_ps(_mm512_mul_ps(d, _mm512_cvtepi32_ps(ssc[m])),
                                                 _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(smn[m]))));
  }
}

#if defined(__AVX512VNNI__)
// --- Q4_K, VNNI, packed groups of 16 rows ("lane = output row") -----------------------------------
// Packed group-block (one super-block column of 16 rows, 16 x 144 = 2304 bytes):
//   [0, 32)      16 fp16 d            [32, 64)   16 fp16 dmin
//   [64, 256)    3 chunks of 64 B: chunk k, lane r = row r's scales[4k .. 4k+3]
//   [256, 2304)  32 chunks of 64 B: chunk t, lane r = row r's qs[4t .. 4t+3]
// A final partial group (< 16 rows) stays in GGUF layout and goes through the row-wise kernel.
constexpr int GK = 16;
constexpr int MRK = 4;

void pack_q4_k_rows16(const void* src, void* dst, int64_t n_rows, int64_t K) {
  const int64_t nb = K / QK_K;
  const int64_t rb = nb * (int64_t)sizeof(block_q4_K);
  const uint8_t* s = (const uint8_t*)src;
  uint8_t* d = (uint8_t*)dst;
  if (n_rows < GK) {
    std::memcpy(d, s, (size_t)(n_rows * rb));
    return;
  }
  for (int64_t i = 0; i < nb; ++i) {
    uint8_t* o = d + i * GK * 144;
    for (int r = 0; r < GK; ++r) {
      const uint8_t* blk = s + r * rb + i * 144;
      std::memcpy(o + 2 * r, blk, 2);
      std::memcpy(o + 32 + 2 * r, blk + 2, 2);
      for (int k = 0; k < 3; ++k) std::memcpy(o + 64 + 64 * k + 4 * r, blk + 4 + 4 * k, 4);
      for (int t = 0; t < 32; ++t) std::memcpy(o + 256 + 64 * t + 4 * r, blk + 16 + 4 * t, 4);
    }
  }
}

template <int R>
void q4_k_tile16_vnni(const uint8_t* wp, int64_t nb, const block_q8k* const* x, float* const* y) {
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  const KqSel16 S;
  const __m512i* sel = S.sel;
  __m512 acc[R];
  for (int m = 0; m < R; ++m) acc[m] = _mm512_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    const uint8_t* p = wp + i * GK * 144;
    prefetch_ahead(p, GK * 144);
    const KqScales16 sm(p);
    const __m512i s_lo = sm.s_lo, s_hi = sm.s_hi;
    __m512i ssc[R], smn[R];
    for (int m = 0; m < R; ++m) ssc[m] = smn[m] = _mm512_setzero_si512();
    for (int g = 0; g < 4; ++g) {
      __m512i ilo[R], ihi[R];
      for (int m = 0; m < R; ++m) ilo[m] = ihi[m] = _mm512_setzero_si512();
      for (int u = 0; u < 8; ++u) {
        const __m512i v = _mm512_loadu_si512((const void*)(p + 256 + 64 * (8 * g + u)));
        const __m512i lo = _mm512_and_si512(v, m4);
        const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
        for (int m = 0; m < R; ++m) {
          ilo[m] = _mm512_dpbusd_epi32(ilo[m], lo, bcast32_512(x[m][i].qs + 64 * g + 4 * u));
          ihi[m] = _mm512_dpbusd_epi32(ihi[m], hi, bcast32_512(x[m][i].qs + 64 * g + 32 + 4 * u));
        }
      }
      // sub-blocks 2g (low nibbles) and 2g+1 (high): scales are bytes of s_lo (j < 4) / s_hi.
      const __m512i src = g < 2 ? s_lo : s_hi;
      const __m512i sc0 = _mm512_shuffle_epi8(src, sel[(2 * g) & 3]);
      const __m512i sc1 = _mm512_shuffle_epi8(src, sel[(2 * g + 1) & 3]);
      for (int m = 0; m < R; ++m)
        ssc[m] = _mm512_add_epi32(ssc[m], _mm512_add_epi32(_mm512_mullo_epi32(ilo[m], sc0), _mm512_mullo_epi32(ihi[m], sc1)));
    }
    kq_finish16<R>(p, x, i, sm, S, ssc, smn, acc);
  }
  for (int m = 0; m < R; ++m) _mm512_storeu_ps(y[m], acc[m]);
}

void gemm_q4_k_packed_vnni(const GemmArgs& a, int64_t n0, int64_t n1) {
  gemm_kq_packed_groups<GK, MRK>(a, n0, n1, gemm_q4_k_x86, [](const uint8_t* wp, int64_t g0, int64_t nb, const block_q8k* const* x, float* const* y, auto r) {
    (void)g0;
    q4_k_tile16_vnni<decltype(r)::value>(wp, nb, x, y);
  });
}
#endif

#if defined(__AVX512VNNI__)
// --- Q8_0, VNNI, packed groups of 16 rows ----------------------------------------------------------
// Packed group-block (one block column of 16 rows, 16 x 34 = 544 bytes):
//   [0, 32) 16 fp16 d;  [32, 544) 8 chunks of 64 B: chunk t, lane r = row r's qs[4t .. 4t+3].
// vpdpbusd wants an unsigned operand: w + 128 (= w ^ 0x80), and the accumulator starts at
// -128 * sum(q_x), so isum is the exact signed dot product. A partial final group stays in GGUF rows.
void pack_q8_0_rows16(const void* src, void* dst, int64_t n_rows, int64_t K) {
  const int64_t nb = K / 32;
  const int64_t rb = nb * (int64_t)sizeof(block_q8_0);
  const uint8_t* s = (const uint8_t*)src;
  uint8_t* d = (uint8_t*)dst;
  if (n_rows < G16) {
    std::memcpy(d, s, (size_t)(n_rows * rb));
    return;
  }
  for (int64_t b = 0; b < nb; ++b) {
    uint8_t* o = d + b * G16 * 34;
    for (int r = 0; r < G16; ++r) {
      const uint8_t* blk = s + r * rb + b * 34;
      std::memcpy(o + 2 * r, blk, 2);
      for (int t = 0; t < 8; ++t) std::memcpy(o + 32 + 64 * t + 4 * r, blk + 2 + 4 * t, 4);
    }
  }
}

template <int R>
void q8_0_tile16_vnni(const uint8_t* wp, int64_t nb, const block_q8a* const* x, const int32_t* const* xoff,
                      float* const* y) {
  const __m512i k80 = _mm512_set1_epi8((char)0x80);
  __m512 acc[R];
  for (int m = 0; m < R; ++m) acc[m] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* p = wp + b * G16 * 34;
    prefetch_ahead(p, G16 * 34 + 63);
    __m512i isum[R];
    for (int m = 0; m < R; ++m) isum[m] = _mm512_set1_epi32(16 * xoff[m][b]);  // -128 * sum(q_x)
    for (int t = 0; t < 8; ++t) {
      const __m512i u = _mm512_xor_si512(_mm512_loadu_si512((const void*)(p + 32 + 64 * t)), k80);
      for (int m = 0; m < R; ++m) isum[m] = _mm512_dpbusd_epi32(isum[m], u, bcast32_512(x[m][b].qs + 4 * t));
    }
    const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p));
    for (int m = 0; m < R; ++m) {
      const __m512 dwdx = _mm512_mul_ps(dw, _mm512_set1_ps(x[m][b].d));
      acc[m] = _mm512_add_ps(acc[m], _mm512_mul_ps(dwdx, _mm512_cvtepi32_ps(isum[m])));
    }
  }
  for (int m = 0; m < R; ++m) _mm512_storeu_ps(y[m], acc[m]);
}

void gemm_q8_0_packed_vnni(const GemmArgs& a, int64_t n0, int64_t n1) {
  const int64_t nb = a.K / 32;
  const int64_t rb = (int64_t)a.w_row_bytes;
  thread_local Scratch s_off;
  int32_t* off = (int32_t*)s_off.get((size_t)(a.M * nb) * sizeof(int32_t));
  q8a_offsets(a, nb, off);  // -8 * sum(q_x); the kernel scales it to -128 * sum(q_x)
  const uint8_t* W = (const uint8_t*)a.w;
  int64_t n = n0;
  for (; n + G16 <= n1; n += G16) {
    const uint8_t* wp = W + n * rb;
    for (int64_t m0 = 0; m0 < a.M; m0 += MR8) {
      const int R = (int)(a.M - m0 < MR8 ? a.M - m0 : MR8);
      const block_q8a* x[MR8];
      const int32_t* xo[MR8];
      float* y[MR8];
      for (int m = 0; m < R; ++m) {
        x[m] = (const block_q8a*)((const uint8_t*)a.xq + (m0 + m) * a.xq_row_bytes);
        xo[m] = off + (m0 + m) * nb;
        y[m] = a.y + (m0 + m) * a.ldy + n;
      }
      switch (R) {
        case 1: q8_0_tile16_vnni<1>(wp, nb, x, xo, y); break;
        case 2: q8_0_tile16_vnni<2>(wp, nb, x, xo, y); break;
        case 3: q8_0_tile16_vnni<3>(wp, nb, x, xo, y); break;
        case 4: q8_0_tile16_vnni<4>(wp, nb, x, xo, y); break;
        case 5: q8_0_tile16_vnni<5>(wp, nb, x, xo, y); break;
        case 6: q8_0_tile16_vnni<6>(wp, nb, x, xo, y); break;
        case 7: q8_0_tile16_vnni<7>(wp, nb, x, xo, y); break;
        default: q8_0_tile16_vnni<8>(wp, nb, x, xo, y); break;
      }
    }
  }
  if (n < n1) gemm_q8_0_x86(a, n, n1);  // final partial group: GGUF rows
}
#endif

// --- Q6_K, packed groups of 16 rows ("lane = output row"; both builds) ------------------------------
// Layout: pack_q6_k_rows<16> (x86_matmul_common.h). Per super-block, step and sub-block j the 4
// vectors of unsigned quants 0..63 are built with one vpternlogd each (low nibble from ql, bits 4..5
// from qh pre-masked with 0x33 / 0xCC and shifted within 16-bit words: the bits a shift carries into
// the neighbouring byte land in its low nibble, which the ternary select takes from ql). Per lane
// and activation row, the accumulator starts at -32 * bsum_j (the "-32" in integers), takes 4
// vpdpbusd (16 quants; without VNNI vpmaddubsw pair sums <= 2 * 63 * 127 + vpmaddwd), and is
// multiplied by the lane's int8 scale (vpmulld): isum = sum_j sc_j * (sum q_w q_x - 32 bsum_j) is the
// ref's exact integer (|partial sums| <= 16 * 128 * (16 * 63 * 127 + 32 * 2032) < 2^31). Then
// acc += (d_w * d_x) * (float)isum per lane, as ref.
constexpr int GQ6 = 16;
constexpr int MRQ6 = 4;

inline __m512i dpbusd512(__m512i acc, __m512i u, __m512i s) {
#if defined(__AVX512VNNI__)
  return _mm512_dpbusd_epi32(acc, u, s);
#else
  return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1)));
#endif
}

template <int R>
void q6_k_tile16(const uint8_t* wp, int64_t g0, int64_t nb, const block_q8k* const* x, float* const* y) {
  constexpr int VB = 4 * GQ6;
  const __m512i m0f = _mm512_set1_epi8(0x0F), m33 = _mm512_set1_epi8(0x33), mcc = _mm512_set1_epi8((char)0xCC);
  __m512 acc[R];
  for (int m = 0; m < R; ++m) acc[m] = _mm512_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    const uint8_t* gb = wp + i * GQ6 * 210;
    prefetch_ahead(gb, GQ6 * 210);
    const uint8_t* p = gb + q6k_vec_offset<GQ6>(g0 + i);
    alignas(64) int32_t off[R][16];  // -32 * bsum_j per activation row
    for (int m = 0; m < R; ++m) {
      const __m512i bs = _mm512_cvtepi16_epi32(_mm256_loadu_si256((const __m256i*)x[m][i].bsums));
      _mm512_store_si512((void*)off[m], _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(bs, 5)));
    }
    __m512i isum[R];
    for (int m = 0; m < R; ++m) isum[m] = _mm512_setzero_si512();
    for (int q = 0; q < 4; ++q) {
      const uint8_t* st = p + 4 * VB + 12 * VB * q;
      __m512i qa[4], qb[4];
      for (int c = 0; c < 4; ++c) {
        const __m512i h = _mm512_loadu_si512((const void*)(st + VB * (8 + c)));
        qa[c] = _mm512_and_si512(h, m33);
        qb[c] = _mm512_and_si512(h, mcc);
      }
      for (int s = 0; s < 4; ++s) {
        const int j = 8 * (q >> 1) + 2 * s + (q & 1);
        __m512i wv[4];
        for (int c = 0; c < 4; ++c) {
          const __m512i l = _mm512_loadu_si512((const void*)(st + VB * (4 * (s & 1) + c)));
          const __m512i lo = s < 2 ? l : _mm512_srli_epi16(l, 4);
          const __m512i hb = s == 0   ? _mm512_slli_epi16(qa[c], 4)
                             : s == 1 ? _mm512_slli_epi16(qb[c], 2)
                             : s == 2 ? qa[c]
                                      : _mm512_srli_epi16(qb[c], 2);
          wv[c] = _mm512_ternarylogic_epi32(lo, hb, m0f, 0xE4);  // m0f ? lo : hb, bitwise
        }
        const __m512i sc = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(p + GQ6 * j)));
        for (int m = 0; m < R; ++m) {
          const int8_t* xq = x[m][i].qs + 16 * j;
          __m512i a = _mm512_set1_epi32(off[m][j]);
          for (int c = 0; c < 4; ++c) a = dpbusd512(a, wv[c], bcast32_512(xq + 4 * c));
          isum[m] = _mm512_add_epi32(isum[m], _mm512_mullo_epi32(a, sc));
        }
      }
    }
    const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(gb + q6k_d_offset<GQ6>(g0 + i))));
    for (int m = 0; m < R; ++m) {
      const __m512 dwdx = _mm512_mul_ps(dw, _mm512_set1_ps(x[m][i].d));
      acc[m] = _mm512_add_ps(acc[m], _mm512_mul_ps(dwdx, _mm512_cvtepi32_ps(isum[m])));
    }
  }
  for (int m = 0; m < R; ++m) _mm512_storeu_ps(y[m], acc[m]);
}

void gemm_q6_k_packed16(const GemmArgs& a, int64_t n0, int64_t n1) {
  gemm_kq_packed_groups<GQ6, MRQ6>(a, n0, n1, gemm_q6_k_x86, [](const uint8_t* wp, int64_t g0, int64_t nb, const block_q8k* const* x, float* const* y, auto r) {
    q6_k_tile16<decltype(r)::value>(wp, g0, nb, x, y);
  });
}

// --- Q5_K, packed groups of 16 rows ("lane = output row"; both builds) ------------------------------
// Layout: pack_q5_k_rows<16> (x86_matmul_common.h): 2816-byte group-blocks = 44 x 64, so every 64-B
// load of a 64-B aligned matrix is aligned. A final partial group stays in GGUF rows.
constexpr int GQ5 = 16;
constexpr int MRQ5 = 4;

// Bit B of every byte moved to bit 4 (other bits arbitrary; callers mask with 0x10). Shifts are
// within 16-bit words, so bit 4 of each byte comes from the same byte.
template <int B>
inline __m512i q5k_bit_to_4(__m512i v) {
  if constexpr (B < 4) return _mm512_slli_epi16(v, 4 - B);
  else if constexpr (B > 4) return _mm512_srli_epi16(v, B - 4);
  else return v;
}

// Sub-blocks 2g and 2g + 1 of one super-block: ilo / ihi = exact int32 sums of quant * x per lane.
template <int g, int R>
inline void q5_k_group16(const uint8_t* p, const block_q8k* const* x, int64_t i, __m512i* ilo, __m512i* ihi) {
  const __m512i m0f = _mm512_set1_epi8(0x0F), m10 = _mm512_set1_epi8(0x10);
  for (int m = 0; m < R; ++m) ilo[m] = ihi[m] = _mm512_setzero_si512();
  for (int u = 0; u < 8; ++u) {
    const __m512i v = _mm512_loadu_si512((const void*)(p + 768 + 64 * (8 * g + u)));
    const __m512i h = _mm512_loadu_si512((const void*)(p + 256 + 64 * u));
    const __m512i hl = _mm512_and_si512(q5k_bit_to_4<2 * g>(h), m10);
    const __m512i hh = _mm512_and_si512(q5k_bit_to_4<2 * g + 1>(h), m10);
    const __m512i lo = _mm512_ternarylogic_epi32(v, hl, m0f, 0xE4);                          // m0f ? v : hl
    const __m512i hi = _mm512_ternarylogic_epi32(_mm512_srli_epi16(v, 4), hh, m0f, 0xE4);
    for (int m = 0; m < R; ++m) {
      ilo[m] = dpbusd512(ilo[m], lo, bcast32_512(x[m][i].qs + 64 * g + 4 * u));
      ihi[m] = dpbusd512(ihi[m], hi, bcast32_512(x[m][i].qs + 64 * g + 32 + 4 * u));
    }
  }
}

// As q4_k_tile16_vnni with 5-bit quants (0..31; without VNNI vpmaddubsw pair sums <= 2 * 31 * 127).
// sum_sc per lane <= 8 * 63 * 32 * 31 * 127 < 2^31; float steps as the ref.
template <int R>
void q5_k_tile16(const uint8_t* wp, int64_t nb, const block_q8k* const* x, float* const* y) {
  const KqSel16 S;
  const __m512i* sel = S.sel;
  __m512 acc[R];
  for (int m = 0; m < R; ++m) acc[m] = _mm512_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    const uint8_t* p = wp + i * GQ5 * 176;
    prefetch_ahead(p, GQ5 * 176);
    const KqScales16 sm(p);
    const __m512i s_lo = sm.s_lo, s_hi = sm.s_hi;
    __m512i ssc[R], smn[R];
    for (int m = 0; m < R; ++m) ssc[m] = smn[m] = _mm512_setzero_si512();
    __m512i ilo[R], ihi[R];
#define XSIL_Q5K_GROUP(G_)                                                                              \
  {                                                                                                     \
    q5_k_group16<G_, R>(p, x, i, ilo, ihi);                                                             \
    const __m512i src = G_ < 2 ? s_lo : s_hi;                                                           \
    const __m512i sc0 = _mm512_shuffle_epi8(src, sel[(2 * G_) & 3]);                                    \
    const __m512i sc1 = _mm512_shuffle_epi8(src, sel[(2 * G_ + 1) & 3]);                                \
    for (int m = 0; m < R; ++m)                                                                         \
      ssc[m] = _mm512_add_epi32(ssc[m], _mm512_add_epi32(_mm512_mullo_epi32(ilo[m], sc0),               \
                                                         _mm512_mullo_epi32(ihi[m], sc1)));             \
  }
    XSIL_Q5K_GROUP(0)
    XSIL_Q5K_GROUP(1)
    XSIL_Q5K_GROUP(2)
    XSIL_Q5K_GROUP(3)
#undef XSIL_Q5K_GROUP
    kq_finish16<R>(p, x, i, sm, S, ssc, smn, acc);
  }
  for (int m = 0; m < R; ++m) _mm512_storeu_ps(y[m], acc[m]);
}

void gemm_q5_k_packed16(const GemmArgs& a, int64_t n0, int64_t n1) {
  gemm_kq_packed_groups<GQ5, MRQ5>(a, n0, n1, gemm_q5_k_x86, [](const uint8_t* wp, int64_t g0, int64_t nb, const block_q8k* const* x, float* const* y, auto r) {
    (void)g0;
    q5_k_tile16<decltype(r)::value>(wp, nb, x, y);
  });
}

MatmulKernels make_avx512_table() {
  MatmulKernels k;
  k.tier = Tier::Avx512;
  k.n_tile = 32;  // two 16-row groups: the VNNI GEMM tile covers 32 rows
  k.q4_0.quantize_act = quantize_act_q8a_x86;
  k.q4_0.gemm = gemm_q4_0_avx512<false>;
  k.q4_0.gemm_packed = gemm_q4_0_avx512<true>;
  k.q4_0.pack = pack_q4_0_rows<G16>;
  k.q4_0.pack_rows = G16;
  k.q8_0.quantize_act = quantize_act_q8a_x86;
  k.q8_0.gemm = gemm_q8_0_x86;
  k.q4_k.quantize_act = quantize_act_q8k_x86;
  k.q4_k.gemm = gemm_q4_k_x86;
  set_row_wise_kernels_x86(k);
  k.q5_k.gemm_packed = gemm_q5_k_packed16;
  k.q5_k.pack = pack_q5_k_rows<GQ5>;
  k.q5_k.pack_rows = GQ5;
  k.q6_k.gemm_packed = gemm_q6_k_packed16;
  k.q6_k.pack = pack_q6_k_rows<GQ6>;
  k.q6_k.pack_rows = 2 * GQ6;  // even first group-block number (see pack_q6_k_rows)
#if defined(__AVX512VNNI__)
  k.q8_0.gemm_packed = gemm_q8_0_packed_vnni;
  k.q8_0.pack = pack_q8_0_rows16;
  k.q8_0.pack_rows = G16;
  k.q4_k.gemm_packed = gemm_q4_k_packed_vnni;
  k.q4_k.pack = pack_q4_k_rows16;
  k.q4_k.pack_rows = GK;
#endif
  return k;
}

}  // namespace
}  // namespace xsil
