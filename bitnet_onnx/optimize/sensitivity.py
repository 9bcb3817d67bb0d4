"""Per-layer sensitivity: how far the model's outputs move when one layer alone takes a precision.

`measure_sensitivity(model, calibration, ...)` measures, for each layer and each candidate
`PrecisionChoice` of it, the model in which that layer takes the choice and every other layer
stays as in `base` (default: `MixedPrecisionConfig.new(CUSTOM)`, everything F32). The candidate's
config is `base.with_layer_config(layer, choice.to_layer_config(layer_type))`, compiled exactly as
`compile()` would, base policies included (a policy of `base` may therefore move the measured
layer too). Its outputs on every calibration batch are compared with the outputs of `base` itself:

- `cosine` = ⟨y, r⟩ / (‖y‖ ‖r‖) over all elements of all outputs of all batches (float64), and
- `rel_error` = max |y − r| / max |r| over the same elements,
with r the base's outputs; identical outputs give exactly 1.0 and 0.0 (see
`report.compare_outputs` for non-finite values). So a choice equal to the base gives exactly
(1.0, 0.0) and anything else is measured against the model as it will be compiled around it.
- `metric`, when a callback is given: `metric(reference, candidate)` is called once per batch with
  the base's (read-only) and the candidate's outputs (output name → array) and returns a float: an
  **error, lower is better, 0 for identical outputs** (e.g. a mean squared error of the logits, or
  1 − top-1 agreement); the entry records its mean over the batches.
A choice that cannot be compiled or run for a layer gives cosine NaN and rel_error inf (a warning
says why; such entries are not cached), so no search can pick it.

How (cost): the model is loaded, normalized and annotated once; the normalized model is kept as a
proto and each candidate re-imports it (initializers stay lazy: only the measured layer's weights
are read), runs assign_precision, rewrite and fold_converts in memory, and gets a session with the
bitnet ops that is dropped after its batches. The base's outputs are computed once. Measured here
(2 cores, shared): 0.1-0.3 s per candidate on the tiny LLaMA builder, about 1.5-1.8 s on the
100 M-parameter `small` one (half of it onnxruntime building the session, half the compile; peak
RSS 0.5 GB with external data), 1 s for a run that finds everything cached. Kernel choices
do not depend on timings (`measure_kernels=False`: an I8 × I8 layer is measured with LowBitMatMul,
per-token activations), and sessions use one intra-op thread, so the numbers are the same for any
`workers` and any machine load. `workers ≥ 2` measures candidates in that many processes
(ProcessPoolExecutor, spawn); a `metric` must then be picklable (a module-level function), and a
script calling this needs the usual `if __name__ == "__main__":` guard.

Cache: one JSON file per model, `<cache_dir>/<model sha256>.json` (default
`$XDG_CACHE_HOME/bitnet-onnx/sensitivity/`, `~/.cache` without it). An entry is keyed by the
layer, the choice's label, the base config (its file form), the calibration's sha256, the metric
(qualified name and source text) and the library version (package version, the op library's and
the Python sources' content hashes, onnxruntime's version), so any change there measures again.
The file is rewritten atomically (temporary file, then rename) at most every 2 s while measuring
and once at the end, also after an interrupt; the 8 most recently used keys of base config,
calibration, metric and library version are kept. A file that cannot be read is ignored with a
warning and rewritten. Two processes measuring the same model at once may each drop
the other's new entries (they are measured again next time), never corrupt the file.

The model sha256 covers the model proto and the bytes of its external data files.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import math
import multiprocessing
import os
import pickle
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from tqdm import tqdm

import bitnet_onnx.passes
from bitnet_onnx import runtime
from bitnet_onnx.config.config import MixedPrecisionConfig, MixedPrecisionStrategy
from bitnet_onnx.config.config_file import config_from_dict, config_to_dict
from bitnet_onnx.config.policy import PolicyEngine
from bitnet_onnx.config.report import compare_outputs
from bitnet_onnx.core._schema import did_you_mean
from bitnet_onnx.core.dtypes import DType
from bitnet_onnx.core.errors import ConfigError, KernelLibraryError, MixedPrecisionError
from bitnet_onnx.core.graphs import tensor_protos
from bitnet_onnx.core.layers import ComponentType, Layer, SupportMatrix
from bitnet_onnx.core.version import __version__
from bitnet_onnx.optimize.calibration import Calibration
from bitnet_onnx.optimize.objectives import PrecisionChoice, candidate_choices
from bitnet_onnx.passes import annotate
from bitnet_onnx.passes._graph import LoadedModel, ModelInfo, export_model, import_graph, load_model
from bitnet_onnx.passes.base import PassContext, Pipeline, SensitivityMeasure
from bitnet_onnx.passes.instruments import LogRecords
from bitnet_onnx.passes.p30_assign_precision import AssignPrecisionPass
from bitnet_onnx.passes.p50_rewrite import RewritePass
from bitnet_onnx.passes.p60_fold_converts import FoldConvertsPass
from bitnet_onnx.runtime.model_file import session_for

__all__ = [
    "Metric",
    "SensitivityEntry",
    "SensitivityTable",
    "default_cache_dir",
    "measure_sensitivity",
    "measurer",
]

logger = logging.getLogger(__name__)

Metric = Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], float]
"""A user error measure: (reference outputs, candidate outputs) of one batch → float, lower is better."""

_CACHE_FORMAT = 1
_KEPT_CONTEXTS = 8  # base config × calibration × metric × library version combinations per model file
_FLUSH_SECONDS = 2.0
_THREADS = 1  # per session: numbers independent of `workers` and of the machine's load


# -- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SensitivityEntry:
    """The outputs' distance from the base with `layer` alone at `choice` (module docstring)."""

    layer: str
    choice: PrecisionChoice
    cosine: float
    rel_error: float
    metric: float | None = None

    @property
    def failed(self) -> bool:
        """True when the choice could not be compiled or run for this layer."""
        return math.isnan(self.cosine)

    def to_json(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "choice": self.choice.label,
            "cosine": _json_float(self.cosine),
            "rel_error": _json_float(self.rel_error),
            "metric": None if self.metric is None else _json_float(self.metric),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SensitivityEntry:
        metric = data.get("metric")
        return cls(
            layer=str(data["layer"]),
            choice=PrecisionChoice.parse(data["choice"]),
            cosine=float(data["cosine"]),
            rel_error=float(data["rel_error"]),
            metric=None if metric is None else float(metric),
        )


def _json_float(value: float) -> float | str:
    # JSON has no NaN or infinity; float("nan") / float("inf") read the strings back.
    return value if math.isfinite(value) else str(value)


@dataclass(frozen=True)
class SensitivityTable:
    """Every measured (layer, choice) of one model, layers in model order, choices in the order
    they were asked for."""

    model_sha256: str
    entries: tuple[SensitivityEntry, ...]

    @functools.cached_property
    def _index(self) -> dict[tuple[str, PrecisionChoice], SensitivityEntry]:
        return {(e.layer, e.choice): e for e in self.entries}

    def get(self, layer: str, choice: PrecisionChoice) -> SensitivityEntry | None:
        return self._index.get((layer, choice))

    def for_layer(self, layer: str) -> tuple[SensitivityEntry, ...]:
        return tuple(e for e in self.entries if e.layer == layer)

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(e.layer for e in self.entries))

    def to_json(self) -> dict[str, Any]:
        return {"model_sha256": self.model_sha256, "entries": [e.to_json() for e in self.entries]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SensitivityTable:
        try:
            entries = tuple(SensitivityEntry.from_json(e) for e in data["entries"])
            return cls(model_sha256=str(data["model_sha256"]), entries=entries)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"not a sensitivity table ({type(exc).__name__}: {exc}); "
                "write one with SensitivityTable.to_json()"
            ) from exc


