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
element type of the weight initializer as the model stores it (F32 for a layer without weights;
I4 for a 4-bit MatMulNBits, whose packed blocks are uint8).
Sensitivity is measured only when an enabled policy has a `sensitivity` condition, and only for
the precisions such conditions name (their `key`, else the precision the config resolves for the
component being decided), by `ctx.sensitivity` (compile()'s `sensitivity` argument; the command
line passes `optimize.sensitivity.measurer`: measured on the inputs, cached on disk, with a progress
bar). The fact is 1 − cosine of the outputs with the layer alone at that precision. Without a
measure such a policy is refused with a ConfigError naming its rules, never left silently false.

A linear layer the model quantized already keeps the precision it is stored in unless the
decision asks for fewer bits per weight: a com.microsoft MatMulNBits anchor (I4 with group size
block_size for a 4-bit node, asymmetric when it has zero points), or a weight read through a
DequantizeLinear of integer codes (QDQ: I8 for int8/uint8, I4 for int4/uint4; the whole row or
its block_size per scale; asymmetric when a zero point is not 0). Quantization cannot be undone,
so a wider precision would only store the same values larger; a MatMulNBits whose blocks g_idx
reorders is kept whatever the plan asks (its weights are not read back). Its source (`model:<op>`)
and explanation say so and name what was asked; the validator does not judge it (an output layer
stored in 4 bits is the model's, not the config's choice). `rewrite.linear` case 0 then
keeps the node, or re-quantizes it.

