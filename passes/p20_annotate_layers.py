"""annotate_layers: group graph nodes into named, typed layers (ctx.layers) and annotate every node
of a layer (ctx.annotations: `bitnet.layer`, `bitnet.layer_type`, `bitnet.rule`).

The engine knows no layer names or subgraph shapes; `layer_patterns.RULES` does. It

1. tries the rules by priority, then table order; each rule visits its anchor ops in model order,
   and a match claims its nodes. A match that needs a node another layer already owns is dropped
   (counted in the stats: `conflicts`, and `conflicts.<rule>` per rule); weight-chain nodes
   (Identity, Cast, Transpose, ...) may be shared and stay with the first layer. A linear that an
   attention block found as its q/k/v/o projection is never an OUTPUT layer; it becomes LINEAR with
   `block` set to that attention block's name.
2. names each layer from the model's own names, in this order: the weight (table, gain) tensor
   as the anchor reads it, minus `.weight`, when it is a parameter name (`model.layers.0.mlp.up_proj
   .weight`) read by that node alone; else the innermost module the dynamo exporter recorded in the
   anchor's metadata (`pkg.torch.onnx.name_scopes` = `['', 'model', …, 'model.layers.0.self_attn
   .q_proj', 'linear']`: the last entry is the fx node, the one before its module; ctx.node_metadata),
   since dynamo names nodes `node_linear_3` and weights `val_83`; else the anchor node's scope as
   the TorchScript exporter writes it (`/model/layers.0/self_attn/q_proj/MatMul` →
   `model.layers.0.self_attn.q_proj`; it names MatMul weights `onnx::MatMul_123`, so scopes are the
   source there; `/layer2/downsample/downsample.0/Conv` → `layer2.downsample.0`); else the weight's
   name; else the anchor's name. Collisions get `_1`, `_2`, ... in model order. A model exported
   both ways gets the same names.
3. links tied weights: layers reading the same initializer as a weight (an embedding table and the
   head reading it through Transpose or Gemm transB=1) get `tied_with` set both ways; the
   initializer stays one. With more than two readers, each later one points to the first (warned).
4. If/Loop/Scan: layers inside control flow are *not* annotated. Each control-flow node is named in
   a warning with the weight-bearing nodes its subgraphs hold (counted by op, the first few by
   name), and so is every initializer a subgraph reads that is also the weight of an annotated
   layer: later passes must leave those intact.

Nodes in no layer are left alone and counted by op type in the stats (`unassigned.<op>`). Weights
fed as graph inputs are warned about (their MatMul stays an activation×activation product), and so
are empty weights (a zero-size dim): a match whose weight holds no element is no layer, since there
is nothing to convert, and its nodes stay as they are.
`explain(graph, node)` answers "why is this node in no layer?" with each rule's closest attempt.
The graph itself is not changed (`modified` is False); the pass writes ctx.layers and ctx.annotations.

What a Layer holds, by type (`nodes[0]` is always the anchor; the other nodes follow in graph order):
- LINEAR, OUTPUT: the MatMul, Gemm or com.microsoft MatMulNBits; then a MatMul's bias Add (when its
  other operand is a constant of N elements) and the weight/bias chain nodes. `weight` is the
  initializer the anchor's weight input reaches through `weight_nodes` (Identity, Cast, Transpose,
  DequantizeLinear, Reshape; anchor side first), `weight_shape` its stored shape (MatMulNBits:
  the logical [N, K] of its packed blocks, so parameter counts and sizes are the matrix's), `weight_nk` its
  orientation (see Layer); `bias` the initializer of Gemm's C or of the Add's constant (through
  Identity/Cast/DequantizeLinear), or None. `block` names the attention block of a q/k/v/o
  projection. `_match.linear_weight(view, anchor)` gives the same chain, and `matrix_nk` W [N, K].
- CONVOLUTION: the Conv/ConvTranspose; `weight` [O, I/groups, kH, kW], `bias` or None.
- EMBEDDING: the Gather (axis 0, dynamic indices); `weight` the float table [rows, width].
- NORMALIZATION: the fused op, or the Sqrt of a decomposition and all its nodes (ReduceMean, Sub,
  Pow, Add ε, Reciprocal or Div, Mul, HF's Casts, the γ Mul and β Add); `weight` γ and `bias` β
  (None when absent or not constant).
- ATTENTION: the Softmax, the QKᵀ MatMul, scale Mul/Div (on the scores or on q and k), the kᵀ
  Transpose, mask Add/Where, the IsNaN/Where guard, Casts and the ·V MatMul; or the fused op.
  `block` is its own name; `weight`/`bias` only for onnxruntime's Attention (the packed qkv weight).
- ACTIVATION: the op (Relu, Gelu, Tanh, ...), or the Sigmoid/Erf/Tanh of SiLU, erf-GELU and
  tanh-GELU with the rest of the decomposition; no weight.
`weight` and `bias` are initializer names after following the chain. Exporters deduplicate identical
tensors through Identity (all-ones gains, zero biases), so layers may name the same initializer
without being tied; a later pass must not change an initializer in place that other nodes read.
"""

