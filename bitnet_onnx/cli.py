"""The `bitnet-onnx` command line. It owns logging set-up and exit codes: a MixedPrecisionError
prints its message (the traceback only with --debug) and exits 2; anything else is a bug and exits 1
with the traceback. `compile --no-strict` exits 3 when it wrote a model that missed the strategy's
validation thresholds (the report says by how much); `compile --objective` and `analyze
--objective` exit 3 when the objective is not met, after writing (or analyzing) the best plan found,
with a message naming the limiting layers (ANCHORS (c)4: a model and a report even then). Messages
name CLI flags, not Python names (`interface.speaking_to`)."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bitnet_onnx import runtime
from bitnet_onnx.api.precision_manager import PrecisionManager
from bitnet_onnx.compiler.compile import compile, read_inputs, resolve_config
from bitnet_onnx.config.config import MixedPrecisionStrategy
from bitnet_onnx.config.config_file import save_config
from bitnet_onnx.config.report import CompileValidationError
from bitnet_onnx.core._text import table
from bitnet_onnx.core.errors import ConfigError, MixedPrecisionError, UnsupportedModelError
from bitnet_onnx.core.files import atomic_file
from bitnet_onnx.core.inspection import components_table, read_layers
from bitnet_onnx.core.interface import Interface, speaking_to
from bitnet_onnx.core.log import read_log, render_table
from bitnet_onnx.optimize.analysis import analyze, with_sensitivity
from bitnet_onnx.optimize.analysis_report import write_report
from bitnet_onnx.optimize.calibration import DEFAULT_HOLDOUT, Calibration
from bitnet_onnx.optimize.cost_model import CostModel, LatencyTable
from bitnet_onnx.optimize.objectives import OptimizationObjective, validation_thresholds
from bitnet_onnx.optimize.sensitivity import measure_sensitivity, measurer
from bitnet_onnx.passes._graph import load_model
from bitnet_onnx.runtime import profiling
from bitnet_onnx.runtime.decoding import Generation, Sampling, generate
from bitnet_onnx.runtime.info import describe, gather
from bitnet_onnx.runtime.sample_inputs import sample_inputs
from bitnet_onnx.runtime.text import TextCodec

__all__ = ["main"]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_BUG = 1
EXIT_USER_ERROR = 2
EXIT_GOAL_MISSED = 3

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)(i?b?)\s*$", re.IGNORECASE)


def _cmd_info(args: argparse.Namespace) -> int:
    info = gather()
    print(describe(info))
    return EXIT_OK if info.library_loads else EXIT_USER_ERROR


def _cmd_bench(args: argparse.Namespace) -> int:
    # The benchmarks are not in the installed package: they build their models with the repository's
    # models/, so they live next to it (bench/) and run from a checkout (an editable install).
    checkout = Path(__file__).resolve().parents[1]
    if not (checkout / "bench" / "__init__.py").is_file() or not (checkout / "models").is_dir():
        raise MixedPrecisionError(
            f"bitnet-onnx bench runs from a repository checkout (bench/ and models/ next to {checkout}); "
            "install the package with `pip install -e .` from a clone, or run `python -m bench.<suite>` there"
        )
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    # Importable only once the checkout is on sys.path; only the suite asked for (decode needs
    # onnxruntime's quantizers, which the others do not).
    suite = importlib.import_module(f"bench.{args.suite}")
    return suite.main(args.bench_args)


def _byte_size(text: str) -> int:
    """`123`, `64KiB`, `1.5GiB`, `512M` (binary units) → bytes."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write bytes or e.g. 512MiB, 2GiB")
    number, unit = float(match.group(1)), match.group(2).lower()
    value = int(number * 1024 ** "_kmg".index(unit or "_"))
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 bytes")
    return value


