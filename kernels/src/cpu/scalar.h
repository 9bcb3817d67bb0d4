// Portable scalar pieces shared by every ISA path: float16 conversion, the activation
// quantization of one element, and the output epilogue. Keeping one definition of each is what
// makes all paths produce bit-identical outputs (the library is built with -ffp-contract=off).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "ternary.h"

// Fully unrolls a loop over a register array (accumulator tiles) before GCC decides where the
// array lives: without it GCC 12 keeps such arrays on the stack and spills every step.
#define BITNET_UNROLL _Pragma("GCC unroll 16")

namespace bitnet::cpu {

inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0) {
    const float magnitude = static_cast<float>(mantissa) * (1.0f / 16777216.0f);  // m · 2^-24, exact
    std::memcpy(&bits, &magnitude, 4);
    bits |= sign;
  } else if (exponent == 31) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  }
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

// Round to nearest even, like numpy's astype(float16) and VCVTPS2PH with rounding mode 0.
inline uint16_t FloatToHalf(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (ax >= 0x477ff000u) return sign | 0x7c00u;  // ≥ 65520 rounds to infinity
  if (ax < 0x38800000u) {                         // below 2^-14: subnormal half (or zero)
    float magnitude;
    std::memcpy(&magnitude, &ax, 4);
    return sign | static_cast<uint16_t>(std::nearbyint(magnitude * 16777216.0f));
  }
  const uint32_t rebased = ax - 0x38000000u;  // exponent bias 127 → 15
  return sign | static_cast<uint16_t>((rebased + 0xfffu + ((rebased >> 13) & 1u)) >> 13);
}

// clip(rint(v), −127, 127) for v = x · (127 / s); a NaN product (0 · ∞ when s is so small that
// 127 / s overflows) quantizes to 0.
inline int8_t QuantizeScaled(float v) {
  if (v != v) return 0;
  v = v < -127.0f ? -127.0f : (v > 127.0f ? 127.0f : v);
  return static_cast<int8_t>(std::nearbyint(v));
}

inline TokenRow NonFiniteRow() { return TokenRow{std::numeric_limits<float>::quiet_NaN(), 0, 0}; }

// ((float(Σc·x − Σx) · factor) · α) + bias, or NaN for a non-finite row (README order).
inline float Epilogue(const TernaryProblem& p, int64_t m, int64_t n, int32_t dot) {
  const TokenRow& row = p.rows[m];
  if (!row.finite) return std::numeric_limits<float>::quiet_NaN();
  float v = static_cast<float>(dot - row.sum) * row.factor;
  v = v * p.alpha[p.alpha_per_row ? n : 0];
  if (p.bias != nullptr) v = v + p.bias[n];
  return v;
}

inline void StoreOutput(const TernaryProblem& p, int64_t m, int64_t n, float v) {
  const int64_t at = m * p.w.n + n;
  if (p.y_f16) {
    static_cast<uint16_t*>(p.y)[at] = FloatToHalf(v);
  } else {
    static_cast<float*>(p.y)[at] = v;
  }
}

}  // namespace bitnet::cpu
