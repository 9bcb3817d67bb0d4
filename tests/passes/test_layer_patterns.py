"""The rule table: for every rule a graph it matches and one it misses, with the miss's reason."""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from bitnet_onnx.core.layers import LayerType
from bitnet_onnx.passes._match import GraphView, MatchResult
from bitnet_onnx.passes.layer_patterns import RULES, LayerMatch, LayerRule
from tests.passes.tiny_graphs import F32, GraphBuilder, gelu_erf, gelu_tanh, layer_norm, rms_norm, sdpa

_BY_NAME = {rule.name: rule for rule in RULES}


def _rule(name: str) -> LayerRule:
    return _BY_NAME[name]


def _match(rule: str, graph: gs.Graph, anchor: gs.Node) -> MatchResult:
    return _rule(rule).match(anchor, GraphView(graph))


def _ops(result: MatchResult) -> list[str]:
    match: LayerMatch = result.bindings["layer"]
    return [n.op for n in match.nodes]


def _first(graph: gs.Graph, op: str) -> gs.Node:
    return next(n for n in graph.nodes if n.op == op)


def test_table_is_data_ordered_most_specific_first() -> None:
    names = [r.name for r in RULES]
    assert len(set(names)) == len(names)
    priorities = [r.priority for r in RULES]
    assert priorities == sorted(priorities, reverse=True)
    # the composite forms are tried before the single-op rules that would take their parts
    assert names.index("gelu_tanh") < names.index("activation")
    assert names.index("silu") < names.index("activation")
    assert names.index("output_projection") < names.index("linear")
    assert names.index("layer_norm") < names.index("rms_norm")
    assert {r.layer_type for r in RULES} == set(LayerType) - {LayerType.OTHER}


# -- attention -------------------------------------------------------------------------------------


def test_attention_match_finds_core_and_projections() -> None:
    b = GraphBuilder()
    x = b.input("x", ("batch", "seq", 8))
    mask = b.input("mask", ("batch", 1, "seq", "seq"))
    out = sdpa(b, x, "/model/layers.0/self_attn", mask=mask)
    graph = b.graph(out)
    result = _match("attention", graph, _first(graph, "Softmax"))
    assert result
    assert sorted(_ops(result)) == sorted(
        ["Softmax", "Add", "Mul", "MatMul", "Transpose", "IsNaN", "Where", "MatMul"]
    )
    projections = [n.name.rsplit("/", 2)[-2] for n in result.bindings["layer"].projections]
    assert projections == ["q_proj", "k_proj", "v_proj", "o_proj"]


def test_attention_match_with_sqrt_scale_on_q_and_k() -> None:
    """HF's SDPA export: Mul(√s) on q and on kᵀ, the √s itself Sqrt(Constant) → Cast."""
    b = GraphBuilder()
    q, k, v = (b.input(n, ("batch", 2, "seq", 4)) for n in "qkv")
    root = b.op("Cast", [b.op("Sqrt", [b.scalar(0.5)])], to=1)
    scores = b.op(
        "MatMul", [b.op("Mul", [q, root]), b.op("Mul", [b.op("Transpose", [k], perm=[0, 1, 3, 2]), root])]
    )
    out = b.op("MatMul", [b.op("Softmax", [scores], axis=-1), v])
    graph = b.graph(out)
    result = _match("attention", graph, _first(graph, "Softmax"))
    assert result
    assert sorted(_ops(result)) == ["MatMul", "MatMul", "Mul", "Mul", "Softmax", "Transpose"]


def test_attention_nomatch_softmax_of_logits() -> None:
    b = GraphBuilder()
    x = b.input("x")
    logits = b.op("MatMul", [x, b.weight("classifier.weight", (8, 3))])
    graph = b.graph(b.op("Softmax", [logits], axis=-1))
    result = _match("attention", graph, _first(graph, "Softmax"))
    assert not result
    assert "not a MatMul of two activations" in result.reason
    assert result.node is _first(graph, "Softmax")


