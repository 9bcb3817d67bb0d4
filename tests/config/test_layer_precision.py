from __future__ import annotations

import pytest

from bitnet_onnx.config.layer_precision import LayerPrecisionManager, LayerPrecisionSpec, MemoryOptimization
from bitnet_onnx.core.dtypes import DType, TernaryPacking, WeightLayout
from bitnet_onnx.core.errors import ConfigError
from bitnet_onnx.core.layers import ComponentType, LayerType, SupportMatrix

W, B, ACT, OUT, GRAD = (
    ComponentType.WEIGHTS,
    ComponentType.BIAS,
    ComponentType.ACTIVATIONS,
    ComponentType.OUTPUTS,
    ComponentType.GRADIENTS,
)


def spec(
    name: str = "l0", layer_type: LayerType = LayerType.LINEAR, *precisions: DType, **kw
) -> LayerPrecisionSpec:
    inp, out, weight = precisions or (DType.F32, DType.F32, DType.F32)
    return LayerPrecisionSpec(name, layer_type, inp, out, weight, **kw)


# --- LayerPrecisionSpec ---------------------------------------------------------------------------


def test_precision_for_maps_components_to_fields() -> None:
    s = spec("l0", LayerType.LINEAR, DType.I8, DType.F16, DType.BITNET158)
    assert s.precision_for(W) is DType.BITNET158
    assert s.precision_for(ACT) is DType.I8
    assert s.precision_for(OUT) is DType.F16
    assert s.precision_for("bias") is DType.F16  # bias follows a float output by default


@pytest.mark.parametrize(
    ("output", "bias"),
    [(DType.F32, DType.F32), (DType.F16, DType.F16), (DType.BF16, DType.BF16), (DType.I8, DType.F32)],
)
def test_default_bias_is_the_float_output_else_f32(output: DType, bias: DType) -> None:
    # The bias is added in float before an I8 output is quantized, so it stays F32 then.
    s = spec("l0", LayerType.LINEAR, DType.I8, output, DType.BITNET158)
    assert s.bias_precision is None
    assert s.precision_for(B) is bias
    assert s.with_component_precision(B, DType.F16).precision_for(B) is DType.F16


def test_gradients_are_not_applicable_to_inference() -> None:
    s = spec().with_component_precision(GRAD, DType.F16)
    assert s.gradient_precision is DType.F16  # recorded for parity with the seed
    with pytest.raises(ConfigError, match=r"'l0'.*gradients.*not applicable to inference"):
        s.precision_for(GRAD)


@pytest.mark.parametrize(
    ("component", "field"),
    [(W, "weight_precision"), (ACT, "input_precision"), (OUT, "output_precision"), (B, "bias_precision")],
)
def test_with_component_precision_returns_a_new_spec(component: ComponentType, field: str) -> None:
    original = spec()
    changed = original.with_component_precision(component, "bf16")
    assert getattr(changed, field) is DType.BF16
    assert changed.precision_for(component) is DType.BF16
    assert original.precision_for(component) is DType.F32
    assert original.bias_precision is None


def test_with_dynamic_adjustment_returns_a_new_spec() -> None:
    original = spec()
    assert not original.dynamic_adjustment
    assert original.with_dynamic_adjustment().dynamic_adjustment
    assert not original.dynamic_adjustment


def test_strings_are_parsed() -> None:
    s = LayerPrecisionSpec("l0", "attention", "fp16", "float32", "int8", weight_shape=[4, 8])
    assert (s.layer_type, s.input_precision, s.output_precision, s.weight_precision) == (
        LayerType.ATTENTION,
        DType.F16,
        DType.F32,
        DType.I8,
    )
    assert s.weight_shape == (4, 8)


@pytest.mark.parametrize("shape", [(), (4, 0), (4, -1), (4.0, 2)])
def test_bad_shape_names_the_layer(shape: tuple) -> None:
    with pytest.raises(ConfigError, match=r"'l0'.*weight_shape.*positive integers"):
        spec(weight_shape=shape)


def test_bad_name_and_dtype_raise_config_error() -> None:
    with pytest.raises(ConfigError, match=r"non-empty string"):
        spec("  ")
    with pytest.raises(ConfigError, match=r"unknown precision 'int3'"):
        LayerPrecisionSpec("l0", LayerType.LINEAR, "int3", DType.F32, DType.F32)


