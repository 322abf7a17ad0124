// AVX2 (+FMA +F16C) matmul tier. Q4_0: "lane = output row" microkernel over groups of 8 W rows
// (packed layout or GGUF rows transposed in registers) x up to 4 activation rows; Q4_K / Q5_K /
// Q6_K: packed lane-per-row kernels (8 rows x up to 2 activation rows); GGUF rows and the other
// formats: row-wise kernels from x86_matmul_common.h. Bit-identical to the ref tier (see the header).
#include "cpu/x86/x86_matmul_common.h"

namespace xsil {
namespace {

constexpr int G = 8;    // W rows per group = fp32 lanes of a ymm
constexpr int MR = 4;   // activation rows per microkernel call

inline __m256i bcast32(const void* p) { return _mm256_set1_epi32(ld32(p)); }

// One group-block (8 rows x one 32-weight block) in registers: 8 fp32 scales and 4 nibble vectors
// (vector c: lane r = row r's qs[4c .. 4c+3]).
struct WBlock {
  __m256 dw;
  __m256i v[4];
};

inline void load_packed(const uint8_t* p, WBlock& w) {
  w.dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p));
  for (int c = 0; c < 4; ++c) w.v[c] = _mm256_loadu_si256((const __m256i*)(p + 2 * G + 32 * c));
}

// GGUF rows: 8 row pointers, block at byte offset off; 4x4 dword transpose within 128-bit lanes.
inline void load_rows(const uint8_t* const* rows, int64_t off, WBlock& w) {
  const __m128i s = _mm_setr_epi16((short)ld16(rows[0] + off), (short)ld16(rows[1] + off), (short)ld16(rows[2] + off),
                                   (short)ld16(rows[3] + off), (short)ld16(rows[4] + off), (short)ld16(rows[5] + off),
                                   (short)ld16(rows[6] + off), (short)ld16(rows[7] + off));
  w.dw = _mm256_cvtph_ps(s);
  __m256i y[4];
  for (int j = 0; j < 4; ++j)
    y[j] = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i*)(rows[j] + off + 2))),
                                   _mm_loadu_si128((const __m128i*)(rows[j + 4] + off + 2)), 1);
  const __m256i t0 = _mm256_unpacklo_epi32(y[0], y[1]), t1 = _mm256_unpackhi_epi32(y[0], y[1]);
  const __m256i t2 = _mm256_unpacklo_epi32(y[2], y[3]), t3 = _mm256_unpackhi_epi32(y[2], y[3]);
  w.v[0] = _mm256_unpacklo_epi64(t0, t2);
  w.v[1] = _mm256_unpackhi_epi64(t0, t2);
  w.v[2] = _mm256_unpacklo_epi64(t1, t3);
  w.v[3] = _mm256_unpackhi_epi64(t1, t3);
}