def test_attention_nomatch_without_probabilities_times_v() -> None:
    b = GraphBuilder()
    q, k = b.input("q", ("b", 2, "s", 4)), b.input("k", ("b", 2, "s", 4))
    scores = b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 1, 3, 2])])
    graph = b.graph(b.op("ReduceMax", [b.op("Softmax", [scores], axis=-1)]))
    result = _match("attention", graph, _first(graph, "Softmax"))
    assert not result
    assert "read by ReduceMax" in result.reason
    assert result.score >= 2  # the Softmax and the QKᵀ MatMul matched before the miss


def test_fused_attention_match_multihead_with_projections() -> None:
    b = GraphBuilder()
    x = b.input("x", ("b", "s", 8))
    q, k, v = (
        b.op("MatMul", [x, b.weight(f"attn.{n}_proj.weight", (8, 8))], f"/attn/{n}_proj") for n in "qkv"
    )
    out = b.op("MultiHeadAttention", [q, k, v], "/attn", domain="com.microsoft", num_heads=2)
    out = b.op("MatMul", [out, b.weight("attn.o_proj.weight", (8, 8))], "/attn/o_proj")
    graph = b.graph(out)
    result = _match("fused_attention", graph, _first(graph, "MultiHeadAttention"))
    assert result
    assert len(result.bindings["layer"].projections) == 4


def test_fused_attention_nomatch_foreign_domain() -> None:
    b = GraphBuilder()
    x = b.input("x", ("b", "s", 8))
    graph = b.graph(b.op("Attention", [x, x, x], domain="my.ops"))
    result = _match("fused_attention", graph, graph.nodes[0])
    assert not result
    assert "domain 'my.ops'" in result.reason


def test_fused_attention_match_onnxruntime_attention_with_weight() -> None:
    b = GraphBuilder()
    x = b.input("x", ("b", "s", 8))
    out = b.op(
        "Attention",
        [x, b.weight("attn.qkv.weight", (8, 24)), gs.Constant("attn.qkv.bias", np.zeros(24, F32))],
        domain="com.microsoft",
        num_heads=2,
    )
    graph = b.graph(out)
    result = _match("fused_attention", graph, graph.nodes[0])
    assert result
    match = result.bindings["layer"]
    assert (match.weight.constant.name, match.bias.constant.name) == ("attn.qkv.weight", "attn.qkv.bias")


# -- normalization -----------------------------------------------------------------------------------


def test_fused_norm_match_layer_normalization() -> None:
    b = GraphBuilder()
    x = b.input("x")
    gamma, beta = gs.Constant("ln.weight", np.ones(8, F32)), gs.Constant("ln.bias", np.zeros(8, F32))
    graph = b.graph(b.op("LayerNormalization", [x, gamma, beta], axis=-1))
    result = _match("fused_norm", graph, graph.nodes[0])
    assert result
    match = result.bindings["layer"]
    assert (match.weight.constant.name, match.bias.constant.name) == ("ln.weight", "ln.bias")


def test_fused_norm_nomatch_foreign_domain() -> None:
    b = GraphBuilder()
    x = b.input("x")
    graph = b.graph(b.op("LayerNormalization", [x, gs.Constant("g", np.ones(8, F32))], domain="my.ops"))
    result = _match("fused_norm", graph, graph.nodes[0])
    assert not result
    assert "domain 'my.ops'" in result.reason


def test_layer_norm_match_decomposed() -> None:
    b = GraphBuilder()
    graph = b.graph(layer_norm(b, b.input("x"), "/encoder/LayerNorm"))
    result = _match("layer_norm", graph, _first(graph, "Sqrt"))
    assert result
    assert sorted(_ops(result)) == sorted(
        ["Sqrt", "Add", "ReduceMean", "Pow", "Sub", "ReduceMean", "Div", "Mul", "Add"]
    )
    match = result.bindings["layer"]
    assert (match.weight.constant.name, match.bias.constant.name) == (
        "encoder.LayerNorm.weight",
        "encoder.LayerNorm.bias",
    )


