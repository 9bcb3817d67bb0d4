"""MixedPrecisionConfig: resolution order, presets, immutability, validation."""

from __future__ import annotations

import pytest

from bitnet_onnx.config.config import (
    ComponentPrecisionConfig,
    LayerPrecisionConfig,
    MixedPrecisionConfig,
    MixedPrecisionStrategy,
    fit_layout,
)
from bitnet_onnx.config.policy import PolicyAction, PolicyRule, PrecisionPolicy
from bitnet_onnx.core.dtypes import ConversionStrategy, DType, TernaryPacking, TernaryScale, WeightLayout
from bitnet_onnx.core.errors import ConfigError
from bitnet_onnx.core.layers import ComponentType, LayerType, SupportMatrix
from bitnet_onnx.core.plan import Resolution

L, C, D = LayerType, ComponentType, DType
NAME = "layers.0.mlp.up_proj"


def custom() -> MixedPrecisionConfig:
    return MixedPrecisionConfig.new(MixedPrecisionStrategy.CUSTOM)


# -- one test per level --------------------------------------------------------------------------


def test_strategy_default_decides_when_nothing_else_is_set():
    assert custom().resolve(NAME, L.LINEAR, C.WEIGHTS) == Resolution(D.F32, "strategy:custom")


def test_component_default_level():
    cfg = custom().with_component_config(C.BIAS, ComponentPrecisionConfig(D.BF16))
    assert cfg.resolve(NAME, L.LINEAR, C.BIAS) == Resolution(D.BF16, "component:bias")
    assert cfg.resolve(NAME, L.LINEAR, C.WEIGHTS).source == "strategy:custom"


def test_layer_type_default_level_and_its_override():
    entry = LayerPrecisionConfig(L.LINEAR, D.I4).with_component_override(C.ACTIVATIONS, D.I8)
    cfg = custom().with_layer_type_config(entry)
    assert cfg.resolve(NAME, L.LINEAR, C.WEIGHTS) == Resolution(D.I4, "layer_type:linear")
    assert cfg.resolve(NAME, L.LINEAR, C.ACTIVATIONS) == Resolution(D.I8, "layer_type:linear/activations")
    assert cfg.resolve(NAME, L.ATTENTION, C.WEIGHTS).source == "strategy:custom"


def test_glob_level_and_its_override():
    cfg = custom().with_layer_config(
        "layers.*.mlp.*", LayerPrecisionConfig(None, D.I8).with_component_override(C.BIAS, D.F16)
    )
    assert cfg.resolve(NAME, L.LINEAR, C.WEIGHTS) == Resolution(D.I8, "glob:layers.*.mlp.*")
    assert cfg.resolve(NAME, L.LINEAR, C.BIAS) == Resolution(D.F16, "glob:layers.*.mlp.*/bias")
    assert cfg.resolve("layers.0.self_attn.q_proj", L.LINEAR, C.WEIGHTS).source == "strategy:custom"


def test_exact_layer_level_and_its_override():
    cfg = custom().with_layer_config(
        NAME, LayerPrecisionConfig(L.LINEAR, D.F16).with_component_override(C.WEIGHTS, D.I2)
    )
    assert cfg.resolve(NAME, L.LINEAR, C.WEIGHTS) == Resolution(D.I2, f"layer:{NAME}/weights")
    assert cfg.resolve(NAME, L.LINEAR, C.BIAS) == Resolution(D.F16, f"layer:{NAME}")
    assert cfg.resolve("layers.1.mlp.up_proj", L.LINEAR, C.WEIGHTS).source == "strategy:custom"


# -- precedence pairs ----------------------------------------------------------------------------

# Linear weights set at every level to a different precision, highest level first.
LEVELS = [
    ("exact override", D.I1, f"layer:{NAME}/weights"),
    ("exact", D.I2, f"layer:{NAME}"),
    ("glob override", D.I4, "glob:layers.*/weights"),
    ("glob", D.I8, "glob:layers.*"),
    ("layer type override", D.BF16, "layer_type:linear/weights"),
    ("layer type", D.F16, "layer_type:linear"),
    ("component", D.BITNET158, "component:weights"),
    ("strategy", D.F32, "strategy:custom"),
]


