"""normalize: make the input graph one the later passes can rely on, and keep a copy of it.

Cases, in the order the pass handles them:
1. Names. Every node gets a non-empty name unique across the model, subgraphs included
   (annotations are keyed by node name). An unnamed node becomes `/<op_type>_<n>` (the first
   free n per op type); a repeated name keeps its first node, and later ones become `<name>_<k>`.
   One `rename` change per renamed node.
2. Order. Nodes are sorted topologically, subgraphs included, keeping the model's own order
   wherever it already is one (so layers stay in model order); a cycle is an
   UnsupportedModelError naming nodes on it. One `reorder` change says how many nodes moved.
3. Ops. Every default-domain op must be defined at the model's opset by ONNX or by onnxruntime;
   otherwise an UnsupportedModelError lists each such node. Ops onnxruntime defines in the default
   domain but ONNX does not (SimplifiedLayerNormalization), com.microsoft ops (known to this
   onnxruntime or not) and ops of other custom domains pass through with one warning per op type
   saying which it is: onnx.checker checks none of them. Model-local functions are not warned about.
4. Checker. onnx.checker.check_model (full_check off); its failure is an UnsupportedModelError. The
   checker requires a shape on every main-graph input and output: an output declared without one
   (some exporters leave them out) gets the shape inference gives it, and an input, or an output
   inference cannot shape, is refused by name with the fix.
5. Opset. Below MIN_OPSET (default domain, when a node uses it) the model is upgraded to MIN_OPSET by
   onnx.version_converter (an `upgrade_opset` change); if the converter fails, the model is refused
   with the converter's reason and the fix (re-export at opset >= MIN_OPSET). An ir_version below 4
   becomes 4 first (an `upgrade_ir_version` change): before 4 every initializer had to be listed as
   a graph input too, and onnx-graphsurgeon keeps initializers as constants only.
6. Shapes. onnx.shape_inference (strict mode off, data propagation on): symbolic dims stay named,
   unknown ones get onnx's `unk__<n>` names, and inferred types and shapes are copied onto the
   graph's tensors that had none (`value_info_inferred` in the stats). onnxruntime's own ops (the
   default-domain ones ONNX lacks and the com.microsoft ones) are typed by `_contrib_types`: types
   from onnxruntime's signature of the op, shapes from its table, so inference carries on after
   them. A tensor that stays untyped (after an op of another custom domain, whose outputs nobody
   can type) is counted (`untyped_tensors`) and one warning names the nodes such tensors start
   at and the fix (declare their types in value_info). They stay untyped: the rewrite refuses to
   convert a layer that needs one of those types (rewrite/_precision.py) rather than guess it.
7. The normalized model, weights included (external ones still referenced relative to
   ctx.model_dir), goes to ctx.original; validate compares numerics against it.

How a pass on a gs.Graph does proto-level work (3–6): onnx's checker, converter and shape inference
run on `weightless_model(graph)`, the graph's structure with its big or external initializers as
typed graph inputs, so they copy and read no weight bytes and models past 2 GB stay under
protobuf's limit. In that structure only, nodes change domain: onnxruntime-only default-domain
nodes are parked in a private domain while the checker and the converter look (they skip them
instead of failing), and onnxruntime's ops sit in `_contrib_types`' typing domains while shape
inference runs; every node gets its own domain back afterwards. Results come back into the *same*
Graph object: inferred shapes through `apply_value_info`; a converted structure through
`adopt_structure`, which swaps in its nodes and re-attaches the original initializers (the
converter rewrites nodes, never weights).

MIN_OPSET is 17: the opset torch.onnx exports by default and every committed fixture uses (so the
common case converts nothing), the first with the fused LayerNormalization, and the last where
ReduceMean takes `axes` as an attribute. Going to the newest opset would rewrite graphs that run
as they are for no gain; later passes that need a newer op raise the opset themselves.
"""

from __future__ import annotations

import collections
import functools
import heapq
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import ClassVar

import numpy as np
import onnx
import onnx.defs
import onnx.shape_inference
import onnx.version_converter
import onnx_graphsurgeon as gs