from __future__ import annotations

import ast
import collections
import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import ClassVar

import onnx_graphsurgeon as gs

from bitnet_onnx.core.errors import UnsupportedModelError
from bitnet_onnx.core.layers import Layer, LayerType
from bitnet_onnx.core.log import Change
from bitnet_onnx.core.metadata import LAYER_KEY, LAYER_TYPE_KEY, RULE_KEY
from bitnet_onnx.passes._match import GraphView, MatchResult, label
from bitnet_onnx.passes.base import Condition, PassContext, PassResult
from bitnet_onnx.passes.layer_patterns import RULES, LayerMatch, LayerRule

__all__ = ["AnnotateLayersPass", "explain", "module_scope"]


_WEIGHT_TYPES = frozenset(
    {LayerType.LINEAR, LayerType.OUTPUT, LayerType.EMBEDDING, LayerType.CONVOLUTION, LayerType.ATTENTION}
)
_WEIGHT_INPUT = {"MatMul": 1, "Gemm": 1, "Conv": 1, "ConvTranspose": 1}
_EXPLAIN_RADIUS = 4
_NAMED = 5  # nodes named per control-flow warning; the counts give the rest


@dataclass
class _Candidate:
    rule: LayerRule
    layer_type: LayerType
    match: LayerMatch
    attention: _Candidate | None = None  # the attention block this layer projects for (or itself)
    name: str = ""

    @property
    def anchor(self) -> gs.Node:
        return self.match.nodes[0]


def _ordered_rules() -> list[LayerRule]:
    return sorted(RULES, key=lambda r: -r.priority)  # sorted() is stable: table order within a priority


def _every_layer_annotated(graph: gs.Graph, ctx: PassContext) -> str | None:
    """Post-condition: every layer found has nodes that carry its name."""
    annotated = {props.get(LAYER_KEY) for props in ctx.annotations.values()}
    missing = [name for name in ctx.layers if name not in annotated]
    return f"layers without annotated nodes: {missing[:5]}" if missing else None


class AnnotateLayersPass:
    name: ClassVar[str] = "annotate_layers"
    requires: ClassVar[tuple[str, ...]] = ("normalize",)
    ensures: ClassVar[tuple[Condition, ...]] = (_every_layer_annotated,)

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        view = GraphView(graph)
        candidates, conflicts, empty = _claim(view)
        candidates.sort(key=lambda c: view.position(c.anchor))
        _assign_blocks(candidates)
        _assign_names(candidates, ctx.node_metadata)
        tied, tie_warnings = _ties(candidates)
        layers: dict[str, Layer] = {}
        changes: list[Change] = []
        annotations: dict[str, dict[str, str]] = {}
        for index, cand in enumerate(candidates):
            layer = _layer(view, cand, index, tied.get(id(cand)))
            layers[layer.name] = layer
            for node_name in layer.nodes:
                annotations[node_name] = {
                    LAYER_KEY: layer.name,
                    LAYER_TYPE_KEY: layer.layer_type.value,
                    RULE_KEY: layer.rule,
                }
            changes.append(_change(layer))
        ctx.layers = layers
        ctx.annotations.update(annotations)
        warnings = [
            *tie_warnings,
            *_control_flow_warnings(view, layers),
            *_graph_input_weights(view),
            *_empty_weight_warnings(empty),
        ]
        stats = _stats(view, layers, annotations, conflicts)
        return PassResult(modified=False, changes=tuple(changes), warnings=tuple(warnings), stats=stats)


