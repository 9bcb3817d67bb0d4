"""Kernel benchmark: BitLinear and LowBitMatMul against onnxruntime's own matmuls, in one process
(TARGETS.md).

Every contender is an ONNX graph run by onnxruntime on the CPU (so BitLinear's activation
quantization counts). For each shape M×K×N (X[M, K] · W[K, N]) and thread count:

- M = 1 runs with **cold** weights: one graph of `copies` independent matmuls, each with its own
  weights, all reading the same X; the time per matmul is the run's time divided by `copies`.
  The weights of one graph (its working set) must exceed twice the last-level cache, or some of
  them are still cached from the previous run: --cold-mb defaults to 3 × the last-level cache and
  at least 256 MB. The cache's size is read from sysfs (/sys/devices/system/cpu/cpu0/cache/
  index*/size of level 3, else the highest level listed); where sysfs has none, 512 MB is assumed
  (above the largest L3 seen on this project's machines, 480 MB), and the run says so. A cold
  row whose working set is not above twice the cache (a small --cold-mb, or a graph capped at
  4096 matmuls) is marked "NOT cold". Larger M is compute-bound and runs one matmul.
- Each contender's time is the median of --runs runs (after --warmup), with outputs bound to
  preallocated buffers; the sessions of one graph at each thread count take turns in rounds of 5
  runs, so that a noisy neighbour slows them alike and the T2/T1 ratios hold up. GB/s is the
  contender's weight bytes per matmul over its time.
- The DRAM floor is BitLinear's 2-bit weight bytes over the machine's DRAM read bandwidth at that
  thread count (--dram-gbps; the default is TARGETS.md's measurement of this project's machine:
  in-process probes such as an onnxruntime ReduceSum or numpy run out of instructions first). On
  another machine that figure may be out of reach, so each cold row also prints the fastest weight
  stream any contender reached in the run and BitLinear's time against it.

Ratios are "× faster": the baseline's time over the row's time. The run ends with the TARGETS.md
"Kernels" rows this run measured, each with its minimum and goal.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from bitnet_onnx import runtime
from bitnet_onnx.core.errors import ConfigError, MixedPrecisionError
from bitnet_onnx.core.files import atomic_file

__all__ = [
    "CONTENDERS",
    "TARGETS",
    "Contender",
    "LastLevelCache",
    "Measurement",
    "Shape",
    "Target",
    "last_level_cache",
    "main",
    "run",
]

logger = logging.getLogger(__name__)

_MB = 1 << 20
_MS_DOMAIN = "com.microsoft"
_MAX_COPIES = 4096  # tiny cold shapes would otherwise need graphs of millions of nodes
_SYSFS_CACHE = Path("/sys/devices/system/cpu/cpu0/cache")
_FALLBACK_CACHE_MB = 512  # above the largest L3 seen on this project's machines (480 MB)
_COLD_CACHE_MULTIPLE = 3  # default cold working set: 3 × the last-level cache (must exceed 2 ×)
_MIN_COLD_MB = 256
_RUNS_PER_ROUND = 5


@dataclass(frozen=True)
class Shape:
    """X[m, k] · W[k, n]."""

    m: int
    k: int
    n: int

    @classmethod
    def parse(cls, text: str) -> Shape:
        """'1x4096x4096' → Shape(1, 4096, 4096)."""
        parts = text.lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ConfigError(f"shape {text!r} is not MxKxN with positive integers, e.g. 1x4096x4096")
        return cls(*(int(p) for p in parts))

    @property
    def cold(self) -> bool:
        """M = 1 is memory-bound: measured with cold weights."""
        return self.m == 1

    def __str__(self) -> str:
        return f"{self.m}x{self.k}x{self.n}"


@dataclass(frozen=True)
class LastLevelCache:
    """The CPU's last-level cache: its size and where the size came from."""

    size_bytes: int
    source: str

    def __str__(self) -> str:
        return f"{self.size_bytes / _MB:.0f} MB ({self.source})"


def _cache_size_bytes(text: str) -> int:
    """sysfs cache sizes: '32768K', '1024K', '2M' (binary units) or plain bytes."""
    text = text.strip().upper()
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text and text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text)


