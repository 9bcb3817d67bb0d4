"""DequantizeLowBit through onnxruntime against bitnet_onnx.numerics.quantization.dequantize_lowbit_reference.

w = float32(q) · s is one rounding, so outputs (float32 and float16) are compared for exact
equality, on every ISA path, with 1 and 2 threads.
"""

from __future__ import annotations

import numpy as np
import pytest
from lowbit_graphs import OPSETS, dequantize_model, group_weights
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from bitnet_onnx import runtime
from bitnet_onnx.core.dtypes import TernaryPacking
from bitnet_onnx.core.errors import UnsupportedModelError
from bitnet_onnx.numerics.packing import pack_int, pack_ternary, ternary_row_bytes
from bitnet_onnx.numerics.quantization import dequantize_lowbit_reference

pytestmark = pytest.mark.kernels

OUTPUT_TYPES = [TensorProto.FLOAT, TensorProto.FLOAT16]

# (leading dims, K, bits, group size, asymmetric): rows 0, 1, 3, 17, 128 (and a 3-d tensor), K in
# {32, 100, 4096}, every bit width, groups that do not divide K and groups of 2 elements.
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
]


def int_operands(
    leading: tuple[int, ...], k: int, bits: int, group_size: int, asymmetric: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    rows = int(np.prod(leading))
    gw = group_weights(max(rows, 1), k, bits, group_size, asymmetric)
    packed = pack_int(gw.codes, bits, group_size, gw.zero_points)[:rows]
    groups = gw.scales.shape[-1]
    zp = gw.zero_points[:rows].reshape(*leading, groups) if asymmetric else None
    return packed.reshape(*leading, packed.shape[-1]), gw.scales[:rows].reshape(*leading, groups), zp


def run(model: object, feeds: dict[str, np.ndarray], threads: int = 1) -> np.ndarray:
    return runtime.session(model, threads=threads).run(None, feeds)[0]


def int_attributes(k: int, bits: int, group_size: int, to: int) -> dict[str, object]:
    return {"K": k, "bits": bits, "group_size": group_size, "to": to}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("to", OUTPUT_TYPES)
@pytest.mark.parametrize(("leading", "k", "bits", "group_size", "asymmetric"), INT_CASES)
def test_integer_rows_match_reference(
    isa: str,
    threads: int,
    to: int,
    leading: tuple[int, ...],
    k: int,
    bits: int,
    group_size: int,
    asymmetric: bool,
) -> None:
    q, scales, zp = int_operands(leading, k, bits, group_size, asymmetric)
    feeds = {"Q": q, "scales": scales} | ({"zero_points": zp} if zp is not None else {})
    y = run(dequantize_model(int_attributes(k, bits, group_size, to), zp is not None, to), feeds, threads)
    expected = dequantize_lowbit_reference(q, scales, zp, k, bits, group_size=group_size, to=to)
    assert y.dtype == expected.dtype and y.shape == (*leading, k)
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("to", OUTPUT_TYPES)
@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("format", ["2bit", "base3"])
@pytest.mark.parametrize(("leading", "k"), [((0,), 32), ((1,), 100), ((17,), 4096), ((2, 3), 7)])
def test_ternary_rows_match_reference(
    isa: str, to: int, per_row: bool, format: str, leading: tuple[int, ...], k: int, rng: np.random.Generator
) -> None:
    rows = int(np.prod(leading))
    packing = TernaryPacking(format)
    if rows:
        q = pack_ternary(rng.integers(-1, 2, size=(*leading, k), dtype=np.int8), packing)
    else:  # pack_ternary cannot reshape an empty array
        q = np.zeros((*leading, ternary_row_bytes(k, packing)), np.uint8)
    scales = (rng.random(rows if per_row else 1) + 0.25).astype(np.float32)
    attributes = {"K": k, "bits": 0, "format": format, "to": to}
    y = run(dequantize_model(attributes, False, to), {"Q": q, "scales": scales}, threads=2)
    expected = dequantize_lowbit_reference(q, scales, None, k, 0, format=format, to=to)
    assert y.dtype == expected.dtype and y.shape == (*leading, k)
    np.testing.assert_array_equal(y, expected)


def test_gathered_embedding_rows(isa: str, rng: np.random.Generator) -> None:
    # What the compiler emits for an embedding: Gather on the packed table (and on its scales and
    # zero points), then DequantizeLowBit of the gathered rows.
    vocab, k, bits, group_size = 50, 96, 4, 32
    q, scales, zp = int_operands((vocab,), k, bits, group_size, True)
    ids = np.array([[3, 0, 49], [7, 7, 1]], dtype=np.int64)
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["rows"]),
        helper.make_node("Gather", ["table_scales", "ids"], ["row_scales"]),
        helper.make_node("Gather", ["table_zp", "ids"], ["row_zp"]),
        helper.make_node(
            runtime.DEQUANTIZE_LOWBIT,
            ["rows", "row_scales", "row_zp"],
            ["Y"],
            domain=runtime.DOMAIN,
            **int_attributes(k, bits, group_size, TensorProto.FLOAT16),
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "embedding",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT16, ["batch", "seq", k])],
        [
            numpy_helper.from_array(a, n)
            for n, a in (("table", q), ("table_scales", scales), ("table_zp", zp))
        ],
    )
    y = run(helper.make_model(graph, opset_imports=OPSETS), {"ids": ids})
    expected = dequantize_lowbit_reference(
        q[ids], scales[ids], zp[ids], k, bits, group_size=group_size, to=10
    )
    np.testing.assert_array_equal(y, expected)