def config_from_level(first: int) -> MixedPrecisionConfig:
    """A config with the levels LEVELS[first:] set (an entry's override needs its entry)."""
    present = {name for name, _, _ in LEVELS[first:]}
    cfg = custom()
    if "component" in present:
        cfg = cfg.with_component_config(C.WEIGHTS, ComponentPrecisionConfig(D.BITNET158))
    for entry_name, override_name, entry_dtype, override_dtype, add in (
        ("layer type", "layer type override", D.F16, D.BF16, "type"),
        ("glob", "glob override", D.I8, D.I4, "layers.*"),
        ("exact", "exact override", D.I2, D.I1, NAME),
    ):
        if entry_name not in present:
            continue
        entry = LayerPrecisionConfig(L.LINEAR, entry_dtype)
        if override_name in present:
            entry = entry.with_component_override(C.WEIGHTS, override_dtype)
        cfg = cfg.with_layer_type_config(entry) if add == "type" else cfg.with_layer_config(add, entry)
    return cfg


@pytest.mark.parametrize("first", range(len(LEVELS)), ids=[name for name, _, _ in LEVELS])
def test_each_level_beats_every_level_below_it(first):
    _, dtype, source = LEVELS[first]
    assert config_from_level(first).resolve(NAME, L.LINEAR, C.WEIGHTS) == Resolution(dtype, source)


def test_exact_entry_precision_beats_a_glob_component_override():
    cfg = (
        custom()
        .with_layer_config(
            "layers.*", LayerPrecisionConfig(None, D.F16).with_component_override(C.WEIGHTS, D.I4)
        )
        .with_layer_config(NAME, LayerPrecisionConfig(None, D.BF16))
    )
    assert cfg.resolve(NAME, L.LINEAR, C.WEIGHTS) == Resolution(D.BF16, f"layer:{NAME}")


# -- a level applies only where the support matrix allows its precision ---------------------------


def test_layer_precision_decides_only_the_components_that_accept_it():
    cfg = MixedPrecisionConfig.balanced().with_layer_config(NAME, LayerPrecisionConfig(L.LINEAR, D.I4))
    assert cfg.resolve(NAME, L.LINEAR, C.WEIGHTS) == Resolution(D.I4, f"layer:{NAME}")
    # bias is float only and activations are float or I8: both fall through to the layer-type default
    assert cfg.resolve(NAME, L.LINEAR, C.BIAS) == Resolution(D.F16, "component:bias")
    assert cfg.resolve(NAME, L.LINEAR, C.ACTIVATIONS) == Resolution(D.I8, "layer_type:linear/activations")


def test_typeless_glob_passes_over_layer_types_that_cannot_take_its_precision():
    cfg = MixedPrecisionConfig.balanced().with_layer_config("layers.0.*", LayerPrecisionConfig(None, D.I4))
    assert cfg.resolve("layers.0.input_layernorm", L.NORMALIZATION, C.WEIGHTS) == Resolution(
        D.F16, "layer_type:normalization"
    )
    assert cfg.resolve(NAME, L.LINEAR, C.WEIGHTS).source == "glob:layers.0.*"


def test_typed_glob_applies_only_to_its_layer_type():
    cfg = MixedPrecisionConfig.balanced().with_layer_config(
        "layers.0.*", LayerPrecisionConfig(L.LINEAR, D.I8)
    )
    assert cfg.resolve(NAME, L.LINEAR, C.WEIGHTS).source == "glob:layers.0.*"
    assert cfg.resolve("layers.0.self_attn", L.ATTENTION, C.WEIGHTS) == Resolution(
        D.F16, "layer_type:attention"
    )


