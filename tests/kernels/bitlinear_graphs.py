"""One-node BitLinear models built with onnx.helper, and random ternary operands for them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bitnet_onnx import runtime
from bitnet_onnx.core.dtypes import TernaryPacking
from bitnet_onnx.numerics.packing import pack_ternary

ONNX_TYPE = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16}


@cache
def ternary_values(n: int, k: int, seed: int = 0) -> np.ndarray:
    """A fixed random ternary matrix T[N, K] (int8 in {-1, 0, 1}); cached, treat as read-only."""
    return np.random.default_rng(seed).integers(-1, 2, size=(n, k), dtype=np.int8)


@cache
def packed_ternary(n: int, k: int, format: str, seed: int = 0) -> np.ndarray:
    """`ternary_values(n, k, seed)` packed in `format`; cached, treat as read-only."""
    return pack_ternary(ternary_values(n, k, seed), TernaryPacking(format))


@dataclass(frozen=True)
class BitLinearOperands:
    """Inputs of one BitLinear node; `constant` lists which of W, scale, bias are initializers."""

    packed_w: np.ndarray
    scale: np.ndarray
    bias: np.ndarray | None
    k: int
    format: str

    def model(
        self,
        x_dtype: np.dtype | type,
        leading: Sequence[int | str] = ("M",),
        constant: Sequence[str] = ("W", "scale", "bias"),
        attributes: dict[str, object] | None = None,
    ) -> onnx.ModelProto:
        """A one-node model: X[*leading, K] → Y. Operands not in `constant` become graph inputs.
        `attributes` replaces the node's attributes (default K and format)."""
        dtype = np.dtype(x_dtype)
        values = {"W": self.packed_w, "scale": self.scale, "bias": self.bias}
        names = ["X", "W", "scale"] + (["bias"] if self.bias is not None else [])
        inputs = [helper.make_tensor_value_info("X", ONNX_TYPE[dtype], [*leading, self.k])]
        initializers = []
        for name in names[1:]:
            if name in constant:
                initializers.append(numpy_helper.from_array(values[name], name))
            else:
                dims = [f"{name}_{i}" for i in range(values[name].ndim)]  # symbolic: run-time shapes vary
                inputs.append(helper.make_tensor_value_info(name, _onnx_type(values[name]), dims))
        attrs = {"K": self.k, "format": self.format} if attributes is None else attributes
        node = helper.make_node("BitLinear", names, ["Y"], domain=runtime.DOMAIN, name="bitlinear", **attrs)
        graph = helper.make_graph(
            [node],
            "bitlinear",
            inputs,
            [helper.make_tensor_value_info("Y", ONNX_TYPE[dtype], None)],
            initializers,
        )
        opsets = [helper.make_opsetid("", 17), helper.make_opsetid(runtime.DOMAIN, runtime.OPSET_VERSION)]
        return helper.make_model(graph, opset_imports=opsets)

    def feeds(self, x: np.ndarray, constant: Sequence[str] = ("W", "scale", "bias")) -> dict[str, np.ndarray]:
        """The run-time feeds for `model(..., constant=constant)`."""
        feeds = {"X": x}
        for name, value in (("W", self.packed_w), ("scale", self.scale), ("bias", self.bias)):
            if value is not None and name not in constant:
                feeds[name] = value
        return feeds


def bitlinear_operands(
    n: int,
    k: int,
    format: str = "2bit",
    per_row: bool = False,
    bias: bool = False,
    seed: int = 0,
) -> BitLinearOperands:
    """Random ternary W (packed), a positive scale ([1] or [N]) and optionally a bias."""
    rng = np.random.default_rng(seed + 1)
    scale = (rng.random(n if per_row else 1) + 0.25).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    return BitLinearOperands(packed_ternary(n, k, format, seed), scale, b, k, format)


def _onnx_type(a: np.ndarray) -> int:
    return helper.np_dtype_to_tensor_dtype(a.dtype)
