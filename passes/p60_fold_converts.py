"""fold_converts: remove conversions that cancel, and everything left unused.

After `rewrite`, every boundary between precisions carries its own conversion, so two neighbouring
layers of the same precision meet through a pair that undoes itself (an F16 island's exit
Cast(to=float) followed by the next island's entry Cast(to=float16)). This pass removes such pairs
when removing them leaves every value bit for bit what it was; it never removes a conversion that
rounds (a Q→DQ pair, a narrowing Cast of a value that needs it): those are the plan's precisions.

Cases (each removal is a `Change` naming the case, the node and its layer):

1. `Identity`: its consumers read its input.
2. `Cast` to the type its input already has: its consumers read its input.
3. `Cast` round trip x:T → Cast(to=M) → Cast(to=T): the second cast's consumers read x, when x only
   holds values that M represents exactly. That is so when M holds every value of T (f16→f32→f16,
   int8→int32→int8), and when x is known to carry M-exact values: x comes from an M tensor (or a type
   M holds) through a Cast to a type that holds M and value-preserving ops (Reshape, Transpose,
   Squeeze, Unsqueeze, Flatten, Identity, Slice, Gather, Expand, Concat, Split), or x is a constant
   whose values survive the round trip. This is the rule for f32→f16→f32 between two layers that
   both compute in f16: the value leaving the first layer's f16 island was cast up from f16, so its
   f16 round trip is the identity and removing it changes nothing. A round trip on any other f32
   value rounds to f16, which is what the plan asked for, and stays.
4. `DequantizeLinear(q; s, z) → QuantizeLinear(·; s, z)` with equal constant scales and zero points,
   equal `axis` and `block_size`, and a scale type that holds every value of q's type: the
   quantize's consumers read q (Q(DQ(q)) = q exactly). A Q→DQ→Q chain thereby collapses to its
   first Q. Our DequantizeLowBit → QuantizeLowBit is not folded: QuantizeLowBit computes its scales
   from the data, which need not give back the stored ones.
5. Unused nodes and initializers (dead after the cases above, or already in the input) are removed.
6. A `Cast` to float32 that reads a `Transpose`'s output and that a `MatMul` reads is moved in
   front of the Transpose: Cast(Transpose(x)) becomes Transpose(Cast(x)), the same values (a cast
   and a transpose commute). onnxruntime 1.32 crashes (SIGSEGV at session creation, at the default
   optimization level) on Transpose(perm=[1, 0, 2]) of a float16 or bfloat16 value → Cast to float
   → MatMul, as a layer computing in float32 reads a transposed float16 activation (its
   MatmulTransposeFusion mistakes the pair for a batch transpose of the MatMul's input); after the
   move the Transpose is float32's. A Cast to float16 stays where it is: before the Transpose it
   would make the same crash, since onnxruntime runs a float16 MatMul through its own float32 casts.

A conversion whose output is a graph output stays, so the model's output names and types never
change. Cases 1-4 run to a fixpoint (one removal can expose the next), in graph order; case 6 runs
on what is left.
Stats: conversions (Cast, QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, bitnet
QuantizeLowBit and DequantizeLowBit) before and after, per op, removals per case, initializers
removed, casts moved before a transpose.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import ClassVar

import ml_dtypes
import numpy as np
import onnx_graphsurgeon as gs
from onnx import helper

from bitnet_onnx.core.log import Change
from bitnet_onnx.core.metadata import LAYER_KEY
from bitnet_onnx.passes.base import Condition, PassContext, PassResult
from bitnet_onnx.runtime import DOMAIN

__all__ = ["CONVERSION_OPS", "FoldConvertsPass", "count_conversions", "holds"]

CONVERSION_OPS: tuple[tuple[str, str], ...] = (
    ("", "Cast"),
    ("", "QuantizeLinear"),
    ("", "DequantizeLinear"),
    ("", "DynamicQuantizeLinear"),
    (DOMAIN, "QuantizeLowBit"),
    (DOMAIN, "DequantizeLowBit"),
)
"""(domain, op) of every node that converts between precisions, as counted in the stats."""

_VALUE_PRESERVING = frozenset(
    [
        "Reshape",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Flatten",
        "Identity",
        "Slice",
        "Expand",
        "Concat",
        "Split",
    ]
)
_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64), np.dtype(ml_dtypes.bfloat16))
_FLOAT32 = np.dtype(np.float32)


def _np_dtype(dtype: object) -> np.dtype | None:
    """A tensor's element type as numpy knows it (gs keeps an ONNX enum for types numpy lacks)."""
    if dtype is None:
        return None
    if isinstance(dtype, int):
        try:
            return np.dtype(helper.tensor_dtype_to_np_dtype(dtype))
        except (KeyError, TypeError, ValueError):
            return None
    try:
        return np.dtype(dtype)
    except TypeError:
        return None


