// The custom-op domain and the names of the ops this library registers. bitnet_onnx/runtime/__init__.py
// repeats these strings; tests/kernels/test_runtime.py checks that the two agree.
#pragma once

namespace bitnet {

inline constexpr char kDomain[] = "bitnet";
inline constexpr int kOpsetVersion = 1;

inline constexpr char kBitLinearOp[] = "BitLinear";
inline constexpr char kLowBitMatMulOp[] = "LowBitMatMul";
inline constexpr char kDequantizeLowBitOp[] = "DequantizeLowBit";
inline constexpr char kQuantizeLowBitOp[] = "QuantizeLowBit";

}  // namespace bitnet