def _dim(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip().isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=N with N ≥ 1, e.g. seq=16")
    return name.strip(), int(value)


def _feeds(model_path: Path, inputs: Path | None, dims: Sequence[tuple[str, int]]) -> dict[str, np.ndarray]:
    given = read_inputs(inputs)
    return given if given is not None else sample_inputs(load_model(model_path).proto, dims=dict(dims))


def _cmd_compile(args: argparse.Namespace) -> int:
    progress = args.progress or sys.stderr.isatty()
    manager = None
    config = args.config if args.config is not None else args.strategy or "balanced"
    inputs = Calibration.from_npz(args.inputs, args.model) if args.inputs is not None else None
    calibration = inputs  # without --objective every sample both calibrates gptq layers and validates
    thresholds = None
    if args.objective is not None:
        manager = _optimized(args, progress)
        config = manager.to_config()
        written = Path(f"{args.output}.config.yaml")
        save_config(config, written)
        print(f"bitnet-onnx compile: the plan for {args.objective} is in {written}", file=sys.stderr)
        calibration = manager.calibration  # what the plan was chosen on calibrates gptq layers too
        inputs = manager.holdout  # validated on what the plan was not chosen on
        thresholds = validation_thresholds(args.objective, config.strategy)
    elif args.holdout is not None:
        raise ConfigError(
            "--holdout sets the samples held out to check an --objective's plan on; without --objective "
            "every sample of --inputs validates the compile: drop --holdout or add --objective"
        )
    try:
        result = compile(
            args.model,
            config,
            output=args.output,
            log=args.log,
            inputs=inputs,
            dump_after=args.dump_after,
            strict=not args.no_strict and manager is None,
            progress=progress,
            dims=dict(args.dim),
            memory_budget=args.memory_budget,
            measure_kernels=not args.no_kernel_timing,
            custom_op_libraries=args.custom_ops,
            thresholds=thresholds,
            calibration=calibration,
            # measured only if a policy has a sensitivity condition
            sensitivity=measurer(
                args.model, lambda: _calibration(args.model, args.inputs, args.dim), progress=progress
            ),
        )
    except CompileValidationError as exc:
        print(exc.report.summary(), file=sys.stderr)
        raise
    print(result.summary())
    if manager is not None:
        # The search's verdict (measured on the held-out samples) and the validation of the model
        # written (the same samples, the objective's thresholds) must both hold.
        if not (manager.last_result.feasible and result.report.goal_met):
            written = f"wrote the best plan found to {args.output} and {args.output}.config.yaml"
            print(_objective_missed("compile", manager, written), file=sys.stderr)
            return EXIT_GOAL_MISSED
        print(f"objective {args.objective}: met on {result.report.inputs}. {manager.last_result.message}")
        return EXIT_OK
    if not result.report.goal_met:
        print(
            f"bitnet-onnx compile: wrote {result.output_path}, but it missed the validation thresholds "
            "(--no-strict)",
            file=sys.stderr,
        )
        return EXIT_GOAL_MISSED
    return EXIT_OK


def _calibration(model: Path, inputs: Path | None, dims: Sequence[tuple[str, int]]) -> Calibration:
    if inputs is not None:
        return Calibration.from_npz(inputs, model)
    return Calibration.generated(model, dims=dict(dims))


def _holdout(text: str) -> int | float:
    """`4` (samples) or `0.25` (a fraction of them); `Calibration.split` checks the range."""
    try:
        return int(text) if text.strip().isdigit() else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of samples or a fraction, e.g. 4 or 0.25"
        ) from None


def _cost_model(progress: bool) -> CostModel:
    return CostModel(LatencyTable.for_this_machine(progress=progress))


def _objective(text: str) -> OptimizationObjective:
    try:
        return OptimizationObjective.parse(text)
    except MixedPrecisionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _optimized(args: argparse.Namespace, progress: bool) -> PrecisionManager:
    """A PrecisionManager over the model, moved to the plan its search found for args.objective
    (starting from --config/--strategy when given, else from the model as it is, all F32)."""
    start = args.config if args.config is not None else args.strategy
    manager = PrecisionManager.from_model(
        args.model,
        resolve_config(start) if start is not None else None,
        _calibration(args.model, args.inputs, args.dim),
        holdout=_holdout_of(args),
        cost_model=_cost_model(progress),
        workers=args.workers,
        progress=progress,
    )
    manager.optimize_precision(args.objective, allow_slower=args.allow_slower)
    return manager


