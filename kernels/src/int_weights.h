// Group-wise integer weights at rest (kernels/README.md: rows of W[N, K] packed at 8, 4, 2 or 1
// bits, scales [N, groups], optional zero points [N, groups]) and their repacking into the
// kernels' I16 layout (src/cpu/int.h).
#pragma once

#include <cstdint>
#include <vector>

#include "aligned_buffer.h"
#include "cpu/int.h"

namespace bitnet {

// Checks bits ∈ {8, 4, 2, 1} and a group size that starts every group on a byte; throws
// bitnet::Error naming `op` otherwise.
void CheckIntFormat(int64_t bits, int64_t group_size, const char* op);

// ceil(k / G) and the bytes of one packed row at rest, ceil(k / G) · G · bits / 8.
int64_t IntGroups(int64_t k, int64_t group_size);
int64_t IntRowBytes(int64_t k, int64_t bits, int64_t group_size);

// A tensor's data and shape, as the op received it.
template <typename T>
struct TensorView {
  const T* data = nullptr;
  std::vector<int64_t> shape;
};

class IntWeights {
 public:
  // Repacks W [N, IntRowBytes(k)], scales [N, groups] and, when `zero_points` has data,
  // zero points [N, groups] (asymmetric). Throws bitnet::Error naming `op` when a shape does not
  // match K, bits and the group size, or when 1-bit codes come with zero points.
  IntWeights(const TensorView<uint8_t>& w, const TensorView<float>& scales, const TensorView<uint8_t>& zero_points,
             int64_t k, int bits, int64_t group_size, const char* op);

  const cpu::IntMatrix& matrix() const { return matrix_; }

 private:
  AlignedBuffer buffer_;
  cpu::IntMatrix matrix_;
};

}  // namespace bitnet
