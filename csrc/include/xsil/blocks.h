// GGUF block formats, defined once. Layouts follow the GGUF/ggml on-disk format: a tensor row of K
// weights is K / block_size consecutive blocks; a matrix W[N, K] is N such rows back to back.
#pragma once
#include <cstddef>
#include <cstdint>

namespace xsil {

// GGML type ids as stored in GGUF tensor infos.
enum class Fmt : int32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q4_K = 12, Q5_K = 13, Q6_K = 14
};

constexpr int QK4_0 = 32;  // weights per Q4_0 block
constexpr int QK4_1 = 32;  // weights per Q4_1 block
constexpr int QK5_0 = 32;  // weights per Q5_0 block
constexpr int QK5_1 = 32;  // weights per Q5_1 block
constexpr int QK8_0 = 32;  // weights per Q8_0 block
constexpr int QK_K = 256;  // weights per K-quant super-block
constexpr int K_SCALE_SIZE = 12;

// Q4_0: w = d * (q - 8), q in [0, 15]. qs[j] holds element j (low nibble) and j + 16 (high nibble).
struct block_q4_0 {
  uint16_t d;              // fp16 scale
  uint8_t qs[QK4_0 / 2];   // nibbles
};
static_assert(sizeof(block_q4_0) == 18, "Q4_0 block must be 18 bytes");

// Q4_1: w = d * q + m, q in [0, 15]. Nibbles as Q4_0.
struct block_q4_1 {
  uint16_t d;              // fp16 scale
  uint16_t m;              // fp16 offset (the block minimum)
  uint8_t qs[QK4_1 / 2];   // nibbles
};
static_assert(sizeof(block_q4_1) == 20, "Q4_1 block must be 20 bytes");

// Q5_0: w = d * (q - 16), q in [0, 31]. Low 4 bits as Q4_0's nibbles; bit 4 of element j is bit j
// of the little-endian 32-bit qh.
struct block_q5_0 {
  uint16_t d;              // fp16 scale
  uint8_t qh[4];           // 5th bits, element j at bit j (little-endian uint32)
  uint8_t qs[QK5_0 / 2];   // low nibbles
};
static_assert(sizeof(block_q5_0) == 22, "Q5_0 block must be 22 bytes");

// Q5_1: w = d * q + m, q in [0, 31]; bits as Q5_0.
struct block_q5_1 {
  uint16_t d;              // fp16 scale
  uint16_t m;              // fp16 offset (the block minimum)
  uint8_t qh[4];           // 5th bits
  uint8_t qs[QK5_1 / 2];   // low nibbles
};
static_assert(sizeof(block_q5_1) == 24, "Q5_1 block must be 24 bytes");

// Q8_0: w = d * q, q in [-127, 127].
struct block_q8_0 {
  uint16_t d;              // fp16 scale
  int8_t qs[QK8_0];        // signed quants
};
static_assert(sizeof(block_q8_0) == 34, "Q8_0 block must be 34 bytes");

// Q4_K: 8 sub-blocks of 32; w = (d * sc[j]) * q - (dmin * m[j]), 6-bit sc/m packed in `scales`.
// qs is 4 groups of 32 bytes: group g holds sub-block 2g in low nibbles, 2g + 1 in high nibbles.
struct block_q4_K {
  uint16_t d;                     // fp16 super-block scale for the sub-block scales
  uint16_t dmin;                  // fp16 super-block scale for the sub-block mins
  uint8_t scales[K_SCALE_SIZE];   // 8 x (6-bit scale, 6-bit min)
  uint8_t qs[QK_K / 2];           // nibbles
};
static_assert(sizeof(block_q4_K) == 144, "Q4_K block must be 144 bytes");

// Q5_K: Q4_K plus a 5th bit: w = (d * sc[j]) * q - (dmin * m[j]), q in [0, 31]. Low 4 bits of
// sub-block j as in Q4_K; bit 4 of element 32j + l is bit j of qh[l].
struct block_q5_K {
  uint16_t d;                     // fp16 super-block scale for the sub-block scales
  uint16_t dmin;                  // fp16 super-block scale for the sub-block mins
  uint8_t scales[K_SCALE_SIZE];   // 8 x (6-bit scale, 6-bit min), packed as Q4_K
  uint8_t qh[QK_K / 8];           // 5th bits
  uint8_t qs[QK_K / 2];           // low nibbles
};
static_assert(sizeof(block_q5_K) == 176, "Q5_K block must be 176 bytes");