def holds(wide: np.dtype, narrow: np.dtype) -> bool:
    """Whether every value of type `narrow` is exactly a value of type `wide`."""
    if wide == narrow:
        return True
    if narrow == np.bool_:
        return wide.kind in "iuf" or wide in _FLOATS
    if narrow.kind in "iu":
        lo, hi = int(np.iinfo(narrow).min), int(np.iinfo(narrow).max)
        if wide.kind in "iu":
            return int(np.iinfo(wide).min) <= lo and hi <= int(np.iinfo(wide).max)
        if wide in _FLOATS:
            return max(-lo, hi) <= 2 ** (ml_dtypes.finfo(wide).nmant + 1)
        return False
    if narrow in _FLOATS and wide in _FLOATS:
        fw, fn = ml_dtypes.finfo(wide), ml_dtypes.finfo(narrow)
        return (
            fw.nmant >= fn.nmant
            and fw.maxexp >= fn.maxexp
            and fw.minexp - fw.nmant <= fn.minexp - fn.nmant  # its subnormals too
        )
    return False


class _Graph:
    """Read-only questions about the graph the cases ask."""

    def __init__(self, graph: gs.Graph) -> None:
        self.outputs = {id(t) for t in graph.outputs}
        self._exact: dict[tuple[int, str], bool] = {}

    def dtype(self, tensor: gs.Tensor) -> np.dtype | None:
        if isinstance(tensor, gs.Constant):
            return tensor.values.dtype
        return _np_dtype(tensor.dtype)

    def carries_exact(self, tensor: gs.Tensor, middle: np.dtype) -> bool:
        """Whether every value `tensor` can carry is exactly representable in `middle`."""
        key = (id(tensor), middle.str)
        if key not in self._exact:
            self._exact[key] = False  # cycles cannot occur in a DAG; this only guards recursion
            self._exact[key] = self._carries_exact(tensor, middle)
        return self._exact[key]

    def _carries_exact(self, tensor: gs.Tensor, middle: np.dtype) -> bool:
        own = self.dtype(tensor)
        if own is None:
            return False
        if holds(middle, own):
            return True
        if isinstance(tensor, gs.Constant):
            values = tensor.values
            return bool(np.array_equal(values.astype(middle).astype(own), values, equal_nan=True))
        if len(tensor.inputs) != 1:
            return False  # a graph input or an unknown producer
        producer = tensor.inputs[0]
        if not _default_domain(producer):
            return False
        if producer.op == "Cast":
            return holds(own, middle) and self.carries_exact(producer.inputs[0], middle)
        if producer.op == "Gather":
            return self.carries_exact(producer.inputs[0], middle)
        if producer.op in _VALUE_PRESERVING:
            data = producer.inputs if producer.op == "Concat" else producer.inputs[:1]
            return all(self.carries_exact(t, middle) for t in data)
        return False


def _cast_target(node: gs.Node) -> np.dtype | None:
    return _np_dtype(node.attrs.get("to"))