def test_exact_entry_of_the_wrong_layer_type_is_an_error():
    cfg = custom().with_layer_config("norm", LayerPrecisionConfig(L.LINEAR, D.I8))
    with pytest.raises(
        ConfigError, match=r"'norm' is a normalization layer but layers\['norm'\] is written for linear"
    ):
        cfg.resolve("norm", L.NORMALIZATION, C.WEIGHTS)


def test_knobs_come_from_the_deciding_level_only():
    entry = LayerPrecisionConfig(
        L.LINEAR, D.BITNET158, WeightLayout(per_channel=True), ConversionStrategy.DIRECT
    )
    cfg = (
        custom()
        .with_layer_type_config(LayerPrecisionConfig(L.LINEAR, D.I4, WeightLayout(group_size=32)))
        .with_layer_config(NAME, entry)
    )
    weights = cfg.resolve(NAME, L.LINEAR, C.WEIGHTS)
    assert weights.layout == WeightLayout(per_channel=True)
    assert weights.conversion_strategy is ConversionStrategy.DIRECT
    bias = cfg.resolve(NAME, L.LINEAR, C.BIAS)  # BITNET158 does not fit a bias: the type default decides
    assert (bias.dtype, bias.layout, bias.conversion_strategy) == (D.F32, WeightLayout(), None)


def test_resolve_reports_a_gap_when_the_config_was_not_validated():
    cfg = custom().with_default_precision(D.I4)
    with pytest.raises(ConfigError, match=r"'norm' \(normalization\).*weights.*allowed: F32, F16, BF16"):
        cfg.resolve("norm", L.NORMALIZATION, C.WEIGHTS)


# -- globs: most specific first ------------------------------------------------------------------


def test_more_literal_characters_win_over_a_literal_prefix():
    cfg = (
        custom()
        .with_layer_config("layers.*", LayerPrecisionConfig(None, D.F16))
        .with_layer_config("*.mlp.up_proj", LayerPrecisionConfig(None, D.I8))
    )
    assert cfg.resolve(NAME, L.LINEAR, C.WEIGHTS).source == "glob:*.mlp.up_proj"


def test_fewer_wildcards_win_at_equal_literal_characters():
    cfg = (
        custom()
        .with_layer_config("layers.*0*", LayerPrecisionConfig(None, D.F16))
        .with_layer_config("layers.0*", LayerPrecisionConfig(None, D.I8))
    )
    assert cfg.resolve(NAME, L.LINEAR, C.WEIGHTS).source == "glob:layers.0*"


@pytest.mark.parametrize(
    "first, second", [("layers.?.mlp.*", "layers.*.mlp.*"), ("layers.*.mlp.*", "layers.?.mlp.*")]
)
def test_equally_specific_globs_go_by_insertion_order(first, second):
    cfg = (
        custom()
        .with_layer_config(first, LayerPrecisionConfig(None, D.F16))
        .with_layer_config(second, LayerPrecisionConfig(None, D.I8))
    )
    assert cfg.resolve(NAME, L.LINEAR, C.WEIGHTS).source == f"glob:{first}"


def test_replacing_an_entry_keeps_its_place_in_the_order():
    cfg = (
        custom()
        .with_layer_config("layers.?.mlp.*", LayerPrecisionConfig(None, D.F16))
        .with_layer_config("layers.*.mlp.*", LayerPrecisionConfig(None, D.I8))
        .with_layer_config("layers.?.mlp.*", LayerPrecisionConfig(None, D.BF16))
    )
    assert list(cfg.layers) == ["layers.?.mlp.*", "layers.*.mlp.*"]
    assert cfg.resolve(NAME, L.LINEAR, C.WEIGHTS) == Resolution(D.BF16, "glob:layers.?.mlp.*")


def test_character_class_glob_and_case_sensitivity():
    cfg = custom().with_layer_config("layers.[01].mlp.*", LayerPrecisionConfig(None, D.I8))
    assert cfg.resolve(NAME, L.LINEAR, C.WEIGHTS).dtype is D.I8
    assert cfg.resolve("layers.2.mlp.up_proj", L.LINEAR, C.WEIGHTS).dtype is D.F32
    assert cfg.resolve("LAYERS.0.mlp.up_proj", L.LINEAR, C.WEIGHTS).dtype is D.F32


