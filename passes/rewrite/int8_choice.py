"""I8 weights with I8 activations: onnxruntime's integer matmul or ours, whichever is faster here.

Candidates for a linear layer with K inputs, N outputs and int8 weights quantized with one group
per row (both read the same codes and scales, so the file is the same size either way):

1. `bitnet.LowBitMatMul(bits=8, act_quant=1)`: activations quantized per token, symmetric
   (kernels/README.md); weights W[N, K] with a scale per row (and zero points when asymmetric).
2. `com.microsoft.DynamicQuantizeMatMul` (onnxruntime 1.32 has it on CPU): onnxruntime quantizes
   the activations per tensor (uint8 with a zero point) and runs MLAS's int8 GEMM; weights B[K, N]
   int8 (uint8 with a zero point per column when asymmetric), a scale per column.

Measurement: per candidate, one synthetic model of the layer's K and N with random weights, run in
onnxruntime with one intra-op thread (the batch-1 latency setting of TARGETS.md, and no contention
with the compiler's own threads) at M = 1 (decoding) and M = 32 (a short prefill): the median of
`_RUNS` runs after `_WARMUP` warm-ups at each M; the cost is the sum of the two medians.

Choice: DynamicQuantizeMatMul only when its cost is below `MARGIN` × LowBitMatMul's; otherwise
LowBitMatMul, which keeps per-token activation quantization (finer than per tensor) and the row
layout a tied embedding table shares. The fixed preference also makes near-ties come out the same
on every run.

Determinism: a measured choice is cached in the process and on disk, keyed by the machine (CPU model
and flags, onnxruntime version, the op library's content hash and the ISA path its kernels take)
and by (K, N, X type, symmetric or asymmetric weights). A shape is measured once per machine and
library build, so compiling twice gives the same file. The disk cache is
`$XDG_CACHE_HOME/bitnet-onnx/int8_matmul.json` (default `~/.cache`); delete it to measure again.
With `measure=False` (`PassContext.measure_kernels`) nothing is timed or cached and the choice is
LowBitMatMul. A candidate whose session cannot be created (e.g. an op library built without
LowBitMatMul) is left out, and the reason is kept in the choice. Nothing here logs: the rewrite puts
the choice (`Int8Choice.describe()`) in the layer's change and its timings in the pass's stats.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np
import onnx_graphsurgeon as gs
import onnxruntime as ort

from bitnet_onnx import runtime
from bitnet_onnx.core.errors import MixedPrecisionError
from bitnet_onnx.runtime.machine_cache import MachineCache
from bitnet_onnx.runtime.timing import median_micros

from ._edit import onnx_type

__all__ = ["MARGIN", "Int8Choice", "Int8Kernel", "cache_path", "choose_int8_kernel"]

MARGIN = 0.9
"""DynamicQuantizeMatMul is chosen only when it takes less than this fraction of LowBitMatMul's time."""

_TOKENS = (1, 32)
_WARMUP = 3
_RUNS = 15
_CACHE = MachineCache("int8_matmul.json", version=1, what="the I8 kernel choice")
MS_DOMAIN = "com.microsoft"


class Int8Kernel(enum.Enum):
    LOWBIT_MATMUL = runtime.LOWBIT_MATMUL
    DYNAMIC_QUANTIZE_MATMUL = "DynamicQuantizeMatMul"


@dataclass(frozen=True)
class Int8Choice:
    """The kernel for one (K, N, X type, symmetric) and how it was chosen.

    `how` is "measured", "cached" (measured before on this machine) or "fixed" (no measurement);
    `micros` holds each measured candidate's cost in µs; `excluded` why a candidate could not run.
    """

    kernel: Int8Kernel
    how: str
    micros: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    excluded: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def describe(self) -> str:
        timings = ", ".join(f"{name} {us:.1f} µs" for name, us in sorted(self.micros.items()))
        text = f"{self.kernel.value} ({self.how}"
        if timings:
            text += f": {timings} at M={'+'.join(map(str, _TOKENS))}, 1 thread"
        if self.excluded:
            text += "; left out: " + "; ".join(f"{k}: {v}" for k, v in sorted(self.excluded.items()))
        return text + ")"


_process_cache: dict[tuple[str, str], Int8Choice] = {}


def cache_path() -> Path:
    """Where measured choices are kept between processes."""
    return _CACHE.path()


def choose_int8_kernel(k: int, n: int, x_type: np.dtype, asymmetric: bool, measure: bool) -> Int8Choice:
    """The I8 kernel for a layer of this shape (module docstring)."""
    if not measure:
        return Int8Choice(Int8Kernel.LOWBIT_MATMUL, "fixed")
    machine = runtime.machine_key()
    shape = f"K={k},N={n},x={np.dtype(x_type).name},{'asymmetric' if asymmetric else 'symmetric'}"
    key = (machine, shape)
    if key in _process_cache:
        return _process_cache[key]
    choice = _read_cached(machine, shape)
    if choice is None:
        choice = _measure(k, n, np.dtype(x_type), asymmetric)
        _write_cached(machine, shape, choice)
    _process_cache[key] = choice
    return choice


