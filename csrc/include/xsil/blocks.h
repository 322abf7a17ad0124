// GGUF block formats, defined once. Layouts follow the GGUF/ggml on-disk format: a tensor row of K
// weights is K / block_size consecutive blocks; a matrix W[N, K] is N such rows back to back.
#pragma once
#include <cstddef>
#include <cstdint>

namespace xsil {

// GGML type ids as stored in GGUF tensor infos.
enum class Fmt : int32_t { F32 = 0, F16 = 1, Q4_0 = 2, Q8_0 = 8, Q4_K = 12 };

constexpr int QK4_0 = 32;  // weights per Q4_0 block
constexpr int QK8_0 = 32;  // weights per Q8_0 block
constexpr int QK_K = 256;  // weights per K-quant super-block
constexpr int K_SCALE_SIZE = 12;

// Q4_0: w = d * (q - 8), q in [0, 15]. qs[j] holds element j (low nibble) and j + 16 (high nibble).
struct block_q4_0 {
  uint16_t d;              // fp16 scale
  uint8_t qs[QK4_0 / 2];   // nibbles
};
static_assert(sizeof(block_q4_0) == 18, "Q4_0 block must be 18 bytes");

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

// --- Activation blocks (internal, not a GGUF format) -------------------------------------------
// The integer fast path quantizes activations once per call. fp32 scales (not fp16 as llama.cpp's
// q8_0) keep the activation error at the int8 rounding alone.

// For Q4_0 / Q8_0 weights: 32 activations, x ~= d * qs. `s` = d * sum(qs), so the Q4_0 "-8" offset
// costs one multiply-add per block pair instead of a per-element subtract.
struct block_q8a {
  float d;
  float s;
  int8_t qs[32];
};
static_assert(sizeof(block_q8a) == 40, "block_q8a must be 40 bytes");

// For Q4_K weights: 256 activations with one scale, plus sums of each 16 quants so the Q4_K mins
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
      {Fmt::Q8_0, "Q8_0", QK8_0, (int)sizeof(block_q8_0)},
      {Fmt::Q4_K, "Q4_K", QK_K, (int)sizeof(block_q4_K)},
  };
  for (const auto& i : kInfo)
    if (i.fmt == f) return &i;
  return nullptr;
}

}  // namespace xsil
