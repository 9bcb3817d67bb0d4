"""The precisions a layer component can be stored and computed in, and what each one costs.

Storage is counted exactly: a quantized tensor of shape [..., K] is stored row by row (one row per
leading index), each row padded to a whole number of groups (or, for ternary, of packs), plus the
float32 scales and, for asymmetric integer formats, one uint8 zero point per group.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

import ml_dtypes
import numpy as np
from onnx import TensorProto

from bitnet_onnx.core._schema import parse_enum

__all__ = ["ConversionStrategy", "DType", "TernaryPacking", "TernaryScale", "WeightLayout", "storage_bytes"]

_SCALE_BYTES = 4  # scales are float32
_ZERO_POINT_BYTES = 1  # zero points are uint8


class TernaryPacking(enum.Enum):
    """How BITNET158 weights are stored at rest."""

    TWO_BIT = "2bit"  # w+1 in 2 bits, 4 weights per byte: 2.0 bits/weight, 16x vs F32
    BASE3 = "base3"  # sum (w_i+1)*3^i over 5 weights, one byte: 1.6 bits/weight, 20x vs F32

    @classmethod
    def parse(cls, value: str | TernaryPacking) -> TernaryPacking:
        return parse_enum(cls, value, "packing")

    @property
    def weights_per_byte(self) -> int:
        return 4 if self is TernaryPacking.TWO_BIT else 5


class TernaryScale(enum.Enum):
    """The scale stored with a BITNET158 pattern (kernels/README.md "Ternary (BITNET158) weights").

    ABSMEAN: γ = mean|W|, what BitNet b1.58 computes in training; the right scale for a model
    trained with BitNet quantization-aware training (QAT), whose float latent weights are meant to
    compute T·γ. LEAST_SQUARES: α = mean|W| over the non-zero T, which minimises ‖W − αT‖; the
    better choice for post-training ternarization of a float model. Both keep s for weights that
    already are exactly ternary × s.
    """

    ABSMEAN = "absmean"
    LEAST_SQUARES = "least_squares"

    @classmethod
    def parse(cls, value: str | TernaryScale) -> TernaryScale:
        """Accept a TernaryScale or its value in any case (`absmean`, `least_squares`, `least-squares`)."""
        return parse_enum(cls, value, "ternary_scale", fold=_underscored)


@dataclass(frozen=True)
class _Spec:
    bits: int
    is_float: bool
    onnx_type: int | None
    numpy_type: type | None
    value_range: tuple[float, float]


class DType(enum.Enum):
    """A precision. `bits` is the storage width of one element (1.6 for base-3 ternary is a
    packing choice, see `TernaryPacking`, so BITNET158 reports its 2-bit default)."""

    F32 = "F32"
    F16 = "F16"
    BF16 = "BF16"
    I8 = "I8"
    I4 = "I4"
    I2 = "I2"
    I1 = "I1"
    BITNET158 = "BITNET158"

    @classmethod
    def parse(cls, value: str | DType) -> DType:
        """Accept a DType, its name in any case, or a common alias (fp16, int4, ternary, ...)."""
        return parse_enum(cls, value, "precision", spellings=_ALIASES, fold=_alias_key)

    @property
    def _spec(self) -> _Spec:
        return _SPECS[self]

    @property
    def bits(self) -> int:
        return self._spec.bits

    @property
    def is_float(self) -> bool:
        return self._spec.is_float

    @property
    def is_integer(self) -> bool:
        return not self._spec.is_float

    @property
    def onnx_type(self) -> int | None:
        """TensorProto element type, or None where ONNX has no type for it (I1, BITNET158)."""
        return self._spec.onnx_type

    @property
    def numpy_type(self) -> type | None:
        """numpy / ml_dtypes scalar type of one element, or None where none exists."""
        return self._spec.numpy_type

    @property
    def value_range(self) -> tuple[float, float]:
        """Smallest and largest representable value (integer codes for integer types)."""
        return self._spec.value_range

    @property
    def levels(self) -> int | None:
        """Number of distinct integer levels, None for floats."""
        if self.is_float:
            return None
        if self is DType.BITNET158:
            return 3
        if self is DType.I1:
            return 2
        return 2**self.bits

    def rank(self) -> int:
        """Position in the precision ladder, higher means more precise (used for raise/lower)."""
        return _LADDER.index(self)

    def step(self, delta: int) -> DType:
        """The precision `delta` steps up (positive) or down (negative) the ladder, clamped."""
        i = min(max(self.rank() + delta, 0), len(_LADDER) - 1)
        return _LADDER[i]


@dataclass(frozen=True)
class WeightLayout:
    """How a quantized tensor is laid out: the knobs that change its byte count, and the rule of
    the ternary scale (which changes the scale's value, not its size)."""

    group_size: int | None = None  # integer types: elements per scale along the last axis
    asymmetric: bool = False  # integer types: one zero point per group
    per_channel: bool = False  # BITNET158: one scale per row instead of one per tensor
    packing: TernaryPacking = TernaryPacking.TWO_BIT
    ternary_scale: TernaryScale = TernaryScale.ABSMEAN  # BITNET158: γ (as trained) or least squares


def storage_bytes(dtype: DType, shape: Sequence[int], layout: WeightLayout | None = None) -> int:
    """Exact bytes needed to store a tensor of `shape` in `dtype`, scales and zero points included."""
    layout = layout or WeightLayout()
    n = math.prod(shape)
    if dtype.is_float:
        return n * dtype.bits // 8
    if n == 0:
        return 0
    k = shape[-1] if shape else 1
    rows = n // k
    if dtype is DType.BITNET158:
        per_row = math.ceil(k / layout.packing.weights_per_byte)
        scales = rows if layout.per_channel else 1
        return rows * per_row + scales * _SCALE_BYTES
    group = layout.group_size or k
    groups = math.ceil(k / group)
    data = rows * math.ceil(groups * group * dtype.bits / 8)
    meta = rows * groups * (_SCALE_BYTES + (_ZERO_POINT_BYTES if layout.asymmetric else 0))
    return data + meta


_SPECS: dict[DType, _Spec] = {
    DType.F32: _Spec(
        32, True, TensorProto.FLOAT, np.float32, (-3.4028234663852886e38, 3.4028234663852886e38)
    ),
    DType.F16: _Spec(16, True, TensorProto.FLOAT16, np.float16, (-65504.0, 65504.0)),
    DType.BF16: _Spec(
        16, True, TensorProto.BFLOAT16, ml_dtypes.bfloat16, (-3.3895313892515355e38, 3.3895313892515355e38)
    ),
    DType.I8: _Spec(8, False, TensorProto.INT8, np.int8, (-128, 127)),
    DType.I4: _Spec(4, False, TensorProto.INT4, ml_dtypes.int4, (-8, 7)),
    DType.I2: _Spec(2, False, TensorProto.INT2, ml_dtypes.int2, (-2, 1)),
    DType.I1: _Spec(1, False, None, None, (-1, 1)),  # sign: every element is -1 or +1
    DType.BITNET158: _Spec(2, False, None, None, (-1, 1)),  # ternary -1/0/+1
}

_LADDER = [DType.I1, DType.BITNET158, DType.I2, DType.I4, DType.I8, DType.BF16, DType.F16, DType.F32]

_ALIASES: dict[str, DType] = {d.name: d for d in DType} | {
    "FLOAT": DType.F32,
    "FLOAT32": DType.F32,
    "FP32": DType.F32,
    "FLOAT16": DType.F16,
    "FP16": DType.F16,
    "HALF": DType.F16,
    "BFLOAT16": DType.BF16,
    "INT8": DType.I8,
    "INT4": DType.I4,
    "INT2": DType.I2,
    "INT1": DType.I1,
    "BINARY": DType.I1,
    "TERNARY": DType.BITNET158,
    "BITNET": DType.BITNET158,
    "B158": DType.BITNET158,
}


class ConversionStrategy(enum.Enum):
    """How `numerics.converter` chooses scales and rounds values; its module docstring describes each case."""

    DIRECT = "direct"
    SCALED = "scaled"
    QUANTIZATION_AWARE = "quantization_aware"
    STOCHASTIC_ROUNDING = "stochastic_rounding"
    GPTQ = "gptq"  # needs the layer's calibration activations (numerics.gptq)

    @classmethod
    def parse(cls, value: str | ConversionStrategy) -> ConversionStrategy:
        return parse_enum(cls, value, "conversion strategy", fold=_underscored)


def _alias_key(text: str) -> str:
    return text.upper().replace("-", "").replace("_", "").replace(".", "")


def _underscored(text: str) -> str:
    return text.lower().replace("-", "_").replace(" ", "_")
