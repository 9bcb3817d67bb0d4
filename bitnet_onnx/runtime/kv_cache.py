"""The KV cache of a decoder graph: which graph inputs carry the past keys/values and which graph
outputs the present ones, and the size of a cache's head axis when the graph leaves it symbolic.

Pairs are found

1. by name, as Optimum, torch's exporters and onnxruntime-genai write them: an input whose name
   starts with `past_key_values` or `past` is paired with the output named the same with that
   prefix replaced by `present` (`past_key_values.0.key` → `present.0.key`, `past_key_0` →
   `present_key_0`, `past_value_0` → `present_value_0`, `past_0` → `present_0`);
2. then by shape, for the float inputs left: one with a symbolic dim whose name says "past" is
   paired with the first float output left of the same rank and element type whose dims agree on
   every other axis (the same size or the same symbol), in graph order.

A pair's `axis` is the sequence axis (the input's "past" dim; for a name pair without one, the
first axis where the two differ). `head_size` reads the last axis's size from the fused attention
op that reads the cache (onnxruntime-genai leaves it symbolic, `kv_cache_dim`): the query width
its producing linear layer writes, divided by the heads the op's attributes give (q, k and v packed
in one input when the key input is empty).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import numpy_helper

__all__ = ["CachePair", "cache_pairs", "head_size"]

_PREFIXES = ("past_key_values", "past")
_PASS_THROUGH = frozenset({"Identity", "Cast"})
_ATTENTION_OPS = frozenset({"GroupQueryAttention", "MultiHeadAttention", "Attention"})


@dataclass(frozen=True)
class CachePair:
    """A past graph input and the present graph output that returns it grown by the new tokens."""

    past: str
    present: str
    axis: int | None  # the sequence axis, None when no dim says where it is


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
        for d in value.type.tensor_type.shape.dim
    ]


def _is_float(value: onnx.ValueInfoProto) -> bool:
    return value.type.tensor_type.elem_type in (
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
    )


def _past_axis(value: onnx.ValueInfoProto) -> int | None:
    return next((i for i, d in enumerate(_dims(value)) if isinstance(d, str) and "past" in d.lower()), None)


def cache_pairs(model: onnx.ModelProto) -> tuple[CachePair, ...]:
    """The (past input, present output) pairs of `model`, in input order (see the module docstring)."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    outputs = {v.name: v for v in graph.output}
    pairs: dict[str, CachePair] = {}
    for value in inputs:
        prefix = next((p for p in _PREFIXES if value.name.startswith(p)), None)
        present = outputs.get("present" + value.name[len(prefix) :]) if prefix else None
        if present is not None:
            axis = _past_axis(value)
            if axis is None:
                differ = [
                    i for i, (a, b) in enumerate(zip(_dims(value), _dims(present), strict=False)) if a != b
                ]
                axis = differ[0] if differ else None
            pairs[value.name] = CachePair(value.name, present.name, axis)
    taken = {p.present for p in pairs.values()}
    for value in inputs:
        axis = _past_axis(value)
        if value.name in pairs or axis is None or not _is_float(value):
            continue
        for out in graph.output:
            if out.name not in taken and _matches(value, out, axis):
                pairs[value.name] = CachePair(value.name, out.name, axis)
                taken.add(out.name)
                break
    return tuple(pairs[v.name] for v in inputs if v.name in pairs)


def _matches(past: onnx.ValueInfoProto, out: onnx.ValueInfoProto, axis: int) -> bool:
    a, b = _dims(past), _dims(out)
    if out.type.tensor_type.elem_type != past.type.tensor_type.elem_type or len(a) != len(b):
        return False
    return all(i == axis or (x is not None and x == y) for i, (x, y) in enumerate(zip(a, b, strict=True)))


def head_size(model: onnx.ModelProto, past: str) -> int | None:
    """The head axis size of cache input `past`, from the fused attention op reading it; None when
    no such op reads it or its query width is not a constant of the graph."""
    graph = model.graph
    readers = [past]
    for node in graph.node:  # topological order: a pass-through's input is seen before its reader
        if node.op_type in _PASS_THROUGH and node.input and node.input[0] in readers:
            readers.append(node.output[0])
    attention = next(
        (n for n in graph.node if n.op_type in _ATTENTION_OPS and set(n.input[1:]) & set(readers)), None
    )
    if attention is None:
        return None
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in attention.attribute}
    heads = int(attrs.get("num_heads", 0))
    width = _width(graph, attention.input[0])
    if not heads or width is None:
        return None
    packed = len(attention.input) < 2 or not attention.input[1]
    kv_heads = int(attrs.get("kv_num_heads", heads))
    total = heads + 2 * kv_heads if packed else heads
    return width // total if width % total == 0 else None


def _width(graph: onnx.GraphProto, tensor: str) -> int | None:
    """The last-axis size a MatMul / MatMulNBits / Gemm with a constant weight writes to `tensor`
    (through a bias Add)."""
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            shapes[node.output[0]] = tuple(numpy_helper.to_array(node.attribute[0].t).shape)
    producers = {out: node for node in graph.node for out in node.output}
    node = producers.get(tensor)
    while node is not None and node.op_type == "Add":
        dynamic = [t for t in node.input if t not in shapes]
        node = producers.get(dynamic[0]) if len(dynamic) == 1 else None
    if node is None:
        return None
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "MatMulNBits":
        return int(attrs["N"]) if "N" in attrs else None
    weight = shapes.get(node.input[1]) if len(node.input) > 1 else None
    if node.op_type == "MatMul" and weight is not None and len(weight) == 2:
        return int(weight[1])
    if node.op_type == "Gemm" and weight is not None and len(weight) == 2:
        return int(weight[0] if attrs.get("transB", 0) else weight[1])
    return None
