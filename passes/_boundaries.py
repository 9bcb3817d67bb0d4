"""The precision conversions the rewrite left on the graph's edges between layers.

A boundary conversion is a conversion node (`CONVERSION_OPS`) that the input model did not have
(the rewrite inserted it and fold_converts kept it) and that converts a computed value: a Cast of a
constant is folded by onnxruntime at session creation and costs nothing per run. Each one lies on an
edge of the graph: walking up from its input through nodes of no layer and through other inserted
conversions reaches the layers (or graph inputs) it reads from, walking down from its output the
same way reaches the layers (or graph outputs) that read it. Walks go only through float values
(the shape computations a Shape node feeds are not data) and only through ops that move values
without computing (Reshape, Transpose, ...); a computing node of no layer (a residual Add) is an
end of the edge itself, named after the node, so a residual stream does not join every layer.

`boundary_conversions` groups them per edge (from → to); each group lists its nodes and the shapes
of the values they convert (one pass over each value per run; symbolic dims by name). An edge is a
round trip when a value leaves its layer in one type and a later conversion on the same edge turns
it back into that type (a float32 output rounded to float16 for the plan, then cast back to float32
for readers that compute in float32): the layer's readers never see the precision it was rounded to.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from onnx import helper

__all__ = ["INPUT", "OUTPUT", "BoundaryEdge", "boundary_conversions"]

INPUT = "<graph input>"
OUTPUT = "<graph output>"

_LAYER_KEY = "bitnet.layer"
_LAYER_TYPE_KEY = "bitnet.layer_type"
_MOVING = frozenset(
    ["Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Slice", "Expand", "Split"]
)


@dataclass(frozen=True)
class BoundaryEdge:
    """Conversion nodes on the edges from `source` to each of `targets`: layer names, INPUT/OUTPUT,
    or the name of a computing node of no layer."""

    source: str
    targets: tuple[str, ...]
    ops: tuple[str, ...]  # one `Cast→float16` per node, in graph order
    shapes: tuple[str, ...]  # the converted value's shape per node, e.g. `[batch, seq, 64]`
    round_trip: bool  # the value is converted back to the type it left `source` in
    inserted_by: str  # the layer whose rewrite inserted the first node (its annotation)
    inserted_by_type: str  # that layer's type
    start: str  # numpy name of the type the value had before the first node

    @property
    def count(self) -> int:
        return len(self.ops)


def _is_float(tensor: gs.Tensor) -> bool:
    dtype = tensor.dtype
    try:
        return dtype is not None and np.dtype(dtype).kind == "f"
    except TypeError:  # an ONNX element type numpy lacks (bfloat16 in some gs versions)
        return isinstance(dtype, int)


def _shape(tensor: gs.Tensor) -> str:
    shape = tensor.shape
    return "[?]" if shape is None else f"[{', '.join(str(d) for d in shape)}]"


def _constant(tensor: gs.Tensor, memo: dict[int, bool]) -> bool:
    """Whether `tensor` is computed from constants alone (onnxruntime folds it once)."""
    if isinstance(tensor, gs.Constant):
        return True
    if id(tensor) not in memo:
        memo[id(tensor)] = False  # guards recursion only
        memo[id(tensor)] = bool(tensor.inputs) and all(
            _constant(t, memo) for p in tensor.inputs for t in p.inputs
        )
    return memo[id(tensor)]


def _cast_target(node: gs.Node) -> int | None:
    to = node.attrs.get("to")
    return to if node.op == "Cast" and isinstance(to, int) else None


def _type_name(tensor: gs.Tensor) -> str:
    try:
        return np.dtype(tensor.dtype).name
    except TypeError:
        return str(tensor.dtype)


def _round_trip(nodes: list[gs.Node]) -> bool:
    try:
        start = helper.np_dtype_to_tensor_dtype(np.dtype(nodes[0].inputs[0].dtype))
    except TypeError:
        return False
    return any(_cast_target(n) == start for n in nodes[1:])


def _describe(node: gs.Node) -> str:
    to = node.attrs.get("to")
    if node.op == "Cast" and isinstance(to, int):
        return f"Cast→{helper.tensor_dtype_to_string(to).removeprefix('TensorProto.').lower()}"
    return node.op


class _Walker:
    def __init__(self, graph: gs.Graph, annotations: Mapping[str, Mapping[str, str]], inserted: set[int]):
        self.annotations = annotations
        self.inserted = inserted
        self.inputs = {id(t) for t in graph.inputs}
        self.outputs = {id(t) for t in graph.outputs}

    def _end(self, node: gs.Node) -> str | None:
        """The name an edge ends at on `node`, None for a node the walk goes through."""
        if id(node) in self.inserted or node.op in _MOVING:
            return None  # a conversion between layers belongs to neither side
        return self.annotations.get(node.name, {}).get(_LAYER_KEY, node.name)

    def up(self, tensor: gs.Tensor, seen: set[int]) -> Iterator[str]:
        if id(tensor) in seen or isinstance(tensor, gs.Constant) or not _is_float(tensor):
            return
        seen.add(id(tensor))
        if id(tensor) in self.inputs:
            yield INPUT
        for producer in tensor.inputs:
            end = self._end(producer)
            if end is not None:
                yield end
            else:
                for source in producer.inputs:
                    yield from self.up(source, seen)

    def down(self, tensor: gs.Tensor, seen: set[int]) -> Iterator[str]:
        if id(tensor) in seen or not _is_float(tensor):
            return
        seen.add(id(tensor))
        if id(tensor) in self.outputs:
            yield OUTPUT
        for consumer in tensor.outputs:
            end = self._end(consumer)
            if consumer.op == "Shape":
                continue  # reads the shape, not the values
            if end is not None:
                yield end
            else:
                for out in consumer.outputs:
                    yield from self.down(out, seen)


def boundary_conversions(
    graph: gs.Graph,
    annotations: Mapping[str, Mapping[str, str]],
    original_nodes: set[str],
    conversion_ops: set[tuple[str, str]],
) -> tuple[BoundaryEdge, ...]:
    """The conversions inserted between layers, grouped per edge (edges from one source through the
    same nodes are one group with several targets), in graph order of their first node.

    `original_nodes`: the node names of the model before the rewrite (a conversion among them is
    the model's own); `conversion_ops`: (domain, op) pairs that convert."""
    inserted = {
        id(node)
        for node in graph.nodes
        if node.name not in original_nodes
        and ((node.domain or ""), node.op) in conversion_ops
        and node.inputs
        and not _constant(node.inputs[0], {})
    }
    walker = _Walker(graph, annotations, inserted)
    edges: dict[tuple[str, str], list[gs.Node]] = defaultdict(list)
    for node in graph.nodes:
        if id(node) not in inserted:
            continue
        for source in sorted(set(walker.up(node.inputs[0], set()))):
            for target in sorted(set(walker.down(node.outputs[0], set()))):
                if source != target:
                    edges[source, target].append(node)
    groups: dict[tuple[str, tuple[int, ...]], list[str]] = defaultdict(list)
    chains: dict[tuple[int, ...], list[gs.Node]] = {}
    for (source, target), nodes in edges.items():
        key = tuple(id(n) for n in nodes)
        chains[key] = nodes
        groups[source, key].append(target)
    return tuple(
        BoundaryEdge(
            source,
            tuple(targets),
            tuple(_describe(n) for n in chains[key]),
            tuple(_shape(n.outputs[0]) for n in chains[key]),
            _round_trip(chains[key]),
            annotations.get(chains[key][0].name, {}).get(_LAYER_KEY, ""),
            annotations.get(chains[key][0].name, {}).get(_LAYER_TYPE_KEY, ""),
            _type_name(chains[key][0].inputs[0]),
        )
        for (source, key), targets in groups.items()
    )
