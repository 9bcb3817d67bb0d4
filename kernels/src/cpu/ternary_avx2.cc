// AVX2 path (compiled with -mavx2 -mfma -mf16c). The u8 × s8 products go through VPMADDUBSW
// (pairs summed to int16, never saturating here: |c·x| ≤ 2·127) and VPMADDWD against ones.
//
// Few X rows: stream the T16 packets from memory once, each 32-byte half (8 output rows) split
// into its four 2-bit fields by shift and mask and shared by up to 6 rows; the four int16
// partial sums of a packet are added before widening.
// Many X rows: unpack one block (16 outputs) × a K chunk into code bytes, then 4-row tiles
// accumulating in int16 for up to 64 steps (64 · 2 · 2 · 127 < 2^15) before widening to int32.
#include <immintrin.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

#include "aligned_buffer.h"
#include "dispatch.h"
#include "scalar.h"
#include "ternary.h"

namespace bitnet::cpu {
namespace {

constexpr int kTileRows = 4;
constexpr int64_t kChunkPackets = 128;  // K packets per panel chunk (2048 k: 32 KB of codes)
constexpr int64_t kInt16Steps = 64;     // steps an int16 accumulator takes without overflow

inline __m256i Broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

inline int32_t HorizontalSum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

inline float HorizontalMax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 0x55));
  return _mm_cvtss_f32(s);
}

struct LoadF32 {
  const float* x;
  __m256 operator()(int64_t i) const { return _mm256_loadu_ps(x + i); }
  float operator[](int64_t i) const { return x[i]; }
};
struct LoadF16 {
  const uint16_t* x;
  __m256 operator()(int64_t i) const { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i))); }
  float operator[](int64_t i) const { return HalfToFloat(x[i]); }
};

template <typename Load>
void QuantizeRow(Load load, int64_t k, int64_t ldxq, int8_t* xq, TokenRow* row) {
  const int64_t k8 = k / 8 * 8;
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 largest = _mm256_set1_ps(FLT_MAX);
  __m256 vmax = _mm256_setzero_ps();
  int bad = 0;
  for (int64_t i = 0; i < k8; i += 8) {
    const __m256 a = _mm256_and_ps(load(i), abs_mask);
    bad |= _mm256_movemask_ps(_mm256_cmp_ps(a, largest, _CMP_NLE_UQ));
    vmax = _mm256_max_ps(vmax, a);
  }
  float s = HorizontalMax(vmax);
  for (int64_t i = k8; i < k; ++i) {
    const float a = std::fabs(load[i]);
    bad |= !(a <= FLT_MAX);
    s = a > s ? a : s;
  }
  std::memset(xq, 0, static_cast<size_t>(ldxq));
  if (bad) {
    *row = NonFiniteRow();
    return;
  }
  if (s == 0.0f) {
    *row = TokenRow{0.0f, 0, 1};
    return;
  }
  const float inv = 127.0f / s;
  const __m256 vinv = _mm256_set1_ps(inv);
  const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
  __m256i vsum = _mm256_setzero_si256();
  for (int64_t i = 0; i < k8; i += 8) {
    __m256 v = _mm256_mul_ps(load(i), vinv);
    v = _mm256_and_ps(v, _mm256_cmp_ps(v, v, _CMP_ORD_Q));  // 0 · ∞ → 0
    v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
    const __m256i q = _mm256_cvtps_epi32(_mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    vsum = _mm256_add_epi32(vsum, q);
    const __m128i q16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(xq + i), _mm_packs_epi16(q16, q16));
  }
  int32_t sum = HorizontalSum(vsum);
  for (int64_t i = k8; i < k; ++i) {
    xq[i] = QuantizeScaled(load[i] * inv);
    sum += xq[i];
  }
  *row = TokenRow{s / 127.0f, sum, 1};
}

void QuantizeF32(const float* x, int64_t k, int64_t ldxq, int8_t* xq, TokenRow* row) {
  QuantizeRow(LoadF32{x}, k, ldxq, xq, row);
}

void QuantizeF16(const uint16_t* x, int64_t k, int64_t ldxq, int8_t* xq, TokenRow* row) {
  QuantizeRow(LoadF16{x}, k, ldxq, xq, row);
}