# -- 1. claiming -----------------------------------------------------------------------------------


def _claim(
    view: GraphView,
) -> tuple[list[_Candidate], collections.Counter[str], list[tuple[gs.Node, gs.Constant]]]:
    """The layers (model order within each rule), how many matches of each rule conflicted with
    an earlier layer, and the anchors whose match had an empty weight (in model order, once each)."""
    owned: set[int] = set()  # nodes that are some layer's own nodes
    claimed: set[int] = set()  # ... or weight-chain nodes some layer already took
    projections: set[int] = set()
    candidates: list[_Candidate] = []
    conflicts: collections.Counter[str] = collections.Counter()
    empty: dict[int, tuple[gs.Node, gs.Constant]] = {}
    for rule in _ordered_rules():
        for node in view.nodes:
            if node.op not in rule.anchor_ops or id(node) in owned:
                continue
            if rule.layer_type is LayerType.OUTPUT and id(node) in projections:
                continue  # an attention projection stays LINEAR (rule "linear" takes it)
            result = rule.match(node, view)
            if not result:
                continue
            match: LayerMatch = result.bindings["layer"]
            if match.weight is not None and 0 in tuple(match.weight.constant.shape):
                empty.setdefault(id(node), (node, match.weight.constant))
                continue
            if any(id(n) in owned for n in match.nodes):
                conflicts[rule.name] += 1
                continue
            shared = tuple(n for n in match.shared if id(n) not in claimed)
            owned.update(id(n) for n in match.nodes)
            claimed.update(id(n) for n in (*match.nodes, *shared))
            projections.update(id(p) for p in match.projections)
            candidates.append(_Candidate(rule, rule.layer_type, replace(match, shared=shared)))
    ordered = sorted(empty.values(), key=lambda item: view.position(item[0]))
    return candidates, conflicts, ordered


# -- 2. blocks and names ---------------------------------------------------------------------------


def _assign_blocks(candidates: list[_Candidate]) -> None:
    by_anchor = {id(c.anchor): c for c in candidates}
    for cand in candidates:
        if cand.layer_type is not LayerType.ATTENTION:
            continue
        cand.attention = cand
        for projection in cand.match.projections:
            member = by_anchor.get(id(projection))
            if member is not None and member.layer_type is LayerType.LINEAR:
                member.attention = cand


def scope_name(node_name: str) -> str:
    """`/model/layers.0/self_attn/q_proj/MatMul` → `model.layers.0.self_attn.q_proj`; '' without a scope.

    torch writes a called Sequential's child as `<seq>/<seq>.<i>`; the parent part is dropped."""
    parts = [p for p in node_name.split("/") if p]
    out: list[str] = []
    for part in parts[:-1]:
        if out and part.startswith(out[-1] + "."):
            out[-1] = part
        else:
            out.append(part)
    return ".".join(out)


def _is_parameter_name(name: str) -> bool:
    return name.endswith(".weight") and not name.startswith("onnx::") and "/" not in name


_NAME_SCOPES = "pkg.torch.onnx.name_scopes"


def module_scope(metadata: Iterable[tuple[str, str]]) -> str:
    """The innermost module of a dynamo-exported node's `pkg.torch.onnx.name_scopes` (a Python list
    literal whose last entry is the fx node itself); '' when there is none."""
    value = dict(metadata).get(_NAME_SCOPES)
    try:
        scopes = ast.literal_eval(value) if value else []
    except (ValueError, SyntaxError):  # a value another tool wrote under the same key
        return ""
    if not isinstance(scopes, list) or len(scopes) < 2 or not isinstance(scopes[-2], str):
        return ""
    return scopes[-2]


def _base_name(cand: _Candidate, node_metadata: Mapping[str, tuple[tuple[str, str], ...]]) -> str:
    param = cand.match.param
    if param is not None and _is_parameter_name(param.name) and len(param.outputs) == 1:
        return param.name.removesuffix(".weight")
    module = module_scope(node_metadata.get(cand.anchor.name, ()))
    if module:
        return module
    scope = scope_name(cand.anchor.name)
    if scope:
        return scope
    if cand.match.weight is not None and not cand.match.weight.constant.name.startswith("onnx::"):
        return cand.match.weight.constant.name.removesuffix(".weight")
    return cand.anchor.name.strip("/") or f"{cand.layer_type.value}_{cand.anchor.op}"