def test_config_equality_depends_on_layer_order():
    a = (
        custom()
        .with_layer_config("x.*", LayerPrecisionConfig(None, D.F16))
        .with_layer_config("*.y", LayerPrecisionConfig(None, D.I8))
    )
    b = (
        custom()
        .with_layer_config("*.y", LayerPrecisionConfig(None, D.I8))
        .with_layer_config("x.*", LayerPrecisionConfig(None, D.F16))
    )
    assert a != b
    assert a == custom().with_layer_config("x.*", LayerPrecisionConfig(None, D.F16)).with_layer_config(
        "*.y", LayerPrecisionConfig(None, D.I8)
    )


# -- presets -------------------------------------------------------------------------------------

# (layer type, component) -> precision, per preset, as in the presets module docstring.
EXPECTED = {
    "conservative": {
        (L.LINEAR, C.WEIGHTS): D.F16, (L.LINEAR, C.ACTIVATIONS): D.F32, (L.LINEAR, C.BIAS): D.F16,
        (L.LINEAR, C.OUTPUTS): D.F32, (L.CONVOLUTION, C.WEIGHTS): D.F16, (L.ATTENTION, C.WEIGHTS): D.F16,
        (L.ATTENTION, C.ACTIVATIONS): D.F32, (L.EMBEDDING, C.WEIGHTS): D.F16, (L.EMBEDDING, C.OUTPUTS): D.F32,
        (L.OUTPUT, C.WEIGHTS): D.F16, (L.OUTPUT, C.OUTPUTS): D.F32,
        (L.NORMALIZATION, C.WEIGHTS): D.F16, (L.NORMALIZATION, C.OUTPUTS): D.F32,
        (L.ACTIVATION, C.ACTIVATIONS): D.F32, (L.OTHER, C.WEIGHTS): D.F32,
    },
    "balanced": {
        (L.LINEAR, C.WEIGHTS): D.BITNET158, (L.LINEAR, C.ACTIVATIONS): D.I8, (L.LINEAR, C.BIAS): D.F16,
        (L.LINEAR, C.OUTPUTS): D.F32, (L.CONVOLUTION, C.WEIGHTS): D.BITNET158,
        (L.CONVOLUTION, C.ACTIVATIONS): D.I8, (L.ATTENTION, C.WEIGHTS): D.F16,
        (L.ATTENTION, C.ACTIVATIONS): D.F32, (L.EMBEDDING, C.WEIGHTS): D.F16, (L.OUTPUT, C.WEIGHTS): D.I8,
        (L.OUTPUT, C.ACTIVATIONS): D.I8, (L.OUTPUT, C.OUTPUTS): D.F32, (L.NORMALIZATION, C.WEIGHTS): D.F16,
        (L.NORMALIZATION, C.ACTIVATIONS): D.F32, (L.ACTIVATION, C.ACTIVATIONS): D.F32,
        (L.OTHER, C.WEIGHTS): D.F32, (L.OTHER, C.OUTPUTS): D.F32,
    },
    "aggressive": {
        (L.LINEAR, C.WEIGHTS): D.BITNET158, (L.LINEAR, C.ACTIVATIONS): D.I8, (L.LINEAR, C.BIAS): D.F16,
        (L.LINEAR, C.OUTPUTS): D.F32, (L.CONVOLUTION, C.WEIGHTS): D.BITNET158, (L.ATTENTION, C.WEIGHTS): D.I8,
        (L.ATTENTION, C.ACTIVATIONS): D.I8, (L.ATTENTION, C.OUTPUTS): D.F32, (L.EMBEDDING, C.WEIGHTS): D.I8,
        (L.EMBEDDING, C.OUTPUTS): D.F32, (L.OUTPUT, C.WEIGHTS): D.I8, (L.OUTPUT, C.ACTIVATIONS): D.I8,
        (L.OUTPUT, C.BIAS): D.F16, (L.OUTPUT, C.OUTPUTS): D.F32, (L.NORMALIZATION, C.WEIGHTS): D.F16,
        (L.NORMALIZATION, C.ACTIVATIONS): D.F32, (L.ACTIVATION, C.ACTIVATIONS): D.F32,
        (L.OTHER, C.WEIGHTS): D.F32,
    },
}  # fmt: skip


