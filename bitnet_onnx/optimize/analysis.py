"""What a precision plan does to a model, measured: bytes before/after per layer and per layer type,
estimated and measured speedup, the outputs' error against the original, per-layer sensitivity.

`analyze(model, config, calibration)` compiles the model (or takes a `CompileResult`) and reads:

- bytes: every constant tensor (initializer) of the graph counts for the layer whose node reads it,
  directly or through nodes that compute only from constants (a weight's Transpose or Cast). A
  tensor several layers read (a tied embedding table) counts once, for the first of them in model
  order; constants of no layer (rotary tables, masks, shape constants) count under `NO_LAYER`. So
  the layers' bytes plus `NO_LAYER`'s add up to the model's: `bytes_before` (the input, as the
  normalize and annotate_layers passes leave it, which change no constant) and `bytes_after` (the
  compiled model). Element bytes are those of the stored type (a packed uint8 weight counts its
  bytes, its float32 scales theirs).
- accuracy: the compile's validation report, one `OutputMetrics` per graph output (cosine and max
  relative error over all elements), on every batch of the calibration given (for an objective's
  plan: the held-out samples); `Analysis.meets(objective)` judges an objective on these numbers.
- estimated speedup: Σ predicted latency of every layer at F32 / Σ at its chosen precision, for one
  token (M = 1, decoding), from the cost model's latency table measured on this CPU
  (`bitnet_onnx.optimize.cost_model`, which models the matmul kernels); None without a cost model.
- measured speedup (`measure_speed=True`): median latency of the original over that of the
  compiled model in onnxruntime, one thread, batch 1 (the first row of the first calibration
  batch), the two runs interleaved so that a change of machine load hits both, `SPEED_RUNS` runs
  each after one warm-up run.
- sensitivity: from a `SensitivityTable` when one is given, the cosine of the outputs when this
  layer alone takes its chosen precision (every other layer at F32).
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from bitnet_onnx import runtime
from bitnet_onnx.compiler.compile import CompileResult, compile, resolve_config
from bitnet_onnx.config.config import MixedPrecisionConfig, MixedPrecisionStrategy
from bitnet_onnx.config.report import OutputMetrics
from bitnet_onnx.core._text import table
from bitnet_onnx.core.dtypes import ConversionStrategy, DType, WeightLayout
from bitnet_onnx.core.errors import ConfigError, UnsupportedModelError
from bitnet_onnx.core.inspection import read_layers
from bitnet_onnx.core.layers import ComponentType, Layer, LayerType
from bitnet_onnx.optimize.objectives import Accuracy, Memory, OptimizationObjective, PrecisionChoice, Speed
from bitnet_onnx.passes import annotate
from bitnet_onnx.passes._graph import import_graph, load_model
from bitnet_onnx.runtime.model_file import session_for
from bitnet_onnx.runtime.sample_inputs import sample_inputs
from bitnet_onnx.runtime.timing import run_times

if TYPE_CHECKING:
    from bitnet_onnx.optimize.calibration import Calibration
    from bitnet_onnx.optimize.cost_model import CostModel
    from bitnet_onnx.optimize.sensitivity import SensitivityTable

__all__ = [
    "NOT_SLOWER",
    "NO_LAYER",
    "SPEED_RUNS",
    "SPEED_THREADS",
    "Analysis",
    "LayerAnalysis",
    "Timing",
    "analyze",
    "bytes_by_layer",
    "measure_latency",
    "time_models",
    "with_sensitivity",
]

logger = logging.getLogger(__name__)

NO_LAYER = "(no layer)"
SPEED_RUNS = 15
SPEED_THREADS = 1
NOT_SLOWER = 0.95
"""The least measured speedup over the original that counts as not slower: timings of one model
on a shared machine spread by about 5 % between runs, so an equally fast plan must not fail on noise."""


@dataclass(frozen=True)
class LayerAnalysis:
    """One layer: its precision per component, its bytes in the input and in the compiled model,
    the op computing it, the outputs' cosine with this layer alone at its precision (None when not
    measured), and the label of the `PrecisionChoice` it realises (`BITNET158/I8`, `I4g128/F32`,
    `F16`; the layout knobs come from the plan or the config, which the model does not record)."""

    name: str
    layer_type: LayerType
    precisions: Mapping[ComponentType, DType]
    bytes_before: int
    bytes_after: int
    op: str = ""
    sensitivity: float | None = None
    choice: str = ""

    def __post_init__(self) -> None:
        order = list(ComponentType)
        ordered = sorted(self.precisions.items(), key=lambda kv: order.index(kv[0]))
        object.__setattr__(self, "precisions", MappingProxyType(dict(ordered)))

    @property
    def compression(self) -> float:
        """bytes_before / bytes_after (1.0 for a layer without constants)."""
        return self.bytes_before / self.bytes_after if self.bytes_after else 1.0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "layer_type": self.layer_type.value,
            "precisions": {c.value: d.name for c, d in self.precisions.items()},
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "op": self.op,
            "sensitivity": _json_float(self.sensitivity),
            "choice": self.choice,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LayerAnalysis:
        return cls(
            name=str(data["name"]),
            layer_type=LayerType.parse(data["layer_type"]),
            precisions={ComponentType.parse(c): DType.parse(d) for c, d in data["precisions"].items()},
            bytes_before=int(data["bytes_before"]),
            bytes_after=int(data["bytes_after"]),
            op=str(data.get("op", "")),
            sensitivity=_float_or_none(data.get("sensitivity")),
            choice=str(data.get("choice", "")),
        )

    @property
    def precision_choice(self) -> PrecisionChoice | None:
        """The choice `choice` names (None when it is empty)."""
        if not self.choice:
            return None
        parsed = PrecisionChoice.parse(self.choice)
        return parsed if ComponentType.WEIGHTS in self.precisions else parsed.weightless()


@dataclass(frozen=True)
class Timing:
    """Median latency (microseconds) of the original and the compiled model over `runs` runs each."""

    original_us: float
    compiled_us: float
    runs: int
    threads: int

    @property
    def speedup(self) -> float:
        return self.original_us / self.compiled_us

    def to_json(self) -> dict[str, Any]:
        return {
            "original_us": self.original_us,
            "compiled_us": self.compiled_us,
            "runs": self.runs,
            "threads": self.threads,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Timing:
        return cls(
            original_us=float(data["original_us"]),
            compiled_us=float(data["compiled_us"]),
            runs=int(data["runs"]),
            threads=int(data["threads"]),
        )


@dataclass(frozen=True)
class Analysis:
    """The analysis of one compile (see the module docstring). `model` and `config` say what was
    compiled; `accuracy_inputs` what the outputs were compared on; `objective` (e.g. `memory:0.5`),
    `feasible`, `objective_message` and `limiting_layers` what a search for an objective concluded
    (None/empty without one); `notes` remarks on the numbers (e.g. layers a sensitivity table
    lacks). A number that was not measured is None."""

    model: str
    config: str
    bytes_before: int
    bytes_after: int
    layers: tuple[LayerAnalysis, ...]
    memory_by_type_before: Mapping[str, int]
    memory_by_type_after: Mapping[str, int]
    accuracy: tuple[OutputMetrics, ...]
    accuracy_inputs: str
    estimated_speedup: float | None = None
    timing: Timing | None = None
    objective: str | None = None
    feasible: bool | None = None
    objective_message: str = ""
    limiting_layers: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("memory_by_type_before", "memory_by_type_after"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    @property
    def compression(self) -> float:
        """bytes_before / bytes_after (1.0 for a model without constants)."""
        return self.bytes_before / self.bytes_after if self.bytes_after else 1.0

    @property
    def measured_speedup(self) -> float | None:
        return self.timing.speedup if self.timing is not None else None

    def meets(self, objective: OptimizationObjective, *, allow_slower: bool = False) -> bool:
        """Whether these measured numbers meet `objective`: Memory(t) the bytes saved ≥ t;
        Accuracy(m) the lowest output cosine ≥ m; Speed(s, m) that cosine ≥ m and the speedup ≥ s
        (measured when timed, else estimated); Balanced, which sets no target, always. Memory and
        Accuracy also ask for a speedup ≥ NOT_SLOWER (when one is known) unless `allow_slower`."""
        speedup = self.measured_speedup if self.measured_speedup is not None else self.estimated_speedup
        fast_enough = allow_slower or speedup is None or speedup >= NOT_SLOWER
        if isinstance(objective, Memory):
            saved = 1.0 - self.bytes_after / self.bytes_before if self.bytes_before else 0.0
            return saved >= objective.target_reduction and fast_enough
        if not isinstance(objective, (Accuracy, Speed)):
            return True
        cosine = self.min_cosine
        kept = cosine is not None and cosine >= objective.min_accuracy  # NaN keeps nothing
        if isinstance(objective, Accuracy):
            return kept and fast_enough
        return kept and speedup is not None and speedup >= objective.target_speedup

    @property
    def min_cosine(self) -> float | None:
        """The lowest cosine over the outputs (None when none was compared; NaN, the mark of
        non-finite outputs, when any output has it)."""
        cosines = [m.cosine for m in self.accuracy]
        if any(math.isnan(c) for c in cosines):
            return math.nan
        return min(cosines, default=None)

    def summary(self) -> str:
        """The per-layer table and the headline figures, for a terminal."""

        def cosine(value: float | None) -> str:
            return "-" if value is None else f"{value:.6f}"

        def ratio(value: float | None, what: str) -> str:
            return f"{value:.2f}x" if value is not None else f"not {what}"

        rows = [
            [
                layer.name,
                layer.layer_type.value,
                layer.choice or "-",
                f"{layer.bytes_before} → {layer.bytes_after}",
                cosine(layer.sensitivity),
            ]
            for layer in self.layers
        ]
        lines = [
            table(["layer", "type", "choice", "bytes", "sensitivity (cosine)"], rows),
            "",
            f"stored bytes: {self.bytes_before} → {self.bytes_after} ({self.compression:.2f}x smaller)",
            f"estimated speedup (matmuls, 1 token): {ratio(self.estimated_speedup, 'estimated')}",
            f"measured speedup (whole model, batch 1): {ratio(self.measured_speedup, 'measured')}",
            f"outputs vs original on {self.accuracy_inputs}:",
            *(
                f"  {m.name} {list(m.shape)}: cosine {m.cosine:.6f}, max rel {m.max_rel_error:.4g}"
                for m in self.accuracy
            ),
        ]
        if self.objective is not None:
            verdict = "met" if self.feasible else "NOT met"
            lines.append(f"objective {self.objective}: {verdict}. {self.objective_message}".rstrip())
            if self.limiting_layers:
                lines.append(f"limiting layers: {', '.join(self.limiting_layers)}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "config": self.config,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "compression": self.compression,
            "estimated_speedup": self.estimated_speedup,
            "measured_speedup": self.measured_speedup,
            "timing": self.timing.to_json() if self.timing is not None else None,
            "accuracy_inputs": self.accuracy_inputs,
            "accuracy": [m.to_json() for m in self.accuracy],
            "memory_by_type_before": dict(self.memory_by_type_before),
            "memory_by_type_after": dict(self.memory_by_type_after),
            "objective": self.objective,
            "feasible": self.feasible,
            "objective_message": self.objective_message,
            "limiting_layers": list(self.limiting_layers),
            "notes": list(self.notes),
            "layers": [layer.to_json() for layer in self.layers],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Analysis:
        """The Analysis `to_json` wrote (derived fields such as `compression` are recomputed)."""
        try:
            timing = data.get("timing")
            return cls(
                model=str(data["model"]),
                config=str(data["config"]),
                bytes_before=int(data["bytes_before"]),
                bytes_after=int(data["bytes_after"]),
                layers=tuple(LayerAnalysis.from_json(layer) for layer in data["layers"]),
                memory_by_type_before={str(k): int(v) for k, v in data["memory_by_type_before"].items()},
                memory_by_type_after={str(k): int(v) for k, v in data["memory_by_type_after"].items()},
                accuracy=tuple(_output_metrics(m) for m in data["accuracy"]),
                accuracy_inputs=str(data["accuracy_inputs"]),
                estimated_speedup=_float_or_none(data.get("estimated_speedup")),
                timing=Timing.from_json(timing) if timing is not None else None,
                objective=data.get("objective"),
                feasible=data.get("feasible"),
                objective_message=str(data.get("objective_message", "")),
                limiting_layers=tuple(data.get("limiting_layers", ())),
                notes=tuple(data.get("notes", ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UnsupportedModelError(
                f"not an analysis written by bitnet-onnx ({type(exc).__name__}: {exc}); "
                "pass the JSON of `bitnet-onnx analyze --json`"
            ) from exc


def _output_metrics(data: Mapping[str, Any]) -> OutputMetrics:
    return OutputMetrics(
        name=str(data["name"]),
        shape=tuple(int(d) for d in data["shape"]),
        max_abs_error=float(data["max_abs_error"]),
        max_rel_error=float(data["max_rel_error"]),
        cosine=float(data["cosine"]),
        # an analysis written before the quantile: its maximum bounds it
        rel_error_q999=float(data.get("rel_error_q999", data["max_rel_error"])),
    )


def _json_float(value: float | None) -> float | str | None:
    if value is None:
        return None
    return value if math.isfinite(value) else str(value)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


# -- bytes per layer --------------------------------------------------------------------------------


def _constant_derived(graph: gs.Graph) -> set[str]:
    """Names of the nodes that compute only from constants (a weight's Transpose, Cast, ...)."""
    derived: set[str] = set()
    produced_by_derived: set[str] = set()
    for node in graph.nodes:  # topologically sorted: producers come first
        inputs = [t for t in node.inputs if t.name]
        if all(isinstance(t, gs.Constant) or t.name in produced_by_derived for t in inputs):
            derived.add(node.name)
            produced_by_derived.update(t.name for t in node.outputs)
    return derived


def bytes_by_layer(graph: gs.Graph, owners: Mapping[str, str], order: Sequence[str]) -> dict[str, int]:
    """Bytes of the graph's constant tensors per layer (see the module docstring): `owners` maps a
    node name to its layer, `order` is the layers' model order (ties go to the earliest); the
    constants of no layer count under NO_LAYER. The values add up to `passes.base.graph_bytes`."""
    rank = {name: i for i, name in enumerate(order)}
    derived = _constant_derived(graph)
    totals = {name: 0 for name in order}
    totals[NO_LAYER] = 0
    for tensor in graph.tensors().values():
        if not isinstance(tensor, gs.Constant):
            continue
        readers: set[str] = set()
        frontier, seen = list(tensor.outputs), set()
        while frontier:
            node = frontier.pop()
            if node.name in seen:
                continue
            seen.add(node.name)
            layer = owners.get(node.name)
            if layer is not None:
                readers.add(layer)
            elif node.name in derived:
                frontier.extend(consumer for out in node.outputs for consumer in out.outputs)
        owner = min(readers, key=lambda name: rank.get(name, len(rank))) if readers else NO_LAYER
        totals[owner] = totals.get(owner, 0) + np.dtype(tensor.dtype).itemsize * math.prod(tensor.shape)
    return totals


def _by_type(totals: Mapping[str, int], types: Mapping[str, LayerType]) -> dict[str, int]:
    """Bytes per layer type (LayerType order, NO_LAYER last), the types the model has."""
    grouped = {t.value: 0 for t in LayerType if t in set(types.values())} | {NO_LAYER: 0}
    for name, count in totals.items():
        key = types[name].value if name in types else NO_LAYER
        grouped[key] += count
    return grouped


# -- speed ------------------------------------------------------------------------------------------


def _batch_of_one(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The first row of every input whose first dim the model leaves open (symbolic or unknown)."""
    open_first = {
        value.name
        for value in model.graph.input
        if value.type.tensor_type.shape.dim and not value.type.tensor_type.shape.dim[0].HasField("dim_value")
    }
    return {
        name: (array[:1] if name in open_first and array.ndim else array) for name, array in feeds.items()
    }


def measure_latency(
    original: Any, compiled: Any, feeds: Mapping[str, np.ndarray], *, runs: int = SPEED_RUNS
) -> Timing:
    """Median latency of two onnxruntime sessions on the same feeds, `runs` rounds after one
    warm-up run each; within a round the two run back to back, the first of them alternating."""
    if runs < 1:
        raise ConfigError(f"runs={runs} must be at least 1")
    feeds = dict(feeds)
    sessions = (original, compiled)
    for session in sessions:
        session.run(None, feeds)
    times: tuple[list[float], list[float]] = ([], [])
    for round_ in range(runs):
        for i in (0, 1) if round_ % 2 == 0 else (1, 0):
            times[i].extend(t * 1e6 for t in run_times(partial(sessions[i].run, None, feeds), runs=1))
    return Timing(statistics.median(times[0]), statistics.median(times[1]), runs, SPEED_THREADS)


# -- analyze ----------------------------------------------------------------------------------------


def _describe_config(config: object) -> str:
    if config is None:
        return "balanced"
    if isinstance(config, MixedPrecisionStrategy):
        return config.value
    if isinstance(config, MixedPrecisionConfig):
        return f"{config.strategy.value} config ({len(config.layers)} layer entries)"
    return str(config)


def _describe_model(model: str | os.PathLike[str] | onnx.ModelProto) -> str:
    if isinstance(model, onnx.ModelProto):
        return model.graph.name or "<in-memory model>"
    return str(model)


def _realised_choice(
    layer: Layer, precisions: Mapping[ComponentType, DType], layout: WeightLayout, strategy: str | None = None
) -> PrecisionChoice:
    """The candidate a compiled layer realises: its weights' and activations' precisions as read
    back from the model, with the weights' layout (which the model does not record) from the plan
    or the config, and gptq when the weights' recorded conversion `strategy` says so (the one
    strategy that makes a candidate of its own)."""
    activations = precisions.get(ComponentType.ACTIVATIONS, precisions.get(ComponentType.OUTPUTS, DType.F32))
    weights = precisions.get(ComponentType.WEIGHTS) if layer.weight is not None else None
    if weights is None:
        return PrecisionChoice(None, activations)
    gptq = (
        ConversionStrategy.GPTQ if strategy == ConversionStrategy.GPTQ.value and weights.is_integer else None
    )
    return PrecisionChoice(weights, activations, layout if weights.is_integer else WeightLayout(), gptq)


def _weights_layout(config: MixedPrecisionConfig | None, layer: Layer) -> WeightLayout:
    if config is None or layer.weight is None:
        return WeightLayout()
    return config.resolve(layer.name, layer.layer_type, ComponentType.WEIGHTS).layout


def with_sensitivity(analysis: Analysis, table: SensitivityTable) -> Analysis:
    """`analysis` with each layer's sensitivity read from `table`: the entry of the layer's
    realised choice, else the first entry with the same weight and activation precisions (another
    layout). Layers the table lacks keep None, and a note names how many."""
    layers = []
    for layer in analysis.layers:
        choice = layer.precision_choice
        entry = table.get(layer.name, choice) if choice is not None else None
        if entry is None and choice is not None:
            entry = next(
                (
                    e
                    for e in table.for_layer(layer.name)
                    if e.choice.weights is choice.weights
                    and e.choice.activation_dtype is choice.activation_dtype
                ),
                None,
            )
        layers.append(replace(layer, sensitivity=entry.cosine if entry is not None else None))
    missing = sum(layer.sensitivity is None for layer in layers)
    notes = analysis.notes
    if missing:
        notes += (
            f"sensitivity: the table has no entry for {missing} of {len(layers)} layers at their precision",
        )
    return replace(analysis, layers=tuple(layers), notes=notes)


def _estimated_speedup(
    cost: CostModel, layers: Mapping[str, Layer], choices: Mapping[str, PrecisionChoice]
) -> float:
    f32 = {
        name: PrecisionChoice(DType.F32) if layer.weight is not None else PrecisionChoice(None, DType.F32)
        for name, layer in layers.items()
    }
    base = cost.plan_latency_us(layers.values(), f32)
    chosen = cost.plan_latency_us(layers.values(), choices)
    return base / chosen if chosen > 0 else 1.0


def analyze(
    model: str | os.PathLike[str] | onnx.ModelProto,
    config: MixedPrecisionConfig
    | MixedPrecisionStrategy
    | str
    | os.PathLike[str]
    | CompileResult
    | None = None,
    calibration: Calibration | None = None,
    *,
    sensitivity: SensitivityTable | None = None,
    cost: CostModel | None = None,
    measure_speed: bool = False,
    conversion_inputs: Calibration | None = None,
) -> Analysis:
    """Analyze `model` compiled with `config` (what `compile` accepts; None is balanced), or the
    `CompileResult` of a compile written to a file. The compile validates on every batch of
    `calibration` (None: inputs generated from the input specs) and is not strict: a config that
    misses its strategy's thresholds is analyzed, its numbers say by how much. `sensitivity` gives
    the per-layer cosines, `cost` the estimated speedup; `measure_speed` times both models;
    `conversion_inputs` are the samples gptq layers calibrate on (compile's `calibration`). See the
    module docstring for what each number is."""
    graph_before, annotated = annotate(load_model(model))
    layers = dict(annotated.layers)
    order = list(layers)
    owners = {node: name for name, layer in layers.items() for node in (*layer.nodes, *layer.weight_nodes)}
    totals_before = bytes_by_layer(graph_before, owners, order)
    feeds = dict(calibration.batches[0]) if calibration is not None else None  # what speed is timed on
    with tempfile.TemporaryDirectory(prefix="bitnet-onnx-analyze-") as tmp:
        if isinstance(config, CompileResult):
            result, cfg = config, None
            if result.output_path is None:
                raise ConfigError(
                    "analyze needs the compiled model on disk: compile with output=PATH, "
                    "or pass the config instead of the CompileResult"
                )
        else:
            cfg = resolve_config(config)
            result = compile(
                model,
                cfg,
                output=Path(tmp) / "compiled.onnx",
                inputs=calibration,
                calibration=conversion_inputs,
                strict=False,
            )
        compiled_path = Path(result.output_path)  # type: ignore[arg-type]
        graph_after, records = _compiled(compiled_path)
        owners_after = {node: r.name for r in records for node in r.nodes}
        totals_after = bytes_by_layer(graph_after, owners_after, [r.name for r in records])
        timing = time_models(model, compiled_path, feeds) if measure_speed else None
    by_name = {r.name: r for r in records}
    choices: dict[str, PrecisionChoice] = {}
    entries: list[LayerAnalysis] = []
    for name, layer in layers.items():
        record = by_name.get(name)
        precisions = (
            {ComponentType.parse(c): DType.parse(d) for c, d in record.precisions.items()} if record else {}
        )
        strategy = record.components.get("weights", {}).get("conversion_strategy") if record else None
        choices[name] = _realised_choice(layer, precisions, _weights_layout(cfg, layer), strategy)
        entries.append(
            LayerAnalysis(
                name=name,
                layer_type=layer.layer_type,
                precisions=precisions,
                bytes_before=totals_before.get(name, 0),
                bytes_after=totals_after.get(name, 0),
                op=record.op if record else "",
                choice=choices[name].label,
            )
        )
    types = {name: layer.layer_type for name, layer in layers.items()}
    analysis = Analysis(
        model=_describe_model(model),
        config=_describe_config(config) if not isinstance(config, CompileResult) else str(result.output_path),
        bytes_before=sum(totals_before.values()),
        bytes_after=sum(totals_after.values()),
        layers=tuple(entries),
        memory_by_type_before=_by_type(totals_before, types),
        memory_by_type_after=_by_type(totals_after, types),
        accuracy=tuple(result.report.outputs),
        accuracy_inputs=result.report.inputs,
        estimated_speedup=_estimated_speedup(cost, layers, choices) if cost is not None else None,
        timing=timing,
    )
    return with_sensitivity(analysis, sensitivity) if sensitivity is not None else analysis


def _compiled(path: Path) -> tuple[gs.Graph, tuple[Any, ...]]:
    loaded = load_model(path)
    return import_graph(loaded), read_layers(loaded.proto)


def time_models(
    model: str | os.PathLike[str] | onnx.ModelProto, compiled: Path, feeds: Mapping[str, np.ndarray] | None
) -> Timing:
    """`model` and its `compiled` file timed as the measured speedup is (module docstring), on the
    first row of `feeds` (None: generated inputs)."""

    loaded = load_model(model)
    inputs = feeds if feeds is not None else sample_inputs(loaded.proto)
    original = (
        session_for(loaded.proto, loaded.base_dir, threads=SPEED_THREADS)
        if isinstance(model, onnx.ModelProto)
        else runtime.session(model, threads=SPEED_THREADS)
    )
    return measure_latency(
        original, runtime.session(compiled, threads=SPEED_THREADS), _batch_of_one(loaded.proto, inputs)
    )
