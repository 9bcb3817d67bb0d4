"""Peers benchmark: a float model and the user's own inputs, ours against onnxruntime's own quantizers,
in one run (issue 12 item 6, TARGETS.md "Float models").

    bitnet-onnx bench peers MODEL --inputs NPZ [--holdout 0.25] [--objectives accuracy:0.99]

1. Samples. --inputs takes what `compile --inputs` takes (samples along the leading axis as
   `numpy.savez` writes them, or `<input>__<i>` batches); the last --holdout samples (default 25 %)
   are held out exactly as `compile --objective` holds them out, the others calibrate.
2. Contenders, each made from MODEL in this process: fp32; onnxruntime's `quantize_dynamic` int8
   per tensor and per channel; `MatMulNBitsQuantizer` 4-bit RTN with blocks of 32 and 128
   (symmetric, accuracy_level 4: int8 activations, its fastest CPU path; MatMul and the embedding
   Gathers, as quantize_dynamic quantizes both) and 4-bit HQQ with the same blocks (MatMul only:
   onnxruntime quantizes no Gather with HQQ; HQQ needs torch, without it those rows are skipped
   and say why); ours: each
   --presets strategy compiled (validated on the calibration samples), and each --objectives plan
   searched on the calibration samples and compiled, validated on the held-out ones.
3. Size: the bytes of the model file and its external data, in MiB.
4. Held-out accuracy, per output: the cosine between the contender's and fp32's output for each
   held-out sample (a row of the output's leading axis), mean and min over samples. For a language
   model given token inputs (an `input_ids` input and a 3-D float output of next-token logits),
   that output's perplexity on the held-out tokens (mask-weighted) instead, fp32's included.
5. Latency at --threads (default 1) for each --batches size (default 1 and 16): a batch of that
   many held-out samples (repeated when there are fewer); --rounds rounds in which every contender
   runs --runs calls of each batch in turn (interleaved, so a noisy neighbour slows all alike);
   the median call in ms.
6. Verdict (TARGETS.md): each of ours against the best onnxruntime tool at its accuracy: among the
   onnxruntime contenders at least as accurate as its floor (an accuracy objective's; a preset's
   own held-out accuracy), the smallest (ties: the fastest at the first batch size). Ours
   Pareto-dominates it when no less accurate on every output, no larger and no slower at every
   batch size; the goal is 1.5× smaller and 1.5× faster at every batch size (ratios ≤ 0.67).
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import logging
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.matmul_nbits_quantizer import (
    DefaultWeightOnlyQuantConfig,
    HQQWeightOnlyQuantConfig,
    MatMulNBitsQuantizer,
)

from bench.compiler import _ints
from bench.decode import _choices
from bitnet_onnx import runtime
from bitnet_onnx.api.precision_manager import PrecisionManager
from bitnet_onnx.compiler.compile import compile
from bitnet_onnx.core._text import table
from bitnet_onnx.core.errors import ConfigError, MixedPrecisionError
from bitnet_onnx.core.files import atomic_file
from bitnet_onnx.optimize.calibration import DEFAULT_HOLDOUT, Calibration
from bitnet_onnx.optimize.cost_model import CostModel, LatencyTable
from bitnet_onnx.optimize.objectives import Accuracy, OptimizationObjective, validation_thresholds
from models._onnx import save_model

__all__ = ["Kind", "Measured", "Peer", "Verdict", "main", "peers", "verdicts"]

logger = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray]


class Kind(enum.StrEnum):
    """What made a contender."""

    FP32 = "fp32"
    ORT = "onnxruntime"
    OURS = "bitnet-onnx"


@dataclass(frozen=True)
class Samples:
    """The user's samples and their split (module docstring, 1)."""

    all: Calibration
    calibration: Calibration
    held_out: Calibration
    holdout: int | float


Make = Callable[[Path, Path, Samples], Path]


@dataclass(frozen=True)
class Peer:
    """One contender: `make(fp32 path, folder, samples)` writes its model and returns the path."""

    name: str
    label: str
    kind: Kind
    make: Make
    floor: float | None = None  # the accuracy an objective promised (None: the measured accuracy)


@dataclass(frozen=True)
class Score:
    """One output's held-out accuracy against fp32 (perplexity: this model's own, lower is better)."""

    cosine_mean: float
    cosine_min: float
    perplexity: float | None = None


