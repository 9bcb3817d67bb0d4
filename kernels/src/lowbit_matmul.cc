// LowBitMatMul (kernels/README.md): Y = X · Wᵀ with group-wise 8/4/2/1-bit weights, float
// activations (act_quant = 0) or per-token int8 activations with exact integer accumulation per
// group (act_quant = 1). Constant W, scales and zero points are repacked once at kernel creation.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "aligned_buffer.h"
#include "bitnet/cpu_features.h"
#include "bitnet/error.h"
#include "bitnet/lite_op.h"
#include "bitnet/ops.h"
#include "bitnet/parallel.h"
#include "cpu/int.h"
#include "cpu/scalar.h"
#include "cpu/ternary.h"
#include "int_weights.h"
#include "linear_op.h"

namespace bitnet {
namespace {

using Ort::Custom::Tensor;
constexpr const char* kOp = kLowBitMatMulOp;
constexpr size_t kZeroPointsInput = 3, kBiasInput = 4;

// Streaming path: about this many bytes of weights per task.
constexpr int64_t kStreamingTaskBytes = 64 * 1024;
// Tiled path: weight bytes per task (stays in L2 while every X row of the task passes over it),
// and the fewest X rows worth a task of their own.
constexpr int64_t kTiledTaskBytes = 192 * 1024;
constexpr int64_t kTiledMinTaskRows = 32;
constexpr int64_t kTiledMinTasks = 16;
// Activation preparation: rows per task when X has many rows.
constexpr int64_t kPrepareTaskRows = 16;

template <typename V>
TensorView<V> View(const Ort::ConstValue& value) {
  return {value.GetTensorData<V>(), value.GetTensorTypeAndShapeInfo().GetShape()};
}

template <typename V>
TensorView<V> View(const Tensor<V>& tensor) {
  return {tensor.Data(), tensor.Shape()};
}

template <typename T>
class LowBitMatMul {
 public:
  LowBitMatMul(const OrtApi*, const OrtKernelInfo* raw_info) {
    Ort::ConstKernelInfo info(raw_info);
    size_t inputs = info.GetInputCount();
    while (inputs > 0 && info.GetInputName(inputs - 1).empty()) --inputs;  // trailing empty names: absent
    if (inputs < 3) {
      Fail(kOp, "needs inputs X, W, scales and optionally zero_points and bias; the node has ", inputs);
    }
    if (inputs > kBiasInput && info.GetInputName(kZeroPointsInput).empty()) {
      // onnxruntime hands a kernel no value for an input left empty before a given one.
      Fail(kOp, "zero_points (input 3) has an empty name but a bias follows; pass an empty uint8 tensor [0] as "
           "zero_points for symmetric weights");
    }
    k_ = RequiredK(info, kOp);
    const int64_t bits = RequiredInt(info, kOp, "bits");
    group_size_ = RequiredInt(info, kOp, "group_size");
    CheckIntFormat(bits, group_size_, kOp);
    bits_ = static_cast<int>(bits);
    act_quant_ = RequiredInt(info, kOp, "act_quant");
    if (act_quant_ != 0 && act_quant_ != 1) {
      Fail(kOp, "act_quant=", act_quant_, " is invalid; use 0 (float activations) or 1 (per-token int8)");
    }
    if (act_quant_ == 1 && group_size_ > cpu::kMaxInt8GroupSize) {
      Fail(kOp, "group_size=", group_size_, " is too large for act_quant=1: exact int32 accumulation per group "
           "needs group_size ≤ ", cpu::kMaxInt8GroupSize, "; use smaller groups or act_quant=0");
    }
    const Isa isa = SelectIsa(kOp);
    kernels_ = &cpu::IntKernelsFor(isa);
    quantize_ = &cpu::TernaryKernelsFor(isa);

    int w_constant = 0, scales_constant = 0, zp_constant = 1;
    Ort::ConstValue w = info.GetTensorConstantInput(1, &w_constant);
    Ort::ConstValue scales = info.GetTensorConstantInput(2, &scales_constant);
    Ort::ConstValue zero_points{nullptr};
    if (inputs > kZeroPointsInput) zero_points = info.GetTensorConstantInput(kZeroPointsInput, &zp_constant);
    if (w_constant && scales_constant && zp_constant) {
      weights_.emplace(View<uint8_t>(w), View<float>(scales),
                       zero_points ? View<uint8_t>(zero_points) : TensorView<uint8_t>{}, k_, bits_, group_size_, kOp);
      if (inputs > kBiasInput) {
        int bias_constant = 0;
        Ort::ConstValue bias = info.GetTensorConstantInput(kBiasInput, &bias_constant);
        if (bias_constant) CheckBias(kOp, bias.GetTensorTypeAndShapeInfo().GetShape(), weights_->matrix().n);
      }
    }
    std::string message = std::string("[") + kOp + "] node '" + info.GetNodeName() + "': K=" + std::to_string(k_) +
                          " bits=" + std::to_string(bits_) + " group_size=" + std::to_string(group_size_) +
                          " act_quant=" + std::to_string(act_quant_) +
                          (weights_ ? " N=" + std::to_string(weights_->matrix().n) + ", W repacked at creation"
                                    : ", W not constant: repacked per call") +
                          ", path " + IsaName(isa);
    ORT_CXX_LOG_NOEXCEPT(info.GetLogger(), ORT_LOGGING_LEVEL_VERBOSE, message.c_str());
  }

