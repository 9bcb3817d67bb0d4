// AVX-512 VNNI path (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni).
//
// One 512-bit vector is one 16-row block of the I16 layout (int.h): lane r is row r.
// act_quant = 1: each packet is split into its fields by shift and mask (unsigned codes, 16 rows ×
// 4 slots) and fed to VPDPBUSD against a broadcast of the 4 activation bytes of those slots; per
// group the zero-point term zp · Σ xq is subtracted and the exact int32 sum is scaled into the
// float accumulator. act_quant = 0: the code of one slot for 16 rows is a table lookup (VPERMPS,
// which reads the low 4 bits of each lane: 16 entries hold float(q) for 4-bit codes, repeated
// patterns for 2 and 1 bits) or, for 8 bits, a convert; then one FMA per activation.
// Few X rows stream the weights once; more rows run MR × NB register tiles over block pairs that
// the op's task plan keeps in cache.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "avx512.h"
#include "dispatch.h"
#include "int.h"
#include "int_scalar.h"

namespace bitnet::cpu {
namespace {

inline __m512i Broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

inline __m512i LoadPacket(const uint8_t* p) { return _mm512_load_si512(p); }

// Codes of field f of a packet as unsigned bytes (f is a constant once the loops are unrolled).
template <int BITS>
inline __m512i Field(__m512i v, int f) {
  if constexpr (BITS == 8) {
    return v;
  } else {
    const __m512i mask = _mm512_set1_epi8(static_cast<char>((1 << BITS) - 1));
    return _mm512_and_si512(f == 0 ? v : _mm512_srli_epi16(v, static_cast<unsigned>(f * BITS)), mask);
  }
}

// Y[m, n0 : n0 + 16] from the float accumulator, through `epilogue` order of int.h.
template <bool kInt8>
inline void StoreBlock(const IntProblem& p, int64_t m, int64_t n0, __m512 y) {
  const __mmask16 mask = TailMask(p.w.n - n0);
  const TokenRow& row = p.rows[m];
  __m512 v;
  if (!row.finite) {
    v = _mm512_set1_ps(std::numeric_limits<float>::quiet_NaN());
  } else {
    v = kInt8 ? _mm512_mul_ps(y, _mm512_set1_ps(row.factor)) : y;
    if (p.bias != nullptr) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, p.bias + n0));
  }
  StoreOutputs(p.y, p.y_f16, m * p.w.n + n0, mask, v);
}

// ---- act_quant = 1 ----

// Streaming reads prefetch this far ahead. The float path runs at the vector units' throughput,
// too busy for the hardware prefetcher to keep the stream ahead. The int8 path waits on memory;
// on a Sapphire-Rapids-class Xeon one core streamed I2/I4 weights 10–25 % faster with it (the
// hardware prefetchers alone reached ~80 % of an fp32 GEMV's bandwidth); an EPYC (Zen 4) had been
// measured slightly faster without.
constexpr int64_t kPrefetchBytes = 2048;

