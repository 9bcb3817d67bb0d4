"""rewrite, LINEAR/OUTPUT layers (passes/rewrite/linear.py): one test per case of the module docstring.

Each test builds a layer in code, rewrites it with a hand-made plan, checks the op structure and the
stored bytes, then runs it in onnxruntime against a numpy reference of the intended precision
(tightly) and the float layer (loosely).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from bitnet_onnx.core.dtypes import ConversionStrategy, DType, TernaryPacking, WeightLayout, storage_bytes
from bitnet_onnx.core.errors import ConfigError, ConversionError, UnsupportedModelError
from bitnet_onnx.core.layers import LayerType
from bitnet_onnx.numerics.converter import ConversionConfig, PrecisionConverter
from bitnet_onnx.numerics.packing import pack_int, pack_ternary, resolve_group_size
from bitnet_onnx.numerics.quantization import (
    bitlinear_reference,
    lowbit_matmul_reference,
    quantize_groups,
    ternarize,
)
from bitnet_onnx.passes.rewrite import int8_choice, linear
from tests.passes.rewrite_graphs import (
    decision,
    export,
    initializers,
    linear_case,
    make_plan,
    needs_op,
    ops,
    relative_error,
    rewrite,
    round_to,
    run,
)

F32 = np.float32
RNG = np.random.default_rng(7)


def _x(case, dtype=F32) -> np.ndarray:
    leading = (2, 5) if len(case.graph.inputs[0].shape) == 3 else (6,)
    return RNG.standard_normal((*leading, case.k)).astype(dtype)


def _ternary_rows(n: int, k: int, seed: int = 1) -> np.ndarray:
    """Exactly ternary × one scale: ternarization is lossless, so only activations lose precision."""
    t = np.random.default_rng(seed).integers(-1, 2, size=(n, k)).astype(F32)
    return t * F32(0.05)


def _weights_bytes(model, names) -> int:
    arrays = initializers(model)
    return sum(arrays[n].nbytes for n in names)


# -- case 1: BitLinear ------------------------------------------------------------------------------


@pytest.mark.kernels
@pytest.mark.parametrize("style", ["matmul", "gemm", "transpose"])
@pytest.mark.parametrize("packing", list(TernaryPacking))
@pytest.mark.parametrize("per_channel", [False, True])
def test_case_1_ternary_weights_with_int8_activations_become_one_bitlinear(style, packing, per_channel):
    case = linear_case(64, 24, style=style, rows=_ternary_rows(24, 64))
    layout = WeightLayout(per_channel=per_channel, packing=packing)
    plan = make_plan(case.layer, weights=decision("BITNET158", layout), activations="I8")
    result, _ = rewrite(case.graph, [plan])
    model = export(case.graph)

    assert ops(model) == {"BitLinear": 1}
    node = model.graph.node[0]
    attrs = {a.name: a for a in node.attribute}
    assert attrs["K"].i == 64 and attrs["format"].s.decode() == packing.value
    arrays = initializers(model)
    packed, scale = arrays[node.input[1]], arrays[node.input[2]]
    assert packed.dtype == np.uint8 and packed.shape == (24, -(-64 // packing.weights_per_byte))
    assert scale.shape == ((24,) if per_channel else (1,))
    assert packed.nbytes + scale.nbytes == storage_bytes(DType.BITNET158, (24, 64), layout)
    assert set(arrays) == {node.input[1], node.input[2], "model.proj.bias"}  # the float weight is gone
    change = result.changes[0]
    assert change.action == "rewrite" and change.dtype == "BITNET158" and "BitLinear" in change.detail

    x = _x(case)
    (y,) = run(model, {"x": x})
    t = ternarize(case.rows, per_channel)
    expected = bitlinear_reference(x, pack_ternary(t.values, packing), t.scale, case.bias, 64, packing.value)
    np.testing.assert_array_equal(y, expected)
    assert relative_error(y, case.reference(x)) < 0.02


@pytest.mark.kernels
def test_case_1_float16_input_stays_float16_and_no_cast_is_added():
    case = linear_case(32, 16, bias=False, rows=_ternary_rows(16, 32), x_dtype=np.float16)
    plan = make_plan(case.layer, weights="BITNET158", activations="I8", outputs="F16")
    rewrite(case.graph, [plan])
    model = export(case.graph)
    assert ops(model) == {"BitLinear": 1}
    x = _x(case, dtype=np.float16)
    (y,) = run(model, {"x": x})
    assert y.dtype == np.float16
    t = ternarize(case.rows.astype(np.float16))  # the model holds its weights in float16
    np.testing.assert_array_equal(
        y, bitlinear_reference(x, pack_ternary(t.values, TernaryPacking.TWO_BIT), t.scale, None, 32, "2bit")
    )


@pytest.mark.kernels
@pytest.mark.parametrize("bias_dtype", [DType.F16, DType.BF16])
def test_bias_is_stored_in_its_precision_and_cast_to_float32_for_the_op(bias_dtype):
    case = linear_case(32, 16, rows=_ternary_rows(16, 32))
    plan = make_plan(case.layer, weights="BITNET158", activations="I8", bias=bias_dtype)
    rewrite(case.graph, [plan])
    model = export(case.graph)
    assert ops(model) == {"BitLinear": 1, "Cast": 1}
    bias = initializers(model)[f"model.proj.bias_{bias_dtype.name.lower()}"]
    assert bias.dtype == np.dtype(bias_dtype.numpy_type) and bias.shape == (16,)
    x = _x(case)
    (y,) = run(model, {"x": x})
    t = ternarize(case.rows)
    stored_bias = round_to(case.bias, bias_dtype)
    np.testing.assert_array_equal(
        y,
        bitlinear_reference(
            x, pack_ternary(t.values, TernaryPacking.TWO_BIT), t.scale, stored_bias, 32, "2bit"
        ),
    )


@pytest.mark.kernels
@pytest.mark.parametrize("outputs", [DType.F16, DType.BF16])
def test_float_outputs_are_rounded_to_their_precision_and_handed_on_in_the_model_type(outputs):
    case = linear_case(32, 16, rows=_ternary_rows(16, 32))
    plan = make_plan(case.layer, weights="BITNET158", activations="I8", outputs=outputs)
    rewrite(case.graph, [plan])
    model = export(case.graph)
    assert ops(model) == {"BitLinear": 1, "Cast": 2}
    assert model.graph.output[0].type.tensor_type.elem_type == 1  # the boundary keeps float32
    x = _x(case)
    (y,) = run(model, {"x": x})
    t = ternarize(case.rows)
    full = bitlinear_reference(
        x, pack_ternary(t.values, TernaryPacking.TWO_BIT), t.scale, case.bias, 32, "2bit"
    )
    np.testing.assert_array_equal(y, round_to(full, outputs))


@pytest.mark.kernels
def test_int8_outputs_are_quantized_per_tensor_and_dequantized():
    case = linear_case(32, 16, rows=_ternary_rows(16, 32))
    plan = make_plan(case.layer, weights="BITNET158", activations="I8", outputs="I8")
    rewrite(case.graph, [plan])
    model = export(case.graph)
    assert ops(model) == {"BitLinear": 1, "DynamicQuantizeLinear": 1, "DequantizeLinear": 1}
    x = _x(case)
    (y,) = run(model, {"x": x})
    t = ternarize(case.rows)
    full = bitlinear_reference(
        x, pack_ternary(t.values, TernaryPacking.TWO_BIT), t.scale, case.bias, 32, "2bit"
    )
    np.testing.assert_allclose(y, _qdq(full), rtol=0, atol=1e-6)


def _qdq(x: np.ndarray) -> np.ndarray:
    """ONNX DynamicQuantizeLinear → DequantizeLinear (uint8, asymmetric, per tensor)."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = F32((hi - lo) / 255.0)
    zero = np.clip(np.rint(-lo / scale), 0, 255)
    q = np.clip(np.rint(x / scale) + zero, 0, 255)
    return ((q - zero) * scale).astype(F32)