def _assign_names(
    candidates: list[_Candidate], node_metadata: Mapping[str, tuple[tuple[str, str], ...]]
) -> None:
    used: collections.Counter[str] = collections.Counter()
    taken: set[str] = set()
    for cand in candidates:
        base = _base_name(cand, node_metadata)
        name = base
        while name in taken:
            used[base] += 1
            name = f"{base}_{used[base]}"
        taken.add(name)
        cand.name = name


# -- 3. ties -----------------------------------------------------------------------------------------


def _ties(candidates: list[_Candidate]) -> tuple[dict[int, str], list[str]]:
    readers: dict[int, list[_Candidate]] = collections.defaultdict(list)
    for cand in candidates:
        if cand.layer_type in _WEIGHT_TYPES and cand.match.weight is not None:
            readers[id(cand.match.weight.constant)].append(cand)
    tied: dict[int, str] = {}
    warnings: list[str] = []
    for group in readers.values():
        if len(group) < 2:
            continue
        first, second = group[0], group[1]
        tied[id(first)] = second.name
        for later in group[1:]:
            tied[id(later)] = first.name
        if len(group) > 2:
            warnings.append(
                f"initializer {first.match.weight.constant.name!r} is the weight of {len(group)} layers "
                f"({', '.join(c.name for c in group)}); each later layer is tied to {first.name!r}"
            )
    return tied, warnings


# -- the records -----------------------------------------------------------------------------------


def _layer(view: GraphView, cand: _Candidate, index: int, tied_with: str | None) -> Layer:
    match = cand.match
    nodes = (match.nodes[0], *sorted((*match.nodes[1:], *match.shared), key=view.position))
    weight = match.weight
    return Layer(
        name=cand.name,
        layer_type=cand.layer_type,
        index=index,
        nodes=tuple(n.name for n in nodes),
        rule=cand.rule.name,
        weight=weight.constant.name if weight is not None else None,
        weight_shape=_weight_shape(cand) if weight is not None else None,
        bias=match.bias.constant.name if match.bias is not None else None,
        block=cand.attention.name if cand.attention is not None else None,
        tied_with=tied_with,
        weight_nodes=tuple(n.name for n in weight.nodes) if weight is not None else (),
        weight_nk=match.weight_nk,
    )


def _weight_shape(cand: _Candidate) -> tuple[int, ...]:
    if cand.anchor.op == "MatMulNBits":  # packed blocks: the logical [N, K] they hold
        return tuple(int(d) for d in cand.match.weight.shape)
    return tuple(int(d) for d in cand.match.weight.constant.shape)


def _change(layer: Layer) -> Change:
    extra = [f"block={layer.block}"] if layer.block and layer.block != layer.name else []
    extra += [f"tied_with={layer.tied_with}"] if layer.tied_with else []
    return Change(
        layer=layer.name,
        action="annotate",
        node=layer.nodes[0],
        source=layer.rule,
        detail=", ".join([layer.layer_type.value, *extra]),
    )


# -- 4. warnings and stats ---------------------------------------------------------------------------


def _subgraph_nodes(node: gs.Node) -> Iterable[gs.Node]:
    for sub in node.subgraphs():
        for inner in sub.nodes:
            yield inner
            yield from _subgraph_nodes(inner)


def _control_flow_warnings(view: GraphView, layers: dict[str, Layer]) -> list[str]:
    weights = {layer.weight: layer.name for layer in layers.values() if layer.weight}
    warnings = []
    for node in view.nodes:
        inner = list(_subgraph_nodes(node))
        if not inner:
            continue
        heavy = [n for n in inner if n.op in (*_WEIGHT_INPUT, "Gather", "MatMulNBits")]
        counts = collections.Counter(n.op for n in heavy)
        ops = ", ".join(f"{count} {op}" for op, count in sorted(counts.items())) or "no weight-bearing ops"
        if heavy:
            more = f" and {len(heavy) - _NAMED} more" if len(heavy) > _NAMED else ""
            ops += f": {', '.join(repr(n.name) for n in heavy[:_NAMED])}{more}"
        warnings.append(
            f"{label(node)} holds {len(inner)} nodes in subgraphs ({ops}); "
            "layers inside control flow are not "
            "annotated and keep their original precision"
        )
        read = {t.name for n in inner for t in n.inputs if isinstance(t, gs.Constant)}
        for name in sorted(read & weights.keys()):
            warnings.append(
                f"initializer {name!r}, the weight of layer {weights[name]!r}, "
                f"is also read inside {label(node)}; "
                "later passes must not replace or repack it in place"
            )
    return warnings