@pytest.mark.parametrize(
    ("dtype", "shape", "layout", "expected"),
    [
        (DType.F32, (8, 16), WeightLayout(), 8 * 16 * 4),
        (DType.F16, (8, 16), WeightLayout(), 8 * 16 * 2),
        (DType.BF16, (8, 16), WeightLayout(), 8 * 16 * 2),
        # one float32 scale per row when no group size is given
        (DType.I8, (8, 16), WeightLayout(), 8 * 16 + 8 * 4),
        (DType.I8, (8, 16), WeightLayout(group_size=8), 8 * 16 + 8 * 2 * 4),
        # 2 groups per row, 4 bytes of data per group, scale + zero point per group
        (DType.I4, (8, 16), WeightLayout(group_size=8, asymmetric=True), 8 * 8 + 8 * 2 * (4 + 1)),
        (DType.I2, (8, 16), WeightLayout(), 8 * 4 + 8 * 4),
        (DType.I1, (8, 16), WeightLayout(), 8 * 2 + 8 * 4),
        # ternary: 4 weights per byte, one scale per tensor (or per row)
        (DType.BITNET158, (8, 20), WeightLayout(), 8 * 5 + 4),
        (DType.BITNET158, (8, 20), WeightLayout(per_channel=True), 8 * 5 + 8 * 4),
        (DType.BITNET158, (8, 20), WeightLayout(packing=TernaryPacking.BASE3), 8 * 4 + 4),
    ],
)
def test_weight_bytes_hand_computed(dtype: DType, shape: tuple, layout: WeightLayout, expected: int) -> None:
    s = spec(weight_shape=shape, layout=layout).with_component_precision(W, dtype)
    assert s.component_bytes(W) == expected
    assert s.memory_bytes() == expected
    assert s.parameter_count == shape[0] * shape[1]


def test_bias_and_transient_components_bytes() -> None:
    s = spec(weight_shape=(8, 16), bias_shape=(8,)).with_component_precision(B, DType.F16)
    assert s.component_bytes(B) == 8 * 2
    assert s.component_bytes(ACT) == 0
    assert s.component_bytes(OUT) == 0
    assert s.component_bytes(W, DType.I8) == 8 * 16 + 8 * 4
    assert s.memory_bytes() == 8 * 16 * 4 + 8 * 2
    assert s.parameter_count == 8 * 16 + 8


def test_spec_without_shapes_stores_nothing() -> None:
    s = spec(layer_type=LayerType.ACTIVATION)
    assert s.memory_bytes() == 0
    assert s.parameter_count == 0


# --- LayerPrecisionManager: registration and lookup ------------------------------------------------


def test_register_and_look_up_in_order() -> None:
    m = LayerPrecisionManager()
    names = ["decoder.layers.0.self_attn.q_proj", "decoder.layers.0.mlp.up_proj", "lm_head"]
    for name in names:
        m.register_layer(spec(name))
    assert [s.name for s in m.layers()] == names
    assert m.get_layer("lm_head").name == "lm_head"
    assert len(m) == 3
    assert "lm_head" in m
    m.unregister("lm_head")
    assert "lm_head" not in m
    assert [s.name for s in m.layers()] == names[:2]


def test_duplicate_name_is_an_error() -> None:
    m = LayerPrecisionManager()
    m.register_layer(spec("blocks.0.fc"))
    with pytest.raises(ConfigError, match=r"'blocks.0.fc' is already registered"):
        m.register_layer(spec("blocks.0.fc"))
    assert len(m) == 1


def test_unknown_layer_suggests_close_names() -> None:
    m = LayerPrecisionManager()
    for name in ("decoder.layers.0.mlp.up_proj", "decoder.layers.0.mlp.down_proj", "lm_head"):
        m.register_layer(spec(name))
    with pytest.raises(
        ConfigError,
        match=r"unknown layer 'decoder.layers.0.mlp.up_prj'.*did you mean 'decoder.layers.0.mlp.up_proj'",
    ):
        m.get_layer("decoder.layers.0.mlp.up_prj")
    with pytest.raises(ConfigError, match=r"unknown layer 'zzz' \(3 registered\); register it"):
        m.get_layer("zzz")
    with pytest.raises(ConfigError, match=r"unknown layer 'lm_haed'.*'lm_head'"):
        m.unregister("lm_haed")