// y[m][r] for R activation rows (R <= MR) x the 8 rows of one group, over all nb blocks.
// PACKED: wp is the packed group; else rows[] are GGUF row pointers.
template <int R, bool PACKED>
void q4_0_tile(const uint8_t* wp, const uint8_t* const* rows, int64_t nb, const block_q8a* const* x,
               const int32_t* const* xoff, float* const* y, int nvalid) {
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[R];
  for (int m = 0; m < R; ++m) acc[m] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    WBlock w;
    if (PACKED) {
      prefetch_ahead(wp + b * G * 18, G * 18 + 63);
      load_packed(wp + b * G * 18, w);
    } else {
      // G row streams advancing 18 B per block: prefetch each row ~512 B ahead every 2 blocks.
      if ((b & 1) == 0)
        for (int r = 0; r < G; ++r) _mm_prefetch((const char*)(rows[r] + b * 18 + 512), _MM_HINT_T0);
      load_rows(rows, b * 18, w);
    }
    // Unpack the 8 nibble vectors once; every activation row reuses them. int16 sums of 8
    // vpmaddubsw results: |each| <= 2 * 15 * 127, total <= 30480: no saturation.
    __m256i u[8];
    for (int c = 0; c < 4; ++c) {
      u[2 * c] = _mm256_and_si256(w.v[c], m4);
      u[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(w.v[c], 4), m4);
    }
    for (int m = 0; m < R; ++m) {
      const int8_t* q = x[m][b].qs;
      __m256i p0 = _mm256_maddubs_epi16(u[0], bcast32(q));
      __m256i p1 = _mm256_maddubs_epi16(u[1], bcast32(q + 16));
      p0 = _mm256_add_epi16(p0, _mm256_maddubs_epi16(u[2], bcast32(q + 4)));
      p1 = _mm256_add_epi16(p1, _mm256_maddubs_epi16(u[3], bcast32(q + 20)));
      p0 = _mm256_add_epi16(p0, _mm256_maddubs_epi16(u[4], bcast32(q + 8)));
      p1 = _mm256_add_epi16(p1, _mm256_maddubs_epi16(u[5], bcast32(q + 24)));
      p0 = _mm256_add_epi16(p0, _mm256_maddubs_epi16(u[6], bcast32(q + 12)));
      p1 = _mm256_add_epi16(p1, _mm256_maddubs_epi16(u[7], bcast32(q + 28)));
      const __m256i isum = _mm256_add_epi32(_mm256_madd_epi16(_mm256_add_epi16(p0, p1), ones),
                                            _mm256_set1_epi32(xoff[m][b]));
      const __m256 dwdx = _mm256_mul_ps(w.dw, _mm256_set1_ps(x[m][b].d));
      acc[m] = _mm256_add_ps(acc[m], _mm256_mul_ps(dwdx, _mm256_cvtepi32_ps(isum)));
    }
  }
  for (int m = 0; m < R; ++m) {
    if (nvalid == G) {
      _mm256_storeu_ps(y[m], acc[m]);
    } else {
      alignas(32) float t[G];
      _mm256_store_ps(t, acc[m]);
      for (int r = 0; r < nvalid; ++r) y[m][r] = t[r];
    }
  }
}

template <bool PACKED>
void gemm_q4_0(const GemmArgs& a, int64_t n0, int64_t n1) {
  const int64_t nb = a.K / 32;
  const int64_t rb = (int64_t)a.w_row_bytes;
  thread_local Scratch s_off;
  int32_t* off = (int32_t*)s_off.get((size_t)(a.M * nb) * sizeof(int32_t));
  q8a_offsets(a, nb, off);
  const uint8_t* W = (const uint8_t*)a.w;
  for (int64_t n = n0; n < n1; n += G) {
    const int nv = (int)(n1 - n < G ? n1 - n : G);
    const bool packed = PACKED && nv == G;
    const uint8_t* rows[G];
    for (int r = 0; r < G; ++r) rows[r] = W + (n + (r < nv ? r : nv - 1)) * rb;  // clamp: never read past N
    const uint8_t* wp = W + n * rb;
    for (int64_t m0 = 0; m0 < a.M; m0 += MR) {
      const int R = (int)(a.M - m0 < MR ? a.M - m0 : MR);
      const block_q8a* x[MR];
      const int32_t* xo[MR];
      float* y[MR];
      for (int m = 0; m < R; ++m) {
        x[m] = (const block_q8a*)((const uint8_t*)a.xq + (m0 + m) * a.xq_row_bytes);
        xo[m] = off + (m0 + m) * nb;
        y[m] = a.y + (m0 + m) * a.ldy + n;
      }
#define XSIL_Q40_CASE(RR)                                     \
  case RR:                                                    \
    if (packed)                                               \
      q4_0_tile<RR, true>(wp, rows, nb, x, xo, y, nv);        \
    else                                                      \
      q4_0_tile<RR, false>(wp, rows, nb, x, xo, y, nv);       \
    break;
      switch (R) {
        XSIL_Q40_CASE(1)
        XSIL_Q40_CASE(2)
        XSIL_Q40_CASE(3)
        XSIL_Q40_CASE(4)
      }
#undef XSIL_Q40_CASE
    }
  }
}

