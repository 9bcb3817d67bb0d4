"""PrecisionChoice labels and config entries, candidate lists, objectives and their validation."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from bitnet_onnx import ComponentType, ConfigError, DType, LayerType, MixedPrecisionConfig, SupportMatrix
from bitnet_onnx.core.dtypes import ConversionStrategy, TernaryPacking, WeightLayout
from bitnet_onnx.core.layers import Layer
from bitnet_onnx.core.plan import components_of
from bitnet_onnx.optimize.objectives import (
    DEFAULT_ACCURACY_FLOOR,
    GPTQ_ROWS_PER_INPUT,
    Accuracy,
    Balanced,
    Memory,
    OptimizationObjective,
    PrecisionChoice,
    Speed,
    candidate_choices,
)

_BASE3 = TernaryPacking.BASE3
W, B, A, OUT = ComponentType.WEIGHTS, ComponentType.BIAS, ComponentType.ACTIVATIONS, ComponentType.OUTPUTS


def _layer(layer_type: LayerType, weight: bool = True) -> Layer:
    return Layer(
        "l",
        layer_type,
        0,
        ("n",),
        "rule",
        weight="w" if weight else None,
        weight_shape=(8, 8) if weight else None,
    )


@pytest.mark.parametrize(
    ("label", "weights", "activations", "layout"),
    [
        ("F32", DType.F32, None, WeightLayout()),
        ("F16", DType.F16, None, WeightLayout()),
        ("F16/F32", DType.F16, DType.F32, WeightLayout()),
        ("I8/I8", DType.I8, DType.I8, WeightLayout()),
        ("I8/F32", DType.I8, DType.F32, WeightLayout()),
        ("I4g128/I8", DType.I4, DType.I8, WeightLayout(group_size=128)),
        ("I4g32z/F32", DType.I4, DType.F32, WeightLayout(group_size=32, asymmetric=True)),
        ("BITNET158/I8", DType.BITNET158, DType.I8, WeightLayout()),
        (
            "BITNET158pcb3/I8",
            DType.BITNET158,
            DType.I8,
            WeightLayout(per_channel=True, packing=TernaryPacking.BASE3),
        ),
        ("I1g64/F32", DType.I1, DType.F32, WeightLayout(group_size=64)),
    ],
)
def test_label_round_trip(
    label: str, weights: DType, activations: DType | None, layout: WeightLayout
) -> None:
    choice = PrecisionChoice(weights, activations, layout)
    assert choice.label == label == str(choice)
    assert PrecisionChoice.parse(label) == choice


def test_one_spelling_per_choice() -> None:
    assert PrecisionChoice(DType.F16, DType.F16) == PrecisionChoice(DType.F16)
    assert PrecisionChoice(DType.I4) == PrecisionChoice(DType.I4, DType.F32)  # integer weights: F32 acts
    assert PrecisionChoice.parse("i8").label == "I8/F32"
    assert PrecisionChoice(None, DType.F16).label == "F16"
    assert PrecisionChoice.parse("F16/F32").weightless() == PrecisionChoice(None, DType.F32)


@pytest.mark.parametrize("bad", ["", "F99", "I4g/I8", "I4 g128", "BITNET158/I8/I8"])
def test_parse_rejects(bad: str) -> None:
    with pytest.raises(ConfigError, match="not a label like"):
        PrecisionChoice.parse(bad)


def test_choice_needs_something() -> None:
    with pytest.raises(ConfigError, match="needs weights or activations"):
        PrecisionChoice(None, None)


def test_to_layer_config_resolves_every_component() -> None:
    base = MixedPrecisionConfig.balanced()  # F16 outputs, I8 activations, F16 bias by default
    cases = {
        "BITNET158/I8": {W: DType.BITNET158, B: DType.F32, A: DType.I8, OUT: DType.F32},
        "I4g128/F32": {W: DType.I4, B: DType.F32, A: DType.F32, OUT: DType.F32},
        "F16": {W: DType.F16, B: DType.F16, A: DType.F16, OUT: DType.F16},
        "F16/F32": {W: DType.F16, B: DType.F16, A: DType.F32, OUT: DType.F32},
        "F32": {W: DType.F32, B: DType.F32, A: DType.F32, OUT: DType.F32},
    }
    for label, expected in cases.items():
        choice = PrecisionChoice.parse(label)
        config = base.with_layer_config("l", choice.to_layer_config(LayerType.LINEAR))
        config.validate()
        got = {c: config.resolve("l", LayerType.LINEAR, c).dtype for c in (W, B, A, OUT)}
        assert got == expected, label
    layout = config_layout = (
        base.with_layer_config("l", PrecisionChoice.parse("I4g128/F32").to_layer_config("linear"))
        .resolve("l", LayerType.LINEAR, W)
        .layout
    )
    assert layout == config_layout == WeightLayout(group_size=128)
    untyped = PrecisionChoice.parse("F16").to_layer_config(None)
    assert untyped.layer_type is None


@pytest.mark.parametrize("layer_type", list(LayerType))
@pytest.mark.parametrize("weight", [True, False])
@pytest.mark.parametrize("preset", ["conservative", "balanced", "aggressive"])
def test_layer_plan_agrees_with_the_config_entry(layer_type: LayerType, weight: bool, preset: str) -> None:
    """The plan a choice makes decides, for each component the layer has, what its config entry
    resolves to under any base config; with a bias the layer has one more decision."""
    base = getattr(MixedPrecisionConfig, preset)()
    layer = _layer(layer_type, weight)
    biased = replace(layer, bias="b") if weight else layer
    for target in (layer, biased):
        choices = candidate_choices(target)
        assert choices, target
        for choice in choices:
            plan = choice.layer_plan(target)
            config = base.with_layer_config("l", choice.to_layer_config(layer_type))
            assert plan.layer is target
            assert set(plan.decisions) == set(components_of(target)), choice.label
            for component, decision in plan.decisions.items():
                resolved = config.resolve("l", layer_type, component)
                assert decision.dtype is resolved.dtype, (choice.label, component)
                assert decision.source == f"choice:{choice.label}"
                if component is W:
                    assert decision.layout == resolved.layout, choice.label


def test_candidates_per_layer_type() -> None:
    labels = lambda layer, support=None: [c.label for c in candidate_choices(layer, support)]  # noqa: E731
    assert labels(_layer(LayerType.LINEAR)) == [
        "F32", "F16/F32", "I8/I8", "I8/F32", "I4g128/I8", "I4g128/F32", "I2g64/I8", "I2g64/F32",
        "BITNET158/I8", "BITNET158b3/I8", "I1g64/F32",
    ]  # fmt: skip
    # The default matrix allows floats and I8 for output layers.
    assert labels(_layer(LayerType.OUTPUT)) == ["F32", "F16/F32", "I8/I8", "I8/F32"]
    assert labels(_layer(LayerType.CONVOLUTION)) == [
        "F32", "F16/F32", "I8/F32", "I4g128/F32", "I2g64/F32", "BITNET158/F32", "BITNET158b3/F32",
    ]  # fmt: skip
    # The default matrix allows floats and I8 for embedding tables.
    assert labels(_layer(LayerType.EMBEDDING)) == ["F32", "F16/F32", "I8/F32"]
    assert labels(_layer(LayerType.NORMALIZATION)) == ["F32", "F16/F32"]
    # F16 compute stores nothing less and runs slower on CPU: a weightless layer has F32 alone.
    assert labels(_layer(LayerType.ATTENTION, weight=False)) == ["F32"]
    assert labels(_layer(LayerType.NORMALIZATION, weight=False)) == ["F32"]
    assert all(c.weights is None for c in candidate_choices(_layer(LayerType.ATTENTION, weight=False)))
    assert labels(_layer(LayerType.OTHER, weight=False)) == ["F32"]
    wide = SupportMatrix().with_layer(LayerType.EMBEDDING, set(DType))
    assert labels(_layer(LayerType.EMBEDDING), wide) == [
        "F32",
        "F16/F32",
        "I8/F32",
        "I4g128/F32",
        "I2g64/F32",
    ]
    no_int8_acts = SupportMatrix().with_component(A, {DType.F32, DType.F16, DType.BF16})
    assert "BITNET158/I8" not in labels(_layer(LayerType.LINEAR), no_int8_acts)
    assert "I4g128/F32" in labels(_layer(LayerType.LINEAR), no_int8_acts)


def test_objectives_text_form() -> None:
    assert str(Memory(0.5)) == "memory:0.5"
    assert str(Speed(2.0)) == f"speed:2,{DEFAULT_ACCURACY_FLOOR:g}"
    assert str(Accuracy(0.99)) == "accuracy:0.99"
    assert str(Balanced(0.4, 0.3, 0.3)) == "balanced:0.4,0.3,0.3"
    for text in ("memory:0.5", "speed:2", "speed:2,0.98", "accuracy:0.99", "Balanced: 0.4, 0.3, 0.3"):
        objective = OptimizationObjective.parse(text)
        assert OptimizationObjective.parse(str(objective)) == objective
    assert OptimizationObjective.parse("speed:2,0.98") == Speed(2.0, 0.98)
    assert Balanced(2, 1, 1).normalized == (0.5, 0.25, 0.25)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("memory", "KIND:VALUES"),
        ("size:0.5", "KIND:VALUES"),
        ("memory:half", "comma-separated numbers"),
        ("balanced:0.5", "takes 3 to 3 values, got 1"),
        ("memory:0.5,0.2", "takes 1 to 1 values"),
    ],
)
def test_objective_parse_rejects(text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        OptimizationObjective.parse(text)


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: Memory(0.0), ["strictly between 0 and 1"]),
        (lambda: Memory(1.0), ["strictly between 0 and 1"]),
        (lambda: Memory(True), ["must be a number"]),
        (lambda: Memory(math.inf), ["must be finite"]),
        (lambda: Speed(1.0), ["greater than 1"]),
        (lambda: Speed(0.5, 1.5), ["greater than 1", "min_accuracy 1.5"]),
        (lambda: Accuracy(0.0), ["(0, 1]"]),
        (lambda: Accuracy(math.nan), ["must be finite"]),
        (
            lambda: Balanced(-0.1, 0.5, "x"),
            ["memory_weight -0.1 must be ≥ 0", "accuracy_weight must be a number"],
        ),
        (lambda: Balanced(0, 0, 0), ["must be > 0"]),
    ],
)
def test_objective_validation_collects_every_problem(make, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        make()
    assert len(info.value.problems) == len(words)
    for word in words:
        assert word in str(info.value)
    assert "objective" in str(info.value)


def test_accuracy_one_is_allowed() -> None:
    assert Accuracy(1.0).min_accuracy == 1.0


def _matrix_layer(layer_type: LayerType, n: int, k: int) -> Layer:
    return Layer("l", layer_type, 0, ("n",), "rule", weight="w", weight_shape=(n, k), weight_nk=True)


def test_gptq_twins_follow_the_low_bit_choices_given_enough_calibration_rows() -> None:
    layer = _matrix_layer(LayerType.LINEAR, 32, 48)
    plain = [c.label for c in candidate_choices(layer)]
    enough = GPTQ_ROWS_PER_INPUT * 48
    assert [c.label for c in candidate_choices(layer, calibration_rows=enough - 1)] == plain
    twinned = [c.label for c in candidate_choices(layer, calibration_rows=enough)]
    assert twinned == [
        "F32", "F16/F32", "I8/I8", "I8/F32", "I4g128/I8", "I4g128+gptq/I8", "I4g128/F32", "I4g128+gptq/F32",
        "I2g64/I8", "I2g64+gptq/I8", "I2g64/F32", "I2g64+gptq/F32", "BITNET158/I8", "BITNET158+gptq/I8",
        "BITNET158b3/I8", "BITNET158b3+gptq/I8", "I1g64/F32",
    ]  # fmt: skip
    # K is the reduction axis whichever way the initializer holds W.
    kn = Layer("l", LayerType.LINEAR, 0, ("n",), "rule", weight="w", weight_shape=(48, 32), weight_nk=False)
    assert len(candidate_choices(kn, calibration_rows=enough)) == len(twinned)
    wide = SupportMatrix().with_layer(LayerType.EMBEDDING, set(DType))
    embedding = _matrix_layer(LayerType.EMBEDDING, 100, 8)
    assert candidate_choices(embedding, wide, calibration_rows=10**6) == candidate_choices(embedding, wide)


@pytest.mark.parametrize("label", ["I4g128+gptq/I8", "I2g64+gptq/F32", "BITNET158b3+gptq/I8"])
def test_a_gptq_choice_round_trips_and_decides_the_weights_conversion(label: str) -> None:
    choice = PrecisionChoice.parse(label)
    assert choice.conversion is ConversionStrategy.GPTQ and choice.label == label
    layer = _matrix_layer(LayerType.LINEAR, 8, 8)
    plan = choice.layer_plan(layer)
    assert {c: d.conversion_strategy for c, d in plan.decisions.items()} == {
        c: ConversionStrategy.GPTQ if c is W else None for c in plan.decisions
    }
    assert PrecisionChoice.of_plan(plan) == choice
    entry = choice.to_layer_config(LayerType.LINEAR)
    assert entry.conversion_strategy is ConversionStrategy.GPTQ
    config = MixedPrecisionConfig.new("custom").with_layer_config("l", entry)
    assert config.resolve("l", LayerType.LINEAR, W).conversion_strategy is ConversionStrategy.GPTQ
    with pytest.raises(ConfigError, match="conversion strategy"):
        PrecisionChoice.parse("I4g128+rounding/I8")


@pytest.mark.parametrize("layer_type", list(LayerType))
@pytest.mark.parametrize("weight", [True, False])
def test_of_plan_reads_back_the_choice_its_plan_states(layer_type: LayerType, weight: bool) -> None:
    """A layer type without a weights component (attention) plans only its compute precision."""
    layer = _layer(layer_type, weight)
    planned_weights = W in components_of(layer)
    for choice in candidate_choices(layer):
        expected = choice if planned_weights else choice.weightless()
        assert PrecisionChoice.of_plan(choice.layer_plan(layer)) == expected, choice.label