def last_level_cache(root: Path = _SYSFS_CACHE) -> LastLevelCache:
    """The level-3 cache of cpu0 as sysfs lists it, else the highest level listed, else the
    fallback (stated in `source`)."""
    levels: dict[int, tuple[int, Path]] = {}
    for index in sorted(root.glob("index*")):
        try:
            level = int((index / "level").read_text())
            if (index / "type").read_text().strip() == "Instruction":
                continue
            levels[level] = (_cache_size_bytes((index / "size").read_text()), index / "size")
        except (OSError, ValueError):
            continue
    if levels:
        level = 3 if 3 in levels else max(levels)
        size, path = levels[level]
        return LastLevelCache(size, f"L{level}, {path}")
    return LastLevelCache(_FALLBACK_CACHE_MB * _MB, f"assumed: no cache sizes in {root}")


@dataclass(frozen=True)
class Contender:
    """One matmul implementation. `weights` makes one copy's initializers (by local name),
    `nodes(prefix)` the nodes reading graph input "X" and those initializers (prefixed) and
    writing `prefix + "Y"` of type `output_type`."""

    key: str
    label: str
    weights: Callable[[Shape, np.random.Generator], dict[str, np.ndarray]]
    nodes: Callable[[Shape, str], list[onnx.NodeProto]]
    output_type: int = TensorProto.FLOAT
    domains: tuple[str, ...] = ()


def _ternary_2bit(shape: Shape, rng: np.random.Generator) -> dict[str, np.ndarray]:
    packed = rng.integers(0, 256, size=(shape.n, math.ceil(shape.k / 4)), dtype=np.uint8)
    packed ^= (packed & (packed >> 1) & 0x55) << 1  # code 3 → 1: valid ternary codes only
    return {"W": packed, "scale": np.ones(1, np.float32)}


def _bitlinear_nodes(shape: Shape, prefix: str) -> list[onnx.NodeProto]:
    return [
        helper.make_node(
            runtime.BITLINEAR,
            ["X", prefix + "W", prefix + "scale"],
            [prefix + "Y"],
            domain=runtime.DOMAIN,
            K=shape.k,
            format="2bit",
        )
    ]


def _fp32_weights(shape: Shape, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"W": rng.random((shape.k, shape.n), dtype=np.float32) - np.float32(0.5)}


def _matmul_nodes(shape: Shape, prefix: str) -> list[onnx.NodeProto]:
    return [helper.make_node("MatMul", ["X", prefix + "W"], [prefix + "Y"])]