// Y[m, n0 : n0 + 8] from 8 dot products Σ c·x (README epilogue order).
inline void StoreHalf(const TernaryProblem& p, int64_t m, int64_t n0, __m256i dot) {
  if (n0 >= p.w.n) return;
  if (p.w.n - n0 < 8) {
    alignas(32) int32_t d[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(d), dot);
    for (int64_t j = 0; j < p.w.n - n0; ++j) StoreOutput(p, m, n0 + j, Epilogue(p, m, n0 + j, d[j]));
    return;
  }
  const TokenRow& row = p.rows[m];
  __m256 v;
  if (!row.finite) {
    v = _mm256_set1_ps(std::numeric_limits<float>::quiet_NaN());
  } else {
    v = _mm256_cvtepi32_ps(_mm256_sub_epi32(dot, _mm256_set1_epi32(row.sum)));
    v = _mm256_mul_ps(v, _mm256_set1_ps(row.factor));
    v = _mm256_mul_ps(v, p.alpha_per_row ? _mm256_loadu_ps(p.alpha + n0) : _mm256_set1_ps(p.alpha[0]));
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

// ---- streaming path ----

// MR X rows against one block, one 32-byte half of each packet (8 output rows) per pass so the
// tile fits in 16 registers; the second pass reads the block from L1/L2.
template <int MR>
void StreamTile(const TernaryProblem& p, int64_t m0, int64_t b) {
  const __m256i low2 = _mm256_set1_epi8(0x03), ones = _mm256_set1_epi16(1);
  const int64_t kp = p.w.k_packets;
  const uint8_t* w = p.w.packets + b * kp * kPacketBytes;
  const int8_t* x = p.xq + m0 * p.ldxq;
  for (int h = 0; h < 2; ++h) {
    __m256i acc[MR];
    BITNET_UNROLL for (int r = 0; r < MR; ++r) acc[r] = _mm256_setzero_si256();
    for (int64_t pk = 0; pk < kp; ++pk) {
      const __m256i v = _mm256_load_si256(reinterpret_cast<const __m256i*>(w + pk * kPacketBytes + 32 * h));
      const __m256i c0 = _mm256_and_si256(v, low2);
      const __m256i c1 = _mm256_and_si256(_mm256_srli_epi16(v, 2), low2);
      const __m256i c2 = _mm256_and_si256(_mm256_srli_epi16(v, 4), low2);
      const __m256i c3 = _mm256_and_si256(_mm256_srli_epi16(v, 6), low2);
      BITNET_UNROLL for (int r = 0; r < MR; ++r) {
        const int8_t* xs = x + r * p.ldxq + pk * kPacketK;
        __m256i t = _mm256_maddubs_epi16(c0, Broadcast4(xs));
        t = _mm256_add_epi16(t, _mm256_maddubs_epi16(c1, Broadcast4(xs + 4)));
        t = _mm256_add_epi16(t, _mm256_maddubs_epi16(c2, Broadcast4(xs + 8)));
        t = _mm256_add_epi16(t, _mm256_maddubs_epi16(c3, Broadcast4(xs + 12)));
        acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(t, ones));
      }
    }
    BITNET_UNROLL for (int r = 0; r < MR; ++r) StoreHalf(p, m0 + r, b * kBlockRows + 8 * h, acc[r]);
  }
}

constexpr int kStreamTileRows = 6;

// Blocks outer, row chunks inner: a block's packets come from memory once.
void Stream(const TernaryProblem& p, int64_t m_begin, int64_t m_end, int64_t block_begin, int64_t block_end) {
  for (int64_t b = block_begin; b < block_end; ++b) {
    ForEachTile<kStreamTileRows>(m_begin, m_end, [&](int64_t m, auto rows) { StreamTile<rows>(p, m, b); });
  }
}

// ---- GEMM path ----

// Codes of block b, packets [pk0, pk0 + packets): step s = 4·packet + field is 64 bytes.
void UnpackPanel(const TernaryMatrix& w, int64_t b, int64_t pk0, int64_t packets, uint8_t* panel) {
  const __m256i low2 = _mm256_set1_epi8(0x03);
  const uint8_t* src = w.packets + (b * w.k_packets + pk0) * kPacketBytes;
  for (int64_t pk = 0; pk < packets; ++pk) {
    BITNET_UNROLL for (int h = 0; h < 2; ++h) {
      const __m256i v = _mm256_load_si256(reinterpret_cast<const __m256i*>(src + pk * kPacketBytes + 32 * h));
      BITNET_UNROLL for (int f = 0; f < 4; ++f) {
        const __m256i c = _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(2 * f)), low2);
        _mm256_store_si256(reinterpret_cast<__m256i*>(panel + (4 * pk + f) * kPacketBytes + 32 * h), c);
      }
    }
  }
}