def _default_domain(node: gs.Node) -> bool:
    return node.domain in (None, "", "ai.onnx")


def _is(node: gs.Node, op: str) -> bool:
    return node.op == op and _default_domain(node)


def _identity(node: gs.Node, g: _Graph) -> tuple[gs.Tensor, str] | None:
    if _is(node, "Identity"):
        return node.inputs[0], "identity"
    return None


def _noop_cast(node: gs.Node, g: _Graph) -> tuple[gs.Tensor, str] | None:
    if not _is(node, "Cast"):
        return None
    source, to = g.dtype(node.inputs[0]), _cast_target(node)
    if source is not None and source == to:
        return node.inputs[0], f"cast to {to.name}, the type its input already has"
    return None


def _cast_round_trip(node: gs.Node, g: _Graph) -> tuple[gs.Tensor, str] | None:
    if not _is(node, "Cast") or len(node.inputs[0].inputs) != 1:
        return None
    first = node.inputs[0].inputs[0]
    if not _is(first, "Cast"):
        return None
    x = first.inputs[0]
    own, middle, back = g.dtype(x), _cast_target(first), _cast_target(node)
    if own is None or middle is None or back != own:
        return None
    if not g.carries_exact(x, middle):
        return None
    why = "holds every value of" if holds(middle, own) else "holds every value this tensor carries, of"
    return x, f"round trip {own.name}→{middle.name}→{own.name}: {middle.name} {why} {own.name}"


def _constant_values(tensor: gs.Tensor | None) -> np.ndarray | None:
    return tensor.values if isinstance(tensor, gs.Constant) else None


def _same_constant(a: gs.Tensor | None, b: gs.Tensor | None) -> bool:
    va, vb = _constant_values(a), _constant_values(b)
    if va is None or vb is None:
        return a is None and b is None
    return va.dtype == vb.dtype and va.shape == vb.shape and bool(np.array_equal(va, vb))


def _dq_q(node: gs.Node, g: _Graph) -> tuple[gs.Tensor, str] | None:
    if not _is(node, "QuantizeLinear") or len(node.inputs[0].inputs) != 1:
        return None
    dq = node.inputs[0].inputs[0]
    if not _is(dq, "DequantizeLinear"):
        return None
    q = dq.inputs[0]
    dq_zp = dq.inputs[2] if len(dq.inputs) > 2 else None
    q_zp = node.inputs[2] if len(node.inputs) > 2 else None
    scale_dtype, q_dtype = g.dtype(dq.inputs[1]), g.dtype(q)
    if scale_dtype is None or q_dtype is None or not holds(scale_dtype, q_dtype):
        return None
    if not _same_constant(dq.inputs[1], node.inputs[1]) or not _same_constant(dq_zp, q_zp):
        return None
    if q_zp is None and (q_dtype != np.uint8 or "output_dtype" in node.attrs):
        return None  # without zero points Q makes uint8; q must already be that
    for attr, default in (("axis", 1), ("block_size", 0)):
        if dq.attrs.get(attr, default) != node.attrs.get(attr, default):
            return None
    return q, "DequantizeLinear→QuantizeLinear with the same scale and zero point"


_Case = Callable[[gs.Node, _Graph], "tuple[gs.Tensor, str] | None"]
_CASES: tuple[tuple[str, _Case], ...] = (
    ("identity", _identity),
    ("noop_cast", _noop_cast),
    ("cast_round_trip", _cast_round_trip),
    ("dq_q", _dq_q),
)


def count_conversions(graph: gs.Graph) -> Counter[str]:
    """Conversion nodes by op name (subgraphs included)."""
    ops = {(d, o) for d, o in CONVERSION_OPS}
    counts: Counter[str] = Counter()

    def walk(g: gs.Graph) -> None:
        for node in g.nodes:
            domain = "" if _default_domain(node) else node.domain
            if (domain, node.op) in ops:
                counts[node.op] += 1
            for sub in node.subgraphs():
                walk(sub)

    walk(graph)
    return counts