// --- Q4_K packed, groups of 8 rows ("lane = output row") -----------------------------------------
// Packed group-block (one super-block column of 8 rows, 8 x 144 = 1152 bytes):
//   [0, 16) 8 fp16 d;  [16, 32) 8 fp16 dmin;
//   [32, 128)   3 chunks of 32 B: chunk k, lane r = row r's scales[4k .. 4k+3]
//   [128, 1152) 32 chunks of 32 B: chunk t, lane r = row r's qs[4t .. 4t+3]
// A final partial group (< 8 rows) stays in GGUF layout and goes through the row-wise kernel.
void pack_q4_k_rows8(const void* src, void* dst, int64_t n_rows, int64_t K) {
  const int64_t nb = K / QK_K;
  const int64_t rb = nb * (int64_t)sizeof(block_q4_K);
  const uint8_t* s = (const uint8_t*)src;
  uint8_t* d = (uint8_t*)dst;
  if (n_rows < G) {
    std::memcpy(d, s, (size_t)(n_rows * rb));
    return;
  }
  for (int64_t i = 0; i < nb; ++i) {
    uint8_t* o = d + i * G * 144;
    for (int r = 0; r < G; ++r) {
      const uint8_t* blk = s + r * rb + i * 144;
      std::memcpy(o + 2 * r, blk, 2);
      std::memcpy(o + 16 + 2 * r, blk + 2, 2);
      for (int k = 0; k < 3; ++k) std::memcpy(o + 32 + 32 * k + 4 * r, blk + 4 + 4 * k, 4);
      for (int t = 0; t < 32; ++t) std::memcpy(o + 128 + 32 * t + 4 * r, blk + 16 + 4 * t, 4);
    }
  }
}

constexpr int MRK = 2;

// Per lane: exact int32 sum_sc = sum_j sc_j * (nibbles_j . x_j) (int16 sums of 8 vpmaddubsw per
// sub-block, <= 30480; widened with vpmaddwd, times the lane's scale with vpmulld) and
// sum_m = sum_j m_j * bsum_pair_j (vpmaddwd of int16 pairs); then the ref's float steps.
template <int R>
void q4_k_tile8(const uint8_t* wp, int64_t nb, const block_q8k* const* x, float* const* y) {
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  alignas(32) int8_t ctl[6][32];
  for (int q = 0; q < 32; ++q) {
    const int base = (q & ~3) % 16, pos = q % 4;
    for (int j = 0; j < 4; ++j) ctl[j][q] = pos == 0 ? (int8_t)(base + j) : (int8_t)0x80;
    ctl[4][q] = pos == 0 ? (int8_t)base : pos == 2 ? (int8_t)(base + 1) : (int8_t)0x80;
    ctl[5][q] = pos == 0 ? (int8_t)(base + 2) : pos == 2 ? (int8_t)(base + 3) : (int8_t)0x80;
  }
  __m256 acc[R];
  for (int m = 0; m < R; ++m) acc[m] = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    const uint8_t* p = wp + i * G * 144;
    prefetch_ahead(p, G * 144);
    const __m256i k3f = _mm256_set1_epi8(0x3f), k30 = _mm256_set1_epi8(0x30);
    const __m256i a = _mm256_loadu_si256((const __m256i*)(p + 32));
    const __m256i b = _mm256_loadu_si256((const __m256i*)(p + 64));
    const __m256i c = _mm256_loadu_si256((const __m256i*)(p + 96));
    __m256i ssc[R];
    for (int m = 0; m < R; ++m) ssc[m] = _mm256_setzero_si256();
    for (int g = 0; g < 4; ++g) {
      __m256i plo[R], phi[R];
      for (int m = 0; m < R; ++m) plo[m] = phi[m] = _mm256_setzero_si256();
      for (int u = 0; u < 8; ++u) {
        const __m256i v = _mm256_loadu_si256((const __m256i*)(p + 128 + 32 * (8 * g + u)));
        const __m256i lo = _mm256_and_si256(v, m4);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
        for (int m = 0; m < R; ++m) {
          plo[m] = _mm256_add_epi16(plo[m], _mm256_maddubs_epi16(lo, bcast32(x[m][i].qs + 64 * g + 4 * u)));
          phi[m] = _mm256_add_epi16(phi[m], _mm256_maddubs_epi16(hi, bcast32(x[m][i].qs + 64 * g + 32 + 4 * u)));
        }
      }
      const __m256i src = g < 2 ? _mm256_and_si256(a, k3f)
                                : _mm256_or_si256(_mm256_and_si256(c, m4), _mm256_and_si256(_mm256_srli_epi32(a, 2), k30));
      const __m256i sc0 = _mm256_shuffle_epi8(src, _mm256_load_si256((const __m256i*)ctl[(2 * g) & 3]));
      const __m256i sc1 = _mm256_shuffle_epi8(src, _mm256_load_si256((const __m256i*)ctl[(2 * g + 1) & 3]));
      for (int m = 0; m < R; ++m)
        ssc[m] = _mm256_add_epi32(ssc[m], _mm256_add_epi32(_mm256_mullo_epi32(_mm256_madd_epi16(plo[m], ones), sc0),
                                                           _mm256_mullo_epi32(_mm256_madd_epi16(phi[m], ones), sc1)));
    }
    const __m256i m_lo = _mm256_and_si256(b, k3f);
    const __m256i m_hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(c, 4), m4),
                                         _mm256_and_si256(_mm256_srli_epi32(b, 2), k30));
    const __m256i c4 = _mm256_load_si256((const __m256i*)ctl[4]), c5 = _mm256_load_si256((const __m256i*)ctl[5]);
    const __m256i mp[4] = {_mm256_shuffle_epi8(m_lo, c4), _mm256_shuffle_epi8(m_lo, c5),
                           _mm256_shuffle_epi8(m_hi, c4), _mm256_shuffle_epi8(m_hi, c5)};
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p));
    const __m256 dmw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(p + 16)));
    for (int m = 0; m < R; ++m) {
      const int16_t* bs = x[m][i].bsums;
      __m256i smn = _mm256_setzero_si256();
      for (int k = 0; k < 4; ++k) {
        const int32_t pr = (int32_t)(uint16_t)(int16_t)(bs[4 * k] + bs[4 * k + 1]) |
                           (int32_t)((uint32_t)(uint16_t)(int16_t)(bs[4 * k + 2] + bs[4 * k + 3]) << 16);
        smn = _mm256_add_epi32(smn, _mm256_madd_epi16(mp[k], _mm256_set1_epi32(pr)));
      }
      const __m256 dx = _mm256_set1_ps(x[m][i].d);
      const __m256 d = _mm256_mul_ps(dw, dx), dmin = _mm256_mul_ps(dmw, dx);
      acc[m] = _mm256_add_ps(acc[m], _mm256_sub_ps(_mm256_mul_ps(d, _mm256_cvtepi32_ps(ssc[m])),
                                                   _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(smn))));
    }
  }
  for (int m = 0; m < R; ++m) _mm256_storeu_ps(y[m], acc[m]);
}

