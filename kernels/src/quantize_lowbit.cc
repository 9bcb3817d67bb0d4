// QuantizeLowBit (kernels/README.md): float [..., K] → packed Q, scales and zero points, the
// inverse of DequantizeLowBit for tensors computed at run time. Group-wise integers (bits 8, 4,
// 2, 1; symmetric or asymmetric) or ternary (bits = 0, per tensor or per row). Every step is the
// README formula in the reference's order (bitnet_onnx/numerics/quantization.py): float32 operations one at
// a time, means summed and divided in double and rounded once. A row holding NaN or ±Inf gets NaN
// scales and the codes of w = 0.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "bitnet/error.h"
#include "bitnet/lite_op.h"
#include "bitnet/ops.h"
#include "bitnet/parallel.h"
#include "cpu/scalar.h"
#include "cpu/ternary.h"
#include "int_weights.h"
#include "ternary_weights.h"

namespace bitnet {
namespace {

using Ort::Custom::Tensor;
constexpr const char* kOp = kQuantizeLowBitOp;
constexpr float kTernaryEps = 1e-6f;  // ε of the absmean rule
// Input elements per task.
constexpr int64_t kTaskElements = 64 * 1024;

bool Finite(const float* w, int64_t k) {
  for (int64_t e = 0; e < k; ++e) {
    if (!(std::fabs(w[e]) <= FLT_MAX)) return false;
  }
  return true;
}

float Clamp(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

// float32(sum / count) from a double sum, 0 when count is 0.
float Mean32(double sum, int64_t count) { return count > 0 ? static_cast<float>(sum / static_cast<double>(count)) : 0.0f; }

// Codes u of one row (k, padded to whole groups) into packed bytes, element i at bits i·bits.
void PackInt(const std::vector<uint8_t>& codes, int bits, uint8_t* out, int64_t row_bytes) {
  std::memset(out, 0, static_cast<size_t>(row_bytes));
  for (size_t i = 0; i < codes.size(); ++i) {
    const size_t bit = i * static_cast<size_t>(bits);
    out[bit >> 3] = static_cast<uint8_t>(out[bit >> 3] | (codes[i] << (bit & 7)));
  }
}

// Ternary values t ∈ {−1, 0, 1} of one row packed as codes c = t + 1, padded with c = 1.
void PackTernary(const int8_t* t, int64_t k, TernaryFormat format, uint8_t* out, int64_t row_bytes) {
  const int per_byte = format == TernaryFormat::kTwoBit ? 4 : 5;
  for (int64_t q = 0; q < row_bytes; ++q) {
    int byte = 0;
    for (int i = per_byte - 1; i >= 0; --i) {
      const int64_t e = q * per_byte + i;
      const int c = e < k ? t[e] + 1 : 1;
      byte = format == TernaryFormat::kTwoBit ? (byte << 2) | c : byte * 3 + c;
    }
    out[q] = static_cast<uint8_t>(byte);
  }
}

// The float32 view of row r of X (float16 is widened into `buffer`).
template <typename T>
const float* RowAsFloat(const T* x, int64_t r, int64_t k, std::vector<float>& buffer) {
  if constexpr (std::is_same_v<T, float>) {
    static_cast<void>(buffer);
    return x + r * k;
  } else {
    buffer.resize(static_cast<size_t>(k));
    const uint16_t* h = reinterpret_cast<const uint16_t*>(x) + r * k;
    for (int64_t e = 0; e < k; ++e) buffer[e] = cpu::HalfToFloat(h[e]);
    return buffer.data();
  }
}

template <typename T>
class QuantizeLowBit {
 public:
  QuantizeLowBit(const OrtApi*, const OrtKernelInfo* raw_info) {
    Ort::ConstKernelInfo info(raw_info);
    const int64_t bits = RequiredInt(info, kOp, "bits");
    if (bits != 0 && bits != 8 && bits != 4 && bits != 2 && bits != 1) {
      Fail(kOp, "bits=", bits, " is invalid; use 8, 4, 2 or 1 (group-wise integers) or 0 (ternary)");
    }
    bits_ = static_cast<int>(bits);
    if (bits_ == 0) {
      format_ = ParseTernaryFormat(RequiredString(info, kOp, "format"), kOp);
      per_channel_ = Flag(info, "per_channel");
      const std::string scale = RequiredString(info, kOp, "ternary_scale");
      if (scale != "absmean" && scale != "least_squares") {
        Fail(kOp, "ternary_scale='", scale, "' is invalid; use 'absmean' or 'least_squares'");
      }
      least_squares_ = scale == "least_squares";
    } else {
      group_size_ = RequiredInt(info, kOp, "group_size");
      CheckIntFormat(bits, group_size_, kOp);
      asymmetric_ = Flag(info, "asymmetric");
      if (asymmetric_ && bits_ == 1) {
        Fail(kOp, "1-bit codes are symmetric only (w = s · (2u − 1)); set asymmetric=0");
      }
    }
  }

  Ort::Status Compute(OrtKernelContext* ctx, const Tensor<T>& x, Tensor<uint8_t>& q, Tensor<float>& scales,
                      Tensor<uint8_t>& zero_points) {
    const std::vector<int64_t>& x_shape = x.Shape();
    if (x_shape.empty() || x_shape.back() < 1) {
      Fail(kOp, "X has shape ", ShapeString(x_shape), "; it needs a last axis (K) of at least 1 element");
    }
    const int64_t k = x_shape.back();
    int64_t rows = 1;
    for (size_t i = 0; i + 1 < x_shape.size(); ++i) rows *= x_shape[i];
    const int64_t row_bytes = RowBytes(k);
    std::vector<int64_t> q_shape = x_shape;
    q_shape.back() = row_bytes;
    uint8_t* q_data = q.Allocate(q_shape);
    if (bits_ == 0) {
      float* s = scales.Allocate({per_channel_ ? rows : 1});
      zero_points.Allocate({0});
      Ternary(ctx, x.Data(), rows, k, q_data, row_bytes, s);
      return Ort::Status{nullptr};
    }
    const int64_t groups = IntGroups(k, group_size_);
    std::vector<int64_t> per_group(x_shape.begin(), x_shape.end() - 1);
    per_group.push_back(groups);
    float* s = scales.Allocate(per_group);
    uint8_t* zp = zero_points.Allocate(asymmetric_ ? per_group : std::vector<int64_t>{0});
    const int64_t task_rows = std::max<int64_t>(1, kTaskElements / k);
    auto task = [&](size_t i) {
      std::vector<float> buffer;
      std::vector<uint8_t> codes;
      const int64_t end = std::min(rows, (static_cast<int64_t>(i) + 1) * task_rows);
      for (int64_t r = static_cast<int64_t>(i) * task_rows; r < end; ++r) {
        IntRow(RowAsFloat(x.Data(), r, k, buffer), k, codes, q_data + r * row_bytes, row_bytes, s + r * groups,
               asymmetric_ ? zp + r * groups : nullptr);
      }
    };
    ParallelFor(ctx, static_cast<size_t>(cpu::CeilDiv(rows, task_rows)), task);
    return Ort::Status{nullptr};
  }

  static void InferShape(ShapeInference& shapes) {
    const std::optional<int64_t> bits = shapes.IntAttribute("bits");
    ShapeInference::TensorShape x = shapes.Input(0);
    if (!bits || x.dims.empty() || x.dims.back() < 1 || x.HasUnnamedUnknownDim(x.dims.size())) return;
    const int64_t k = x.dims.back();
    ShapeInference::TensorShape q = x, scales = x, zero_points;
    q.type = zero_points.type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
    scales.type = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    zero_points.dims = {0};
    zero_points.symbols = {""};
    if (*bits == 0) {
      const std::optional<std::string> format = shapes.StringAttribute("format");
      const std::optional<int64_t> per_channel = shapes.IntAttribute("per_channel");
      if (!format || (*format != "2bit" && *format != "base3") || !per_channel) return;
      q.dims.back() = cpu::CeilDiv(k, *format == "2bit" ? 4 : 5);
      int64_t rows = 1;
      for (size_t i = 0; i + 1 < x.dims.size(); ++i) rows = x.dims[i] < 0 ? -1 : rows * x.dims[i];
      if (*per_channel && rows < 0) return;
      scales.dims = {*per_channel ? rows : 1};
      scales.symbols = {""};
    } else {
      const std::optional<int64_t> group_size = shapes.IntAttribute("group_size");
      const std::optional<int64_t> asymmetric = shapes.IntAttribute("asymmetric");
      const bool valid = *bits == 8 || *bits == 4 || *bits == 2 || *bits == 1;
      if (!valid || !group_size || *group_size <= 0 || (*group_size * *bits) % 8 != 0 || !asymmetric) return;
      q.dims.back() = IntRowBytes(k, *bits, *group_size);
      scales.dims.back() = IntGroups(k, *group_size);
      if (*asymmetric) zero_points = scales;
      zero_points.type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
    }
    shapes.SetOutput(0, q);
    shapes.SetOutput(1, scales);
    shapes.SetOutput(2, zero_points);
  }

 private:
  static bool Flag(const Ort::ConstKernelInfo& info, const char* name) {
    const int64_t value = RequiredInt(info, kOp, name);
    if (value != 0 && value != 1) Fail(kOp, name, "=", value, " is invalid; use 0 or 1");
    return value == 1;
  }

  int64_t RowBytes(int64_t k) const {
    return bits_ == 0 ? TernaryRowBytes(k, format_) : IntRowBytes(k, bits_, group_size_);
  }

  // One row of group-wise integer codes (README "Encodings at rest").
  void IntRow(const float* w, int64_t k, std::vector<uint8_t>& codes, uint8_t* q, int64_t row_bytes, float* s,
              uint8_t* zp) const {
    const int64_t groups = IntGroups(k, group_size_);
    const float levels = static_cast<float>((1 << bits_) - 1);
    const float qmax = static_cast<float>((1 << (bits_ - 1)) - 1);
    const int symmetric_zp = bits_ == 1 ? 1 : 1 << (bits_ - 1);
    codes.assign(static_cast<size_t>(groups * group_size_), static_cast<uint8_t>(symmetric_zp));
    const bool finite = Finite(w, k);
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t e0 = g * group_size_, count = std::min(group_size_, k - e0);
      uint8_t* u = codes.data() + e0;
      if (!finite) {  // NaN scales, the codes of w = 0
        s[g] = std::numeric_limits<float>::quiet_NaN();
        if (zp != nullptr) zp[g] = 0;
        std::fill(u, u + group_size_, static_cast<uint8_t>(zp != nullptr ? 0 : symmetric_zp));
        continue;
      }
      if (bits_ == 1) {
        double sum = 0.0;
        for (int64_t j = 0; j < count; ++j) sum += std::fabs(w[e0 + j]);
        s[g] = Mean32(sum, count);
        for (int64_t j = 0; j < count; ++j) u[j] = w[e0 + j] >= 0.0f ? 1 : 0;
      } else if (zp == nullptr) {
        float amax = 0.0f;
        for (int64_t j = 0; j < count; ++j) amax = std::max(amax, std::fabs(w[e0 + j]));
        const float scale = amax / qmax;
        s[g] = scale;
        for (int64_t j = 0; j < count; ++j) {
          const float ratio = scale == 0.0f ? 0.0f : std::nearbyint(w[e0 + j] / scale);
          u[j] = static_cast<uint8_t>(Clamp(ratio, -qmax, qmax) + static_cast<float>(symmetric_zp));
        }
      } else {
        float lo = 0.0f, hi = 0.0f;
        for (int64_t j = 0; j < count; ++j) {
          lo = std::min(lo, w[e0 + j]);
          hi = std::max(hi, w[e0 + j]);
        }
        const float scale = (hi - lo) / levels;
        const float point = scale == 0.0f ? 0.0f : Clamp(std::nearbyint(-lo / scale), 0.0f, levels);
        s[g] = scale;
        zp[g] = static_cast<uint8_t>(point);
        for (int64_t j = 0; j < count; ++j) {
          const float ratio = scale == 0.0f ? 0.0f : std::nearbyint(w[e0 + j] / scale);
          u[j] = static_cast<uint8_t>(Clamp(ratio + point, 0.0f, levels));
        }
        std::fill(u + count, u + group_size_, zp[g]);  // padding: the last group's zero point
      }
    }
    PackInt(codes, bits_, q, row_bytes);
  }

  // Ternary (README "Ternary (BITNET158) weights"): γ per tensor or per row, then T; the scale is
  // α (least squares) or γ (absmean), except that exactly ternary weights keep s = α under both:
  // W is 0 wherever T is (as many non-zero W as non-zero T) and every kept |W| is the same value.
  void Ternary(OrtKernelContext* ctx, const T* x, int64_t rows, int64_t k, uint8_t* q, int64_t row_bytes,
               float* s) const {
    std::vector<double> abs_sum(static_cast<size_t>(rows)), kept_sum(static_cast<size_t>(rows));
    std::vector<int64_t> kept(static_cast<size_t>(rows)), nonzero(static_cast<size_t>(rows));
    std::vector<float> kept_min(static_cast<size_t>(rows)), kept_max(static_cast<size_t>(rows));
    std::vector<char> finite(static_cast<size_t>(rows));
    const int64_t task_rows = std::max<int64_t>(1, kTaskElements / k);
    const size_t tasks = static_cast<size_t>(cpu::CeilDiv(rows, task_rows));
    auto for_rows = [&](auto&& body) {
      auto task = [&](size_t i) {
        std::vector<float> buffer;
        const int64_t end = std::min(rows, (static_cast<int64_t>(i) + 1) * task_rows);
        for (int64_t r = static_cast<int64_t>(i) * task_rows; r < end; ++r) body(r, RowAsFloat(x, r, k, buffer));
      };
      ParallelFor(ctx, tasks, task);
    };
    // Pass 1: finite flags, Σ|w| and the non-zero count per row (a non-finite row counts as zeros).
    for_rows([&](int64_t r, const float* w) {
      finite[r] = Finite(w, k);
      double sum = 0.0;
      int64_t count = 0;
      if (finite[r]) {
        for (int64_t e = 0; e < k; ++e) {
          sum += std::fabs(w[e]);
          count += w[e] != 0.0f;
        }
      }
      abs_sum[r] = sum;
      nonzero[r] = count;
    });
    float tensor_denom = 0.0f;
    if (!per_channel_) {
      double total = 0.0;
      for (double v : abs_sum) total += v;
      tensor_denom = Mean32(total, rows * k) + kTernaryEps;
    }
    // Pass 2: T = clip(rint(w / (γ + ε)), −1, 1), packed; Σ|w|, count, min and max of |w| over T ≠ 0.
    for_rows([&](int64_t r, const float* w) {
      std::vector<int8_t> t(static_cast<size_t>(k), 0);
      double sum = 0.0;
      int64_t count = 0;
      float lo = std::numeric_limits<float>::infinity(), hi = 0.0f;
      if (finite[r]) {
        const float denom = per_channel_ ? Mean32(abs_sum[r], k) + kTernaryEps : tensor_denom;
        for (int64_t e = 0; e < k; ++e) {
          t[e] = static_cast<int8_t>(Clamp(std::nearbyint(w[e] / denom), -1.0f, 1.0f));
          if (t[e] != 0) {
            const float a = std::fabs(w[e]);
            sum += a;
            ++count;
            lo = std::min(lo, a);
            hi = std::max(hi, a);
          }
        }
      }
      kept_sum[r] = sum;
      kept[r] = count;
      kept_min[r] = lo;
      kept_max[r] = hi;
      PackTernary(t.data(), k, format_, q + r * row_bytes, row_bytes);
    });
    const float nan = std::numeric_limits<float>::quiet_NaN();
    if (per_channel_) {
      for (int64_t r = 0; r < rows; ++r) {
        s[r] = finite[r] ? Scale(abs_sum[r], k, kept_sum[r], kept[r], nonzero[r], kept_min[r], kept_max[r]) : nan;
      }
      return;
    }
    double total_abs = 0.0, total_kept = 0.0;
    int64_t count = 0, total_nonzero = 0;
    float lo = std::numeric_limits<float>::infinity(), hi = 0.0f;
    bool all_finite = true;
    for (int64_t r = 0; r < rows; ++r) {
      total_abs += abs_sum[r];
      total_kept += kept_sum[r];
      count += kept[r];
      total_nonzero += nonzero[r];
      lo = std::min(lo, kept_min[r]);
      hi = std::max(hi, kept_max[r]);
      all_finite &= finite[r] != 0;
    }
    s[0] = all_finite ? Scale(total_abs, rows * k, total_kept, count, total_nonzero, lo, hi) : nan;
  }

  // The stored scale of a tensor or row from its sums (see Ternary).
  float Scale(double abs_sum, int64_t elements, double kept_sum, int64_t kept, int64_t nonzero, float kept_min,
              float kept_max) const {
    const bool exact = nonzero == kept && (kept == 0 || kept_min == kept_max);
    return least_squares_ || exact ? Mean32(kept_sum, kept) : Mean32(abs_sum, elements);
  }

  int bits_ = 0;
  int64_t group_size_ = 0;
  bool asymmetric_ = false;
  TernaryFormat format_ = TernaryFormat::kTwoBit;
  bool per_channel_ = false;
  bool least_squares_ = false;
};

}  // namespace

OpList QuantizeLowBitOps() {
  return {MakeOp<QuantizeLowBit<float>>(kOp), MakeOp<QuantizeLowBit<Ort::Float16_t>>(kOp)};
}

}  // namespace bitnet
