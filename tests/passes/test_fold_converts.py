"""fold_converts: one test per case of the pass docstring, graphs built in code, numerics in ORT."""

from __future__ import annotations

from collections import Counter

import ml_dtypes
import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from bitnet_onnx.passes.base import PassContext
from bitnet_onnx.passes.p60_fold_converts import FoldConvertsPass, holds

F32, F16, BF16 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16
I8, I32, U8 = TensorProto.INT8, TensorProto.INT32, TensorProto.UINT8


def _model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        initializer=list(initializers),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def _fold(model: onnx.ModelProto, annotations=None):
    graph = gs.import_onnx(model)
    ctx = PassContext(config=None, annotations=annotations or {})
    result = FoldConvertsPass().run(graph, ctx)
    folded = gs.export_onnx(graph)
    folded.ir_version = model.ir_version
    onnx.checker.check_model(folded, full_check=True)
    return folded, result


def _ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def _run(model: onnx.ModelProto, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _assert_same_outputs(a, b, feeds):
    for x, y in zip(_run(a, feeds), _run(b, feeds), strict=True):
        np.testing.assert_array_equal(x, y)


def _x(dtype=np.float32, shape=(2, 6)):
    return {"x": (np.random.default_rng(0).standard_normal(shape) * 3).astype(dtype)}


def test_case_1_identity_is_removed_and_consumers_read_its_input():
    model = _model(
        [helper.make_node("Identity", ["x"], ["i"], name="id"), helper.make_node("Relu", ["i"], ["y"])],
        [("x", F32, [2, 6])],
        [("y", F32, [2, 6])],
    )
    folded, result = _fold(model)
    assert _ops(folded) == {"Relu": 1}
    assert result.stats["removed.identity"] == 1
    assert result.changes[0].node == "id" and result.changes[0].action == "remove"
    _assert_same_outputs(model, folded, _x())


def test_case_1_identity_of_a_constant_makes_consumers_read_the_constant():
    w = numpy_helper.from_array(np.full((6,), 2.0, np.float32), "w")
    model = _model(
        [helper.make_node("Identity", ["w"], ["w2"]), helper.make_node("Mul", ["x", "w2"], ["y"])],
        [("x", F32, [2, 6])],
        [("y", F32, [2, 6])],
        [w],
    )
    folded, _ = _fold(model)
    assert _ops(folded) == {"Mul": 1} and folded.graph.node[0].input[1] == "w"
    _assert_same_outputs(model, folded, _x())


def test_case_2_cast_to_its_own_type_is_removed():
    model = _model(
        [helper.make_node("Cast", ["x"], ["c"], to=F32), helper.make_node("Relu", ["c"], ["y"])],
        [("x", F32, [2, 6])],
        [("y", F32, [2, 6])],
    )
    folded, result = _fold(model)
    assert _ops(folded) == {"Relu": 1} and result.stats["removed.noop_cast"] == 1


def _islands() -> onnx.ModelProto:
    """Two F16 layers (Mul) each in its island, meeting through exit Cast(f32) → entry Cast(f16)."""
    two = numpy_helper.from_array(np.array(2.0, np.float16), "two")
    nodes = [
        helper.make_node("Cast", ["x"], ["x16"], to=F16, name="l1/enter"),
        helper.make_node("Mul", ["x16", "two"], ["a16"], name="l1/mul"),
        helper.make_node("Cast", ["a16"], ["a"], to=F32, name="l1/exit"),
        helper.make_node("Cast", ["a"], ["a16b"], to=F16, name="l2/enter"),
        helper.make_node("Mul", ["a16b", "two"], ["b16"], name="l2/mul"),
        helper.make_node("Cast", ["b16"], ["y"], to=F32, name="l2/exit"),
    ]
    return _model(nodes, [("x", F32, [2, 6])], [("y", F32, [2, 6])], [two])


def test_case_3_round_trip_between_two_f16_layers_is_removed_exactly():
    model = _islands()
    annotations = {"l2/enter": {"bitnet.layer": "l2"}}
    folded, result = _fold(model, annotations)
    assert _ops(folded) == {"Cast": 2, "Mul": 2}  # the outer entry and exit stay
    assert result.stats["removed.cast_round_trip"] == 1
    change = result.changes[0]
    assert change.layer == "l2" and change.node == "l2/enter" and "float16→float32→float16" in change.detail
    assert result.stats["conversions_before"] == 4 and result.stats["conversions_after"] == 2
    assert result.stats["before.Cast"] == 4 and result.stats["after.Cast"] == 2
    _assert_same_outputs(model, folded, _x())


def test_case_3_f32_f16_f32_on_a_value_cast_up_from_f16_is_removed():
    nodes = [
        helper.make_node("Cast", ["x"], ["up"], to=F32),
        helper.make_node("Reshape", ["up", "shape"], ["r"]),
        helper.make_node("Cast", ["r"], ["down"], to=F16, name="down"),
        helper.make_node("Cast", ["down"], ["back"], to=F32, name="back"),
        helper.make_node("Relu", ["back"], ["y"]),
    ]
    shape = numpy_helper.from_array(np.array([3, 4], np.int64), "shape")
    model = _model(nodes, [("x", F16, [2, 6])], [("y", F32, [3, 4])], [shape])
    folded, result = _fold(model)
    assert _ops(folded) == {"Cast": 1, "Reshape": 1, "Relu": 1}
    assert "holds every value this tensor carries" in result.changes[0].detail
    _assert_same_outputs(model, folded, _x(np.float16))


def test_case_3_f32_f16_f32_on_an_arbitrary_f32_value_stays():
    nodes = [
        helper.make_node("Cast", ["x"], ["down"], to=F16),
        helper.make_node("Cast", ["down"], ["back"], to=F32),
        helper.make_node("Relu", ["back"], ["y"]),
    ]
    model = _model(nodes, [("x", F32, [2, 6])], [("y", F32, [2, 6])])
    folded, result = _fold(model)
    assert _ops(folded) == {"Cast": 2, "Relu": 1} and not result.modified


def test_case_3_f16_value_through_bf16_stays():
    nodes = [
        helper.make_node("Cast", ["x"], ["up"], to=F32),
        helper.make_node("Cast", ["up"], ["b"], to=BF16),
        helper.make_node("Cast", ["b"], ["back"], to=F32),
        helper.make_node("Relu", ["back"], ["y"]),
    ]
    model = _model(nodes, [("x", F16, [2, 6])], [("y", F32, [2, 6])])
    folded, _ = _fold(model)
    assert _ops(folded)["Cast"] == 3  # bf16 keeps 8 significant bits, f16 has 11


@pytest.mark.parametrize(
    "outer, middle, folds", [(I8, I32, True), (I32, I8, False), (U8, F16, True), (F16, F32, True)]
)
def test_case_3_integer_and_float_round_trips(outer, middle, folds):
    nodes = [
        helper.make_node("Cast", ["x"], ["m"], to=middle),
        helper.make_node("Cast", ["m"], ["back"], to=outer),
        helper.make_node("Identity", ["back"], ["y"]),
    ]
    model = _model(nodes, [("x", outer, [4])], [("y", outer, [4])])
    folded, _ = _fold(model)
    assert ("Cast" in _ops(folded)) is not folds
    np_type = helper.tensor_dtype_to_np_dtype(outer)
    feeds = {"x": np.array([-7, 3, 100, 5], dtype=np.int64).astype(np_type)}
    if np_type == np.uint8:
        feeds = {"x": np.array([0, 3, 200, 255], np.uint8)}
    _assert_same_outputs(model, folded, feeds)


@pytest.mark.parametrize("value, folds", [(0.5, True), (0.1, False)])
def test_case_3_constant_whose_values_survive_the_round_trip(value, folds):
    c = numpy_helper.from_array(np.full((4,), value, np.float32), "c")
    nodes = [
        helper.make_node("Cast", ["c"], ["down"], to=F16),
        helper.make_node("Cast", ["down"], ["back"], to=F32),
        helper.make_node("Add", ["x", "back"], ["y"]),
    ]
    model = _model(nodes, [("x", F32, [4])], [("y", F32, [4])], [c])
    folded, _ = _fold(model)
    assert ("Cast" in _ops(folded)) is not folds
    _assert_same_outputs(model, folded, _x(shape=(4,)))


def _qdq(scale2=0.5, zp2=3, with_zp=True, zp_type=np.uint8):
    s1 = numpy_helper.from_array(np.array(0.5, np.float32), "s1")
    s2 = numpy_helper.from_array(np.array(scale2, np.float32), "s2")
    inits = [s1, s2]
    q_in, dq_in, q2_in = ["x", "s1"], ["q", "s1"], ["d", "s2"]
    if with_zp:
        inits += [
            numpy_helper.from_array(np.array(3, zp_type), "z1"),
            numpy_helper.from_array(np.array(zp2, zp_type), "z2"),
        ]
        q_in, dq_in, q2_in = [*q_in, "z1"], [*dq_in, "z1"], [*q2_in, "z2"]
    nodes = [
        helper.make_node("QuantizeLinear", q_in, ["q"], name="q1"),
        helper.make_node("DequantizeLinear", dq_in, ["d"], name="dq"),
        helper.make_node("QuantizeLinear", q2_in, ["q2"], name="q2"),
        helper.make_node("DequantizeLinear", ["q2", "s2", *(["z2"] if with_zp else [])], ["y"], name="dq2"),
    ]
    return _model(nodes, [("x", F32, [2, 6])], [("y", F32, [2, 6])], inits)


@pytest.mark.parametrize("with_zp, zp_type", [(True, np.uint8), (True, np.int8), (False, np.uint8)])
def test_case_4_dq_q_with_the_same_parameters_collapses_the_chain(with_zp, zp_type):
    model = _qdq(with_zp=with_zp, zp_type=zp_type)
    folded, result = _fold(model)
    assert _ops(folded) == {"QuantizeLinear": 1, "DequantizeLinear": 1}
    assert result.stats["removed.dq_q"] == 1
    assert result.stats["conversions_before"] == 4 and result.stats["conversions_after"] == 2
    _assert_same_outputs(model, folded, _x())


@pytest.mark.parametrize("scale2, zp2", [(0.25, 3), (0.5, 4)])
def test_case_4_dq_q_with_other_parameters_stays(scale2, zp2):
    folded, result = _fold(_qdq(scale2, zp2))
    assert _ops(folded) == {"QuantizeLinear": 2, "DequantizeLinear": 2} and not result.modified


def test_case_5_dead_initializers_and_nodes_are_removed():
    used = numpy_helper.from_array(np.ones((6,), np.float32), "used")
    dead = numpy_helper.from_array(np.ones((100,), np.float32), "dead")
    nodes = [helper.make_node("Add", ["x", "used"], ["y"]), helper.make_node("Neg", ["dead"], ["nobody"])]
    model = _model(nodes, [("x", F32, [2, 6])], [("y", F32, [2, 6])], [used, dead])
    folded, result = _fold(model)
    assert [t.name for t in folded.graph.initializer] == ["used"]
    assert _ops(folded) == {"Add": 1}
    assert result.stats["initializers_removed"] == 1 and result.modified


def test_a_conversion_producing_a_graph_output_stays():
    nodes = [helper.make_node("Cast", ["x"], ["m"], to=F32), helper.make_node("Cast", ["m"], ["y"], to=F16)]
    model = _model(nodes, [("x", F16, [3])], [("y", F16, [3])])
    folded, _ = _fold(model)
    assert _ops(folded) == {"Cast": 2}
    assert folded.graph.output[0].name == "y"


def test_cases_run_to_a_fixpoint():
    # The round trip is visible only once the Identity between the casts is gone.
    nodes = [
        helper.make_node("Cast", ["x"], ["m"], to=F32),
        helper.make_node("Identity", ["m"], ["m2"]),
        helper.make_node("Cast", ["m2"], ["back"], to=F16),
        helper.make_node("Relu", ["back"], ["y"]),
    ]
    model = _model(nodes, [("x", F16, [3])], [("y", F16, [3])])
    folded, result = _fold(model)
    assert _ops(folded) == {"Relu": 1}
    assert [c.source for c in result.changes] == ["identity", "cast_round_trip"]
    _assert_same_outputs(model, folded, {"x": np.array([1.5, -2.0, 3.25], np.float16)})


def test_nothing_to_fold_reports_unmodified_with_counts():
    model = _model([helper.make_node("Cast", ["x"], ["y"], to=F16)], [("x", F32, [3])], [("y", F16, [3])])
    _, result = _fold(model)
    assert not result.modified and not result.changes
    assert result.stats["conversions_before"] == result.stats["conversions_after"] == 1


@pytest.mark.parametrize(
    "wide, narrow, expected",
    [
        (np.float32, np.float16, True),
        (np.float32, ml_dtypes.bfloat16, True),
        (ml_dtypes.bfloat16, np.float16, False),
        (np.float16, ml_dtypes.bfloat16, False),
        (np.float16, np.float32, False),
        (np.float64, np.float32, True),
        (np.int32, np.int8, True),
        (np.int8, np.uint8, False),
        (np.int16, np.uint8, True),
        (np.float16, np.int8, True),
        (np.float16, np.int16, False),
        (np.float32, np.int16, True),
        (np.float32, np.int32, False),
        (ml_dtypes.bfloat16, np.uint8, True),
        (np.int8, np.bool_, True),
        (np.int8, np.float32, False),
    ],
)
def test_holds(wide, narrow, expected):
    assert holds(np.dtype(wide), np.dtype(narrow)) is expected


def test_case_6_a_cast_between_a_transpose_and_a_matmul_moves_before_the_transpose():
    # Found by tests/fuzz: onnxruntime 1.32 crashed (SIGSEGV) creating a session for a float32
    # layer reading a transposed float16 activation: Transpose(perm=[1, 0, 2]) → Cast → MatMul.
    w = numpy_helper.from_array(np.random.default_rng(1).standard_normal((6, 5)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2], name="t"),
        helper.make_node("Cast", ["t"], ["c"], to=F32, name="layer/Cast"),
        helper.make_node("MatMul", ["c", "w"], ["y"], name="layer/MatMul"),
    ]
    model = _model(nodes, [("x", F16, ["a", "b", 6])], [("y", F32, ["b", "a", 5])], [w])
    folded, result = _fold(model, {"layer/Cast": {"bitnet.layer": "layer"}})
    assert [(n.op_type, list(n.input)) for n in folded.graph.node] == [
        ("Cast", ["x"]),
        ("Transpose", ["c/untransposed"]),
        ("MatMul", ["c", "w"]),
    ]
    assert result.stats["casts_before_transpose"] == 1
    assert [(c.layer, c.action, c.source) for c in result.changes] == [
        ("layer", "reorder", "cast_before_transpose")
    ]
    x = _x(np.float16, (2, 3, 6))["x"]  # the model before folding would crash onnxruntime: numpy computes it
    expected = x.transpose(1, 0, 2).astype(np.float32) @ numpy_helper.to_array(w)
    np.testing.assert_allclose(_run(folded, {"x": x})[0], expected, rtol=1e-6, atol=1e-6)


def test_case_6_leaves_a_cast_no_matmul_reads():
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2]),
        helper.make_node("Cast", ["t"], ["c"], to=F32),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    model = _model(nodes, [("x", F16, [2, 3, 6])], [("y", F32, [3, 2, 6])])
    folded, result = _fold(model)
    assert [n.op_type for n in folded.graph.node] == ["Transpose", "Cast", "Relu"]
    assert result.stats["casts_before_transpose"] == 0


def test_case_6_a_cast_to_float16_stays_after_the_transpose():
    # Before the Transpose it would make a float16 Transpose → MatMul, which crashes onnxruntime too.
    w = numpy_helper.from_array(np.ones((6, 5), np.float16), "w")
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2]),
        helper.make_node("Cast", ["t"], ["c"], to=F16),
        helper.make_node("MatMul", ["c", "w"], ["y"]),
    ]
    model = _model(nodes, [("x", F32, [2, 3, 6])], [("y", F16, [3, 2, 5])], [w])
    folded, result = _fold(model)
    assert [n.op_type for n in folded.graph.node] == ["Transpose", "Cast", "MatMul"]
    assert result.stats["casts_before_transpose"] == 0
