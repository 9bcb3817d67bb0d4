// Scalar pieces of the integer-weight kernels shared by every ISA path: reading one code of the
// I16 layout, and the output epilogues (README order), used for tails and by the portable path.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

#include "int.h"
#include "scalar.h"

namespace bitnet::cpu {

// Group record g of block b.
inline const uint8_t* GroupRecord(const IntMatrix& w, int64_t b, int64_t g) {
  return w.data + b * w.block_bytes() + g * w.group_bytes;
}

// Code u of row r (in the block) at slot j of a group record.
inline int SlotCode(const IntMatrix& w, const uint8_t* record, int64_t r, int64_t j) {
  const int64_t slots = PacketSlots(w.bits);
  const int64_t s = j % slots;
  const uint8_t byte = record[(j / slots) * kPacketBytes + 4 * r + s % 4];
  return (byte >> ((s / 4) * w.bits)) & ((1 << w.bits) - 1);
}

inline float RecordScale(const IntMatrix& w, const uint8_t* record, int64_t r) {
  float s;
  std::memcpy(&s, record + w.scales_offset() + 4 * r, 4);
  return s;
}

inline int32_t RecordZeroPoint(const IntMatrix& w, const uint8_t* record, int64_t r) {
  if (!w.asymmetric) return w.symmetric_zero_point();
  int32_t zp;
  std::memcpy(&zp, record + w.zero_points_offset() + 4 * r, 4);
  return zp;
}

// q = u − zp, or 2u − 1 for 1-bit codes.
inline int32_t SlotWeight(const IntMatrix& w, int code, int32_t zp) { return (w.bits == 1 ? 2 * code : code) - zp; }

// act_quant = 1: (y · (s/127)) + bias, NaN for a non-finite row.
inline float Int8Epilogue(const IntProblem& p, int64_t m, int64_t n, float y) {
  const TokenRow& row = p.rows[m];
  if (!row.finite) return std::numeric_limits<float>::quiet_NaN();
  float v = y * row.factor;
  if (p.bias != nullptr) v = v + p.bias[n];
  return v;
}

// act_quant = 0: y + bias, NaN for a non-finite row.
inline float FloatEpilogue(const IntProblem& p, int64_t m, int64_t n, float y) {
  if (!p.rows[m].finite) return std::numeric_limits<float>::quiet_NaN();
  return p.bias != nullptr ? y + p.bias[n] : y;
}

inline void StoreY(const IntProblem& p, int64_t m, int64_t n, float v) {
  const int64_t at = m * p.w.n + n;
  if (p.y_f16) {
    static_cast<uint16_t*>(p.y)[at] = FloatToHalf(v);
  } else {
    static_cast<float*>(p.y)[at] = v;
  }
}

}  // namespace bitnet::cpu