# -- case 2: ternary storage, float compute ------------------------------------------------------------


@pytest.mark.kernels
@pytest.mark.parametrize(
    ("style", "expected"),
    [
        ("matmul", {"DequantizeLowBit": 1, "Transpose": 1, "MatMul": 1, "Add": 1}),
        ("gemm", {"DequantizeLowBit": 1, "Gemm": 1}),
        ("transpose", {"DequantizeLowBit": 1, "Transpose": 1, "MatMul": 1, "Add": 1}),
    ],
)
def test_case_2_ternary_weights_with_float_activations_are_unpacked_for_a_float_matmul(style, expected):
    needs_op("DequantizeLowBit")
    case = linear_case(40, 24, style=style)
    plan = make_plan(case.layer, weights="BITNET158")
    result, _ = rewrite(case.graph, [plan])
    model = export(case.graph)
    assert ops(model) == expected
    assert "slower" in result.changes[0].detail
    x = _x(case)
    (y,) = run(model, {"x": x})
    t = ternarize(case.rows)
    w = t.values.astype(F32) * t.scale[0]
    np.testing.assert_allclose(y, x @ w.T + case.bias, rtol=1e-5, atol=1e-5)


@pytest.mark.kernels
def test_case_2_float16_activations_compute_in_float16():
    needs_op("DequantizeLowBit")
    case = linear_case(40, 24, rows=_ternary_rows(24, 40))
    plan = make_plan(case.layer, weights="BITNET158", activations="F16", bias="F16", outputs="F16")
    rewrite(case.graph, [plan])
    model = export(case.graph)
    assert ops(model) == {"DequantizeLowBit": 1, "Transpose": 1, "MatMul": 1, "Add": 1, "Cast": 2}
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLowBit")
    assert next(a.i for a in dq.attribute if a.name == "to") == 10  # FLOAT16
    x = _x(case)
    (y,) = run(model, {"x": x})
    expected = round_to(round_to(x, DType.F16) @ case.rows.T, DType.F16) + round_to(case.bias, DType.F16)
    np.testing.assert_allclose(y, expected, rtol=2e-3, atol=2e-3)


