"""rewrite, ATTENTION layers (passes/rewrite/attention.py): float islands and integer products."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from bitnet_onnx.core.dtypes import DType
from bitnet_onnx.core.errors import ConfigError
from bitnet_onnx.core.layers import Layer, LayerType
from tests.passes.rewrite_graphs import (
    export,
    initializers,
    make_plan,
    ops,
    qdq_per_tensor,
    relative_error,
    rewrite,
    round_to,
    run,
)

F32 = np.float32
B, HEADS, S, D = 2, 3, 5, 8
SCALE = F32(1 / np.sqrt(D))


def _attention() -> tuple[gs.Graph, Layer]:
    """softmax(q·kᵀ·scale + mask)·v with q, k, v [B, H, S, D] and a causal mask table [S, S]."""
    q, k, v = (gs.Variable(n, dtype=F32, shape=[B, HEADS, S, D]) for n in ("q", "k", "v"))
    mask = np.triu(np.full((S, S), np.finfo(np.float32).min, F32), k=1)
    names = ("Transpose", "MatMul", "Mul", "Add", "Softmax", "MatMul_1")
    t = {n: gs.Variable(f"/attn/{n}_output_0", dtype=F32) for n in names}
    t["MatMul_1"].shape = [B, HEADS, S, D]
    nodes = [
        gs.Node("Transpose", "/attn/Transpose", {"perm": [0, 1, 3, 2]}, [k], [t["Transpose"]]),
        gs.Node("MatMul", "/attn/MatMul", {}, [q, t["Transpose"]], [t["MatMul"]]),
        gs.Node(
            "Mul", "/attn/Mul", {}, [t["MatMul"], gs.Constant("/attn/scale", np.array(SCALE))], [t["Mul"]]
        ),
        gs.Node("Add", "/attn/Add", {}, [t["Mul"], gs.Constant("/attn/mask", mask)], [t["Add"]]),
        gs.Node("Softmax", "/attn/Softmax", {"axis": -1}, [t["Add"]], [t["Softmax"]]),
        gs.Node("MatMul", "/attn/MatMul_1", {}, [t["Softmax"], v], [t["MatMul_1"]]),
    ]
    graph = gs.Graph(nodes=nodes, inputs=[q, k, v], outputs=[t["MatMul_1"]], opset=17)
    order = ("/attn/Softmax", "/attn/Add", "/attn/Mul", "/attn/MatMul", "/attn/Transpose", "/attn/MatMul_1")
    return graph, Layer("attn", LayerType.ATTENTION, 0, order, "test", block="attn")


def _feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    return {n: rng.standard_normal((B, HEADS, S, D)).astype(F32) for n in ("q", "k", "v")}


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _reference(q, k, v, rounding=lambda a: a) -> np.ndarray:
    mask = np.triu(np.full((S, S), np.finfo(np.float32).min, F32), k=1)
    scores = rounding(q) @ np.swapaxes(rounding(k), -1, -2)
    return rounding(_softmax(scores * SCALE + mask)) @ rounding(v)


def _qdq(x: np.ndarray) -> np.ndarray:
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = F32((hi - lo) / 255.0)
    zero = np.clip(np.rint(-lo / scale), 0, 255)
    return ((np.clip(np.rint(x / scale) + zero, 0, 255) - zero) * scale).astype(F32)


@pytest.mark.kernels
def test_case_1_f16_attention_is_a_cast_island_with_its_constants_in_float16():
    graph, layer = _attention()
    rewrite(graph, [make_plan(layer, default="F16")])
    model = export(graph)
    assert ops(model) == {"Cast": 4, "Transpose": 1, "MatMul": 2, "Mul": 1, "Add": 1, "Softmax": 1}
    arrays = initializers(model)
    assert {a.dtype for a in arrays.values()} == {np.dtype(np.float16)}
    assert arrays["attn.mask_float16"].min() == np.float16(-65504)  # float32 min saturates
    feeds = _feeds()
    (out,) = run(model, feeds)
    expected = _reference(**feeds, rounding=lambda a: round_to(a, DType.F16))
    np.testing.assert_allclose(out, expected, rtol=5e-3, atol=5e-3)


@pytest.mark.kernels
def test_case_2_int8_attention_runs_both_products_on_integers():
    graph, layer = _attention()
    result, _ = rewrite(graph, [make_plan(layer, activations="I8")])
    model = export(graph)
    counts = ops(model)
    assert counts["MatMulInteger"] == 2 and counts["DynamicQuantizeLinear"] == 4 and "MatMul" not in counts
    assert counts["Softmax"] == 1 and counts["Add"] == 1
    assert result.changes[0].detail.startswith("MatMulInteger")
    feeds = _feeds()
    (out,) = run(model, feeds)
    q, k, v = feeds["q"], feeds["k"], feeds["v"]
    mask = np.triu(np.full((S, S), np.finfo(np.float32).min, F32), k=1)
    scores = _qdq(q) @ _qdq(np.swapaxes(k, -1, -2))
    expected = _qdq(_softmax(scores * SCALE + mask)) @ _qdq(v)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    assert relative_error(out, _reference(q, k, v)) < 0.05


def test_case_2_an_attention_layer_without_two_products_is_refused():
    graph, layer = _attention()
    layer = Layer(layer.name, layer.layer_type, 0, layer.nodes[:-1], "test")  # the ·V MatMul left out
    with pytest.raises(ConfigError, match=r"'attn'.*1 MatMul.*F16 or F32"):
        rewrite(graph, [make_plan(layer, activations="I8")])


def _fused_attention() -> tuple[gs.Graph, Layer]:
    q, k, v = (gs.Variable(n, dtype=F32, shape=[B, S, HEADS * D]) for n in ("q", "k", "v"))
    y = gs.Variable("y", dtype=F32, shape=[B, S, HEADS * D])
    node = gs.Node(
        "MultiHeadAttention", "/attn/MHA", {"num_heads": HEADS}, [q, k, v], [y], domain="com.microsoft"
    )
    graph = gs.Graph(nodes=[node], inputs=[q, k, v], outputs=[y], opset=17)
    return graph, Layer("attn", LayerType.ATTENTION, 0, (node.name,), "test")


@pytest.mark.kernels
def test_case_3_int8_fused_attention_computes_in_float_on_int8_emulated_inputs():
    graph, layer = _fused_attention()
    rewrite(graph, [make_plan(layer, activations="I8")])
    model = export(graph)
    assert ops(model) == {"DynamicQuantizeLinear": 3, "DequantizeLinear": 3, "MultiHeadAttention": 1}
    rng = np.random.default_rng(5)
    feeds = {n: rng.standard_normal((B, S, HEADS * D)).astype(F32) for n in ("q", "k", "v")}
    (got,) = run(model, feeds)
    (want,) = run(export(_fused_attention()[0]), {n: qdq_per_tensor(x) for n, x in feeds.items()})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    (exact,) = run(export(_fused_attention()[0]), feeds)
    assert 0 < relative_error(got, exact) < 0.05


def test_case_1_a_fused_attention_op_is_an_island_of_one_node():
    x = gs.Variable("x", dtype=F32, shape=[B, S, HEADS * D])
    y = gs.Variable("y", dtype=F32, shape=[B, S, HEADS * D])
    node = gs.Node(
        "MultiHeadAttention", "/attn/MHA", {"num_heads": HEADS}, [x, x, x], [y], domain="com.microsoft"
    )
    graph = gs.Graph(nodes=[node], inputs=[x], outputs=[y], opset=17)
    layer = Layer("attn", LayerType.ATTENTION, 0, (node.name,), "test")
    rewrite(graph, [make_plan(layer, default="F16")])
    cast_in = node.inputs[0].inputs[0]
    assert cast_in.op == "Cast" and all(t is node.inputs[0] for t in node.inputs)
    assert node.outputs[0].dtype == np.float16 and graph.outputs[0].dtype == F32
