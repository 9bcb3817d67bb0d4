// BitLinear (kernels/README.md): Y = (Xq · Tᵀ) · (s_x / 127) · α + bias with ternary T, per-token
// int8 activations and exact int32 accumulation. Constant W is repacked once at kernel creation.
#include <algorithm>
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
#include "cpu/ternary.h"
#include "linear_op.h"
#include "ternary_weights.h"

namespace bitnet {
namespace {

using Ort::Custom::Tensor;
constexpr const char* kOp = kBitLinearOp;

// Streaming path: about this many bytes of weights per task. Long contiguous runs per thread
// stream from DRAM faster than interleaved small ones (measured: T2 at M = 1 is 5–10 % faster
// with 512 KB than with 64 KB tasks).
constexpr int64_t kStreamingTaskBytes = 512 * 1024;
// GEMM path: output blocks per task, and the fewest X rows worth a task of their own.
constexpr int64_t kGemmTaskBlocks = 4;
constexpr int64_t kGemmMinTaskRows = 32;
constexpr int64_t kGemmMinTasks = 16;
// Quantization: rows per task when X has many rows.
constexpr int64_t kQuantizeTaskRows = 16;

void CheckScale(const std::vector<int64_t>& shape, int64_t n) {
  const bool ok = shape.size() == 1 && (shape[0] == 1 || shape[0] == n);
  if (!ok) Fail(kOp, "scale has shape ", ShapeString(shape), "; it must be [1] (per tensor) or [N] = [", n, "]");
}

template <typename T>
class BitLinear {
 public:
  BitLinear(const OrtApi*, const OrtKernelInfo* raw_info) {
    Ort::ConstKernelInfo info(raw_info);
    if (info.GetInputCount() < 3) {
      Fail(kOp, "needs inputs X, W, scale and optionally bias; the node has ", info.GetInputCount());
    }
    const char* required[] = {"X", "W", "scale"};
    for (size_t i = 0; i < 3; ++i) {
      if (info.GetInputName(i).empty()) Fail(kOp, "input ", i, " (", required[i], ") is required but its name is empty");
    }
    k_ = RequiredK(info, kOp);
    if (k_ > cpu::kMaxK) {
      Fail(kOp, "K=", k_, " exceeds ", cpu::kMaxK, ", the longest reduction the int32 accumulators hold exactly");
    }
    format_ = ParseTernaryFormat(RequiredString(info, kOp, "format"), kOp);
    const Isa isa = SelectIsa(kOp);
    kernels_ = &cpu::TernaryKernelsFor(isa);

    int is_constant = 0;
    Ort::ConstValue w = info.GetTensorConstantInput(1, &is_constant);
    if (is_constant) {
      weights_.emplace(w.GetTensorData<uint8_t>(), w.GetTensorTypeAndShapeInfo().GetShape(), k_, format_, kOp);
      const int64_t n = weights_->matrix().n;
      Ort::ConstValue scale = info.GetTensorConstantInput(2, &is_constant);
      if (is_constant) CheckScale(scale.GetTensorTypeAndShapeInfo().GetShape(), n);
      if (info.GetInputCount() > 3) {
        Ort::ConstValue bias = info.GetTensorConstantInput(3, &is_constant);
        if (is_constant) CheckBias(kOp, bias.GetTensorTypeAndShapeInfo().GetShape(), n);
      }
    }
    std::string message = std::string("[") + kOp + "] node '" + info.GetNodeName() + "': K=" + std::to_string(k_) +
                          " format=" + TernaryFormatName(format_) +
                          (weights_ ? " N=" + std::to_string(weights_->matrix().n) + ", W repacked at creation"
                                    : ", W not constant: repacked per call") +
                          ", path " + IsaName(isa);
    ORT_CXX_LOG_NOEXCEPT(info.GetLogger(), ORT_LOGGING_LEVEL_VERBOSE, message.c_str());
  }