def test_nan_scales_give_nan_elements(isa: str) -> None:
    q, scales, _ = int_operands((3,), 64, 4, 32, False)
    scales = scales.copy()
    scales[1, 0] = np.nan
    y = run(dequantize_model(int_attributes(64, 4, 32, TensorProto.FLOAT), False), {"Q": q, "scales": scales})
    assert np.isnan(y[1, :32]).all() and np.isfinite(np.delete(y, 1, axis=0)).all()
    np.testing.assert_array_equal(y, dequantize_lowbit_reference(q, scales, None, 64, 4, group_size=32))


def test_empty_zero_points_mean_symmetric(isa: str) -> None:
    q, scales, _ = int_operands((3,), 64, 2, 32, False)
    feeds = {"Q": q, "scales": scales, "zero_points": np.zeros(0, np.uint8)}
    y = run(dequantize_model(int_attributes(64, 2, 32, TensorProto.FLOAT), True), feeds)
    np.testing.assert_array_equal(y, dequantize_lowbit_reference(q, scales, None, 64, 2, group_size=32))


def test_output_shape_is_inferred() -> None:
    model = dequantize_model(int_attributes(100, 4, 20, TensorProto.FLOAT), False)
    model.graph.input[0].type.tensor_type.shape.dim.add().dim_param = "rows"
    model.graph.input[0].type.tensor_type.shape.dim.add().dim_value = 50
    (output,) = runtime.session(model).get_outputs()
    assert output.shape == ["rows", 100] and output.type == "tensor(float)"


# --- errors ---


def creation_error(attributes: dict[str, object], output_type: int = TensorProto.FLOAT) -> str:
    with pytest.raises(UnsupportedModelError) as info:
        runtime.session(dequantize_model(attributes, False, output_type))
    return str(info.value)


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        (
            {"K": 64, "bits": 3, "group_size": 32, "to": 1},
            "[DequantizeLowBit] bits=3 is invalid; use 8, 4, 2 or 1",
        ),
        ({"K": 0, "bits": 4, "group_size": 32, "to": 1}, "[DequantizeLowBit] K=0 must be positive"),
        (
            {"K": 64, "bits": 4, "group_size": 3, "to": 1},
            "[DequantizeLowBit] group_size=3 is invalid for 4-bit",
        ),
        ({"K": 64, "bits": 4, "to": 1}, "[DequantizeLowBit] attribute 'group_size' (int) is missing"),
        ({"K": 64, "bits": 0, "to": 1}, "[DequantizeLowBit] attribute 'format' (string) is missing"),
        (
            {"K": 64, "bits": 0, "format": "3bit", "to": 1},
            "[DequantizeLowBit] format='3bit' is not a ternary format",
        ),
        ({"K": 64, "bits": 4, "group_size": 32, "to": 11}, "[DequantizeLowBit] to=11 is invalid"),
    ],
)
def test_bad_attributes_are_rejected(attributes: dict[str, object], message: str) -> None:
    assert message in creation_error(attributes)