def _holdout_of(args: argparse.Namespace) -> int | float:
    return args.holdout if args.holdout is not None else DEFAULT_HOLDOUT


def _objective_missed(command: str, manager: PrecisionManager, written: str) -> str:
    result = manager.last_result
    return f"bitnet-onnx {command}: objective {result.objective} is NOT met; {written}. {result.message}"


def _cmd_analyze(args: argparse.Namespace) -> int:

    progress = sys.stderr.isatty()
    met = True
    if args.objective is not None:
        manager = _optimized(args, progress)
        analysis = manager.analyze_configuration(measure_speed=True)
        met = bool(analysis.feasible)
    else:
        # Sensitivity on the calibration samples, the outputs compared on the held-out ones.
        calibration, held_out = _calibration(args.model, args.inputs, args.dim).split(_holdout_of(args))
        config = args.config if args.config is not None else args.strategy or "balanced"
        analysis = analyze(
            args.model,
            config,
            held_out,
            cost=_cost_model(progress),
            measure_speed=True,
            conversion_inputs=calibration,
        )
        chosen = {layer.name: [layer.precision_choice] for layer in analysis.layers if layer.precision_choice}
        table = measure_sensitivity(
            args.model,
            calibration,
            layers=list(chosen),
            choices=chosen,
            workers=args.workers,
            progress=progress,
        )
        analysis = with_sensitivity(analysis, table)
    if args.report is not None:
        index = write_report(analysis, args.report)
        print(f"bitnet-onnx analyze: report written to {index}", file=sys.stderr)
    print(json.dumps(analysis.to_json(), indent=2) if args.json else analysis.summary())
    if not met:
        written = "the analysis above is that of the best plan found"
        print(_objective_missed("analyze", manager, written), file=sys.stderr)
        return EXIT_GOAL_MISSED
    return EXIT_OK