def test_unsupported_precisions_are_all_reported() -> None:
    m = LayerPrecisionManager()
    m.register_layer(spec("attn"))
    bad = spec("attn", LayerType.ATTENTION, DType.I4, DType.I8, DType.I4, bias_precision=DType.I8)
    with pytest.raises(ConfigError) as info:
        m.register_layer(bad)
    problems = info.value.problems
    assert len(problems) == 4
    assert "already registered" in problems[0]
    assert "'attn' (attention): weights in I4 is not supported" in problems[1]
    assert problems[1].endswith("choose one of F32, F16, BF16, I8")
    assert "bias in I8 is not supported; choose one of F32, F16, BF16" in problems[2]
    assert "activations in I4 is not supported; choose one of F32, F16, BF16, I8" in problems[3]


def test_unsupported_default_bias_says_where_it_comes_from() -> None:
    m = LayerPrecisionManager(SupportMatrix().with_component(B, {DType.F32}))
    with pytest.raises(ConfigError) as info:
        m.register_layer(spec("l0", LayerType.LINEAR, DType.I8, DType.F16, DType.BITNET158))
    assert info.value.problems == [
        "layer 'l0' (linear): bias in F16 (the default: the outputs' precision if float, else F32) "
        "is not supported; choose one of F32"
    ]
    # An I8 output leaves the bias at F32, which this matrix accepts.
    m.register_layer(spec("l1", LayerType.LINEAR, DType.I8, DType.I8, DType.BITNET158))
    assert m.get_layer("l1").precision_for(B) is DType.F32


def test_normalization_accepts_floats_only_for_every_component() -> None:
    m = LayerPrecisionManager()
    with pytest.raises(
        ConfigError, match=r"'ln'.*activations in I8 is not supported; choose one of F32, F16, BF16"
    ):
        m.register_layer(spec("ln", LayerType.NORMALIZATION, DType.I8, DType.F16, DType.F16))


def test_custom_support_matrix_is_honoured() -> None:
    matrix = SupportMatrix().with_layer(LayerType.ATTENTION, {DType.F32, DType.F16, DType.I8, DType.I4})
    m = LayerPrecisionManager(support_matrix=matrix)
    s = spec("attn", LayerType.ATTENTION, DType.F16, DType.F16, DType.I4)
    m.register_layer(s)
    assert m.get_layer("attn").precision_for(W) is DType.I4
    with pytest.raises(ConfigError, match=r"'attn' \(attention\): weights in I4 is not supported"):
        LayerPrecisionManager().register_layer(s)


# --- memory ---------------------------------------------------------------------------------------


def three_layers() -> LayerPrecisionManager:
    """l0: linear F32 [8,16] + bias [8] (512 + 32 bytes), a0: attention F32 [16,16] (1024 bytes),
    both movable; n0: normalization F32 [16] (64 bytes), pinned. Total 1632 bytes."""
    m = LayerPrecisionManager()
    m.register_layer(spec("l0", weight_shape=(8, 16), bias_shape=(8,)).with_dynamic_adjustment())
    m.register_layer(spec("a0", LayerType.ATTENTION, weight_shape=(16, 16)).with_dynamic_adjustment())
    m.register_layer(spec("n0", LayerType.NORMALIZATION, weight_shape=(16,)))
    return m


def test_memory_bytes_per_layer_and_total() -> None:
    m = three_layers()
    assert m.memory_by_layer() == {"l0": 544, "a0": 1024, "n0": 64}
    assert m.memory_bytes() == 1632


def moves(result) -> list[tuple]:
    return [(p.layer, p.component, p.from_dtype, p.to_dtype, p.bytes_before, p.bytes_after) for p in result]


def test_optimize_stops_at_first_move_reaching_target() -> None:
    # Best first move: a0 F32->F16 saves 512 bytes for one ladder step; 512 >= 0.3 * 1632.
    r = three_layers().optimize_for_memory(0.3)
    assert moves(r) == [("a0", W, DType.F32, DType.F16, 1024, 512)]
    assert (r.bytes_before, r.bytes_after, r.bytes_saved) == (1632, 1120, 512)
    assert r.feasible
    assert r.achieved_reduction == pytest.approx(512 / 1632)


def test_optimize_for_half_hand_checked() -> None:
    # Goal 816 bytes. a0 F32->F16 (512/step), l0 F32->F16 (256/step): 768 saved. Next best per step:
    # a0 F16->I8 512->320 over 2 steps (BF16 saves nothing) = 96/step, beating l0 F16->I8 (48/step)
    # and l0 bias F32->F16 (16/step): 960 saved.
    r = three_layers().optimize_for_memory(0.5)
    assert moves(r) == [
        ("l0", W, DType.F32, DType.F16, 512, 256),
        ("a0", W, DType.F32, DType.I8, 1024, 320),
    ]
    assert [p.bytes_saved for p in r] == [256, 704]
    assert r.bytes_after == 672
    assert r.feasible