// MR X rows × NB blocks from block b, A accumulators per output vector (independent dependency
// chains when the tile is small).
template <int BITS, int MR, int NB, int A>
void TileInt8(const IntProblem& p, int64_t m0, int64_t b) {
  constexpr int kFields = Fields(BITS);
  constexpr int64_t kSlots = PacketSlots(BITS);
  const IntMatrix& w = p.w;
  const int64_t ld = w.slots();
  const uint8_t* blocks[NB];
  for (int j = 0; j < NB; ++j) blocks[j] = w.data + (b + j) * w.block_bytes();
  __m512 y[MR][NB];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NB; ++j) y[r][j] = _mm512_setzero_ps();

  for (int64_t g = 0; g < w.groups; ++g) {
    __m512i acc[MR][NB][A];
    for (int r = 0; r < MR; ++r)
      for (int j = 0; j < NB; ++j)
        for (int a = 0; a < A; ++a) acc[r][j][a] = _mm512_setzero_si512();
    const int8_t* xg = p.xq + m0 * ld + g * w.group_slots;
    for (int64_t pk0 = 0; pk0 < w.group_packets; pk0 += 2) {
      // Two packets per iteration: with A > 1 their fields feed different accumulators.
#pragma GCC unroll 2
      for (int u = 0; u < 2; ++u) {
        const int64_t pk = pk0 + u;
        if (pk == w.group_packets) break;
        __m512i v[NB];
#pragma GCC unroll 2
        for (int j = 0; j < NB; ++j) {
          const uint8_t* packet = blocks[j] + g * w.group_bytes + pk * kPacketBytes;
          v[j] = LoadPacket(packet);
          _mm_prefetch(reinterpret_cast<const char*>(packet + kPrefetchBytes), _MM_HINT_T0);
        }
#pragma GCC unroll 8
        for (int f = 0; f < kFields; ++f) {
          const int a = (u * kFields + f) % A;
#pragma GCC unroll 2
          for (int j = 0; j < NB; ++j) {
            const __m512i c = Field<BITS>(v[j], f);
#pragma GCC unroll 8
            for (int r = 0; r < MR; ++r) {
              acc[r][j][a] = _mm512_dpbusd_epi32(acc[r][j][a], c, Broadcast4(xg + r * ld + pk * kSlots + 4 * f));
            }
          }
        }
      }
    }

    for (int j = 0; j < NB; ++j) {
      const uint8_t* record = blocks[j] + g * w.group_bytes;
      const __m512 scale = _mm512_load_ps(record + w.scales_offset());
      const __m512i zp = w.asymmetric ? _mm512_load_si512(record + w.zero_points_offset())
                                      : _mm512_set1_epi32(w.symmetric_zero_point());
      for (int r = 0; r < MR; ++r) {
        __m512i dot = acc[r][j][0];
        for (int a = 1; a < A; ++a) dot = _mm512_add_epi32(dot, acc[r][j][a]);
        if constexpr (BITS == 1) dot = _mm512_add_epi32(dot, dot);
        const __m512i xsum = _mm512_set1_epi32(p.xsum[(m0 + r) * w.groups + g]);
        dot = _mm512_sub_epi32(dot, _mm512_mullo_epi32(zp, xsum));
        const __m512 term = _mm512_mul_ps(_mm512_cvtepi32_ps(dot), scale);
        y[r][j] = _mm512_add_ps(y[r][j], term);
      }
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NB; ++j) {
      if ((b + j) * kBlockRows < w.n) StoreBlock<true>(p, m0 + r, (b + j) * kBlockRows, y[r][j]);
    }
}

// ---- act_quant = 0 ----


// 16-entry table of float(q) for the low 4 bits of a lane (symmetric), or of float(u) (asymmetric:
// the zero point is subtracted per lane afterwards).
template <int BITS>
inline __m512 CodeTable(const IntMatrix& w) {
  alignas(64) float table[16];
  const int zp = w.asymmetric ? 0 : w.symmetric_zero_point();
  for (int i = 0; i < 16; ++i) {
    const int u = i & ((1 << BITS) - 1);
    table[i] = static_cast<float>((BITS == 1 ? 2 * u : u) - zp);
  }
  return _mm512_load_ps(table);
}