def test_layer_norm_nomatch_rms_norm() -> None:
    b = GraphBuilder()
    graph = b.graph(rms_norm(b, b.input("x"), "/norm"))
    result = _match("layer_norm", graph, _first(graph, "Sqrt"))
    assert not result
    assert "no centring" in result.reason


@pytest.mark.parametrize("style", ["reciprocal", "hf", "divide"])
def test_rms_norm_match(style: str) -> None:
    b = GraphBuilder()
    graph = b.graph(rms_norm(b, b.input("x"), "/model/norm", style=style))
    result = _match("rms_norm", graph, _first(graph, "Sqrt"))
    assert result
    expected = {
        "reciprocal": ["Sqrt", "Add", "ReduceMean", "Pow", "Reciprocal", "Mul", "Mul"],
        "hf": ["Sqrt", "Add", "ReduceMean", "Pow", "Div", "Mul", "Cast", "Cast", "Mul"],
        "divide": ["Sqrt", "Add", "ReduceMean", "Pow", "Div", "Mul"],
    }[style]
    assert sorted(_ops(result)) == sorted(expected)
    assert result.bindings["layer"].weight.constant.name == "model.norm.weight"
    # every node of the graph except the Constant nodes belongs to the norm
    assert len(result.bindings["layer"].nodes) == sum(1 for n in graph.nodes if n.op != "Constant")


def test_rms_norm_nomatch_sqrt_of_a_scale() -> None:
    b = GraphBuilder()
    x = b.input("x")
    graph = b.graph(b.op("Mul", [x, b.op("Sqrt", [b.input("d", (1,))])]))
    result = _match("rms_norm", graph, _first(graph, "Sqrt"))
    assert not result
    assert "not Add(variance, ε)" in result.reason


def test_rms_norm_nomatch_layer_norm() -> None:
    b = GraphBuilder()
    graph = b.graph(layer_norm(b, b.input("x"), "/ln"))
    result = _match("rms_norm", graph, _first(graph, "Sqrt"))
    assert not result
    assert "a LayerNorm, not an RMSNorm" in result.reason


# -- activations -------------------------------------------------------------------------------------


def test_gelu_erf_match() -> None:
    b = GraphBuilder()
    graph = b.graph(gelu_erf(b, b.input("x"), "/act"))
    result = _match("gelu_erf", graph, _first(graph, "Erf"))
    assert result
    assert sorted(_ops(result)) == ["Add", "Div", "Erf", "Mul", "Mul"]


def test_gelu_erf_match_dynamo_order() -> None:
    """torch's dynamo exporter: x · ((1 + erf(x / √2)) · 0.5)."""
    b = GraphBuilder()
    x = b.input("x")
    bracket = b.op("Add", [b.op("Erf", [b.op("Div", [x, b.scalar(math.sqrt(2.0))])]), b.scalar(1.0)])
    graph = b.graph(b.op("Mul", [x, b.op("Mul", [b.scalar(0.5), bracket])]))
    result = _match("gelu_erf", graph, _first(graph, "Erf"))
    assert result
    assert sorted(_ops(result)) == ["Add", "Div", "Erf", "Mul", "Mul"]


@pytest.mark.parametrize("square", ["Pow", "Mul"])
def test_squared_relu_match(square: str) -> None:
    b = GraphBuilder()
    r = b.op("Relu", [b.input("x")])
    graph = b.graph(b.op("Pow", [r, b.scalar(2.0)]) if square == "Pow" else b.op("Mul", [r, r]))
    result = _match("squared_relu", graph, _first(graph, "Relu"))
    assert result and _ops(result) == ["Relu", square]


@pytest.mark.parametrize("case", ["cube", "two_readers", "plain"])
def test_squared_relu_nomatch(case: str) -> None:
    b = GraphBuilder()
    r = b.op("Relu", [b.input("x")])
    if case == "cube":
        outputs = [b.op("Pow", [r, b.scalar(3.0)])]
    elif case == "two_readers":
        outputs = [b.op("Pow", [r, b.scalar(2.0)]), b.op("Neg", [r])]
    else:
        outputs = [r]
    graph = b.graph(*outputs)
    result = _match("squared_relu", graph, _first(graph, "Relu"))
    assert not result and "not squared" in result.reason


