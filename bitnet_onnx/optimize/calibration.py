"""Calibration inputs: the batches a model is run on to measure what a precision choice costs.

A `Calibration` is an ordered tuple of batches, each one array per graph input of the model (the
feed dict onnxruntime takes). Its arrays are read-only copies, so `sha256` (which names the set in
caches and logs) always describes what the batches hold.

Where batches come from:
- `Calibration.from_npz(path, model)`: an .npz written by `numpy.savez`, in one of two forms.
  Plain keys (a model input's name): the user's samples stacked along the leading (batch) axis,
  every array holding the same number of them (what `numpy.savez` writes of a batch); a model
  whose batch axis is fixed at k gets them as batches of k rows. Keys `<input>__<i>` hold batch
  i (i = 0, 1, ... with no gap; every input needs the same indices), for batches that differ in
  symbolic dims (e.g. sequence length). A file uses one form for all its inputs. Every array is
  checked against the model's input specs: a missing or unknown input, another element type,
  another rank, another size on a fixed axis or a leading axis that disagrees between arrays is
  reported, all of them in one ConfigError naming the arrays and the spec the model expects
  (e.g. `int64 [batch, seq]`).
- `Calibration.generated(model, n, seed, dims)`: n batches from `sample_inputs.sample_inputs`
  with seeds seed, seed+1, ..., seed+n−1 (its docstring says what values each input gets).

Samples. `split(holdout)` keeps the last samples apart, so a plan chosen on the calibration
samples is checked on inputs it was not chosen on: `holdout` is a count (an int ≥ 1) or a
fraction (0 < f < 1: round(n × f) samples, at least one, and at least one left to calibrate on).
A sample is a row of the leading axis when the calibration is one batch (the plain form), else a
whole batch (batches may differ in shape, so they are not cut). `source` says where the samples
came from, for messages and reports; the parts of a split say which part they are.

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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from bitnet_onnx.core.errors import ConfigError
from bitnet_onnx.core.interface import knob
from bitnet_onnx.runtime.sample_inputs import sample_inputs

__all__ = ["DEFAULT_HOLDOUT", "Calibration", "InputSpec", "input_specs"]

DEFAULT_HOLDOUT = 0.25
"""The fraction of the samples `split` holds out unless told otherwise."""

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
    or with `from_npz` / `generated`; the arrays are copied and made read-only. `source` names
    where they came from in messages (it takes no part in equality or `sha256`)."""

    batches: tuple[Mapping[str, np.ndarray], ...]
    source: str = field(default="the calibration inputs", compare=False)

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

        def put(data: bytes) -> None:
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)

        for batch in self.batches:
            put(str(len(batch)).encode())
            for name in sorted(batch):
                array = batch[name]
                put(name.encode())
                put(array.dtype.str.encode())
                put(",".join(str(d) for d in array.shape).encode())
                put(array.tobytes(order="C"))
        return digest.hexdigest()

    @property
    def samples(self) -> int:
        """What `split` counts: the batches when there are several, else the rows of the one
        batch's leading axis (0 when its arrays disagree on it)."""
        if len(self.batches) > 1:
            return len(self.batches)
        rows = _leading_sizes(self.batches[0])
        return next(iter(rows.values()), 1) if len(set(rows.values())) <= 1 else 0

    @property
    def positions(self) -> int:
        """Rows of activations a linear layer sees over all batches, as the inputs tell: per batch,
        the largest over its arrays of an integer array's size (token ids [batch, seq] become
        [batch, seq, hidden] activations) or a float array's size without its last axis
        (features [batch, K]). What decides whether GPTQ has enough samples for a layer of K inputs."""
        total = 0
        for batch in self.batches:
            sizes = [
                a.size
                if np.issubdtype(a.dtype, np.integer)
                else a.size // max(1, a.shape[-1] if a.ndim else 1)
                for a in batch.values()
            ]
            total += max(sizes, default=0)
        return total

    def describe(self) -> str:
        """`source` and the shapes, e.g. `16 held-out samples of calib.npz (input_ids [16, 17], ...)`."""
        shapes = ", ".join(f"{name} {list(array.shape)}" for name, array in self.batches[0].items())
        more = f" in {len(self.batches)} batches, the first" if len(self.batches) > 1 else ""
        return f"{self.source}{more} ({shapes})"

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
        return cls(_batches_of(arrays, specs, str(path)), source=str(path))

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
        batches = tuple(sample_inputs(proto, dims=dims, seed=seed + i) for i in range(n))
        return cls(batches, source=f"{n} generated batches (seeds {seed}..{seed + n - 1})")

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
            raise ConfigError(problems, source=self.source)

    def split(self, holdout: int | float = DEFAULT_HOLDOUT) -> tuple[Calibration, Calibration]:
        """(calibration, held out): the last samples, `holdout` of them (a count, or a fraction of
        the samples), are held out (module docstring)."""
        n = self.samples
        held = _held_count(holdout, n, self)
        kept = n - held
        source = self.source
        if len(self.batches) > 1:
            first, second = self.batches[:kept], self.batches[kept:]
        else:
            batch = self.batches[0]
            first = ({k: v[:kept] if v.ndim else v for k, v in batch.items()},)
            second = ({k: v[kept:] if v.ndim else v for k, v in batch.items()},)
        unit = ("batch", "batches") if len(self.batches) > 1 else ("sample", "samples")
        return (
            Calibration(first, source=f"{_counted(kept, unit)} of {source} to calibrate on"),
            Calibration(second, source=f"{_counted(held, unit, 'held-out ')} of {source}"),
        )


