"""assign_precision: every component of every layer gets its precision, with the reason, into ctx.plan.

For each layer of `ctx.layers` (model order) and each component it has (`plan.components_of`):

1. the config answers (`MixedPrecisionConfig.resolve`, whose docstring has the resolution order);
2. the policies, when there are any (`ctx.policy`), may replace that answer (`PolicyEngine.decide`)
   from the layer's facts: position among the layers, parameter count, memory use against the
   budget, weight statistics, the model's own precision of the weights;
3. `ctx.plan[layer] = LayerPlan(layer, {component: Decision})`, and one `Change` per component says
   the precision, its source, what it overrode and the engine's explanation.

Facts: `memory_usage` is the percent of `memory_budget` (bytes) that the layers' weights and biases
take at the precisions the *config* resolves (before the policies, which may act on it; each weight
tensor counted once per precision, so a tied table shared at one precision counts once); None without a
budget. Weight statistics (`policy.weight_statistics`) cost a pass over the weights, so they are
computed only when an enabled policy has a `weight_statistic` condition. `original_dtype` is the
element type of the weight initializer as the model stores it (F32 for a layer without weights).
Sensitivity is not measured here; conditions on it are false (`LayerFacts.sensitivity` empty).

Then the whole plan goes through `PrecisionValidator` (layers in model order, the config's support
matrix, the memory budget): its errors stop the compile with one ValidationError listing them all;
its warnings go into the pass record. A component a layer does not have (weights of an attention
block) is filled in for the validator with a precision the matrix allows and its findings dropped.

Also warned about: config `layers` entries that name no layer of the model (with the closest names)
and globs that match none; policy conflicts (a lower-priority policy that wanted another precision),
grouped per pair of rules with the layers they concern. Everything is in model order, so the same
model and config give the same plan and record.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import ClassVar

import ml_dtypes
import numpy as np
import onnx_graphsurgeon as gs

from bitnet_onnx.config.config import MixedPrecisionConfig, Resolution
from bitnet_onnx.config.layer_precision import LayerPrecisionSpec
from bitnet_onnx.config.plan import LayerPlan, components_of
from bitnet_onnx.config.policy import ConditionType, Decision, LayerFacts, PolicyEngine, weight_statistics
from bitnet_onnx.config.validation import PrecisionValidator, ValidationReport
from bitnet_onnx.core.dtypes import DType, WeightLayout, storage_bytes
from bitnet_onnx.core.errors import ConfigError
from bitnet_onnx.core.layers import ComponentType, Layer
from bitnet_onnx.core.log import Change
from bitnet_onnx.passes._graph import constant_values
from bitnet_onnx.passes.base import Condition, PassContext, PassResult

__all__ = ["AssignPrecisionPass"]

_STORED_DTYPES: Mapping[np.dtype, DType] = {
    np.dtype(np.float32): DType.F32,
    np.dtype(np.float16): DType.F16,
    np.dtype(ml_dtypes.bfloat16): DType.BF16,
    np.dtype(np.int8): DType.I8,
    np.dtype(np.uint8): DType.I8,
    np.dtype(ml_dtypes.int4): DType.I4,
    np.dtype(ml_dtypes.uint4): DType.I4,
    np.dtype(ml_dtypes.int2): DType.I2,
    np.dtype(ml_dtypes.uint2): DType.I2,
}
_MAX_CONFLICT_LAYERS = 5  # layers named per grouped conflict warning; the count gives the rest
_CLOSEST = 3


def _every_layer_planned(graph: gs.Graph, ctx: PassContext) -> str | None:
    """Post-condition: the plan holds exactly the annotated layers."""
    unplanned = [name for name in ctx.layers if name not in ctx.plan]
    unknown = [name for name in ctx.plan if name not in ctx.layers]
    if unplanned or unknown:
        return f"plan and layers differ: unplanned {unplanned[:5]}, not layers {unknown[:5]}"
    return None


class AssignPrecisionPass:
    """Builds ctx.plan from the config and the policies, then validates it (see the module docstring).

    `memory_budget`: bytes the layers' weights and biases may take (None: no budget), the reference
    of the policies' `memory_usage` and of the validator's memory-budget rule.
    """

    name: ClassVar[str] = "assign_precision"
    requires: ClassVar[tuple[str, ...]] = ("annotate_layers",)
    ensures: ClassVar[tuple[Condition, ...]] = (_every_layer_planned,)

    def __init__(self, memory_budget: int | None = None) -> None:
        if memory_budget is not None and (
            isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget <= 0
        ):
            raise ConfigError(f"memory_budget {memory_budget!r} must be a positive number of bytes")
        self.memory_budget = memory_budget

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        config: MixedPrecisionConfig = ctx.config
        policy: PolicyEngine | None = ctx.policy
        layers: list[Layer] = list(ctx.layers.values())
        tensors = graph.tensors()
        resolutions = {
            layer.name: {c: config.resolve(layer.name, layer.layer_type, c) for c in components_of(layer)}
            for layer in layers
        }
        memory_usage = self._memory_usage(layers, resolutions, tensors)
        wants_statistics = policy is not None and _asks_for_statistics(policy)
        statistics: dict[str, Mapping[str, float]] = {}
        changes: list[Change] = []
        conflicts: dict[tuple[str, str], list[str]] = defaultdict(list)
        plan: dict[str, LayerPlan] = {}
        overridden = 0
        for layer in layers:
            facts = LayerFacts(
                name=layer.name,
                layer_type=layer.layer_type,
                index=layer.index,
                layer_count=len(layers),
                parameter_count=layer.parameter_count,
                memory_usage=memory_usage,
                weight_statistics=self._statistics(layer, tensors, statistics) if wants_statistics else {},
                original_dtype=_original_dtype(layer, tensors),
            )
            decisions: dict[ComponentType, Decision] = {}
            for component, resolution in resolutions[layer.name].items():
                decision = (
                    _config_decision(resolution)
                    if policy is None
                    else policy.decide(facts, component, resolution)
                )
                decisions[component] = decision
                overridden += decision.overrode is not None
                for conflict in decision.conflicts:
                    winner = f"{decision.source} chose {decision.dtype.name}"
                    loser = f"policy:{conflict.policy_id}/{conflict.rule_id} (priority {conflict.priority})"
                    conflicts[winner, f"{loser} wanted {conflict.dtype.name}"].append(
                        f"{layer.name}/{component.value}"
                    )
                changes.append(_change(layer, component, decision))
            plan[layer.name] = LayerPlan(layer, decisions)
        ctx.plan = plan

        warnings = _unknown_layer_warnings(config, [layer.name for layer in layers])
        warnings += _conflict_warnings(conflicts)
        report = PrecisionValidator().validate_specs(
            [_spec(p, tensors, config) for p in plan.values()],
            support_matrix=config.support,
            budget_bytes=self.memory_budget,
        )
        present = {f"{p.layer.name}/{c.value}" for p in plan.values() for c in p.decisions} | {"model"}
        report = ValidationReport(tuple(f for f in report.findings if f.subject in present))
        report.raise_if_errors()
        warnings += [str(f) for f in report.warnings]
        stats: dict[str, int | float | str] = {
            "layers": len(plan),
            "components": len(changes),
            "policy_decisions": overridden,
            "weight_statistics": len(statistics),
            "validator_warnings": len(report.warnings),
            "validator_infos": len(report.infos),
        }
        if memory_usage is not None:
            stats["memory_usage_percent"] = round(memory_usage, 3)
        return PassResult(modified=False, changes=tuple(changes), warnings=tuple(warnings), stats=stats)

    def _memory_usage(
        self,
        layers: Sequence[Layer],
        resolutions: Mapping[str, Mapping[ComponentType, Resolution]],
        tensors: Mapping[str, gs.Tensor],
    ) -> float | None:
        if self.memory_budget is None:
            return None
        counted: dict[tuple[str, str, object], int] = {}
        for layer in layers:
            res = resolutions[layer.name]
            for component, name, shape in (
                (ComponentType.WEIGHTS, layer.weight, _row_shape(layer)),
                (ComponentType.BIAS, layer.bias, _shape_of(tensors, layer.bias)),
            ):
                if name is None or shape is None or component not in res:
                    continue
                r = res[component]
                counted.setdefault((name, r.dtype.name, r.layout), storage_bytes(r.dtype, shape, r.layout))
        return 100.0 * sum(counted.values()) / self.memory_budget

    @staticmethod
    def _statistics(
        layer: Layer, tensors: Mapping[str, gs.Tensor], cache: dict[str, Mapping[str, float]]
    ) -> Mapping[str, float]:
        tensor = tensors.get(layer.weight) if layer.weight is not None else None
        if not isinstance(tensor, gs.Constant):
            return {}
        if tensor.name not in cache:
            cache[tensor.name] = weight_statistics(constant_values(tensor))
        return cache[tensor.name]


def _asks_for_statistics(policy: PolicyEngine) -> bool:
    return any(
        condition.condition_type is ConditionType.WEIGHT_STATISTIC
        for p in policy.policies
        if p.enabled
        for rule in p.rules
        for condition in rule.conditions
    )


def _change(layer: Layer, component: ComponentType, decision: Decision) -> Change:
    source = decision.source if decision.origin is None else f"{decision.source} ({decision.origin})"
    return Change(
        layer=layer.name,
        action="assign",
        component=component.value,
        dtype=decision.dtype.name,
        source=source,
        overrode=str(decision.overrode) if decision.overrode is not None else None,
        detail=decision.explanation,
    )


def _config_decision(resolution: Resolution) -> Decision:
    return Decision(
        resolution.dtype,
        resolution.source,
        resolution.layout,
        resolution.conversion_strategy,
        None,
        f"config {resolution}",
    )


def _shape_of(tensors: Mapping[str, gs.Tensor], name: str | None) -> tuple[int, ...] | None:
    tensor = tensors.get(name) if name is not None else None
    shape = getattr(tensor, "shape", None)
    if shape is None or not all(isinstance(d, int) and d > 0 for d in shape):
        return None
    return tuple(shape)


def _row_shape(layer: Layer) -> tuple[int, ...] | None:
    """The weight's shape with the reduction axis last (storage is counted by rows of K)."""
    shape = layer.weight_shape
    if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        return None
    return tuple(reversed(shape)) if layer.weight_nk is False and len(shape) == 2 else tuple(shape)