@pytest.mark.parametrize("strategy", sorted(EXPECTED))
def test_preset_tables(strategy):
    cfg = MixedPrecisionConfig.new(strategy)
    got = {key: cfg.resolve("layer", *key).dtype for key in EXPECTED[strategy]}
    assert got == EXPECTED[strategy]


@pytest.mark.parametrize("strategy", list(MixedPrecisionStrategy))
def test_no_preset_hands_on_int8_outputs(strategy):
    # The matrix accepts I8 outputs (the seed's layer specs use them); the presets never pick them.
    cfg = MixedPrecisionConfig.new(strategy)
    assert cfg.support.allows(L.ATTENTION, C.OUTPUTS, D.I8)
    outputs = {t: cfg.resolve("x", t, C.OUTPUTS) for t in LayerType}
    assert {t: r.dtype for t, r in outputs.items() if not r.dtype.is_float} == {}
    if strategy is MixedPrecisionStrategy.AGGRESSIVE:
        assert [str(outputs[t]) for t in (L.ATTENTION, L.EMBEDDING, L.OUTPUT)] == [
            "layer_type:attention/outputs→F32",
            "layer_type:embedding/outputs→F32",
            "layer_type:output/outputs→F32",
        ]


def test_preset_constructors_and_defaults():
    assert MixedPrecisionConfig.conservative() == MixedPrecisionConfig.new(
        MixedPrecisionStrategy.CONSERVATIVE
    )
    assert MixedPrecisionConfig.balanced().strategy is MixedPrecisionStrategy.BALANCED
    assert MixedPrecisionConfig.new("AGGRESSIVE") == MixedPrecisionConfig.aggressive()
    defaults = {s: MixedPrecisionConfig.new(s).default_precision for s in MixedPrecisionStrategy}
    assert defaults == {
        MixedPrecisionStrategy.CONSERVATIVE: D.F16,
        MixedPrecisionStrategy.BALANCED: D.I8,
        MixedPrecisionStrategy.AGGRESSIVE: D.I4,
        MixedPrecisionStrategy.CUSTOM: D.F32,
    }
    assert not custom().layer_types and not custom().components


def test_aggressive_knobs():
    cfg = MixedPrecisionConfig.aggressive()
    assert cfg.resolve("l", L.LINEAR, C.WEIGHTS).layout == WeightLayout(packing=TernaryPacking.BASE3)
    assert cfg.components[C.WEIGHTS] == ComponentPrecisionConfig(D.I4, WeightLayout(group_size=128))
    assert MixedPrecisionConfig.balanced().resolve("l", L.LINEAR, C.WEIGHTS).layout == WeightLayout()


@pytest.mark.parametrize("strategy", list(MixedPrecisionStrategy))
def test_every_preset_validates_and_resolves_everything(strategy):
    cfg = MixedPrecisionConfig.new(strategy)
    cfg.validate()
    for layer_type in LayerType:
        for component in ComponentType:
            resolution = cfg.resolve("x", layer_type, component)
            assert cfg.support.allows(layer_type, component, resolution.dtype)


def test_unknown_strategy_lists_choices():
    with pytest.raises(ConfigError, match="unknown strategy 'fast'; choose one of conservative, balanced"):
        MixedPrecisionConfig.new("fast")


# -- immutability --------------------------------------------------------------------------------


