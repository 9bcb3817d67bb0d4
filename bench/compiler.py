"""Compiler benchmark: compile a LLaMA decoder and its exactly-ternary twin and measure TARGETS.md's
"Compiler" rows, in one run.

1. Models. `python -m models.build llama --preset SIZE` (fp32, random N(0, 0.02²) weights; `small`
   is the ~100M-parameter decoder) and the same with `--weights ternary` (every matrix exactly
   {−1, 0, +1} × one scale). They are built once into --cache-dir and reused; the folder name carries
   a hash of the builder's sources, so a changed builder builds again. Models past protobuf's 2 GB
   (`1b`) are saved with external data. The builders live in the
   repository's `models/`, so the command runs from a checkout.
2. Compile. Each (model, config) compiles twice, each time in a fresh Python process running
   `bitnet_onnx.compile(model, config, output=..., strict=False)` (ternarizing random weights
   misses balanced's thresholds by design; the figures say by how much). Time: compile()'s wall
   time in the child (interpreter start and imports excluded), the faster of the two. Peak RSS:
   the child's ru_maxrss (`os.wait4`, imports included), the larger of the two, also as a multiple
   of the fp32 file's size. Size: the written file (and its `.data`) against the fp32 file.
   Determinism: the two outputs compared byte for byte.
3. Latency. The fp32 original and each compiled fp32 model in this process (onnxruntime CPU with
   the bitnet ops), batch 1, each --seqs length and --threads count. The sessions of one thread
   count take turns in rounds of 5 runs, so a noisy neighbour slows them alike; each figure is the
   median of --runs runs after --warmup. ×faster = the fp32 time / the compiled time.
4. Accuracy. Cosine and max abs error of each compiled model's outputs against its original's on
   one batch-1 input of the longest --seqs length (`bitnet_onnx.config.report.compare_outputs`).
   The exactly-ternary twin's balanced logits cosine (TARGETS.md goal 0.9999) is held back by the
   per-token int8 activations that BitNet b1.58 computes with, not by the compile: on the small
   decoder at seq 32 it is 0.99928 with balanced, 0.99934 with ternary linears and int8
   activations and everything else F32 (so F16 islands and the I8 lm_head cost 0.00006), and
   1.000000 (max abs 6e-6) with ternary linears and float32 activations (the weights are exact).
   Measured (AMD EPYC Zen 5, 2 cores) with `--sizes small --seqs 32 --threads 1 --configs
   balanced,i8.yaml,f32.yaml`, i8.yaml = `{version: 1, strategy: custom, default_precision: F32,
   layer_types: {linear: {precision: BITNET158, components: {activations: I8}}}}` and f32.yaml the
   same with `linear: BITNET158`.
5. --profile: kernel time per layer type of each compiled fp32 model (onnxruntime's profiler, one
   thread, --runs runs of which the first is dropped), as ms per run and share of the total.
6. Trained BitNet. The committed BitNet b1.58 LM trained with quantization-aware training
   (models/fixtures/qat, `models.bitnet_fixture`) compiled in this process with each config: the
   perplexity on its held-out text of what it was trained to compute (the QAT forward's logits),
   of the exact semantics in float32 onnxruntime, and of the compiled model; the compiled logits'
   mean |Δ| against the trained ones. tests/e2e/test_trained_bitnet.py holds balanced to 0.1 %.

The run ends with the TARGETS.md "Compiler" rows: each value with its minimum and goal.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from bitnet_onnx import runtime
from bitnet_onnx.compiler.compile import compile, resolve_config
from bitnet_onnx.config.report import compare_outputs
from bitnet_onnx.core.errors import ConfigError, MixedPrecisionError
from bitnet_onnx.core.files import atomic_file
from bitnet_onnx.passes._graph import load_model
from bitnet_onnx.runtime.profiling import NO_LAYER, layer_times
from bitnet_onnx.runtime.sample_inputs import sample_inputs
from bitnet_onnx.runtime.timing import run_times
from models import bitnet_fixture, llama

__all__ = ["Compiled", "Latency", "TrainedPerplexity", "main"]

logger = logging.getLogger(__name__)

_MIB = 1 << 20
_RUNS_PER_ROUND = 5
_WEIGHTS = {"fp32": "random", "ternary": "ternary"}
_REPO = Path(__file__).resolve().parents[1]
_CHILD = (
    f"import sys; sys.path.insert(0, {str(_REPO)!r}); "
    "from bench.compiler import compile_child; compile_child(sys.argv[1:])"
)


@dataclass(frozen=True)
class Compiled:
    """Two compiles of one model with one config (section 2 of the module docstring)."""

    model: str  # "fp32" or "ternary"
    config: str
    input_bytes: int
    output_bytes: int
    seconds: tuple[float, ...]
    peak_rss: tuple[int, ...]
    identical: bool
    path: str = field(repr=False)

    @property
    def rss_ratio(self) -> float:
        return max(self.peak_rss) / self.input_bytes

    @property
    def compression(self) -> float:
        return self.input_bytes / self.output_bytes


@dataclass(frozen=True)
class Latency:
    """Median ms of the fp32 original and of each compiled model at one (seq, threads)."""

    seq: int
    threads: int
    median_ms: Mapping[str, float]
    runs: int


@dataclass(frozen=True)
class Accuracy:
    model: str
    config: str
    output: str
    cosine: float
    max_abs_error: float


@dataclass(frozen=True)
class TrainedPerplexity:
    """The trained BitNet fixture compiled with one config (section 6 of the module docstring)."""

    config: str
    trained: float
    exact: float
    compiled: float
    mean_abs_diff: float
    exact_mean_abs_diff: float

    @property
    def relative(self) -> float:
        """Compiled perplexity / trained perplexity − 1."""
        return self.compiled / self.trained - 1


@dataclass(frozen=True)
class LayerTypeTime:
    config: str
    seq: int
    layer_type: str
    op: str
    ms: float
    share: float


# -- 1. models ---------------------------------------------------------------------------------------


def _builder_hash() -> str:
    sources = sorted((_REPO / "models").glob("*.py"))
    digest = hashlib.sha256()
    for source in sources:
        digest.update(source.name.encode() + source.read_bytes())
    return digest.hexdigest()[:12]


def _model(size: str, kind: str, cache: Path) -> Path:
    """The fp32 or ternary decoder of `size`, built into `cache` unless it is there already."""
    if not (_REPO / "models" / "build.py").is_file():
        raise ConfigError(
            f"the model builders (models/build.py) are not next to {_REPO / 'bitnet_onnx'}; run the "
            "benchmark from a checkout of the repository"
        )
    folder = cache / f"llama_{size}_{kind}_{_builder_hash()}"
    path = folder / "model.onnx"
    if path.is_file():
        logger.info("reusing %s", path)
        return path
    partial = cache / f"{folder.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    command = [sys.executable, "-m", "models.build", "llama", "--preset", size, "--weights", _WEIGHTS[kind]]
    if _needs_external_data(size):
        command.append("--external-data")
    logger.info("building %s", path)
    done = subprocess.run(
        [*command, "-o", str(partial / path.name)], cwd=_REPO, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise ConfigError(f"building the {size} {kind} decoder failed:\n{done.stderr.strip()}")
    os.replace(partial, folder)  # the model and its data file appear together
    return path


def _needs_external_data(size: str) -> bool:
    """Whether the fp32 decoder of `size` is past what one protobuf message holds (2 GB)."""
    return llama.LlamaConfig.preset(size).num_parameters * 4 >= 2**31


def _file_bytes(path: Path) -> int:
    data = path.with_name(f"{path.name}.data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


# -- 2. compiles in child processes ------------------------------------------------------------------


def compile_child(argv: Sequence[str]) -> None:
    """The child's side of section 2: compile argv = [model, output, config]; print one JSON line."""
    model, output, config = argv
    start = time.perf_counter()
    result = compile(model, config, output=output, strict=False)
    seconds = time.perf_counter() - start
    cosines = {m.name: m.cosine for m in result.report.outputs}
    print(json.dumps({"seconds": seconds, "cosines": cosines}))


