"""Rule-based checks of a precision plan, collected into one report.

A plan is an ordered list of `PlannedLayer`s (model order: each layer feeds the next): each layer's
`LayerPlan`, the decision for every component it has, with the shapes its stored bytes are counted
with; then the support matrix it must respect, and optionally a memory budget. The compiler
validates its plan as it is (`validate_plan`); the seed's `LayerPrecisionSpec`s go through their
adapter (`LayerPrecisionSpec.to_plan`, which decides all four inference components). A rule
judges only the components a layer's plan decides. Every `ValidationRule` looks at the
whole plan and returns `Finding`s; the `PrecisionValidator` runs all rules (never stopping at the
first problem) and returns a `ValidationReport`. Rules are pluggable: anything with an `id`, a
`description` and `check(target) -> list[Finding]` can be added.

The built-in rules:
- layer-precision: a precision the layer type does not accept (the layer row of the matrix).
- component-precision: a precision the component does not accept (the component row). Each
  unsupported precision is reported once, by the component rule when the component row forbids it,
  otherwise by the layer rule.
- memory-budget: stored bytes over the budget is an error, at or above `warn_fraction` of it a warning.
- performance-impact: every boundary where a layer's output precision differs from the next layer's
  input precision costs a conversion; more than `max_conversions` is a warning, otherwise an info.
- accuracy-impact: a static estimate from bits and layer type (see `AccuracyImpactRule`); measured
  sensitivity belongs to the optimizer, not here.
- gradients-not-applicable: a gradients precision is recorded but inference graphs have none.
"""

from __future__ import annotations

import enum
import itertools
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

from bitnet_onnx.core.dtypes import DType
from bitnet_onnx.core.errors import ConfigError, ValidationError
from bitnet_onnx.core.layers import ComponentType, LayerType, SupportMatrix
from bitnet_onnx.core.plan import PlannedLayer

if TYPE_CHECKING:
    from bitnet_onnx.config.layer_precision import LayerPrecisionManager, LayerPrecisionSpec

__all__ = [
    "AccuracyImpactRule",
    "ComponentPrecisionRule",
    "Finding",
    "GradientsRule",
    "LayerPrecisionRule",
    "MemoryBudgetRule",
    "PerformanceImpactRule",
    "PrecisionValidator",
    "Severity",
    "ValidationReport",
    "ValidationRule",
    "ValidationTarget",
    "default_rules",
]

logger = logging.getLogger(__name__)

# The components an inference graph uses, in report order.
_INFERENCE = (ComponentType.WEIGHTS, ComponentType.BIAS, ComponentType.ACTIVATIONS, ComponentType.OUTPUTS)


