"""Calibration inputs: the batches a model is run on to measure what a precision choice costs.

A `Calibration` is an ordered tuple of batches, each one array per graph input of the model (the
feed dict onnxruntime takes). Its arrays are read-only copies, so `sha256` (which names the set in
caches and logs) always describes what the batches hold.

Where batches come from:
- `Calibration.from_npz(path, model)`: an .npz written by `numpy.savez`. A key that is a model input
  name holds one batch (the same file `compile --inputs` takes); keys `<input>__<i>` hold batch i
  (i = 0, 1, ... with no gap; every input needs the same indices, and a file uses one form or the
  other for all inputs). Batches may differ in symbolic dims (e.g. sequence length). Every array is
  checked against the model's input specs: a missing or unknown input, another element type,
  another rank or another size on a fixed axis is reported, all of them in one ConfigError naming
  the input and the spec the model expects (e.g. `int64 [batch, seq]`).
- `Calibration.generated(model, n, seed, dims)`: n batches from `sample_inputs.sample_inputs`
  with seeds seed, seed+1, ..., seed+n−1 (its docstring says what values each input gets).

`split(holdout_fraction)` keeps the last round(n × fraction) batches apart (at least one, and at
least one left to calibrate on), so a plan chosen on the calibration batches can be checked on
inputs it was not chosen on.

`sha256` hashes, batch by batch in order and input by input in name order: the name, the dtype
string, the shape and the array's bytes (C order), each length-prefixed so no two different sets
hash alike.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from bitnet_onnx.core.errors import ConfigError
from bitnet_onnx.runtime.sample_inputs import sample_inputs

__all__ = ["Calibration", "InputSpec", "input_specs"]

_BATCH_KEY = re.compile(r"(?P<name>.+)__(?P<index>\d+)\Z")


@dataclass(frozen=True)
class InputSpec:
    """A graph input as the model declares it: element type and dims (int fixed, str symbolic,
    None unknown)."""

    name: str
    dtype: np.dtype
    dims: tuple[int | str | None, ...]

    def __str__(self) -> str:
        shown = ", ".join("?" if d is None else str(d) for d in self.dims)
        return f"{self.dtype} [{shown}]"

    def problems(self, array: np.ndarray, key: str) -> list[str]:
        """What makes `array` (stored under `key`) unfit for this input; empty when it fits."""
        found = f"{key!r} is {array.dtype} {list(array.shape)}; the model's input {self.name!r} takes {self}"
        if array.dtype != self.dtype:
            return [f"{found}: convert it with .astype(np.{self.dtype.name})"]
        if array.ndim != len(self.dims):
            return [f"{found}: {array.ndim} axes instead of {len(self.dims)}"]
        wrong = [
            f"axis {axis} is {size}, not {want}"
            for axis, (size, want) in enumerate(zip(array.shape, self.dims, strict=True))
            if isinstance(want, int) and size != want
        ]
        return [f"{found}: {'; '.join(wrong)}"] if wrong else []


def _load_proto(model: str | os.PathLike[str] | onnx.ModelProto) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    try:
        # The input specs are all that is read here: the weights stay on disk.
        return onnx.load(path, load_external_data=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the model {path} for its input specs: {exc}") from exc


def input_specs(model: str | os.PathLike[str] | onnx.ModelProto) -> dict[str, InputSpec]:
    """The graph inputs of `model` that are not initializers, in graph order."""
    proto = _load_proto(model)
    initializers = {t.name for t in proto.graph.initializer}
    specs = {}
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dims = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim
        )
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        specs[value.name] = InputSpec(value.name, dtype, dims)
    return specs


def _frozen(array: np.ndarray) -> np.ndarray:
    copy = np.array(array, order="C", copy=True)
    copy.setflags(write=False)
    return copy


@dataclass(frozen=True)
class Calibration:
    """Batches of model inputs (see the module docstring). Construct it from feed dicts directly,
    or with `from_npz` / `generated`; the arrays are copied and made read-only."""

    batches: tuple[Mapping[str, np.ndarray], ...]

    def __post_init__(self) -> None:
        if not self.batches:
            raise ConfigError("a calibration needs at least one batch of inputs")
        frozen = tuple({str(k): _frozen(np.asarray(v)) for k, v in batch.items()} for batch in self.batches)
        object.__setattr__(self, "batches", frozen)

    def __len__(self) -> int:
        return len(self.batches)

    @functools.cached_property
    def sha256(self) -> str:
        digest = hashlib.sha256()

        def field(data: bytes) -> None:
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)

        for batch in self.batches:
            field(str(len(batch)).encode())
            for name in sorted(batch):
                array = batch[name]
                field(name.encode())
                field(array.dtype.str.encode())
                field(",".join(str(d) for d in array.shape).encode())
                field(array.tobytes(order="C"))
        return digest.hexdigest()

    @classmethod
    def from_npz(
        cls, path: str | os.PathLike[str], model: str | os.PathLike[str] | onnx.ModelProto
    ) -> Calibration:
        """The batches an .npz holds for `model` (key forms and checks: see the module docstring)."""
        path = Path(path)
        specs = input_specs(model)
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
        except (OSError, ValueError, EOFError) as exc:
            raise ConfigError(
                f"cannot read calibration inputs {path}: {exc}; pass an .npz written by numpy.savez"
            ) from exc
        return cls(_batches_of(arrays, specs, str(path)))

    @classmethod
    def generated(
        cls,
        model: str | os.PathLike[str] | onnx.ModelProto,
        n: int = 4,
        seed: int = 0,
        dims: Mapping[str, int] | None = None,
    ) -> Calibration:
        """`n` batches made from the model's input specs (seeds seed..seed+n−1; see the module docstring)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"generated calibration: n={n!r} must be a positive number of batches")
        proto = _load_proto(model)
        return cls(tuple(sample_inputs(proto, dims=dims, seed=seed + i) for i in range(n)))

    def check(self, model: str | os.PathLike[str] | onnx.ModelProto) -> None:
        """Raise one ConfigError listing every batch's missing, unknown or unfit arrays for `model`."""
        specs = input_specs(model)
        expected = ", ".join(f"{name} {spec}" for name, spec in specs.items())
        problems: list[str] = []
        for i, batch in enumerate(self.batches):
            where = f"batch {i}: " if len(self.batches) > 1 else ""
            problems += [
                f"{where}no array for model input {name!r} ({spec})"
                for name, spec in specs.items()
                if name not in batch
            ]
            for name, array in batch.items():
                spec = specs.get(name)
                if spec is None:
                    problems.append(f"{where}{name!r} is not an input of the model (its inputs: {expected})")
                else:
                    problems += [where + p for p in spec.problems(array, name)]
        if problems:
            raise ConfigError(problems, source="calibration inputs")

    def split(self, holdout_fraction: float) -> tuple[Calibration, Calibration]:
        """(calibration, held out): the last round(n × fraction) batches, at least one, are held out."""
        if not 0.0 < holdout_fraction < 1.0:
            raise ConfigError(
                f"holdout_fraction {holdout_fraction!r} must lie strictly between 0 and 1, e.g. 0.25"
            )
        n = len(self.batches)
        if n < 2:
            raise ConfigError(
                f"cannot hold batches apart from a calibration of {n} batch; use "
                "Calibration.generated(model, n=4) or an .npz with keys <input>__0, <input>__1, ..."
            )
        held = min(n - 1, max(1, round(n * holdout_fraction)))
        return Calibration(self.batches[: n - held]), Calibration(self.batches[n - held :])