def _constants(graph: gs.Graph) -> int:
    return sum(isinstance(t, gs.Constant) for t in graph.tensors().values())


def _casts_before_transposes(graph: gs.Graph, ctx: PassContext, changes: list[Change]) -> int:
    """Case 6. The Cast converts the Transpose's input instead, and a copy of the Transpose writes
    the Cast's old output (so its readers stay); the old Transpose goes with the cleanup if nothing
    else reads it."""
    moved = 0
    for cast in list(graph.nodes):
        if not _is(cast, "Cast") or _cast_target(cast) != _FLOAT32 or not cast.inputs:
            continue
        if len(cast.inputs[0].inputs) != 1:
            continue
        transpose = cast.inputs[0].inputs[0]
        if not _is(transpose, "Transpose") or not any(_is(r, "MatMul") for r in cast.outputs[0].outputs):
            continue
        x, out = transpose.inputs[0], cast.outputs[0]
        converted = gs.Variable(f"{out.name}/untransposed", out.dtype, x.shape)
        cast.inputs[0], cast.outputs[0] = x, converted
        copy = gs.Node("Transpose", f"{cast.name}/Transpose", dict(transpose.attrs), [converted], [out])
        graph.nodes.append(copy)
        layer = ctx.annotations.get(cast.name, {}).get(LAYER_KEY)
        changes.append(
            Change(layer, "reorder", node=cast.name, source="cast_before_transpose", detail=transpose.name)
        )
        moved += 1
    return moved


class FoldConvertsPass:
    """Removes conversions that cancel and what is left unused (cases in the module docstring)."""

    name: ClassVar[str] = "fold_converts"
    requires: ClassVar[tuple[str, ...]] = ()
    ensures: ClassVar[tuple[Condition, ...]] = ()

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        before = count_conversions(graph)
        constants_before = _constants(graph)
        changes: list[Change] = []
        removed: Counter[str] = Counter()
        while True:
            g = _Graph(graph)
            found = self._fold_once(graph, g, ctx, changes, removed)
            if not found:
                break
            graph.cleanup(remove_unused_graph_inputs=False)
        moved = _casts_before_transposes(graph, ctx, changes)
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        after = count_conversions(graph)
        dead = constants_before - _constants(graph)
        stats: dict[str, int | float | str] = {
            "conversions_before": sum(before.values()),
            "conversions_after": sum(after.values()),
            **{f"removed.{case}": removed[case] for case, _ in _CASES},
            "initializers_removed": dead,
            "casts_before_transpose": moved,
        }
        for op in sorted(set(before) | set(after)):
            stats[f"before.{op}"] = before[op]
            stats[f"after.{op}"] = after[op]
        return PassResult(modified=bool(changes) or dead > 0, changes=tuple(changes), stats=stats)

    @staticmethod
    def _fold_once(
        graph: gs.Graph, g: _Graph, ctx: PassContext, changes: list[Change], removed: Counter[str]
    ) -> bool:
        found = False
        for node in list(graph.nodes):
            if len(node.outputs) != 1 or not node.inputs:
                continue
            out = node.outputs[0]
            if id(out) in g.outputs:
                continue  # output names and types of the model never change
            for case, match in _CASES:
                hit = match(node, g)
                if hit is None:
                    continue
                source, why = hit
                for consumer in list(out.outputs):
                    for i, tensor in enumerate(consumer.inputs):
                        if tensor is out:
                            consumer.inputs[i] = source
                node.outputs.clear()
                node.inputs.clear()
                removed[case] += 1
                layer = ctx.annotations.get(node.name, {}).get(LAYER_KEY)
                changes.append(Change(layer, "remove", node=node.name, source=case, detail=why))
                found = True
                break
        return found
