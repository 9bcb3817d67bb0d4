"""Sample inputs for any model here (builders and fixtures), read from the graph's input specs.

Deterministic by seed. Symbolic dims take their value from `dims` (default batch 1, seq 8). By input:
- int inputs fed (directly or through reshapes) to a Gather on an initializer table (token ids):
  uniform in [0, table rows);
- `*mask*`: ones, with batch row b ≥ 1 right-padded by b zeros (at least one token kept), so padding
  is exercised whenever batch > 1;
- `*token_type*`: zeros; `*position*`: 0..seq−1 in every row;
- float inputs: standard normal.

`python -m models.inputs MODEL.onnx -o inputs.npz [--batch B] [--seq S] [--seed N]` writes them.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from bitnet_onnx.core.errors import UnsupportedModelError

__all__ = ["main", "sample_inputs", "save_npz"]

DEFAULT_DIMS: Mapping[str, int] = {"batch": 1, "seq": 8}
_SHAPE_ONLY_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast"})


def sample_inputs(
    model: onnx.ModelProto, *, dims: Mapping[str, int] = DEFAULT_DIMS, seed: int = 0
) -> dict[str, np.ndarray]:
    """One array per graph input of `model` (initializers listed as inputs are skipped)."""
    rng = np.random.default_rng(seed)
    initializers = {t.name: t for t in model.graph.initializer}
    arrays = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        shape = _shape(value.name, tensor_type.shape.dim, dims)
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        arrays[value.name] = _sample(model, value.name, shape, dtype, initializers, rng)
    return arrays


def save_npz(inputs: Mapping[str, np.ndarray], path: str | Path) -> Path:
    """Writes `inputs` as an .npz archive (one array per input name)."""
    path = Path(path)
    with path.open("wb") as f:
        np.savez(f, **inputs)
    return path


def _shape(
    name: str, dims_proto: Sequence[onnx.TensorShapeProto.Dimension], dims: Mapping[str, int]
) -> tuple[int, ...]:
    shape = []
    for axis, d in enumerate(dims_proto):
        if d.HasField("dim_value"):
            shape.append(d.dim_value)
        elif d.dim_param in dims:
            shape.append(dims[d.dim_param])
        else:
            label = repr(d.dim_param) if d.dim_param else "unnamed"
            raise UnsupportedModelError(
                f"input {name!r} axis {axis} has a {label} symbolic size; pass its value in dims, "
                f"e.g. dims={{{d.dim_param or 'name'!r}: 8, ...}}"
            )
    return tuple(shape)


def _sample(
    model: onnx.ModelProto,
    name: str,
    shape: tuple[int, ...],
    dtype: np.dtype,
    initializers: Mapping[str, onnx.TensorProto],
    rng: np.random.Generator,
) -> np.ndarray:
    lowered = name.lower()
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if not np.issubdtype(dtype, np.integer):
        raise UnsupportedModelError(
            f"input {name!r} has type {dtype}; sample_inputs makes int and float inputs only"
        )
    if "mask" in lowered:
        return _padding_mask(shape, dtype)
    if "token_type" in lowered:
        return np.zeros(shape, dtype)
    if "position" in lowered:
        return np.broadcast_to(np.arange(shape[-1], dtype=dtype), shape).copy()
    return rng.integers(0, _table_rows(model, name, initializers), size=shape).astype(dtype)


def _padding_mask(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    mask = np.ones(shape, dtype)
    for row in range(1, shape[0]):
        mask[row, max(1, shape[-1] - row) :] = 0
    return mask


def _table_rows(model: onnx.ModelProto, name: str, initializers: Mapping[str, onnx.TensorProto]) -> int:
    reach = {name}  # the input and what shape-only ops make of it (GPT-2 reshapes its ids first)
    for node in model.graph.node:  # nodes are in topological order
        if node.op_type in _SHAPE_ONLY_OPS and node.input and node.input[0] in reach:
            reach.update(node.output)
        elif node.op_type == "Gather" and node.input[1] in reach and node.input[0] in initializers:
            return initializers[node.input[0]].dims[0]
    raise UnsupportedModelError(
        f"input {name!r} is an integer input that feeds no Gather on an initializer table, so its value "
        f"range is unknown; pass the inputs yourself (an .npz) instead of generating them"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m models.inputs", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=DEFAULT_DIMS["batch"])
    parser.add_argument("--seq", type=int, default=DEFAULT_DIMS["seq"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model = onnx.load(args.model, load_external_data=False)
    save_npz(sample_inputs(model, dims={"batch": args.batch, "seq": args.seq}, seed=args.seed), args.output)


if __name__ == "__main__":
    main()