def test_infeasible_target_reports_best_plan() -> None:
    # Lowest reachable: a0 at I8 (attention floor) 320; l0 weights at BITNET158 32+4 = 36 (I1, 16+32 = 48,
    # stores more, so it is never offered); l0 bias F16 16; n0 pinned 64. Total 436.
    r = three_layers().optimize_for_memory(0.9)
    assert not r.feasible
    assert r.bytes_after == 436
    assert r.achieved_reduction == pytest.approx((1632 - 436) / 1632)
    assert moves(r) == [
        ("l0", W, DType.F32, DType.BITNET158, 512, 36),
        ("l0", B, DType.F32, DType.F16, 32, 16),
        ("a0", W, DType.F32, DType.I8, 1024, 320),
    ]
    assert all(p.layer != "n0" for p in r)


def test_pinned_layers_are_never_moved() -> None:
    m = LayerPrecisionManager()
    m.register_layer(spec("fixed", weight_shape=(64, 64)))
    r = m.optimize_for_memory(0.5)
    assert len(r) == 0
    assert not r.feasible
    assert r.achieved_reduction == 0.0
    assert m.get_layer("fixed").weight_precision is DType.F32


def test_zero_target_and_empty_manager() -> None:
    r = three_layers().optimize_for_memory(0.0)
    assert len(r) == 0 and r.feasible
    empty = LayerPrecisionManager().optimize_for_memory(0.5)
    assert empty.bytes_before == 0 and not empty.feasible


@pytest.mark.parametrize("target", [-0.1, 1.5])
def test_target_out_of_range(target: float) -> None:
    with pytest.raises(ConfigError, match=r"target_reduction.*between 0 and 1"):
        three_layers().optimize_for_memory(target)


def test_ties_follow_registration_order_and_are_deterministic() -> None:
    m = LayerPrecisionManager()
    for name in ("second", "first"):
        m.register_layer(spec(name, weight_shape=(4, 4)).with_dynamic_adjustment())
    r = m.optimize_for_memory(0.25)  # one F32->F16 move (32 of 128 bytes) is enough
    assert moves(r) == [("second", W, DType.F32, DType.F16, 64, 32)]
    assert moves(m.optimize_for_memory(0.7)) == moves(m.optimize_for_memory(0.7))


# --- apply ----------------------------------------------------------------------------------------


def test_apply_reaches_predicted_bytes() -> None:
    m = three_layers()
    r = m.optimize_for_memory(0.5)
    m.apply_optimizations(r)
    assert m.get_layer("l0").weight_precision is DType.F16
    assert m.get_layer("a0").weight_precision is DType.I8
    assert m.get_layer("l0").precision_for(B) is DType.F32
    assert m.memory_bytes() == r.bytes_after == 672


def test_stale_proposals_are_all_reported_and_nothing_changes() -> None:
    m = three_layers()
    r = m.optimize_for_memory(0.5)
    m.apply_optimizations(r)
    bogus = [
        *r,
        MemoryOptimization("ghost", W, DType.F32, DType.F16, 8, 4),
        MemoryOptimization("n0", W, DType.F32, DType.F16, 64, 32),
        MemoryOptimization("a0", W, DType.I8, DType.I4, 320, 192),
    ]
    with pytest.raises(ConfigError) as info:
        m.apply_optimizations(bogus)
    problems = info.value.problems
    assert len(problems) == 5
    assert "'l0' weights F32->F16: stale, the layer now has F16" in problems[0]
    assert "'a0' weights F32->I8: stale" in problems[1]
    assert "'ghost'" in problems[2] and "not registered" in problems[2]
    assert "'n0'" in problems[3] and "pinned" in problems[3]
    assert "weights in I4 is not supported" in problems[4]
    assert m.memory_bytes() == 672


def test_proposal_is_stale_when_shape_changed() -> None:
    m = three_layers()
    r = m.optimize_for_memory(0.3)
    m.unregister("a0")
    m.register_layer(spec("a0", LayerType.ATTENTION, weight_shape=(16, 8)).with_dynamic_adjustment())
    with pytest.raises(ConfigError, match=r"'a0'.*stale.*F32 \(512 bytes\)"):
        m.apply_optimizations(r)
