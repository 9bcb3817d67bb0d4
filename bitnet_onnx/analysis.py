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
  relative error over all elements), on the first calibration batch.
- estimated speedup: Σ latency of every layer at F32 / Σ latency at its chosen precision, from the
  cost model's latency table measured on this CPU (`bitnet_onnx.cost_model`); None without one.
- measured speedup (`measure_speed=True`): median latency of the original over that of the
  compiled model in onnxruntime, one thread, batch 1 (the first row of the first calibration
  batch), the two runs interleaved so that a change of machine load hits both, `SPEED_RUNS` runs
  each after one warm-up run.
- sensitivity: from a `SensitivityTable` when one is given, the cosine of the outputs when this
  layer alone takes its chosen precision (every other layer at F32).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from bitnet_onnx.dtypes import DType
from bitnet_onnx.errors import UnsupportedModelError
from bitnet_onnx.layers import ComponentType, LayerType
from bitnet_onnx.report import OutputMetrics

__all__ = ["NO_LAYER", "SPEED_RUNS", "Analysis", "LayerAnalysis", "Timing"]

NO_LAYER = "(no layer)"
SPEED_RUNS = 15


@dataclass(frozen=True)
class LayerAnalysis:
    """One layer: its precision per component, its bytes in the input and in the compiled model,
    the op computing it, and the outputs' cosine with this layer alone at its precision (None when
    not measured)."""

    name: str
    layer_type: LayerType
    precisions: Mapping[ComponentType, DType]
    bytes_before: int
    bytes_after: int
    op: str = ""
    sensitivity: float | None = None

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
        )


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
    (None/empty without one); `notes` what was not measured and why."""

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

    @property
    def min_cosine(self) -> float | None:
        """The lowest cosine over the outputs (None when none was compared)."""
        return min((m.cosine for m in self.accuracy), default=None)

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
    )


def _json_float(value: float | None) -> float | str | None:
    if value is None:
        return None
    return value if math.isfinite(value) else str(value)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)
