// What BitLinear and LowBitMatMul share as ops computing Y[..., N] = X[..., K] · Wᵀ: the checks of
// X and bias against the node and W, Y's shape, and shape inference.
#pragma once

#include <cstdint>
#include <vector>

#include "bitnet/error.h"
#include "bitnet/lite_op.h"

namespace bitnet {

// The node's attribute K, the unpadded reduction length.
inline int64_t RequiredK(const Ort::ConstKernelInfo& info, const char* op) {
  const int64_t k = RequiredInt(info, op, "K");
  if (k <= 0) Fail(op, "K=", k, " must be positive (the unpadded reduction length)");
  return k;
}

inline void CheckBias(const char* op, const std::vector<int64_t>& shape, int64_t n) {
  if (shape.size() != 1 || shape[0] != n) Fail(op, "bias has shape ", ShapeString(shape), "; it must be [N] = [", n, "]");
}

// X [..., K] checked against the node's K; returns the number of X rows (the leading dims' product).
inline int64_t XRows(const char* op, const std::vector<int64_t>& x_shape, int64_t k) {
  if (x_shape.empty() || x_shape.back() != k) {
    Fail(op, "X has shape ", ShapeString(x_shape), " but its last axis must be K=", k, " (the node's attribute)");
  }
  int64_t m = 1;
  for (size_t i = 0; i + 1 < x_shape.size(); ++i) m *= x_shape[i];
  return m;
}

// Y's shape: X's, with N for the last axis.
inline std::vector<int64_t> OutputDims(std::vector<int64_t> x_shape, int64_t n) {
  x_shape.back() = n;
  return x_shape;
}

// Y: X's type and leading dims, and W's first dim (N).
inline void InferOutputShape(ShapeInference& shapes) {
  if (shapes.InputCount() < 2) return;
  ShapeInference::TensorShape x = shapes.Input(0);
  const ShapeInference::TensorShape w = shapes.Input(1);
  if (x.dims.empty() || w.dims.size() != 2 || x.HasUnnamedUnknownDim(x.dims.size() - 1)) return;
  x.dims.back() = w.dims[0];
  x.symbols.back() = w.symbols[0];
  shapes.SetOutput(0, x);
}

}  // namespace bitnet