template <int BITS, int MR, int NB>
void TileFloat(const IntProblem& p, int64_t m0, int64_t b) {
  constexpr int kFields = Fields(BITS);
  constexpr int64_t kSlots = PacketSlots(BITS);
  const IntMatrix& w = p.w;
  const int64_t ld = w.slots();
  const uint8_t* blocks[NB];
  for (int j = 0; j < NB; ++j) blocks[j] = w.data + (b + j) * w.block_bytes();
  const __m512 table = CodeTable<BITS == 8 ? 4 : BITS>(w);
  const __m512i low8 = _mm512_set1_epi32(0xff);
  __m512 y[MR][NB];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NB; ++j) y[r][j] = _mm512_setzero_ps();

  for (int64_t g = 0; g < w.groups; ++g) {
    __m512 part[MR][NB][4];
    for (int r = 0; r < MR; ++r)
      for (int j = 0; j < NB; ++j)
        for (int i = 0; i < 4; ++i) part[r][j][i] = _mm512_setzero_ps();
    __m512 zpf[NB];
    __m512i zpi[NB];
    for (int j = 0; j < NB; ++j) {
      const uint8_t* record = blocks[j] + g * w.group_bytes;
      zpi[j] = w.asymmetric ? _mm512_load_si512(record + w.zero_points_offset())
                            : _mm512_set1_epi32(w.symmetric_zero_point());
      zpf[j] = _mm512_cvtepi32_ps(zpi[j]);
    }
    const float* xg = p.xf + m0 * ld + g * w.group_slots;
    for (int64_t pk = 0; pk < w.group_packets; ++pk) {
      __m512i v[NB];
      for (int j = 0; j < NB; ++j) {
        const uint8_t* packet = blocks[j] + g * w.group_bytes + pk * kPacketBytes;
        v[j] = LoadPacket(packet);
        _mm_prefetch(reinterpret_cast<const char*>(packet + kPrefetchBytes), _MM_HINT_T0);
      }
#pragma GCC unroll 8
      for (int f = 0; f < kFields; ++f) {
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) {
          const int shift = 8 * i + f * BITS;
#pragma GCC unroll 2
          for (int j = 0; j < NB; ++j) {
            const __m512i idx = shift == 0 ? v[j] : _mm512_srli_epi32(v[j], static_cast<unsigned>(shift));
            __m512 q;
            if constexpr (BITS == 8) {
              const __m512i u = i == 3 ? idx : _mm512_and_si512(idx, low8);
              q = _mm512_cvtepi32_ps(_mm512_sub_epi32(u, zpi[j]));
            } else {
              q = _mm512_permutexvar_ps(idx, table);
              if (w.asymmetric) q = _mm512_sub_ps(q, zpf[j]);
            }
#pragma GCC unroll 4
            for (int r = 0; r < MR; ++r) {
              const __m512 x = _mm512_set1_ps(xg[r * ld + pk * kSlots + 4 * f + i]);
              part[r][j][i] = _mm512_fmadd_ps(q, x, part[r][j][i]);
            }
          }
        }
      }
    }
    for (int j = 0; j < NB; ++j) {
      const __m512 scale = _mm512_load_ps(blocks[j] + g * w.group_bytes + w.scales_offset());
      for (int r = 0; r < MR; ++r) {
        const __m512 total = _mm512_add_ps(_mm512_add_ps(part[r][j][0], part[r][j][1]),
                                           _mm512_add_ps(part[r][j][2], part[r][j][3]));
        y[r][j] = _mm512_fmadd_ps(total, scale, y[r][j]);
      }
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NB; ++j) {
      if ((b + j) * kBlockRows < w.n) StoreBlock<false>(p, m0 + r, (b + j) * kBlockRows, y[r][j]);
    }
}

// ---- tiling over rows and blocks ----

// int8 tiles of up to 8 rows × 2 blocks: 16 VPDPBUSD per field share 2 unpacked code vectors
// (TileInt8's row loop is unrolled 8 times so the 16 accumulators stay in registers). Measured on
// an EPYC (Zen 5) core, K = N = 4096: ~10 % faster than 4-row tiles at M = 32 and 128, where 4-row
// tiles had been slower than onnxruntime's int8 GEMM.
constexpr int kInt8TileRows = 8;

template <int BITS>
struct Tiles {
  // MR rows starting at m over blocks [block_begin, block_end).
  template <int MR>
  static void Int8Rows(const IntProblem& p, int64_t m, int64_t block_begin, int64_t block_end) {
    constexpr int kPairAccumulators = MR == 1 ? 2 : 1;
    int64_t b = block_begin;
    for (; b + 2 <= block_end; b += 2) TileInt8<BITS, MR, 2, kPairAccumulators>(p, m, b);
    if (b < block_end) TileInt8<BITS, MR, 1, MR == 1 ? 4 : (MR == 2 ? 2 : 1)>(p, m, b);
  }

