"""QuantizeLowBit through onnxruntime against bitnet_onnx.numerics.quantization.quantize_lowbit_reference.

The op evaluates the README formulas in the reference's order, so packed codes, scales (NaN
included) and zero points are compared for exact equality, for float32 and float16 inputs, with
1 and 2 threads.
"""

from __future__ import annotations

import numpy as np
import pytest
from lowbit_graphs import OPSETS, quantize_model
from onnx import TensorProto, helper

from bitnet_onnx import runtime
from bitnet_onnx.core.dtypes import TernaryPacking
from bitnet_onnx.core.errors import UnsupportedModelError
from bitnet_onnx.numerics.packing import pack_ternary
from bitnet_onnx.numerics.quantization import dequantize_lowbit_reference, quantize_lowbit_reference

pytestmark = pytest.mark.kernels

DTYPES = [np.float32, np.float16]

# (leading dims, K, bits, group size, asymmetric): rows 0, 1, 3, 17, 128 and a 3-d tensor, K in
# {1, 32, 100, 4096}, every bit width, groups that do not divide K.
INT_CASES = [
    ((0,), 32, 4, 32, False),
    ((1,), 32, 8, 32, True),
    ((3,), 100, 4, 32, True),
    ((17,), 4096, 2, 128, False),
    ((128,), 100, 1, 24, False),
    ((2, 3), 100, 8, 100, False),
    ((17,), 100, 2, 12, True),
    ((3,), 4096, 1, 4096, False),
    ((5,), 37, 4, 2, True),
    ((4,), 1, 8, 1, True),
]

# (leading dims, K, format, per_channel, ternary_scale)
TERNARY_CASES = [
    ((0,), 32, "2bit", True, "absmean"),
    ((1,), 100, "2bit", False, "least_squares"),
    ((17,), 4096, "base3", True, "least_squares"),
    ((17,), 4096, "2bit", False, "absmean"),
    ((2, 3), 7, "2bit", True, "absmean"),
    ((128,), 32, "base3", False, "least_squares"),
    ((128,), 32, "base3", True, "absmean"),
    ((5,), 1, "base3", False, "absmean"),
]