def test_with_component_override_returns_a_new_object():
    entry = LayerPrecisionConfig(L.ATTENTION, D.F16)
    changed = entry.with_component_override(C.WEIGHTS, D.I8)
    assert entry.component_overrides == {}
    assert changed.component_overrides == {C.WEIGHTS: ComponentPrecisionConfig(D.I8)}
    assert changed.precision is D.F16 and changed.layer_type is L.ATTENTION


def test_with_methods_leave_the_original_config_unchanged():
    base = MixedPrecisionConfig.balanced()
    changed = (
        base.with_layer_config("x", LayerPrecisionConfig(None, D.F16))
        .with_default_precision("F32")
        .with_component_config("bias", ComponentPrecisionConfig(D.F32))
    )
    assert base == MixedPrecisionConfig.balanced()
    assert not base.layers and base.default_precision is D.I8 and base.components[C.BIAS].precision is D.F16
    assert changed.default_precision is D.F32 and changed.components[C.BIAS].precision is D.F32


def test_strings_are_parsed_into_enums():
    entry = LayerPrecisionConfig("linear", "ternary", conversion_strategy="scaled").with_component_override(
        "bias", "fp16"
    )
    assert entry == LayerPrecisionConfig(
        L.LINEAR, D.BITNET158, conversion_strategy=ConversionStrategy.SCALED
    ).with_component_override(C.BIAS, D.F16)


def test_layer_type_default_needs_a_layer_type():
    with pytest.raises(ConfigError, match="needs a layer_type"):
        custom().with_layer_type_config(LayerPrecisionConfig(None, D.F16))


def test_resolution_str_is_the_log_form():
    assert str(Resolution(D.BITNET158, "layer_type:linear")) == "layer_type:linear→BITNET158"


# -- validation ----------------------------------------------------------------------------------


def problems_of(cfg: MixedPrecisionConfig) -> list[str]:
    with pytest.raises(ConfigError) as info:
        cfg.validate()
    return info.value.problems


def test_validate_lists_every_problem_at_once():
    cfg = (
        MixedPrecisionConfig.balanced()
        .with_layer_config("attn", LayerPrecisionConfig(L.ATTENTION, D.I4))
        .with_layer_config(
            "norm", LayerPrecisionConfig(L.NORMALIZATION, D.F16).with_component_override(C.WEIGHTS, D.I8)
        )
        .with_layer_config("layers.[0", LayerPrecisionConfig(None, D.F16))
        .with_layer_config("mlp", LayerPrecisionConfig(L.LINEAR, D.I4, WeightLayout(group_size=3)))
        .with_component_config(C.BIAS, ComponentPrecisionConfig(D.I8))
    )
    problems = problems_of(cfg)
    assert len(problems) == 5, problems
    expected = [
        "layers.attn.precision: I4 is not allowed for attention layers (allowed: F32, F16, BF16, I8)",
        "layers.norm.components.weights: I8 is not allowed for weights of normalization layers",
        "layers[\"layers.[0\"]: unclosed '['",
        "layers.mlp.group_size: 3 × 4 bits is not a whole number of bytes",
        "components.bias.precision: I8 is not allowed for bias in any layer type (allowed: F32, F16, BF16)",
    ]
    for text in expected:
        assert any(text in p for p in problems), (text, problems)


