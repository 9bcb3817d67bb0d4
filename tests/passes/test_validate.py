"""validate: checker, session, plan read back from the graph, numerics vs the original (hand-built graphs)."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from bitnet_onnx import runtime
from bitnet_onnx.config.config import MixedPrecisionConfig
from bitnet_onnx.config.report import THRESHOLDS, Thresholds, compare_outputs
from bitnet_onnx.core.dtypes import DType, TernaryPacking, WeightLayout
from bitnet_onnx.core.errors import ConfigError
from bitnet_onnx.core.layers import ComponentType, Layer, LayerType
from bitnet_onnx.core.plan import Decision, LayerPlan
from bitnet_onnx.numerics.packing import int_row_bytes, pack_int, pack_ternary
from bitnet_onnx.passes.base import PassContext
from bitnet_onnx.passes.p70_validate import ValidatePass, _readback

K, N = 16, 8
W_, A_, O_ = ComponentType.WEIGHTS, ComponentType.ACTIVATIONS, ComponentType.OUTPUTS


pytestmark = pytest.mark.usefixtures("ops_lib")


def _ternary(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """T[N, K] in {-1, 0, 1} and its scale."""
    t = np.random.default_rng(seed).integers(-1, 2, size=(N, K)).astype(np.int8)
    return t, np.array([0.05], np.float32)


def _model(nodes, initializers, out="y", opsets=(("", 17),)) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", K])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", "seq", N])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])


def _original(weights: np.ndarray) -> onnx.ModelProto:
    """x → MatMul(x, B[K, N]) → y, with W[N, K] = `weights`."""
    b = numpy_helper.from_array(np.ascontiguousarray(weights.T).astype(np.float32), "B")
    return _model([helper.make_node("MatMul", ["x", "B"], ["y"], name="mm")], [b])


_BITNET_OPSETS = (("", 17), (runtime.DOMAIN, runtime.OPSET_VERSION))


def _bitlinear_graph(t, scale, *, fmt="2bit", k_attr=K, out="y", extra_nodes=()) -> gs.Graph:
    packing = TernaryPacking(fmt)
    packed = numpy_helper.from_array(pack_ternary(t, packing), "fc.weight_packed")
    node = helper.make_node(
        "BitLinear",
        ["x", "fc.weight_packed", "fc.scale"],
        [out],
        domain=runtime.DOMAIN,
        name="fc/BitLinear",
        K=k_attr,
        format=fmt,
    )
    model = _model(
        [node, *extra_nodes], [packed, numpy_helper.from_array(scale, "fc.scale")], out, _BITNET_OPSETS
    )
    return gs.import_onnx(model)


def _decision(dtype: DType, layout: WeightLayout | None = None) -> Decision:
    return Decision(dtype, "test", layout or WeightLayout(), None, None, "test")


def _layer_plan(
    weights=DType.BITNET158, activations=DType.I8, layout=None, name="fc"
) -> dict[str, LayerPlan]:
    layer = Layer(name, LayerType.LINEAR, 0, ("mm",), "test", "B", (K, N), weight_nk=False)
    decisions = {W_: _decision(weights, layout), A_: _decision(activations), O_: _decision(DType.F32)}
    return {name: LayerPlan(layer, decisions)}


def _annotations(node="fc/BitLinear", layer="fc", **dtypes) -> dict[str, dict[str, str]]:
    props = {
        "bitnet.layer": layer,
        "bitnet.layer_type": "linear",
        "bitnet.op": "BitLinear",
        "bitnet.rule": "t",
    }
    props.update({f"bitnet.dtype.{c}": d for c, d in dtypes.items()})
    return {node: props}


def _validate(
    graph,
    original,
    plan=None,
    annotations=None,
    *,
    strategy="balanced",
    strict=True,
    thresholds=None,
    **ctx_args,
):
    if isinstance(ctx_args.get("calibration"), dict):  # one feed dict, as compile() passes it
        feeds = ctx_args["calibration"]
        shapes = ", ".join(f"{name} {list(np.shape(array))}" for name, array in feeds.items())
        ctx_args["calibration"] = ((feeds,), f"the given inputs ({shapes})")
    ctx = PassContext(
        config=MixedPrecisionConfig.new(strategy),
        plan=plan if plan is not None else _layer_plan(),
        annotations=annotations if annotations is not None else _annotations(),
        original=original,
        **ctx_args,
    )
    result = ValidatePass(strict=strict, thresholds=thresholds).run(graph, ctx)
    return ctx.report, result


def _rules(report) -> list[tuple[str, str, str]]:
    return [(f.rule_id, f.severity.value, f.subject) for f in report.findings]


def test_exact_ternary_layer_passes_with_int8_activation_error_only():
    t, scale = _ternary()
    report, result = _validate(_bitlinear_graph(t, scale), _original(t * scale))
    assert report.findings == () and report.ok and report.goal_met
    (metrics,) = report.outputs
    assert metrics.name == "y" and metrics.shape == (1, 8, N)
    assert metrics.cosine > 0.9999 and metrics.max_rel_error < 0.01
    assert report.inputs == "generated inputs (batch=1, seq=8, seed 0)"
    assert report.thresholds == THRESHOLDS[MixedPrecisionConfig.balanced().strategy]
    assert result.stats["y.cosine"] == round(metrics.cosine, 6) and result.stats["errors"] == 0
    assert result.stats["goal_met"] == 1 and not result.modified


def test_metrics_are_those_of_compare_outputs_on_the_given_inputs():
    t, scale = _ternary()
    x = np.random.default_rng(5).standard_normal((2, 3, K)).astype(np.float32)
    report, _ = _validate(_bitlinear_graph(t, scale), _original(t * scale), calibration={"x": x})
    y_float = x @ (t * scale).T.astype(np.float32)
    s = np.abs(x).max(axis=-1, keepdims=True)
    xq = np.clip(np.rint(x * (np.float32(127.0) / s)), -127, 127)
    y_int8 = (xq @ t.T.astype(np.float32)) * (s / np.float32(127.0)) * scale[0]
    expected = compare_outputs("y", y_float, y_int8)
    (metrics,) = report.outputs
    assert report.inputs == f"the given inputs (x {[2, 3, K]})"
    assert metrics.cosine == pytest.approx(expected.cosine, abs=1e-7)
    assert metrics.max_abs_error == pytest.approx(expected.max_abs_error, rel=1e-3)


@pytest.mark.parametrize("rows", [(1, 3), (2, 2, 1)])
def test_every_batch_is_compared_against_the_thresholds_given(rows):
    t, scale = _ternary()
    rng = np.random.default_rng(7)
    batches = tuple({"x": rng.standard_normal((r, 3, K)).astype(np.float32)} for r in rows)
    cosine = 0.0
    for strict_floor in (0.5, 0.9999999):
        report, _ = _validate(
            _bitlinear_graph(t, scale),
            _original(t * scale),
            calibration=(batches, "held out"),
            thresholds=("objective accuracy:x", Thresholds(min_cosine=strict_floor, max_rel_error=math.inf)),
            strict=False,
        )
        x = np.concatenate([b["x"] for b in batches])
        s = np.abs(x).max(axis=-1, keepdims=True)
        xq = np.clip(np.rint(x * (np.float32(127.0) / s)), -127, 127)
        y_int8 = (xq @ t.T.astype(np.float32)) * (s / np.float32(127.0)) * scale[0]
        expected = compare_outputs("y", x @ (t * scale).T.astype(np.float32), y_int8)
        (metrics,) = report.outputs
        assert metrics.shape == (sum(rows), 3, N)
        assert metrics.cosine == pytest.approx(expected.cosine, abs=1e-7)
        assert report.strategy == "objective accuracy:x" and report.inputs == "held out"
        cosine = metrics.cosine
        assert report.goal_met is (cosine >= strict_floor)
    assert 0.5 < cosine < 0.9999999  # one floor met, the other missed


def test_numeric_miss_is_an_error_when_strict_and_a_warning_otherwise():
    t, scale = _ternary()
    noisy = t * scale + np.random.default_rng(1).standard_normal((N, K)).astype(np.float32) * 0.05
    graph = _bitlinear_graph(t, scale)
    report, result = _validate(graph, _original(noisy), strategy="conservative")
    assert _rules(report) == [("numerics", "error", "output y")]
    assert "cosine" in report.errors[0].message and "< 0.999" in report.errors[0].message
    assert "--no-strict" in report.errors[0].suggestion
    assert not report.ok and not report.goal_met and result.stats["goal_met"] == 0
    assert result.warnings[0].startswith("error: [numerics] output y: cosine")
    report, _ = _validate(_bitlinear_graph(t, scale), _original(noisy), strategy="conservative", strict=False)
    assert _rules(report) == [("numerics", "warning", "output y")]
    assert report.ok and not report.goal_met


def test_packing_format_other_than_planned_is_a_readback_error():
    t, scale = _ternary()
    plan = _layer_plan(layout=WeightLayout(packing=TernaryPacking.BASE3))
    report, _ = _validate(_bitlinear_graph(t, scale), _original(t * scale), plan)
    assert _rules(report) == [("readback", "error", "fc/weights")]
    assert "has format '2bit', the plan says 'base3'" in report.errors[0].message


@pytest.mark.parametrize("fmt, per_byte", [("2bit", 4), ("base3", 5)])
def test_packed_bytes_must_match_the_layer_shape(fmt, per_byte):
    t, scale = _ternary()
    plan = _layer_plan(layout=WeightLayout(packing=TernaryPacking(fmt)))
    layer = plan["fc"].layer
    wider = Layer(layer.name, layer.layer_type, 0, layer.nodes, "test", "B", (K + 8, N), weight_nk=False)
    plan = {"fc": LayerPlan(wider, plan["fc"].decisions)}
    report, _ = _validate(_bitlinear_graph(t, scale, fmt=fmt), _original(t * scale), plan)
    message = report.errors[0].message
    packed, wanted = N * -(-K // per_byte), N * -(-(K + 8) // per_byte)
    assert f"reads {packed} packed bytes, expected {wanted}" in message


def test_stamped_precision_other_than_planned_is_an_error():
    t, scale = _ternary()
    annotations = _annotations(weights="I4", activations="I8")
    report, _ = _validate(_bitlinear_graph(t, scale), _original(t * scale), annotations=annotations)
    assert _rules(report) == [("readback", "error", "fc/weights")]
    assert report.errors[0].message == "planned BITNET158, the compiled model says I4"


def test_planned_layer_missing_from_the_graph_is_an_error():
    t, scale = _ternary()
    plan = {**_layer_plan(), **_layer_plan(name="ghost")}
    report, _ = _validate(_bitlinear_graph(t, scale), _original(t * scale), plan)
    assert ("readback", "error", "ghost") in _rules(report)


def test_float_weights_of_another_type_and_unquantized_activations_are_errors():
    t, scale = _ternary()
    original = _original(t * scale)
    graph = gs.import_onnx(original)
    plan = _layer_plan(weights=DType.F16, activations=DType.I8)
    annotations = _annotations(node="mm")
    report, _ = _validate(graph, original, plan, annotations)
    assert _rules(report) == [("readback", "error", "fc/weights"), ("readback", "error", "fc/activations")]
    assert "no node of the layer reads 128 float16 weights" in report.errors[0].message
    assert report.errors[1].message == "planned I8 but no node of the layer quantizes its input"


def test_float_weights_through_a_transpose_are_found():
    t, scale = _ternary()
    w16 = numpy_helper.from_array((t * scale).astype(np.float16), "W16")  # [N, K] as stored
    nodes = [
        helper.make_node("Transpose", ["W16"], ["W16T"], perm=[1, 0], name="fc/Transpose"),
        helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16, name="fc/Cast"),
        helper.make_node("MatMul", ["x16", "W16T"], ["y16"], name="fc/MatMul"),
        helper.make_node("Cast", ["y16"], ["y"], to=TensorProto.FLOAT, name="fc/Cast_1"),
    ]
    graph = gs.import_onnx(_model(nodes, [w16]))
    annotations = {n.name: _annotations(n.name)[n.name] for n in nodes}
    plan = _layer_plan(weights=DType.F16, activations=DType.F16)
    report, _ = _validate(graph, _original(t * scale), plan, annotations, strategy="conservative")
    assert report.findings == () and report.goal_met


def test_missing_output_is_an_error():
    t, scale = _ternary()
    report, _ = _validate(_bitlinear_graph(t, scale, out="z"), _original(t * scale))
    assert ("numerics", "error", "output y") in _rules(report)
    assert report.outputs == ()


def test_session_failure_is_an_error_and_nothing_is_compared():
    t, scale = _ternary()
    graph = _bitlinear_graph(t, scale, k_attr=K + 40)  # K disagrees with the packed rows
    report, _ = _validate(graph, _original(t * scale))
    assert ("session", "error", "model") in _rules(report)
    assert "onnxruntime cannot load the compiled model" in report.errors[-1].message
    assert report.outputs == () and not report.goal_met


def test_checker_failure_is_an_error_unless_the_input_fails_too():
    t, scale = _ternary()
    bad = helper.make_node("Relu", ["y0", "y0"], ["y"], name="fc/Relu")  # Relu takes one input
    graph = _bitlinear_graph(t, scale, out="y0", extra_nodes=[bad])
    report, _ = _validate(graph, _original(t * scale))
    assert ("checker", "error", "model") in _rules(report)
    original = _original(t * scale)
    original.graph.node.append(helper.make_node("Relu", ["y", "y"], ["unused"]))
    report, _ = _validate(_bitlinear_graph(t, scale, out="y0", extra_nodes=[bad]), original)
    checker = [f for f in report.findings if f.rule_id == "checker"]
    assert (
        checker[0].severity.value == "warning"
        and "the input model fails the checker too" in checker[0].message
    )


@pytest.mark.parametrize(
    "feeds, words",
    [
        ({}, "no array for model input 'x'"),
        ({"x": np.zeros((1, 2, K), np.float32), "mask": np.ones(2)}, "'mask' is not an input of the model"),
        ({"x": np.zeros((1, 2, K), np.float64)}, "input 'x' is float64, the model takes float32"),
    ],
)
def test_sample_inputs_that_do_not_fit_are_a_config_error(feeds, words):
    t, scale = _ternary()
    with pytest.raises(ConfigError, match=words):
        _validate(_bitlinear_graph(t, scale), _original(t * scale), calibration=feeds)


# -- integer weights: read back from the graph alone ----------------------------------------------------


def _lowbit_model(bits: int, group: int, *, asymmetric=False, op="LowBitMatMul", act_quant=1, row_bytes=None):
    codes = np.random.default_rng(0).integers(0, 2**bits, size=(N, K)).astype(np.uint8)
    packed = pack_int(codes, bits, group)
    if row_bytes is not None:
        packed = np.zeros((N, row_bytes), np.uint8)
    groups = -(-K // group)
    inits = [
        numpy_helper.from_array(packed, "w"),
        numpy_helper.from_array(np.ones((N, groups), np.float32), "s"),
    ]
    inputs = ["x", "w", "s"] if op == "LowBitMatMul" else ["w", "s"]
    if asymmetric:
        inits.append(numpy_helper.from_array(np.zeros((N, groups), np.uint8), "z"))
        inputs.append("z")
    attrs = {"K": K, "bits": bits, "group_size": group}
    if op == "LowBitMatMul":
        attrs["act_quant"] = act_quant
    node = helper.make_node(op, inputs, ["y"], domain=runtime.DOMAIN, name="fc/op", **attrs)
    return _model([node], inits, opsets=_BITNET_OPSETS)


def _stamped(model: onnx.ModelProto, **dtypes) -> onnx.ModelProto:
    for key, value in _annotations("fc/op", **dtypes)["fc/op"].items():
        model.graph.node[0].metadata_props.add(key=key, value=value)
    return model


@pytest.mark.parametrize("bits, group", [(8, 16), (4, 8), (2, 16), (1, 8)])
def test_integer_weights_with_planned_bits_group_and_bytes_pass(bits, group):
    dtype = {8: DType.I8, 4: DType.I4, 2: DType.I2, 1: DType.I1}[bits]
    assert int_row_bytes(K, bits, group) * N == N * (-(-K // group) * group * bits // 8)
    plan = _layer_plan(weights=dtype, layout=WeightLayout(group_size=group))
    assert _readback(plan, _stamped(_lowbit_model(bits, group))) == []


@pytest.mark.parametrize(
    "model_args, layout, words",
    [
        ({"bits": 2, "group": 16}, WeightLayout(group_size=16), "has bits=2, the plan says 4"),
        ({"bits": 4, "group": 8}, WeightLayout(group_size=16), "has group_size=8, the plan says 16"),
        ({"bits": 4, "group": 16, "row_bytes": 4}, WeightLayout(), "reads 32 packed bytes, expected 64"),
        (
            {"bits": 4, "group": 16, "asymmetric": True},
            WeightLayout(),
            "has zero points; the plan says symmetric",
        ),
        (
            {"bits": 4, "group": 16},
            WeightLayout(asymmetric=True),
            "lacks zero points; the plan says asymmetric",
        ),
    ],
)
def test_integer_weights_not_as_planned_are_errors(model_args, layout, words):
    plan = _layer_plan(weights=DType.I4, layout=layout)
    (finding,) = _readback(plan, _stamped(_lowbit_model(**model_args)))
    assert finding.subject == "fc/weights" and words in finding.message


def test_empty_zero_points_before_a_bias_mean_symmetric():
    model = _lowbit_model(4, 16)
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(0, np.uint8), "no_zp"))
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(N, np.float32), "bias"))
    model.graph.node[0].input.extend(["no_zp", "bias"])
    plan = _layer_plan(weights=DType.I4, layout=WeightLayout(group_size=16))
    assert _readback(plan, _stamped(model)) == []


def test_dequantize_lowbit_realises_integer_weights_and_act_quant_zero_does_not_quantize():
    plan = _layer_plan(weights=DType.I4, activations=DType.F32, layout=WeightLayout(group_size=16))
    assert _readback(plan, _stamped(_lowbit_model(4, 16, op="DequantizeLowBit"))) == []
    plan = _layer_plan(weights=DType.I4, activations=DType.I8, layout=WeightLayout(group_size=16))
    (finding,) = _readback(plan, _stamped(_lowbit_model(4, 16, act_quant=0)))
    assert finding.subject == "fc/activations"