class Severity(enum.Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class Finding:
    """One observation. `subject` is a layer name, `layer/component`, or `model`."""

    rule_id: str
    severity: Severity
    subject: str
    message: str
    suggestion: str = ""

    @property
    def detail(self) -> str:
        """The message followed by the suggestion."""
        return f"{self.message}. Fix: {self.suggestion}" if self.suggestion else self.message

    def __str__(self) -> str:
        return f"[{self.rule_id}] {self.subject}: {self.detail}"


@dataclass(frozen=True)
class ValidationTarget:
    """What the rules look at: the plan's layers in model order, the matrix, and an optional byte
    budget."""

    layers: tuple[PlannedLayer, ...]
    support_matrix: SupportMatrix
    budget_bytes: int | None = None

    @property
    def total_bytes(self) -> int:
        return sum(layer.memory_bytes() for layer in self.layers)


def _decided(layer: PlannedLayer) -> Iterator[tuple[ComponentType, DType]]:
    """The inference components the layer's plan decides, in report order, with their precisions."""
    for component in _INFERENCE:
        dtype = layer.dtype(component)
        if dtype is not None:
            yield component, dtype


@runtime_checkable
class ValidationRule(Protocol):
    """A pluggable check. `id` is unique within a validator and short (kebab-case)."""

    id: str
    description: str

    def check(self, target: ValidationTarget) -> list[Finding]: ...


def _names(dtypes: Iterable[DType]) -> str:
    return ", ".join(d.name for d in sorted(dtypes, key=DType.rank, reverse=True))


class LayerPrecisionRule:
    """A component precision the layer type does not accept (and the component row would)."""

    id: ClassVar[str] = "layer-precision"
    description: ClassVar[str] = "every precision is one the layer type supports"

    def check(self, target: ValidationTarget) -> list[Finding]:
        matrix = target.support_matrix
        findings = []
        for layer in target.layers:
            for component, dtype in _decided(layer):
                allowed = matrix.allowed(layer.layer_type, component)
                if dtype in matrix.components[component] and dtype not in allowed:
                    findings.append(
                        Finding(
                            self.id,
                            Severity.ERROR,
                            f"{layer.name}/{component.value}",
                            f"{layer.layer_type.value} layers do not support {component.value} "
                            f"in {dtype.name}",
                            f"use one of {_names(allowed)}",
                        )
                    )
        return findings


class ComponentPrecisionRule:
    """A precision the component itself does not accept, whatever the layer."""

    id: ClassVar[str] = "component-precision"
    description: ClassVar[str] = "every component precision is one the component supports"

    def check(self, target: ValidationTarget) -> list[Finding]:
        matrix = target.support_matrix
        findings = []
        for layer in target.layers:
            for component, dtype in _decided(layer):
                if dtype not in matrix.components[component]:
                    findings.append(
                        Finding(
                            self.id,
                            Severity.ERROR,
                            f"{layer.name}/{component.value}",
                            f"{component.value} cannot be held in {dtype.name}",
                            f"use one of {_names(matrix.allowed(layer.layer_type, component))}",
                        )
                    )
        return findings


@dataclass(frozen=True)
class MemoryBudgetRule:
    """Stored bytes (weights and biases) against the target's budget; silent without a budget."""

    warn_fraction: float = 0.9

    id: ClassVar[str] = "memory-budget"
    description: ClassVar[str] = "stored bytes fit the memory budget"

    def __post_init__(self) -> None:
        if not 0.0 < self.warn_fraction <= 1.0:
            raise ConfigError(
                f"MemoryBudgetRule warn_fraction {self.warn_fraction!r} must be in (0, 1], e.g. 0.9"
            )

    def check(self, target: ValidationTarget) -> list[Finding]:
        budget = target.budget_bytes
        if budget is None:
            return []
        total = target.total_bytes
        findings = []
        if total > budget:
            findings.append(
                Finding(
                    self.id,
                    Severity.ERROR,
                    "model",
                    f"layers store {total} bytes, {total - budget} over the budget of {budget}",
                    "lower precisions (CLI: --strategy aggressive, --objective memory:R, or lower config "
                    "entries; Python: LayerPrecisionManager.optimize_for_memory) or raise the budget "
                    "(CLI: --memory-budget)",
                )
            )
        elif total >= self.warn_fraction * budget:
            findings.append(
                Finding(
                    self.id,
                    Severity.WARNING,
                    "model",
                    f"layers store {total} bytes, {total / budget:.0%} of the budget of {budget}",
                    "leave headroom by lowering precisions of movable layers",
                )
            )
        unshaped = [layer.name for layer in target.layers if layer.weight_shape is None]
        if unshaped:
            findings.append(
                Finding(
                    self.id,
                    Severity.INFO,
                    "model",
                    f"layers without weight_shape count 0 bytes ({len(unshaped)}): {', '.join(unshaped)}",
                    "give weight_shape to layers that store weights",
                )
            )
        return findings


@dataclass(frozen=True)
class PerformanceImpactRule:
    """Conversions at layer boundaries: output precision of one layer != input of the next (a
    boundary counts when both layers' plans decide them)."""

    max_conversions: int = 4

    id: ClassVar[str] = "performance-impact"
    description: ClassVar[str] = "few precision conversions between consecutive layers"

    def __post_init__(self) -> None:
        if self.max_conversions < 0:
            raise ConfigError(
                f"PerformanceImpactRule max_conversions {self.max_conversions!r} must be 0 or more, e.g. 4"
            )

    def check(self, target: ValidationTarget) -> list[Finding]:
        boundaries = []
        for a, b in itertools.pairwise(target.layers):
            out, into = a.dtype(ComponentType.OUTPUTS), b.dtype(ComponentType.ACTIVATIONS)
            if out is not None and into is not None and out is not into:
                boundaries.append(f"{a.name} {out.name} -> {b.name} {into.name}")
        listed = f": {'; '.join(boundaries)}" if boundaries else ""
        if len(boundaries) > self.max_conversions:
            return [
                Finding(
                    self.id,
                    Severity.WARNING,
                    "model",
                    f"{len(boundaries)} precision conversions between consecutive layers, more than "
                    f"{self.max_conversions}{listed}",
                    "give neighbouring layers matching output and input precisions",
                )
            ]
        return [
            Finding(
                self.id,
                Severity.INFO,
                "model",
                f"{len(boundaries)} precision conversions between consecutive layers{listed}",
            )
        ]


class AccuracyImpactRule:
    """A static estimate of accuracy risk from bits and layer type, each finding saying why:

    - attention, normalization and output layers below 8 bits (any component) -> warning: attention
      scores go through a softmax that amplifies small errors, normalization statistics need float
      range, and output logits are the result itself;
    - 1-bit weights -> warning: only the sign survives, a float-trained model loses most accuracy;
    - ternary or 2-bit weights elsewhere -> info: they hold accuracy for models trained for them
      (BitNet b1.58), not in general for a float model quantized after training.
    """

    id: ClassVar[str] = "accuracy-impact"
    description: ClassVar[str] = "precisions unlikely to hurt accuracy (static estimate)"

    _SENSITIVE: ClassVar[dict[LayerType, str]] = {
        LayerType.ATTENTION: "attention scores pass through a softmax that amplifies small errors",
        LayerType.NORMALIZATION: "normalization statistics need float range and precision",
        LayerType.OUTPUT: "the output layer produces the model's result directly",
    }

    def check(self, target: ValidationTarget) -> list[Finding]:
        findings = []
        for layer in target.layers:
            why = self._SENSITIVE.get(layer.layer_type)
            for component, dtype in _decided(layer):
                subject = f"{layer.name}/{component.value}"
                if why is not None and dtype.bits < 8:
                    findings.append(
                        Finding(
                            self.id,
                            Severity.WARNING,
                            subject,
                            f"{layer.layer_type.value} layer {component.value} in {dtype.name} "
                            f"({dtype.bits} bits): {why}",
                            "keep this layer at 8 bits or more",
                        )
                    )
                elif component is ComponentType.WEIGHTS and dtype is DType.I1:
                    findings.append(
                        Finding(
                            self.id,
                            Severity.WARNING,
                            subject,
                            "1-bit weights keep only the sign; a model not trained for them loses most "
                            "of its accuracy",
                            "use BITNET158 or I4 weights, or measure the error first",
                        )
                    )
                elif component is ComponentType.WEIGHTS and dtype in (DType.BITNET158, DType.I2):
                    findings.append(
                        Finding(
                            self.id,
                            Severity.INFO,
                            subject,
                            f"{dtype.name} weights hold accuracy for models trained for them (BitNet "
                            "b1.58), not in general for a float model quantized after training",
                        )
                    )
        return findings


class GradientsRule:
    """A recorded gradients precision: kept for parity with the seed, unused by inference."""

    id: ClassVar[str] = "gradients-not-applicable"
    description: ClassVar[str] = "gradients precisions are reported as not applicable to inference"

    def check(self, target: ValidationTarget) -> list[Finding]:
        return [
            Finding(
                self.id,
                Severity.INFO,
                f"{layer.name}/gradients",
                f"gradients in {gradients.name} are not applicable to inference graphs and are ignored",
                "drop the gradients precision",
            )
            for layer in target.layers
            if (gradients := layer.dtype(ComponentType.GRADIENTS)) is not None
        ]


def default_rules() -> list[ValidationRule]:
    """The built-in rules with their default thresholds, in report order."""
    return [
        LayerPrecisionRule(),
        ComponentPrecisionRule(),
        MemoryBudgetRule(),
        PerformanceImpactRule(),
        AccuracyImpactRule(),
        GradientsRule(),
    ]


@dataclass(frozen=True)
class ValidationReport:
    """Every finding of every rule, in rule order."""

    findings: tuple[Finding, ...]

    def _with(self, severity: Severity) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity is severity)

    @property
    def errors(self) -> tuple[Finding, ...]:
        return self._with(Severity.ERROR)

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return self._with(Severity.WARNING)

    @property
    def infos(self) -> tuple[Finding, ...]:
        return self._with(Severity.INFO)

    @property
    def ok(self) -> bool:
        """No errors (warnings and infos do not fail a plan)."""
        return not self.errors

    def for_rule(self, rule_id: str) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.rule_id == rule_id)

    def raise_if_errors(self) -> None:
        """Raise ValidationError listing every error; it carries all findings."""
        errors = self.errors
        if errors:
            body = "\n".join(f"  - {f}" for f in errors)
            raise ValidationError(
                f"precision validation found {len(errors)} error(s):\n{body}", self.findings
            )

    def __str__(self) -> str:
        summary = f"{len(self.errors)} errors, {len(self.warnings)} warnings, {len(self.infos)} infos"
        if not self.findings:
            return summary
        rows = [("severity", "rule", "subject", "message")] + [
            (f.severity.value, f.rule_id, f.subject, f.detail) for f in self.findings
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = [
            "  ".join([*(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)), row[3]])
            for row in rows
        ]
        return "\n".join([*lines, summary])