template <int MR>
void Tile(const TernaryProblem& p, const uint8_t* panel, int64_t steps, int64_t k0, int64_t m0, int64_t n0,
          int32_t* partial, bool first, bool last) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i* acc32 = reinterpret_cast<__m256i*>(partial);  // [MR][2]
  if (first) {
    BITNET_UNROLL for (int i = 0; i < 2 * MR; ++i) acc32[i] = _mm256_setzero_si256();
  }
  const int8_t* x = p.xq + m0 * p.ldxq + k0;
  for (int64_t s0 = 0; s0 < steps; s0 += kInt16Steps) {
    const int64_t s1 = std::min(steps, s0 + kInt16Steps);
    __m256i acc[MR][2];
    BITNET_UNROLL for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    for (int64_t s = s0; s < s1; ++s) {
      const __m256i w0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(panel + s * kPacketBytes));
      const __m256i w1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(panel + s * kPacketBytes + 32));
      BITNET_UNROLL for (int r = 0; r < MR; ++r) {
        const __m256i xb = Broadcast4(x + r * p.ldxq + 4 * s);
        acc[r][0] = _mm256_add_epi16(acc[r][0], _mm256_maddubs_epi16(w0, xb));
        acc[r][1] = _mm256_add_epi16(acc[r][1], _mm256_maddubs_epi16(w1, xb));
      }
    }
    BITNET_UNROLL for (int r = 0; r < MR; ++r) {
      BITNET_UNROLL for (int h = 0; h < 2; ++h) acc32[2 * r + h] = _mm256_add_epi32(acc32[2 * r + h], _mm256_madd_epi16(acc[r][h], ones));
    }
  }
  if (last) {
    BITNET_UNROLL for (int r = 0; r < MR; ++r) {
      StoreHalf(p, m0 + r, n0, acc32[2 * r]);
      StoreHalf(p, m0 + r, n0 + 8, acc32[2 * r + 1]);
    }
  }
}

void Gemm(const TernaryProblem& p, int64_t m_begin, int64_t m_end, int64_t block_begin, int64_t block_end) {
  thread_local AlignedBuffer panel_buffer, partial_buffer;
  const size_t panel_bytes = static_cast<size_t>(kChunkPackets * 4 * kPacketBytes);
  const size_t partial_bytes = static_cast<size_t>((m_end - m_begin + kTileRows) * 16 * 4);
  if (panel_buffer.size() < panel_bytes) panel_buffer = AlignedBuffer(panel_bytes);
  if (partial_buffer.size() < partial_bytes) partial_buffer = AlignedBuffer(partial_bytes);
  uint8_t* panel = panel_buffer.data();
  int32_t* partial = reinterpret_cast<int32_t*>(partial_buffer.data());
  const int64_t kp = p.w.k_packets;
  for (int64_t b = block_begin; b < block_end; ++b) {
    for (int64_t pk0 = 0; pk0 < kp; pk0 += kChunkPackets) {
      const int64_t packets = std::min(kChunkPackets, kp - pk0);
      UnpackPanel(p.w, b, pk0, packets, panel);
      const bool first = pk0 == 0, last = pk0 + packets == kp;
      const int64_t steps = 4 * packets, k0 = pk0 * kPacketK, n0 = b * kBlockRows;
      ForEachTile<kTileRows>(m_begin, m_end, [&](int64_t m, auto rows) {
        Tile<rows>(p, panel, steps, k0, m, n0, partial + (m - m_begin) * 16, first, last);
      });
    }
  }
}

void Matmul(const TernaryProblem& p, int64_t m_begin, int64_t m_end, int64_t block_begin, int64_t block_end) {
  if (m_end - m_begin <= kStreamingMaxRows) {
    Stream(p, m_begin, m_end, block_begin, block_end);
  } else {
    Gemm(p, m_begin, m_end, block_begin, block_end);
  }
}

}  // namespace

const TernaryKernels kTernaryAvx2 = {QuantizeF32, QuantizeF16, Matmul};

}  // namespace bitnet::cpu