def _measure(k: int, n: int, x_type: np.dtype, asymmetric: bool) -> Int8Choice:
    rng = np.random.default_rng(0)
    micros: dict[str, float] = {}
    excluded: dict[str, str] = {}
    for kernel in Int8Kernel:
        model = _candidate(kernel, k, n, x_type, asymmetric, rng)
        try:
            session = runtime.session(gs.export_onnx(model), threads=1)
        except MixedPrecisionError as exc:
            excluded[kernel.value] = str(exc).splitlines()[0]
            continue
        micros[kernel.value] = _cost(kernel, session, rng, k, x_type)
    ours = micros.get(Int8Kernel.LOWBIT_MATMUL.value)
    theirs = micros.get(Int8Kernel.DYNAMIC_QUANTIZE_MATMUL.value)
    faster = theirs is not None and (ours is None or theirs < MARGIN * ours)
    kernel = Int8Kernel.DYNAMIC_QUANTIZE_MATMUL if faster else Int8Kernel.LOWBIT_MATMUL
    return Int8Choice(kernel, "measured", MappingProxyType(micros), MappingProxyType(excluded))


def _cost(
    kernel: Int8Kernel, session: ort.InferenceSession, rng: np.random.Generator, k: int, x_type: np.dtype
) -> float:
    """A candidate's cost: the sum over `_TOKENS` of its median time, in µs."""
    return sum(_median_micros(session, rng, m, k, x_type) for m in _TOKENS)


def _median_micros(
    session: ort.InferenceSession, rng: np.random.Generator, m: int, k: int, x_type: np.dtype
) -> float:
    feeds = {"X": rng.standard_normal((m, k)).astype(x_type)}
    return median_micros(lambda: session.run(None, feeds), runs=_RUNS, warmup=_WARMUP)


def _candidate(
    kernel: Int8Kernel, k: int, n: int, x_type: np.dtype, asymmetric: bool, rng: np.random.Generator
) -> gs.Graph:
    """A one-layer model of `kernel` as the rewrite emits it (casts included)."""
    x = gs.Variable("X", dtype=x_type, shape=["M", k])
    y = gs.Variable("Y", dtype=x_type, shape=["M", n])
    codes = rng.integers(0, 256, size=(n, k), dtype=np.uint8)
    scales = rng.uniform(1e-3, 2e-3, size=(n, 1)).astype(np.float32)
    zero_points = rng.integers(100, 156, size=(n, 1), dtype=np.uint8) if asymmetric else None
    nodes: list[gs.Node] = []
    if kernel is Int8Kernel.LOWBIT_MATMUL:
        inputs = [x, gs.Constant("W", codes), gs.Constant("scales", scales)]
        if zero_points is not None:
            inputs.append(gs.Constant("zero_points", zero_points))
        attrs = {"K": k, "bits": 8, "group_size": k, "act_quant": 1}
        nodes.append(gs.Node(runtime.LOWBIT_MATMUL, "op", attrs, inputs, [y], domain=runtime.DOMAIN))
    else:
        x32, y32 = x, y
        if x_type != np.float32:
            x32 = gs.Variable("X32", dtype=np.float32, shape=["M", k])
            y32 = gs.Variable("Y32", dtype=np.float32, shape=["M", n])
            nodes.append(gs.Node("Cast", "in", {"to": onnx_type(np.float32)}, [x], [x32]))
            nodes.append(gs.Node("Cast", "out", {"to": onnx_type(x_type)}, [y32], [y]))
        if zero_points is None:
            b = (codes.astype(np.int16) - 128).clip(-127, 127).astype(np.int8).T
            inputs = [x32, gs.Constant("B", np.ascontiguousarray(b)), gs.Constant("b_scale", scales[:, 0])]
        else:
            inputs = [
                x32,
                gs.Constant("B", np.ascontiguousarray(codes.T)),
                gs.Constant("b_scale", scales[:, 0]),
                gs.Constant("b_zero_point", zero_points[:, 0]),
            ]
        nodes.append(gs.Node("DynamicQuantizeMatMul", "op", {}, inputs, [y32], domain=MS_DOMAIN))
    return gs.Graph(nodes=nodes, inputs=[x], outputs=[y], opset=17)


def _read_cached(machine: str, shape: str) -> Int8Choice | None:
    entry = _CACHE.load().get(machine, {}).get(shape)
    if not isinstance(entry, dict):
        return None
    try:
        kernel = Int8Kernel(entry["kernel"])
        micros = {str(name): float(us) for name, us in entry.get("micros", {}).items()}
    except (KeyError, ValueError, TypeError, AttributeError):
        return None
    return Int8Choice(kernel, "cached", MappingProxyType(micros))


def _write_cached(machine: str, shape: str, choice: Int8Choice) -> None:
    machines = _CACHE.load()
    machines.setdefault(machine, {})[shape] = {"kernel": choice.kernel.value, "micros": dict(choice.micros)}
    _CACHE.store(machines)
