// IEEE half <-> float conversions in portable C++ (exact; round-to-nearest-even on narrowing,
// matching numpy's astype(float16) for finite, infinite, NaN and subnormal values).
#pragma once
#include <cstdint>
#include <cstring>

namespace xsil {

inline float bits_to_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t f32_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

inline float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  if (exp == 0x1f) return bits_to_f32(sign | 0x7f800000u | (man << 13));  // inf / nan
  if (exp != 0) return bits_to_f32(sign | ((exp + 112u) << 23) | (man << 13));
  if (man == 0) return bits_to_f32(sign);
  // subnormal half: value = man * 2^-24, exactly representable in fp32
  float v = (float)man * 5.9604644775390625e-08f;
  return (h & 0x8000u) ? -v : v;
}

inline uint16_t fp32_to_fp16(float f) {
  const uint32_t x = f32_to_bits(f);
  const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) {  // inf or nan (keep nan quiet with payload bits)
    if (ax == 0x7f800000u) return sign | 0x7c00u;
    return sign | 0x7e00u | (uint16_t)((ax >> 13) & 0x3ffu);
  }
  if (ax >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520 -> inf
  if (ax >= 0x38800000u) {                       // normal half range
    uint32_t m = ax - 0x38000000u;               // rebias exponent 127 -> 15
    uint32_t rounded = m + 0x0fffu + ((m >> 13) & 1u);
    return sign | (uint16_t)(rounded >> 13);
  }
  if (ax < 0x33000000u) return sign;  // below half of the smallest subnormal: rounds to zero
  // subnormal half: shift the full mantissa into place with round-to-nearest-even
  const uint32_t e = ax >> 23;
  const uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126u - e;  // 14..24
  const uint32_t half = 1u << (shift - 1);
  const uint32_t rem = mant & ((1u << shift) - 1u);
  uint32_t q = mant >> shift;
  if (rem > half || (rem == half && (q & 1u))) q++;
  return sign | (uint16_t)q;
}

}  // namespace xsil
