// DequantizeLowBit (kernels/README.md): packed rows [..., row_bytes] → float [..., K], for the
// integer encodings (bits 8, 4, 2, 1, group-wise) and ternary (bits = 0, "2bit" or "base3").
// Integer rows and ternary "2bit" rows go through the ISA path's vectorized row dequantization
// (w = float(q) · s, one rounding, so every path gives the same bits).
//
// The output type follows the attribute `to`. onnxruntime infers a custom op's output type only
// from its input types, so the output is declared variadic (type from the graph) and the kernel
// checks at creation that the node's declared output type is `to`.
#include <algorithm>
#include <array>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "bitnet/cpu_features.h"
#include "bitnet/error.h"
#include "bitnet/lite_op.h"
#include "bitnet/ops.h"
#include "bitnet/parallel.h"
#include "cpu/int.h"
#include "cpu/scalar.h"
#include "int_weights.h"
#include "ternary_weights.h"

namespace bitnet {
namespace {

using Ort::Custom::Tensor;
constexpr const char* kOp = kDequantizeLowBitOp;
// Output elements per task.
constexpr int64_t kTaskElements = 64 * 1024;

int64_t Elements(const std::vector<int64_t>& shape) {
  int64_t count = 1;
  for (int64_t d : shape) count *= d;
  return count;
}

// "FLOAT" or "FLOAT16" for `to`; anything else is an error.
bool OutputIsHalf(int64_t to) {
  if (to == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) return false;
  if (to == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16) return true;
  Fail(kOp, "to=", to, " is invalid; use TensorProto.FLOAT (1) or FLOAT16 (10)");
}

class DequantizeLowBit {
 public:
  DequantizeLowBit(const OrtApi*, const OrtKernelInfo* raw_info) {
    Ort::ConstKernelInfo info(raw_info);
    if (info.GetInputCount() < 2) {
      Fail(kOp, "needs inputs Q, scales and optionally zero_points; the node has ", info.GetInputCount());
    }
    if (info.GetOutputCount() != 1) Fail(kOp, "has one output, Y; the node has ", info.GetOutputCount());
    k_ = RequiredInt(info, kOp, "K");
    if (k_ <= 0) Fail(kOp, "K=", k_, " must be positive (the unpadded row length)");
    const int64_t bits = RequiredInt(info, kOp, "bits");
    if (bits != 0 && bits != 8 && bits != 4 && bits != 2 && bits != 1) {
      Fail(kOp, "bits=", bits, " is invalid; use 8, 4, 2 or 1 (group-wise integers) or 0 (ternary)");
    }
    if (bits == 0) {
      format_ = ParseTernaryFormat(RequiredString(info, kOp, "format"), kOp);
    } else {
      group_size_ = RequiredInt(info, kOp, "group_size");
      CheckIntFormat(bits, group_size_, kOp);
    }
    bits_ = static_cast<int>(bits);
    const int64_t to = RequiredInt(info, kOp, "to");
    half_ = OutputIsHalf(to);
    const ONNXTensorElementDataType declared = info.GetOutputTypeInfo(0).GetTensorTypeAndShapeInfo().GetElementType();
    if (declared != to) {
      Fail(kOp, "to=", to, " but the node's output is declared with element type ", static_cast<int>(declared),
           "; declare the output (graph output or value_info) as ", half_ ? "float16" : "float",
           " (onnxruntime cannot infer a custom op's output type from an attribute)");
    }
    const Isa isa = SelectIsa(kOp);
    kernels_ = &cpu::IntKernelsFor(isa);
    std::string message = std::string("[") + kOp + "] node '" + info.GetNodeName() + "': K=" + std::to_string(k_) +
                          " bits=" + std::to_string(bits_) + ", path " + IsaName(isa);
    ORT_CXX_LOG_NOEXCEPT(info.GetLogger(), ORT_LOGGING_LEVEL_VERBOSE, message.c_str());
  }