@dataclass
class Measured:
    """What the run found of one contender (module docstring, 3-5)."""

    name: str
    label: str
    kind: Kind
    bytes: int = 0
    scores: dict[str, Score] = field(default_factory=dict)
    latency_ms: dict[int, float] = field(default_factory=dict)
    floor: float | None = None
    skipped: str | None = None  # why the contender was not made
    note: str = ""  # e.g. an objective's verdict

    @property
    def mib(self) -> float:
        return self.bytes / 2**20

    @property
    def accuracy(self) -> float:
        """The worst output's mean cosine: what a floor is checked against."""
        return min((s.cosine_mean for s in self.scores.values()), default=math.nan)

    def as_accurate_as(self, other: Measured) -> bool:
        """No output worse than `other`'s (perplexity where there is one, else the mean cosine)."""
        for name, mine in self.scores.items():
            theirs = other.scores[name]
            if mine.perplexity is not None and theirs.perplexity is not None:
                if mine.perplexity > theirs.perplexity:
                    return False
            elif mine.cosine_mean < theirs.cosine_mean:
                return False
        return True


# -- contenders ----------------------------------------------------------------------------------


def _fp32(model: Path, folder: Path, samples: Samples) -> Path:
    return model


def _dynamic(per_channel: bool) -> Make:
    def make(model: Path, folder: Path, samples: Samples) -> Path:
        out = folder / f"int8_{'channel' if per_channel else 'tensor'}.onnx"
        large = model.with_name(f"{model.name}.data").exists()
        quantize_dynamic(
            model, out, weight_type=QuantType.QInt8, per_channel=per_channel, use_external_data_format=large
        )
        return out

    return make


_NBITS_OPS = ("MatMul", "Gather")


def _nbits(block: int, hqq: bool) -> Make:
    def make(model: Path, folder: Path, samples: Samples) -> Path:
        if hqq:  # HQQ's float zero points: onnxruntime quantizes no Gather with them
            config = HQQWeightOnlyQuantConfig(block_size=block, bits=4)
        else:  # the embedding tables too (GatherBlockQuantized), as quantize_dynamic does
            config = DefaultWeightOnlyQuantConfig(
                block_size=block, is_symmetric=True, accuracy_level=4, bits=4, op_types_to_quantize=_NBITS_OPS
            )
        quantizer = MatMulNBitsQuantizer(onnx.load(model), algo_config=config)
        quantizer.process()
        out = folder / f"nbits4_{'hqq' if hqq else 'rtn'}_b{block}.onnx"
        save_model(quantizer.model.model, out)
        return out

    return make


def _preset(name: str) -> Make:
    def make(model: Path, folder: Path, samples: Samples) -> Path:
        out = folder / f"ours_{name}.onnx"
        compile(model, name, output=out, inputs=samples.calibration, strict=False)
        return out

    return make


def _objective(objective: OptimizationObjective, notes: dict[str, str]) -> Make:
    def make(model: Path, folder: Path, samples: Samples) -> Path:
        # The search holds out the same samples as the split (compile --objective's way).
        manager = PrecisionManager.from_model(
            model,
            None,
            samples.all,
            holdout=samples.holdout,
            cost_model=CostModel(LatencyTable.for_this_machine()),
        )
        manager.optimize_precision(objective)
        config = manager.to_config()
        out = folder / f"ours_{str(objective).replace(':', '_')}.onnx"
        result = compile(
            model,
            config,
            output=out,
            inputs=manager.holdout,
            strict=False,
            thresholds=validation_thresholds(objective, config.strategy),
        )
        met = manager.last_result.feasible and result.report.goal_met
        notes[str(objective)] = f"objective {'met' if met else 'NOT met'}"
        return out

    return make


def peers(
    presets: Sequence[str], objectives: Sequence[OptimizationObjective]
) -> tuple[list[Peer], dict[str, str]]:
    """Every contender, in table order, and where the objective plans leave their verdicts."""
    notes: dict[str, str] = {}
    found = [
        Peer("fp32", "fp32", Kind.FP32, _fp32),
        Peer("ort-int8-tensor", "ORT quantize_dynamic int8 per-tensor", Kind.ORT, _dynamic(False)),
        Peer("ort-int8-channel", "ORT quantize_dynamic int8 per-channel", Kind.ORT, _dynamic(True)),
    ]
    for algo in ("rtn", "hqq"):
        for block in (32, 128):
            label = f"ORT MatMulNBits 4-bit {algo.upper()} b{block}"
            found.append(Peer(f"ort-4bit-{algo}-b{block}", label, Kind.ORT, _nbits(block, algo == "hqq")))
    found += [Peer(f"ours-{p}", f"bitnet-onnx {p}", Kind.OURS, _preset(p)) for p in presets]
    for objective in objectives:
        floor = objective.min_accuracy if isinstance(objective, Accuracy) else None
        make = _objective(objective, notes)
        found.append(
            Peer(f"ours-{objective}", f"bitnet-onnx --objective {objective}", Kind.OURS, make, floor)
        )
    return found, notes