@pytest.mark.parametrize(
    "dtype, layout, strategy, words",
    [
        (
            D.I4,
            WeightLayout(group_size=3),
            None,
            "group_size: 3 × 4 bits is not a whole number of bytes; with I4 use a multiple of 2",
        ),
        (D.I1, WeightLayout(group_size=12), None, "with I1 use a multiple of 8"),
        (D.I2, WeightLayout(group_size=6), None, "with I2 use a multiple of 4"),
        (D.I8, WeightLayout(group_size=0), None, "group_size: must be a positive integer, not 0"),
        (D.I8, WeightLayout(group_size=True), None, "group_size: must be a positive integer, not True"),
        (D.F16, WeightLayout(group_size=32), None, "group_size: applies to I8, I4, I2 and I1 only, not F16"),
        (D.BITNET158, WeightLayout(group_size=32), None, "applies to I8, I4, I2 and I1 only, not BITNET158"),
        (D.I1, WeightLayout(asymmetric=True), None, "zero points apply to I8, I4 and I2 only, not I1"),
        (
            D.I4,
            WeightLayout(per_channel=True),
            None,
            "per-channel ternary scales apply to BITNET158 only, not I4",
        ),
        (
            D.I8,
            WeightLayout(packing=TernaryPacking.BASE3),
            None,
            "ternary packing applies to BITNET158 only, not I8",
        ),
        (
            D.I8,
            WeightLayout(ternary_scale=TernaryScale.LEAST_SQUARES),
            None,
            "ternary_scale: the ternary scale rule applies to BITNET158 only, not I8",
        ),
        (D.BITNET158, WeightLayout(ternary_scale="absmean"), None, "ternary_scale: must be a TernaryScale"),
        (
            D.I4,
            WeightLayout(asymmetric=True),
            ConversionStrategy.DIRECT,
            "DIRECT conversion stores raw values",
        ),
    ],
)
def test_bad_knobs(dtype, layout, strategy, words):
    cfg = custom().with_layer_config("l", LayerPrecisionConfig(L.LINEAR, dtype, layout, strategy))
    problems = problems_of(cfg)
    assert len(problems) == 1 and words in problems[0], problems


@pytest.mark.parametrize("dtype, group", [(D.I8, 1), (D.I4, 2), (D.I2, 4), (D.I1, 8), (D.I4, 128)])
def test_good_group_sizes(dtype, group):
    custom().with_layer_config(
        "l", LayerPrecisionConfig(L.LINEAR, dtype, WeightLayout(group_size=group))
    ).validate()


@pytest.mark.parametrize(
    "key, words", [("", "must not be empty"), (" x", "leading or trailing spaces"), ("a[!", "unclosed '['")]
)
def test_bad_layer_keys(key, words):
    problems = problems_of(custom().with_layer_config(key, LayerPrecisionConfig(None, D.F16)))
    assert any(words in p for p in problems), problems


def test_gaps_in_the_defaults_are_reported_per_layer_type():
    problems = problems_of(custom().with_default_precision(D.I4))
    # I4 fits only linear and convolution weights; every other pair has nothing to fall back on
    assert len(problems) == 8, problems
    assert any(
        p.startswith(
            "default_precision: linear layers get no allowed precision for "
            "bias, activations, outputs, gradients"
        )
        for p in problems
    ), problems
    assert any("attention layers get no allowed precision for weights, bias" in p for p in problems)


def test_a_wrong_default_is_not_reported_twice():
    cfg = custom().with_component_config(C.BIAS, ComponentPrecisionConfig(D.I8)).with_default_precision(D.I8)
    problems = problems_of(cfg)
    assert len(problems) == 1 and "components.bias.precision" in problems[0], problems


def test_layer_type_key_must_match_its_entry():
    cfg = MixedPrecisionConfig(
        MixedPrecisionStrategy.CUSTOM,
        D.F32,
        layer_types={L.LINEAR: LayerPrecisionConfig(L.CONVOLUTION, D.F16)},
    )
    assert problems_of(cfg) == [
        "layer_types.linear.layer_type: must be 'linear' (the key), not 'convolution'"
    ]


def test_support_matrix_overrides_change_what_validates():
    entry = LayerPrecisionConfig(L.ATTENTION, D.I4)
    assert problems_of(custom().with_layer_config("a", entry))
    cfg = (
        custom()
        .with_layer_config("a", entry)
        .with_support(SupportMatrix().with_layer(L.ATTENTION, [D.F32, D.I4]))
    )
    cfg.validate()
    assert cfg.resolve("a", L.ATTENTION, C.WEIGHTS) == Resolution(D.I4, "layer:a")


