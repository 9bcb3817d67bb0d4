from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import pytest

from bitnet_onnx.config.layer_precision import LayerPrecisionManager, LayerPrecisionSpec
from bitnet_onnx.config.validation import (
    AccuracyImpactRule,
    ComponentPrecisionRule,
    Finding,
    GradientsRule,
    LayerPrecisionRule,
    MemoryBudgetRule,
    PerformanceImpactRule,
    PrecisionValidator,
    Severity,
    ValidationReport,
    ValidationTarget,
    default_rules,
)
from bitnet_onnx.core.dtypes import DType, WeightLayout
from bitnet_onnx.core.errors import ConfigError, ValidationError
from bitnet_onnx.core.layers import ComponentType, Layer, LayerType, SupportMatrix
from bitnet_onnx.core.plan import Decision, LayerPlan, PlannedLayer

F32, F16, I8, I4, I2, I1, T = DType.F32, DType.F16, DType.I8, DType.I4, DType.I2, DType.I1, DType.BITNET158
_INFERENCE = (ComponentType.WEIGHTS, ComponentType.BIAS, ComponentType.ACTIVATIONS, ComponentType.OUTPUTS)


def spec(name: str, layer_type: LayerType, inp: DType, out: DType, weight: DType, **kw) -> LayerPrecisionSpec:
    return LayerPrecisionSpec(name, layer_type, inp, out, weight, **kw)


def check(rule, *specs: LayerPrecisionSpec, matrix: SupportMatrix | None = None, budget: int | None = None):
    layers = tuple(s.to_plan(i) for i, s in enumerate(specs))
    return rule.check(ValidationTarget(layers, matrix or SupportMatrix(), budget))


def summary(findings) -> list[tuple[str, Severity, str]]:
    return [(f.rule_id, f.severity, f.subject) for f in findings]


# --- compatibility rules --------------------------------------------------------------------------


def test_layer_rule_fires_on_precision_the_layer_type_forbids() -> None:
    findings = check(
        LayerPrecisionRule(),
        spec("attn", LayerType.ATTENTION, F16, F16, I4),
        spec("ln", LayerType.NORMALIZATION, I8, F16, F16),
    )
    assert summary(findings) == [
        ("layer-precision", Severity.ERROR, "attn/weights"),
        ("layer-precision", Severity.ERROR, "ln/activations"),
    ]
    assert findings[0].message == "attention layers do not support weights in I4"
    assert findings[0].suggestion == "use one of F32, F16, BF16, I8"
    assert findings[1].suggestion == "use one of F32, F16, BF16"


def test_layer_rule_quiet_on_supported_and_on_component_violations() -> None:
    assert check(LayerPrecisionRule(), spec("attn", LayerType.ATTENTION, I8, I8, I8)) == []
    # I8 biases are forbidden by the component row, so only the component rule reports them.
    assert check(LayerPrecisionRule(), spec("fc", LayerType.LINEAR, I8, F16, T, bias_precision=I8)) == []


def test_component_rule_fires_on_precision_the_component_forbids() -> None:
    findings = check(ComponentPrecisionRule(), spec("fc", LayerType.LINEAR, I4, I4, T, bias_precision=I8))
    assert summary(findings) == [
        ("component-precision", Severity.ERROR, "fc/bias"),
        ("component-precision", Severity.ERROR, "fc/activations"),
        ("component-precision", Severity.ERROR, "fc/outputs"),
    ]
    assert findings[0].message == "bias cannot be held in I8"
    assert findings[0].suggestion == "use one of F32, F16, BF16"
    assert findings[1].message == "activations cannot be held in I4"
    assert findings[1].suggestion == "use one of F32, F16, BF16, I8"
    assert findings[2].message == "outputs cannot be held in I4"


