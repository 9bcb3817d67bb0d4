"""One-node LowBitMatMul, DequantizeLowBit and QuantizeLowBit models built with onnx.helper, and
random group-wise integer operands for them (quantized and packed by the numpy reference)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bitnet_onnx import runtime
from bitnet_onnx.numerics.packing import pack_int
from bitnet_onnx.numerics.quantization import GroupWeights, lowbit_matmul_reference, quantize_groups

ONNX_TYPE = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16}
OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid(runtime.DOMAIN, runtime.OPSET_VERSION)]


@cache
def group_weights(
    n: int, k: int, bits: int, group_size: int, asymmetric: bool, seed: int = 0
) -> GroupWeights:
    """Random normal W[N, K] quantized by the reference; cached, treat as read-only."""
    w = np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)
    return quantize_groups(w, bits, group_size, asymmetric)


@dataclass(frozen=True)
class LowBitOperands:
    """Inputs and attributes of one LowBitMatMul node."""

    packed_w: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    bias: np.ndarray | None
    k: int
    bits: int
    group_size: int

    def attributes(self, act_quant: int) -> dict[str, int]:
        return {"K": self.k, "bits": self.bits, "group_size": self.group_size, "act_quant": act_quant}

    def values(self) -> dict[str, np.ndarray | None]:
        return {"W": self.packed_w, "scales": self.scales, "zero_points": self.zero_points, "bias": self.bias}

    def model(
        self,
        x_dtype: np.dtype | type,
        act_quant: int,
        leading: Sequence[int | str] = ("M",),
        constant: Sequence[str] = ("W", "scales", "zero_points", "bias"),
        attributes: dict[str, object] | None = None,
    ) -> onnx.ModelProto:
        """X[*leading, K] → Y. Operands not in `constant` become graph inputs; symmetric weights
        with a bias get an empty zero_points initializer (the README's "no zero points")."""
        dtype = np.dtype(x_dtype)
        values = self.values()
        if self.zero_points is None and self.bias is not None:
            values["zero_points"] = np.zeros(0, np.uint8)
        names = ["X", "W", "scales"] + [n for n in ("zero_points", "bias") if values[n] is not None]
        inputs = [helper.make_tensor_value_info("X", ONNX_TYPE[dtype], [*leading, self.k])]
        initializers = []
        for name in names[1:]:
            value = values[name]
            if name in constant:
                initializers.append(numpy_helper.from_array(value, name))
            else:
                dims = [f"{name}_{i}" for i in range(value.ndim)]
                inputs.append(
                    helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), dims)
                )
        attrs = self.attributes(act_quant) if attributes is None else attributes
        node = helper.make_node(
            runtime.LOWBIT_MATMUL, names, ["Y"], domain=runtime.DOMAIN, name="lbmm", **attrs
        )
        graph = helper.make_graph(
            [node],
            "lowbit_matmul",
            inputs,
            [helper.make_tensor_value_info("Y", ONNX_TYPE[dtype], None)],
            initializers,
        )
        return helper.make_model(graph, opset_imports=OPSETS)

    def feeds(
        self, x: np.ndarray, constant: Sequence[str] = ("W", "scales", "zero_points", "bias")
    ) -> dict[str, np.ndarray]:
        feeds = {"X": x}
        for name, value in self.values().items():
            if value is not None and name not in constant:
                feeds[name] = value
        return feeds

    def reference(self, x: np.ndarray, act_quant: int) -> np.ndarray:
        return lowbit_matmul_reference(
            x,
            self.packed_w,
            self.scales,
            self.zero_points,
            self.bias,
            self.k,
            self.bits,
            self.group_size,
            act_quant,
        )


def lowbit_operands(
    n: int, k: int, bits: int, group_size: int, asymmetric: bool = False, bias: bool = False, seed: int = 0
) -> LowBitOperands:
    gw = group_weights(n, k, bits, group_size, asymmetric, seed)
    b = np.random.default_rng(seed + 1).standard_normal(n).astype(np.float32) if bias else None
    packed = pack_int(gw.codes, bits, group_size, gw.zero_points)
    return LowBitOperands(packed, gw.scales, gw.zero_points, b, k, bits, group_size)


def dequantize_model(
    attributes: dict[str, object], zero_points: bool, output_type: int = TensorProto.FLOAT
) -> onnx.ModelProto:
    """Q, scales[, zero_points] → Y (declared `output_type`), all graph inputs of any shape."""
    names = ["Q", "scales"] + (["zero_points"] if zero_points else [])
    types = {"Q": TensorProto.UINT8, "scales": TensorProto.FLOAT, "zero_points": TensorProto.UINT8}
    node = helper.make_node(runtime.DEQUANTIZE_LOWBIT, names, ["Y"], domain=runtime.DOMAIN, **attributes)
    graph = helper.make_graph(
        [node],
        "dequantize_lowbit",
        [helper.make_tensor_value_info(n, types[n], None) for n in names],
        [helper.make_tensor_value_info("Y", output_type, None)],
    )
    return helper.make_model(graph, opset_imports=OPSETS)


def quantize_model(
    x_dtype: np.dtype | type, attributes: dict[str, object], x_dims: Sequence[int | str]
) -> onnx.ModelProto:
    """X → Q, scales, zero_points."""
    node = helper.make_node(
        runtime.QUANTIZE_LOWBIT, ["X"], ["Q", "scales", "zero_points"], domain=runtime.DOMAIN, **attributes
    )
    outputs = [
        helper.make_tensor_value_info("Q", TensorProto.UINT8, None),
        helper.make_tensor_value_info("scales", TensorProto.FLOAT, None),
        helper.make_tensor_value_info("zero_points", TensorProto.UINT8, None),
    ]
    x = helper.make_tensor_value_info("X", ONNX_TYPE[np.dtype(x_dtype)], list(x_dims))
    graph = helper.make_graph([node], "quantize_lowbit", [x], outputs)
    return helper.make_model(graph, opset_imports=OPSETS)
