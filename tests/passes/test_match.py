"""_match: results with reasons, parent/child paths, constants through chains, linear weight orientation."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest

from bitnet_onnx.passes._match import (
    GraphView,
    MatchResult,
    linear_weight,
    match_child_path,
    match_parent_path,
    resolve_constant,
    split_constant,
)
from tests.passes.tiny_graphs import F32, GraphBuilder


def test_match_result_truthiness_and_score() -> None:
    ok = MatchResult.success(None, (), path=(1, 2))
    assert ok and ok.bindings["path"] == (1, 2) and ok.reason == ""
    miss = MatchResult.fail("no Sqrt here", None)
    assert not miss and miss.reason == "no Sqrt here" and miss.score == 0


def test_within_prefixes_the_reason_and_adds_the_callers_nodes() -> None:
    b = GraphBuilder()
    y = b.op("Relu", [b.input("x")])
    node = b.node(y)
    outer = MatchResult.fail("inner reason", None, (node,)).within((node, node), "outer: ")
    assert outer.reason == "outer: inner reason"
    assert outer.score == 3


def _norm_tail() -> tuple[gs.Graph, GraphBuilder]:
    b = GraphBuilder()
    x = b.input("x")
    std = b.op("Sqrt", [b.op("Add", [b.op("ReduceMean", [b.op("Pow", [x, b.scalar(2.0)])]), b.scalar(1e-5)])])
    out = b.op("Mul", [x, b.op("Reciprocal", [std])])
    return b.graph(out), b


def test_match_parent_path_binds_the_nodes_nearest_first() -> None:
    graph, _ = _norm_tail()
    sqrt = next(n for n in graph.nodes if n.op == "Sqrt")
    result = match_parent_path(GraphView(graph), sqrt, [("Add", 0), ("ReduceMean", None), ("Pow", 0)])
    assert result
    assert [n.op for n in result.bindings["path"]] == ["Add", "ReduceMean", "Pow"]


def test_match_parent_path_miss_names_the_node_and_what_it_found() -> None:
    graph, _ = _norm_tail()
    sqrt = next(n for n in graph.nodes if n.op == "Sqrt")
    result = match_parent_path(GraphView(graph), sqrt, [("Add", 0), (frozenset({"Sub", "Div"}), 0)])
    assert not result
    assert (
        "input 0 of Add" in result.reason
        and "Div/Sub" in result.reason
        and "comes from ReduceMean" in result.reason
    )
    assert result.score == 1 and result.node.op == "Add"


def test_match_child_path_follows_consumers() -> None:
    graph, _ = _norm_tail()
    sqrt = next(n for n in graph.nodes if n.op == "Sqrt")
    view = GraphView(graph)
    assert [n.op for n in match_child_path(view, sqrt, [("Reciprocal", 0), ("Mul", 1)]).bindings["path"]] == [
        "Reciprocal",
        "Mul",
    ]
    miss = match_child_path(view, sqrt, [("Reciprocal", 0), ("Mul", 0)])
    assert not miss and "not read by Mul at input 0" in miss.reason


def test_constants_through_computation_and_scalars() -> None:
    b = GraphBuilder()
    x = b.input("x")
    root = b.op("Cast", [b.op("Sqrt", [b.scalar(64.0)])], to=onnx.TensorProto.FLOAT)
    scaled = b.op("Mul", [x, root])
    graph = b.graph(scaled)
    view = GraphView(graph)
    assert view.is_constant(root) and not view.is_constant(x) and not view.is_constant(scaled)
    assert view.scalar(root) == pytest.approx(8.0)
    assert view.scalar(x) is None
    dynamic, constant = split_constant(view, b.node(scaled))
    assert (dynamic, constant) == (x, root)


def test_random_ops_are_not_constant() -> None:
    b = GraphBuilder()
    noise = b.op("RandomNormal", [], shape=[2])
    graph = b.graph(b.op("Add", [noise, b.input("x", (2,))]))
    assert not GraphView(graph).is_constant(noise)


def test_an_answer_is_never_inherited_by_a_tensor_created_after_it() -> None:
    # A pass keeps one view while it edits the graph: tensors it answered for may be dropped, and
    # the tensors it creates next must not take their ids (and with them the answer).
    b = GraphBuilder()
    graph = b.graph(b.op("Relu", [b.input("x")]))
    view = GraphView(graph)
    for i in range(200):
        folded = gs.Variable(f"folded_{i}", dtype=np.float32)
        gs.Node("Constant", attrs={"value": gs.Constant(f"c_{i}", np.ones(1, np.float32))}, outputs=[folded])
        assert view.is_constant(folded)
        del folded
        computed = gs.Variable(f"computed_{i}", dtype=np.float32)  # no producer: not a constant
        assert not view.is_constant(computed)


def _chain(kind: str, b: GraphBuilder, w: gs.Constant) -> gs.Tensor:
    if kind == "direct":
        return w
    if kind == "identity":
        return b.op("Identity", [w])
    if kind == "cast":
        return b.op("Cast", [w], to=onnx.TensorProto.FLOAT)
    if kind == "transpose":
        return b.op("Transpose", [w], perm=[1, 0])
    if kind == "reshape":
        return b.op("Reshape", [w, gs.Constant("shape", np.asarray([8, 4], np.int64))])
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["direct", "identity", "cast", "transpose", "reshape"])
def test_resolve_constant_through_chain(kind: str) -> None:
    b = GraphBuilder()
    stored = {"transpose": (4, 8), "reshape": (32,), "cast": (8, 4)}.get(kind, (8, 4))
    w = b.weight("w", stored, dtype=np.float16 if kind == "cast" else F32)
    seen = _chain(kind, b, w)
    graph = b.graph(b.op("MatMul", [b.input("x"), seen]))
    view = GraphView(graph)
    result = resolve_constant(view, seen)
    assert result
    chain = result.bindings["chain"]
    assert chain.constant is w
    assert chain.shape == (8, 4)
    assert (
        chain.ops
        == {
            "direct": (),
            "identity": ("Identity",),
            "cast": ("Cast",),
            "transpose": ("Transpose",),
            "reshape": ("Reshape",),
        }[kind]
    )
    expected = {
        "transpose": w.values.T,
        "reshape": w.values.reshape(8, 4),
        "cast": w.values.astype(F32),
    }.get(kind, w.values)
    np.testing.assert_array_equal(chain.evaluate(view), expected)


def test_resolve_constant_through_dequantize_per_axis() -> None:
    b = GraphBuilder()
    q = gs.Constant("w_q", np.arange(-16, 16, dtype=np.int8).reshape(8, 4))
    scale = gs.Constant("w_scale", np.asarray([0.5, 1.0, 2.0, 4.0], F32))
    seen = b.op("DequantizeLinear", [q, scale, gs.Constant("w_zero", np.zeros(4, np.int8))], axis=1)
    graph = b.graph(b.op("MatMul", [b.input("x"), seen]))
    view = GraphView(graph)
    chain = resolve_constant(view, seen).bindings["chain"]
    assert chain.constant is q and chain.ops == ("DequantizeLinear",)
    np.testing.assert_allclose(chain.evaluate(view), q.values.astype(F32) * scale.values)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("graph_input", "'w' is a graph input, not a constant"),
        ("constant_node", "comes from Constant node"),
        ("computed", "is computed by Relu"),
        ("dynamic_scale", "has a non-constant input 's'"),
    ],
)
def test_resolve_constant_misses(case: str, reason: str) -> None:
    b = GraphBuilder()
    if case == "graph_input":
        seen = b.input("w", (8, 4))
    elif case == "constant_node":
        seen = b.op("Constant", [], value=gs.Constant("v", np.ones((8, 4), F32)))
    elif case == "computed":
        seen = b.op("Relu", [b.weight("w", (8, 4))])
    else:
        seen = b.op("DequantizeLinear", [gs.Constant("q", np.ones((8, 4), np.int8)), b.input("s", (1,))])
    graph = b.graph(b.op("MatMul", [b.input("x"), seen]))
    result = resolve_constant(GraphView(graph), seen)
    assert not result
    assert reason in result.reason


# Each case: anchor op and attributes, the chain in front of the weight, the stored shape, and what
# the initializer holds. `nk` is the documented flag: True when the initializer is W [N, K].
_LINEAR_CASES = {
    "matmul": ("MatMul", {}, "direct", (8, 4), False),
    "matmul_transpose": ("MatMul", {}, "transpose", (4, 8), True),
    "gemm_transB": ("Gemm", {"transB": 1}, "direct", (4, 8), True),
    "gemm": ("Gemm", {}, "direct", (8, 4), False),
    "gemm_transB_transpose": ("Gemm", {"transB": 1}, "transpose", (8, 4), False),
    "matmul_reshape": ("MatMul", {}, "reshape", (32,), None),
}


@pytest.mark.parametrize("case", list(_LINEAR_CASES))
def test_linear_weight_orientation_matches_onnxruntime(case: str) -> None:
    op, attrs, kind, stored, nk = _LINEAR_CASES[case]
    b = GraphBuilder()
    x = b.input("x", (3, 8))
    w = b.weight("w", stored, seed=7)
    y = b.op(op, [x, _chain(kind, b, w)], **attrs)
    y.dtype, y.shape = F32, [3, 4]
    graph = b.graph(y)
    view = GraphView(graph)
    found = linear_weight(view, b.node(y))
    assert found
    weight = found.bindings["weight"]
    assert (weight.n, weight.k, weight.nk) == (4, 8, nk)
    matrix = weight.matrix_nk(view)
    assert matrix.shape == (4, 8)
    if nk is not None:
        np.testing.assert_array_equal(matrix, w.values if nk else w.values.T)
    # y = x·Wᵀ is what onnxruntime computes from the graph
    feed = np.random.default_rng(0).standard_normal((3, 8)).astype(F32)
    model = gs.export_onnx(graph)
    model.opset_import[0].version = 17
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": feed})
    np.testing.assert_allclose(got, feed @ matrix.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("attrs", "reason"),
    [({"transA": 1}, "transA=1"), ({"alpha": 2.0}, "alpha=2.0, not 1")],
)
def test_linear_weight_refuses_gemm_forms_that_are_not_x_times_w(attrs: dict, reason: str) -> None:
    b = GraphBuilder()
    y = b.op("Gemm", [b.input("x"), b.weight("w", (8, 4))], **attrs)
    graph = b.graph(y)
    result = linear_weight(GraphView(graph), b.node(y))
    assert not result and reason in result.reason


def test_linear_weight_refuses_constant_activation() -> None:
    b = GraphBuilder()
    y = b.op("MatMul", [b.weight("a", (2, 8)), b.weight("w", (8, 4))])
    result = linear_weight(GraphView(b.graph(y)), b.node(y))
    assert not result and "input A" in result.reason


@pytest.mark.parametrize(("axis", "block", "shape"), [(0, 4, (10, 6)), (1, 2, (8, 5))])
def test_resolve_constant_through_blocked_dequantize_matches_onnxruntime(axis, block, shape) -> None:
    rng = np.random.default_rng(1)
    blocks = list(shape)
    blocks[axis] = -(-shape[axis] // block)
    q = gs.Constant("w_q", rng.integers(-128, 128, shape).astype(np.int8))
    scale = gs.Constant("w_scale", rng.uniform(0.01, 1.0, blocks).astype(F32))
    zero = gs.Constant("w_zero", rng.integers(-5, 5, blocks).astype(np.int8))
    b = GraphBuilder()
    seen = b.op("DequantizeLinear", [q, scale, zero], axis=axis, block_size=block)
    graph = b.graph(b.op("MatMul", [b.input("x"), seen]))
    view = GraphView(graph)
    got = resolve_constant(view, seen).bindings["chain"].evaluate(view)
    node = onnx.helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=axis, block_size=block)
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    inits = [onnx.numpy_helper.from_array(t.values, n) for t, n in ((q, "q"), (scale, "s"), (zero, "z"))]
    model = onnx.helper.make_model(
        onnx.helper.make_graph([node], "dq", [], [y], initializer=inits),
        opset_imports=[onnx.helper.make_opsetid("", 21)],
    )
    (want,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {}
    )
    np.testing.assert_allclose(got, want, rtol=1e-6)