def test_declared_output_type_must_match_to() -> None:
    message = creation_error(int_attributes(64, 4, 32, TensorProto.FLOAT16), TensorProto.FLOAT)
    assert "[DequantizeLowBit] to=10 but the node's output is declared with element type 1" in message
    assert "declare the output (graph output or value_info) as float16" in message


def test_trailing_empty_zero_points_are_absent(isa: str) -> None:
    q, scales, _ = int_operands((3,), 64, 4, 32, False)
    model = dequantize_model(int_attributes(64, 4, 32, TensorProto.FLOAT), True)
    model.graph.node[0].input[2] = ""
    del model.graph.input[2]
    y = run(model, {"Q": q, "scales": scales})
    np.testing.assert_array_equal(y, dequantize_lowbit_reference(q, scales, None, 64, 4, group_size=32))


def run_error(attributes: dict[str, object], feeds: dict[str, np.ndarray]) -> str:
    session = runtime.session(dequantize_model(attributes, "zero_points" in feeds))
    with pytest.raises(InvalidArgument) as info:
        session.run(None, feeds)
    return str(info.value)


def test_bad_operands_are_rejected_at_run_time() -> None:
    q, scales, zp = int_operands((3,), 100, 4, 20, True)
    attributes = int_attributes(100, 4, 20, TensorProto.FLOAT)
    assert (
        "[DequantizeLowBit] K=100 bits=4 group_size=20 needs Q of shape [..., 50], got [3, 49]"
        in run_error(attributes, {"Q": q[:, :-1], "scales": scales})
    )
    assert (
        "[DequantizeLowBit] scales have shape [3, 4]; they must be Q's leading dims + [ceil(K/G)] = [3, 5]"
        in (run_error(attributes, {"Q": q, "scales": scales[:, :4]}))
    )
    assert "[DequantizeLowBit] zero_points have shape [2, 5]" in run_error(
        attributes, {"Q": q, "scales": scales, "zero_points": zp[:2]}
    )
    one_bit = int_attributes(96, 1, 32, TensorProto.FLOAT)
    q1, s1, _ = int_operands((3,), 96, 1, 32, False)
    assert "[DequantizeLowBit] 1-bit codes are symmetric only" in run_error(
        one_bit, {"Q": q1, "scales": s1, "zero_points": np.ones((3, 3), np.uint8)}
    )


def test_bad_ternary_operands_are_rejected_at_run_time() -> None:
    attributes = {"K": 8, "bits": 0, "format": "2bit", "to": TensorProto.FLOAT}
    q = np.full((3, 2), 0x55, np.uint8)
    assert "[DequantizeLowBit] ternary scales hold 2 values" in run_error(
        attributes, {"Q": q, "scales": np.ones(2, np.float32)}
    )
    q[1, 1] = 0xFF
    assert "[DequantizeLowBit] Q row 1 byte 1 = 255 holds the 2-bit code 3" in run_error(
        attributes, {"Q": q, "scales": np.ones(1, np.float32)}
    )
    base3 = {"K": 10, "bits": 0, "format": "base3", "to": TensorProto.FLOAT}
    assert "[DequantizeLowBit] Q row 0 byte 0 = 243 exceeds 242" in run_error(
        base3, {"Q": np.full((1, 2), 243, np.uint8), "scales": np.ones(1, np.float32)}
    )
    assert "[DequantizeLowBit] ternary rows (bits=0) have no zero points" in run_error(
        attributes,
        {
            "Q": np.zeros((3, 2), np.uint8),
            "scales": np.ones(1, np.float32),
            "zero_points": np.ones(3, np.uint8),
        },
    )