  Ort::Status Compute(OrtKernelContext* ctx, const Tensor<T>& x, const Tensor<uint8_t>& w, const Tensor<float>& scales,
                      std::optional<const Tensor<uint8_t>*> zero_points, std::optional<const Tensor<float>*> bias,
                      Tensor<T>& y) {
    const int64_t m = XRows(kOp, x.Shape(), k_);
    std::optional<IntWeights> call_weights;
    if (!weights_) {
      const bool has_zp = zero_points.has_value() && *zero_points != nullptr;
      call_weights.emplace(View(w), View(scales), has_zp ? View(**zero_points) : TensorView<uint8_t>{}, k_, bits_,
                           group_size_, kOp);
    }
    const cpu::IntMatrix& matrix = weights_ ? weights_->matrix() : call_weights->matrix();
    const int64_t n = matrix.n;
    const bool has_bias = bias.has_value() && *bias != nullptr;
    if (has_bias) CheckBias(kOp, (*bias)->Shape(), n);

    T* y_data = y.Allocate(OutputDims(x.Shape(), n));
    if (m == 0 || n == 0) return Ort::Status{nullptr};

    cpu::IntProblem p;
    p.w = matrix;
    p.bias = has_bias ? (*bias)->Data() : nullptr;
    p.y = y_data;
    p.y_f16 = std::is_same_v<T, Ort::Float16_t>;
    std::vector<cpu::TokenRow> rows(static_cast<size_t>(m));
    p.rows = rows.data();
    const size_t slots = static_cast<size_t>(m * matrix.slots());
    AlignedBuffer activations(act_quant_ == 1 ? slots : slots * sizeof(float));
    std::vector<int32_t> xsum;
    if (act_quant_ == 1) {
      xsum.resize(static_cast<size_t>(m * matrix.groups));
      p.xq = reinterpret_cast<const int8_t*>(activations.data());
      p.xsum = xsum.data();
    } else {
      p.xf = reinterpret_cast<const float*>(activations.data());
    }
    Prepare(ctx, x.Data(), m, matrix, activations.data(), rows.data(), xsum.data());
    Multiply(ctx, p, m);
    return Ort::Status{nullptr};
  }

  static void InferShape(ShapeInference& shapes) { InferOutputShape(shapes); }