class PrecisionValidator:
    """Runs its rules over a plan and collects every finding."""

    def __init__(self, rules: Sequence[ValidationRule] | None = None) -> None:
        rules = default_rules() if rules is None else list(rules)
        problems = [
            f"rule {rule!r} lacks id, description or check(target)"
            for rule in rules
            if not isinstance(rule, ValidationRule)
        ]
        ids = [rule.id for rule in rules if isinstance(rule, ValidationRule)]
        problems += [
            f"rule id {i!r} is used by more than one rule"
            for i in sorted({i for i in ids if ids.count(i) > 1})
        ]
        if problems:
            raise ConfigError(problems)
        self.rules = tuple(rules)

    def validate(self, manager: LayerPrecisionManager, budget_bytes: int | None = None) -> ValidationReport:
        """Validate the manager's specs, in registration order, against its support matrix."""
        return self.validate_specs(
            manager.layers(), support_matrix=manager.support_matrix, budget_bytes=budget_bytes
        )

    def validate_specs(
        self,
        specs: Iterable[LayerPrecisionSpec],
        *,
        support_matrix: SupportMatrix | None = None,
        budget_bytes: int | None = None,
    ) -> ValidationReport:
        """Validate specs in model order (specs that never went through a manager), each as its
        plan (`LayerPrecisionSpec.to_plan`)."""
        return self.validate_plan(
            [spec.to_plan(index) for index, spec in enumerate(specs)],
            support_matrix=support_matrix,
            budget_bytes=budget_bytes,
        )

    def validate_plan(
        self,
        layers: Iterable[PlannedLayer],
        *,
        support_matrix: SupportMatrix | None = None,
        budget_bytes: int | None = None,
    ) -> ValidationReport:
        """Validate a plan's layers in model order."""
        if budget_bytes is not None and (
            isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes <= 0
        ):
            raise ConfigError(f"budget_bytes {budget_bytes!r} must be a positive number of bytes")
        target = ValidationTarget(tuple(layers), support_matrix or SupportMatrix(), budget_bytes)
        findings = tuple(finding for rule in self.rules for finding in rule.check(target))
        report = ValidationReport(findings)
        logger.debug("validation: %d rules, %d findings", len(self.rules), len(findings))
        return report