def test_support_matrix_without_a_row_is_reported():
    support = SupportMatrix(layers={t: frozenset(DType) for t in LayerType if t is not L.OTHER})
    problems = problems_of(custom().with_support(support))
    assert problems == ["support.layers: no row for other; every layer needs one"]


def test_policy_problems_are_part_of_validation():
    bad = PrecisionPolicy("p").add_rule(PolicyRule("r", PolicyAction.set_precision(D.I4)))
    bad = bad.add_rule(PolicyRule("r", PolicyAction.raise_precision(0)))
    cfg = custom().with_policy(bad).with_policy(PrecisionPolicy("p"))
    problems = problems_of(cfg)
    assert "policies[0].rules[1].id: duplicate rule id 'r' (also rules[0])" in problems
    assert "policies[0].rules[1].action.steps: must be a positive integer, not 0" in problems
    assert "policies[1].id: duplicate policy id 'p' (also policies[0])" in problems
    assert len(problems) == 3


# -- fit_layout ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype, layout, expected",
    [
        (D.I4, WeightLayout(group_size=64, asymmetric=True), WeightLayout(group_size=64, asymmetric=True)),
        (D.I1, WeightLayout(group_size=4, asymmetric=True), WeightLayout()),
        (D.I1, WeightLayout(group_size=64), WeightLayout(group_size=64)),
        (D.F16, WeightLayout(group_size=64, per_channel=True), WeightLayout()),
        (
            D.BITNET158,
            WeightLayout(group_size=64, per_channel=True, packing=TernaryPacking.BASE3),
            WeightLayout(per_channel=True, packing=TernaryPacking.BASE3),
        ),
        (D.I8, WeightLayout(per_channel=True, packing=TernaryPacking.BASE3), WeightLayout()),
        (
            D.BITNET158,
            WeightLayout(ternary_scale=TernaryScale.LEAST_SQUARES),
            WeightLayout(ternary_scale=TernaryScale.LEAST_SQUARES),
        ),
        (
            D.I4,
            WeightLayout(group_size=32, ternary_scale=TernaryScale.LEAST_SQUARES),
            WeightLayout(group_size=32),
        ),
    ],
)
def test_fit_layout_keeps_only_knobs_that_fit(dtype, layout, expected):
    assert fit_layout(dtype, layout) == expected


def test_non_string_layer_keys_are_reported():
    problems = problems_of(custom().with_layer_config(3, LayerPrecisionConfig(None, D.F16)))  # type: ignore[arg-type]
    assert problems == ["layers: key 3 must be a string (a layer name or glob)"]


# -- the seed README's examples, in Python ------------------------------------------------------


def test_seed_basic_configuration():
    config = MixedPrecisionConfig.balanced()
    custom_config = MixedPrecisionConfig.new(MixedPrecisionStrategy.CUSTOM).with_layer_config(
        "attention_layer",
        LayerPrecisionConfig(LayerType.ATTENTION, DType.F16).with_component_override(
            ComponentType.WEIGHTS, DType.I8
        ),
    )
    config.validate()
    custom_config.validate()
    assert custom_config.resolve("attention_layer", L.ATTENTION, C.WEIGHTS) == Resolution(
        D.I8, "layer:attention_layer/weights"
    )
    assert custom_config.resolve("attention_layer", L.ATTENTION, C.ACTIVATIONS).dtype is D.F16
    assert config.resolve("linear_0", L.LINEAR, C.WEIGHTS).dtype is D.BITNET158
    assert config.resolve("linear_0", L.LINEAR, C.ACTIVATIONS).dtype is D.I8


def test_seed_critical_layers_at_higher_precision():
    config = MixedPrecisionConfig.aggressive().with_layer_config(
        "output_layer", LayerPrecisionConfig(LayerType.OUTPUT, DType.F16)
    )
    config.validate()
    assert config.resolve("output_layer", L.OUTPUT, C.WEIGHTS) == Resolution(D.F16, "layer:output_layer")
    assert config.resolve("lm_head", L.OUTPUT, C.WEIGHTS) == Resolution(D.I8, "layer_type:output")
