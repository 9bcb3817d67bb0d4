"""Deciding with policies: `PolicyEngine.decide(facts, component, current)` (the evaluation order
is in the docstring of `bitnet_onnx.config.policy`)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from bitnet_onnx.config.config import fit_layout
from bitnet_onnx.config.policy_facts import LayerFacts
from bitnet_onnx.config.policy_model import (
    ActionKind,
    PolicyAction,
    PolicyCondition,
    PolicyRule,
    PrecisionPolicy,
)
from bitnet_onnx.core._schema import Problems, SchemaPath
from bitnet_onnx.core.dtypes import ConversionStrategy, DType, WeightLayout
from bitnet_onnx.core.layers import ComponentType, SupportMatrix
from bitnet_onnx.core.plan import Conflict, Decision, Resolution

if TYPE_CHECKING:
    from bitnet_onnx.config.config import MixedPrecisionConfig

__all__ = ["PolicyEngine"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Outcome:
    policy: PrecisionPolicy
    rule: PolicyRule
    evaluated: tuple[tuple[PolicyCondition, Any], ...]
    dtype: DType
    layout: WeightLayout
    conversion_strategy: ConversionStrategy | None

    @property
    def result(self) -> tuple[DType, WeightLayout, ConversionStrategy | None]:
        return self.dtype, self.layout, self.conversion_strategy


class PolicyEngine:
    """Holds the policies and decides. The support matrix bounds what actions may choose."""

    def __init__(
        self, policies: Iterable[PrecisionPolicy] = (), support: SupportMatrix | None = None
    ) -> None:
        self.support = support if support is not None else SupportMatrix()
        self._policies: list[PrecisionPolicy] = []
        for policy in policies:
            self.add_policy(policy)

    @classmethod
    def from_config(cls, config: MixedPrecisionConfig) -> PolicyEngine:
        return cls(config.policies, config.support)

    @property
    def policies(self) -> tuple[PrecisionPolicy, ...]:
        return tuple(self._policies)

    def add_policy(self, policy: PrecisionPolicy) -> None:
        """Add a policy after checking it; a ConfigError lists every problem."""
        problems = Problems()
        path: SchemaPath = ("policies", policy.id)
        if any(p.id == policy.id for p in self._policies):
            problems.add((*path, "id"), f"a policy with id {policy.id!r} is already registered")
        policy.collect_problems(problems, path, self.support)
        problems.raise_if_any()
        self._policies.append(policy)

    def _ranked(self) -> list[PrecisionPolicy]:
        enabled = [(i, p) for i, p in enumerate(self._policies) if p.enabled]
        return [p for _, p in sorted(enabled, key=lambda ip: (-ip[1].priority, ip[0]))]

    def decide(self, facts: LayerFacts, component: ComponentType | str, current: Resolution) -> Decision:
        component = ComponentType.parse(component)
        outcomes: list[_Outcome] = []
        notes: list[str] = []
        for policy in self._ranked():
            outcome = self._policy_outcome(policy, facts, component, current, notes)
            if outcome is not None:
                outcomes.append(outcome)
        if not outcomes:
            explanation = f"config {current} (no policy matched)" + "".join(f"; {n}" for n in notes)
            return Decision(
                current.dtype, current.source, current.layout, current.conversion_strategy, None, explanation
            )
        win = outcomes[0]
        conflicts = tuple(
            Conflict(o.policy.id, o.rule.id, o.policy.priority, o.dtype, o.conversion_strategy)
            for o in outcomes[1:]
            if o.result != win.result
        )
        conditions = ", ".join(c.describe(actual) for c, actual in win.evaluated) or "no conditions"
        where = f" [{win.rule.origin}]" if win.rule.origin else ""
        explanation = (
            f"policy {win.policy.id!r} (priority {win.policy.priority}) rule {win.rule.id!r}{where}: "
            f"{conditions} → {win.rule.action.describe()} = {win.dtype.name}; overrode config {current}"
        )
        explanation += "".join(f"; {n}" for n in notes)
        explanation += "".join(f"; conflict: {c}" for c in conflicts)
        if conflicts:
            logger.debug("layer %s %s: %d policy conflicts", facts.name, component.value, len(conflicts))
        return Decision(
            win.dtype,
            f"policy:{win.policy.id}/{win.rule.id}",
            win.layout,
            win.conversion_strategy,
            current,
            explanation,
            conflicts,
            win.rule.origin,
        )

    def _policy_outcome(
        self,
        policy: PrecisionPolicy,
        facts: LayerFacts,
        component: ComponentType,
        current: Resolution,
        notes: list[str],
    ) -> _Outcome | None:
        for rule in policy.rules:
            evaluated = []
            matched = True
            for condition in rule.conditions:
                holds, actual = condition.evaluate(facts, component, current.dtype)
                evaluated.append((condition, actual))
                matched = matched and holds
            if not matched:
                continue
            applied = self._apply(rule.action, facts, component, current)
            if isinstance(applied, str):
                if applied:
                    notes.append(f"policy {policy.id!r} rule {rule.id!r} passed over: {applied}")
                continue
            return _Outcome(policy, rule, tuple(evaluated), *applied)
        return None

    def _apply(
        self, action: PolicyAction, facts: LayerFacts, component: ComponentType, current: Resolution
    ) -> tuple[DType, WeightLayout, ConversionStrategy | None] | str:
        """The action's (precision, layout, conversion strategy), or why it does not apply ("" when
        it is simply not about this component). A new precision takes the knobs that fit it."""
        allowed = self.support.allowed(facts.layer_type, component)
        kind = action.kind
        if kind is ActionKind.SET_CONVERSION_STRATEGY:
            return current.dtype, current.layout, action.conversion_strategy
        if kind is ActionKind.SET_TERNARY_SCALE:
            if current.dtype is not DType.BITNET158:
                return f"set_ternary_scale applies to BITNET158, not {current.dtype.name}"
            layout = replace(current.layout, ternary_scale=action.ternary_scale)
            return current.dtype, layout, current.conversion_strategy
        if kind in (ActionKind.RAISE_PRECISION, ActionKind.LOWER_PRECISION):
            sign = 1 if kind is ActionKind.RAISE_PRECISION else -1
            target = _move(current.dtype, sign * (action.steps or 1), allowed)
            return target, _carried_layout(target, current), current.conversion_strategy
        if kind is ActionKind.SET_COMPONENT_PRECISION and action.component is not component:
            return ""
        target = facts.original_dtype if kind is ActionKind.KEEP_ORIGINAL else action.precision
        if target is None:
            return f"{kind.value} names no precision"
        if target not in allowed:
            return (
                f"{target.name} is not allowed for the {component.value} of {facts.layer_type.value} layers"
            )
        return target, _carried_layout(target, current), current.conversion_strategy


def _carried_layout(dtype: DType, current: Resolution) -> WeightLayout:
    return fit_layout(dtype, current.layout) if dtype is not current.dtype else current.layout


def _move(dtype: DType, delta: int, allowed: frozenset[DType]) -> DType:
    """`delta` steps along the ladder counting only allowed precisions, clamped at the ends."""
    sign = 1 if delta > 0 else -1
    here = dtype
    for _ in range(abs(delta)):
        probe = here
        while True:
            nxt = probe.step(sign)
            if nxt is probe:
                return here  # end of the ladder: no allowed precision further on
            probe = nxt
            if probe in allowed:
                break
        here = probe
    return here
