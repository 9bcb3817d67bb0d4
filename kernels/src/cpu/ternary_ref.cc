// Portable path: plain C++ (the compiler may auto-vectorize with the baseline ISA).
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

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

// Codes c = w + 1 of one packet as int8 [row in block][k in packet].
void DecodePacket(const uint8_t* packet, int8_t (&codes)[kBlockRows][kPacketK]) {
  for (int j = 0; j < kBlockRows; ++j) {
    for (int i = 0; i < 4; ++i) {
      const uint8_t byte = packet[4 * j + i];
      for (int f = 0; f < 4; ++f) codes[j][4 * f + i] = static_cast<int8_t>((byte >> (2 * f)) & 3);
    }
  }
}

void Matmul(const TernaryProblem& p, int64_t m_begin, int64_t m_end, int64_t block_begin, int64_t block_end) {
  constexpr int64_t kRowsPerPass = 32;  // activation rows sharing one decoded packet
  int32_t acc[kRowsPerPass][kBlockRows];
  int8_t codes[kBlockRows][kPacketK];
  for (int64_t b = block_begin; b < block_end; ++b) {
    const uint8_t* packets = p.w.packets + b * p.w.k_packets * kPacketBytes;
    for (int64_t m0 = m_begin; m0 < m_end; m0 += kRowsPerPass) {
      const int64_t rows = std::min(kRowsPerPass, m_end - m0);
      std::memset(acc, 0, sizeof(acc));
      for (int64_t pk = 0; pk < p.w.k_packets; ++pk) {
        DecodePacket(packets + pk * kPacketBytes, codes);
        for (int64_t r = 0; r < rows; ++r) {
          const int8_t* x = p.xq + (m0 + r) * p.ldxq + pk * kPacketK;
          for (int j = 0; j < kBlockRows; ++j) {
            int32_t dot = 0;
            for (int kk = 0; kk < kPacketK; ++kk) dot += codes[j][kk] * x[kk];
            acc[r][j] += dot;
          }
        }
      }
      const int64_t n0 = b * kBlockRows;
      const int64_t columns = std::min(kBlockRows, p.w.n - n0);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t j = 0; j < columns; ++j) StoreOutput(p, m0 + r, n0 + j, Epilogue(p, m0 + r, n0 + j, acc[r][j]));
      }
    }
  }
}

}  // namespace

const TernaryKernels kTernaryRef = {QuantizeF32, QuantizeF16, Matmul};

}  // namespace bitnet::cpu