  template <int MR>
  static void FloatRows(const IntProblem& p, int64_t m, int64_t block_begin, int64_t block_end) {
    constexpr int kNB = MR <= 2 ? 2 : 1;
    int64_t b = block_begin;
    for (; b + kNB <= block_end; b += kNB) TileFloat<BITS, MR, kNB>(p, m, b);
    if (b < block_end) TileFloat<BITS, MR, 1>(p, m, b);
  }

  // Tiles of up to kInt8TileRows (int8) or 4 (float) rows over blocks [block_begin, block_end).
  template <bool kInt8>
  static void Rows(const IntProblem& p, int64_t m_begin, int64_t m_end, int64_t block_begin, int64_t block_end) {
    ForEachTile<kInt8 ? kInt8TileRows : 4>(m_begin, m_end, [&](int64_t m, auto rows) {
      if constexpr (kInt8) {
        Int8Rows<rows>(p, m, block_begin, block_end);
      } else {
        FloatRows<rows>(p, m, block_begin, block_end);
      }
    });
  }
};

template <bool kInt8>
void Matmul(const IntProblem& p, int64_t m_begin, int64_t m_end, int64_t block_begin, int64_t block_end) {
  WithBits(p.w.bits, [&](auto bits) { Tiles<bits>::template Rows<kInt8>(p, m_begin, m_end, block_begin, block_end); });
}

// ---- dequantization of packed rows at rest ----

// Lane l of a 16-element chunk reads 32-bit word (l·bits)/32 of the chunk at bit (l·bits) mod 32.
template <int BITS>
void DequantizeRow(const PackedRow& row, void* out, bool f16) {
  __m512i word, shift;
  {
    alignas(64) int32_t words[16], shifts[16];
    for (int l = 0; l < 16; ++l) {
      words[l] = l * BITS / 32;
      shifts[l] = l * BITS % 32;
    }
    word = _mm512_load_si512(words);
    shift = _mm512_load_si512(shifts);
  }
  const __m512i mask = _mm512_set1_epi32((1 << BITS) - 1);
  for (int64_t g = 0, e0 = 0; e0 < row.k; ++g, e0 += row.group_size) {
    const int64_t count = std::min(row.group_size, row.k - e0);
    const __m512 scale = _mm512_set1_ps(row.scales[g]);
    const __m512i zp = _mm512_set1_epi32(row.zero_points != nullptr ? row.zero_points[g] : row.zero_point);
    const uint8_t* codes = row.codes + e0 * BITS / 8;
    for (int64_t c = 0; c < count; c += 16) {
      const int64_t lanes = std::min<int64_t>(16, count - c);
      const int64_t bytes = (lanes * BITS + 7) / 8;
      const __m128i raw = _mm_maskz_loadu_epi8(static_cast<__mmask16>((1u << bytes) - 1), codes + c * BITS / 8);
      const __m512i words = _mm512_permutexvar_epi32(word, _mm512_zextsi128_si512(raw));
      __m512i q = _mm512_and_si512(_mm512_srlv_epi32(words, shift), mask);
      if (row.mult == 2) q = _mm512_add_epi32(q, q);
      const __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(q, zp)), scale);
      const __mmask16 store = TailMask(lanes);
      if (f16) {
        _mm256_mask_storeu_epi16(static_cast<uint16_t*>(out) + e0 + c, store,
                                 _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      } else {
        _mm512_mask_storeu_ps(static_cast<float*>(out) + e0 + c, store, v);
      }
    }
  }
}

void Dequantize(const PackedRow& row, void* out, bool f16) {
  WithBits(row.bits, [&](auto bits) { DequantizeRow<bits>(row, out, f16); });
}

}  // namespace

const IntKernels kIntAvx512Vnni = {Matmul<true>, Matmul<false>, Dequantize};

}  // namespace bitnet::cpu
