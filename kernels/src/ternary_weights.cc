#include "ternary_weights.h"

#include <algorithm>
#include <cstring>

#include "bitnet/error.h"

namespace bitnet {
namespace {

using cpu::CeilDiv;
using cpu::kBlockRows;
using cpu::kPacketBytes;
using cpu::kPacketK;

constexpr int kBase3Max = 242;  // 2 · (1 + 3 + 9 + 27 + 81)

// Row r's codes (one byte each, padded with c = 1 to k_packets · 16) from its packed bytes.
void DecodeRow(const uint8_t* row, int64_t row_bytes, int64_t r, TernaryFormat format, uint8_t* codes,
               const char* op) {
  if (format == TernaryFormat::kTwoBit) {
    for (int64_t q = 0; q < row_bytes; ++q) {
      const uint8_t byte = row[q];
      if (byte & (byte >> 1) & 0x55) {
        Fail(op, "W[", r, ", ", q, "] = ", static_cast<int>(byte),
             " holds the 2-bit code 3; valid codes are 0, 1, 2 (w + 1): W is not ternary '2bit' data");
      }
      for (int i = 0; i < 4; ++i) codes[4 * q + i] = (byte >> (2 * i)) & 3;
    }
    return;
  }
  for (int64_t q = 0; q < row_bytes; ++q) {
    int value = row[q];
    if (value > kBase3Max) {
      Fail(op, "W[", r, ", ", q, "] = ", value, " exceeds ", kBase3Max,
           ", the largest base-3 pack of 5 codes: W is not ternary 'base3' data");
    }
    for (int i = 0; i < 5; ++i, value /= 3) codes[5 * q + i] = static_cast<uint8_t>(value % 3);
  }
}

}  // namespace

TernaryFormat ParseTernaryFormat(const std::string& name, const char* op) {
  if (name == "2bit") return TernaryFormat::kTwoBit;
  if (name == "base3") return TernaryFormat::kBase3;
  Fail(op, "format='", name, "' is not a ternary format; use '2bit' or 'base3'");
}

const char* TernaryFormatName(TernaryFormat format) {
  return format == TernaryFormat::kTwoBit ? "2bit" : "base3";
}

int64_t TernaryRowBytes(int64_t k, TernaryFormat format) {
  return CeilDiv(k, format == TernaryFormat::kTwoBit ? 4 : 5);
}

TernaryWeights::TernaryWeights(const uint8_t* packed, const std::vector<int64_t>& shape, int64_t k,
                               TernaryFormat format, const char* op) {
  const int64_t row_bytes = TernaryRowBytes(k, format);
  if (shape.size() != 2 || shape[1] != row_bytes) {
    Fail(op, "K=", k, " format=", TernaryFormatName(format), " needs W of shape [N, ", row_bytes, "] (ceil(K/",
         format == TernaryFormat::kTwoBit ? 4 : 5, ") bytes per row), got ", ShapeString(shape),
         "; check the K attribute and the packing");
  }
  matrix_.n = shape[0];
  matrix_.k = k;
  matrix_.blocks = CeilDiv(matrix_.n, kBlockRows);
  matrix_.k_packets = CeilDiv(k, kPacketK);
  buffer_ = AlignedBuffer(static_cast<size_t>(matrix_.blocks * matrix_.k_packets * kPacketBytes));
  uint8_t* out = buffer_.data();
  std::memset(out, 0x55, buffer_.size());  // every code 1 (w = 0): the padding rows and columns

  // Four consecutive k (i = 0..3) share a packet and a field f, so each group of four codes is
  // one 32-bit word of byte lanes OR-ed in at bit 2f.
  const int64_t padded_k = matrix_.k_packets * kPacketK;
  std::vector<uint8_t> codes(static_cast<size_t>(std::max(padded_k, row_bytes * 5)), 1);
  for (int64_t r = 0; r < matrix_.n; ++r) {
    std::fill(codes.begin(), codes.end(), 1);
    DecodeRow(packed + r * row_bytes, row_bytes, r, format, codes.data(), op);
    std::fill(codes.begin() + k, codes.end(), 1);
    uint8_t* block = out + (r / kBlockRows) * matrix_.k_packets * kPacketBytes + 4 * (r % kBlockRows);
    for (int64_t q = 0; q < padded_k / 4; ++q) {
      const int field = static_cast<int>(q % 4);
      uint8_t* lane = block + (q / 4) * kPacketBytes;
      for (int i = 0; i < 4; ++i) {
        lane[i] = static_cast<uint8_t>((lane[i] & ~(3u << (2 * field))) | (codes[4 * q + i] << (2 * field)));
      }
    }
  }
  matrix_.packets = out;
}

}  // namespace bitnet