def _describe(name: str, value: np.ndarray) -> str:
    text = f"{name}: {value.dtype} {list(value.shape)}"
    if value.size and (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
        v = value.astype(np.float64)
        text += f"  min {v.min():.6g}  max {v.max():.6g}  mean {v.mean():.6g}  std {v.std():.6g}"
    return text


def _cmd_run(args: argparse.Namespace) -> int:
    feeds = _feeds(args.model, args.inputs, args.dim)
    if args.profile:
        outputs, times = profiling.profile(args.model, feeds, args.threads, args.custom_ops)
    else:
        session = runtime.session(args.model, options=runtime.session_options(args.threads, args.custom_ops))
        runtime.check_feeds(session, feeds)
        names = [o.name for o in session.get_outputs()]
        outputs, times = dict(zip(names, session.run(names, feeds), strict=True)), []
    for name, value in outputs.items():
        print(_describe(name, value))
    if args.save is not None:
        _save_outputs(args.save, outputs)
        print(f"outputs written to {args.save}")
    if args.profile:
        print()
        print(_times_table(times))
    return EXIT_OK


def _save_outputs(path: Path, outputs: dict[str, np.ndarray]) -> None:
    """One array per output name in an .npz, written atomically (temporary file, then rename)."""
    if path.suffix != ".npz":
        raise ConfigError(f"--save {path}: the outputs are saved as .npz; name the file e.g. {path.stem}.npz")
    if not path.parent.is_dir():
        raise ConfigError(f"--save {path}: folder {path.parent} does not exist; create it first")
    with atomic_file(path, "wb") as stream:
        np.savez(stream, **outputs)


def _times_table(times: Sequence) -> str:
    total = sum(t.micros for t in times) or 1
    rows = [
        [
            t.layer,
            t.layer_type or "-",
            t.op or "-",
            str(t.kernels),
            str(t.micros),
            f"{100 * t.micros / total:.1f}",
        ]
        for t in times
    ]
    rows.append(["total", "", "", str(sum(t.kernels for t in times)), str(total), "100.0"])
    return table(["layer", "type", "op", "kernels", "µs", "%"], rows)


def _token_ids(text: str) -> list[int]:
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not comma-separated token ids, e.g. 1,2,3")
    return [int(p) for p in parts]


def _cmd_generate(args: argparse.Namespace) -> int:
    if args.prompt is not None and args.tokenizer is None:
        raise ConfigError("--prompt TEXT needs --tokenizer tokenizer.json (or give ids with --prompt-ids)")
    codec = TextCodec.load(args.tokenizer) if args.tokenizer is not None else None
    ids = args.prompt_ids if args.prompt_ids is not None else codec.encode(args.prompt)
    sampling = Sampling(args.temperature, args.top_k, args.seed)
    model = load_model(args.model).proto  # checked, and read for its interface (external data stays on disk)
    session = runtime.session(args.model, options=runtime.session_options(args.threads, args.custom_ops))
    progress = args.progress or sys.stderr.isatty()
    result = generate(session, ids, args.n, sampling=sampling, model=model, progress=progress)
    print(_generated(result, codec))
    return EXIT_OK


def _generated(result: Generation, codec: TextCodec | None) -> str:
    lines = [f"tokens: {' '.join(map(str, result.tokens))}"]
    if codec is not None:
        lines.append(f"text: {codec.decode(result.tokens)}")
    lines.append(f"prefill: {result.prefill_ms:.2f} ms ({len(result.prompt)} tokens)")
    speed = result.decode_tokens_per_s
    decode = (
        f"{speed:.1f} tokens/s ({len(result.step_ms)} steps)"
        if speed is not None
        else "no decode step (n = 1)"
    )
    lines.append(f"decode: {decode}")
    return "\n".join(lines)


def _cmd_inspect(args: argparse.Namespace) -> int:
    records = read_layers(load_model(args.model).proto)
    if not records:
        raise UnsupportedModelError(
            f"{args.model} has no bitnet.layer annotations: it was not compiled by bitnet-onnx "
            "(compile it with `bitnet-onnx compile`)"
        )
    if args.json:
        print(json.dumps([r.to_json() for r in records], indent=2))
    else:
        print(components_table(records))
    return EXIT_OK


def _cmd_log(args: argparse.Namespace) -> int:
    print(render_table(read_log(args.file), changes=not args.summary))
    return EXIT_OK


def _add_progress(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "--progress", action="store_true", help="show a progress bar even when stderr is not a terminal"
    )


def _add_custom_ops(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "--custom-ops", type=Path, action="append", default=[], metavar="LIB",
        help="a shared library implementing ops of another custom domain the model uses; repeatable",
    )  # fmt: skip


def _add_dim(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "--dim", type=_dim, action="append", default=[], metavar="NAME=N",
        help="a symbolic dim of generated inputs (default batch=1, seq=8); repeatable",
    )  # fmt: skip


def _add_objective(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "--objective", type=_objective, metavar="OBJ",
        help="search the per-layer plan for an objective: memory:0.5 (save at least half the stored bytes, "
        "most accurate such plan), speed:2 (measured twice as fast at batch 1, every output's cosine ≥ 0.99; "
        "speed:2,0.98 sets the floor), accuracy:0.99 (every output's cosine ≥ 0.99, smallest model), "
        "balanced:0.4,0.3,0.3 (weights of memory, speed, accuracy; no target). The search starts from "
        "--config/--strategy when given, else from the model as it is (all F32), measures each layer's "
        "sensitivity on the calibration samples and judges the plan on the --holdout ones",
    )  # fmt: skip
    cmd.add_argument(
        "--allow-slower", action="store_true",
        help="let a memory: or accuracy: plan run slower than the model (by default no layer gets a "
        "choice predicted slower than the model's, and a plan measured slower at batch 1 misses the "
        "objective)",
    )  # fmt: skip
    cmd.add_argument(
        "--workers", type=_count, default=1, metavar="N",
        help="processes measuring the per-layer sensitivity (default 1)",
    )  # fmt: skip


def _add_inputs(cmd: argparse.ArgumentParser, *, validation: str) -> None:
    cmd.add_argument(
        "--inputs", type=Path, metavar="NPZ",
        help="your samples, as numpy.savez writes a batch: one array per model input, the samples along "
        "the leading (batch) axis; or keys <input>__0, <input>__1, ... for batches of different shapes. "
        f"{validation} (default: 4 generated batches)",
    )  # fmt: skip
    cmd.add_argument(
        "--holdout", type=_holdout, metavar="N|FRACTION",
        help="the samples of --inputs held out to check the plan on, never used to choose it: a count, or "
        "a fraction of the samples (default 0.25, at least one; whole batches with <input>__<i> keys)",
    )  # fmt: skip


def _add_compile(sub: argparse._SubParsersAction) -> None:
    cmd = sub.add_parser(
        "compile",
        help="compile an ONNX model to mixed precision",
        description="Compile IN to mixed precision and write OUT once it validates. Exit status: 0 done, "
        "2 error (nothing written), 3 written with --no-strict although validation missed its thresholds, "
        "or written with --objective although the objective is not met (the best plan found; the "
        "message names the limiting layers).",
    )
    cmd.add_argument("model", type=Path, metavar="IN", help="the ONNX model (opened read-only)")
    cmd.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="the compiled model")
    how = cmd.add_mutually_exclusive_group()
    how.add_argument(
        "--strategy",
        choices=[s.value for s in MixedPrecisionStrategy if s is not MixedPrecisionStrategy.CUSTOM],
        help="preset (default: balanced)",
    )
    how.add_argument(
        "--config", type=Path, metavar="FILE", help="a YAML or JSON config (starts from its strategy)"
    )
    _add_objective(cmd)
    cmd.add_argument("--log", type=Path, metavar="FILE", help="write the pass log (JSON lines) here")
    _add_inputs(
        cmd,
        validation="Without --objective every sample validates the compile; with it, the search "
        "calibrates on all but the --holdout samples, and the compile is validated on those against the "
        "objective's own threshold",
    )
    _add_dim(cmd)
    cmd.add_argument(
        "--dump-after", action="append", default=[], metavar="PASS",
        help="write the model after PASS to OUT's stem + .dump/NNN_PASS.onnx; repeatable",
    )  # fmt: skip
    cmd.add_argument(
        "--no-strict", action="store_true",
        help="write the model and the report even when validation misses the strategy's thresholds "
        "(implied by --objective, which writes the best plan found and OUT.config.yaml, a config "
        "reproducing it, and exits 3 when the objective is not met)",
    )  # fmt: skip
    cmd.add_argument(
        "--memory-budget", type=_byte_size, metavar="SIZE", help="bytes the weights may take, e.g. 64MiB"
    )
    cmd.add_argument(
        "--no-kernel-timing", action="store_true",
        help="pick kernels by fixed preference instead of timing them on this machine",
    )  # fmt: skip
    _add_progress(cmd)
    _add_custom_ops(cmd)
    cmd.set_defaults(run=_cmd_compile)


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number ≥ 1")
    return int(text)