def _original_dtype(layer: Layer, tensors: Mapping[str, gs.Tensor]) -> DType:
    tensor = tensors.get(layer.weight) if layer.weight is not None else None
    if tensor is None or tensor.dtype is None:
        return DType.F32
    try:
        return _STORED_DTYPES.get(np.dtype(tensor.dtype), DType.F32)
    except TypeError:  # an ONNX element type numpy has no name for
        return DType.F32


def _spec(
    plan: LayerPlan, tensors: Mapping[str, gs.Tensor], config: MixedPrecisionConfig
) -> LayerPrecisionSpec:
    """The validator's view of one layer; components it lacks get a placeholder the matrix allows."""
    layer = plan.layer

    def precision(component: ComponentType, *fallbacks: ComponentType) -> DType:
        own = plan.dtype(component)
        if own is not None:
            return own
        allowed = config.support.allowed(layer.layer_type, component)
        for other in fallbacks:
            candidate = plan.dtype(other)
            if candidate is not None and candidate in allowed:
                return candidate
        return max(allowed, key=DType.rank)

    weight_shape = _row_shape(layer)
    weights = plan.decisions.get(ComponentType.WEIGHTS)
    return LayerPrecisionSpec(
        name=layer.name,
        layer_type=layer.layer_type,
        input_precision=precision(ComponentType.ACTIVATIONS, ComponentType.WEIGHTS, ComponentType.OUTPUTS),
        output_precision=precision(ComponentType.OUTPUTS, ComponentType.ACTIVATIONS),
        weight_precision=precision(ComponentType.WEIGHTS, ComponentType.ACTIVATIONS, ComponentType.OUTPUTS),
        bias_precision=plan.dtype(ComponentType.BIAS),
        weight_shape=weight_shape,
        bias_shape=_shape_of(tensors, layer.bias),
        layout=weights.layout if weights is not None else WeightLayout(),
    )


def _unknown_layer_warnings(config: MixedPrecisionConfig, names: Sequence[str]) -> list[str]:
    warnings = []
    known = set(names)
    for key in config.layers:
        if any(ch in key for ch in "*?["):
            if not any(fnmatch.fnmatchcase(n, key) for n in names):
                warnings.append(f"config layers[{key!r}] is a glob that matches no layer of this model")
        elif key not in known:
            close = difflib.get_close_matches(key, names, n=_CLOSEST)
            hint = f"closest: {', '.join(repr(c) for c in close)}" if close else "no similar name"
            warnings.append(f"config layers[{key!r}] names no layer of this model ({hint})")
    return warnings


def _conflict_warnings(conflicts: Mapping[tuple[str, str], list[str]]) -> list[str]:
    warnings = []
    for (winner, loser), where in conflicts.items():
        shown = ", ".join(where[:_MAX_CONFLICT_LAYERS])
        more = f" and {len(where) - _MAX_CONFLICT_LAYERS} more" if len(where) > _MAX_CONFLICT_LAYERS else ""
        warnings.append(
            f"policy conflict on {len(where)} component(s) ({shown}{more}): {winner}; {loser}; "
            "the higher priority (then the earlier policy) wins"
        )
    return warnings