def test_gelu_erf_nomatch_plain_erf() -> None:
    b = GraphBuilder()
    graph = b.graph(b.op("Erf", [b.input("x")]))
    result = _match("gelu_erf", graph, graph.nodes[0])
    assert not result
    assert "not x/√2" in result.reason


def test_gelu_tanh_match() -> None:
    b = GraphBuilder()
    graph = b.graph(gelu_tanh(b, b.input("x"), "/mlp/act"))
    result = _match("gelu_tanh", graph, _first(graph, "Tanh"))
    assert result
    assert sorted(_ops(result)) == sorted(["Tanh", "Mul", "Add", "Mul", "Pow", "Add", "Mul", "Mul"])


def test_gelu_tanh_nomatch_pooler_tanh() -> None:
    b = GraphBuilder()
    graph = b.graph(b.op("Tanh", [b.input("x")]))
    result = _match("gelu_tanh", graph, graph.nodes[0])
    assert not result
    assert "√(2/π)" in result.reason


def test_silu_match() -> None:
    b = GraphBuilder()
    x = b.input("x")
    graph = b.graph(b.op("Mul", [x, b.op("Sigmoid", [x])]))
    result = _match("silu", graph, _first(graph, "Sigmoid"))
    assert result
    assert _ops(result) == ["Sigmoid", "Mul"]


def test_silu_nomatch_sigmoid_gate() -> None:
    b = GraphBuilder()
    x, y = b.input("x"), b.input("y")
    graph = b.graph(b.op("Mul", [y, b.op("Sigmoid", [x])]))
    result = _match("silu", graph, _first(graph, "Sigmoid"))
    assert not result
    assert "a gate, not SiLU" in result.reason


def test_activation_match_relu() -> None:
    b = GraphBuilder()
    graph = b.graph(b.op("Relu", [b.input("x")]))
    assert _match("activation", graph, graph.nodes[0])


def test_activation_nomatch_constant_input() -> None:
    b = GraphBuilder()
    graph = b.graph(b.op("Tanh", [b.scalar(0.5)]))
    result = _match("activation", graph, _first(graph, "Tanh"))
    assert not result
    assert "acts on a constant" in result.reason


# -- weight-bearing layers ---------------------------------------------------------------------------


def test_embedding_match() -> None:
    b = GraphBuilder()
    ids = b.input("ids", ("b", "s"), np.int64)
    graph = b.graph(b.op("Gather", [b.weight("model.embed_tokens.weight", (16, 8)), ids]))
    result = _match("embedding", graph, graph.nodes[0])
    assert result
    assert result.bindings["layer"].weight.constant.name == "model.embed_tokens.weight"


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("int_table", "holds integers"),
        ("constant_ids", "indices are constant"),
        ("axis1", "along axis 1"),
        ("dynamic_table", "graph input"),
    ],
)
def test_embedding_nomatch(case: str, reason: str) -> None:
    b = GraphBuilder()
    ids = b.input("ids", ("b", "s"), np.int64)
    table = b.weight("t", (16, 8))
    if case == "int_table":
        table = gs.Constant("position_ids", np.arange(32, dtype=np.int64).reshape(2, 16))
    if case == "constant_ids":
        ids = gs.Constant("idx", np.asarray([0, 1], np.int64))
    if case == "dynamic_table":
        table = b.input("table", (16, 8))
    graph = b.graph(b.op("Gather", [table, ids], axis=1 if case == "axis1" else 0))
    result = _match("embedding", graph, graph.nodes[0])
    assert not result
    assert reason in result.reason


