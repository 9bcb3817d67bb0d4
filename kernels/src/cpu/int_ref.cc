// Portable path: plain C++ over the I16 layout, one output at a time, in the order of int.h.
#include <algorithm>
#include <cmath>

#include "int.h"
#include "int_scalar.h"

namespace bitnet::cpu {
namespace {

void MatmulInt8(const IntProblem& p, int64_t m_begin, int64_t m_end, int64_t block_begin, int64_t block_end) {
  const IntMatrix& w = p.w;
  for (int64_t b = block_begin; b < block_end; ++b) {
    const int64_t rows = std::min(kBlockRows, w.n - b * kBlockRows);
    for (int64_t m = m_begin; m < m_end; ++m) {
      const int8_t* x = p.xq + m * w.slots();
      for (int64_t r = 0; r < rows; ++r) {
        float y = 0.0f;
        for (int64_t g = 0; g < w.groups; ++g) {
          const uint8_t* record = GroupRecord(w, b, g);
          const int32_t zp = RecordZeroPoint(w, record, r);
          const int8_t* xg = x + g * w.group_slots;
          int32_t acc = 0;  // |partial sums| ≤ 255 · 127 · G < 2^31 (G ≤ kMaxInt8GroupSize)
          for (int64_t j = 0; j < w.group_slots; ++j) acc += SlotWeight(w, SlotCode(w, record, r, j), zp) * xg[j];
          y = y + static_cast<float>(acc) * RecordScale(w, record, r);
        }
        const int64_t n = b * kBlockRows + r;
        StoreY(p, m, n, Int8Epilogue(p, m, n, y));
      }
    }
  }
}

void MatmulFloat(const IntProblem& p, int64_t m_begin, int64_t m_end, int64_t block_begin, int64_t block_end) {
  const IntMatrix& w = p.w;
  for (int64_t b = block_begin; b < block_end; ++b) {
    const int64_t rows = std::min(kBlockRows, w.n - b * kBlockRows);
    for (int64_t m = m_begin; m < m_end; ++m) {
      const float* x = p.xf + m * w.slots();
      for (int64_t r = 0; r < rows; ++r) {
        float y = 0.0f;
        for (int64_t g = 0; g < w.groups; ++g) {
          const uint8_t* record = GroupRecord(w, b, g);
          const int32_t zp = RecordZeroPoint(w, record, r);
          const float* xg = x + g * w.group_slots;
          float partial[4] = {0.0f, 0.0f, 0.0f, 0.0f};
          for (int64_t j = 0; j < w.group_slots; ++j) {
            const float q = static_cast<float>(SlotWeight(w, SlotCode(w, record, r, j), zp));
            partial[j % 4] = std::fma(q, xg[j], partial[j % 4]);
          }
          const float total = (partial[0] + partial[1]) + (partial[2] + partial[3]);
          y = std::fma(total, RecordScale(w, record, r), y);
        }
        const int64_t n = b * kBlockRows + r;
        StoreY(p, m, n, FloatEpilogue(p, m, n, y));
      }
    }
  }
}

void Dequantize(const PackedRow& row, void* out, bool f16) {
  for (int64_t e = 0; e < row.k; ++e) {
    const int64_t g = e / row.group_size;
    const int zp = row.zero_points != nullptr ? row.zero_points[g] : row.zero_point;
    const float v = static_cast<float>(row.mult * CodeAt(row.codes, e, row.bits) - zp) * row.scales[g];
    if (f16) {
      static_cast<uint16_t*>(out)[e] = FloatToHalf(v);
    } else {
      static_cast<float*>(out)[e] = v;
    }
  }
}

}  // namespace

const IntKernels kIntRef = {MatmulInt8, MatmulFloat, Dequantize};

}  // namespace bitnet::cpu
