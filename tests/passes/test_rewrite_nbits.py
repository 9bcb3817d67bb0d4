"""rewrite, LINEAR layers the model quantized already (passes/rewrite/_nbits.py and linear.py case 0):
MatMulNBits and QDQ weights kept, or read back as float weights and re-quantized."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from bitnet_onnx.core.dtypes import DType
from bitnet_onnx.core.layers import Layer, LayerType
from bitnet_onnx.passes._match import GraphView
from bitnet_onnx.passes.rewrite._nbits import dequantize, needs_requantize
from tests.passes.rewrite_graphs import make_plan, ops, rewrite, run

F32 = np.float32
M = 3


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Rows of `bits`-wide codes packed 8/bits to a byte, the first in the lowest bits."""
    per_byte = 8 // bits
    rows = codes.reshape(codes.shape[0], -1, per_byte).astype(np.uint16)
    return (rows << (np.arange(per_byte) * bits)).sum(-1).astype(np.uint8)


def _nbits(bits: int, block: int, k: int, n: int, zero_points: str, bias: bool, seed: int = 0):
    """A MatMulNBits graph, its layer and the W [N, K] and bias it computes with (numpy reference)."""
    rng = np.random.default_rng(seed)
    blocks = math.ceil(k / block)
    codes = rng.integers(0, 1 << bits, (n, blocks * block))
    scales = rng.uniform(0.01, 0.1, (n, blocks)).astype(F32)
    inputs = [None, gs.Constant("B", _pack(codes, bits).reshape(n, blocks, block * bits // 8))]
    inputs.append(gs.Constant("scales", scales.reshape(-1)))
    if zero_points == "none":
        zero = np.full((n, blocks), 1 << (bits - 1), F32)
        inputs.append(gs.Variable.empty())
    elif zero_points == "packed":
        zero_codes = rng.integers(0, 1 << bits, (n, blocks))
        padded = np.zeros((n, math.ceil(blocks * bits / 8) * 8 // bits), np.int64)
        padded[:, :blocks] = zero_codes
        zero = zero_codes.astype(F32)
        inputs.append(gs.Constant("zero_points", _pack(padded, bits).reshape(-1)))
    else:  # in the scales' float type
        zero = rng.uniform(0, (1 << bits) - 1, (n, blocks)).astype(F32)
        inputs.append(gs.Constant("zero_points", zero.reshape(-1)))
    w = ((codes.reshape(n, blocks, block) - zero[..., None]) * scales[..., None]).reshape(n, -1)[:, :k]
    b = rng.standard_normal(n).astype(F32) if bias else None
    inputs += [gs.Variable.empty(), gs.Constant("bias", b)] if bias else []
    x = gs.Variable("x", dtype=F32, shape=[M, k])
    y = gs.Variable("y", dtype=F32, shape=[M, n])
    inputs[0] = x
    attrs = {"K": k, "N": n, "bits": bits, "block_size": block}
    node = gs.Node("MatMulNBits", "/proj/MatMulNBits", attrs, inputs, [y], domain="com.microsoft")
    graph = gs.Graph(nodes=[node], inputs=[x], outputs=[y], opset=17, import_domains=_domains())
    layer = Layer(
        "proj", LayerType.LINEAR, 0, (node.name,), "test", weight="B", weight_shape=(n, k), weight_nk=True,
        bias="bias" if bias else None,
    )  # fmt: skip
    return graph, layer, w.astype(F32), b


def _domains() -> list[onnx.OperatorSetIdProto]:
    return [onnx.helper.make_opsetid("", 17), onnx.helper.make_opsetid("com.microsoft", 1)]


def _x(k: int) -> np.ndarray:
    return np.random.default_rng(9).standard_normal((M, k)).astype(F32)


CASES = [
    (4, 32, 64, 8, "none", False),
    (4, 16, 40, 6, "packed", True),  # K not a multiple of the block: the last block is padded
    (4, 32, 64, 5, "float", False),
    (2, 16, 48, 4, "packed", False),
    (8, 16, 32, 3, "none", True),
]


@pytest.mark.parametrize(("bits", "block", "k", "n", "zero_points", "bias"), CASES)
def test_dequantize_reads_the_weights_onnxruntime_computes_with(bits, block, k, n, zero_points, bias):
    graph, _, w, b = _nbits(bits, block, k, n, zero_points, bias)
    node = graph.nodes[0]
    np.testing.assert_allclose(dequantize(node, GraphView(graph)), w, rtol=1e-6, atol=0)
    x = _x(k)
    (y,) = run(gs.export_onnx(graph), {"x": x})
    np.testing.assert_allclose(y, x @ w.T + (b if bias else 0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("weights", "bits", "expected"),
    [("BITNET158", 4, True), ("I2", 4, True), ("I4", 4, False), ("I8", 4, False), ("F16", 4, False),
     ("I2", 2, False), ("I4", 8, True), ("BITNET158", 2, True), ("I1", 2, True)],
)  # fmt: skip
def test_only_fewer_bits_re_quantize(weights, bits, expected):
    node = gs.Node("MatMulNBits", attrs={"bits": bits})
    assert needs_requantize(node, DType[weights]) is expected


@pytest.mark.parametrize(("activations", "level"), [("F32", None), ("F16", None), ("I8", 4)])
def test_a_plan_of_as_many_bits_or_more_keeps_the_node(activations, level):
    graph, layer, w, b = _nbits(4, 16, 40, 6, "packed", True)
    before = gs.export_onnx(graph.copy())
    result, _ = rewrite(graph, [make_plan(layer, weights="I4", activations=activations)])
    model = gs.export_onnx(graph)
    node = next(n for n in model.graph.node if n.op_type == "MatMulNBits")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs.get("accuracy_level") == level
    assert {i.name: i for i in model.graph.initializer}.keys() == {i.name for i in before.graph.initializer}
    assert "kept: 4-bit MatMulNBits (block 16)" in result.changes[0].detail
    x = _x(40)
    (y,) = run(model, {"x": x})
    tolerance = 0.05 if activations == "I8" else 1e-4  # accuracy_level 4 quantizes x per block
    np.testing.assert_allclose(y, x @ w.T + b, rtol=tolerance, atol=tolerance * np.abs(x @ w.T).max())


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("weights", ["BITNET158", "I2"])
def test_fewer_bits_re_quantize_the_dequantized_weights(weights, bias):
    """The re-quantized layer computes exactly what the same plan makes of the float layer whose
    weights are the node's dequantized ones."""
    graph, layer, w, b = _nbits(4, 32, 64, 8, "packed", bias)
    rewrite(graph, [make_plan(layer, weights=weights, activations="I8")])
    model = gs.export_onnx(graph)
    assert "MatMulNBits" not in ops(model)
    x = gs.Variable("x", dtype=F32, shape=[M, 64])
    y = gs.Variable("y", dtype=F32, shape=[M, 8])
    product = gs.Variable("product", dtype=F32, shape=[M, 8]) if bias else y
    nodes = [
        gs.Node("MatMul", "/proj/MatMul", {}, [x, gs.Constant("W", np.ascontiguousarray(w.T))], [product])
    ]
    if bias:
        nodes.append(gs.Node("Add", "/proj/Add", {}, [product, gs.Constant("bias", b)], [y]))
    float_graph = gs.Graph(nodes=nodes, inputs=[x], outputs=[y], opset=17)
    float_layer = Layer(
        "proj", LayerType.LINEAR, 0, tuple(n.name for n in nodes), "test", weight="W", weight_shape=(64, 8),
        weight_nk=False, bias="bias" if bias else None,
    )  # fmt: skip
    rewrite(float_graph, [make_plan(float_layer, weights=weights, activations="I8")])
    feeds = {"x": _x(64)}
    (got,) = run(model, feeds)
    (want,) = run(gs.export_onnx(float_graph), feeds)
    np.testing.assert_array_equal(got, want)


def _qdq():
    """MatMul(x, DequantizeLinear(W codes [K, N], per-column scales, zero points 0)) as QDQ writes it."""
    rng = np.random.default_rng(3)
    k, n = 32, 6
    codes = rng.integers(-100, 100, (k, n)).astype(np.int8)
    scales = rng.uniform(0.001, 0.01, n).astype(F32)
    x = gs.Variable("x", dtype=F32, shape=[M, k])
    w = gs.Variable("w_dq", dtype=F32, shape=[k, n])
    y = gs.Variable("y", dtype=F32, shape=[M, n])
    zero = gs.Constant("w_zero", np.zeros(n, np.int8))
    dq = gs.Node(
        "DequantizeLinear", "/proj/DequantizeLinear", {"axis": 1},
        [gs.Constant("w_codes", codes), gs.Constant("w_scales", scales), zero],
        [w],
    )  # fmt: skip
    matmul = gs.Node("MatMul", "/proj/MatMul", {}, [x, w], [y])
    graph = gs.Graph(nodes=[dq, matmul], inputs=[x], outputs=[y], opset=17)
    layer = Layer(
        "proj", LayerType.LINEAR, 0, (matmul.name, dq.name), "test", weight="w_codes", weight_shape=(k, n),
        weight_nk=False, weight_nodes=(dq.name,),
    )  # fmt: skip
    return graph, layer, codes.astype(F32) * scales


@pytest.mark.parametrize(("weights", "activations"), [("I8", "F32"), ("F16", "F16"), ("F32", "I8")])
def test_qdq_weights_are_kept_for_as_many_bits_or_more(weights, activations):
    graph, layer, w = _qdq()
    rewrite(graph, [make_plan(layer, weights=weights, activations=activations)])
    model = gs.export_onnx(graph)
    inits = {i.name: i for i in model.graph.initializer}
    assert inits["w_codes"].data_type == onnx.TensorProto.INT8 and ops(model)["DequantizeLinear"] >= 1
    assert not any(
        i.data_type in (onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT) and len(i.dims) == 2
        for i in inits.values()
    )
    x = _x(32)
    (y,) = run(model, {"x": x})
    (want,) = run(gs.export_onnx(_qdq()[0]), {"x": x})  # onnxruntime fuses the QDQ pair itself
    np.testing.assert_allclose(want, x @ w, rtol=0.05, atol=0.02)
    if activations == "F32":
        np.testing.assert_array_equal(y, want)
    else:
        np.testing.assert_allclose(y, want, rtol=0.05, atol=0.03 * np.abs(want).max())


def test_qdq_weights_re_quantize_for_fewer_bits():
    graph, layer, _ = _qdq()
    rewrite(graph, [make_plan(layer, weights="BITNET158", activations="I8")])
    model = gs.export_onnx(graph)
    assert ops(model)["BitLinear"] == 1 and "w_codes" not in {i.name for i in model.graph.initializer}