void gemm_q4_k_packed8(const GemmArgs& a, int64_t n0, int64_t n1) {
  gemm_kq_packed_groups<G, MRK>(a, n0, n1, gemm_q4_k_x86, [](const uint8_t* wp, int64_t g0, int64_t nb, const block_q8k* const* x, float* const* y, auto r) {
    (void)g0;
    q4_k_tile8<decltype(r)::value>(wp, nb, x, y);
  });
}

// --- Q6_K packed, groups of 8 rows ("lane = output row") -----------------------------------------
// Layout: pack_q6_k_rows<8> (x86_matmul_common.h). Per step and sub-block j, 4 vectors of unsigned
// quants 0..63 (low nibble from ql, 2 bits of qh moved to bits 4..5); per activation row two int16
// sums of 2 vpmaddubsw each (<= 2 * 2 * 63 * 127 = 32004: no saturation) times the lane's int8 scale
// with vpmaddwd (exact int32); the "-32" term sum_j sc_j * bsum_j is one vpmaddwd per sub-block
// ((sc_j, sc_j) . (bsum_j, 0)), subtracted << 5 at the end: isum is the ref's exact integer.
constexpr int MRQ6 = 2;

template <int R>
void q6_k_tile8(const uint8_t* wp, int64_t g0, int64_t nb, const block_q8k* const* x, float* const* y) {
  constexpr int VB = 4 * G;
  const __m256i m0f = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
  __m256 acc[R];
  for (int m = 0; m < R; ++m) acc[m] = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    const uint8_t* gb = wp + i * G * 210;
    prefetch_ahead(gb, G * 210);
    const uint8_t* p = gb + q6k_vec_offset<G>(g0 + i);
    __m256i isum[R], offs[R];
    for (int m = 0; m < R; ++m) isum[m] = offs[m] = _mm256_setzero_si256();
    for (int q = 0; q < 4; ++q) {
      const uint8_t* st = p + 4 * VB + 12 * VB * q;
      __m256i qh[4];
      for (int c = 0; c < 4; ++c) qh[c] = _mm256_loadu_si256((const __m256i*)(st + VB * (8 + c)));
      for (int s = 0; s < 4; ++s) {
        const int j = 8 * (q >> 1) + 2 * s + (q & 1);
        __m256i wv[4];
        for (int c = 0; c < 4; ++c) {
          const __m256i l = _mm256_loadu_si256((const __m256i*)(st + VB * (4 * (s & 1) + c)));
          const __m256i lo = s < 2 ? l : _mm256_srli_epi16(l, 4);
          const __m256i hb = s == 0   ? _mm256_slli_epi16(qh[c], 4)
                             : s == 1 ? _mm256_slli_epi16(qh[c], 2)
                             : s == 2 ? qh[c]
                                      : _mm256_srli_epi16(qh[c], 2);
          wv[c] = _mm256_or_si256(_mm256_and_si256(lo, m0f), _mm256_and_si256(hb, m30));
        }
        const __m256i sc32 = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(p + G * j)));
        const __m256i sc16 = _mm256_blend_epi16(sc32, _mm256_slli_epi32(sc32, 16), 0xAA);  // (sc, sc) int16
        for (int m = 0; m < R; ++m) {
          const int8_t* xq = x[m][i].qs + 16 * j;
          const __m256i p0 = _mm256_add_epi16(_mm256_maddubs_epi16(wv[0], bcast32(xq)),
                                              _mm256_maddubs_epi16(wv[1], bcast32(xq + 4)));
          const __m256i p1 = _mm256_add_epi16(_mm256_maddubs_epi16(wv[2], bcast32(xq + 8)),
                                              _mm256_maddubs_epi16(wv[3], bcast32(xq + 12)));
          isum[m] = _mm256_add_epi32(isum[m], _mm256_add_epi32(_mm256_madd_epi16(p0, sc16), _mm256_madd_epi16(p1, sc16)));
          offs[m] = _mm256_add_epi32(offs[m], _mm256_madd_epi16(sc16, _mm256_set1_epi32((uint16_t)x[m][i].bsums[j])));
        }
      }
    }
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(gb + q6k_d_offset<G>(g0 + i))));
    for (int m = 0; m < R; ++m) {
      const __m256i is = _mm256_sub_epi32(isum[m], _mm256_slli_epi32(offs[m], 5));
      const __m256 dwdx = _mm256_mul_ps(dw, _mm256_set1_ps(x[m][i].d));
      acc[m] = _mm256_add_ps(acc[m], _mm256_mul_ps(dwdx, _mm256_cvtepi32_ps(is)));
    }
  }
  for (int m = 0; m < R; ++m) _mm256_storeu_ps(y[m], acc[m]);
}