  Ort::Status Compute(OrtKernelContext* ctx, const Tensor<uint8_t>& q, const Tensor<float>& scales,
                      std::optional<const Tensor<uint8_t>*> zero_points, Ort::Custom::Variadic& outputs) {
    const std::vector<int64_t>& q_shape = q.Shape();
    const int64_t row_bytes = bits_ == 0 ? TernaryRowBytes(k_, format_) : IntRowBytes(k_, bits_, group_size_);
    if (q_shape.empty() || q_shape.back() != row_bytes) {
      Fail(kOp, "K=", k_, " ", Encoding(), " needs Q of shape [..., ", row_bytes, "], got ", ShapeString(q_shape),
           "; check the attributes and the packing");
    }
    const int64_t rows = Elements(q_shape) / row_bytes;
    const bool has_zp = zero_points.has_value() && *zero_points != nullptr && Elements((*zero_points)->Shape()) != 0;
    std::vector<int64_t> y_shape = q_shape;
    y_shape.back() = k_;
    void* y = half_ ? static_cast<void*>(outputs.AllocateOutput<Ort::Float16_t>(0, y_shape))
                    : static_cast<void*>(outputs.AllocateOutput<float>(0, y_shape));

    std::vector<cpu::PackedRow> packed(static_cast<size_t>(rows));
    if (bits_ == 0) {
      if (has_zp) Fail(kOp, "ternary rows (bits=0) have no zero points; drop the zero_points input");
      const int64_t alphas = Elements(scales.Shape());
      if (alphas != 1 && alphas != rows) {
        Fail(kOp, "ternary scales hold ", alphas, " values (shape ", ShapeString(scales.Shape()),
             "); they must hold 1 or one per row (", rows, ")");
      }
      CheckTernaryCodes(q.Data(), rows, row_bytes);
      for (int64_t r = 0; r < rows; ++r) {
        // A "2bit" row is 2-bit codes c = w + 1 in one group: w = float(c − 1) · α.
        packed[r] = cpu::PackedRow{q.Data() + r * row_bytes, k_, 2, 4 * row_bytes,
                                   scales.Data() + (alphas == 1 ? 0 : r), nullptr, 1, 1};
      }
    } else {
      const int64_t groups = IntGroups(k_, group_size_);
      std::vector<int64_t> per_group(q_shape.begin(), q_shape.end() - 1);
      per_group.push_back(groups);
      if (scales.Shape() != per_group) {
        Fail(kOp, "scales have shape ", ShapeString(scales.Shape()), "; they must be Q's leading dims + [ceil(K/G)] = ",
             ShapeString(per_group));
      }
      if (has_zp && bits_ == 1) Fail(kOp, "1-bit codes are symmetric only (w = s · (2u − 1)); drop the zero_points input");
      if (has_zp && (*zero_points)->Shape() != per_group) {
        Fail(kOp, "zero_points have shape ", ShapeString((*zero_points)->Shape()), "; they must be ",
             ShapeString(per_group), " like the scales (or empty for symmetric codes)");
      }
      const int zero_point = bits_ == 1 ? 1 : 1 << (bits_ - 1);
      for (int64_t r = 0; r < rows; ++r) {
        packed[r] = cpu::PackedRow{q.Data() + r * row_bytes, k_, bits_, group_size_, scales.Data() + r * groups,
                                   has_zp ? (*zero_points)->Data() + r * groups : nullptr, zero_point,
                                   bits_ == 1 ? 2 : 1};
      }
    }

    const int64_t task_rows = std::max<int64_t>(1, kTaskElements / k_);
    const int64_t tasks = cpu::CeilDiv(rows, task_rows);
    const size_t element_bytes = half_ ? 2 : 4;
    auto task = [&](size_t i) {
      const int64_t end = std::min(rows, (static_cast<int64_t>(i) + 1) * task_rows);
      for (int64_t r = static_cast<int64_t>(i) * task_rows; r < end; ++r) {
        void* out = static_cast<uint8_t*>(y) + static_cast<size_t>(r * k_) * element_bytes;
        if (bits_ == 0 && format_ == TernaryFormat::kBase3) {
          DequantizeBase3(packed[r], out);
        } else {
          kernels_->dequantize(packed[r], out, half_);
        }
      }
    };
    ParallelFor(ctx, static_cast<size_t>(tasks), task);
    return Ort::Status{nullptr};
  }

