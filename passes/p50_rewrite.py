"""rewrite: realise the precision plan in the graph.

Layers whose weights GPTQ converts get their calibration activations first (`_hessians`, one run
of the original on `ctx.conversion_inputs`). For every planned layer (`ctx.plan`), the rewriter of
its type (`passes.rewrite.REWRITERS`; each module's docstring states its semantics) replaces or
rewires the layer's nodes so that each component is stored and computed in its planned precision.
Then:

1. Embedding layers are rewritten first, the others in `ctx.layers` order, so a head tied to an
   embedding table finds the table's encoding already stored and reads it (one copy in the file
   when both are in the same format). A tied pair that ends up reading different weight tensors
   is warned about with the bytes the second copy costs.
2. The graph is cleaned up once (dead nodes, tensors and initializers dropped) and sorted.
3. Every node a layer kept or gained is annotated (`ctx.annotations[node]`): `bitnet.layer`,
   `bitnet.layer_type`, `bitnet.dtype.<component>` for each planned component,
   `bitnet.component.<component>` (its settings as JSON: precision, layout knobs, conversion
   strategy, deciding rule; `plan.component_settings`), `bitnet.layer_index` (the layer's position
   in the model), `bitnet.op` (what computes the layer now), `bitnet.rule` (the source of the
   layer's deciding decision: weights when it has them, else activations) and, for BITNET158
   weights, `bitnet.ternary_scale` (the layout's scale rule). Annotations of the layer's nodes that
   are gone are dropped.
4. One `Change(action="rewrite")` per layer: the op, the layer's constant bytes before → after,
   and a line of detail (e.g. the I8 kernel choice and its timings). Stats count layers per op,
   the bytes, and the I8 kernels measured.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import onnx_graphsurgeon as gs

from bitnet_onnx.core.dtypes import DType
from bitnet_onnx.core.layers import ComponentType, LayerType
from bitnet_onnx.core.log import Change
from bitnet_onnx.core.metadata import (
    INDEX_KEY,
    LAYER_KEY,
    LAYER_TYPE_KEY,
    OP_KEY,
    RULE_KEY,
    TERNARY_SCALE_KEY,
    component_key,
    dtype_key,
)
from bitnet_onnx.core.plan import LayerPlan, component_settings

from ._hessians import layer_hessians
from .base import Condition, PassContext, PassResult
from .rewrite import REWRITERS, LayerEditor, LayerRewrite, RewriteEnv

__all__ = ["RewritePass"]


_DECIDING = (ComponentType.WEIGHTS, ComponentType.ACTIVATIONS, ComponentType.OUTPUTS, ComponentType.BIAS)


@dataclass(frozen=True)
class _Done:
    plan: LayerPlan
    created: tuple[gs.Node, ...]
    changed: bool
    result: LayerRewrite


class RewritePass:
    name: ClassVar[str] = "rewrite"
    requires: ClassVar[tuple[str, ...]] = ("annotate_layers", "assign_precision")
    ensures: ClassVar[tuple[Condition, ...]] = ()

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        env = RewriteEnv.of(graph, ctx.seed, ctx.measure_kernels, layer_hessians(graph, ctx))
        done: list[_Done] = []
        for plan in _in_order(ctx):
            edit = LayerEditor(graph, plan.layer, env.names)
            result = REWRITERS[plan.layer.layer_type](env, edit, plan)
            done.append(_Done(plan, tuple(edit.created), edit.changed, result))
        graph.cleanup().toposort()
        alive = {node.name for node in graph.nodes}
        for item in done:
            _annotate(ctx, item, alive)
        warnings = tuple(w for item in done for w in item.result.warnings) + _tie_warnings(done)
        changes = tuple(_change(item) for item in done)
        stats = _stats(done)
        modified = any(item.changed for item in done)
        return PassResult(modified=modified, changes=changes, warnings=warnings, stats=stats)


def _in_order(ctx: PassContext) -> list[LayerPlan]:
    plans = [ctx.plan[name] for name in ctx.layers if name in ctx.plan]
    embeddings = [p for p in plans if p.layer.layer_type is LayerType.EMBEDDING]
    return embeddings + [p for p in plans if p.layer.layer_type is not LayerType.EMBEDDING]


def _deciding(plan: LayerPlan) -> str:
    for component in _DECIDING:
        decision = plan.decisions.get(component)
        if decision is not None:
            return decision.source
    return ""


def _annotate(ctx: PassContext, item: _Done, alive: set[str]) -> None:
    layer = item.plan.layer
    props = {
        LAYER_KEY: layer.name,
        LAYER_TYPE_KEY: layer.layer_type.value,
        **{dtype_key(c): d.dtype.name for c, d in item.plan.decisions.items()},
        **{component_key(c): json.dumps(component_settings(d)) for c, d in item.plan.decisions.items()},
        OP_KEY: item.result.op,
        RULE_KEY: _deciding(item.plan),
        INDEX_KEY: str(layer.index),
    }
    weights = item.plan.decisions.get(ComponentType.WEIGHTS)
    if weights is not None and weights.dtype is DType.BITNET158:
        props[TERNARY_SCALE_KEY] = weights.layout.ternary_scale.value
    for name in layer.nodes:
        if name not in alive:
            ctx.annotations.pop(name, None)
    names = [n for n in layer.nodes if n in alive] + [n.name for n in item.created if n.name in alive]
    for name in names:
        ctx.annotations[name] = {**ctx.annotations.get(name, {}), **props}


def _tie_warnings(done: list[_Done]) -> tuple[str, ...]:
    by_name = {item.plan.layer.name: item for item in done}
    warnings = []
    for item in done:
        layer = item.plan.layer
        other = by_name.get(layer.tied_with or "")
        if other is None or layer.layer_type is not LayerType.OUTPUT:
            continue  # warn once per pair, from the head's side
        if not set(item.result.weights) & set(other.result.weights):
            warnings.append(
                f"layers {other.plan.layer.name!r} and {layer.name!r} share the weight {layer.weight!r} in "
                f"the model but not in the compiled file ({_format(other.plan)} vs {_format(item.plan)}): "
                f"the second copy costs {item.result.bytes_after} bytes; give both the same weights "
                "precision and layout to store it once"
            )
    return tuple(warnings)


def _format(plan: LayerPlan) -> str:
    decision = plan.decisions.get(ComponentType.WEIGHTS)
    return "no weights decision" if decision is None else decision.dtype.name


def _change(item: _Done) -> Change:
    plan, result = item.plan, item.result
    weights = plan.decisions.get(ComponentType.WEIGHTS)
    main = weights or plan.decisions.get(ComponentType.ACTIVATIONS)
    # The node that computes the layer now: the op it names, else the kept anchor.
    node = next(
        (n.name for n in item.created if n.op == result.op), plan.layer.nodes[0] if plan.layer.nodes else None
    )
    return Change(
        layer=plan.layer.name,
        action="rewrite",
        component=(ComponentType.WEIGHTS if weights else ComponentType.ACTIVATIONS).value if main else None,
        node=node,
        dtype=main.dtype.name if main else None,
        source=_deciding(plan) or None,
        detail=f"{result.op}; constants {result.bytes_before} → {result.bytes_after} bytes; {result.detail}",
    )


def _stats(done: list[_Done]) -> dict[str, int | float | str]:
    ops = Counter(item.result.op for item in done)
    stats: dict[str, int | float | str] = {
        "layers": len(done),
        "bytes_before": sum(item.result.bytes_before for item in done),
        "bytes_after": sum(item.result.bytes_after for item in done),
        "int8_timed": sum(1 for item in done if any(k.startswith("int8_us.") for k in item.result.stats)),
    }
    stats.update({f"op.{op}": count for op, count in sorted(ops.items())})
    # Why an I8 kernel candidate could not run (e.g. an op library built without it): once per kernel.
    for item in done:
        for key, value in item.result.stats.items():
            if key.startswith("int8_left_out."):
                stats.setdefault(key, value)
    return stats