# -- case 3: LowBitMatMul ---------------------------------------------------------------------------------


@pytest.mark.kernels
@pytest.mark.parametrize(
    ("dtype", "asymmetric"),  # 1-bit codes are symmetric only (test_one_bit_weights_refuse_zero_points)
    [(DType.I4, False), (DType.I4, True), (DType.I2, False), (DType.I2, True), (DType.I1, False)],
)
@pytest.mark.parametrize("group_size", [None, 16])
@pytest.mark.parametrize("activations", [DType.I8, DType.F32])
def test_case_3_low_bit_weights_become_lowbit_matmul(dtype, asymmetric, group_size, activations):
    needs_op("LowBitMatMul")
    case = linear_case(40, 24, style="gemm")
    layout = WeightLayout(group_size=group_size, asymmetric=asymmetric)
    plan = make_plan(case.layer, weights=decision(dtype, layout), activations=activations)
    rewrite(case.graph, [plan])
    model = export(case.graph)

    assert ops(model) == {"LowBitMatMul": 1}
    node = model.graph.node[0]
    attrs = {a.name: a.i for a in node.attribute}
    g = resolve_group_size(40, dtype.bits, group_size)
    assert attrs == {"K": 40, "bits": dtype.bits, "group_size": g, "act_quant": int(activations is DType.I8)}
    arrays = initializers(model)
    weight_names = node.input[1:3] if not asymmetric else node.input[1:4]
    resolved = WeightLayout(group_size=g, asymmetric=asymmetric)
    assert _weights_bytes(model, weight_names) == storage_bytes(dtype, (24, 40), resolved)
    assert arrays[node.input[1]].shape == (24, -(-40 // g) * g * dtype.bits // 8)
    assert arrays[node.input[2]].shape == (24, -(-40 // g))

    x = _x(case)
    (y,) = run(model, {"x": x})
    gw = quantize_groups(case.rows, dtype.bits, g, asymmetric)
    packed = pack_int(gw.codes, dtype.bits, g, gw.zero_points)
    expected = lowbit_matmul_reference(
        x, packed, gw.scales, gw.zero_points, case.bias, 40, dtype.bits, g, int(activations is DType.I8)
    )
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    bound = {DType.I4: 0.25, DType.I2: 0.8, DType.I1: 0.9}[dtype]
    assert relative_error(y, case.reference(x)) < bound


def test_one_bit_weights_refuse_zero_points():
    case = linear_case(40, 24)
    plan = make_plan(case.layer, weights=decision("I1", WeightLayout(asymmetric=True)))
    with pytest.raises(ConfigError, match=r"model\.proj"):
        rewrite(case.graph, [plan])


# -- case 4: I8 -------------------------------------------------------------------------------------------


@pytest.mark.kernels
def test_case_4_int8_without_measurement_takes_lowbit_matmul():
    needs_op("LowBitMatMul")
    case = linear_case(48, 24)
    plan = make_plan(case.layer, weights="I8", activations="I8")
    result, _ = rewrite(case.graph, [plan], measure=False)
    model = export(case.graph)
    assert ops(model) == {"LowBitMatMul": 1}
    node = model.graph.node[0]
    assert {a.name: a.i for a in node.attribute} == {"K": 48, "bits": 8, "group_size": 48, "act_quant": 1}
    assert "LowBitMatMul (fixed)" in result.changes[0].detail
    arrays = initializers(model)
    assert _weights_bytes(model, node.input[1:3]) == storage_bytes(
        DType.I8, (24, 48), WeightLayout(group_size=48)
    )
    x = _x(case)
    (y,) = run(model, {"x": x})
    gw = quantize_groups(case.rows, 8, 48)
    expected = lowbit_matmul_reference(x, arrays[node.input[1]], gw.scales, None, case.bias, 48, 8, 48, 1)
    np.testing.assert_array_equal(y, expected)


@pytest.mark.kernels
@pytest.mark.parametrize("asymmetric", [False, True])
def test_case_4_int8_on_onnxruntime_uses_dynamic_quantize_matmul(monkeypatch, asymmetric):
    forced = int8_choice.Int8Choice(
        int8_choice.Int8Kernel.DYNAMIC_QUANTIZE_MATMUL,
        "measured",
        {"LowBitMatMul": 2.0, "DynamicQuantizeMatMul": 1.0},
    )
    monkeypatch.setattr(linear, "choose_int8_kernel", lambda *args: forced)
    case = linear_case(48, 24)
    layout = WeightLayout(asymmetric=asymmetric)
    plan = make_plan(case.layer, weights=decision("I8", layout), activations="I8")
    result, _ = rewrite(case.graph, [plan], measure=True)
    model = export(case.graph)
    assert ops(model) == {"DynamicQuantizeMatMul": 1}
    node = model.graph.node[0]
    arrays = initializers(model)
    b, scale = arrays[node.input[1]], arrays[node.input[2]]
    assert b.shape == (48, 24) and b.dtype == (np.uint8 if asymmetric else np.int8)
    weight_bytes = _weights_bytes(model, [n for n in node.input[1:4] if n])
    assert weight_bytes == storage_bytes(
        DType.I8, (24, 48), WeightLayout(group_size=48, asymmetric=asymmetric)
    )
    assert "DynamicQuantizeMatMul 1.0 µs" in result.changes[0].detail
    assert result.stats["int8_timed"] == 1

    x = _x(case)
    (y,) = run(model, {"x": x})
    zero = arrays[node.input[3]].astype(F32) if asymmetric else F32(0)
    w = (b.astype(F32) - zero) * scale  # [K, N]
    expected = _qdq(x) @ w + case.bias
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
    assert relative_error(y, case.reference(x)) < 0.05


def test_case_4_groups_within_a_row_take_lowbit_matmul_without_measuring(monkeypatch):
    monkeypatch.setattr(linear, "choose_int8_kernel", lambda *args: pytest.fail("nothing to measure"))
    case = linear_case(48, 24)
    plan = make_plan(case.layer, weights=decision("I8", WeightLayout(group_size=16)), activations="I8")
    result, _ = rewrite(case.graph, [plan], measure=True)
    assert "groups of 16 within a row" in result.changes[0].detail
    assert [n.op for n in case.graph.nodes] == ["LowBitMatMul"]


# -- cases 5, 6: float weights --------------------------------------------------------------------------


@pytest.mark.kernels
@pytest.mark.parametrize("weights", [DType.F16, DType.BF16])
@pytest.mark.parametrize("style", ["matmul", "gemm", "transpose"])
def test_case_5_float_weights_are_stored_in_their_type_and_cast_for_float32_compute(weights, style):
    case = linear_case(32, 16, style=style)
    plan = make_plan(case.layer, weights=weights)
    result, _ = rewrite(case.graph, [plan])
    model = export(case.graph)
    arrays = initializers(model)
    stored = [a for a in arrays.values() if a.dtype == np.dtype(weights.numpy_type)]
    assert len(stored) == 1 and stored[0].size == 32 * 16
    assert ops(model)["Cast"] == 1
    assert f"{weights.name} weights" in result.changes[0].detail
    x = _x(case)
    (y,) = run(model, {"x": x})
    np.testing.assert_allclose(y, x @ round_to(case.rows, weights).T + case.bias, rtol=1e-5, atol=1e-5)
    assert relative_error(y, case.reference(x)) < {DType.F16: 1e-3, DType.BF16: 1e-2}[weights]


@pytest.mark.kernels
def test_case_5_float16_weights_and_activations_compute_in_float16():
    case = linear_case(32, 16)
    plan = make_plan(case.layer, default="F16")
    rewrite(case.graph, [plan])
    model = export(case.graph)
    # x cast down, the product and the bias add in float16, the result cast back to float32
    assert ops(model) == {"Cast": 2, "MatMul": 1, "Add": 1}
    arrays = initializers(model)
    assert {a.dtype for a in arrays.values()} == {np.dtype(np.float16)}
    x = _x(case)
    (y,) = run(model, {"x": x})
    h = lambda a: round_to(a, DType.F16)  # noqa: E731
    np.testing.assert_allclose(y, h(h(h(x) @ h(case.rows).T) + h(case.bias)), rtol=2e-3, atol=2e-3)


def test_case_6_float32_everything_leaves_the_layer_as_it_was():
    case = linear_case(32, 16, style="transpose")
    before = [(n.op, n.name) for n in case.graph.nodes]
    plan = make_plan(case.layer)
    result, _ = rewrite(case.graph, [plan])
    assert [(n.op, n.name) for n in case.graph.nodes] == before
    assert not result.modified
    change = result.changes[0]
    assert change.detail.startswith("MatMul; constants 2112 → 2112 bytes")


@pytest.mark.kernels
def test_int8_activations_with_float_weights_are_emulated_per_tensor():
    case = linear_case(32, 16)
    plan = make_plan(case.layer, activations="I8")
    rewrite(case.graph, [plan])
    model = export(case.graph)
    assert ops(model) == {"DynamicQuantizeLinear": 1, "DequantizeLinear": 1, "MatMul": 1, "Add": 1}
    x = _x(case)
    (y,) = run(model, {"x": x})
    np.testing.assert_allclose(y, _qdq(x) @ case.rows.T + case.bias, rtol=1e-5, atol=1e-5)


# -- conversion: strategies, failures -----------------------------------------------------------------------


@pytest.mark.parametrize("strategy", [ConversionStrategy.QUANTIZATION_AWARE, ConversionStrategy.DIRECT])
def test_the_decisions_conversion_strategy_is_honoured(strategy):
    case = linear_case(40, 24, style="gemm", rows=(_ternary_rows(24, 40) * 30).astype(F32))
    plan = make_plan(case.layer, weights=decision("I4", strategy=strategy), activations="I8")
    rewrite(case.graph, [plan])
    node = case.graph.nodes[0]
    expected = PrecisionConverter(ConversionConfig(strategy=strategy)).convert_tensor(case.rows, DType.I4)
    np.testing.assert_array_equal(node.inputs[1].values, expected.data)
    np.testing.assert_array_equal(node.inputs[2].values, expected.scales)


def test_stochastic_rounding_is_seeded_per_compile_and_layer():
    def packed(seed: int) -> np.ndarray:
        case = linear_case(40, 24, style="gemm")
        plan = make_plan(case.layer, weights=decision("I2", strategy=ConversionStrategy.STOCHASTIC_ROUNDING))
        rewrite(case.graph, [plan], seed=seed)
        return case.graph.nodes[0].inputs[1].values

    np.testing.assert_array_equal(packed(3), packed(3))
    assert not np.array_equal(packed(3), packed(4))


@pytest.mark.parametrize("dtype", [DType.F16, DType.BITNET158, DType.I4, DType.I8])
def test_non_finite_weights_name_the_tensor_and_the_layer(dtype):
    rows = np.ones((8, 16), F32)
    rows[3, 5] = np.nan
    case = linear_case(16, 8, rows=rows)
    plan = make_plan(case.layer, weights=dtype, activations="I8")
    with pytest.raises(ConversionError, match=r"model\.proj\.weight.*NaN") as info:
        rewrite(case.graph, [plan])
    assert "layer 'model.proj'" in str(info.value)


def test_a_weight_computed_at_run_time_is_refused_naming_the_layer():
    case = linear_case(16, 8, bias=False)
    matmul = case.graph.nodes[0]
    matmul.inputs[1] = case.graph.inputs[0]  # not a constant any more
    plan = make_plan(case.layer, weights="I4")
    with pytest.raises(UnsupportedModelError, match=r"model\.proj"):
        rewrite(case.graph, [plan])


def test_output_layers_rewrite_like_linear_ones():
    case = linear_case(
        32, 64, bias=False, style="transpose", layer_type=LayerType.OUTPUT, rows=_ternary_rows(64, 32)
    )
    plan = make_plan(case.layer, weights="BITNET158", activations="I8")
    _, ctx = rewrite(case.graph, [plan])
    assert [n.op for n in case.graph.nodes] == ["BitLinear"]
    props = ctx.annotations[case.graph.nodes[0].name]
    assert props["bitnet.layer_type"] == "output" and props["bitnet.op"] == "BitLinear"
    assert props["bitnet.dtype.weights"] == "BITNET158" and props["bitnet.dtype.activations"] == "I8"
    assert props["bitnet.rule"] == "test:plan"


def test_bfloat16_values_survive_as_bfloat16_initializers():
    case = linear_case(32, 16, bias=False)
    rewrite(case.graph, [make_plan(case.layer, weights="BF16")])
    model = export(case.graph)
    (stored,) = [t for t in model.graph.initializer]
    assert stored.data_type == 16 and len(stored.raw_data) == 32 * 16 * 2
    np.testing.assert_array_equal(
        initializers(model)[stored.name].astype(F32), case.rows.T.astype(ml_dtypes.bfloat16).astype(F32)
    )


@pytest.mark.kernels
def test_an_i8_candidate_left_out_is_named_in_the_pass_stats(monkeypatch):
    forced = int8_choice.Int8Choice(
        int8_choice.Int8Kernel.DYNAMIC_QUANTIZE_MATMUL,
        "measured",
        {"DynamicQuantizeMatMul": 1.0},
        {"LowBitMatMul": "no LowBitMatMul in this build"},
    )
    monkeypatch.setattr(linear, "choose_int8_kernel", lambda *args: forced)
    case = linear_case(48, 24)
    plan = make_plan(case.layer, weights=decision("I8", WeightLayout()), activations="I8")
    result, _ = rewrite(case.graph, [plan], measure=True)
    assert result.stats["int8_timed"] == 1
    assert result.stats["int8_left_out.LowBitMatMul"] == "no LowBitMatMul in this build"
    assert "left out: LowBitMatMul: no LowBitMatMul in this build" in result.changes[0].detail
