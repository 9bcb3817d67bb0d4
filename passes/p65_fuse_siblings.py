"""fuse_siblings: layers that read the same input at the same precision become one op call.

A decoder's q/k/v projections read one normalized activation, and so do gate/up; computed as
separate `bitnet.BitLinear` (or `bitnet.LowBitMatMul`) calls, each call quantizes the same
activation again and runs its own parallel section, whose fixed cost (onnxruntime's thread pool:
a few µs) is about a decoder-sized layer's whole time at one token. This pass makes such siblings
one call over their weights stacked along N, and a `Split` on the last axis gives each original
consumer its own output back (the same tensor, so graph outputs keep their names).

Siblings: nodes of the same op that read the same input tensor, have equal attributes (K, format;
bits, group_size, act_quant), the same optional inputs present (bias; zero points), constant
weights, scales, zero points and bias read by no other node, and the same output type. Each node is
one layer's (its annotation names it). The fused call reads the members' own initializers through
`Concat` (axis 0) and, for a per-tensor ternary scale `[1]`, an `Expand` to the member's rows; the
Split's sizes are a `Concat` of `Shape(W_i, start=0, end=1)`. onnxruntime folds all of these into
constants when it creates the session (at its default optimization level; with graph optimizations
disabled they run, and the kernel repacks W, every call), so a run computes nothing more, and the
file stores exactly the bytes it stored before (what the cost model predicts; a stacked copy would
store the scales of per-tensor ternary weights once per row, and the split sizes). The fused call
computes exactly what the members did: every row of a packed weight is independent of the others,
and row n's scale is the same float32 whether it is `scale[0]` of the member or `scale[n]` of the
stack (kernels/README.md), so the outputs are bit for bit the unfused ones.

Annotations: the original nodes' annotations are dropped; the fused node and its Split carry
`bitnet.fused` (core/metadata.py: each member layer's annotations, in row order, with its rows of
the stacked weight), from which `inspection.read_layers` gives every member layer back, and
`bitnet.layer` = the members' names joined by "+" (what Netron and profiling show).

One `Change(action="fuse")` per fused group, naming the members; stats: groups, layers fused, op
calls before and after.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from bitnet_onnx.core.log import Change
from bitnet_onnx.core.metadata import LAYER_KEY, FusedMember, fused_value
from bitnet_onnx.runtime import BITLINEAR, DOMAIN, LOWBIT_MATMUL

from .base import Condition, PassContext, PassResult
from .rewrite._edit import Names

__all__ = ["FuseSiblingsPass"]

_FUSABLE = (BITLINEAR, LOWBIT_MATMUL)
_SCALE_INPUT = 2  # BitLinear's `scale` ([1] or [N]), LowBitMatMul's `scales` ([N, groups])


@dataclass(frozen=True)
class _Member:
    node: gs.Node
    layer: str
    rows: int


def _present(tensor: gs.Tensor) -> bool:
    """An optional input that is given: not the empty name, and not LowBitMatMul's empty [0] zero
    points (kernels/README.md)."""
    if tensor.name == "":
        return False
    return not (isinstance(tensor, gs.Constant) and math.prod(tensor.shape) == 0)


def _key(node: gs.Node) -> tuple[object, ...] | None:
    """What siblings share, or None when `node` cannot be fused."""
    if node.domain != DOMAIN or node.op not in _FUSABLE or len(node.outputs) != 1 or not node.inputs:
        return None
    constants = node.inputs[1:]
    if not all(isinstance(t, gs.Constant) and len(t.outputs) == 1 for t in constants if _present(t)):
        return None  # a weight computed at run time, or shared with another node (a tied table)
    if len(node.inputs[1].shape) != 2:
        return None
    attrs = tuple(sorted((k, str(v)) for k, v in node.attrs.items()))
    given = tuple(_present(t) for t in constants)
    out = node.outputs[0]
    return (node.op, id(node.inputs[0]), attrs, given, str(out.dtype))


def _groups(graph: gs.Graph, ctx: PassContext) -> Iterator[list[_Member]]:
    by_key: dict[tuple[object, ...], list[_Member]] = {}
    for node in graph.nodes:
        key = _key(node)
        layer = ctx.annotations.get(node.name, {}).get(LAYER_KEY)
        if key is None or layer is None:
            continue
        by_key.setdefault(key, []).append(_Member(node, layer, int(node.inputs[1].shape[0])))
    yield from (members for members in by_key.values() if len(members) > 1)


class _Stacker:
    """Builds the fused call's inputs from the members' own initializers, as ops onnxruntime folds
    into constants when it creates the session: the file stores exactly the bytes it stored
    before (the compiler's cost model predicts them), and a run computes nothing more."""

    def __init__(self, graph: gs.Graph, members: list[_Member], names: Names) -> None:
        self.graph, self.members, self.names = graph, members, names
        self.stem = "+".join(m.layer for m in members)
        # [n_i] from each member's packed weight: an Expand's shape and the Split's sizes
        self.rows = [
            self.apply("Shape", [m.node.inputs[1]], np.int64, [1], {"start": 0, "end": 1}) for m in members
        ]

    def apply(self, op: str, inputs: list[gs.Tensor], dtype, shape, attrs=None) -> gs.Variable:
        out = gs.Variable(self.names.tensor(f"{self.stem}/{op}_output"), dtype=np.dtype(dtype), shape=shape)
        node = gs.Node(op, self.names.node(f"{self.stem}/{op}"), dict(attrs or {}), list(inputs), [out])
        self.graph.nodes.append(node)
        return out

    def stacked(self, index: int) -> gs.Tensor:
        """Input `index` of every member, concatenated along N (axis 0)."""
        first = self.members[0].node.inputs[index]
        if not _present(first):
            return first  # absent in every member (the key says so)
        parts = [self._rows_of(i, index) for i in range(len(self.members))]
        total = sum(m.rows for m in self.members)
        shape = [total, *first.shape[1:]]
        return self.apply("Concat", parts, first.dtype, shape, {"axis": 0})

    def sizes(self) -> gs.Tensor:
        return self.apply("Concat", self.rows, np.int64, [len(self.members)], {"axis": 0})

    def _rows_of(self, member: int, index: int) -> gs.Tensor:
        tensor = self.members[member].node.inputs[index]
        if index == _SCALE_INPUT and tensor.shape[0] != self.members[member].rows:  # ternary per tensor: [1]
            return self.apply(
                "Expand", [tensor, self.rows[member]], tensor.dtype, [self.members[member].rows]
            )
        return tensor


def _fuse(graph: gs.Graph, members: list[_Member], names: Names) -> tuple[gs.Node, gs.Node]:
    first = members[0].node
    stacker = _Stacker(graph, members, names)
    inputs = [first.inputs[0]] + [stacker.stacked(i) for i in range(1, len(first.inputs))]
    sizes = stacker.sizes()
    outputs = [m.node.outputs[0] for m in members]
    shape = outputs[0].shape
    total = sum(m.rows for m in members)
    fused_out = gs.Variable(
        names.tensor(f"{stacker.stem}/{first.op}_output"),
        dtype=outputs[0].dtype,
        shape=None if shape is None else [*shape[:-1], total],
    )
    fused = gs.Node(
        first.op,
        name=names.node(f"{stacker.stem}/{first.op}"),
        attrs=dict(first.attrs),
        inputs=inputs,
        outputs=[fused_out],
        domain=DOMAIN,
    )
    for m in members:
        m.node.outputs.clear()
        m.node.inputs.clear()
    split = gs.Node(
        "Split", name=names.node(f"{stacker.stem}/Split"), attrs={"axis": -1}, inputs=[fused_out, sizes]
    )
    split.outputs = outputs
    graph.nodes.extend([fused, split])
    return fused, split


def _annotate(ctx: PassContext, members: list[_Member], nodes: tuple[gs.Node, ...]) -> None:
    fused_members, start = [], 0
    for m in members:
        fused_members.append(FusedMember(ctx.annotations.pop(m.node.name), start, start + m.rows))
        start += m.rows
    value = fused_value(fused_members)
    for node in nodes:
        ctx.annotations[node.name] = value


class FuseSiblingsPass:
    name: ClassVar[str] = "fuse_siblings"
    requires: ClassVar[tuple[str, ...]] = ("rewrite",)
    ensures: ClassVar[tuple[Condition, ...]] = ()

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        names = Names(graph)
        changes, calls_before, layers = [], 0, 0
        for members in list(_groups(graph, ctx)):
            fused, split = _fuse(graph, members, names)
            _annotate(ctx, members, (fused, split))
            calls_before += len(members)
            layers += len(members)
            changes.append(
                Change(
                    layer=None,
                    action="fuse",
                    node=fused.name,
                    detail=f"{fused.op} over {', '.join(m.layer for m in members)} "
                    f"({' + '.join(str(m.rows) for m in members)} rows)",
                )
            )
        if changes:
            graph.cleanup().toposort()
        stats = {
            "groups": len(changes),
            "layers_fused": layers,
            "calls_before": calls_before,
            "calls_after": len(changes),
        }
        return PassResult(modified=bool(changes), changes=tuple(changes), stats=stats)