def _why_not(peer: Peer) -> str | None:
    if "-hqq-" in peer.name:
        try:
            import torch  # noqa: F401  (HQQ quantizes with torch)
        except ImportError:
            return "skipped: HQQ needs torch (pip install torch)"
    return None


# -- measuring -----------------------------------------------------------------------------------


def _bytes(path: Path) -> int:
    data = path.with_name(f"{path.name}.data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = runtime.session_options(threads)
    options.log_severity_level = 3
    return runtime.session(str(path), options=options)


def _outputs(session: ort.InferenceSession, batches: Sequence[Feeds]) -> dict[str, list[np.ndarray]]:
    names = [o.name for o in session.get_outputs()]
    got: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for feeds in batches:
        for name, value in zip(names, session.run(names, dict(feeds)), strict=True):
            got[name].append(value)
    return got


def _cosines(reference: Sequence[np.ndarray], other: Sequence[np.ndarray], rows: Sequence[int]) -> np.ndarray:
    """One cosine per sample (a row of the leading axis when it has the batch's rows, else the
    whole output)."""
    found = []
    for want, got, n in zip(reference, other, rows, strict=True):
        shape = (n, -1) if want.ndim and want.shape[0] == n else (1, -1)
        a, b = want.reshape(shape).astype(np.float64), got.reshape(shape).astype(np.float64)
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        found.append(np.where(norms > 0, (a * b).sum(1) / np.maximum(norms, 1e-300), 1.0))
    return np.concatenate(found)


def _perplexity(logits: Sequence[np.ndarray], batches: Sequence[Feeds]) -> float | None:
    """exp(mean next-token negative log-likelihood) over the unmasked positions, or None when the
    output is not next-token logits over `input_ids`."""
    total, count = 0.0, 0.0
    for value, feeds in zip(logits, batches, strict=True):
        ids = feeds.get("input_ids")
        if ids is None or value.ndim != 3 or value.shape[:2] != ids.shape or ids.shape[1] < 2:
            return None
        if int(ids.max()) >= value.shape[2]:
            return None
        x = value[:, :-1].astype(np.float64)
        top = x.max(-1, keepdims=True)
        log_probs = x - top - np.log(np.exp(x - top).sum(-1, keepdims=True))
        picked = np.take_along_axis(log_probs, ids[:, 1:, None], axis=-1)[..., 0]
        mask = feeds.get("attention_mask", np.ones_like(ids))[:, 1:].astype(np.float64)
        total -= float((picked * mask).sum())
        count += float(mask.sum())
    return math.exp(total / count) if count else None


def _rows(calibration: Calibration) -> list[int]:
    return [next((int(v.shape[0]) for v in b.values() if np.ndim(v)), 1) for b in calibration.batches]


def _timing_batch(held_out: Calibration, size: int) -> Feeds:
    """`size` held-out samples of the first held-out batch's shapes (repeated when fewer)."""
    first = held_out.batches[0]
    rows = _rows(held_out)[0]
    pick = np.arange(size) % rows
    return {k: np.ascontiguousarray(v[pick]) if np.ndim(v) else v for k, v in first.items()}


def _scores(
    reference: dict[str, list[np.ndarray]], got: dict[str, list[np.ndarray]], held_out: Calibration
) -> dict[str, Score]:
    rows = _rows(held_out)
    scores = {}
    for name, want in reference.items():
        cosines = _cosines(want, got[name], rows)
        scores[name] = Score(
            float(cosines.mean()), float(cosines.min()), _perplexity(got[name], held_out.batches)
        )
    return scores


def _time(
    sessions: Mapping[str, ort.InferenceSession],
    feeds: Mapping[int, Feeds],
    rounds: int,
    runs: int,
) -> dict[str, dict[int, float]]:
    """Median ms per call, contenders and batch sizes taking turns each round."""
    calls: dict[str, dict[int, list[float]]] = {name: {b: [] for b in feeds} for name in sessions}
    for session in sessions.values():  # one untimed call each: allocations, thread pools
        for batch in feeds.values():
            session.run(None, batch)
    for _ in range(rounds):
        for name, session in sessions.items():
            for size, batch in feeds.items():
                for _ in range(runs):
                    start = time.perf_counter_ns()
                    session.run(None, batch)
                    calls[name][size].append((time.perf_counter_ns() - start) / 1e6)
    return {name: {b: statistics.median(t) for b, t in by.items()} for name, by in calls.items()}


# -- verdict ---------------------------------------------------------------------------------------

GOAL_RATIO = 0.67


@dataclass(frozen=True)
class Verdict:
    contender: str
    floor: float
    reference: str | None  # the best onnxruntime tool at that accuracy; None: none reaches it
    size_ratio: float | None
    latency_ratios: dict[int, float]
    dominates: bool
    goal: bool
    floor_met: bool

    def sentence(self, labels: Mapping[str, str]) -> str:
        name = labels[self.contender]
        if self.reference is None:
            return f"{name}: no onnxruntime tool reaches accuracy {self.floor:.4f} on the held-out samples"
        ratios = ", ".join(f"batch {b} {r:.2f}×" for b, r in self.latency_ratios.items())
        verdict = "Pareto-dominates" if self.dominates else "does NOT Pareto-dominate"
        goal = "goal met" if self.goal else f"goal (≤ {GOAL_RATIO}× size and latency) not met"
        missed = "" if self.floor_met else f"; misses its accuracy floor {self.floor}"
        return (
            f"{name} {verdict} {labels[self.reference]} (best onnxruntime tool at accuracy ≥ "
            f"{self.floor:.4f}): size {self.size_ratio:.2f}×, latency {ratios}; {goal}{missed}"
        )


def verdicts(measured: Sequence[Measured]) -> list[Verdict]:
    """Each of ours against the best onnxruntime tool at its accuracy (module docstring, 6)."""
    made = [m for m in measured if m.skipped is None]
    tools = [m for m in made if m.kind == Kind.ORT]
    found = []
    for ours in (m for m in made if m.kind == Kind.OURS):
        floor = ours.floor if ours.floor is not None else ours.accuracy
        eligible = [t for t in tools if t.accuracy >= floor]
        if not eligible:
            found.append(Verdict(ours.name, floor, None, None, {}, False, False, ours.accuracy >= floor))
            continue
        first = min(ours.latency_ms)
        best = min(eligible, key=lambda t: (t.bytes, t.latency_ms[first]))
        size = ours.bytes / best.bytes
        latency = {b: ours.latency_ms[b] / best.latency_ms[b] for b in ours.latency_ms}
        dominates = ours.as_accurate_as(best) and size <= 1.0 and all(r <= 1.0 for r in latency.values())
        goal = dominates and size <= GOAL_RATIO and all(r <= GOAL_RATIO for r in latency.values())
        found.append(
            Verdict(ours.name, floor, best.name, size, latency, dominates, goal, ours.accuracy >= floor)
        )
    return found


# -- report ------------------------------------------------------------------------------------------


def _report(
    measured: Sequence[Measured], found: Sequence[Verdict], header: Sequence[str], threads: int
) -> str:
    made = [m for m in measured if m.skipped is None]
    outputs = list(made[0].scores) if made else []
    batches = sorted(made[0].latency_ms) if made else []
    fp32 = next((m for m in made if m.kind == Kind.FP32), None)
    head = ["contender", "MiB", "fp32 / MiB"]
    for name in outputs:
        head += [f"{name} cos mean", "cos min"]
        if made[0].scores[name].perplexity is not None:
            head.append("ppl")
    head += [f"b{b} T{threads} ms" for b in batches]
    rows = []
    for m in made:
        row = [m.label + (f" ({m.note})" if m.note else ""), f"{m.mib:.1f}"]
        row.append(f"{fp32.bytes / m.bytes:.2f}" if fp32 is not None else "")
        for name in outputs:
            s = m.scores[name]
            row += [f"{s.cosine_mean:.4f}", f"{s.cosine_min:.4f}"]
            if s.perplexity is not None:
                row.append(f"{s.perplexity:.3f}")
        row += [f"{m.latency_ms[b]:.2f}" for b in batches]
        rows.append(row)
    labels = {m.name: m.label for m in measured}
    lines = [*header, table(head, rows)]
    lines += [f"{m.label}: {m.skipped}" for m in measured if m.skipped is not None]
    lines += ["", "verdict (TARGETS.md 'Float models'; ratios ours / onnxruntime's):"]
    lines += [f"  {v.sentence(labels)}" for v in found]
    return "\n".join(lines)


def _json(measured: Sequence[Measured], found: Sequence[Verdict], header: Mapping[str, object]) -> dict:
    def contender(m: Measured) -> dict:
        record = dataclasses.asdict(m)
        record["scores"] = {k: dataclasses.asdict(v) for k, v in m.scores.items()}
        record["latency_ms"] = {str(b): v for b, v in m.latency_ms.items()}
        record["mib"] = m.mib
        return record

    def verdict(v: Verdict) -> dict:
        return {**dataclasses.asdict(v), "latency_ratios": {str(b): r for b, r in v.latency_ratios.items()}}

    return {**header, "contenders": [contender(m) for m in measured], "verdicts": [verdict(v) for v in found]}


# -- command line ------------------------------------------------------------------------------------


def _holdout(text: str) -> int | float:
    try:
        return int(text) if text.strip().isdigit() else float(text)
    except ValueError:
        raise ConfigError(f"--holdout {text!r}: a number of samples or a fraction, e.g. 16 or 0.25") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bitnet-onnx bench peers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", type=Path, help="a float ONNX model")
    parser.add_argument("--inputs", type=Path, required=True, metavar="NPZ", help="the user's samples (.npz)")
    parser.add_argument(
        "--holdout", default=str(DEFAULT_HOLDOUT), help="samples held out (default %(default)s)"
    )
    parser.add_argument(
        "--presets", default="conservative,balanced,aggressive", help="our strategies, comma-separated"
    )
    parser.add_argument(
        "--objective",
        action="append",
        type=OptimizationObjective.parse,
        help="an objective plan of ours, repeatable (default accuracy:0.99)",
    )
    parser.add_argument("--contenders", help="only these contenders (names as in --json), comma-separated")
    parser.add_argument("--batches", default="1,16", help="batch sizes timed, comma-separated")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default %(default)s)")
    parser.add_argument("--runs", type=int, default=5, help="calls per contender, batch and round")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every measurement as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # The compiles' own INFO lines would bury the table: warnings from them, progress from here.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    if args.rounds < 1 or args.runs < 1:
        raise ConfigError(f"--rounds {args.rounds} and --runs {args.runs} must be at least 1")
    holdout = _holdout(args.holdout)
    batch_sizes = _ints(args.batches, "batches")
    presets = [p for p in args.presets.split(",") if p]
    objectives = args.objective or [OptimizationObjective.parse("accuracy:0.99")]
    found, notes = peers(presets, objectives)
    if args.contenders is not None:
        names = _choices(args.contenders, [p.name for p in found], "contenders")
        found = [p for p in found if p.name in names or p.kind == Kind.FP32]  # fp32 is the reference
    every = Calibration.from_npz(args.inputs, args.model)
    calibration, held_out = every.split(holdout)
    samples = Samples(every, calibration, held_out, holdout)
    measured = [Measured(p.name, p.label, p.kind, floor=p.floor, skipped=_why_not(p)) for p in found]
    with tempfile.TemporaryDirectory(prefix="bitnet-onnx-bench-peers-") as tmp:
        paths: dict[str, Path] = {}
        for peer, m in zip(found, measured, strict=True):
            if m.skipped is None:
                logger.info("making %s", peer.label)
                paths[peer.name] = peer.make(args.model, Path(tmp), samples)
                m.bytes = _bytes(paths[peer.name])
        sessions = {name: _session(path, args.threads) for name, path in paths.items()}
        reference = _outputs(sessions["fp32"], held_out.batches)
        for m in measured:
            if m.name in sessions:
                m.scores = _scores(reference, _outputs(sessions[m.name], held_out.batches), held_out)
        feeds = {size: _timing_batch(held_out, size) for size in batch_sizes}
        for name, by_size in _time(sessions, feeds, args.rounds, args.runs).items():
            next(m for m in measured if m.name == name).latency_ms = by_size
    for m in measured:
        m.note = notes.get(m.name.removeprefix("ours-"), "")
    found_verdicts = verdicts(measured)
    cpu = runtime.cpu_model() or "unknown CPU"
    header = [
        f"bench peers: {args.model} on {held_out.describe()}; calibrated on {calibration.describe()}",
        f"machine: {cpu}, onnxruntime {ort.__version__}, {args.threads} thread(s), median of "
        f"{args.rounds}×{args.runs} interleaved calls per batch size",
    ]
    print(_report(measured, found_verdicts, header, args.threads))
    if args.json is not None:
        facts = {
            "model": str(args.model),
            "inputs": str(args.inputs),
            "machine": cpu,
            "threads": args.threads,
            "onnxruntime": ort.__version__,
            "held_out": held_out.describe(),
            "calibration": calibration.describe(),
        }
        with atomic_file(args.json, "w", encoding="utf-8") as stream:
            json.dump(_json(measured, found_verdicts, facts), stream, indent=1)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except MixedPrecisionError as exc:
        raise SystemExit(f"bench peers: {exc}") from None