# -- measuring -----------------------------------------------------------------------------------


def measure_sensitivity(
    model: str | os.PathLike[str] | onnx.ModelProto,
    calibration: Calibration,
    *,
    layers: Sequence[str] | None = None,
    choices: Mapping[str, Sequence[PrecisionChoice]] | None = None,
    base: MixedPrecisionConfig | None = None,
    metric: Metric | None = None,
    workers: int = 1,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> SensitivityTable:
    """Measure each (layer, choice) against `base` on `calibration` (see the module docstring).

    `layers`: names of annotated layers (default: all, in model order). `choices`: the choices to
    measure per layer name (default: `objectives.candidate_choices(layer, base.support)`); a key
    must be one of the measured layers, and a choice must be allowed by the support matrix for the
    layer's weights (or activations, for a layer without weights). `workers`: processes (1 measures
    in this process). `progress`: a tqdm bar on stderr.
    """
    base = base if base is not None else MixedPrecisionConfig.new(MixedPrecisionStrategy.CUSTOM)
    base.validate()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers={workers!r} must be a positive number of processes (1: no parallelism)")
    if not isinstance(calibration, Calibration):
        raise ConfigError(
            "calibration must be a bitnet_onnx.optimize.calibration.Calibration, "
            f"not {type(calibration).__name__}; "
            "use Calibration.from_npz(path, model) or Calibration.generated(model)"
        )
    if metric is not None and workers > 1:
        _check_picklable(metric)
    loaded = load_model(model)
    model_sha, origin = _model_sha256(loaded.proto, loaded.base_dir), loaded.origin
    prepared = _Prepared.of(loaded, base)
    del loaded  # the prepared (normalized) proto is the one copy of the weights kept from here
    calibration.check(prepared.proto)
    targets = _targets(prepared.layers, layers, choices, base)
    context = _context_key(base, calibration, metric)
    cache = _Cache.open(Path(cache_dir) if cache_dir is not None else default_cache_dir(), model_sha)
    results: dict[tuple[str, PrecisionChoice], _Outcome] = {}
    todo = []
    for name, choice in targets:
        cached = cache.get(context, name, choice)
        if cached is None:
            todo.append((name, choice))
        else:
            results[name, choice] = cached
    logger.info(
        "sensitivity of %s: %d candidates, %d cached, %d to measure",
        origin, len(targets), len(results), len(todo),
    )  # fmt: skip
    if todo:
        bar = tqdm(
            total=len(todo), desc="sensitivity", unit="candidate", file=sys.stderr, disable=not progress
        )
        try:
            for (name, choice), outcome in _run(prepared, base, calibration, metric, todo, workers):
                results[name, choice] = outcome
                if outcome.failure is None:
                    cache.put(context, name, choice, outcome)
                else:
                    logger.warning("sensitivity of layer %r at %s: %s", name, choice.label, outcome.failure)
                bar.update()
        finally:
            bar.close()
            cache.flush()  # what was measured is kept, also after an interrupt
    entries = tuple(results[name, choice].entry(name, choice) for name, choice in targets)
    return SensitivityTable(model_sha256=model_sha, entries=entries)


def measurer(
    model: str | os.PathLike[str] | onnx.ModelProto,
    calibration: Callable[[], Calibration],
    *,
    progress: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> SensitivityMeasure:
    """What compile() takes as `sensitivity`: for each layer, each wanted precision is measured as
    its most precise candidate choice with it (`objectives.candidate_choices`; a precision with
    none is left out) by `measure_sensitivity` against everything F32, and reported as 1 − cosine.
    `calibration` is called when a policy first asks (so a compile without such a policy reads no
    inputs); results are cached on disk like any measurement."""

    def measure(
        layers: Sequence[Layer], wanted: Mapping[str, Collection[DType]], support: SupportMatrix
    ) -> dict[str, dict[DType, float]]:
        choices: dict[str, list[PrecisionChoice]] = {}
        for layer in layers:
            candidates = candidate_choices(layer, support)
            for dtype in sorted(wanted.get(layer.name, ()), key=DType.rank):
                choice = next((c for c in candidates if c.precision is dtype), None)
                if choice is not None and choice not in choices.get(layer.name, []):
                    choices.setdefault(layer.name, []).append(choice)
        if not choices:
            return {}
        table = measure_sensitivity(
            model,
            calibration(),
            layers=list(choices),
            choices=choices,
            progress=progress,
            cache_dir=cache_dir,
        )
        measured: dict[str, dict[DType, float]] = {}
        for entry in table.entries:
            measured.setdefault(entry.layer, {})[entry.choice.precision] = 1.0 - entry.cosine
        return measured

    return measure


@dataclass(frozen=True)
class _Outcome:
    cosine: float
    rel_error: float
    metric: float | None = None
    failure: str | None = None  # why the candidate could not be measured

    def entry(self, layer: str, choice: PrecisionChoice) -> SensitivityEntry:
        return SensitivityEntry(layer, choice, self.cosine, self.rel_error, self.metric)


def _check_picklable(metric: Metric) -> None:
    try:
        pickle.dumps(metric)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise ConfigError(
            f"metric {getattr(metric, '__qualname__', metric)!r} cannot be sent to worker processes ({exc}); "
            "define it as a module-level function, or measure with workers=1"
        ) from exc


def _targets(
    model_layers: Mapping[str, Layer],
    names: Sequence[str] | None,
    choices: Mapping[str, Sequence[PrecisionChoice]] | None,
    base: MixedPrecisionConfig,
) -> list[tuple[str, PrecisionChoice]]:
    """(layer, choice) pairs to measure, layers in model order, checked (all problems at once)."""
    problems: list[str] = []
    known = list(model_layers)
    if isinstance(names, str):
        names = [names]
    wanted = set(known if names is None else names)
    for name in sorted(wanted - set(known)):
        problems.append(f"layers: {name!r} is not a layer of the model{did_you_mean(name, known)}")
    for name in sorted(set(choices or {}) - (wanted & set(known))):
        where = (
            f"is not a layer of the model{did_you_mean(name, known)}"
            if name not in model_layers
            else "is not among the layers measured"
        )
        problems.append(f"choices: {name!r} {where}")
    targets = []
    for name, layer in model_layers.items():
        if name not in wanted:
            continue
        given = (choices or {}).get(name)
        listed = tuple(given) if given is not None else candidate_choices(layer, base.support)
        for choice in dict.fromkeys(listed):
            problem = _choice_problem(layer, choice, base)
            if problem:
                problems.append(f"choices[{name!r}]: {problem}")
            else:
                targets.append((name, choice))
    if problems:
        raise ConfigError(problems, source="measure_sensitivity")
    return targets


def _choice_problem(layer: Layer, choice: object, base: MixedPrecisionConfig) -> str | None:
    if not isinstance(choice, PrecisionChoice):
        return f"{choice!r} is not a PrecisionChoice (e.g. PrecisionChoice.parse('I4g128/F32'))"
    component = ComponentType.WEIGHTS if layer.weight is not None else ComponentType.ACTIVATIONS
    dtype = choice.precision if layer.weight is not None else choice.activation_dtype
    if not base.support.allows(layer.layer_type, component, dtype):
        allowed = ", ".join(
            d.name for d in sorted(base.support.allowed(layer.layer_type, component), key=lambda d: -d.rank())
        )
        return (
            f"{choice.label}: {dtype.name} is not allowed for the {component.value} of this "
            f"{layer.layer_type.value} layer (allowed: {allowed})"
        )
    try:
        base.with_layer_config(layer.name, choice.to_layer_config(layer.layer_type)).validate()
    except ConfigError as exc:
        return f"{choice.label}: {'; '.join(exc.problems)}"
    return None


# -- the prepared model and one candidate ------------------------------------------------------


_Payload = tuple[bytes, str | None, dict[str, Layer], dict[str, dict[str, str]], tuple[str, ...]]
"""A `_Prepared` as a worker process receives it (a ModelProto does not pickle cheaply)."""


@dataclass(frozen=True)
class _Prepared:
    """The model normalized and annotated once: what every candidate compile starts from."""

    proto: onnx.ModelProto  # normalized, weights (or their external references) included
    base_dir: Path | None
    layers: Mapping[str, Layer]
    annotations: Mapping[str, Mapping[str, str]]
    passes_run: tuple[str, ...]  # what made it (normalize, annotate_layers): the later passes require them

    @classmethod
    def of(cls, loaded: LoadedModel, base: MixedPrecisionConfig) -> _Prepared:
        _, ctx = annotate(loaded, _context(base, loaded.base_dir))
        annotations = {k: dict(v) for k, v in ctx.annotations.items()}
        return cls(ctx.original, loaded.base_dir, dict(ctx.layers), annotations, tuple(ctx.passes_run))

    def to_payload(self) -> _Payload:
        return (
            self.proto.SerializeToString(),
            None if self.base_dir is None else str(self.base_dir),
            dict(self.layers),
            {k: dict(v) for k, v in self.annotations.items()},
            self.passes_run,
        )

    @classmethod
    def from_payload(cls, payload: _Payload) -> _Prepared:
        data, base_dir, layers, annotations, passes_run = payload
        proto = onnx.ModelProto()
        proto.ParseFromString(data)
        return cls(proto, None if base_dir is None else Path(base_dir), layers, annotations, passes_run)


def _context(config: MixedPrecisionConfig, model_dir: Path | None) -> PassContext:
    policy = PolicyEngine(config.policies, config.support) if config.policies else None
    return PassContext(config=config, policy=policy, model_dir=model_dir, measure_kernels=False)


def _compile(
    prepared: _Prepared, config: MixedPrecisionConfig, batches: Sequence[Mapping[str, np.ndarray]]
) -> onnx.ModelProto:
    """`config` compiled in memory from the prepared model: assign_precision, rewrite, fold_converts.

    The passes' warnings (e.g. "1-bit weights keep only the sign") are what a sweep over candidates
    expects, so they go to the debug log instead of one warning per candidate; a candidate that fails
    is reported by the caller.
    """
    graph = import_graph(LoadedModel(prepared.proto, "<normalized model>", prepared.base_dir, ModelInfo()))
    ctx = _context(config, prepared.base_dir)
    ctx.original = prepared.proto
    ctx.conversion_inputs = tuple(batches)  # what a gptq candidate calibrates on
    ctx.layers = dict(prepared.layers)
    ctx.annotations = {k: dict(v) for k, v in prepared.annotations.items()}
    ctx.passes_run = list(prepared.passes_run)
    quiet = LogRecords(level=logging.DEBUG, warning_level=logging.DEBUG)
    Pipeline((AssignPrecisionPass(), RewritePass(), FoldConvertsPass()), (quiet,)).run(graph, ctx)
    return export_model(graph)


def _outputs(
    prepared: _Prepared, config: MixedPrecisionConfig, batches: Sequence[Mapping[str, np.ndarray]]
) -> list[dict[str, np.ndarray]]:
    """The compiled `config`'s outputs on each batch (output name → array)."""
    session = session_for(_compile(prepared, config, batches), prepared.base_dir, threads=_THREADS)
    try:
        names = [o.name for o in session.get_outputs()]
        return [dict(zip(names, session.run(names, dict(feeds)), strict=True)) for feeds in batches]
    finally:
        del session  # onnxruntime frees a session with its last reference


class _Measurer:
    """Measures candidates against the base's outputs; one per process."""

    def __init__(
        self,
        prepared: _Prepared,
        base: MixedPrecisionConfig,
        batches: Sequence[Mapping[str, np.ndarray]],
        reference: Sequence[Mapping[str, np.ndarray]],
        metric: Metric | None,
    ) -> None:
        self.prepared = prepared
        self.base = base
        self.batches = batches
        self.reference = reference
        self.metric = metric

    def measure(self, name: str, choice: PrecisionChoice) -> _Outcome:
        layer = self.prepared.layers[name]
        config = self.base.with_layer_config(name, choice.to_layer_config(layer.layer_type))
        try:
            outputs = _outputs(self.prepared, config, self.batches)
        except KernelLibraryError:
            raise
        except MixedPrecisionError as exc:
            return _Outcome(math.nan, math.inf, failure=f"cannot be compiled: {exc}")
        except Exception as exc:  # onnxruntime raises its own pybind types; a pass bug lands here too
            return _Outcome(math.nan, math.inf, failure=f"cannot be run: {type(exc).__name__}: {exc}")
        return self._compare(outputs)

    def _compare(self, outputs: Sequence[Mapping[str, np.ndarray]]) -> _Outcome:
        refs, outs = [], []
        for ref, out in zip(self.reference, outputs, strict=True):
            for key, want in ref.items():
                got = out.get(key)
                if got is None or got.shape != want.shape:
                    shape = "missing" if got is None else f"shape {list(got.shape)}"
                    return _Outcome(
                        math.nan,
                        math.inf,
                        failure=f"output {key!r} is {shape}, the base gives {list(want.shape)}",
                    )
                refs.append(np.asarray(want, np.float64).reshape(-1))
                outs.append(np.asarray(got, np.float64).reshape(-1))
        r, y = np.concatenate(refs), np.concatenate(outs)
        if np.array_equal(r, y, equal_nan=True):
            cosine, rel_error = 1.0, 0.0
        else:
            m = compare_outputs("all outputs", r, y)
            cosine, rel_error = m.cosine, m.max_rel_error
        if self.metric is None:
            return _Outcome(cosine, rel_error)
        values = [
            float(self.metric(dict(want), dict(got)))
            for want, got in zip(self.reference, outputs, strict=True)
        ]
        return _Outcome(cosine, rel_error, float(np.mean(values)))


# -- running: in this process or in worker processes -------------------------------------------

_worker: _Measurer | None = None


def _init_worker(payload: bytes) -> None:
    global _worker
    prepared, base, batches, reference, metric = pickle.loads(payload)
    _worker = _Measurer(_Prepared.from_payload(prepared), config_from_dict(base), batches, reference, metric)


def _work(name: str, label: str) -> _Outcome:
    assert _worker is not None, "worker not initialised"
    return _worker.measure(name, PrecisionChoice.parse(label))


def _run(
    prepared: _Prepared,
    base: MixedPrecisionConfig,
    calibration: Calibration,
    metric: Metric | None,
    todo: Sequence[tuple[str, PrecisionChoice]],
    workers: int,
) -> Iterator[tuple[tuple[str, PrecisionChoice], _Outcome]]:
    """Each candidate's outcome, as it completes."""
    batches = calibration.batches
    reference = _outputs(prepared, base, batches)
    for outputs in reference:  # shared by every candidate: a metric must not change them
        for array in outputs.values():
            array.setflags(write=False)
    if workers == 1 or len(todo) == 1:
        measurer = _Measurer(prepared, base, batches, reference, metric)
        for name, choice in todo:
            yield (name, choice), measurer.measure(name, choice)
        return
    payload = pickle.dumps(
        (prepared.to_payload(), config_to_dict(base), batches, reference, metric),
        protocol=pickle.HIGHEST_PROTOCOL,
    )
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(todo)),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(payload,),
    )
    try:
        futures = {pool.submit(_work, name, choice.label): (name, choice) for name, choice in todo}
        for future in as_completed(futures):
            yield futures[future], future.result()
    finally:
        # On an error or an interrupt, candidates not started yet are dropped instead of awaited.
        pool.shutdown(wait=True, cancel_futures=True)