void gemm_q6_k_packed8(const GemmArgs& a, int64_t n0, int64_t n1) {
  gemm_kq_packed_groups<G, MRQ6>(a, n0, n1, gemm_q6_k_x86, [](const uint8_t* wp, int64_t g0, int64_t nb, const block_q8k* const* x, float* const* y, auto r) {
    q6_k_tile8<decltype(r)::value>(wp, g0, nb, x, y);
  });
}

// --- Q5_K packed, groups of 8 rows ("lane = output row") -----------------------------------------
// Layout: pack_q5_k_rows<8> (x86_matmul_common.h). Quants 0..31 (nibble | 5th bit as 0x10); per
// sub-block two int16 sums of 4 vpmaddubsw each (<= 4 * 2 * 31 * 127 = 31496: no saturation), each
// times the lane's 6-bit scale with vpmaddwd on (sc, sc) int16 pairs (exact int32); mins as Q4_K
// packed. sum_sc per lane <= 8 * 63 * 32 * 31 * 127 < 2^31; float steps as the ref.
constexpr int MRQ5 = 2;

template <int B>
inline __m256i bit_to_4(__m256i v) {  // bit B of every byte to bit 4 (shifts within 16-bit words)
  if constexpr (B < 4) return _mm256_slli_epi16(v, 4 - B);
  else if constexpr (B > 4) return _mm256_srli_epi16(v, B - 4);
  else return v;
}