Then the whole plan goes through `PrecisionValidator` (layers in model order, the config's support
matrix, the memory budget): its errors stop the compile with one ValidationError listing them all;
its warnings go into the pass record. The rules judge the plan as it is (`PlannedLayer`: each
layer's `LayerPlan` with its weight and bias shapes), so only the components a layer has.

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
from dataclasses import dataclass, replace
from typing import ClassVar

import ml_dtypes
import numpy as np
import onnx_graphsurgeon as gs

from bitnet_onnx.config.config import MixedPrecisionConfig
from bitnet_onnx.config.policy import (
    ConditionType,
    LayerFacts,
    PolicyCondition,
    PolicyEngine,
    weight_statistics,
)
from bitnet_onnx.config.validation import (
    PerformanceImpactRule,
    PrecisionValidator,
    ValidationReport,
    default_rules,
)
from bitnet_onnx.core.dtypes import DType, WeightLayout, storage_bytes
from bitnet_onnx.core.errors import ConfigError
from bitnet_onnx.core.layers import ComponentType, Layer, LayerType
from bitnet_onnx.core.log import Change
from bitnet_onnx.core.plan import Decision, LayerPlan, PlannedLayer, Resolution, components_of
from bitnet_onnx.passes._graph import constant_values
from bitnet_onnx.passes.base import Condition, PassContext, PassResult
from bitnet_onnx.passes.rewrite._nbits import fewer_bits, stored_dtype

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
_KEPT = "model:"  # the source prefix of a decision keeping the model's own quantization
_MAX_CONFLICT_LAYERS = 5  # layers named per grouped conflict warning; the count gives the rest
_CLOSEST = 3
# The plan's rules, less the guess at conversions from layer order: fold_converts counts the ones
# the rewrite really inserts, along the graph's edges.
_PLAN_RULES = [rule for rule in default_rules() if not isinstance(rule, PerformanceImpactRule)]


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
        wants_statistics = policy is not None and _asks_for(policy, ConditionType.WEIGHT_STATISTIC)
        sensitivity = (
            _sensitivity(ctx, layers, resolutions)
            if policy is not None and _asks_for(policy, ConditionType.SENSITIVITY)
            else {}
        )
        statistics: dict[str, Mapping[str, float]] = {}
        changes: list[Change] = []
        conflicts: dict[tuple[str, str], list[str]] = defaultdict(list)
        plan: dict[str, LayerPlan] = {}
        overridden = 0
        nodes = {node.name: node for node in graph.nodes}
        for layer in layers:
            anchor = nodes.get(layer.nodes[0]) if layer.nodes else None
            stored = _stored_quantization(anchor, layer, nodes, tensors)
            facts = LayerFacts(
                name=layer.name,
                layer_type=layer.layer_type,
                index=layer.index,
                layer_count=len(layers),
                parameter_count=layer.parameter_count,
                memory_usage=memory_usage,
                weight_statistics=self._statistics(layer, tensors, statistics) if wants_statistics else {},
                original_dtype=stored.dtype if stored is not None else _original_dtype(layer, tensors),
                sensitivity=sensitivity.get(layer.name, {}),
            )
            decisions: dict[ComponentType, Decision] = {}
            for component, resolution in resolutions[layer.name].items():
                decision = (
                    Decision.of_config(resolution)
                    if policy is None
                    else policy.decide(facts, component, resolution)
                )
                if component is ComponentType.WEIGHTS and stored is not None:
                    decision = _kept_quantized(stored, decision)
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
        report = PrecisionValidator(_PLAN_RULES).validate_plan(
            [PlannedLayer(p, _row_shape(p.layer), _shape_of(tensors, p.layer.bias)) for p in plan.values()],
            support_matrix=config.support,
            budget_bytes=self.memory_budget,
        )
        kept = {  # the model's own precision is not the config's choice: the validator does not judge it
            f"{p.layer.name}/{c.value}"
            for p in plan.values()
            for c, d in p.decisions.items()
            if d.source.startswith(_KEPT)
        }
        report = ValidationReport(tuple(f for f in report.findings if f.subject not in kept))
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


@dataclass(frozen=True)
class _Stored:
    """How the model itself quantized a linear layer's weights."""

    dtype: DType
    layout: WeightLayout
    bits: int
    source: str  # `model:<op>`
    what: str  # for the explanation
    readable: bool = True  # False: its weights cannot be read back (kept whatever the plan asks)


def _stored_quantization(
    anchor: gs.Node | None, layer: Layer, nodes: Mapping[str, gs.Node], tensors: Mapping[str, gs.Tensor]
) -> _Stored | None:
    """A MatMulNBits anchor's precision, or that of integer codes a linear layer's weight reaches it
    through (QDQ's DequantizeLinear); None for a layer whose weights are float."""
    if anchor is not None and anchor.op == "MatMulNBits":
        dtype, block = stored_dtype(anchor), int(anchor.attrs["block_size"])
        if dtype is None:
            return None
        zero_points = len(anchor.inputs) > 3 and bool(anchor.inputs[3].name)
        layout = WeightLayout(group_size=block, asymmetric=zero_points)
        bits = int(anchor.attrs["bits"])
        reordered = len(anchor.inputs) > 4 and bool(anchor.inputs[4].name)  # g_idx
        what = f"MatMulNBits block {block}" + (" with reordered blocks (g_idx)" if reordered else "")
        return _Stored(dtype, layout, bits, f"model:{anchor.op}", what, readable=not reordered)
    if layer.layer_type not in (LayerType.LINEAR, LayerType.OUTPUT):
        return None
    chain = [nodes[n] for n in layer.weight_nodes if n in nodes]
    dq = next((n for n in chain if n.op == "DequantizeLinear"), None)
    dtype = _original_dtype(layer, tensors)
    if dq is None or dtype.is_float:
        return None
    zero = dq.inputs[2] if len(dq.inputs) > 2 else None
    asymmetric = isinstance(zero, gs.Constant) and bool(np.any(constant_values(zero)))
    block = int(dq.attrs.get("block_size", 0)) or None
    layout = WeightLayout(group_size=block, asymmetric=asymmetric)
    what = f"{dtype.name} codes read through DequantizeLinear"
    return _Stored(dtype, layout, dtype.bits, f"model:{dq.op}", what)


def _kept_quantized(stored: _Stored, decision: Decision) -> Decision:
    """The model's own quantization of a layer, unless `decision` asks for fewer bits."""
    if stored.readable and fewer_bits(stored.bits, decision.dtype):
        return decision
    return replace(
        decision,
        dtype=stored.dtype,
        layout=stored.layout,
        source=stored.source,
        conversion_strategy=None,
        explanation=(
            f"stored as {stored.what} by the model and kept: {decision.source} asked for "
            f"{decision.dtype.name}, which stores no fewer bits, and quantization cannot be undone"
        ),
    )


def _conditions(policy: PolicyEngine, ctype: ConditionType) -> list[tuple[str, PolicyCondition]]:
    """(`policy/rule`, condition) of every enabled policy's conditions of type `ctype`."""
    return [
        (f"{p.id}/{rule.id}", condition)
        for p in policy.policies
        if p.enabled
        for rule in p.rules
        for condition in rule.conditions
        if condition.condition_type is ctype
    ]


def _asks_for(policy: PolicyEngine, ctype: ConditionType) -> bool:
    return bool(_conditions(policy, ctype))


def _sensitivity(
    ctx: PassContext, layers: Sequence[Layer], resolutions: Mapping[str, Mapping[ComponentType, Resolution]]
) -> Mapping[str, Mapping[DType, float]]:
    """Layer → precision → measured 1 − cosine, for the precisions the sensitivity conditions ask."""
    asking = _conditions(ctx.policy, ConditionType.SENSITIVITY)
    if ctx.sensitivity is None:
        rules = ", ".join(sorted({where for where, _ in asking}))
        raise ConfigError(
            f"policy rule(s) {rules} have a sensitivity condition, which needs the model's measured "
            "sensitivity: compile on the command line (`bitnet-onnx compile` measures it), or pass "
            "compile(..., sensitivity=bitnet_onnx.optimize.sensitivity.measurer(model, calibration)); "
            "`bitnet-onnx analyze MODEL` prints each layer's sensitivity"
        )
    keys = {c.key for _, c in asking}
    wanted = {
        layer.name: {k for k in keys if isinstance(k, DType)}
        | ({r.dtype for r in resolutions[layer.name].values()} if None in keys else set())
        for layer in layers
    }
    return ctx.sensitivity(layers, wanted, ctx.config.support)


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