def test_component_rule_quiet_on_supported_and_follows_the_matrix() -> None:
    assert check(ComponentPrecisionRule(), spec("fc", LayerType.LINEAR, I8, F32, T)) == []
    # The seed's layer spec: I8 outputs, the bias left at its default (F32 behind an I8 output).
    assert check(ComponentPrecisionRule(), spec("fc", LayerType.LINEAR, I8, I8, T)) == []
    matrix = SupportMatrix().with_component(ComponentType.BIAS, {F32, F16, I8})
    assert (
        check(
            ComponentPrecisionRule(),
            spec("fc", LayerType.LINEAR, I8, I8, T, bias_precision=I8),
            matrix=matrix,
        )
        == []
    )


def test_validate_uses_the_managers_matrix() -> None:
    matrix = SupportMatrix().with_component(ComponentType.BIAS, {F32, F16, I8})
    m = LayerPrecisionManager(support_matrix=matrix)
    m.register_layer(spec("fc", LayerType.LINEAR, I8, I8, I8, bias_precision=I8))
    report = PrecisionValidator().validate(m)
    assert report.ok
    assert report.for_rule("component-precision") == ()
    # The same spec checked against the default matrix is an error.
    assert summary(PrecisionValidator().validate_specs(m.layers()).errors) == [
        ("component-precision", Severity.ERROR, "fc/bias")
    ]


# --- memory budget --------------------------------------------------------------------------------

# 8x16 F32 weights: 512 bytes.
FC = spec("fc", LayerType.LINEAR, F32, F32, F32, weight_shape=(8, 16))


def test_memory_over_budget_is_an_error() -> None:
    (finding,) = check(MemoryBudgetRule(), FC, budget=500)
    assert (finding.severity, finding.subject) == (Severity.ERROR, "model")
    assert finding.message == "layers store 512 bytes, 12 over the budget of 500"
    assert "optimize_for_memory" in finding.suggestion


@pytest.mark.parametrize(("budget", "fires"), [(512, True), (568, True), (569, False), (10_000, False)])
def test_memory_near_budget_is_a_warning(budget: int, fires: bool) -> None:
    # 0.9 * 568 = 511.2 <= 512 < 512.1 = 0.9 * 569
    findings = check(MemoryBudgetRule(), FC, budget=budget)
    assert summary(findings) == ([("memory-budget", Severity.WARNING, "model")] if fires else [])


def test_memory_warn_fraction_is_configurable() -> None:
    assert summary(check(MemoryBudgetRule(warn_fraction=0.5), FC, budget=1000)) == [
        ("memory-budget", Severity.WARNING, "model")
    ]
    with pytest.raises(ConfigError, match=r"warn_fraction 1\.5"):
        MemoryBudgetRule(warn_fraction=1.5)


def test_memory_rule_silent_without_budget_and_notes_unshaped_layers() -> None:
    relu = spec("relu", LayerType.ACTIVATION, F32, F32, F32)
    assert check(MemoryBudgetRule(), FC, relu) == []
    (note,) = check(MemoryBudgetRule(), FC, relu, budget=10_000)
    assert note.severity is Severity.INFO
    assert note.message == "layers without weight_shape count 0 bytes (1): relu"


@pytest.mark.parametrize("budget", [0, -5, 1.5, True])
def test_bad_budget_is_a_config_error(budget) -> None:
    with pytest.raises(ConfigError, match=r"budget_bytes.*positive number of bytes"):
        PrecisionValidator().validate_specs([FC], budget_bytes=budget)


# --- performance impact ---------------------------------------------------------------------------

CHAIN = (
    spec("emb", LayerType.EMBEDDING, F32, F32, F16),
    spec("fc0", LayerType.LINEAR, I8, F16, T),  # F32 -> I8: conversion
    spec("fc1", LayerType.LINEAR, F16, F32, T),  # F16 -> F16: none
    spec("head", LayerType.OUTPUT, F32, F32, F16),  # F32 -> F32: none
)


def test_conversions_within_threshold_are_an_info() -> None:
    (finding,) = check(PerformanceImpactRule(), *CHAIN)
    assert finding.severity is Severity.INFO
    assert finding.message == "1 precision conversions between consecutive layers: emb F32 -> fc0 I8"