template <int g, int R>
inline void q5_k_group8(const uint8_t* p, const block_q8k* const* x, int64_t i, __m256i sc0, __m256i sc1,
                        __m256i* ssc) {
  constexpr int VB = 4 * G;
  const __m256i m0f = _mm256_set1_epi8(0x0F), m10 = _mm256_set1_epi8(0x10);
  for (int hu = 0; hu < 2; ++hu) {
    __m256i plo[R], phi[R];
    for (int m = 0; m < R; ++m) plo[m] = phi[m] = _mm256_setzero_si256();
    for (int u = 4 * hu; u < 4 * hu + 4; ++u) {
      const __m256i v = _mm256_loadu_si256((const __m256i*)(p + 12 * VB + VB * (8 * g + u)));
      const __m256i h = _mm256_loadu_si256((const __m256i*)(p + 4 * VB + VB * u));
      const __m256i lo = _mm256_or_si256(_mm256_and_si256(v, m0f), _mm256_and_si256(bit_to_4<2 * g>(h), m10));
      const __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), m0f),
                                         _mm256_and_si256(bit_to_4<2 * g + 1>(h), m10));
      for (int m = 0; m < R; ++m) {
        plo[m] = _mm256_add_epi16(plo[m], _mm256_maddubs_epi16(lo, bcast32(x[m][i].qs + 64 * g + 4 * u)));
        phi[m] = _mm256_add_epi16(phi[m], _mm256_maddubs_epi16(hi, bcast32(x[m][i].qs + 64 * g + 32 + 4 * u)));
      }
    }
    for (int m = 0; m < R; ++m)
      ssc[m] = _mm256_add_epi32(ssc[m], _mm256_add_epi32(_mm256_madd_epi16(plo[m], sc0), _mm256_madd_epi16(phi[m], sc1)));
  }
}

template <int R>
void q5_k_tile8(const uint8_t* wp, int64_t nb, const block_q8k* const* x, float* const* y) {
  constexpr int VB = 4 * G;
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  // vpshufb controls: byte j of each dword -> both int16 halves (ctl[j]); bytes (2k, 2k+1) -> int16
  // pair (ctl[4], ctl[5]).
  alignas(32) int8_t ctl[6][32];
  for (int q = 0; q < 32; ++q) {
    const int base = (q & ~3) % 16, pos = q % 4;
    for (int j = 0; j < 4; ++j) ctl[j][q] = (pos & 1) == 0 ? (int8_t)(base + j) : (int8_t)0x80;
    ctl[4][q] = pos == 0 ? (int8_t)base : pos == 2 ? (int8_t)(base + 1) : (int8_t)0x80;
    ctl[5][q] = pos == 0 ? (int8_t)(base + 2) : pos == 2 ? (int8_t)(base + 3) : (int8_t)0x80;
  }
  __m256 acc[R];
  for (int m = 0; m < R; ++m) acc[m] = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    const uint8_t* p = wp + i * G * 176;
    prefetch_ahead(p, G * 176);
    const __m256i k3f = _mm256_set1_epi8(0x3f), k30 = _mm256_set1_epi8(0x30);
    const __m256i a = _mm256_loadu_si256((const __m256i*)(p + VB));
    const __m256i b = _mm256_loadu_si256((const __m256i*)(p + 2 * VB));
    const __m256i c = _mm256_loadu_si256((const __m256i*)(p + 3 * VB));
    const __m256i s_lo = _mm256_and_si256(a, k3f);
    const __m256i s_hi = _mm256_or_si256(_mm256_and_si256(c, m4), _mm256_and_si256(_mm256_srli_epi32(a, 2), k30));
    __m256i ssc[R];
    for (int m = 0; m < R; ++m) ssc[m] = _mm256_setzero_si256();
#define XSIL_Q5K_GROUP8(G_)                                                                              \
  {                                                                                                      \
    const __m256i src = G_ < 2 ? s_lo : s_hi;                                                            \
    q5_k_group8<G_, R>(p, x, i, _mm256_shuffle_epi8(src, _mm256_load_si256((const __m256i*)ctl[(2 * G_) & 3])), \
                       _mm256_shuffle_epi8(src, _mm256_load_si256((const __m256i*)ctl[(2 * G_ + 1) & 3])), ssc); \
  }
    XSIL_Q5K_GROUP8(0)
    XSIL_Q5K_GROUP8(1)
    XSIL_Q5K_GROUP8(2)
    XSIL_Q5K_GROUP8(3)
#undef XSIL_Q5K_GROUP8
    const __m256i m_lo = _mm256_and_si256(b, k3f);
    const __m256i m_hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(c, 4), m4),
                                         _mm256_and_si256(_mm256_srli_epi32(b, 2), k30));
    const __m256i c4 = _mm256_load_si256((const __m256i*)ctl[4]), c5 = _mm256_load_si256((const __m256i*)ctl[5]);
    const __m256i mp[4] = {_mm256_shuffle_epi8(m_lo, c4), _mm256_shuffle_epi8(m_lo, c5),
                           _mm256_shuffle_epi8(m_hi, c4), _mm256_shuffle_epi8(m_hi, c5)};
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p));
    const __m256 dmw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(p + 2 * G)));
    for (int m = 0; m < R; ++m) {
      const int16_t* bs = x[m][i].bsums;
      __m256i smn = _mm256_setzero_si256();
      for (int k = 0; k < 4; ++k) {
        const int32_t pr = (int32_t)(uint16_t)(int16_t)(bs[4 * k] + bs[4 * k + 1]) |
                           (int32_t)((uint32_t)(uint16_t)(int16_t)(bs[4 * k + 2] + bs[4 * k + 3]) << 16);
        smn = _mm256_add_epi32(smn, _mm256_madd_epi16(mp[k], _mm256_set1_epi32(pr)));
      }
      const __m256 dx = _mm256_set1_ps(x[m][i].d);
      const __m256 d = _mm256_mul_ps(dw, dx), dmin = _mm256_mul_ps(dmw, dx);
      acc[m] = _mm256_add_ps(acc[m], _mm256_sub_ps(_mm256_mul_ps(d, _mm256_cvtepi32_ps(ssc[m])),
                                                   _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(smn))));
    }
  }
  for (int m = 0; m < R; ++m) _mm256_storeu_ps(y[m], acc[m]);
}