def test_linear_match_matmul_with_bias() -> None:
    b = GraphBuilder()
    x = b.input("x")
    y = b.op("MatMul", [x, b.weight("dense.weight", (8, 4))], "/dense")
    graph = b.graph(b.op("Relu", [b.op("Add", [gs.Constant("dense.bias", np.zeros(4, F32)), y], "/dense")]))
    result = _match("linear", graph, _first(graph, "MatMul"))
    assert result
    match = result.bindings["layer"]
    assert _ops(result) == ["MatMul", "Add"]
    assert (match.weight.constant.name, match.bias.constant.name, match.weight_nk) == (
        "dense.weight",
        "dense.bias",
        False,
    )


def test_linear_match_gemm_trans_b() -> None:
    b = GraphBuilder()
    x = b.input("x")
    graph = b.graph(
        b.op("Gemm", [x, b.weight("fc.weight", (4, 8)), gs.Constant("fc.bias", np.zeros(4, F32))], transB=1)
    )
    result = _match("linear", graph, graph.nodes[0])
    assert result
    assert (result.bindings["layer"].weight_nk, result.bindings["layer"].bias.constant.name) == (
        True,
        "fc.bias",
    )


@pytest.mark.parametrize(
    ("case", "reason"),
    [("graph_input", "is a graph input, not a constant"), ("batched", "3-D"), ("relu", "not by Cast/")],
)
def test_linear_nomatch(case: str, reason: str) -> None:
    b = GraphBuilder()
    x = b.input("x", ("b", 2, "s", 8))
    weight = {
        "graph_input": b.input("w", (8, 4)),
        "batched": b.weight("w", (2, 8, 4)),
        "relu": b.op("Relu", [b.weight("w", (8, 4))]),
    }[case]
    graph = b.graph(b.op("MatMul", [x, weight]))
    result = _match("linear", graph, _first(graph, "MatMul"))
    assert not result
    assert reason in result.reason


def test_output_projection_match_through_bias_and_reshape() -> None:
    b = GraphBuilder()
    x = b.input("x")
    y = b.op(
        "Add",
        [
            b.op("MatMul", [x, b.weight("classifier.weight", (8, 3))]),
            gs.Constant("classifier.bias", np.zeros(3, F32)),
        ],
    )
    graph = b.graph(b.op("Reshape", [y, gs.Constant("shape", np.asarray([-1, 3], np.int64))]))
    assert _match("output_projection", graph, _first(graph, "MatMul"))


def test_output_projection_nomatch_hidden_linear() -> None:
    b = GraphBuilder()
    x = b.input("x")
    graph = b.graph(b.op("Relu", [b.op("MatMul", [x, b.weight("dense.weight", (8, 8))])]))
    result = _match("output_projection", graph, _first(graph, "MatMul"))
    assert not result
    assert "does not reach a graph output" in result.reason


def test_convolution_match() -> None:
    b = GraphBuilder()
    x = b.input("x", ("b", 3, 8, 8))
    graph = b.graph(
        b.op(
            "Conv",
            [
                x,
                b.weight("features.0.weight", (4, 3, 3, 3)),
                gs.Constant("features.0.bias", np.zeros(4, F32)),
            ],
        )
    )
    result = _match("convolution", graph, graph.nodes[0])
    assert result
    match = result.bindings["layer"]
    assert (match.weight.constant.name, match.bias.constant.name) == ("features.0.weight", "features.0.bias")


def test_convolution_nomatch_dynamic_weight() -> None:
    b = GraphBuilder()
    x, w = b.input("x", ("b", 3, 8, 8)), b.input("w", (4, 3, 3, 3))
    graph = b.graph(b.op("Conv", [x, w]))
    result = _match("convolution", graph, graph.nodes[0])
    assert not result
    assert "'w' is a graph input" in result.reason


def test_every_rule_has_a_match_and_a_nomatch_test() -> None:
    tests = [name for name in globals() if name.startswith("test_")]
    for rule in RULES:
        for kind in ("match", "nomatch"):
            assert any(t.startswith(f"test_{rule.name}_{kind}") for t in tests), (rule.name, kind)