def test_conversions_above_threshold_are_a_warning() -> None:
    chain = (*CHAIN, spec("fc2", LayerType.LINEAR, I8, F32, T))  # head F32 -> fc2 I8
    (finding,) = check(PerformanceImpactRule(max_conversions=1), *chain)
    assert finding.severity is Severity.WARNING
    assert finding.message.startswith("2 precision conversions between consecutive layers, more than 1: ")
    assert finding.message.endswith("emb F32 -> fc0 I8; head F32 -> fc2 I8")
    with pytest.raises(ConfigError, match="max_conversions -1"):
        PerformanceImpactRule(max_conversions=-1)


def test_single_layer_has_no_conversions() -> None:
    (finding,) = check(PerformanceImpactRule(max_conversions=0), CHAIN[0])
    assert (finding.severity, finding.message) == (
        Severity.INFO,
        "0 precision conversions between consecutive layers",
    )


# --- accuracy impact ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layer_type", "weight", "expected"),
    [
        (LayerType.LINEAR, F16, []),
        (LayerType.LINEAR, I8, []),
        (LayerType.LINEAR, I4, []),
        (LayerType.LINEAR, I2, [Severity.INFO]),
        (LayerType.LINEAR, T, [Severity.INFO]),
        (LayerType.CONVOLUTION, I1, [Severity.WARNING]),
        (LayerType.ATTENTION, I8, []),
        (LayerType.ATTENTION, I4, [Severity.WARNING]),
        (LayerType.OUTPUT, T, [Severity.WARNING]),
        (LayerType.NORMALIZATION, I1, [Severity.WARNING]),  # one finding: the sensitive-layer one
    ],
)
def test_accuracy_estimate_by_weights(layer_type: LayerType, weight: DType, expected: list) -> None:
    findings = check(AccuracyImpactRule(), spec("x", layer_type, F16, F16, weight))
    assert [f.severity for f in findings] == expected
    assert all(f.subject == "x/weights" for f in findings)


def test_accuracy_findings_explain_why() -> None:
    attn, head, fc1, fc = check(
        AccuracyImpactRule(),
        spec("attn", LayerType.ATTENTION, F16, F16, I4),
        spec("head", LayerType.OUTPUT, I4, F16, F16),
        spec("fc1", LayerType.LINEAR, F16, F16, I1),
        spec("fc", LayerType.LINEAR, F16, F16, T),
    )
    assert attn.message == (
        "attention layer weights in I4 (4 bits): "
        "attention scores pass through a softmax that amplifies small errors"
    )
    assert head.subject == "head/activations" and "output layer produces the model's result" in head.message
    assert "keep only the sign" in fc1.message
    assert "BitNet b1.58" in fc.message


def test_gradients_rule() -> None:
    with_grad = spec("fc", LayerType.LINEAR, F16, F16, F16).with_component_precision("gradients", "bf16")
    (finding,) = check(GradientsRule(), with_grad, spec("fc2", LayerType.LINEAR, F16, F16, F16))
    assert (finding.rule_id, finding.severity, finding.subject) == (
        "gradients-not-applicable",
        Severity.INFO,
        "fc/gradients",
    )
    assert "BF16 are not applicable to inference" in finding.message
    assert check(GradientsRule(), spec("fc2", LayerType.LINEAR, F16, F16, F16)) == []


# --- validator and report -------------------------------------------------------------------------


def test_default_rules_in_order() -> None:
    ids = [r.id for r in default_rules()]
    assert ids == [
        "layer-precision",
        "component-precision",
        "memory-budget",
        "performance-impact",
        "accuracy-impact",
        "gradients-not-applicable",
    ]
    assert all(r.description for r in default_rules())