def _add_analyze(sub: argparse._SubParsersAction) -> None:
    cmd = sub.add_parser(
        "analyze",
        help="what a precision plan does to a model: bytes, speed, accuracy, per-layer sensitivity",
        description="Compile MODEL in a temporary folder and report the stored bytes before and after (per "
        "layer and per layer type), the estimated (cost model) and measured (onnxruntime) speedup, the "
        "outputs' error against the original and each layer's sensitivity at its precision. The latency "
        "table of this CPU is measured once (about 10 s) and cached. With --objective, the plan analyzed is "
        "the one the search found. Exit status: 0 done, 2 error, 3 the objective is not met (the analysis "
        "of the best plan found is still printed and written).",
    )
    cmd.add_argument("model", type=Path, metavar="MODEL", help="the ONNX model (opened read-only)")
    how = cmd.add_mutually_exclusive_group()
    how.add_argument(
        "--strategy",
        choices=[s.value for s in MixedPrecisionStrategy if s is not MixedPrecisionStrategy.CUSTOM],
        help="preset (default: balanced)",
    )
    how.add_argument("--config", type=Path, metavar="FILE", help="a YAML or JSON config")
    _add_inputs(
        cmd,
        validation="The sensitivity is measured on all but the --holdout samples, the outputs compared on "
        "those",
    )
    _add_dim(cmd)
    cmd.add_argument(
        "--report", type=Path, metavar="DIR", help="write the HTML report and its PNG charts into DIR"
    )
    cmd.add_argument("--json", action="store_true", help="print the analysis as JSON instead of a table")
    _add_objective(cmd)
    cmd.set_defaults(run=_cmd_analyze)