  static void InferShape(ShapeInference& shapes) {
    const std::optional<int64_t> k = shapes.IntAttribute("K");
    const std::optional<int64_t> to = shapes.IntAttribute("to");
    ShapeInference::TensorShape q = shapes.Input(0);
    if (!k || !to || q.dims.empty() || q.HasUnnamedUnknownDim(q.dims.size() - 1)) return;
    q.type = static_cast<ONNXTensorElementDataType>(*to);
    q.dims.back() = *k;
    q.symbols.back() = "";
    shapes.SetOutput(0, q);
  }

 private:
  std::string Encoding() const {
    if (bits_ == 0) return std::string("format=") + TernaryFormatName(format_);
    return "bits=" + std::to_string(bits_) + " group_size=" + std::to_string(group_size_);
  }

  // Every byte a valid ternary code (as BitLinear requires of W).
  void CheckTernaryCodes(const uint8_t* q, int64_t rows, int64_t row_bytes) const {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < row_bytes; ++c) {
        const uint8_t byte = q[r * row_bytes + c];
        if (format_ == TernaryFormat::kTwoBit && (byte & (byte >> 1) & 0x55)) {
          Fail(kOp, "Q row ", r, " byte ", c, " = ", static_cast<int>(byte),
               " holds the 2-bit code 3; valid codes are 0, 1, 2 (w + 1): Q is not ternary '2bit' data");
        }
        if (format_ == TernaryFormat::kBase3 && byte > 242) {
          Fail(kOp, "Q row ", r, " byte ", c, " = ", static_cast<int>(byte),
               " exceeds 242, the largest base-3 pack of 5 codes: Q is not ternary 'base3' data");
        }
      }
    }
  }

  // base3 rows: five digits c per byte (c_0 least significant), w = float(c − 1) · α.
  void DequantizeBase3(const cpu::PackedRow& row, void* out) const {
    if (half_) {
      DequantizeBase3(row, static_cast<uint16_t*>(out), [](float v) { return cpu::FloatToHalf(v); });
    } else {
      DequantizeBase3(row, static_cast<float*>(out), [](float v) { return v; });
    }
  }

  template <typename T, typename Convert>
  void DequantizeBase3(const cpu::PackedRow& row, T* out, Convert convert) const {
    // w − 1 ∈ {−1, 0, 1} of each digit of each byte value: a table instead of four divisions per weight.
    static const auto digits = [] {
      std::array<std::array<int8_t, 5>, 243> table{};
      for (int byte = 0; byte < 243; ++byte) {
        for (int d = 0, rest = byte; d < 5; ++d, rest /= 3) table[byte][d] = static_cast<int8_t>(rest % 3 - 1);
      }
      return table;
    }();
    const float alpha = row.scales[0];
    for (int64_t e0 = 0; e0 < k_; e0 += 5) {
      const std::array<int8_t, 5>& w = digits[row.codes[e0 / 5]];
      const int n = static_cast<int>(std::min<int64_t>(5, k_ - e0));
      for (int d = 0; d < n; ++d) out[e0 + d] = convert(static_cast<float>(w[d]) * alpha);
    }
  }

  int64_t k_ = 0;
  int bits_ = 0;
  int64_t group_size_ = 0;
  TernaryFormat format_ = TernaryFormat::kTwoBit;
  bool half_ = false;
  const cpu::IntKernels* kernels_ = nullptr;
};

}  // namespace

OpList DequantizeLowBitOps() { return {MakeOp<DequantizeLowBit>(kOp)}; }

}  // namespace bitnet