def bad_plan() -> ValidationReport:
    return PrecisionValidator().validate_specs(
        [
            spec("attn", LayerType.ATTENTION, F16, F16, I4, weight_shape=(4, 4)),
            spec("fc", LayerType.LINEAR, I4, I8, T, weight_shape=(4, 8), bias_precision=I8),
        ],
        budget_bytes=10,
    )


def test_report_partitions_findings_by_severity() -> None:
    report = bad_plan()
    # attn I4 weights: 4*2 + 4*4 = 24 bytes; fc ternary: 4*2 + 4 = 12 bytes; 36 > 10.
    assert summary(report.errors) == [
        ("layer-precision", Severity.ERROR, "attn/weights"),
        ("component-precision", Severity.ERROR, "fc/bias"),
        ("component-precision", Severity.ERROR, "fc/activations"),
        ("memory-budget", Severity.ERROR, "model"),
    ]
    assert summary(report.warnings) == [("accuracy-impact", Severity.WARNING, "attn/weights")]
    assert summary(report.infos) == [
        ("performance-impact", Severity.INFO, "model"),
        ("accuracy-impact", Severity.INFO, "fc/weights"),
    ]
    assert report.for_rule("memory-budget")[0].message == "layers store 36 bytes, 26 over the budget of 10"
    assert not report.ok
    assert len(report.findings) == 7


def test_raise_if_errors_lists_every_error_and_carries_all_findings() -> None:
    report = bad_plan()
    with pytest.raises(ValidationError) as info:
        report.raise_if_errors()
    message = str(info.value)
    assert message.startswith("precision validation found 4 error(s):")
    for finding in report.errors:
        assert str(finding) in message
    assert (
        "[layer-precision] attn/weights: attention layers do not support weights in I4. Fix: use one of"
        in message
    )
    assert "accuracy-impact" not in message
    assert info.value.findings == list(report.findings)


def test_clean_plan_is_ok_and_does_not_raise() -> None:
    m = LayerPrecisionManager()
    m.register_layer(spec("fc", LayerType.LINEAR, F16, F16, I8, weight_shape=(4, 4)))
    report = PrecisionValidator().validate(m, budget_bytes=1000)
    assert report.ok
    assert summary(report.findings) == [("performance-impact", Severity.INFO, "model")]
    report.raise_if_errors()


def test_report_table() -> None:
    text = str(bad_plan())
    lines = text.splitlines()
    assert lines[0].split() == ["severity", "rule", "subject", "message"]
    assert lines[1].split()[:3] == ["error", "layer-precision", "attn/weights"]
    assert lines[1].index("attn/weights") == lines[0].index("subject")
    assert lines[-1] == "4 errors, 1 warnings, 2 infos"
    assert len(lines) == 1 + 7 + 1
    assert str(ValidationReport(())) == "0 errors, 0 warnings, 0 infos"


@dataclass(frozen=True)
class DottedNamesRule:
    """A user rule: layer names must be hierarchical (contain a dot)."""

    severity: Severity = Severity.WARNING

    id: ClassVar[str] = "dotted-names"
    description: ClassVar[str] = "layer names are module paths"

    def check(self, target: ValidationTarget) -> list[Finding]:
        return [
            Finding(self.id, self.severity, s.name, "name is not a module path", "name it like blocks.0.fc")
            for s in target.layers
            if "." not in s.name
        ]


def test_custom_rule_plugs_in() -> None:
    m = LayerPrecisionManager()
    m.register_layer(spec("blocks.0.fc", LayerType.LINEAR, F16, F16, F16))
    m.register_layer(spec("head", LayerType.OUTPUT, F16, F16, F16))
    report = PrecisionValidator([*default_rules(), DottedNamesRule(Severity.ERROR)]).validate(m)
    assert summary(report.errors) == [("dotted-names", Severity.ERROR, "head")]
    with pytest.raises(ValidationError, match=r"\[dotted-names\] head: name is not a module path"):
        report.raise_if_errors()
    only = PrecisionValidator([DottedNamesRule()]).validate(m)
    assert summary(only.findings) == [("dotted-names", Severity.WARNING, "head")]


