"""Sample inputs made from a model's graph input specs, for validating a compile when the user gave none.

Deterministic by seed; independent of how the model was made. Shapes: fixed dims as written;
a symbolic dim takes `dims[name]` when given, else the default of the role its name says
(`batch` for names containing "batch", `seq` for names containing "seq", "len" or "token"), with
`DEFAULT_DIMS` batch 1, seq 8; any other symbolic or unnamed dim (or a negative size) is an error
naming it. Values:

1. integer input whose name contains "mask": ones (every token attends);
2. integer input whose name contains "token_type": zeros; "position": 0..n−1 along the last axis;
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

__all__ = ["DEFAULT_DIMS", "sample_inputs"]

DEFAULT_DIMS: Mapping[str, int] = {"batch": 1, "seq": 8}
_ROLES = (("batch", ("batch",)), ("seq", ("seq", "len", "token")))
_SHAPE_ONLY_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast"})


def sample_inputs(
    model: onnx.ModelProto, *, dims: Mapping[str, int] | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """One array per graph input of `model` (initializers listed as inputs are skipped). `dims`
    sets symbolic dims by name or by role (`batch`, `seq`) on top of `DEFAULT_DIMS`."""
    sizes = {**DEFAULT_DIMS, **(dims or {})}
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UnsupportedModelError(f"dim {name}={value!r} must be a positive integer, e.g. {name}=8")
    rng = np.random.default_rng(seed)
    graph = model.graph
    tables = _table_rows(graph)
    initializers = {t.name for t in graph.initializer}
    arrays = {}
    for value in graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        shape = _shape(value.name, tensor_type.shape.dim, sizes)
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        arrays[value.name] = _sample(value.name, shape, dtype, tables.get(value.name), rng)
    return arrays


def _shape(
    name: str, dims_proto: Sequence[onnx.TensorShapeProto.Dimension], sizes: Mapping[str, int]
) -> tuple[int, ...]:
    shape = []
    for axis, d in enumerate(dims_proto):
        if d.HasField("dim_value") and d.dim_value >= 0:
            shape.append(d.dim_value)
            continue  # a negative value (some exporters write -1 for "dynamic") is an unknown size
        size = sizes.get(d.dim_param) if d.dim_param else None
        if size is None and d.dim_param:
            lowered = d.dim_param.lower()
            size = next((sizes[role] for role, words in _ROLES if any(w in lowered for w in words)), None)
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
    name: str, shape: tuple[int, ...], dtype: np.dtype, rows: int | None, rng: np.random.Generator
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
        return np.broadcast_to(np.arange(shape[-1] if shape else 1, dtype=dtype), shape).copy()
    if rows is None:
        raise UnsupportedModelError(
            f"input {name!r} is an integer input that feeds no Gather on a constant table, so its value "
            "range is unknown; pass the inputs as an .npz"
        )
    return rng.integers(0, rows, size=shape).astype(dtype)


def _table_rows(graph: onnx.GraphProto) -> dict[str, int]:
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
