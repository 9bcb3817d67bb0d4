"""rewrite, cast islands (passes/rewrite/cast_island.py): normalization, activation and other layers."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx_graphsurgeon as gs
import pytest

from bitnet_onnx.core.dtypes import DType
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
H = 16
EPS = 1e-5


def _gamma() -> np.ndarray:
    return (1 + 0.1 * np.random.default_rng(3).standard_normal(H)).astype(F32)


def _rms_norm(*, hf_casts: bool = False) -> tuple[gs.Graph, Layer]:
    """x → [Cast] → Pow(2) → ReduceMean → Add(ε) → Sqrt → Reciprocal → Mul(x) → [Cast] → Mul(γ) → y."""
    x = gs.Variable("x", dtype=F32, shape=["batch", "seq", H])
    nodes: list[gs.Node] = []

    def op(kind: str, inputs: list[gs.Tensor], **attrs: object) -> gs.Variable:
        out = gs.Variable(f"/norm/{kind}_{len(nodes)}_output_0", dtype=F32)
        nodes.append(gs.Node(kind, f"/norm/{kind}_{len(nodes)}", attrs, inputs, [out]))
        return out

    h = op("Cast", [x], to=1) if hf_casts else x
    sq = op("Pow", [h, gs.Constant("/norm/two", np.array(2.0, F32))])
    mean = op("ReduceMean", [sq], axes=[-1], keepdims=1)
    var = op("Add", [mean, gs.Constant("/norm/eps", np.array(EPS, F32))])
    inv = op("Reciprocal", [op("Sqrt", [var])])
    normed = op("Mul", [h, inv])
    if hf_casts:
        normed = op("Cast", [normed], to=1)
    y = op("Mul", [normed, gs.Constant("model.norm.weight", _gamma())])
    y.shape = ["batch", "seq", H]
    graph = gs.Graph(nodes=nodes, inputs=[x], outputs=[y], opset=17)
    layer = Layer(
        "model.norm", LayerType.NORMALIZATION, 0, tuple(n.name for n in nodes), "test",
        weight="model.norm.weight", weight_shape=(H,),
    )  # fmt: skip
    return graph, layer


def _rms_reference(x: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    return (x64 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + EPS) * gamma).astype(F32)


def _x(scale: float = 2.0) -> np.ndarray:
    return (np.random.default_rng(5).standard_normal((2, 3, H)) * scale).astype(F32)


@pytest.mark.kernels
@pytest.mark.parametrize("hf_casts", [False, True])
def test_an_f16_island_computes_its_nodes_in_float16_and_hands_on_float32(hf_casts):
    graph, layer = _rms_norm(hf_casts=hf_casts)
    result, _ = rewrite(graph, [make_plan(layer, default="F16")])
    model = export(graph)
    counts = ops(model)
    assert counts["Cast"] == 2 + 2 * hf_casts  # in and out, plus the model's own (now to float16)
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    inner = [n.output[0] for n in model.graph.node if n.op_type in ("Pow", "ReduceMean", "Sqrt", "Mul")]
    assert {types[t] for t in inner} == {10}
    assert all(a.dtype == np.float16 for a in initializers(model).values())
    assert result.changes[0].detail.endswith("in float16, F16 activations, F16 weights")
    x = _x()
    (y,) = run(model, {"x": x})
    expected = round_to(_rms_reference(round_to(x, DType.F16), round_to(_gamma(), DType.F16)), DType.F16)
    np.testing.assert_allclose(y, expected, rtol=2e-3, atol=2e-3)


@pytest.mark.kernels
def test_a_bf16_island_rounds_at_its_boundary_and_computes_in_float32():
    graph, layer = _rms_norm()
    rewrite(graph, [make_plan(layer, default="BF16")])
    model = export(graph)
    assert ops(model)["Cast"] == 5  # x down and up, γ up, the result down and up
    stored = initializers(model)["model.norm.weight_bf16"]
    assert stored.dtype == ml_dtypes.bfloat16
    assert {a.dtype for n, a in initializers(model).items() if n != "model.norm.weight_bf16"} == {
        np.dtype(F32)
    }
    x = _x()
    (y,) = run(model, {"x": x})
    expected = _rms_reference(round_to(x, DType.BF16), round_to(_gamma(), DType.BF16))
    np.testing.assert_allclose(y, round_to(expected, DType.BF16), rtol=8e-3, atol=0)


@pytest.mark.kernels
def test_float16_activations_beside_float32_weights_compute_in_float32():
    graph, layer = _rms_norm()
    rewrite(graph, [make_plan(layer, activations="F16")])
    model = export(graph)
    assert ops(model)["Cast"] == 2  # x rounded to float16 and widened; γ and the output untouched
    x = _x()
    (y,) = run(model, {"x": x})
    np.testing.assert_allclose(y, _rms_reference(round_to(x, DType.F16), _gamma()), rtol=1e-5, atol=1e-6)


def test_an_island_of_float32_precisions_leaves_the_layer_as_it_was():
    graph, layer = _rms_norm()
    before = [(n.op, n.name, [t.name for t in n.inputs]) for n in graph.nodes]
    result, _ = rewrite(graph, [make_plan(layer)])
    assert [(n.op, n.name, [t.name for t in n.inputs]) for n in graph.nodes] == before
    assert result.changes[0].detail.startswith(
        f"Pow+ReduceMean+Add+Sqrt+Reciprocal+Mul; constants {H * 4} → {H * 4} bytes"
    )


@pytest.mark.kernels
def test_fused_layer_normalization_in_f16_keeps_its_gain_and_shift_in_float16():
    x = gs.Variable("x", dtype=F32, shape=["batch", H])
    y = gs.Variable("y", dtype=F32, shape=["batch", H])
    gamma, beta = _gamma(), (0.1 * np.arange(H)).astype(F32)
    node = gs.Node(
        "LayerNormalization", "/ln/LayerNormalization", {"axis": -1, "epsilon": EPS},
        [x, gs.Constant("ln.weight", gamma), gs.Constant("ln.bias", beta)], [y],
    )  # fmt: skip
    graph = gs.Graph(nodes=[node], inputs=[x], outputs=[y], opset=17)
    layer = Layer("ln", LayerType.NORMALIZATION, 0, (node.name,), "test", weight="ln.weight", bias="ln.bias")
    result, _ = rewrite(graph, [make_plan(layer, default="F16")])
    model = export(graph)
    assert ops(model) == {"Cast": 2, "LayerNormalization": 1}
    assert {a.dtype for a in initializers(model).values()} == {np.dtype(np.float16)}
    change = result.changes[0]
    assert f"constants {2 * H * 4} → {2 * H * 2} bytes" in change.detail
    xv = _x()[0]
    (out,) = run(model, {"x": xv})
    x16 = round_to(xv, DType.F16).astype(np.float64)
    mean, var = x16.mean(-1, keepdims=True), x16.var(-1, keepdims=True)
    expected = (x16 - mean) / np.sqrt(var + EPS) * round_to(gamma, DType.F16) + round_to(beta, DType.F16)
    np.testing.assert_allclose(out, round_to(expected.astype(F32), DType.F16), rtol=3e-3, atol=3e-3)


def _silu(*, sigmoid_is_output: bool = False) -> tuple[gs.Graph, Layer]:
    x = gs.Variable("x", dtype=F32, shape=["batch", H])
    s = gs.Variable("/act/Sigmoid_output_0", dtype=F32, shape=["batch", H])
    y = gs.Variable("y", dtype=F32, shape=["batch", H])
    nodes = [gs.Node("Sigmoid", "/act/Sigmoid", {}, [x], [s]), gs.Node("Mul", "/act/Mul", {}, [x, s], [y])]
    outputs = [y, s] if sigmoid_is_output else [y]
    graph = gs.Graph(nodes=nodes, inputs=[x], outputs=outputs, opset=17)
    return graph, Layer("act", LayerType.ACTIVATION, 0, ("/act/Sigmoid", "/act/Mul"), "test")


@pytest.mark.kernels
def test_a_layer_output_read_outside_and_inside_leaves_converted_and_stays_in_the_island_type():
    graph, layer = _silu(sigmoid_is_output=True)
    rewrite(graph, [make_plan(layer, default="F16")])
    model = export(graph)
    assert [o.name for o in model.graph.output] == ["y", "/act/Sigmoid_output_0"]
    mul = next(n for n in model.graph.node if n.op_type == "Mul")
    sigmoid = next(n for n in model.graph.node if n.op_type == "Sigmoid")
    assert sigmoid.output[0] in mul.input  # the Mul reads the float16 value, not the converted output
    x = _x()[0]
    y, s = run(model, {"x": x})
    x16 = round_to(x, DType.F16)
    s16 = round_to(1 / (1 + np.exp(-x16)), DType.F16)
    np.testing.assert_allclose(s, s16, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(y, round_to(x16 * s16, DType.F16), rtol=2e-3, atol=2e-3)


@pytest.mark.kernels
def test_int8_activations_of_an_activation_layer_are_emulated_per_tensor():
    graph, layer = _silu()
    rewrite(graph, [make_plan(layer, activations="I8")])
    model = export(graph)
    assert ops(model) == {"DynamicQuantizeLinear": 1, "DequantizeLinear": 1, "Sigmoid": 1, "Mul": 1}
    x = _x()[0]
    (y,) = run(model, {"x": x})
    q = qdq_per_tensor(x)
    np.testing.assert_allclose(y, q / (1 + np.exp(-q)), rtol=1e-5, atol=1e-6)
    assert relative_error(y, x / (1 + np.exp(-x))) < 0.02


@pytest.mark.kernels
def test_float_constants_saturate_to_the_island_type_and_infinities_stay():
    x = gs.Variable("x", dtype=F32, shape=[4])
    y = gs.Variable("y", dtype=F32, shape=[4])
    fill = np.array([0.0, np.finfo(np.float32).min, -np.inf, 1e-9], F32)
    node = gs.Node("Add", "/mask/Add", {}, [x, gs.Constant("mask", fill)], [y])
    graph = gs.Graph(nodes=[node], inputs=[x], outputs=[y], opset=17)
    layer = Layer("mask", LayerType.OTHER, 0, (node.name,), "test")
    rewrite(graph, [make_plan(layer, default="F16")])
    model = export(graph)
    (stored,) = initializers(model).values()
    np.testing.assert_array_equal(stored, np.array([0.0, -65504.0, -np.inf, 1e-9], np.float16))
    (out,) = run(model, {"x": np.ones(4, F32)})
    # onnxruntime adds in float32 (no fp16 Add kernel on x86) and drops its own cast pair around it
    np.testing.assert_allclose(out, np.array([1.0, -65504.0, -np.inf, 1.0], F32), rtol=1e-3)


@pytest.mark.kernels
def test_an_unconverted_output_read_inside_and_outside_keeps_one_tensor():
    graph, layer = _silu(sigmoid_is_output=True)
    rewrite(graph, [make_plan(layer)])
    model = export(graph)
    assert ops(model) == {"Sigmoid": 1, "Mul": 1}
    mul = next(n for n in model.graph.node if n.op_type == "Mul")
    assert "/act/Sigmoid_output_0" in mul.input
    x = _x()[0]
    y, s = run(model, {"x": x})
    np.testing.assert_allclose(s, 1 / (1 + np.exp(-x)), rtol=1e-6)
    np.testing.assert_allclose(y, x * s, rtol=1e-6)


def _layer_norm() -> tuple[gs.Graph, Layer]:
    """x → ReduceMean → Sub → Pow → ReduceMean → Add(ε) → Sqrt → Div → Mul(γ) → Add(β): the pattern
    onnxruntime's LayerNormFusion looks for."""
    x = gs.Variable("x", dtype=F32, shape=["batch", H])
    nodes: list[gs.Node] = []

    def op(kind: str, inputs: list[gs.Tensor], **attrs: object) -> gs.Variable:
        out = gs.Variable(f"/ln/{kind}_{len(nodes)}_output_0", dtype=F32)
        nodes.append(gs.Node(kind, f"/ln/{kind}_{len(nodes)}", attrs, inputs, [out]))
        return out

    d = op("Sub", [x, op("ReduceMean", [x], axes=[-1], keepdims=1)])
    var = op(
        "ReduceMean", [op("Pow", [d, gs.Constant("/ln/two", np.array(2.0, F32))])], axes=[-1], keepdims=1
    )
    std = op("Sqrt", [op("Add", [var, gs.Constant("/ln/eps", np.array(EPS, F32))])])
    scaled = op("Mul", [op("Div", [d, std]), gs.Constant("ln.weight", _gamma())])
    y = op("Add", [scaled, gs.Constant("ln.bias", np.full(H, 0.5, F32))])
    y.shape = ["batch", H]
    graph = gs.Graph(nodes=nodes, inputs=[x], outputs=[y], opset=17)
    layer = Layer(
        "ln",
        LayerType.NORMALIZATION,
        0,
        tuple(n.name for n in nodes),
        "test",
        weight="ln.weight",
        bias="ln.bias",
    )
    return graph, layer


