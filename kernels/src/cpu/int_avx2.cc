// AVX2 path (compiled with -mavx2 -mfma -mf16c). One 256-bit vector is half a 16-row block of
// the I16 layout (int.h): lane r is row r of the half.
// act_quant = 1: the u8 × s8 products go through VPMADDUBSW (pairs summed to int16: with codes
// below 16 a packet's fields sum to at most 8 · 2 · 15 · 127 < 2^15) and VPMADDWD against ones;
// 8-bit codes are split into nibbles first (u = 16·hi + lo) so no pair saturates.
// act_quant = 0: each slot's codes are shifted, masked and converted (exact small integers), then
// one FMA per activation, in the order of int.h.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "dispatch.h"
#include "int.h"
#include "int_scalar.h"

namespace bitnet::cpu {
namespace {

constexpr int64_t kHalfRows = 8;
constexpr int64_t kHalfBytes = 32;

inline __m256i Broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

inline __m256i Load(const uint8_t* p) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(p)); }

// Y[m, n0 : n0 + 8] from the float accumulator of one half block (epilogues of int_scalar.h).
template <bool kInt8>
inline void StoreHalf(const IntProblem& p, int64_t m, int64_t n0, __m256 y) {
  if (n0 >= p.w.n) return;
  if (p.w.n - n0 < kHalfRows) {
    alignas(32) float v[8];
    _mm256_store_ps(v, y);
    for (int64_t j = 0; j < p.w.n - n0; ++j) {
      StoreY(p, m, n0 + j, kInt8 ? Int8Epilogue(p, m, n0 + j, v[j]) : FloatEpilogue(p, m, n0 + j, v[j]));
    }
    return;
  }
  const TokenRow& row = p.rows[m];
  __m256 v;
  if (!row.finite) {
    v = _mm256_set1_ps(std::numeric_limits<float>::quiet_NaN());
  } else {
    v = kInt8 ? _mm256_mul_ps(y, _mm256_set1_ps(row.factor)) : y;
    if (p.bias != nullptr) v = _mm256_add_ps(v, _mm256_loadu_ps(p.bias + n0));
  }
  const int64_t at = m * p.w.n + n0;
  if (p.y_f16) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(p.y) + at),
                     _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  } else {
    _mm256_storeu_ps(static_cast<float*>(p.y) + at, v);
  }
}

inline __m256i ZeroPoints(const IntMatrix& w, const uint8_t* record, int h) {
  return w.asymmetric ? Load(record + w.zero_points_offset() + kHalfBytes * h)
                      : _mm256_set1_epi32(w.symmetric_zero_point());
}

// ---- act_quant = 1 ----

// MR X rows × NH halves of block b from half h0 (NH = 2: the whole block in one pass).
template <int BITS, int MR, int NH>
void HalfInt8(const IntProblem& p, int64_t m0, int64_t b, int h0) {
  constexpr int kFields = Fields(BITS);
  constexpr int64_t kSlots = PacketSlots(BITS);
  const IntMatrix& w = p.w;
  const int64_t ld = w.slots();
  const uint8_t* block = w.data + b * w.block_bytes() + kHalfBytes * h0;
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  const __m256i mask = _mm256_set1_epi8(static_cast<char>((1 << (BITS == 8 ? 4 : BITS)) - 1));
  __m256 y[MR][NH];
  for (int r = 0; r < MR; ++r)
    for (int h = 0; h < NH; ++h) y[r][h] = _mm256_setzero_ps();
  for (int64_t g = 0; g < w.groups; ++g) {
    const uint8_t* record = block + g * w.group_bytes;
    const int8_t* xg = p.xq + m0 * ld + g * w.group_slots;
    __m256i acc[MR][NH];
    for (int r = 0; r < MR; ++r)
      for (int h = 0; h < NH; ++h) acc[r][h] = _mm256_setzero_si256();
    for (int64_t pk = 0; pk < w.group_packets; ++pk) {
#pragma GCC unroll 2
      for (int h = 0; h < NH; ++h) {
        const __m256i v = Load(record + pk * kPacketBytes + kHalfBytes * h);
        if constexpr (BITS == 8) {
          const __m256i lo = _mm256_and_si256(v, low4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
#pragma GCC unroll 4
          for (int r = 0; r < MR; ++r) {
            const __m256i xb = Broadcast4(xg + r * ld + pk * kSlots);
            const __m256i plo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, xb), ones);
            const __m256i phi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, xb), ones);
            acc[r][h] = _mm256_add_epi32(acc[r][h], _mm256_add_epi32(plo, _mm256_slli_epi32(phi, 4)));
          }
        } else {
          __m256i t[MR];
          for (int r = 0; r < MR; ++r) t[r] = _mm256_setzero_si256();
#pragma GCC unroll 8
          for (int f = 0; f < kFields; ++f) {
            const __m256i c = _mm256_and_si256(f == 0 ? v : _mm256_srli_epi16(v, f * BITS), mask);
#pragma GCC unroll 4
            for (int r = 0; r < MR; ++r) {
              t[r] = _mm256_add_epi16(t[r], _mm256_maddubs_epi16(c, Broadcast4(xg + r * ld + pk * kSlots + 4 * f)));
            }
          }
          for (int r = 0; r < MR; ++r) acc[r][h] = _mm256_add_epi32(acc[r][h], _mm256_madd_epi16(t[r], ones));
        }
      }
    }
    for (int h = 0; h < NH; ++h) {
      const __m256 scale = _mm256_load_ps(reinterpret_cast<const float*>(record + w.scales_offset()) + kHalfRows * h);
      const __m256i zp = ZeroPoints(w, record, h);
      for (int r = 0; r < MR; ++r) {
        __m256i dot = acc[r][h];
        if constexpr (BITS == 1) dot = _mm256_add_epi32(dot, dot);
        dot = _mm256_sub_epi32(dot, _mm256_mullo_epi32(zp, _mm256_set1_epi32(p.xsum[(m0 + r) * w.groups + g])));
        y[r][h] = _mm256_add_ps(y[r][h], _mm256_mul_ps(_mm256_cvtepi32_ps(dot), scale));
      }
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int h = 0; h < NH; ++h) StoreHalf<true>(p, m0 + r, b * kBlockRows + kHalfRows * (h0 + h), y[r][h]);
}