def _compile_once(model: Path, output: Path, config: str) -> tuple[float, int]:
    """(compile() seconds, the child's peak RSS in bytes)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(model), str(output), config], stdout=out, stderr=err
        )
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if child.returncode != 0:
            raise ConfigError(
                f"compiling {model.name} with {config} failed (exit {child.returncode}):\n"
                + err.read().decode(errors="replace").strip()
            )
        report = json.loads(out.read().decode().strip().splitlines()[-1])
    return float(report["seconds"]), int(usage.ru_maxrss) * 1024  # Linux: ru_maxrss in KiB


def _compile(model: Path, kind: str, config: str, folder: Path) -> Compiled:
    label = _label(config)
    outputs = [folder / f"{kind}.{label}.{i}.onnx" for i in (1, 2)]
    runs = [_compile_once(model, out, config) for out in outputs]
    identical = all(_read(outputs[0], suffix) == _read(outputs[1], suffix) for suffix in ("", ".data"))
    compiled = Compiled(
        model=kind,
        config=label,
        input_bytes=_file_bytes(model),
        output_bytes=_file_bytes(outputs[0]),
        seconds=tuple(s for s, _ in runs),
        peak_rss=tuple(r for _, r in runs),
        identical=identical,
        path=str(outputs[0]),
    )
    logger.info("%s %s: %s", kind, label, compiled)
    return compiled


def _read(path: Path, suffix: str) -> bytes | None:
    target = path.with_name(path.name + suffix)
    return target.read_bytes() if target.exists() else None


def _label(config: str) -> str:
    return Path(config).stem if Path(config).suffix else config


# -- 3./4./5. running the models ---------------------------------------------------------------------


def _session(path: str | Path, threads: int, profile_prefix: str | None = None) -> ort.InferenceSession:
    options = runtime.session_options(threads)
    options.log_severity_level = 3  # errors only
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return runtime.session(str(path), options=options)


def _feeds(path: Path, seq: int) -> dict[str, np.ndarray]:
    return sample_inputs(load_model(path).proto, dims={"batch": 1, "seq": seq}, seed=0)


def _timed(session: ort.InferenceSession, feeds: Mapping[str, np.ndarray], runs: int) -> list[float]:
    return run_times(partial(session.run, None, dict(feeds)), runs=runs)


def _latencies(
    original: Path, compiled: Sequence[Compiled], seqs: Sequence[int], threads: Sequence[int], runs: int,
    warmup: int,
) -> list[Latency]:  # fmt: skip
    paths = {"fp32": str(original), **{c.config: c.path for c in compiled}}
    feeds = {seq: _feeds(original, seq) for seq in seqs}
    results = []
    for t in threads:
        sessions = {name: _session(path, t) for name, path in paths.items()}
        for seq in seqs:
            samples: dict[str, list[float]] = {name: [] for name in sessions}
            for session in sessions.values():
                _timed(session, feeds[seq], warmup)
            rounds = -(-runs // _RUNS_PER_ROUND)
            for _ in range(rounds):
                for name, session in sessions.items():
                    samples[name] += _timed(session, feeds[seq], _RUNS_PER_ROUND)
            medians = {name: statistics.median(s) * 1e3 for name, s in samples.items()}
            results.append(Latency(seq, t, medians, rounds * _RUNS_PER_ROUND))
            logger.info("latency seq %d T%d: %s", seq, t, medians)
        del sessions
    return results


def _accuracy(original: Path, compiled: Sequence[Compiled], seq: int) -> list[Accuracy]:
    feeds = _feeds(original, seq)
    reference = _session(original, threads=2)
    names = [o.name for o in reference.get_outputs()]
    expected = dict(zip(names, reference.run(names, feeds), strict=True))
    del reference
    results = []
    for c in compiled:
        actual = _session(c.path, threads=2).run(names, feeds)
        for name, got in zip(names, actual, strict=True):
            m = compare_outputs(name, expected[name], got)
            results.append(Accuracy(c.model, c.config, name, m.cosine, m.max_abs_error))
    return results


def _trained_bitnet(configs: Sequence[str], folder: Path) -> list[TrainedPerplexity]:
    """Section 6: the trained BitNet fixture compiled with each config."""
    model, ref = bitnet_fixture.load()

    def logits(source: onnx.ModelProto | Path) -> np.ndarray:
        return runtime.session(source, threads=2).run(["logits"], {"input_ids": ref.input_ids})[0]

    exact = logits(bitnet_fixture.exact_semantics(model))
    results = []
    for config in configs:
        out = folder / f"bitnet_qat.{_label(config)}.onnx"
        compile(model, config, output=out, strict=False)  # validation compares with the latent weights
        got = logits(out)
        results.append(
            TrainedPerplexity(
                _label(config),
                bitnet_fixture.perplexity(ref.logits, ref.input_ids),
                bitnet_fixture.perplexity(exact, ref.input_ids),
                bitnet_fixture.perplexity(got, ref.input_ids),
                bitnet_fixture.mean_abs_diff(got, ref.logits),
                bitnet_fixture.mean_abs_diff(exact, ref.logits),
            )
        )
    return results


def _profile(compiled: Compiled, seq: int, runs: int, feeds: Mapping[str, np.ndarray]) -> list[LayerTypeTime]:
    with tempfile.TemporaryDirectory(prefix="bitnet-onnx-bench-") as folder:
        session = _session(compiled.path, 1, str(Path(folder) / "profile"))
        for _ in range(runs + 1):
            session.run(None, dict(feeds))
        events = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
    model = onnx.load(compiled.path, load_external_data=False)
    # One total per run and key; the first run (allocations) is dropped, and the median over the
    # others keeps a run slowed by a neighbour from skewing the shares.
    windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[1:]
    per_run: list[dict[tuple[str, str], float]] = []
    for start, end in windows:
        totals: dict[tuple[str, str], float] = {}
        for row in layer_times([e for e in events if start <= e.get("ts", -1) <= end], model):
            key = (row.layer_type or row.layer, row.op) if row.layer != NO_LAYER else (NO_LAYER, row.op)
            totals[key] = totals.get(key, 0.0) + row.micros / 1e3
        per_run.append(totals)
    keys = dict.fromkeys(k for totals in per_run for k in totals)
    medians = {k: statistics.median(t.get(k, 0.0) for t in per_run) for k in keys}
    whole = sum(medians.values()) or 1.0
    return [
        LayerTypeTime(compiled.config, seq, kind, op, ms, ms / whole)
        for (kind, op), ms in sorted(medians.items(), key=lambda item: -item[1])
    ]


# -- targets -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    label: str
    value: float | None
    text: str
    minimum: float
    goal: float
    higher_is_better: bool

    def verdict(self) -> str:
        if self.value is None:
            return "not measured"
        sign = 1 if self.higher_is_better else -1
        if sign * self.value >= sign * self.goal:
            return "goal met"
        return "minimum met" if sign * self.value >= sign * self.minimum else "MISSED"


def _target_rows(
    compiled: Sequence[Compiled], latencies: Sequence[Latency], accuracy: Sequence[Accuracy]
) -> list[_Row]:
    rows = []
    for c in compiled:
        name = f"{c.model} {c.config}"
        rows.append(_Row(f"compile time, {name}", min(c.seconds), f"{min(c.seconds):.1f} s", 60, 15, False))
        rows.append(
            _Row(f"peak RSS / fp32 file, {name}", c.rss_ratio, f"{c.rss_ratio:.2f}×", 3.0, 1.5, False)
        )
        rows.append(_Row(f"compiling twice, {name}", float(c.identical), "identical" if c.identical
                         else "DIFFERENT", 1, 1, True))  # fmt: skip
    for c in compiled:
        if c.config == "balanced" and c.model == "fp32":
            rows.append(
                _Row("balanced file size vs fp32", c.compression, f"1/{c.compression:.2f}", 6, 10, True)
            )
    for lat in latencies:
        if lat.threads == 1 and "balanced" in lat.median_ms:
            speedup = lat.median_ms["fp32"] / lat.median_ms["balanced"]
            label = f"balanced latency vs fp32, T1, seq {lat.seq}"
            rows.append(_Row(label, speedup, f"{speedup:.2f}× faster", 4, 8, True))
    for a in accuracy:
        if a.model == "ternary" and a.config == "balanced":
            rows.append(
                _Row(f"ternary balanced cosine, {a.output}", a.cosine, f"{a.cosine:.6f}", 0.999, 0.9999, True)
            )
    return rows


def _report(
    size: str,
    compiled: Sequence[Compiled],
    latencies: Sequence[Latency],
    accuracy: Sequence[Accuracy],
    profile: Sequence[LayerTypeTime],
) -> str:
    lines = [
        f"llama {size}: onnxruntime {ort.__version__}, bitnet ISA path {runtime.dispatch_isa().value}, "
        f"{os.cpu_count()} CPUs",
        "",
        "compile (fresh process each; time = compile() wall, the faster of 2; RSS = peak of the process, "
        "the larger of 2)",
        f"  {'model':<8}{'config':<14}{'time s':>14}{'peak RSS MiB':>16}{'×fp32 file':>12}"
        f"{'file MiB':>10}{'fp32/file':>11}  twice",
    ]
    for c in compiled:
        times = " / ".join(f"{s:.1f}" for s in c.seconds)
        rss = " / ".join(f"{r / _MIB:.0f}" for r in c.peak_rss)
        twice = "identical" if c.identical else "DIFFERENT"
        lines.append(
            f"  {c.model:<8}{c.config:<14}{times:>14}{rss:>16}{c.rss_ratio:>12.2f}"
            f"{c.output_bytes / _MIB:>10.1f}{c.compression:>11.2f}  {twice}"
        )
    if compiled:
        lines.append(f"  fp32 file: {compiled[0].input_bytes / _MIB:.1f} MiB")
    if latencies:
        names = list(latencies[0].median_ms)
        lines += [
            "",
            f"latency at batch 1, ms (median of {latencies[0].runs} runs, sessions in turns); "
            "×faster vs fp32",
            f"  {'seq':>5}{'threads':>9}"
            + "".join(f"{n:>14}" for n in names)
            + "".join(f"{'×' + n:>14}" for n in names[1:]),
        ]
        for lat in latencies:
            ms = lat.median_ms
            lines.append(
                f"  {lat.seq:>5}{lat.threads:>9}"
                + "".join(f"{ms[n]:>14.2f}" for n in names)
                + "".join(f"{ms['fp32'] / ms[n]:>14.2f}" for n in names[1:])
            )
    if accuracy:
        lines += ["", "outputs vs the original (batch 1, the longest seq)"]
        for a in accuracy:
            lines.append(
                f"  {a.model:<8}{a.config:<14}{a.output:<12} cosine {a.cosine:.6f}  "
                f"max abs {a.max_abs_error:.4g}"
            )
    if profile:
        lines += ["", "kernel time per layer type (T1, onnxruntime profiler; ms per run)"]
        for key in dict.fromkeys((p.config, p.seq) for p in profile):
            lines.append(f"  {key[0]}, seq {key[1]}:")
            for p in profile:
                if (p.config, p.seq) == key and p.share >= 0.005:
                    lines.append(f"    {p.layer_type:<16}{p.op[:56]:<58}{p.ms:>8.3f}{p.share:>8.1%}")
    rows = _target_rows(compiled, latencies, accuracy)
    if rows:
        lines += ["", "TARGETS.md, Compiler:"]
        for row in rows:
            bounds = (
                ""
                if row.label.startswith("compiling twice")
                else f"min {row.minimum:<6g} goal {row.goal:<6g}"
            )
            lines.append(f"  {row.label:<52}{row.text:>16}  {bounds:<24}{row.verdict()}")
    return "\n".join(lines)


def _trained_report(results: Sequence[TrainedPerplexity]) -> str:
    width = max([14, *(len(r.config) + 2 for r in results)])
    lines = [
        "trained BitNet b1.58 LM (models/fixtures/qat; held-out text): perplexity trained-as vs compiled",
        f"  {'config':<{width}}{'trained':>10}{'exact':>10}{'compiled':>10}{'vs trained':>12}"
        f"{'mean|Δlogits|':>15}{'exact':>10}",
    ]
    for r in results:
        lines.append(
            f"  {r.config:<{width}}{r.trained:>10.4f}{r.exact:>10.4f}{r.compiled:>10.4f}"
            f"{r.relative:>+12.3%}{r.mean_abs_diff:>15.4g}{r.exact_mean_abs_diff:>10.4g}"
        )
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------------------------


def suite_parser(suite: str, doc: str | None) -> argparse.ArgumentParser:
    """The options every decoder benchmark takes: the presets (--sizes) and where models are kept."""
    parser = argparse.ArgumentParser(
        prog=f"bitnet-onnx bench {suite}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sizes", default="small", help="llama presets, comma-separated (tiny, small, 1b)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bitnet-onnx" / "bench",
        help="where the built models are kept (default: %(default)s)",
    )
    return parser


def _parser() -> argparse.ArgumentParser:
    parser = suite_parser("compiler", __doc__)
    parser.add_argument(
        "--configs",
        default="balanced",
        help="strategies or config files to compile with, comma-separated (default: %(default)s)",
    )
    parser.add_argument("--seqs", default="1,32", help="token counts at batch 1, comma-separated")
    parser.add_argument("--threads", default="1,2", help="intra-op thread counts, comma-separated")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per latency (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    parser.add_argument("--profile", action="store_true", help="also time each compiled model per layer type")
    parser.add_argument("--quick", action="store_true", help="smoke run: 5 runs, 1 warm-up, seq 1, 1 thread")
    parser.add_argument("--json", metavar="FILE", help="also write every measurement as JSON")
    return parser


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(item) for item in text.split(",") if item]
    except ValueError:
        raise ConfigError(f"--{what} {text!r} is not a comma-separated list of integers") from None
    if not values or any(v < 1 for v in values):
        raise ConfigError(f"--{what} {text!r}: give positive integers, e.g. 1,32")
    return values


def _run_size(size: str, configs: Sequence[str], args: argparse.Namespace, seqs: list[int],
              threads: list[int], runs: int, warmup: int) -> tuple[str, dict[str, object]]:  # fmt: skip
    models = {kind: _model(size, kind, args.cache_dir) for kind in _WEIGHTS}
    with tempfile.TemporaryDirectory(prefix="bitnet-onnx-bench-") as folder:
        compiled = [
            _compile(models[kind], kind, config, Path(folder)) for kind in models for config in configs
        ]
        fp32 = [c for c in compiled if c.model == "fp32"]
        latencies = _latencies(models["fp32"], fp32, seqs, threads, runs, warmup)
        accuracy = [
            a
            for kind, path in models.items()
            for a in _accuracy(path, [c for c in compiled if c.model == kind], max(seqs))
        ]
        profile = []
        if args.profile:
            for seq in seqs:
                feeds = _feeds(models["fp32"], seq)
                for c in fp32:
                    profile += _profile(c, seq, max(runs, 2), feeds)
    text = _report(size, compiled, latencies, accuracy, profile)
    record = {
        "compiled": [{**asdict(c), "rss_ratio": c.rss_ratio, "compression": c.compression} for c in compiled],
        "latency": [asdict(lat) for lat in latencies],
        "accuracy": [asdict(a) for a in accuracy],
        "profile": [asdict(p) for p in profile],
    }
    return text, record


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the tables; returns the exit code."""
    args = _parser().parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    configs = [c for c in args.configs.split(",") if c]
    seqs, threads = _ints(args.seqs, "seqs"), _ints(args.threads, "threads")
    runs, warmup = (5, 1) if args.quick else (args.runs, args.warmup)
    if args.quick:
        seqs, threads = seqs[:1], threads[:1]
    if runs < 1 or warmup < 0:
        raise ConfigError("--runs must be positive and --warmup not negative")
    if not sizes or not configs:
        raise ConfigError("--sizes and --configs need at least one entry")

    for config in configs:
        resolve_config(config)  # a wrong name or file fails now, not after the models are built
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    records: dict[str, object] = {}
    for size in sizes:
        text, records[size] = _run_size(size, configs, args, seqs, threads, runs, warmup)
        print(text)
    with tempfile.TemporaryDirectory(prefix="bitnet-onnx-bench-") as folder:
        trained = _trained_bitnet(configs, Path(folder))
    print(f"\n{_trained_report(trained)}")
    records["bitnet_qat"] = [{**asdict(t), "relative": t.relative} for t in trained]
    if args.json:
        with atomic_file(args.json, "w", encoding="utf-8") as stream:
            json.dump(records, stream, indent=1)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MixedPrecisionError as exc:
        print(f"bench compiler: error: {exc}", file=sys.stderr)
        sys.exit(2)