def test_bad_rules_are_config_errors() -> None:
    with pytest.raises(ConfigError) as info:
        PrecisionValidator([object(), DottedNamesRule(), DottedNamesRule()])
    assert len(info.value.problems) == 2
    assert "lacks id, description or check" in info.value.problems[0]
    assert "'dotted-names' is used by more than one rule" in info.value.problems[1]


# --- plans as they are ----------------------------------------------------------------------------


def _planned(name: str, layer_type: LayerType, shape: tuple[int, ...] | None = None, **dtypes: DType):
    layer = Layer(name, layer_type, 0, (name,), "rule")
    decisions = {
        ComponentType(c): Decision(d, "config", WeightLayout(), None, None, "") for c, d in dtypes.items()
    }
    return PlannedLayer(LayerPlan(layer, decisions), shape)


def test_rules_judge_only_the_components_a_plan_decides() -> None:
    """An attention block has no weights and an embedding no activations: their plans do not decide
    them, and no rule speaks of them (a spec would have had to state something there)."""
    plan = [
        _planned("emb", LayerType.EMBEDDING, weights=F16, outputs=F16),
        _planned("attn", LayerType.ATTENTION, activations=I8, outputs=F16),
        _planned("ln", LayerType.NORMALIZATION, weights=F16, activations=F16, outputs=I8),
        _planned("fc", LayerType.LINEAR, (8, 64), weights=T, activations=I8, outputs=F32),
    ]
    report = PrecisionValidator().validate_plan(plan, budget_bytes=100)
    assert summary(report.findings) == [
        ("layer-precision", Severity.ERROR, "ln/outputs"),
        ("memory-budget", Severity.ERROR, "model"),
        ("memory-budget", Severity.INFO, "model"),
        ("performance-impact", Severity.INFO, "model"),
        ("accuracy-impact", Severity.INFO, "fc/weights"),
    ]
    ternary_bytes = 8 * (64 // 4) + 4  # 2-bit codes, one float32 scale
    memory, unshaped, conversions = report.findings[1:4]
    assert (
        memory.message == f"layers store {ternary_bytes} bytes, {ternary_bytes - 100} over the budget of 100"
    )
    assert unshaped.message.endswith("(3): emb, attn, ln")
    assert conversions.message == "1 precision conversions between consecutive layers: emb F16 -> attn I8"


@pytest.mark.parametrize(
    "spec_",
    [
        spec("fc", LayerType.LINEAR, I8, F16, I4, weight_shape=(8, 64), bias_shape=(8,)),
        spec(
            "fc", LayerType.LINEAR, I8, I8, T, gradient_precision=F32, layout=WeightLayout(per_channel=True)
        ),
        spec("ln", LayerType.NORMALIZATION, F16, F32, F16, bias_precision=F32, weight_shape=(64,)),
    ],
)
def test_specs_are_validated_as_their_plans(spec_: LayerPrecisionSpec) -> None:
    """A spec states all four inference components (the bias at its default when unset) and its
    gradients when recorded; its plan decides exactly those, and reads back as the same spec."""
    planned = spec_.to_plan(3)
    expected = {c: spec_.precision_for(c) for c in _INFERENCE}
    if spec_.gradient_precision is not None:
        expected[ComponentType.GRADIENTS] = spec_.gradient_precision
    assert {c: d.dtype for c, d in planned.plan.decisions.items()} == expected
    assert planned.plan.decisions[ComponentType.WEIGHTS].layout == spec_.layout
    assert planned.plan.layer.index == 3 and planned.memory_bytes() == spec_.memory_bytes()
    back = LayerPrecisionSpec.of_plan(planned, SupportMatrix())
    assert back == replace(spec_, bias_precision=spec_.precision_for(ComponentType.BIAS))
    by_specs = PrecisionValidator().validate_specs([spec_], budget_bytes=10)
    assert by_specs == PrecisionValidator().validate_plan([spec_.to_plan(0)], budget_bytes=10)
