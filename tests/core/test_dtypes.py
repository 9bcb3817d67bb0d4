"""DType: exact storage bytes (hand-computed), true compression ratios, parsing, the ladder."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto

from bitnet_onnx.core.dtypes import DType, TernaryPacking, WeightLayout, storage_bytes
from bitnet_onnx.core.errors import ConfigError

SQUARE = (4096, 4096)
F32_SQUARE = 4096 * 4096 * 4


@pytest.mark.parametrize(
    ("dtype", "shape", "layout", "expected"),
    [
        (DType.F32, SQUARE, None, 67_108_864),
        (DType.F16, (3, 5), None, 30),
        (DType.BF16, (7,), None, 14),
        (DType.F32, (), None, 4),
        # ternary 2bit: ceil(K/4) bytes per row + one float32 scale
        (DType.BITNET158, SQUARE, None, 4096 * 1024 + 4),
        # base3: ceil(4096/5) = 820 bytes per row
        (DType.BITNET158, SQUARE, WeightLayout(packing=TernaryPacking.BASE3), 4096 * 820 + 4),
        (DType.BITNET158, (3, 7), WeightLayout(per_channel=True), 3 * 2 + 3 * 4),
        (DType.BITNET158, (3, 11), WeightLayout(packing=TernaryPacking.BASE3), 3 * 3 + 4),
        # I4, G=128: 2048 data bytes per row, 32 float32 scales per row (+ 32 uint8 zero points)
        (DType.I4, SQUARE, WeightLayout(group_size=128), 4096 * 2048 + 4096 * 32 * 4),
        (DType.I4, SQUARE, WeightLayout(group_size=128, asymmetric=True), 4096 * 2048 + 4096 * 32 * 5),
        # whole-row groups: I8 [3, 10] = 30 + 3 scales; I1 [2, 9] = 2 bytes/row + 2 scales
        (DType.I8, (3, 10), None, 30 + 12),
        (DType.I1, (2, 9), None, 4 + 8),
        (DType.I2, (5,), None, 2 + 4),
        # K=100 in groups of 32: 4 groups → 128 codes per row
        (DType.I2, (2, 100), WeightLayout(group_size=32), 2 * 32 + 2 * 4 * 4),
        (DType.I4, (0, 4), None, 0),
    ],
)
def test_storage_bytes_by_hand(
    dtype: DType, shape: tuple[int, ...], layout: WeightLayout | None, expected: int
) -> None:
    assert storage_bytes(dtype, shape, layout) == expected


@pytest.mark.parametrize(
    ("packing", "ratio"), [(TernaryPacking.TWO_BIT, 16.0), (TernaryPacking.BASE3, 19.98)]
)
def test_true_ternary_compression_ratios(packing: TernaryPacking, ratio: float) -> None:
    got = F32_SQUARE / storage_bytes(DType.BITNET158, SQUARE, WeightLayout(packing=packing))
    assert got == pytest.approx(ratio, abs=0.01)
    assert got < 32  # the seed's "32x" is not a real ratio


@pytest.mark.parametrize(("dtype", "ratio"), [(DType.F16, 2), (DType.BF16, 2), (DType.I8, 4)])
def test_other_ratios_ignoring_scales(dtype: DType, ratio: int) -> None:
    got = F32_SQUARE / storage_bytes(dtype, SQUARE)
    assert got == pytest.approx(ratio, rel=1e-3)


@pytest.mark.parametrize(
    ("text", "dtype"),
    [
        ("fp16", DType.F16),
        ("Float32", DType.F32),
        ("bfloat16", DType.BF16),
        ("int4", DType.I4),
        ("i8", DType.I8),
        ("binary", DType.I1),
        ("ternary", DType.BITNET158),
        ("b1.58", DType.BITNET158),
        ("bit-net", DType.BITNET158),
        (" BitNet158 ", DType.BITNET158),
        (DType.I2, DType.I2),
    ],
)
def test_parse_aliases(text: str | DType, dtype: DType) -> None:
    assert DType.parse(text) is dtype


def test_parse_unknown_lists_choices() -> None:
    with pytest.raises(ConfigError, match=r"unknown precision 'int3'; choose one of F32, F16, .*BITNET158"):
        DType.parse("int3")


@pytest.mark.parametrize(
    ("dtype", "delta", "expected"),
    [
        (DType.I8, 1, DType.BF16),
        (DType.F32, 1, DType.F32),
        (DType.I1, -1, DType.I1),
        (DType.BITNET158, -1, DType.I1),
        (DType.I4, -2, DType.BITNET158),
        (DType.F16, -3, DType.I4),
    ],
)
def test_step_is_clamped_to_ladder(dtype: DType, delta: int, expected: DType) -> None:
    assert dtype.step(delta) is expected


def test_rank_orders_by_precision() -> None:
    order = sorted(DType, key=DType.rank)
    assert order == [
        DType.I1,
        DType.BITNET158,
        DType.I2,
        DType.I4,
        DType.I8,
        DType.BF16,
        DType.F16,
        DType.F32,
    ]


@pytest.mark.parametrize(
    ("dtype", "bits", "is_float", "levels", "value_range", "onnx_type", "numpy_type"),
    [
        (
            DType.F32,
            32,
            True,
            None,
            (-3.4028234663852886e38, 3.4028234663852886e38),
            TensorProto.FLOAT,
            np.float32,
        ),
        (DType.F16, 16, True, None, (-65504.0, 65504.0), TensorProto.FLOAT16, np.float16),
        (
            DType.BF16,
            16,
            True,
            None,
            (-3.3895313892515355e38, 3.3895313892515355e38),
            TensorProto.BFLOAT16,
            ml_dtypes.bfloat16,
        ),
        (DType.I8, 8, False, 256, (-128, 127), TensorProto.INT8, np.int8),
        (DType.I4, 4, False, 16, (-8, 7), TensorProto.INT4, ml_dtypes.int4),
        (DType.I2, 2, False, 4, (-2, 1), TensorProto.INT2, ml_dtypes.int2),
        (DType.I1, 1, False, 2, (-1, 1), None, None),
        (DType.BITNET158, 2, False, 3, (-1, 1), None, None),
    ],
)
def test_dtype_properties(
    dtype: DType,
    bits: int,
    is_float: bool,
    levels: int | None,
    value_range: tuple[float, float],
    onnx_type: int | None,
    numpy_type: type | None,
) -> None:
    assert dtype.bits == bits
    assert dtype.is_float is is_float and dtype.is_integer is (not is_float)
    assert dtype.levels == levels
    assert dtype.value_range == value_range
    assert dtype.onnx_type == onnx_type
    assert dtype.numpy_type is numpy_type


@pytest.mark.parametrize("dtype", [DType.F16, DType.BF16, DType.F32])
def test_float_value_range_is_the_types_max(dtype: DType) -> None:
    assert dtype.value_range[1] == float(ml_dtypes.finfo(dtype.numpy_type).max)


def test_weights_per_byte() -> None:
    assert TernaryPacking.TWO_BIT.weights_per_byte == 4
    assert TernaryPacking.BASE3.weights_per_byte == 5