// ---- act_quant = 0 ----

template <int BITS, int MR, int NH>
void HalfFloat(const IntProblem& p, int64_t m0, int64_t b, int h0) {
  constexpr int kFields = Fields(BITS);
  constexpr int64_t kSlots = PacketSlots(BITS);
  const IntMatrix& w = p.w;
  const int64_t ld = w.slots();
  const uint8_t* block = w.data + b * w.block_bytes() + kHalfBytes * h0;
  const __m256i mask = _mm256_set1_epi32((1 << BITS) - 1);
  __m256 y[MR][NH];
  for (int r = 0; r < MR; ++r)
    for (int h = 0; h < NH; ++h) y[r][h] = _mm256_setzero_ps();
  for (int64_t g = 0; g < w.groups; ++g) {
    const uint8_t* record = block + g * w.group_bytes;
    const float* xg = p.xf + m0 * ld + g * w.group_slots;
    __m256i zp[NH];
    for (int h = 0; h < NH; ++h) zp[h] = ZeroPoints(w, record, h);
    __m256 part[MR][NH][4];
    for (int r = 0; r < MR; ++r)
      for (int h = 0; h < NH; ++h)
        for (int i = 0; i < 4; ++i) part[r][h][i] = _mm256_setzero_ps();
    for (int64_t pk = 0; pk < w.group_packets; ++pk) {
      __m256i v[NH];
      for (int h = 0; h < NH; ++h) v[h] = Load(record + pk * kPacketBytes + kHalfBytes * h);
#pragma GCC unroll 8
      for (int f = 0; f < kFields; ++f) {
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) {
          const int shift = 8 * i + f * BITS;
#pragma GCC unroll 2
          for (int h = 0; h < NH; ++h) {
            const __m256i shifted = shift == 0 ? v[h] : _mm256_srli_epi32(v[h], shift);
            __m256i u = shift + BITS == 32 ? shifted : _mm256_and_si256(shifted, mask);
            if constexpr (BITS == 1) u = _mm256_add_epi32(u, u);
            const __m256 q = _mm256_cvtepi32_ps(_mm256_sub_epi32(u, zp[h]));
#pragma GCC unroll 2
            for (int r = 0; r < MR; ++r) {
              const __m256 x = _mm256_set1_ps(xg[r * ld + pk * kSlots + 4 * f + i]);
              part[r][h][i] = _mm256_fmadd_ps(q, x, part[r][h][i]);
            }
          }
        }
      }
    }
    for (int h = 0; h < NH; ++h) {
      const __m256 scale = _mm256_load_ps(reinterpret_cast<const float*>(record + w.scales_offset()) + kHalfRows * h);
      for (int r = 0; r < MR; ++r) {
        const __m256 total = _mm256_add_ps(_mm256_add_ps(part[r][h][0], part[r][h][1]),
                                           _mm256_add_ps(part[r][h][2], part[r][h][3]));
        y[r][h] = _mm256_fmadd_ps(total, scale, y[r][h]);
      }
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int h = 0; h < NH; ++h) StoreHalf<false>(p, m0 + r, b * kBlockRows + kHalfRows * (h0 + h), y[r][h]);
}

// ---- tiling: up to kMaxRows X rows over each half block in turn ----

