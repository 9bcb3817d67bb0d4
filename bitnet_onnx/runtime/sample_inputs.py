"""Sample inputs made from a model's graph input specs, for validating a compile when the user gave none.

Deterministic by seed; independent of how the model was made. Shapes: fixed dims as written;
a symbolic dim takes `dims[name]` when given, else the size of the role its name says, else, for
a sum of dims (`past_sequence_length + sequence_length`), the sum of its terms. Roles, by the
first word the name holds: `batch` ("batch"), `total` ("total"), `past` ("past"), `seq` ("seq",
"len", "token"). A role's size is `dims` of the first dim of the model with that role given by
name, else `dims[role]`, else `DEFAULT_DIMS` (batch 1, seq 8, past 8); `total` is past + seq
unless given, so a KV-cache decoder's attention mask covers the cached and the new tokens. The
head axis of a KV-cache input (`kv_cache`: past/present pairs) that no dim sets takes the head size
of the attention op reading it. Any other symbolic or unnamed dim (or a negative size) is an error
naming it; dims are positive, past ones may be 0 (an empty cache). Values:

1. integer input whose name contains "mask": ones (every token attends);
2. integer input whose name contains "token_type": zeros; "position": n..n+seq−1 along the last
   axis, n the past length when the model has a KV cache, else 0;
3. other integer input: uniform in [0, rows) where rows is the size of the constant table a Gather
   reads it from (directly or through Reshape/Flatten/Squeeze/Unsqueeze/Identity/Cast), so token ids
   are valid; an integer input that reaches no such Gather is an error (its range is unknown);
4. bool input: True (a mask);
5. float input: standard normal, in the input's own float type.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bitnet_onnx.core.errors import UnsupportedModelError
from bitnet_onnx.runtime.kv_cache import cache_pairs, head_size

__all__ = ["DEFAULT_DIMS", "sample_inputs", "table_rows"]

DEFAULT_DIMS: Mapping[str, int] = {"batch": 1, "seq": 8, "past": 8}
_ROLES = (("batch", ("batch",)), ("total", ("total",)), ("past", ("past",)), ("seq", ("seq", "len", "token")))
_SHAPE_ONLY_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast"})


def sample_inputs(
    model: onnx.ModelProto, *, dims: Mapping[str, int] | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """One array per graph input of `model` (initializers listed as inputs are skipped). `dims`
    sets symbolic dims by name or by role (`batch`, `seq`) on top of `DEFAULT_DIMS`."""
    sizes = {**DEFAULT_DIMS, **(dims or {})}
    for name, value in sizes.items():
        least = 0 if _role(name) == "past" else 1  # an empty cache is a prefill
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            kind = "a non-negative" if least == 0 else "a positive"
            raise UnsupportedModelError(f"dim {name}={value!r} must be {kind} integer, e.g. {name}=8")
    rng = np.random.default_rng(seed)
    graph = model.graph
    tables = table_rows(graph)
    initializers = {t.name for t in graph.initializer}
    values = [v for v in graph.input if v.name not in initializers]
    pairs = cache_pairs(model)
    roles = _role_sizes(values, sizes, cached=bool(pairs))
    for pair in pairs:  # the head axis onnxruntime-genai leaves symbolic (`kv_cache_dim`)
        last = next(v for v in values if v.name == pair.past).type.tensor_type.shape.dim[-1:]
        if last and last[0].dim_param and _resolve(last[0].dim_param, sizes, roles) is None:
            found = head_size(model, pair.past)
            if found is not None:
                sizes = {last[0].dim_param: found, **sizes}
    start = roles["past"] if pairs else 0
    arrays = {}
    for value in values:
        tensor_type = value.type.tensor_type
        shape = _shape(value.name, tensor_type.shape.dim, sizes, roles)
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        arrays[value.name] = _sample(value.name, shape, dtype, tables.get(value.name), start, rng)
    return arrays


def _role(param: str) -> str | None:
    lowered = param.lower()
    return next((role for role, words in _ROLES if any(w in lowered for w in words)), None)


def _role_sizes(
    values: Sequence[onnx.ValueInfoProto], sizes: Mapping[str, int], *, cached: bool
) -> dict[str, int]:
    """Role → size: a dim of the role given by name wins over the role's own entry; `total` is
    past + seq with a KV cache, seq without one."""
    params = [d.dim_param for v in values for d in v.type.tensor_type.shape.dim if d.dim_param]
    roles = {}
    for role in ("batch", "past", "seq", "total"):
        named = next((sizes[p] for p in params if _role(p) == role and p in sizes), None)
        roles[role] = named if named is not None else sizes.get(role)
    if roles["total"] is None:
        roles["total"] = roles["past"] + roles["seq"] if cached else roles["seq"]
    return roles


def _resolve(param: str, sizes: Mapping[str, int], roles: Mapping[str, int]) -> int | None:
    if param in sizes:
        return sizes[param]
    if "+" in param:
        terms = [t.strip() for t in param.split("+")]
        found = [int(t) if t.isdigit() else _resolve(t, sizes, roles) for t in terms]
        return None if None in found else sum(found)
    role = _role(param)
    return roles[role] if role is not None else None


def _shape(
    name: str,
    dims_proto: Sequence[onnx.TensorShapeProto.Dimension],
    sizes: Mapping[str, int],
    roles: Mapping[str, int],
) -> tuple[int, ...]:
    shape = []
    for axis, d in enumerate(dims_proto):
        if d.HasField("dim_value") and d.dim_value >= 0:
            shape.append(d.dim_value)
            continue  # a negative value (some exporters write -1 for "dynamic") is an unknown size
        size = _resolve(d.dim_param, sizes, roles) if d.dim_param else None
        if size is None and not d.dim_param:
            raise UnsupportedModelError(
                f"input {name!r} axis {axis} has an unknown size without a name, so no dim can set it; "
                "pass the inputs as an .npz (CLI: --inputs)"
            )
        if size is None:
            raise UnsupportedModelError(
                f"input {name!r} axis {axis} has {d.dim_param!r} symbolic size that no default covers; "
                f"give its value with dims={{{d.dim_param!r}: 8}} (CLI: --dim {d.dim_param}=8) or pass the "
                "inputs as an .npz"
            )
        shape.append(size)
    return tuple(shape)


def _sample(
    name: str,
    shape: tuple[int, ...],
    dtype: np.dtype,
    rows: int | None,
    start: int,
    rng: np.random.Generator,
) -> np.ndarray:
    lowered = name.lower()
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if dtype == np.bool_:
        return np.ones(shape, dtype)
    if not np.issubdtype(dtype, np.integer):
        raise UnsupportedModelError(
            f"input {name!r} has type {dtype}; sample inputs are made for int, bool and float inputs "
            "only: pass the inputs as an .npz"
        )
    if "mask" in lowered:
        return np.ones(shape, dtype)
    if "token_type" in lowered:
        return np.zeros(shape, dtype)
    if "position" in lowered:
        positions = np.arange(start, start + (shape[-1] if shape else 1), dtype=dtype)
        return np.broadcast_to(positions, shape).copy()
    if rows is None:
        raise UnsupportedModelError(
            f"input {name!r} is an integer input that feeds no Gather on a constant table, so its value "
            "range is unknown; pass the inputs as an .npz"
        )
    return rng.integers(0, rows, size=shape).astype(dtype)


def table_rows(graph: onnx.GraphProto) -> dict[str, int]:
    """Graph input name → rows of the constant table the first Gather it indexes reads."""
    tables = {t.name: int(t.dims[0]) for t in graph.initializer if t.dims}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            array = numpy_helper.to_array(node.attribute[0].t)
            if array.ndim:
                tables[node.output[0]] = int(array.shape[0])
    origin = {value.name: value.name for value in graph.input}  # tensor → the graph input it carries
    found: dict[str, int] = {}
    for node in graph.node:  # nodes are in topological order in a valid model
        if node.op_type in _SHAPE_ONLY_OPS and node.input and node.input[0] in origin:
            for out in node.output:
                origin[out] = origin[node.input[0]]
        elif node.op_type == "Gather" and len(node.input) > 1 and node.input[1] in origin:
            rows = tables.get(node.input[0])
            if rows is not None:
                found.setdefault(origin[node.input[1]], rows)
    return found
