// AMX path (compiled with the AVX-512 VNNI flags plus -mamx-tile -mamx-int8): the AVX-512 VNNI
// path, except that calls with many X rows run their GEMM on AMX tiles.
//
// A panel of 4 blocks (64 outputs) × a K chunk is unpacked into code bytes; each 64-k step of one
// block is then an AMX B tile as it is (16 rows of 16 outputs × 4 k, the VNNI byte order), read with a stride of the panel's block count. Activations are the A
// tiles, read straight from xq (16 rows × 64 k). TDPBSUD (signed activations × unsigned codes)
// accumulates Σ c·x into 2 × 2 C tiles (32 rows × 32 outputs); the VNNI path's epilogue subtracts
// Σ x and scales. K is padded to 64 with zero codes and rows to 32 with the zero rows the op puts
// after X (ternary.h), so every tile is full.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "aligned_buffer.h"
#include "ternary.h"
#include "ternary_avx512.h"

namespace bitnet::cpu {
namespace {

constexpr int kPanelBlocks = 4;           // 16-output blocks per panel; an even count (2 B tiles)
constexpr int64_t kChunkPackets = 256;    // K packets per panel chunk (4096 k: 256 KB of codes)
constexpr int64_t kTileK = 64;            // k per A/B tile
constexpr int64_t kStepsPerTile = kTileK / 4;
constexpr int kTileM = 16;                // rows of an A or C tile
constexpr int64_t kPartialStride = kPanelBlocks * kBlockRows;  // int32 per partial-sum row

static_assert(kXqRowAlign % kTileK == 0 && kXqPadRows >= 2 * kTileM - 1, "ternary.h's xq padding");

// LDTILECFG's 64-byte operand: palette 1, tiles 0-7 all 16 rows × 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};

// Panel of `nb` blocks × packets [pk0, pk0 + packets): step s = 4·packet + field holds, `stride`
// vectors apart, the nb 64-byte vectors of codes c ∈ {0, 1, 2} (16 rows × 4 k each) of step s.
inline void UnpackPanel(const TernaryMatrix& w, int64_t b0, int nb, int64_t pk0, int64_t packets, int stride,
                        uint8_t* panel) {
  const __m512i low2 = _mm512_set1_epi8(0x03);
  const int64_t field = int64_t{stride} * kPacketBytes;
  for (int j = 0; j < nb; ++j) {
    const uint8_t* src = w.packets + ((b0 + j) * w.k_packets + pk0) * kPacketBytes;
    for (int64_t pk = 0; pk < packets; ++pk) {
      const __m512i v = _mm512_load_si512(src + pk * kPacketBytes);
      uint8_t* dst = panel + (pk * 4 * stride + j) * kPacketBytes;
      _mm512_store_si512(dst, _mm512_and_si512(v, low2));
      _mm512_store_si512(dst + field, _mm512_and_si512(_mm512_srli_epi16(v, 2), low2));
      _mm512_store_si512(dst + 2 * field, _mm512_and_si512(_mm512_srli_epi16(v, 4), low2));
      _mm512_store_si512(dst + 3 * field, _mm512_and_si512(_mm512_srli_epi16(v, 6), low2));
    }
  }
}

// Partial sums of rows [0, rows) × the panel's outputs, kept between K chunks: C tiles in tmm0-3
// (rows r, r + 16 × outputs j, j + 16), A tiles in tmm4-5, B tiles in tmm6-7.
void PanelTiles(const TernaryProblem& p, const uint8_t* panel, int64_t tiles_k, int64_t k0, int64_t m_begin,
                int64_t rows, int64_t pair, int32_t* partial, bool first) {
  const int64_t b_stride = kPanelBlocks * kPacketBytes;
  constexpr int64_t c_stride = kPartialStride * sizeof(int32_t);
  for (int64_t r = 0; r < rows; r += 2 * kTileM) {
    int32_t* c = partial + r * kPartialStride + pair * 2 * kBlockRows;
    if (first) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
    } else {
      _tile_loadd(0, c, c_stride);
      _tile_loadd(1, c + kBlockRows, c_stride);
      _tile_loadd(2, c + kTileM * kPartialStride, c_stride);
      _tile_loadd(3, c + kTileM * kPartialStride + kBlockRows, c_stride);
    }
    const int8_t* a = p.xq + (m_begin + r) * p.ldxq + k0;
    for (int64_t t = 0; t < tiles_k; ++t) {
      const uint8_t* b = panel + (t * kStepsPerTile * kPanelBlocks + 2 * pair) * kPacketBytes;
      _tile_loadd(4, a + t * kTileK, p.ldxq);
      _tile_loadd(5, a + kTileM * p.ldxq + t * kTileK, p.ldxq);
      _tile_loadd(6, b, b_stride);
      _tile_loadd(7, b + kPacketBytes, b_stride);
      _tile_dpbsud(0, 4, 6);
      _tile_dpbsud(1, 4, 7);
      _tile_dpbsud(2, 5, 6);
      _tile_dpbsud(3, 5, 7);
    }
    _tile_stored(0, c, c_stride);
    _tile_stored(1, c + kBlockRows, c_stride);
    _tile_stored(2, c + kTileM * kPartialStride, c_stride);
    _tile_stored(3, c + kTileM * kPartialStride + kBlockRows, c_stride);
  }
}

void Gemm(const TernaryProblem& p, int64_t m_begin, int64_t m_end, int64_t block_begin, int64_t block_end) {
  static const TileConfig config;
  thread_local AlignedBuffer panel_buffer, partial_buffer;
  const int64_t rows = m_end - m_begin;
  const int64_t padded_rows = CeilDiv(rows, 2 * kTileM) * 2 * kTileM;
  const size_t panel_bytes = static_cast<size_t>(kChunkPackets * 4 * kPanelBlocks * kPacketBytes);
  const size_t partial_bytes = static_cast<size_t>(padded_rows * kPartialStride) * sizeof(int32_t);
  if (panel_buffer.size() < panel_bytes) panel_buffer = AlignedBuffer(panel_bytes);
  if (partial_buffer.size() < partial_bytes) partial_buffer = AlignedBuffer(partial_bytes);
  uint8_t* panel = panel_buffer.data();
  int32_t* partial = reinterpret_cast<int32_t*>(partial_buffer.data());
  const int64_t kp = p.w.k_packets;
  _tile_loadconfig(&config);
  for (int64_t b = block_begin; b < block_end; b += kPanelBlocks) {
    const int nb = static_cast<int>(std::min<int64_t>(kPanelBlocks, block_end - b));
    const int64_t pairs = CeilDiv(nb, 2);
    for (int64_t pk0 = 0; pk0 < kp; pk0 += kChunkPackets) {
      const int64_t packets = std::min(kChunkPackets, kp - pk0);
      const int64_t tiles_k = CeilDiv(packets * kPacketK, kTileK);
      // Zero codes where the panel has no weights: blocks past the last (an odd count) and steps
      // past K up to the last tile's 64 k. A zero code adds nothing, whatever the activation.
      const int64_t steps = 4 * packets, padded_steps = tiles_k * kStepsPerTile;
      for (int64_t s = 0; s < padded_steps; ++s) {
        const int first_zero = s < steps ? nb : 0;
        uint8_t* step = panel + (s * kPanelBlocks + first_zero) * kPacketBytes;
        std::memset(step, 0, static_cast<size_t>((2 * pairs - first_zero) * kPacketBytes));
      }
      UnpackPanel(p.w, b, nb, pk0, packets, kPanelBlocks, panel);
      __asm__ volatile("" ::: "memory");  // the tile loads' asm does not tell GCC it reads the panel
      for (int64_t pair = 0; pair < pairs; ++pair) {
        PanelTiles(p, panel, tiles_k, pk0 * kPacketK, m_begin, rows, pair, partial, pk0 == 0);
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      for (int j = 0; j < nb; ++j) {
        const int64_t n0 = (b + j) * kBlockRows;
        if (n0 < p.w.n) StoreBlock(p, m_begin + r, n0, _mm512_load_si512(partial + r * kPartialStride + j * kBlockRows));
      }
    }
  }
  _tile_release();
}

void Matmul(const TernaryProblem& p, int64_t m_begin, int64_t m_end, int64_t block_begin, int64_t block_end) {
  if (m_end - m_begin <= kStreamingMaxRows) {
    kTernaryAvx512Vnni.matmul(p, m_begin, m_end, block_begin, block_end);
  } else {
    Gemm(p, m_begin, m_end, block_begin, block_end);
  }
}

void QuantizeF32(const float* x, int64_t k, int64_t ldxq, int8_t* xq, TokenRow* row) {
  kTernaryAvx512Vnni.quantize_f32(x, k, ldxq, xq, row);
}

void QuantizeF16(const uint16_t* x, int64_t k, int64_t ldxq, int8_t* xq, TokenRow* row) {
  kTernaryAvx512Vnni.quantize_f16(x, k, ldxq, xq, row);
}

}  // namespace

const TernaryKernels kTernaryAmx = {QuantizeF32, QuantizeF16, Matmul};

}  // namespace bitnet::cpu
