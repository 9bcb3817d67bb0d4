"""Objective-driven precision search over per-layer candidates (behaviour: in progress)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from bitnet_onnx.objectives import OptimizationObjective, PrecisionChoice

__all__ = ["PlanEstimate", "SearchResult", "Verification", "VerifiedPlan"]


@dataclass(frozen=True)
class PlanEstimate:
    """What a plan costs: stored bytes (exact), latency (µs, the cost model's prediction) and
    output error (predicted 1 − cosine, or measured when it comes from `verify`)."""

    bytes: int
    latency_us: float
    error: float

    @property
    def cosine(self) -> float:
        return 1.0 - self.error


@dataclass(frozen=True)
class SearchResult:
    """The plan a search chose for `objective` and how it stands against it.

    `plan` maps every layer to its choice (pinned layers keep theirs); `base` and `predicted` are
    the estimates of the starting plan and of `plan`; `feasible` says whether `plan` meets the
    objective by prediction; when it does not, `plan` is the best found, `shortfall` how far it
    misses (fraction of bytes, speedup factor or cosine, in the objective's own unit) and
    `limiting_layers` the layers that block the target. `alternatives` are runner-up plans that
    also meet the objective (best first), which `verify` measures too; `tried` counts the plans
    the search compared.
    """

    objective: OptimizationObjective
    plan: Mapping[str, PrecisionChoice]
    feasible: bool
    base: PlanEstimate
    predicted: PlanEstimate
    limiting_layers: tuple[str, ...] = ()
    shortfall: float = 0.0
    tried: int = 0
    message: str = ""
    alternatives: tuple[tuple[Mapping[str, PrecisionChoice], PlanEstimate], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "plan", MappingProxyType(dict(self.plan)))

    @property
    def reduction(self) -> float:
        """Predicted fraction of the base's bytes saved."""
        return 1.0 - self.predicted.bytes / self.base.bytes if self.base.bytes else 0.0

    @property
    def speedup(self) -> float:
        """Predicted base latency over the plan's."""
        return self.base.latency_us / self.predicted.latency_us if self.predicted.latency_us else 1.0


@dataclass(frozen=True)
class VerifiedPlan:
    """One plan compiled and measured: `measured` holds the true bytes of the compiled model's
    constants and the measured 1 − cosine on held-out inputs (latency: the prediction)."""

    plan: Mapping[str, PrecisionChoice]
    predicted: PlanEstimate
    measured: PlanEstimate
    meets: bool

    def __post_init__(self) -> None:
        object.__setattr__(self, "plan", MappingProxyType(dict(self.plan)))


@dataclass(frozen=True)
class Verification:
    """`verify`'s outcome: the chosen plan (`best`), every plan compiled and measured, in order
    (`tried`), the bytes of the original model, whether the objective is met by measurement."""

    best: VerifiedPlan
    tried: tuple[VerifiedPlan, ...]
    bytes_before: int
    met: bool
    message: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