// Q6_K: 16 sub-blocks of 16; w = (d * sc[j]) * (q - 32), q in [0, 63], sc int8. Two halves of 128
// elements; in half h, element 128h + 32s + l (s = 0..3, l = 0..31) has its low 4 bits in
// ql[64h + 32(s & 1) + l] (low nibble for s < 2, high nibble for s >= 2) and its high 2 bits in
// bits 2s, 2s+1 of qh[32h + l]. Note d comes last.
struct block_q6_K {
  uint8_t ql[QK_K / 2];           // low 4 bits
  uint8_t qh[QK_K / 4];           // high 2 bits
  int8_t scales[QK_K / 16];       // signed 8-bit sub-block scales
  uint16_t d;                     // fp16 super-block scale
};
static_assert(sizeof(block_q6_K) == 210, "Q6_K block must be 210 bytes");

// --- Activation blocks (internal, not a GGUF format) -------------------------------------------
// The integer fast path quantizes activations once per call. fp32 scales (not fp16 as llama.cpp's
// q8_0) keep the activation error at the int8 rounding alone.

// For Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 weights: 32 activations, x ~= d * qs. `s` = d * sum(qs), so the Q4_0 "-8" offset
// costs one multiply-add per block pair instead of a per-element subtract.
struct block_q8a {
  float d;
  float s;
  int8_t qs[32];
};
static_assert(sizeof(block_q8a) == 40, "block_q8a must be 40 bytes");

// For Q4_K / Q5_K / Q6_K weights: 256 activations with one scale, plus sums of each 16 quants so the Q4_K mins
// term (dmin * m * sum x) needs no per-element work.
struct block_q8k {
  float d;
  int8_t qs[QK_K];
  int16_t bsums[QK_K / 16];
};
static_assert(sizeof(block_q8k) == 292, "block_q8k must be 292 bytes");

struct FmtInfo {
  Fmt fmt;
  const char* name;
  int block_size;     // weights per block
  int type_size;      // bytes per block
};

// Returns nullptr for a type id that is not a supported block format.
inline const FmtInfo* fmt_info(Fmt f) {
  static const FmtInfo kInfo[] = {
      {Fmt::Q4_0, "Q4_0", QK4_0, (int)sizeof(block_q4_0)},
      {Fmt::Q4_1, "Q4_1", QK4_1, (int)sizeof(block_q4_1)},
      {Fmt::Q5_0, "Q5_0", QK5_0, (int)sizeof(block_q5_0)},
      {Fmt::Q5_1, "Q5_1", QK5_1, (int)sizeof(block_q5_1)},
      {Fmt::Q8_0, "Q8_0", QK8_0, (int)sizeof(block_q8_0)},
      {Fmt::Q4_K, "Q4_K", QK_K, (int)sizeof(block_q4_K)},
      {Fmt::Q5_K, "Q5_K", QK_K, (int)sizeof(block_q5_K)},
      {Fmt::Q6_K, "Q6_K", QK_K, (int)sizeof(block_q6_K)},
  };
  for (const auto& i : kInfo)
    if (i.fmt == f) return &i;
  return nullptr;
}

// Formats xsil (and gguf-py) can quantize fp32 to; the K-quants are read-only.
inline bool fmt_has_quantizer(Fmt f) {
  return f == Fmt::Q4_0 || f == Fmt::Q4_1 || f == Fmt::Q5_0 || f == Fmt::Q5_1 || f == Fmt::Q8_0;
}

// Super-block (K-quant) formats take block_q8k activations on the integer path; the others block_q8a.
inline bool fmt_is_k_quant(Fmt f) { return f == Fmt::Q4_K || f == Fmt::Q5_K || f == Fmt::Q6_K; }

// The block formats, comma-separated, for error messages.
constexpr const char* kBlockFormatList = "Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K";

}  // namespace xsil