from bitnet_onnx.core.errors import UnsupportedModelError
from bitnet_onnx.core.graphs import all_graph_protos
from bitnet_onnx.core.log import Change
from bitnet_onnx.passes._contrib_types import TYPING_DOMAINS, typing_schemas
from bitnet_onnx.passes._graph import adopt_structure, apply_value_info, export_model, weightless_model
from bitnet_onnx.passes.base import Condition, PassContext, PassResult, context_set
from bitnet_onnx.runtime.model_file import session_for
from bitnet_onnx.runtime.sample_inputs import sample_inputs

__all__ = ["MIN_OPSET", "NormalizePass"]

MIN_OPSET = 17
_INITIALIZERS_NEED_NO_INPUT = 4  # the first ir_version whose initializers need not be graph inputs

_DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})
_KNOWN_DOMAINS = frozenset({*_DEFAULT_DOMAINS, "ai.onnx.ml", "com.microsoft", "bitnet"})
_MS = "com.microsoft"
# Where onnxruntime-only default-domain ops sit while onnx's tools look at the structure.
_PARKING_DOMAIN = "bitnet.normalize.onnxruntime"
_PRIVATE_DOMAINS = frozenset({_PARKING_DOMAIN, *TYPING_DOMAINS.values()})


class NormalizePass:
    name: ClassVar[str] = "normalize"
    requires: ClassVar[tuple[str, ...]] = ()
    ensures: ClassVar[tuple[Condition, ...]] = (context_set("original"),)

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        changes = _unique_names(graph)
        moved = _toposort(graph)
        if moved:
            changes.append(
                Change(layer=None, action="reorder", detail=f"{moved} nodes moved into topological order")
            )
        if graph.ir_version < _INITIALIZERS_NEED_NO_INPUT:
            changes.append(
                Change(
                    layer=None,
                    action="upgrade_ir_version",
                    detail=f"ir_version {graph.ir_version} → {_INITIALIZERS_NEED_NO_INPUT}",
                )
            )
            graph.ir_version = _INITIALIZERS_NEED_NO_INPUT
        parked, warnings, unchecked = _check_ops(graph)
        structure, stripped = weightless_model(graph)
        # The typing schemas are in onnx's registry only for this block (_contrib_types case 5).
        with typing_schemas() as typed:
            domains, typing = _domains(structure), _typing_domains(structure, typed)
            _relocate(structure, dict.fromkeys(parked, _PARKING_DOMAIN))
            warnings += _check(structure, graph.name, lambda names: _run_shapes(graph, ctx, names))
            opset_before = graph.opset
            declared = len(structure.graph.value_info)
            upgrade = opset_before < MIN_OPSET and any(
                (n.domain or "") in _DEFAULT_DOMAINS for n in _all_nodes(graph)
            )
            if upgrade:
                structure = _upgrade(structure, graph.name, opset_before)
                changes.append(
                    Change(layer=None, action="upgrade_opset", detail=f"opset {opset_before} → {MIN_OPSET}")
                )
            _relocate(structure, {name: domains[name] for name in parked} | typing)
            inferred, warning = _infer(structure)
        warnings += [warning] if warning else []
        gained = len(inferred.graph.value_info) - declared
        _relocate(inferred, domains)
        if upgrade:
            adopt_structure(graph, inferred, stripped)
        else:
            apply_value_info(graph, inferred)
        untyped, warning = _untyped(graph)
        warnings += [warning] if warning else []
        ctx.original = export_model(graph)
        stats = {
            "nodes": sum(1 for _ in _all_nodes(graph)),
            "renamed": sum(1 for c in changes if c.action == "rename"),
            "reordered": moved,
            "opset_before": opset_before,
            "opset_after": graph.opset,
            "value_info_inferred": gained,
            "unchecked_ops": unchecked,
            "untyped_tensors": untyped,
        }
        return PassResult(
            modified=bool(changes or gained), changes=tuple(changes), warnings=tuple(warnings), stats=stats
        )


# -- 1. names ----------------------------------------------------------------------------------------


def _all_nodes(graph: gs.Graph) -> Iterator[gs.Node]:
    for node in graph.nodes:
        yield node
        for sub in node.subgraphs():
            yield from _all_nodes(sub)