def values(rng: np.random.Generator, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """Normal values ×3 with an all-zero first group in the second row (scale 0)."""
    x = rng.standard_normal(shape) * 3
    rows = x.reshape(-1, shape[-1])
    if rows.shape[0] > 1:
        rows[1, : min(8, shape[-1])] = 0.0
    return x.astype(dtype)


def int_attributes(bits: int, group_size: int, asymmetric: bool) -> dict[str, int]:
    return {"bits": bits, "group_size": group_size, "asymmetric": int(asymmetric)}


def ternary_attributes(format: str, per_channel: bool, scale: str = "absmean") -> dict[str, object]:
    return {"bits": 0, "format": format, "per_channel": int(per_channel), "ternary_scale": scale}


def run(x: np.ndarray, attributes: dict[str, object], threads: int = 1) -> list[np.ndarray]:
    dims = [f"d{i}" for i in range(x.ndim - 1)] + [x.shape[-1]]
    return runtime.session(quantize_model(x.dtype, attributes, dims), threads=threads).run(None, {"X": x})


def reference(x: np.ndarray, attributes: dict[str, object]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """quantize_lowbit_reference with the node's attributes."""
    return quantize_lowbit_reference(
        x,
        int(attributes["bits"]),
        int(attributes.get("group_size", 0)),
        bool(attributes.get("asymmetric", 0)),
        str(attributes.get("format", "2bit")),
        bool(attributes.get("per_channel", 0)),
        str(attributes.get("ternary_scale", "absmean")),
    )


def assert_outputs_equal(outputs: list[np.ndarray], expected: tuple[np.ndarray, ...]) -> None:
    for got, want, name in zip(outputs, expected, ("Q", "scales", "zero_points"), strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("leading", "k", "bits", "group_size", "asymmetric"), INT_CASES)
def test_integer_codes_match_reference(
    threads: int, dtype: type, leading: tuple[int, ...], k: int, bits: int, group_size: int, asymmetric: bool
) -> None:
    x = values(np.random.default_rng(k + bits), (*leading, k), dtype)
    attributes = int_attributes(bits, group_size, asymmetric)
    assert_outputs_equal(run(x, attributes, threads), reference(x, attributes))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("leading", "k", "format", "per_channel", "scale"), TERNARY_CASES)
def test_ternary_codes_match_reference(
    threads: int, dtype: type, leading: tuple[int, ...], k: int, format: str, per_channel: bool, scale: str
) -> None:
    x = values(np.random.default_rng(k), (*leading, k), dtype)
    attributes = ternary_attributes(format, per_channel, scale)
    assert_outputs_equal(run(x, attributes, threads), reference(x, attributes))


@pytest.mark.parametrize("scale", ["absmean", "least_squares"])
@pytest.mark.parametrize("format", ["2bit", "base3"])
def test_exactly_ternary_weights_are_recovered(format: str, scale: str, rng: np.random.Generator) -> None:
    t = rng.integers(-1, 2, size=(6, 50), dtype=np.int8)
    alpha = np.float32(0.375)
    q, scales, zero_points = run(t.astype(np.float32) * alpha, ternary_attributes(format, False, scale))
    np.testing.assert_array_equal(q, pack_ternary(t, TernaryPacking(format)))
    np.testing.assert_array_equal(scales, [alpha])
    assert zero_points.shape == (0,)


@pytest.mark.parametrize("scale", ["absmean", "least_squares"])
def test_scale_rules_by_hand(scale: str) -> None:
    # row 0 exactly ternary × 2 (kept under both rules); row 1 not: γ = 0.55, α = 1; row 2 all zero
    x = np.array([[2, 0, -2, 2], [1, -1, 0, 0.2], [0, 0, 0, 0]], np.float32)
    _, scales, _ = run(x, ternary_attributes("2bit", True, scale))
    second = np.float32(1.0) if scale == "least_squares" else np.float32(2.2 / 4)
    np.testing.assert_array_equal(scales, np.array([2.0, second, 0.0], np.float32))


@pytest.mark.parametrize(
    "attributes",
    [
        int_attributes(4, 32, False),
        int_attributes(4, 32, True),
        int_attributes(1, 32, False),
        ternary_attributes("2bit", True),
        ternary_attributes("base3", False),
    ],
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nonfinite_rows_get_nan_scales_and_zero_codes(
    attributes: dict[str, object], dtype: type, rng: np.random.Generator
) -> None:
    x = values(rng, (5, 100), dtype)
    x[1, 3], x[3, 99], x[4, 0] = np.nan, np.inf, -np.inf
    q, scales, zero_points = run(x, attributes, threads=2)
    if attributes["bits"] == 0 and not attributes["per_channel"]:
        assert np.isnan(scales).all()
    else:
        assert np.isnan(scales[[1, 3, 4]]).all() and not np.isnan(np.delete(scales, [1, 3, 4], axis=0)).any()
    assert_outputs_equal([q, scales, zero_points], reference(x, attributes))


@pytest.mark.parametrize(
    "attributes",
    [int_attributes(8, 32, True), int_attributes(2, 16, False), ternary_attributes("base3", True)],
)
def test_quantize_then_dequantize(attributes: dict[str, object], rng: np.random.Generator) -> None:
    # The pair the compiler inserts for a tensor computed at run time.
    k = 70
    asymmetric = bool(attributes.get("asymmetric", 0))
    dq_attributes = {"K": k, "bits": attributes["bits"], "to": TensorProto.FLOAT}
    dq_attributes |= (
        {"format": attributes["format"]}
        if attributes["bits"] == 0
        else {"group_size": attributes["group_size"]}
    )
    nodes = [
        helper.make_node(
            runtime.QUANTIZE_LOWBIT, ["X"], ["Q", "S", "Z"], domain=runtime.DOMAIN, **attributes
        ),
        helper.make_node(
            runtime.DEQUANTIZE_LOWBIT,
            ["Q", "S"] + (["Z"] if asymmetric else []),
            ["Y"],
            domain=runtime.DOMAIN,
            **dq_attributes,
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "round_trip",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["rows", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["rows", k])],
    )
    x = values(rng, (9, k), np.float32)
    y = runtime.session(helper.make_model(graph, opset_imports=OPSETS)).run(None, {"X": x})[0]
    q, s, z = reference(x, attributes)
    expected = dequantize_lowbit_reference(
        q,
        s,
        z if asymmetric else None,
        k,
        int(attributes["bits"]),
        str(attributes.get("format", "2bit")),
        int(attributes.get("group_size", 0)),
    )
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize(
    ("attributes", "shapes"),
    [
        (int_attributes(4, 32, True), [["a", "b", 64], ["a", "b", 4], ["a", "b", 4]]),
        (int_attributes(1, 32, False), [["a", "b", 16], ["a", "b", 4], [0]]),
        (ternary_attributes("base3", False), [["a", "b", 20], [1], [0]]),
    ],
)
def test_output_shapes_are_inferred(attributes: dict[str, object], shapes: list[list[object]]) -> None:
    session = runtime.session(quantize_model(np.float32, attributes, ["a", "b", 100]))
    assert [o.shape for o in session.get_outputs()] == shapes
    assert [o.type for o in session.get_outputs()] == ["tensor(uint8)", "tensor(float)", "tensor(uint8)"]


# --- errors ---


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        (
            {"bits": 3, "group_size": 32, "asymmetric": 0},
            "[QuantizeLowBit] bits=3 is invalid; use 8, 4, 2 or 1",
        ),
        (
            {"bits": 4, "group_size": 0, "asymmetric": 0},
            "[QuantizeLowBit] group_size=0 is invalid for 4-bit codes",
        ),
        ({"bits": 1, "group_size": 32, "asymmetric": 1}, "[QuantizeLowBit] 1-bit codes are symmetric only"),
        (
            {"bits": 4, "group_size": 32, "asymmetric": 2},
            "[QuantizeLowBit] asymmetric=2 is invalid; use 0 or 1",
        ),
        ({"bits": 4, "group_size": 32}, "[QuantizeLowBit] attribute 'asymmetric' (int) is missing"),
        ({"bits": 0, "format": "2bit"}, "[QuantizeLowBit] attribute 'per_channel' (int) is missing"),
        (
            {"bits": 0, "format": "2bit", "per_channel": 0},
            "[QuantizeLowBit] attribute 'ternary_scale' (string) is missing",
        ),
        (
            {"bits": 0, "format": "2bit", "per_channel": 0, "ternary_scale": "absmax"},
            "[QuantizeLowBit] ternary_scale='absmax' is invalid; use 'absmean' or 'least_squares'",
        ),
        (
            {"bits": 0, "format": "3bit", "per_channel": 0, "ternary_scale": "absmean"},
            "[QuantizeLowBit] format='3bit' is not a ternary format",
        ),
    ],
)
def test_bad_attributes_are_rejected(attributes: dict[str, object], message: str) -> None:
    with pytest.raises(UnsupportedModelError) as info:
        runtime.session(quantize_model(np.float32, attributes, ["rows", 64]))
    assert message in str(info.value)


def test_x_needs_a_nonempty_last_axis() -> None:
    session = runtime.session(quantize_model(np.float32, int_attributes(4, 32, False), ["rows", "k"]))
    with pytest.raises(Exception, match=r"\[QuantizeLowBit\] X has shape \[3, 0\]; it needs a last axis"):
        session.run(None, {"X": np.zeros((3, 0), np.float32)})
