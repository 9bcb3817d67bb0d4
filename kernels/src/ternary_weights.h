// Ternary weights at rest (kernels/README.md: "2bit" or "base3" rows of W[N, K]) repacked into
// the kernels' T16 layout (src/cpu/ternary.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "aligned_buffer.h"
#include "cpu/ternary.h"

namespace bitnet {

enum class TernaryFormat { kTwoBit, kBase3 };

// "2bit" or "base3"; anything else is a bitnet::Error naming `op`.
TernaryFormat ParseTernaryFormat(const std::string& name, const char* op);
const char* TernaryFormatName(TernaryFormat format);

// Bytes of one packed row of k weights at rest: ceil(k / 4) or ceil(k / 5).
int64_t TernaryRowBytes(int64_t k, TernaryFormat format);

class TernaryWeights {
 public:
  // Repacks packed W of `shape` [N, TernaryRowBytes(k)]. Throws bitnet::Error naming `op` when
  // the shape does not match K and the format, or a byte is not a valid code.
  TernaryWeights(const uint8_t* packed, const std::vector<int64_t>& shape, int64_t k, TernaryFormat format,
                 const char* op);

  const cpu::TernaryMatrix& matrix() const { return matrix_; }

 private:
  AlignedBuffer buffer_;
  cpu::TernaryMatrix matrix_;
};

}  // namespace bitnet