def _unique_names(graph: gs.Graph) -> list[Change]:
    nodes = list(_all_nodes(graph))
    taken = {n.name for n in nodes if n.name}
    kept: set[str] = set()
    per_op: collections.Counter[str] = collections.Counter()
    changes = []
    for node in nodes:
        old = node.name
        if old and old not in kept:
            kept.add(old)
            continue
        if old:
            k = 1
            while f"{old}_{k}" in taken:
                k += 1
            new = f"{old}_{k}"
        else:
            while f"/{node.op}_{per_op[node.op]}" in taken:
                per_op[node.op] += 1
            new = f"/{node.op}_{per_op[node.op]}"
        node.name = new
        taken.add(new)
        kept.add(new)
        changes.append(
            Change(
                layer=None,
                action="rename",
                node=new,
                detail=f"was {old!r} (a duplicate)" if old else "was unnamed",
            )
        )
    return changes


# -- 2. order ----------------------------------------------------------------------------------------


def _reads(node: gs.Node) -> Iterator[gs.Tensor]:
    """Tensors `node` reads, including outer-scope tensors its subgraphs read."""
    yield from node.inputs
    for sub in node.subgraphs():
        for inner in _all_nodes(sub):
            yield from inner.inputs


def _toposort(graph: gs.Graph) -> int:
    """Sorts each graph's nodes topologically, keeping the model's order wherever it already is one
    (Kahn's algorithm, ready nodes taken in their original order). Returns how many nodes moved."""
    moved = 0
    nodes = list(graph.nodes)
    position = {id(n): i for i, n in enumerate(nodes)}
    producer = {id(t): n for n in nodes for t in n.outputs}
    waits_on: dict[int, set[int]] = {}
    readers: dict[int, list[gs.Node]] = collections.defaultdict(list)
    for node in nodes:
        # An empty name marks an omitted optional input or output: no dependency.
        deps = {
            id(producer[id(t)])
            for t in _reads(node)
            if t.name and id(t) in producer and producer[id(t)] is not node
        }
        waits_on[id(node)] = deps
        for dep in deps:
            readers[dep].append(node)
    ready = [(position[id(n)], n) for n in nodes if not waits_on[id(n)]]
    heapq.heapify(ready)
    order: list[gs.Node] = []
    while ready:
        _, node = heapq.heappop(ready)
        order.append(node)
        for reader in readers[id(node)]:
            waits_on[id(reader)].discard(id(node))
            if not waits_on[id(reader)]:
                heapq.heappush(ready, (position[id(reader)], reader))
    if len(order) < len(nodes):
        stuck = sorted((n for n in nodes if waits_on[id(n)]), key=lambda n: position[id(n)])
        names = ", ".join(repr(n.name) for n in stuck[:5])
        raise UnsupportedModelError(
            f"graph {graph.name!r} has a cycle: {len(stuck)} nodes wait on each other ({names}"
            f"{', ...' if len(stuck) > 5 else ''}); a node must not depend on its own output"
        )
    moved += sum(1 for a, b in zip(nodes, order, strict=True) if a is not b)
    graph.nodes = order
    for node in order:
        for sub in node.subgraphs():
            moved += _toposort(sub)
    return moved


# -- 3./4. ops and checker ---------------------------------------------------------------------------