@pytest.mark.kernels
@pytest.mark.parametrize("dtype", [DType.F16, DType.BF16])
def test_case_6_the_input_a_layer_norm_reduces_is_converted_by_cast_like(dtype):
    graph, layer = _layer_norm()
    rewrite(graph, [make_plan(layer, default=dtype)])
    model = export(graph)
    reduce_mean = next(n for n in model.graph.node if n.op_type == "ReduceMean")
    producer = next(n for n in model.graph.node if reduce_mean.input[0] in n.output)
    assert producer.op_type == "CastLike"
    xv = _x()[0]
    (y,) = run(model, {"x": xv})  # onnxruntime's LayerNormFusion no longer breaks the session
    xr = round_to(xv, dtype).astype(np.float64)
    normed = (xr - xr.mean(-1, keepdims=True)) / np.sqrt(xr.var(-1, keepdims=True) + EPS)
    expected = normed * round_to(_gamma(), dtype) + 0.5
    np.testing.assert_allclose(y, round_to(expected.astype(F32), dtype), rtol=1e-2, atol=1e-2)


@pytest.mark.kernels
def test_case_6_a_cast_before_the_layer_feeding_its_reduce_mean_becomes_cast_like():
    # Found by tests/fuzz: an F16 linear layer's output conversion (Cast to float) feeding an F32
    # LayerNorm, whose own input conversion is then a no-op; onnxruntime misfused it and failed.
    graph, layer = _layer_norm()
    x = graph.inputs[0]
    x16 = gs.Variable("x16", dtype=np.float16, shape=["batch", H])
    graph.nodes.insert(0, gs.Node("Cast", "/before/Cast", {"to": 1}, [x16], [x]))
    graph.inputs = [x16]
    rewrite(graph, [make_plan(layer, default=DType.F32)])
    model = export(graph)
    reduce_mean = next(n for n in model.graph.node if n.op_type == "ReduceMean")
    producer = next(n for n in model.graph.node if reduce_mean.input[0] in n.output)
    assert producer.op_type == "CastLike"
    xv = _x()[0].astype(np.float16)
    (y,) = run(model, {"x16": xv})
    xr = xv.astype(np.float64)
    normed = (xr - xr.mean(-1, keepdims=True)) / np.sqrt(xr.var(-1, keepdims=True) + EPS)
    np.testing.assert_allclose(y, normed * _gamma() + 0.5, rtol=1e-5, atol=1e-5)