def _counted(n: int, unit: tuple[str, str], adjective: str = "") -> str:
    return f"{n} {adjective}{unit[0] if n == 1 else unit[1]}"


def _holdout_problem(holdout: object) -> str | None:
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)):
        return f"holdout {holdout!r} must be a number"
    if isinstance(holdout, int) and holdout < 1:
        return f"holdout {holdout!r} must hold out at least one sample"
    if isinstance(holdout, float) and not 0.0 < holdout < 1.0:
        return f"holdout {holdout!r} must be a count of samples (≥ 1) or a fraction strictly between 0 and 1"
    return None


def _held_count(holdout: int | float, n: int, calibration: Calibration) -> int:
    example = knob("holdout=0.25 or holdout=4", "--holdout 0.25 or --holdout 4")
    problem = _holdout_problem(holdout)
    if problem is not None:
        raise ConfigError(f"{problem}, e.g. {example}")
    what = calibration.describe()
    if n == 0:
        sizes = ", ".join(f"{k} {s}" for k, s in _leading_sizes(calibration.batches[0]).items())
        raise ConfigError(
            f"{what}: the arrays disagree on the leading (sample) axis ({sizes}), so no sample can be "
            "held out: give every array the same number of samples"
        )
    if n < 2:
        raise ConfigError(
            f"{what}: 1 sample; holding some out to check the plan on needs at least 2; add samples "
            "along the leading axis of every array"
            + knob(" (or use Calibration.generated(model, n=4))", " (or omit --inputs to generate 4 batches)")
        )
    held = holdout if isinstance(holdout, int) else min(n - 1, max(1, round(n * holdout)))
    if held >= n:
        raise ConfigError(
            f"{what}: holding out {held} of its {n} samples leaves none to calibrate on; hold out fewer, "
            f"e.g. {knob(f'holdout={max(1, n // 4)}', f'--holdout {max(1, n // 4)}')}"
        )
    return held


def _leading_sizes(batch: Mapping[str, np.ndarray]) -> dict[str, int]:
    """The leading-axis size of each array that has axes (a scalar is shared by every sample)."""
    return {name: int(array.shape[0]) for name, array in batch.items() if np.ndim(array)}


def _batches_of(
    arrays: Mapping[str, np.ndarray], specs: Mapping[str, InputSpec], source: str
) -> tuple[dict[str, np.ndarray], ...]:
    problems: list[str] = []
    single: dict[str, np.ndarray] = {}
    indexed: dict[str, dict[int, np.ndarray]] = {}
    expected = ", ".join(f"{name} {spec}" for name, spec in specs.items())
    step = _fixed_batch(specs)
    for key, array in arrays.items():
        match = _BATCH_KEY.match(key)
        if key in specs:
            single[key] = array
            # Samples stacked along a batch axis fixed at `step` are checked a batch at a time.
            shown = array[:step] if step and array.ndim and array.shape[0] % step == 0 else array
            problems += specs[key].problems(shown, key)
        elif match is not None and match["name"] in specs:
            indexed.setdefault(match["name"], {})[int(match["index"])] = array
            problems += specs[match["name"]].problems(array, key)
        else:
            problems.append(f"{key!r} is not an input of the model (its inputs: {expected})")
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
    sizes = _leading_sizes(single)
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{name} {list(single[name].shape)}" for name in sizes)
        problems.append(
            f"the arrays hold different numbers of samples along their leading (batch) axis ({listed}): "
            "stack the same samples in every array"
        )
    elif step and sizes and next(iter(sizes.values())) % step:
        problems.append(
            f"the model's batch axis is fixed at {step}, so the samples come in batches of {step}: "
            f"{next(iter(sizes.values()))} samples along the leading axis is not a multiple of {step}"
        )
    if problems:
        raise ConfigError(problems, source=f"calibration inputs {source}")
    if indexed:
        return tuple({name: indexed[name][i] for name in specs} for i in range(count))
    rows = next(iter(sizes.values()), 0)
    if not step or rows <= step:
        return (dict(single),)
    return tuple(
        {name: array[i : i + step] if array.ndim else array for name, array in single.items()}
        for i in range(0, rows, step)
    )


def _fixed_batch(specs: Mapping[str, InputSpec]) -> int | None:
    """The size every input with axes fixes its leading (batch) axis at; None when any leaves it free
    (or they disagree: then it is not one batch axis)."""
    leading = {spec.dims[0] for spec in specs.values() if spec.dims}
    if len(leading) == 1:
        (size,) = leading
        return size if isinstance(size, int) else None
    return None