@functools.cache
def _onnxruntime_schemas() -> dict[tuple[str, str], int]:
    """(domain, op) → the first opset version onnxruntime defines it at."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_c

    first: dict[tuple[str, str], int] = {}
    for schema in ort_c.get_all_operator_schema():
        key = (schema.domain, schema.name)
        first[key] = min(first.get(key, schema.since_version), schema.since_version)
    return first


def _onnx_defines(op: str, opset: int) -> bool:
    try:
        onnx.defs.get_schema(op, max_inclusive_version=opset, domain="")
    except onnx.defs.SchemaError:
        return False
    return True


def _check_ops(graph: gs.Graph) -> tuple[frozenset[str], list[str], int]:
    """Names of the onnxruntime-only default-domain nodes, one warning per unchecked op type, and
    how many nodes go unchecked."""
    ort = _onnxruntime_schemas()
    functions = {(f.domain, f.name) for f in graph.functions}
    parked: set[str] = set()
    unchecked: collections.Counter[tuple[str, str]] = collections.Counter()
    undefined = []
    for node in _all_nodes(graph):
        domain = node.domain or ""
        if domain in _DEFAULT_DOMAINS:
            if _onnx_defines(node.op, graph.opset):
                continue
            if ort.get(("", node.op), graph.opset + 1) <= graph.opset:
                parked.add(node.name)
                unchecked[("", node.op)] += 1
            else:
                undefined.append(f"node {node.name!r}: op {node.op!r}")
        elif (domain, node.op) not in functions:
            unchecked[(domain, node.op)] += 1
    if undefined:
        raise UnsupportedModelError(
            f"graph {graph.name!r} uses ops that neither ONNX nor onnxruntime define "
            f"at opset {graph.opset}:\n"
            + "\n".join(f"  - {u}" for u in undefined)
            + "\nFix the op names or re-export the model at an opset that has them."
        )
    warnings = []
    for (domain, op), count in sorted(unchecked.items()):
        if domain == "":
            why = "defined by onnxruntime in the default domain but unknown to onnx.checker; not checked"
        elif domain == _MS and (domain, op) in ort:
            why = "an onnxruntime contrib op (com.microsoft) that onnx.checker does not check"
        elif domain == _MS:
            why = "not a com.microsoft op this onnxruntime defines; passed through unchecked"
        elif domain in _KNOWN_DOMAINS:
            why = "passed through unchecked"
        else:
            why = (
                f"from custom domain {domain!r}, which bitnet-onnx does not know; passed through unchecked "
                "(validation runs it with the library that implements it: custom_op_libraries=[...], "
                "CLI --custom-ops LIB)"
            )
        warnings.append(f"{count} {op} node{'s' if count > 1 else ''}: {why}")
    return frozenset(parked), warnings, sum(unchecked.values())


def _domains(model: onnx.ModelProto) -> dict[str, str]:
    """Node name → domain, subgraphs included (names are unique after step 1)."""
    return {node.name: node.domain for g in all_graph_protos(model.graph) for node in g.node}


def _typing_domains(model: onnx.ModelProto, typed: frozenset[tuple[str, str]]) -> dict[str, str]:
    """Node name → the typing domain of its op, for the nodes of the ops `typed` (by `_contrib_types`)."""
    moves = {}
    for graph in all_graph_protos(model.graph):
        for node in graph.node:
            domain = "" if node.domain in _DEFAULT_DOMAINS else node.domain
            if (domain, node.op_type) in typed:
                moves[node.name] = TYPING_DOMAINS[domain]
    return moves


def _relocate(model: onnx.ModelProto, domains: Mapping[str, str]) -> None:
    """Puts the nodes `domains` names in those domains, subgraphs included; the model then imports
    exactly the private domains its nodes use."""
    used = set()
    for graph in all_graph_protos(model.graph):
        for node in graph.node:
            node.domain = domains.get(node.name, node.domain)
            used.add(node.domain)
    kept = [o for o in model.opset_import if o.domain not in _PRIVATE_DOMAINS]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    model.opset_import.extend(onnx.helper.make_opsetid(d, 1) for d in sorted(used & _PRIVATE_DOMAINS))


_RunShapes = Callable[[list[str]], "tuple[dict[str, tuple[int, ...]], str]"]


def _check(model: onnx.ModelProto, name: str, run_shapes: _RunShapes) -> list[str]:
    warnings = _declare_io_shapes(model, name, run_shapes)
    try:
        onnx.checker.check_model(model, full_check=False)
    except onnx.checker.ValidationError as exc:
        raise UnsupportedModelError(
            f"graph {name!r} is not a valid ONNX model: {str(exc).strip()}\nFix what onnx.checker names "
            "(in the model or its exporter) and re-export the model"
        ) from None
    return warnings


def _unshaped(values: Iterable[onnx.ValueInfoProto]) -> list[onnx.ValueInfoProto]:
    return [v for v in values if v.type.HasField("tensor_type") and not v.type.tensor_type.HasField("shape")]


def _declare_io_shapes(model: onnx.ModelProto, name: str, run_shapes: _RunShapes) -> list[str]:
    """Main-graph outputs without a shape get the inferred one, else the rank of a run on the sample
    inputs (dims left unknown: one run's sizes need not hold for other inputs); what stays
    shapeless is refused."""
    outputs = _unshaped(model.graph.output)
    warnings = []
    why_not = ""
    if outputs:
        inferred = {v.name: v for v in _infer(model)[0].graph.output}
        for value in outputs:
            found = inferred.get(value.name)
            if found is not None and found.type.tensor_type.HasField("shape"):
                value.type.tensor_type.shape.CopyFrom(found.type.tensor_type.shape)
        still = _unshaped(model.graph.output)
        if still:
            shapes, why_not = run_shapes([v.name for v in still])
            for value in still:
                if value.name in shapes:
                    shape = value.type.tensor_type.shape
                    shape.dim.extend(onnx.TensorShapeProto.Dimension() for _ in shapes[value.name])
                    warnings.append(
                        f"output {value.name!r} declares no shape and shape inference finds none; a run on "
                        f"the sample inputs gives {list(shapes[value.name])}, so it is declared with rank "
                        f"{len(shapes[value.name])} (dims unknown); declare its shape in the model to "
                        "silence this"
                    )
    missing = [f"input {v.name!r}" for v in _unshaped(model.graph.input)]
    missing += [f"output {v.name!r}" for v in _unshaped(model.graph.output)]
    if missing:
        one = len(missing) == 1
        raise UnsupportedModelError(
            f"graph {name!r}: {', '.join(missing)} {'has' if one else 'have'} no shape, not even a rank, "
            f"which ONNX requires of the main graph's inputs and outputs{why_not}; declare "
            f"{'it' if one else 'them'} (symbolic dims are fine, e.g. onnx.helper.make_tensor_value_info("
            "'x', onnx.TensorProto.FLOAT, ['batch', 64])) or re-export the model with shapes"
        )
    return warnings


def _run_shapes(
    graph: gs.Graph, ctx: PassContext, names: list[str]
) -> tuple[dict[str, tuple[int, ...]], str]:
    """The shapes of the outputs `names` in one onnxruntime run of the model as it is, on the given
    inputs (`ctx.calibration`, else generated ones), declared on the graph's outputs too; or no
    shapes and why not (appended to the refusal)."""

    try:
        model = export_model(graph)
        feeds = dict(ctx.calibration[0][0]) if ctx.calibration is not None else sample_inputs(model)
        session = session_for(model, ctx.model_dir, custom_op_libraries=ctx.custom_op_libraries)
        values = session.run(names, feeds)
    except Exception as exc:  # any failure only means the run cannot tell the shapes
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return {}, f" (and onnxruntime cannot run the model on the sample inputs to find them: {first})"
    shapes = {name: tuple(int(d) for d in np.shape(v)) for name, v in zip(names, values, strict=True)}
    for tensor in graph.outputs:
        if tensor.name in shapes:
            tensor.shape = [None] * len(shapes[tensor.name])
    return shapes, ""


# -- 5./6. opset and shapes --------------------------------------------------------------------------


def _upgrade(model: onnx.ModelProto, name: str, opset: int) -> onnx.ModelProto:
    try:
        return onnx.version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:  # the converter raises RuntimeError/ValidationError/InferenceError
        reason = str(exc).strip().splitlines()[-1]
        raise UnsupportedModelError(
            f"graph {name!r} uses opset {opset}, below the {MIN_OPSET} bitnet-onnx needs, and onnx's version "
            f"converter cannot upgrade it: {reason}. Re-export the model at opset {MIN_OPSET} or newer."
        ) from None


def _infer(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True), None
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return model, f"shape inference failed ({first}); continuing with the shapes the model declares"


def _untyped(graph: gs.Graph) -> tuple[int, str | None]:
    """How many main-graph tensors have no type after inference, and a warning naming the nodes
    where they start (nodes with an untyped output and only typed inputs)."""

    def untyped(tensor: gs.Tensor) -> bool:
        return isinstance(tensor, gs.Variable) and bool(tensor.name) and tensor.dtype is None

    count = sum(1 for t in graph.tensors().values() if untyped(t))
    if not count:
        return 0, None
    starts = [
        f"{n.name!r} ({n.domain + ' ' if n.domain else ''}{n.op})"
        for n in graph.nodes
        if any(untyped(t) for t in n.outputs) and not any(untyped(t) for t in n.inputs)
    ]
    several = len(starts) > 1
    shown = ", ".join(starts[:5]) + (" and more" if len(starts) > 5 else "")
    where = (
        f" from node{'s' if several else ''} {shown} on: onnx shape inference cannot type "
        f"{'their' if several else 'its'} outputs"
        if starts
        else ""
    )
    return count, (
        f"{count} tensor{'s stay' if count > 1 else ' stays'} untyped{where}. The rewrite refuses to convert "
        "a layer that needs one of these types; declare the types of those outputs in the model's "
        "value_info (onnx.helper.make_tensor_value_info) to compile it"
    )