def _nbits(bits: int, block: int) -> Contender:
    def weights(shape: Shape, rng: np.random.Generator) -> dict[str, np.ndarray]:
        blocks = math.ceil(shape.k / block)
        return {
            "B": rng.integers(0, 256, size=(shape.n, blocks, block * bits // 8), dtype=np.uint8),
            "scales": (rng.random(shape.n * blocks, dtype=np.float32) + 0.5) / 64,
        }

    def nodes(shape: Shape, prefix: str) -> list[onnx.NodeProto]:
        return [
            helper.make_node(
                "MatMulNBits",
                ["X", prefix + "B", prefix + "scales"],
                [prefix + "Y"],
                domain=_MS_DOMAIN,
                K=shape.k,
                N=shape.n,
                bits=bits,
                block_size=block,
                accuracy_level=4,
            )
        ]

    return Contender(
        f"nbits{bits}b{block}", f"MatMulNBits {bits}-bit b{block} acc4", weights, nodes, domains=(_MS_DOMAIN,)
    )


def _lowbit(bits: int, group: int, act_quant: int) -> Contender:
    def weights(shape: Shape, rng: np.random.Generator) -> dict[str, np.ndarray]:
        groups = math.ceil(shape.k / group)
        return {
            "W": rng.integers(0, 256, size=(shape.n, groups * group * bits // 8), dtype=np.uint8),
            "scales": (rng.random((shape.n, groups), dtype=np.float32) + 0.5) / 64,
        }

    def nodes(shape: Shape, prefix: str) -> list[onnx.NodeProto]:
        attributes = {"K": shape.k, "bits": bits, "group_size": group, "act_quant": act_quant}
        names, output = ["X", prefix + "W", prefix + "scales"], prefix + "Y"
        return [helper.make_node(runtime.LOWBIT_MATMUL, names, [output], domain=runtime.DOMAIN, **attributes)]

    activations = "int8" if act_quant else "float"
    return Contender(
        f"lowbit{bits}b{group}{'q' if act_quant else 'f'}",
        f"LowBitMatMul I{bits} b{group} {activations} x",
        weights,
        nodes,
        domains=(runtime.DOMAIN,),
    )


def _int8_weights(shape: Shape, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "B": rng.integers(-127, 128, size=(shape.k, shape.n), dtype=np.int8),
        "b_scale": np.full(1, 1 / 127, np.float32),
        "b_zero_point": np.zeros(1, np.int8),
    }


def _int8_integer_weights(shape: Shape, rng: np.random.Generator) -> dict[str, np.ndarray]:
    weights = _int8_weights(shape, rng)
    del weights["b_scale"]  # MatMulInteger's output stays int32
    return weights


def _dynamic_quantize_matmul_nodes(shape: Shape, prefix: str) -> list[onnx.NodeProto]:
    inputs = ["X", prefix + "B", prefix + "b_scale", prefix + "b_zero_point"]
    return [helper.make_node("DynamicQuantizeMatMul", inputs, [prefix + "Y"], domain=_MS_DOMAIN)]


def _matmul_integer_nodes(shape: Shape, prefix: str) -> list[onnx.NodeProto]:
    xq, xs, xzp = prefix + "Xq", prefix + "Xs", prefix + "Xzp"
    return [
        helper.make_node("DynamicQuantizeLinear", ["X"], [xq, xs, xzp]),
        helper.make_node("MatMulInteger", [xq, prefix + "B", xzp, prefix + "b_zero_point"], [prefix + "Y"]),
    ]


CONTENDERS: tuple[Contender, ...] = (
    Contender(
        "bitlinear", "BitLinear ternary 2bit", _ternary_2bit, _bitlinear_nodes, domains=(runtime.DOMAIN,)
    ),
    Contender("fp32", "MatMul fp32", _fp32_weights, _matmul_nodes),
    _nbits(4, 32),
    _nbits(4, 128),
    _nbits(2, 32),
    _nbits(2, 128),
    _lowbit(4, 128, 1),
    _lowbit(4, 128, 0),
    _lowbit(2, 128, 1),
    Contender(
        "int8_dyn",
        "DynamicQuantizeMatMul int8",
        _int8_weights,
        _dynamic_quantize_matmul_nodes,
        domains=(_MS_DOMAIN,),
    ),
    Contender(
        "dql_mmi",
        "DynamicQuantizeLinear+MatMulInteger",
        _int8_integer_weights,
        _matmul_integer_nodes,
        output_type=TensorProto.INT32,
    ),
)
"""Every contender, by key (--ops selects among them)."""

RATIO_BASELINES = ("fp32", "nbits2b128", "nbits4b128", "int8_dyn")


@dataclass(frozen=True)
class Measurement:
    shape: str
    threads: int
    op: str
    copies: int
    weight_bytes: int
    median_us: float
    runs_us: list[float] = field(repr=False)

    @property
    def gbps(self) -> float:
        return self.weight_bytes / (self.median_us * 1e3)

    @property
    def working_set_bytes(self) -> int:
        """The weights of the whole graph (every copy)."""
        return self.copies * self.weight_bytes


@dataclass(frozen=True)
class Target:
    """A TARGETS.md "Kernels" row: metric(results) per (shape, threads) → ratio."""

    label: str
    shapes: tuple[str, ...]
    threads: tuple[int, ...]
    metric: Callable[[dict[tuple[str, int, str], Measurement], dict[int, float], str, int], float | None]
    minimum: float
    goal: float
    higher_is_better: bool = True
    subject: str = "BitLinear"


def _faster_than(baseline: str, op: str = "bitlinear") -> Callable[..., float | None]:
    def metric(results: dict, bandwidth: dict[int, float], shape: str, threads: int) -> float | None:
        ours, base = results.get((shape, threads, op)), results.get((shape, threads, baseline))
        return base.median_us / ours.median_us if ours and base else None

    return metric


def _vs_floor(results: dict, bandwidth: dict[int, float], shape: str, threads: int) -> float | None:
    ours = results.get((shape, threads, "bitlinear"))
    if not ours or threads not in bandwidth:
        return None
    return ours.median_us / (ours.weight_bytes / bandwidth[threads] * 1e6)


def _thread_scaling(op: str = "bitlinear") -> Callable[..., float | None]:
    def metric(results: dict, bandwidth: dict[int, float], shape: str, threads: int) -> float | None:
        one, two = results.get((shape, 1, op)), results.get((shape, 2, op))
        return one.median_us / two.median_us if one and two else None

    return metric


_M1 = ("1x4096x4096", "1x4096x11008")
_M128 = ("128x4096x4096",)
_DECODER = ("1x1024x1024", "1x2048x2048")  # the small layers of decoders
TARGETS: tuple[Target, ...] = (
    Target("M=1 cold T1: vs fp32 MatMul", _M1, (1,), _faster_than("fp32"), 10, 15),
    Target("M=1 cold T1: vs MatMulNBits 2-bit b128", _M1, (1,), _faster_than("nbits2b128"), 1.2, 1.7),
    Target("M=1 cold T1: vs MatMulNBits 4-bit b128", _M1, (1,), _faster_than("nbits4b128"), 1.6, 2.3),
    Target("M=1 cold T1: time / DRAM floor", _M1, (1,), _vs_floor, 2.0, 1.25, higher_is_better=False),
    Target("M=128 T1: vs fp32 MatMul", _M128, (1,), _faster_than("fp32"), 3, 4),
    Target("M=128 T1: vs int8 dynamic", _M128, (1,), _faster_than("int8_dyn"), 0.8, 1.0),
    Target("T2 vs T1", _DECODER + _M1 + _M128, (2,), _thread_scaling(), 1.5, 1.8),
    *(
        Target("T2 vs T1", _DECODER + _M1, (2,), _thread_scaling(key), 1.5, 1.8, subject=subject)
        for key, subject in (
            ("lowbit4b128q", "LowBitMatMul I4 int8 x"),
            ("lowbit2b128q", "LowBitMatMul I2 int8 x"),
        )
    ),
    Target(
        "M=1 cold T1: vs MatMulNBits 4-bit b128",
        _M1,
        (1,),
        _faster_than("nbits4b128", "lowbit4b128q"),
        1.0,
        1.3,
        subject="LowBitMatMul I4 int8 x",
    ),
)
"""TARGETS.md's "Kernels" rows, reported for the shapes and threads a run measured."""


def _model(contender: Contender, shape: Shape, copies: int, base: dict[str, np.ndarray]) -> onnx.ModelProto:
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    outputs: list[onnx.ValueInfoProto] = []
    for c in range(copies):
        prefix = f"c{c}_"
        for name, value in base.items():
            # Each copy holds its own memory (rolled rows, so no two buffers are equal).
            copy = np.roll(value, c, axis=0) if value.size > 1 else value
            initializers.append(numpy_helper.from_array(copy, prefix + name))
        nodes += contender.nodes(shape, prefix)
        outputs.append(helper.make_tensor_value_info(prefix + "Y", contender.output_type, [shape.m, shape.n]))
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [shape.m, shape.k])
    graph = helper.make_graph(nodes, f"{contender.key}_{shape}", [x], outputs, initializers)
    opsets = [helper.make_opsetid("", 17)] + [helper.make_opsetid(d, 1) for d in contender.domains]
    return helper.make_model(graph, opset_imports=opsets)


def _session(model: onnx.ModelProto, threads: int, needs_library: bool) -> ort.InferenceSession:
    options = runtime.session_options(threads) if needs_library else ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only
    if needs_library:
        return runtime.session(model, options=options)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


class _BoundRunner:
    """A session with X and preallocated outputs bound, timed run by run."""

    def __init__(self, session: ort.InferenceSession, x: np.ndarray) -> None:
        self.session = session
        self.binding = session.io_binding()
        self.binding.bind_ortvalue_input("X", ort.OrtValue.ortvalue_from_numpy(x))
        for out in session.get_outputs():
            dtype = np.int32 if out.type == "tensor(int32)" else np.float32
            buffer = ort.OrtValue.ortvalue_from_shape_and_type(out.shape, dtype)
            self.binding.bind_ortvalue_output(out.name, buffer)

    def times(self, runs: int) -> list[float]:
        out = []
        for _ in range(runs):
            start = time.perf_counter()
            self.session.run_with_iobinding(self.binding)
            out.append(time.perf_counter() - start)
        return out


def run(
    shapes: Sequence[Shape],
    threads: Sequence[int],
    contenders: Sequence[Contender],
    runs: int,
    warmup: int,
    cold_mb: float,
) -> list[Measurement]:
    """Measure every contender at every shape and thread count."""
    rng = np.random.default_rng(0)
    results: list[Measurement] = []
    for shape in shapes:
        for contender in contenders:
            base = contender.weights(shape, rng)
            per_copy = sum(a.nbytes for a in base.values())
            copies = min(_MAX_COPIES, math.ceil(cold_mb * _MB / per_copy)) if shape.cold else 1
            megabytes = copies * per_copy / _MB
            logger.info("%s %s: %d copies, %.0f MB of weights", shape, contender.key, copies, megabytes)
            model = _model(contender, shape, copies, base)
            del base
            x = rng.standard_normal((shape.m, shape.k)).astype(np.float32)
            needs_library = runtime.DOMAIN in contender.domains
            runners = {t: _BoundRunner(_session(model, t, needs_library), x) for t in threads}
            del model
            samples: dict[int, list[float]] = {t: [] for t in threads}
            for runner in runners.values():
                runner.times(warmup)
            # Rounds alternate the thread counts, so a noisy neighbour slows them alike.
            for _ in range(math.ceil(runs / _RUNS_PER_ROUND)):
                for t, runner in runners.items():
                    samples[t] += runner.times(_RUNS_PER_ROUND)
            del runners
            for t in threads:
                per_matmul = [seconds * 1e6 / copies for seconds in samples[t]]
                median = statistics.median(per_matmul)
                results.append(
                    Measurement(str(shape), t, contender.key, copies, per_copy, median, per_matmul)
                )
    return results


def _report(
    results: list[Measurement],
    bandwidth: dict[int, float],
    contenders: Sequence[Contender],
    cache: LastLevelCache,
    cold_mb: float,
) -> str:
    labels = {c.key: c.label for c in contenders}
    by_key = {(r.shape, r.threads, r.op): r for r in results}
    baselines = [b for b in RATIO_BASELINES if b in labels]
    lines = [
        f"onnxruntime {ort.__version__}, bitnet ISA path {runtime.dispatch_isa().value}, "
        f"{os.cpu_count()} CPUs; times are medians per matmul; ×B = B's time / this time",
        f"last-level cache {cache}; cold graphs hold ≥ {cold_mb:.0f} MB of weights "
        f"(cold needs > 2 × the cache = {2 * cache.size_bytes / _MB:.0f} MB; MB = the graph's weights)",
    ]
    configs = dict.fromkeys((r.shape, r.threads) for r in results)
    for shape, threads in configs:
        rows = [r for r in results if (r.shape, r.threads) == (shape, threads)]
        cold = Shape.parse(shape).cold
        lines += ["", f"{shape}  T{threads}  ({'cold weights' if cold else 'one matmul'})"]
        header = f"  {'op':<38}{'µs':>10}{'GB/s':>8}{'copies':>8}{'MB':>8}" + "".join(
            f"{'×' + b:>12}" for b in baselines
        )
        lines.append(header)
        for r in rows:
            ratios = "".join(
                f"{by_key[(shape, threads, b)].median_us / r.median_us:>12.2f}"
                if (shape, threads, b) in by_key
                else f"{'':>12}"
                for b in baselines
            )
            warm = cold and r.working_set_bytes <= 2 * cache.size_bytes
            lines.append(
                f"  {labels[r.op]:<38}{r.median_us:>10.1f}{r.gbps:>8.1f}{r.copies:>8}"
                f"{r.working_set_bytes / _MB:>8.0f}{ratios}{'  NOT cold' if warm else ''}"
            )
        ours = by_key.get((shape, threads, "bitlinear"))
        if ours and cold and threads in bandwidth:
            floor_us = ours.weight_bytes / bandwidth[threads] * 1e6
            lines.append(
                f"  DRAM floor: 2-bit weights at {bandwidth[threads] / 1e9:.1f} GB/s = {floor_us:.1f} µs "
                f"(BitLinear at {ours.median_us / floor_us:.2f}× the floor)"
            )
            fastest = max(rows, key=lambda r: r.gbps)
            stream_us = ours.weight_bytes / (fastest.gbps * 1e9) * 1e6
            lines.append(
                f"  fastest weight stream here: {labels[fastest.op]} at {fastest.gbps:.1f} GB/s = "
                f"{stream_us:.1f} µs for 2-bit weights (BitLinear at {ours.median_us / stream_us:.2f}×)"
            )
    target_lines = []
    for target in TARGETS:
        for shape in target.shapes:
            for threads in target.threads:
                value = target.metric(by_key, bandwidth, shape, threads)
                if value is None:
                    continue
                sign = 1 if target.higher_is_better else -1
                met = [sign * value >= sign * bound for bound in (target.goal, target.minimum)]
                verdict = "goal met" if met[0] else "minimum met" if met[1] else "MISSED"
                name = f"{target.subject} {target.label}, {shape}"
                bounds = f"min {target.minimum:<5} goal {target.goal:<5}"
                target_lines.append(f"  {name:<60}{value:>7.2f}  {bounds} {verdict}")
    if target_lines:
        lines += ["", "TARGETS.md, Kernels:", *target_lines]
    return "\n".join(lines)


def _parse_list(text: str, parse: Callable[[str], object], what: str) -> list:
    try:
        return [parse(item) for item in text.split(",") if item]
    except ConfigError:
        raise
    except ValueError:
        raise ConfigError(f"--{what} {text!r} is not a comma-separated list") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bitnet-onnx bench kernels",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--shapes",
        default="1x1024x1024,1x4096x4096,1x4096x11008,1x11008x4096,128x4096x4096",
        help="MxKxN,...",
    )
    parser.add_argument("--threads", default="1,2", help="intra-op thread counts, comma-separated")
    parser.add_argument(
        "--ops", default=",".join(c.key for c in CONTENDERS), help="contender keys, comma-separated"
    )
    parser.add_argument("--runs", type=int, default=50, help="timed runs per measurement (median)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs first")
    parser.add_argument(
        "--cold-mb",
        type=int,
        help=f"weights per cold graph (M = 1), MB (default: {_COLD_CACHE_MULTIPLE} × the last-level cache, "
        f"at least {_MIN_COLD_MB})",
    )
    parser.add_argument(
        "--dram-gbps",
        default="26,45",
        help="DRAM read bandwidth (GB/s) with 1, 2, ... threads, for the floor (default: %(default)s)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 10 runs, 64 MB cold graphs (may be warm)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write every measurement as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table; returns the exit code."""
    args = _parser().parse_args(argv)
    shapes = _parse_list(args.shapes, Shape.parse, "shapes")
    threads = _parse_list(args.threads, int, "threads")
    keys = {c.key: c for c in CONTENDERS}
    unknown = [k for k in args.ops.split(",") if k and k not in keys]
    if unknown:
        raise ConfigError(f"--ops: unknown contenders {', '.join(unknown)}; choose from {', '.join(keys)}")
    contenders = [keys[k] for k in args.ops.split(",") if k]
    cache = last_level_cache()
    default_cold_mb = max(_MIN_COLD_MB, _COLD_CACHE_MULTIPLE * cache.size_bytes / _MB)
    runs = 10 if args.quick else args.runs
    cold_mb = args.cold_mb if args.cold_mb is not None else 64 if args.quick else default_cold_mb
    if runs < 1 or cold_mb < 1 or any(t < 1 for t in threads):
        raise ConfigError("--runs, --cold-mb and --threads must be positive")
    gbps = _parse_list(args.dram_gbps, float, "dram-gbps")
    bandwidth = {t: gbps[t - 1] * 1e9 for t in threads if t <= len(gbps)}
    results = run(shapes, threads, contenders, runs, args.warmup, cold_mb)
    print(_report(results, bandwidth, contenders, cache, cold_mb))
    if args.json:
        with atomic_file(args.json, "w", encoding="utf-8") as f:
            records = [
                {**asdict(r), "gbps": r.gbps, "working_set_bytes": r.working_set_bytes} for r in results
            ]
            summary = {"dram_bytes_per_s": bandwidth, "last_level_cache": asdict(cache), "cold_mb": cold_mb}
            json.dump({"results": records, **summary}, f, indent=1)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MixedPrecisionError as exc:
        print(f"bench kernels: error: {exc}", file=sys.stderr)
        sys.exit(2)
