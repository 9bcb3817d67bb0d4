"""`compile()`: an ONNX model in, a mixed-precision ONNX model out, with a log of every decision.

The pipeline is `bitnet_onnx.passes.compile_passes()` (normalize, annotate_layers,
assign_precision, rewrite, fold_converts, validate), run over a copy of the model: the input is
opened read-only and never modified. Then:

1. Validation decides. The validate pass runs the original and the compiled model on every batch
   of `inputs` (an `optimize.calibration.Calibration`, read by duck type since the compiler sits
   below the optimizer; or one batch: a feed dict or an .npz of one array per model input) and
   leaves its report in the context; `thresholds` (what sets them, their values) replace the
   strategy's, e.g. an objective's (`objectives.validation_thresholds`). An error finding
   (graph checker, session creation, a layer not realised as planned, and, with `strict`, an
   output beyond the thresholds) raises `CompileValidationError`, which carries the
   report, and nothing is written. With `strict=False` a missed threshold is a warning: the model
   is written and `result.report.goal_met` is False (ANCHORS (c)4: a model and a report even when
   the goal is missed).
2. Output. The graph is exported, the annotations are stamped into node metadata_props
   (`bitnet.layer`, `bitnet.layer_type`, `bitnet.dtype.<component>`, `bitnet.op`, `bitnet.rule`;
   Netron shows them) and the file is written atomically (`model_file.write_model`: temp folder in
   the target folder, then rename; external data next to it for large models). An interrupt or an
   exception in any pass leaves no output file, and an existing output is replaced only by a
   validated model.
3. Log. With `log`, each pass's record is written as one JSON line as soon as the pass ends, so a
   failed compile leaves the records up to the failure. `dump_after` names passes after which the
   model is written to `<output stem>.dump/NNN_<pass>.onnx` (`./bitnet-onnx.dump/` without output).

Deterministic: the same model, config and inputs give the same bytes (names and edits depend only
on the graph; kernel timings are cached per machine, and `measure_kernels=False` avoids them).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from bitnet_onnx import runtime
from bitnet_onnx.config.config import MixedPrecisionConfig, MixedPrecisionStrategy
from bitnet_onnx.config.config_file import load_config
from bitnet_onnx.config.policy import PolicyEngine, PrecisionPolicy
from bitnet_onnx.config.report import CompileReport, Thresholds
from bitnet_onnx.core._schema import did_you_mean
from bitnet_onnx.core.errors import ConfigError
from bitnet_onnx.core.inspection import LayerRecord, layers_table, read_layers
from bitnet_onnx.core.log import PassRecord
from bitnet_onnx.core.version import __version__
from bitnet_onnx.passes import compile_passes
from bitnet_onnx.passes._graph import export_model, import_graph, load_model, stamp_annotations
from bitnet_onnx.passes.base import Instrument, PassContext, Pipeline, SensitivityMeasure
from bitnet_onnx.passes.instruments import DumpAfter, JsonlLog, LogRecords, ProgressBar
from bitnet_onnx.runtime.model_file import write_model

if TYPE_CHECKING:
    from bitnet_onnx.optimize.calibration import Calibration

__all__ = ["CompileResult", "compile", "read_inputs", "resolve_config"]

logger = logging.getLogger(__name__)

_CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class CompileResult:
    """What a compile produced. `layers` is read back from the compiled model, in model order;
    `bytes_before`/`bytes_after` count the constant tensors (weights, tables, scales) of the input
    and of the output; `records` are the pass records (what `log` holds)."""

    output_path: Path | None
    layers: tuple[LayerRecord, ...]
    bytes_before: int
    bytes_after: int
    report: CompileReport
    records: tuple[PassRecord, ...]

    @property
    def compression(self) -> float:
        """bytes_before / bytes_after (1.0 for an empty model)."""
        return self.bytes_before / self.bytes_after if self.bytes_after else 1.0

    def summary(self) -> str:
        """The per-layer table, the sizes and the validation figures, for a terminal."""
        mib = 1024 * 1024
        written = f" → {self.output_path}" if self.output_path is not None else " (not written)"
        return "\n".join(
            [
                layers_table(self.layers),
                "",
                f"weights: {self.bytes_before / mib:.2f} MiB → {self.bytes_after / mib:.2f} MiB "
                f"({self.compression:.2f}x smaller){written}",
                self.report.summary(),
            ]
        )


def resolve_config(
    config: MixedPrecisionConfig | MixedPrecisionStrategy | str | os.PathLike[str] | None,
) -> MixedPrecisionConfig:
    """A checked config from what `compile` accepts: None (the balanced preset), a config, a
    strategy (name), or a config file (.yaml, .yml, .json)."""
    if config is None:
        return MixedPrecisionConfig.balanced()
    if isinstance(config, MixedPrecisionConfig):
        config.validate()
        return config
    if isinstance(config, MixedPrecisionStrategy):
        return MixedPrecisionConfig.new(config)
    strategies = [s.value for s in MixedPrecisionStrategy]
    if isinstance(config, str) and config.strip().lower() in strategies:
        return MixedPrecisionConfig.new(config)
    path = Path(config)
    if path.suffix.lower() in _CONFIG_SUFFIXES or path.exists():
        return load_config(path)
    raise ConfigError(
        f"config {str(config)!r} is neither a strategy ({', '.join(strategies)})"
        f"{did_you_mean(str(config), strategies)} nor a config file (.yaml, .yml or .json)"
    )


def read_inputs(
    inputs: Mapping[str, np.ndarray] | str | os.PathLike[str] | None,
) -> dict[str, np.ndarray] | None:
    """Sample inputs from a mapping or an .npz file (one array per model input); None stays None."""
    if inputs is None:
        return None
    if isinstance(inputs, Mapping):
        return {str(k): np.asarray(v) for k, v in inputs.items()}
    path = Path(inputs)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError) as exc:
        raise ConfigError(
            f"cannot read sample inputs {path}: {exc}; pass an .npz written by numpy.savez with one "
            "array per model input"
        ) from exc
    batched = sorted(name for name in arrays if re.fullmatch(r".+__\d+", name))
    if batched:
        raise ConfigError(
            f"sample inputs {path} hold batch keys ({', '.join(batched[:3])}, ...): read them with "
            "Calibration.from_npz(path, model) and pass that as inputs"
        )
    return arrays


def _validation_inputs(
    inputs: Calibration | Mapping[str, np.ndarray] | str | os.PathLike[str] | None,
) -> tuple[tuple[Mapping[str, np.ndarray], ...], str] | None:
    """(batches, what they are) for validate. A Calibration (the optimizer's; read by duck type,
    the compiler sits below it) brings its batches; a mapping or an .npz is one batch."""
    if inputs is None:
        return None
    if hasattr(inputs, "batches") and hasattr(inputs, "describe"):
        return tuple(inputs.batches), inputs.describe()
    batch = read_inputs(inputs)
    assert batch is not None
    shapes = ", ".join(f"{name} {list(np.shape(array))}" for name, array in batch.items())
    source = "the given inputs" if isinstance(inputs, Mapping) else str(inputs)
    return (batch,), f"{source} ({shapes})"


def _output_path(output: str | os.PathLike[str] | None, model: object) -> Path | None:
    if output is None:
        return None
    path = Path(output)
    if path.is_dir():
        raise ConfigError(f"output {path} is a folder; give a file path such as {path / 'model.bitnet.onnx'}")
    if not path.parent.is_dir():
        raise ConfigError(f"output folder {path.parent} does not exist; create it first")
    is_input = isinstance(model, (str, os.PathLike)) and Path(model).exists() and path.exists()
    if is_input and os.path.samefile(model, path):
        raise ConfigError(
            f"output {path} is the input model; choose another path (the input is never modified)"
        )
    return path


def _dump_folder(output: Path | None) -> Path:
    return output.with_suffix(".dump") if output is not None else Path.cwd() / "bitnet-onnx.dump"


def _policy_engine(config: MixedPrecisionConfig, extra: Iterable[PrecisionPolicy]) -> PolicyEngine | None:
    policies = (*config.policies, *extra)
    return PolicyEngine(policies, config.support) if policies else None


def compile(
    model: str | os.PathLike[str] | onnx.ModelProto,
    config: MixedPrecisionConfig | MixedPrecisionStrategy | str | os.PathLike[str] | None = None,
    *,
    output: str | os.PathLike[str] | None = None,
    log: str | os.PathLike[str] | None = None,
    inputs: Calibration | Mapping[str, np.ndarray] | str | os.PathLike[str] | None = None,
    dump_after: Sequence[str] = (),
    policies: Iterable[PrecisionPolicy] | None = None,
    strict: bool = True,
    progress: bool = False,
    dims: Mapping[str, int] | None = None,
    memory_budget: int | None = None,
    measure_kernels: bool = True,
    custom_op_libraries: Sequence[str | os.PathLike[str]] = (),
    thresholds: tuple[str, Thresholds] | None = None,
    sensitivity: SensitivityMeasure | None = None,
    calibration: Calibration | Mapping[str, np.ndarray] | str | os.PathLike[str] | None = None,
) -> CompileResult:
    """Compile `model` (a path or a ModelProto) to mixed precision; see the module docstring.

    `config`: a MixedPrecisionConfig, a strategy or its name, or a config file; None is balanced.
    `inputs`: sample inputs for validation (a Calibration, e.g. `Calibration.from_npz(path, model)`
    for an .npz of batch keys `<input>__<i>`, every batch of which is validated on; or one batch: a
    feed dict or an .npz); None generates them from the input specs (`sample_inputs`, symbolic
    dims from `dims`). `thresholds`: (what sets them, Thresholds) instead of the strategy's.
    `policies` are added after the config's own. `memory_budget` (bytes) feeds the policies'
    memory_usage and the plan check.
    `measure_kernels=False` picks kernels by fixed preference instead of timing them here.
    `sensitivity`: measures what a policy's `sensitivity` condition asks for
    (`optimize.sensitivity.measurer(model, calibration)`); without it such a policy is refused.
    `calibration`: the samples (same forms as `inputs`) on which layers whose conversion strategy is
    gptq collect their activations; a plan asking for gptq without them is refused.
    `custom_op_libraries`: shared libraries implementing ops of other custom domains the model uses
    (passed through by the compiler), registered in the validation sessions; they and the bitnet op
    library are loaded before any pass runs, so a missing one fails at once (KernelLibraryError).
    Raises a MixedPrecisionError subclass naming what is wrong; nothing is written then.
    """
    cfg = resolve_config(config)
    engine = _policy_engine(cfg, policies or ())
    passes = compile_passes(memory_budget=memory_budget, strict=strict, dims=dims, thresholds=thresholds)
    names = [p.name for p in passes]
    unknown = [n for n in dump_after if n not in names]
    if unknown:
        raise ConfigError(
            [
                f"dump after {n!r}: not a pass{did_you_mean(n, names)}; passes: {', '.join(names)}"
                for n in unknown
            ]
        )
    out = _output_path(output, model)
    libraries = tuple(Path(library) for library in custom_op_libraries)
    runtime.session_options(custom_op_libraries=libraries)
    validation_inputs = _validation_inputs(inputs)
    conversion_inputs = _validation_inputs(calibration)
    loaded = load_model(model)
    graph = import_graph(loaded)
    ctx = PassContext(
        config=cfg,
        policy=engine,
        calibration=validation_inputs,
        conversion_inputs=None if conversion_inputs is None else conversion_inputs[0],
        model_dir=loaded.base_dir,
        measure_kernels=measure_kernels,
        custom_op_libraries=libraries,
        node_metadata=loaded.info.node_metadata,
        sensitivity=sensitivity,
    )
    with ExitStack() as stack:
        instruments: list[Instrument] = [LogRecords()]
        if log is not None:
            try:
                stream = stack.enter_context(Path(log).open("w", encoding="utf-8"))
            except OSError as exc:
                raise ConfigError(f"cannot write the pass log {log}: {exc.strerror}; check the path") from exc
            instruments.append(JsonlLog(stream))
        if dump_after:
            instruments.append(DumpAfter(dump_after, _dump_folder(out), loaded.info))
        bar = ProgressBar(names, enabled=progress)
        stack.callback(bar.close)
        instruments.append(bar)
        records = tuple(Pipeline(passes, instruments).run(graph, ctx))
    report: CompileReport = ctx.report
    report.raise_if_errors()
    compiled = export_model(graph, loaded.info)
    compiled.producer_name, compiled.producer_version = "bitnet-onnx", __version__
    stale = stamp_annotations(compiled, ctx.annotations)
    logger.debug("annotations of %d nodes removed by later passes were not stamped", len(stale))
    layers = read_layers(compiled)  # in model order, as inspect shows them
    if out is not None:
        write_model(compiled, out, loaded.base_dir)
    return CompileResult(
        output_path=out,
        layers=layers,
        bytes_before=records[0].bytes_before,
        bytes_after=records[-1].bytes_after,
        report=report,
        records=records,
    )
