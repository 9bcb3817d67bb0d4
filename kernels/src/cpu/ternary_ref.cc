// Portable path: plain C++, written so that the compiler vectorizes it with the baseline ISA.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <vector>

#include "scalar.h"
#include "ternary.h"

namespace bitnet::cpu {
namespace {

template <typename Load>
void QuantizeRow(Load load, int64_t k, int64_t ldxq, int8_t* xq, TokenRow* row) {
  std::memset(xq, 0, static_cast<size_t>(ldxq));
  float s = 0.0f;
  for (int64_t i = 0; i < k; ++i) {
    const float a = std::fabs(load(i));
    if (!(a <= FLT_MAX)) {
      *row = NonFiniteRow();
      return;
    }
    s = a > s ? a : s;
  }
  if (s == 0.0f) {
    *row = TokenRow{0.0f, 0, 1};
    return;
  }
  const float inv = 127.0f / s;
  int32_t sum = 0;
  for (int64_t i = 0; i < k; ++i) {
    xq[i] = QuantizeScaled(load(i) * inv);
    sum += xq[i];
  }
  *row = TokenRow{s / 127.0f, sum, 1};
}

void QuantizeF32(const float* x, int64_t k, int64_t ldxq, int8_t* xq, TokenRow* row) {
  QuantizeRow([x](int64_t i) { return x[i]; }, k, ldxq, xq, row);
}

void QuantizeF16(const uint16_t* x, int64_t k, int64_t ldxq, int8_t* xq, TokenRow* row) {
  QuantizeRow([x](int64_t i) { return HalfToFloat(x[i]); }, k, ldxq, xq, row);
}

// X rows per pass over the weights.
constexpr int64_t kRowsPerPass = 16;
constexpr int64_t kExpandedPacket = 4 * kPacketBytes;  // one packet's four fields

// Activations expanded to the packets' byte order: for packet pk and field f, byte 4·j + i of the
// expansion holds x[16·pk + 4·f + i] for every row j of the block. A packet's products then are
// element-wise operations on 64-byte rows, which the compiler vectorizes with the baseline ISA.
void ExpandRow(const int8_t* x, int64_t k_packets, int8_t* out) {
  for (int64_t g = 0; g < 4 * k_packets; ++g) {  // g = 4 · packet + field: 4 activations, 16 times
    uint32_t four;
    std::memcpy(&four, x + 4 * g, 4);
    const uint64_t pattern = four * uint64_t{0x0000000100000001};
    for (int t = 0; t < kPacketBytes / 8; ++t) std::memcpy(out + g * kPacketBytes + 8 * t, &pattern, 8);
  }
}

// Per block: each packet's codes are decoded once (field-major, like the expansion) and used by
// every row of the pass; sums are kept per packet byte (int16 within a packet: |Σ| ≤ 4 · 2 · 127)
// and the four bytes of a row folded at the end.
void Matmul(const TernaryProblem& p, int64_t m_begin, int64_t m_end, int64_t block_begin, int64_t block_end) {
  const int64_t kp = p.w.k_packets;
  thread_local std::vector<int8_t> expanded;
  expanded.resize(static_cast<size_t>(kRowsPerPass * kp * kExpandedPacket));
  int32_t acc[kRowsPerPass][kPacketBytes];
  int16_t codes[4][kPacketBytes];
  for (int64_t m0 = m_begin; m0 < m_end; m0 += kRowsPerPass) {
    const int64_t rows = std::min(kRowsPerPass, m_end - m0);
    for (int64_t r = 0; r < rows; ++r) ExpandRow(p.xq + (m0 + r) * p.ldxq, kp, &expanded[r * kp * kExpandedPacket]);
    for (int64_t b = block_begin; b < block_end; ++b) {
      const uint8_t* packets = p.w.packets + b * kp * kPacketBytes;
      std::memset(acc, 0, sizeof(acc));
      for (int64_t pk = 0; pk < kp; ++pk) {
        const uint8_t* packet = packets + pk * kPacketBytes;
        BITNET_UNROLL for (int f = 0; f < 4; ++f) {
          for (int q = 0; q < kPacketBytes; ++q) codes[f][q] = static_cast<int16_t>((packet[q] >> (2 * f)) & 3);
        }
        for (int64_t r = 0; r < rows; ++r) {
          const int8_t* x = &expanded[(r * kp + pk) * kExpandedPacket];
          for (int q = 0; q < kPacketBytes; ++q) {
            acc[r][q] += static_cast<int16_t>(codes[0][q] * x[q] + codes[1][q] * x[kPacketBytes + q] +
                                              codes[2][q] * x[2 * kPacketBytes + q] +
                                              codes[3][q] * x[3 * kPacketBytes + q]);
          }
        }
      }
      const int64_t n0 = b * kBlockRows;
      const int64_t columns = std::min(kBlockRows, p.w.n - n0);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t j = 0; j < columns; ++j) {
          const int32_t* lane = &acc[r][4 * j];
          StoreOutput(p, m0 + r, n0 + j, Epilogue(p, m0 + r, n0 + j, lane[0] + lane[1] + lane[2] + lane[3]));
        }
      }
    }
  }
}

}  // namespace

const TernaryKernels kTernaryRef = {QuantizeF32, QuantizeF16, Matmul};

}  // namespace bitnet::cpu