// One block for MR X rows: both halves in one pass when the registers allow, else half by half.
template <int BITS, bool kInt8, int MR>
void Block(const IntProblem& p, int64_t m, int64_t b) {
  const bool both = b * kBlockRows + kHalfRows < p.w.n;  // the second half has rows
  constexpr bool kOnePass = kInt8 ? MR <= 2 : MR == 1;
  auto half = [&](auto halves, int h0) {
    if constexpr (kInt8) {
      HalfInt8<BITS, MR, halves>(p, m, b, h0);
    } else {
      HalfFloat<BITS, MR, halves>(p, m, b, h0);
    }
  };
  if (kOnePass && both) {
    half(Const<2>{}, 0);
  } else {
    half(Const<1>{}, 0);
    if (both) half(Const<1>{}, 1);
  }
}

template <bool kInt8>
void Matmul(const IntProblem& p, int64_t m_begin, int64_t m_end, int64_t block_begin, int64_t block_end) {
  constexpr int kMaxRows = kInt8 ? 4 : 2;  // what fits in 16 registers
  WithBits(p.w.bits, [&](auto bits) {
    ForEachTile<kMaxRows>(m_begin, m_end, [&](int64_t m, auto rows) {
      for (int64_t b = block_begin; b < block_end; ++b) Block<bits, kInt8, rows>(p, m, b);
    });
  });
}

// ---- dequantization of packed rows at rest ----

// The BITS bytes of 8 codes as one integer, loaded at their width (a wider load of a narrower
// stack store would stall store forwarding).
template <int BITS>
inline int64_t LoadCodes(const uint8_t* p) {
  if constexpr (BITS == 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    return static_cast<int64_t>(v);
  } else if constexpr (BITS == 4) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
  } else if constexpr (BITS == 2) {
    uint16_t v;
    std::memcpy(&v, p, 2);
    return v;
  } else {
    return p[0];
  }
}

// `count` (< 8) bytes as one little-endian integer.
inline int64_t LoadBytes(const uint8_t* p, int64_t count) {
  uint64_t v = 0;
  for (int64_t b = 0; b < count; ++b) v |= static_cast<uint64_t>(p[b]) << (8 * b);
  return static_cast<int64_t>(v);
}

// Lane l of an 8-element chunk (BITS bytes) reads 32-bit word (l·BITS)/32 at bit (l·BITS) mod 32.
template <int BITS>
void DequantizeRow(const PackedRow& row, void* out, bool f16) {
  alignas(32) int32_t words[8], shifts[8];
  for (int l = 0; l < 8; ++l) {
    words[l] = l * BITS / 32;
    shifts[l] = l * BITS % 32;
  }
  const __m256i word = _mm256_load_si256(reinterpret_cast<const __m256i*>(words));
  const __m256i shift = _mm256_load_si256(reinterpret_cast<const __m256i*>(shifts));
  const __m256i mask = _mm256_set1_epi32((1 << BITS) - 1);
  for (int64_t g = 0, e0 = 0; e0 < row.k; ++g, e0 += row.group_size) {
    const int64_t count = std::min(row.group_size, row.k - e0);
    const __m256 scale = _mm256_set1_ps(row.scales[g]);
    const __m256i zp = _mm256_set1_epi32(row.zero_points != nullptr ? row.zero_points[g] : row.zero_point);
    const uint8_t* codes = row.codes + e0 * BITS / 8;
    for (int64_t c = 0; c < count; c += 8) {
      const int64_t lanes = std::min<int64_t>(8, count - c);
      const int64_t raw = lanes == 8 ? LoadCodes<BITS>(codes + c * BITS / 8)
                                     : LoadBytes(codes + c * BITS / 8, (lanes * BITS + 7) / 8);
      const __m256i words_v = _mm256_permutevar8x32_epi32(_mm256_set1_epi64x(raw), word);
      __m256i q = _mm256_and_si256(_mm256_srlv_epi32(words_v, shift), mask);
      if (row.mult == 2) q = _mm256_add_epi32(q, q);
      const __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q, zp)), scale);
      const int64_t at = e0 + c;
      if (lanes == 8) {
        if (f16) {
          _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(out) + at),
                           _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        } else {
          _mm256_storeu_ps(static_cast<float*>(out) + at, v);
        }
      } else {
        alignas(32) float tail[8];
        _mm256_store_ps(tail, v);
        for (int64_t l = 0; l < lanes; ++l) {
          if (f16) {
            static_cast<uint16_t*>(out)[at + l] = FloatToHalf(tail[l]);
          } else {
            static_cast<float*>(out)[at + l] = tail[l];
          }
        }
      }
    }
  }
}

void Dequantize(const PackedRow& row, void* out, bool f16) {
  WithBits(row.bits, [&](auto bits) { DequantizeRow<bits>(row, out, f16); });
}

}  // namespace

const IntKernels kIntAvx2 = {Matmul<true>, Matmul<false>, Dequantize};

}  // namespace bitnet::cpu