 private:
  // Activations of rows [begin, end) into the slot layout of int.h.
  void PrepareRows(const T* x, int64_t begin, int64_t end, const cpu::IntMatrix& w, uint8_t* out,
                   cpu::TokenRow* rows, int32_t* xsum) const {
    const int64_t ld = w.slots(), gs = w.group_slots, count = w.group_size;
    const bool contiguous = gs == count;  // slot j of group g is k = g·G + j
    std::vector<int8_t> row_q(contiguous || act_quant_ == 0 ? 0 : static_cast<size_t>(k_));
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * k_;
      if (act_quant_ == 1) {
        int8_t* slots = reinterpret_cast<int8_t*>(out) + r * ld;
        int8_t* q = contiguous ? slots : row_q.data();
        if constexpr (std::is_same_v<T, float>) {
          quantize_->quantize_f32(xr, k_, contiguous ? ld : k_, q, rows + r);
        } else {
          quantize_->quantize_f16(reinterpret_cast<const uint16_t*>(xr), k_, contiguous ? ld : k_, q, rows + r);
        }
        if (!contiguous) {
          std::memset(slots, 0, static_cast<size_t>(ld));
          for (int64_t g = 0; g < w.groups; ++g) {
            std::memcpy(slots + g * gs, q + g * count, static_cast<size_t>(std::min(count, k_ - g * count)));
          }
        }
        for (int64_t g = 0; g < w.groups; ++g) {
          int32_t sum = 0;
          for (int64_t j = 0; j < gs; ++j) sum += slots[g * gs + j];
          xsum[r * w.groups + g] = sum;
        }
      } else {
        float* slots = reinterpret_cast<float*>(out) + r * ld;
        std::memset(slots, 0, static_cast<size_t>(ld) * sizeof(float));
        bool finite = true;
        for (int64_t g = 0; g < w.groups; ++g) {
          const int64_t e0 = g * count, end = std::min(k_, e0 + count);
          for (int64_t e = e0; e < end; ++e) {
            float v;
            if constexpr (std::is_same_v<T, float>) {
              v = xr[e];
            } else {
              v = cpu::HalfToFloat(reinterpret_cast<const uint16_t*>(xr)[e]);
            }
            finite &= std::fabs(v) <= FLT_MAX;
            slots[g * gs + (e - e0)] = v;
          }
        }
        rows[r] = cpu::TokenRow{0.0f, 0, finite ? 1 : 0};
      }
    }
  }

  void Prepare(OrtKernelContext* ctx, const T* x, int64_t m, const cpu::IntMatrix& w, uint8_t* out,
               cpu::TokenRow* rows, int32_t* xsum) const {
    const int64_t tasks = m >= 2 * kPrepareTaskRows ? cpu::CeilDiv(m, kPrepareTaskRows) : 1;
    auto task = [&](size_t i) {
      const int64_t begin = static_cast<int64_t>(i) * kPrepareTaskRows;
      if (tasks == 1) {
        PrepareRows(x, 0, m, w, out, rows, xsum);
      } else {
        PrepareRows(x, begin, std::min(m, begin + kPrepareTaskRows), w, out, rows, xsum);
      }
    };
    ParallelFor(ctx, static_cast<size_t>(tasks), task);
  }

  void Multiply(OrtKernelContext* ctx, const cpu::IntProblem& p, int64_t m) const {
    const int64_t block_bytes = p.w.block_bytes();
    const TaskPlan plan =
        m <= cpu::kIntStreamingMaxRows
            ? StreamingPlan(m, p.w.blocks, block_bytes, kStreamingTaskBytes)
            : TiledPlan(m, p.w.blocks, std::max<int64_t>(1, kTiledTaskBytes / block_bytes), kTiledMinTaskRows,
                        kTiledMinTasks);
    auto matmul = act_quant_ == 1 ? kernels_->matmul_int8 : kernels_->matmul_float;
    RunPlan(ctx, plan, [&](int64_t m0, int64_t m1, int64_t b0, int64_t b1) { matmul(p, m0, m1, b0, b1); });
  }

  int64_t k_ = 0;
  int bits_ = 4;
  int64_t group_size_ = 0;
  int64_t act_quant_ = 0;
  const cpu::IntKernels* kernels_ = nullptr;
  const cpu::TernaryKernels* quantize_ = nullptr;  // the per-token int8 quantization BitLinear uses
  std::optional<IntWeights> weights_;  // set when W, scales and zero points are constant initializers
};

}  // namespace

OpList LowBitMatMulOps() {
  return {MakeOp<LowBitMatMul<float>>(kOp), MakeOp<LowBitMatMul<Ort::Float16_t>>(kOp)};
}

}  // namespace bitnet