def _add_run(sub: argparse._SubParsersAction) -> None:
    cmd = sub.add_parser(
        "run",
        help="run a (compiled) model in onnxruntime and print its outputs",
        description="Run MODEL in onnxruntime with the bitnet ops registered and print each output's type, "
        "shape and statistics (min, max, mean, std); --save writes the outputs themselves. The inputs are "
        "checked against the model first (every missing, unknown or mistyped array is named).",
    )
    cmd.add_argument("model", type=Path, metavar="MODEL", help="the ONNX model to run (compiled or not)")
    cmd.add_argument(
        "--inputs", type=Path, metavar="NPZ",
        help="one array per model input, by input name (default: generated from the input specs)",
    )  # fmt: skip
    _add_dim(cmd)
    cmd.add_argument("--threads", type=int, metavar="N", help="intra-op threads (default: onnxruntime's)")
    cmd.add_argument(
        "--profile", action="store_true",
        help="time each layer with onnxruntime's profiler and print the table",
    )  # fmt: skip
    cmd.add_argument(
        "--save", type=Path, metavar="OUT.npz",
        help="write the outputs to OUT.npz, one array per output name (numpy.load reads it)",
    )  # fmt: skip
    _add_custom_ops(cmd)
    cmd.set_defaults(run=_cmd_run)


