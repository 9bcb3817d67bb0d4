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

// Row r's base-3 codes, one byte each.
void DecodeBase3Row(const uint8_t* row, int64_t row_bytes, int64_t r, uint8_t* codes, const char* op) {
  for (int64_t q = 0; q < row_bytes; ++q) {
    int value = row[q];
    if (value > kBase3Max) {
      Fail(op, "W[", r, ", ", q, "] = ", value, " exceeds ", kBase3Max,
           ", the largest base-3 pack of 5 codes: W is not ternary 'base3' data");
    }
    for (int i = 0; i < 5; ++i, value /= 3) codes[5 * q + i] = static_cast<uint8_t>(value % 3);
  }
}

[[noreturn]] void FailTwoBitCode(int64_t r, int64_t q, uint8_t byte, const char* op) {
  Fail(op, "W[", r, ", ", q, "] = ", static_cast<int>(byte),
       " holds the 2-bit code 3; valid codes are 0, 1, 2 (w + 1): W is not ternary '2bit' data");
}

// Byte b of a 2bit row holds k = 4b..4b+3, which T16 keeps together: packet b / 4, field b % 4,
// bytes i = 0..3 of the row's lane. kSpread[b] places code i of b in byte i of a lane word.
struct SpreadTable {
  uint32_t word[256];
  SpreadTable() {
    for (int b = 0; b < 256; ++b) {
      word[b] = 0;
      for (int i = 0; i < 4; ++i) word[b] |= static_cast<uint32_t>((b >> (2 * i)) & 3) << (8 * i);
    }
  }
};
const SpreadTable kSpread;

void RepackTwoBitRow(const uint8_t* row, int64_t row_bytes, int64_t r, int64_t k_packets, uint8_t* lane,
                     const char* op) {
  for (int64_t pk = 0; pk < k_packets; ++pk) {
    uint32_t word = 0;
    for (int f = 0; f < 4; ++f) {
      const int64_t q = 4 * pk + f;
      const uint8_t byte = q < row_bytes ? row[q] : 0x55;  // past the row: code 1 (w = 0)
      if (byte & (byte >> 1) & 0x55) FailTwoBitCode(r, q, byte, op);
      word |= kSpread.word[byte] << (2 * f);
    }
    std::memcpy(lane + pk * kPacketBytes, &word, 4);
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
  buffer_ = AlignedBuffer(static_cast<size_t>(matrix_.blocks * matrix_.k_packets * kPacketBytes), AlignedBuffer::Pages::kHuge);
  uint8_t* out = buffer_.data();
  std::memset(out, 0x55, buffer_.size());  // every code 1 (w = 0): the padding rows

  // Four consecutive k (i = 0..3) share a packet and a field f: each packet's lane is one 32-bit
  // word, four fields of four byte-wide codes.
  const int64_t padded_k = matrix_.k_packets * kPacketK;
  std::vector<uint8_t> codes;
  if (format == TernaryFormat::kBase3) codes.resize(static_cast<size_t>(std::max(padded_k, 5 * row_bytes)));
  for (int64_t r = 0; r < matrix_.n; ++r) {
    uint8_t* lane = out + (r / kBlockRows) * matrix_.k_packets * kPacketBytes + 4 * (r % kBlockRows);
    const uint8_t* row = packed + r * row_bytes;
    if (format == TernaryFormat::kTwoBit) {
      RepackTwoBitRow(row, row_bytes, r, matrix_.k_packets, lane, op);
      continue;
    }
    DecodeBase3Row(row, row_bytes, r, codes.data(), op);
    std::fill(codes.begin() + k, codes.end(), 1);
    for (int64_t pk = 0; pk < matrix_.k_packets; ++pk) {
      uint32_t word = 0;
      for (int f = 0; f < 4; ++f) {
        uint32_t four;
        std::memcpy(&four, &codes[16 * pk + 4 * f], 4);  // byte i = code of k = 16·pk + 4·f + i
        word |= four << (2 * f);
      }
      std::memcpy(lane + pk * kPacketBytes, &word, 4);
    }
  }
  matrix_.packets = out;
}

}  // namespace bitnet