void gemm_q5_k_packed8(const GemmArgs& a, int64_t n0, int64_t n1) {
  gemm_kq_packed_groups<G, MRQ5>(a, n0, n1, gemm_q5_k_x86, [](const uint8_t* wp, int64_t g0, int64_t nb, const block_q8k* const* x, float* const* y, auto r) {
    (void)g0;
    q5_k_tile8<decltype(r)::value>(wp, nb, x, y);
  });
}

MatmulKernels make_avx2() {
  MatmulKernels k;
  k.tier = Tier::Avx2;
  k.n_tile = 16;
  k.q4_0.quantize_act = quantize_act_q8a_x86;
  k.q4_0.gemm = gemm_q4_0<false>;
  k.q4_0.gemm_packed = gemm_q4_0<true>;
  k.q4_0.pack = pack_q4_0_rows<G>;
  k.q4_0.pack_rows = G;
  k.q8_0.quantize_act = quantize_act_q8a_x86;
  k.q8_0.gemm = gemm_q8_0_x86;
  k.q4_k.quantize_act = quantize_act_q8k_x86;
  k.q4_k.gemm = gemm_q4_k_x86;
  k.q4_k.gemm_packed = gemm_q4_k_packed8;
  k.q4_k.pack = pack_q4_k_rows8;
  k.q4_k.pack_rows = G;
  set_row_wise_kernels_x86(k);
  k.q5_k.gemm_packed = gemm_q5_k_packed8;
  k.q5_k.pack = pack_q5_k_rows<G>;
  k.q5_k.pack_rows = G;
  k.q6_k.gemm_packed = gemm_q6_k_packed8;
  k.q6_k.pack = pack_q6_k_rows<G>;
  k.q6_k.pack_rows = 2 * G;  // even first group-block number (see pack_q6_k_rows)
  return k;
}

}  // namespace

const MatmulKernels& matmul_kernels_avx2() {
  static const MatmulKernels k = make_avx2();
  return k;
}

}  // namespace xsil