# -- hashing and the disk cache ----------------------------------------------------------------


def _model_sha256(proto: onnx.ModelProto, base_dir: Path | None) -> str:
    """The same for the same model however its tensors are stored (inline, in an external data
    file, or referenced in place in the model file, as `load_model` does for a path): each
    tensor's name and bytes (external ones read in chunks), then the structure without them."""
    structure = onnx.ModelProto()
    structure.CopyFrom(proto)
    digest = hashlib.sha256()

    for tensor in tensor_protos(structure):
        digest.update(tensor.name.encode())
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entries = {e.key: e.value for e in tensor.external_data}
            with (Path(base_dir or ".") / entries["location"]).open("rb") as stream:
                stream.seek(int(entries.get("offset", 0)))
                remaining = int(entries["length"]) if "length" in entries else None  # None: to the end
                while remaining is None or remaining > 0:
                    chunk = stream.read(1 << 24 if remaining is None else min(remaining, 1 << 24))
                    if not chunk:
                        break
                    digest.update(chunk)
                    remaining = None if remaining is None else remaining - len(chunk)
            tensor.ClearField("data_location")
            del tensor.external_data[:]
        else:
            digest.update(tensor.raw_data)
            tensor.ClearField("raw_data")
    digest.update(structure.SerializeToString(deterministic=True))
    return digest.hexdigest()


