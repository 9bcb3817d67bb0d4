#include "int_weights.h"

#include <algorithm>
#include <cstring>

#include "bitnet/error.h"

namespace bitnet {
namespace {

using cpu::CeilDiv;
using cpu::kBlockRows;
using cpu::kPacketBytes;

bool HasData(const TensorView<uint8_t>& t) {
  int64_t elements = 1;
  for (int64_t d : t.shape) elements *= d;
  return t.data != nullptr && elements != 0;
}

// Row r's codes, one byte each, for k elements.
void DecodeRow(const uint8_t* row, int64_t k, int bits, uint8_t* codes) {
  if (bits == 8) {
    std::memcpy(codes, row, static_cast<size_t>(k));
    return;
  }
  const int per_byte = 8 / bits, mask = (1 << bits) - 1;
  for (int64_t q = 0; q * per_byte < k; ++q) {
    const int byte = row[q];
    for (int e = 0; e < per_byte && q * per_byte + e < k; ++e) codes[q * per_byte + e] = (byte >> (e * bits)) & mask;
  }
}

}  // namespace

void CheckIntFormat(int64_t bits, int64_t group_size, const char* op) {
  if (bits != 8 && bits != 4 && bits != 2 && bits != 1) {
    Fail(op, "bits=", bits, " is not an integer encoding; use 8, 4, 2 or 1");
  }
  const int64_t per_byte = 8 / bits;
  if (group_size <= 0 || group_size % per_byte != 0) {
    Fail(op, "group_size=", group_size, " is invalid for ", bits, "-bit codes: it must be a positive multiple of ",
         per_byte, " (group_size · bits a multiple of 8, so every group starts on a byte)");
  }
}

int64_t IntGroups(int64_t k, int64_t group_size) { return CeilDiv(k, group_size); }

int64_t IntRowBytes(int64_t k, int64_t bits, int64_t group_size) {
  return IntGroups(k, group_size) * group_size * bits / 8;
}

IntWeights::IntWeights(const TensorView<uint8_t>& w, const TensorView<float>& scales,
                       const TensorView<uint8_t>& zero_points, int64_t k, int bits, int64_t group_size,
                       const char* op) {
  const int64_t row_bytes = IntRowBytes(k, bits, group_size);
  const int64_t groups = IntGroups(k, group_size);
  if (w.shape.size() != 2 || w.shape[1] != row_bytes) {
    Fail(op, "K=", k, " bits=", bits, " group_size=", group_size, " needs W of shape [N, ", row_bytes,
         "] (ceil(K/G) · G · bits / 8 bytes per row), got ", ShapeString(w.shape),
         "; check the K, bits and group_size attributes and the packing");
  }
  const int64_t n = w.shape[0];
  const std::vector<int64_t> per_group{n, groups};
  if (scales.shape != per_group) {
    Fail(op, "scales have shape ", ShapeString(scales.shape), "; they must be [N, ceil(K/G)] = ",
         ShapeString(per_group));
  }
  const bool asymmetric = HasData(zero_points);
  if (asymmetric && bits == 1) {
    Fail(op, "1-bit codes are symmetric only (w = s · (2u − 1)); drop the zero_points input");
  }
  if (asymmetric && zero_points.shape != per_group) {
    Fail(op, "zero_points have shape ", ShapeString(zero_points.shape), "; they must be [N, ceil(K/G)] = ",
         ShapeString(per_group), " (or empty for symmetric weights)");
  }

  cpu::IntMatrix& m = matrix_;
  m.n = n;
  m.k = k;
  m.bits = bits;
  m.group_size = group_size;
  m.groups = groups;
  const int64_t slots = cpu::PacketSlots(bits);
  m.group_packets = CeilDiv(group_size, slots);
  m.group_slots = m.group_packets * slots;
  m.asymmetric = asymmetric;
  m.group_bytes = m.scales_offset() + kBlockRows * 4 * (asymmetric ? 2 : 1);
  m.blocks = CeilDiv(n, kBlockRows);
  buffer_ = AlignedBuffer(static_cast<size_t>(m.blocks * m.block_bytes()), AlignedBuffer::Pages::kHuge);
  uint8_t* out = buffer_.data();
  std::memset(out, 0, buffer_.size());  // padding: code 0 against zero activations, scale 0

  std::vector<uint8_t> codes(static_cast<size_t>(k));
  for (int64_t r = 0; r < n; ++r) {
    DecodeRow(w.data + r * row_bytes, k, bits, codes.data());
    const int64_t rr = r % kBlockRows;
    uint8_t* block = out + (r / kBlockRows) * m.block_bytes();
    for (int64_t g = 0; g < groups; ++g) {
      uint8_t* record = block + g * m.group_bytes;
      const int64_t k0 = g * group_size;
      const int64_t count = std::min(group_size, k - k0);
      for (int64_t j = 0; j < count; ++j) {
        const int64_t s = j % slots;
        const int field = static_cast<int>(s / 4);
        uint8_t& byte = record[(j / slots) * kPacketBytes + 4 * rr + s % 4];
        byte = static_cast<uint8_t>(byte | (codes[k0 + j] << (field * bits)));
      }
      std::memcpy(record + m.scales_offset() + 4 * rr, scales.data + r * groups + g, 4);
      if (asymmetric) {
        const int32_t zp = zero_points.data[r * groups + g];
        std::memcpy(record + m.zero_points_offset() + 4 * rr, &zp, 4);
      }
    }
  }
  m.data = out;
}

}  // namespace bitnet