def _batches_of(
    arrays: Mapping[str, np.ndarray], specs: Mapping[str, InputSpec], source: str
) -> tuple[dict[str, np.ndarray], ...]:
    problems: list[str] = []
    single: dict[str, np.ndarray] = {}
    indexed: dict[str, dict[int, np.ndarray]] = {}
    expected = ", ".join(f"{name} {spec}" for name, spec in specs.items())
    for key, array in arrays.items():
        match = _BATCH_KEY.match(key)
        if key in specs:
            single[key] = array
        elif match is not None and match["name"] in specs:
            indexed.setdefault(match["name"], {})[int(match["index"])] = array
        else:
            problems.append(f"{key!r} is not an input of the model (its inputs: {expected})")
            continue
        spec = specs[key if key in specs else match["name"]]  # type: ignore[index]
        problems += spec.problems(array, key)
    if single and indexed:
        problems.append(
            f"the file mixes plain keys ({', '.join(sorted(single))}) and batch keys "
            f"({', '.join(f'{n}__<i>' for n in sorted(indexed))}); use one form for every input"
        )
    count = 1 if not indexed else max(max(found) for found in indexed.values()) + 1
    for name, spec in specs.items():
        if indexed:
            have = indexed.get(name, {})
            missing = [f"{name}__{i}" for i in range(count) if i not in have]
            if missing:
                shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                problems.append(f"no array {shown} for model input {name!r} ({spec}): every batch needs one")
        elif name not in single:
            problems.append(f"no array for model input {name!r} ({spec})")
    if problems:
        raise ConfigError(problems, source=f"calibration inputs {source}")
    if not indexed:
        return (dict(single),)
    return tuple({name: indexed[name][i] for name in specs} for i in range(count))