def _skip_rms_norm() -> tuple[gs.Graph, Layer]:
    """onnxruntime's SkipSimplifiedLayerNormalization: y = γ·rms(x + skip), and the sum x + skip."""
    x, skip = (gs.Variable(n, dtype=F32, shape=[2, 3, H]) for n in ("x", "skip"))
    y, total = (gs.Variable(n, dtype=F32, shape=[2, 3, H]) for n in ("y", "sum"))
    gamma = gs.Constant("model.norm.weight", _gamma())
    node = gs.Node(
        "SkipSimplifiedLayerNormalization",
        "/norm/SkipLayerNorm",
        {"epsilon": EPS},
        [x, skip, gamma],
        [y, gs.Variable.empty(), gs.Variable.empty(), total],
        domain="com.microsoft",
    )
    graph = gs.Graph(nodes=[node], inputs=[x, skip], outputs=[y, total], opset=17)
    return graph, Layer("model.norm", LayerType.NORMALIZATION, 0, (node.name,), "test", weight=gamma.name)


@pytest.mark.kernels
@pytest.mark.parametrize("precision", ["F16", "BF16", "F32"])
def test_every_output_of_a_multi_output_op_takes_the_island_type(precision):
    graph, layer = _skip_rms_norm()
    rewrite(graph, [make_plan(layer, default=precision)])
    node = next(n for n in graph.nodes if n.op == "SkipSimplifiedLayerNormalization")
    compute = np.float16 if precision == "F16" else F32
    assert node.outputs[0].dtype == compute and node.outputs[3].dtype == compute
    model = export(graph)
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [1, 1]  # the model's types
    rng = np.random.default_rng(2)
    x, skip = (rng.standard_normal((2, 3, H)).astype(F32) for _ in range(2))
    y, total = run(model, {"x": x, "skip": skip})  # onnxruntime loads it: one type per parameter
    dtype = DType[precision]
    expected_sum = round_to(round_to(x, dtype) + round_to(skip, dtype), dtype)
    np.testing.assert_allclose(total, expected_sum, rtol=1e-2, atol=1e-2)
    expected = _rms_reference(expected_sum, round_to(_gamma(), dtype))
    np.testing.assert_allclose(y, round_to(expected, dtype), rtol=2e-2, atol=2e-2)