  Ort::Status Compute(OrtKernelContext* ctx, const Tensor<T>& x, const Tensor<uint8_t>& w, const Tensor<float>& scale,
                      std::optional<const Tensor<float>*> bias, Tensor<T>& y) {
    const int64_t m = XRows(kOp, x.Shape(), k_);
    std::optional<TernaryWeights> call_weights;
    if (!weights_) call_weights.emplace(w.Data(), w.Shape(), k_, format_, kOp);
    const cpu::TernaryMatrix& matrix = weights_ ? weights_->matrix() : call_weights->matrix();
    const int64_t n = matrix.n;
    CheckScale(scale.Shape(), n);
    if (bias.has_value() && *bias != nullptr) CheckBias(kOp, (*bias)->Shape(), n);

    T* y_data = y.Allocate(OutputDims(x.Shape(), n));
    if (m == 0 || n == 0) return Ort::Status{nullptr};

    cpu::TernaryProblem p;
    p.w = matrix;
    p.ldxq = cpu::XqRowBytes(matrix.k_packets);
    const int64_t pad_rows = m > cpu::kStreamingMaxRows ? cpu::kXqPadRows : 0;
    AlignedBuffer xq(static_cast<size_t>((m + pad_rows) * p.ldxq));
    std::memset(xq.data() + m * p.ldxq, 0, static_cast<size_t>(pad_rows * p.ldxq));
    std::vector<cpu::TokenRow> rows(static_cast<size_t>(m));
    p.xq = reinterpret_cast<const int8_t*>(xq.data());
    p.rows = rows.data();
    p.alpha = scale.Data();
    p.alpha_per_row = scale.Shape()[0] == n && n != 1;
    p.bias = bias.has_value() && *bias != nullptr ? (*bias)->Data() : nullptr;
    p.y = y_data;
    p.y_f16 = std::is_same_v<T, Ort::Float16_t>;

    Quantize(ctx, x.Data(), m, reinterpret_cast<int8_t*>(xq.data()), p.ldxq, rows.data());
    Multiply(ctx, p, m);
    return Ort::Status{nullptr};
  }

  static void InferShape(ShapeInference& shapes) { InferOutputShape(shapes); }

 private:
  void Quantize(OrtKernelContext* ctx, const T* x, int64_t m, int8_t* xq, int64_t ldxq, cpu::TokenRow* rows) const {
    const int64_t tasks = m >= 2 * kQuantizeTaskRows ? cpu::CeilDiv(m, kQuantizeTaskRows) : 1;
    const int64_t task_rows = cpu::CeilDiv(m, tasks);
    auto task = [&](size_t i) {
      const int64_t end = std::min(m, (static_cast<int64_t>(i) + 1) * task_rows);
      for (int64_t r = static_cast<int64_t>(i) * task_rows; r < end; ++r) {
        if constexpr (std::is_same_v<T, float>) {
          kernels_->quantize_f32(x + r * k_, k_, ldxq, xq + r * ldxq, rows + r);
        } else {
          kernels_->quantize_f16(reinterpret_cast<const uint16_t*>(x) + r * k_, k_, ldxq, xq + r * ldxq, rows + r);
        }
      }
    };
    ParallelFor(ctx, static_cast<size_t>(tasks), task);
  }

  void Multiply(OrtKernelContext* ctx, const cpu::TernaryProblem& p, int64_t m) const {
    const TaskPlan plan = m <= cpu::kStreamingMaxRows
                              ? StreamingPlan(m, p.w.blocks, p.w.k_packets * cpu::kPacketBytes, kStreamingTaskBytes)
                              : TiledPlan(m, p.w.blocks, kGemmTaskBlocks, kGemmMinTaskRows, kGemmMinTasks);
    RunPlan(ctx, plan, [&](int64_t m0, int64_t m1, int64_t b0, int64_t b1) { kernels_->matmul(p, m0, m1, b0, b1); });
  }

  int64_t k_ = 0;
  TernaryFormat format_ = TernaryFormat::kTwoBit;
  const cpu::TernaryKernels* kernels_ = nullptr;
  std::optional<TernaryWeights> weights_;  // set when W is a constant initializer
};

}  // namespace

OpList BitLinearOps() {
  return {MakeOp<BitLinear<float>>(kOp), MakeOp<BitLinear<Ort::Float16_t>>(kOp)};
}

}  // namespace bitnet