@functools.cache
def _library_version() -> str:
    """What the measured numbers depend on besides the inputs: the package version, the content
    hashes of the op library and of the Python sources, and onnxruntime's version."""
    import onnxruntime

    ops = hashlib.sha256(runtime.library_path().read_bytes()).hexdigest()[:16]
    sources = hashlib.sha256()
    roots = [Path(__file__).parents[1], Path(bitnet_onnx.passes.__file__ or "").parent]
    for root in dict.fromkeys(roots):
        for path in sorted(root.rglob("*.py")):
            sources.update(path.relative_to(root).as_posix().encode())
            sources.update(path.read_bytes())
    return f"{__version__}+ops.{ops}+py.{sources.hexdigest()[:16]}+ort.{onnxruntime.__version__}"


def _metric_identity(metric: Metric | None) -> str:
    if metric is None:
        return ""
    name = f"{getattr(metric, '__module__', '')}.{getattr(metric, '__qualname__', type(metric).__qualname__)}"
    try:
        source = inspect.getsource(metric)
    except (OSError, TypeError):
        source = ""
    return f"{name}:{hashlib.sha256(source.encode()).hexdigest()[:16]}"


def _context_key(base: MixedPrecisionConfig, calibration: Calibration, metric: Metric | None) -> str:
    parts = [
        json.dumps(config_to_dict(base)),
        calibration.sha256,
        _metric_identity(metric),
        _library_version(),
    ]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/bitnet-onnx/sensitivity` (`~/.cache` when the variable is unset)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "bitnet-onnx" / "sensitivity"


class _Cache:
    """The JSON file of one model's measured outcomes, by context key, then `layer\tchoice label`.

    The `_KEPT_CONTEXTS` most recently used contexts are kept. Writes are atomic, at most every
    `_FLUSH_SECONDS` while measuring and once at the end (`flush`).
    """

    def __init__(self, path: Path, model_sha: str, contexts: dict[str, dict[str, dict[str, Any]]]) -> None:
        self.path = path
        self.model_sha = model_sha
        self.contexts = contexts
        self.dirty = False
        self.writable = True
        self.written = time.monotonic()

    @classmethod
    def open(cls, folder: Path, model_sha: str) -> _Cache:
        path = folder / f"{model_sha}.json"
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(path, model_sha, {})
        except OSError as exc:
            logger.warning("sensitivity cache %s cannot be read (%s); measuring without it", path, exc)
            return cls(path, model_sha, {})
        try:
            data = json.loads(text)
            if data["format"] != _CACHE_FORMAT or data["model_sha256"] != model_sha:
                raise ValueError(f"format {data['format']!r} of model {data['model_sha256']!r}")
            contexts = {
                str(context): {str(key): _checked(value) for key, value in outcomes.items()}
                for context, outcomes in data["contexts"].items()
            }
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.warning(
                "sensitivity cache %s is not a cache file of this version (%s: %s); ignoring it, it will "
                "be rewritten", path, type(exc).__name__, exc,
            )  # fmt: skip
            contexts = {}
        return cls(path, model_sha, contexts)

    def get(self, context: str, layer: str, choice: PrecisionChoice) -> _Outcome | None:
        found = self.contexts.get(context, {}).get(f"{layer}\t{choice.label}")
        if found is None:
            return None
        metric = found["metric"]
        return _Outcome(
            float(found["cosine"]), float(found["rel_error"]), None if metric is None else float(metric)
        )

    def put(self, context: str, layer: str, choice: PrecisionChoice, outcome: _Outcome) -> None:
        outcomes = self.contexts.pop(context, {})
        self.contexts[context] = outcomes  # most recently used last
        outcomes[f"{layer}\t{choice.label}"] = {
            "cosine": _json_float(outcome.cosine),
            "rel_error": _json_float(outcome.rel_error),
            "metric": None if outcome.metric is None else _json_float(outcome.metric),
        }
        self.dirty = True
        if time.monotonic() - self.written >= _FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if not (self.dirty and self.writable):
            return
        kept = dict(list(self.contexts.items())[-_KEPT_CONTEXTS:])
        data = {"format": _CACHE_FORMAT, "model_sha256": self.model_sha, "contexts": kept}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as stream:
                    json.dump(data, stream, separators=(",", ":"))
                    stream.flush()
                    os.fsync(stream.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            self.writable = False
            logger.warning(
                "sensitivity cache %s cannot be written (%s); results are not kept", self.path, exc
            )
        self.dirty = False
        self.written = time.monotonic()


def _checked(entry: Any) -> dict[str, Any]:
    """A cached outcome with the fields `_Cache.get` reads, else TypeError/ValueError/KeyError."""
    float(entry["cosine"]), float(entry["rel_error"])
    if entry["metric"] is not None:
        float(entry["metric"])
    return dict(entry)