def _graph_input_weights(view: GraphView) -> list[str]:
    warnings = []
    for node in view.nodes:
        index = _WEIGHT_INPUT.get(node.op)
        if index is not None and len(node.inputs) > index and view.is_graph_input(node.inputs[index]):
            warnings.append(
                f"{label(node)} reads its weight {node.inputs[index].name!r} from a graph input, "
                "so it is not "
                "compiled as a layer; store the weight as an initializer to compile it"
            )
    return warnings


def _empty_weight_warnings(empty: list[tuple[gs.Node, gs.Constant]]) -> list[str]:
    return [
        f"{label(node)} has an empty weight {weight.name!r} (shape {list(weight.shape)}): there is nothing "
        "to convert, so it is not compiled as a layer and stays as it is"
        for node, weight in empty
    ]


def _stats(
    view: GraphView,
    layers: dict[str, Layer],
    annotations: dict[str, dict[str, str]],
    conflicts: collections.Counter[str],
) -> dict[str, int]:
    stats: dict[str, int] = {"layers": len(layers)}
    for layer_type, count in sorted(
        collections.Counter(layer.layer_type.value for layer in layers.values()).items()
    ):
        stats[f"layers.{layer_type}"] = count
    unassigned = collections.Counter(n.op for n in view.nodes if n.name not in annotations)
    stats["unassigned"] = sum(unassigned.values())
    for op, count in sorted(unassigned.items()):
        stats[f"unassigned.{op}"] = count
    stats["tied"] = sum(1 for layer in layers.values() if layer.tied_with) // 2
    stats["conflicts"] = sum(conflicts.values())
    for rule, count in sorted(conflicts.items()):
        stats[f"conflicts.{rule}"] = count
    return stats


# -- explain -----------------------------------------------------------------------------------------


def _neighbourhood(view: GraphView, node: gs.Node, radius: int) -> list[gs.Node]:
    seen = {id(node): node}
    frontier = [node]
    for _ in range(radius):
        step = []
        for current in frontier:
            near = [p for t in current.inputs if (p := view.producer(t)) is not None]
            near += [c for t in current.outputs for c in view.consumers(t)]
            for other in near:
                if id(other) not in seen:
                    seen[id(other)] = other
                    step.append(other)
        frontier = step
    return sorted(seen.values(), key=view.position)


def explain(graph: gs.Graph, node_name: str) -> dict[str, MatchResult]:
    """For each rule, its closest attempt involving `node_name`: the match at that node when the
    node is one of the rule's anchors, else the best-scoring attempt from an anchor within a few
    ops whose (partial) match reached the node. A successful result means the rule does cover it."""
    view = GraphView(graph)
    node = view.node(node_name)
    if node is None:
        close = difflib.get_close_matches(node_name, [n.name for n in view.nodes], n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise UnsupportedModelError(f"the graph has no node named {node_name!r}{hint}")
    nearby = _neighbourhood(view, node, _EXPLAIN_RADIUS)
    results: dict[str, MatchResult] = {}
    for rule in RULES:
        if node.op in rule.anchor_ops:
            results[rule.name] = rule.match(node, view)
            continue
        best: MatchResult | None = None
        for other in nearby:
            if other.op not in rule.anchor_ops:
                continue
            attempt = rule.match(other, view)
            if any(n is node for n in attempt.matched) and (best is None or attempt.score > best.score):
                best = attempt
        results[rule.name] = best or MatchResult.fail(
            f"{node.op} is not one of this rule's anchors ({', '.join(sorted(rule.anchor_ops))}) "
            "and no attempt "
            f"from a nearby anchor reached {node.name!r}",
            node,
        )
    return results