def _add_generate(sub: argparse._SubParsersAction) -> None:
    cmd = sub.add_parser(
        "generate",
        help="generate tokens with a decoder's KV cache (fp32 or compiled) and time prefill and decode",
        description="Generate N tokens after a prompt with MODEL, a decoder with past/present KV-cache "
        "inputs and outputs (fp32, or compiled by bitnet-onnx): the prompt in one prefill call, then one "
        "call per token. Prints the tokens (and the text with --tokenizer), the prefill time and the decode "
        "speed.",
    )
    cmd.add_argument(
        "model", type=Path, metavar="MODEL",
        help="a decoder with past/present KV-cache inputs and outputs (fp32, or compiled by bitnet-onnx)",
    )  # fmt: skip
    prompt = cmd.add_mutually_exclusive_group(required=True)
    prompt.add_argument(
        "--prompt-ids", type=_token_ids, metavar="IDS", help="the prompt's token ids, e.g. 1,2,3"
    )
    prompt.add_argument("--prompt", metavar="TEXT", help="the prompt as text (needs --tokenizer)")
    cmd.add_argument(
        "--tokenizer", type=Path, metavar="FILE",
        help="a tokenizer.json: encodes --prompt and decodes the tokens (needs the text extra: "
        "pip install 'bitnet-onnx[text]')",
    )  # fmt: skip
    cmd.add_argument("-n", type=_count, required=True, metavar="N", help="tokens to generate")
    cmd.add_argument("--threads", type=int, metavar="T", help="intra-op threads (default: onnxruntime's)")
    cmd.add_argument(
        "--temperature", type=float, default=0.0,
        help="sample from softmax(logits / T); 0 (default) picks the argmax (greedy)",
    )  # fmt: skip
    cmd.add_argument("--top-k", type=int, metavar="K", help="sample among the K most likely tokens only")
    cmd.add_argument("--seed", type=int, help="seed of the sampling (the same seed draws the same tokens)")
    _add_progress(cmd)
    _add_custom_ops(cmd)
    cmd.set_defaults(run=_cmd_generate)


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    cmd = sub.add_parser(
        "inspect",
        help="per-layer precisions, ops and rules of a compiled model",
        description="Read what the compiler stamped on a compiled model's nodes and print, for each layer "
        "in model order (the order of compile's table) and each of its components, the precision, the "
        "layout knobs (group size, zero points, per-channel scale, ternary packing, ...), the conversion "
        "strategy and the rule that decided it, with the op that computes the layer.",
    )
    cmd.add_argument("model", type=Path, metavar="MODEL", help="a model written by bitnet-onnx compile")
    cmd.add_argument(
        "--json", action="store_true",
        help="print a JSON list, one record per layer with one entry per component",
    )  # fmt: skip
    cmd.set_defaults(run=_cmd_inspect)


def _add_log(sub: argparse._SubParsersAction) -> None:
    cmd = sub.add_parser(
        "log",
        help="a pass log as a readable table",
        description="Print a pass log (compile --log FILE: one JSON line per pass) as a table: per pass its "
        "time, node counts, bytes, changes and warnings, then each pass's changes (layer, action, "
        "component, precision, source) and its warnings in full.",
    )
    cmd.add_argument("file", type=Path, metavar="FILE", help="the JSON-lines log written by compile --log")
    cmd.add_argument("--summary", action="store_true", help="one row per pass, without the changes")
    cmd.set_defaults(run=_cmd_log)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bitnet-onnx",
        description="Compile ONNX models to BitNet-style mixed precision and run them in onnxruntime.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-v", "--verbose", action="store_true", help="log one line per pass")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = sub.add_parser(
        "info",
        help="op library, onnxruntime version, CPU features and kernel paths",
        description="Print the path of the bitnet op library (for other onnxruntime bindings), whether it "
        "loads, the onnxruntime version, this CPU's features and the kernel path each op takes here. "
        "Exit status 2 when the library does not load.",
    )
    info.set_defaults(run=_cmd_info)

    bench = sub.add_parser(
        "bench",
        help="benchmarks (bench kernels|compiler|decode|peers --help for options)",
        description="Run a benchmark suite and print its table: kernels (our ops against onnxruntime's own "
        "matmuls), compiler (compile time, peak memory, size and latency of a ~100M-parameter decoder), "
        "decode (token-by-token decoding with a KV cache against onnxruntime's own 4-, 2- and 8-bit) or "
        "peers (your float model and inputs: size, held-out accuracy and latency of onnxruntime's own "
        "quantizers against our presets and --objective plans). "
        "`bitnet-onnx bench SUITE --help` lists the suite's options.",
    )
    bench.add_argument("suite", choices=["kernels", "compiler", "decode", "peers"], help="the suite to run")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="options passed to the suite")
    bench.set_defaults(run=_cmd_bench)

    for add in (_add_compile, _add_analyze, _add_run, _add_generate, _add_inspect, _add_log):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        with speaking_to(Interface.CLI):
            return run(args)
    except MixedPrecisionError as exc:
        if args.debug:
            logger.exception("%s failed", args.command)
        print(f"bitnet-onnx {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"bitnet-onnx {args.command}: interrupted; no output was written", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error of ours. Point stdout at devnull so
        # the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
