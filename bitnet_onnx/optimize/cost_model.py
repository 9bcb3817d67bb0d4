"""What a precision choice costs a layer: stored bytes (exact) and latency (measured on this CPU).

Memory. `CostModel.memory_bytes(layer, choice)` is what the compiled layer stores, counted by
`dtypes.storage_bytes` with the choice's layout:

- weights, as the compiler stores them: a linear or output weight as rows W[N, K] (the
  initializer transposed when it holds [K, N], `Layer.weight_nk` False), a convolution weight as
  rows [d0, d1·k...], an embedding table and a normalization gain as they are;
- the bias: N values for linear, output and convolution layers, the gain's size for a
  normalization; in the choice's precision when it is a float, else F32 (`PrecisionChoice`).

`plan_bytes` sums a whole plan and stores a weight that several layers read (a head tied to its
embedding table) once when they store it in the same precision and layout, as the compiler does;
otherwise each keeps its copy.

Latency. Every linear, output and convolution choice runs one kernel (`kernel_for`), the one the
compiler emits for it (passes/rewrite/linear.py, convolution.py):

| choice (weights / activations)     | kernel                                                    |
|------------------------------------|-----------------------------------------------------------|
| F32; F16 with F32 activations; BF16| MatMul/F32 (a narrower float weight is widened once)      |
| F16 with F16 activations           | MatMul/F16: Cast → float16 MatMul → Cast                  |
| BITNET158 / I8                     | BitLinear (2bit or base3)                                 |
| BITNET158 / float                  | DequantizeLowBit + MatMul/F32                             |
| I8 / I8, one group per row         | Int8MatMul: the faster of LowBitMatMul(8, act_quant=1) and |
|                                    | DynamicQuantizeMatMul, as the compiler picks              |
| I8, I4, I2, I1 otherwise           | LowBitMatMul(bits, group, act_quant = activations are I8) |
| convolution, integer or ternary    | DequantizeLowBit + MatMul/F32 (weight-only compression)   |

A convolution counts as the matmul of its unfolded weight (K = d1·k..., N = d0) per output
position. Embedding lookups, normalizations, attention, activations and unclassified layers cost
0 here: what they cost barely depends on the choice on a CPU (onnxruntime computes float16 islands
through float32 casts), so the latency model ranks plans by their matmuls, and a predicted speedup
is the speedup of the matmul kernels.

The `LatencyTable` holds, per kernel and per number of tokens M ∈ `TOKENS` (1: decoding; 16: a
short prefill; 256: a batch of sentences or a long prefill, where fp32's GEMM is at its most
efficient and a kernel that widens its weights on every call falls behind), the median time of
one call at the sizes `SIZES` (K, N), measured by running a one-op onnxruntime model with our
op library, one intra-op thread (the batch-1 setting of TARGETS.md: no contention with the
caller), `_WARMUP` warm-up runs and then runs until `_MIN_RUNS` runs and `_BUDGET_S` seconds are
both reached. The whole default table takes about 10 s on 2 cores. Interpolation, in
`LatencyTable.micros(kernel, k, n, tokens)`:

- in K·N, piecewise linear between the measured sizes; below the smallest, the smallest's time
  (a call's fixed cost dominates there); above the largest, the last segment's slope (time grows
  with the bytes streamed);
- in M, piecewise linear through the measured M, extended beyond the last with the last
  segment's slope.

Hardware. The table is measured with the kernels' ISA path of this process (`runtime.dispatch_isa`,
so `BITNET_ISA` is respected) and cached on disk per machine: the CPU model, its flags, the
onnxruntime version, the op library's content hash and the ISA path (`runtime.machine_key`). The cache is
`$XDG_CACHE_HOME/bitnet-onnx/latency.json` (default `~/.cache`); delete it to measure again. A
table holds the kernels it was asked for; `LatencyTable.for_this_machine(kernels)` measures the
missing ones and keeps them.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from bitnet_onnx import runtime
from bitnet_onnx.core.dtypes import DType, TernaryPacking, WeightLayout, storage_bytes
from bitnet_onnx.core.errors import ConfigError
from bitnet_onnx.core.layers import Layer, LayerType
from bitnet_onnx.optimize.objectives import PrecisionChoice, candidate_choices
from bitnet_onnx.runtime.machine_cache import MachineCache
from bitnet_onnx.runtime.timing import median_micros

__all__ = [
    "SIZES",
    "TOKENS",
    "CostModel",
    "Kernel",
    "LatencyTable",
    "cache_path",
    "default_kernels",
    "kernel_for",
    "storage_shape",
]

logger = logging.getLogger(__name__)

TOKENS = (1, 16, 256)
"""The numbers of tokens (rows of X) every kernel is measured at."""
SIZES = ((128, 128), (512, 512), (2048, 2048))
"""The (K, N) sizes every kernel is measured at."""

_WARMUP = 2
_MIN_RUNS = 7
_BUDGET_S = 0.03
_CACHE = MachineCache("latency.json", version=2, what="the latency table")  # 2: M = 256 added
_MS_DOMAIN = "com.microsoft"
_MATMUL_TYPES = (LayerType.LINEAR, LayerType.OUTPUT, LayerType.CONVOLUTION)


# -- kernels --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kernel:
    """One matmul kernel the compiler emits: `op` (MatMul, BitLinear, LowBitMatMul, Int8MatMul,
    DequantizeLowBit+MatMul), the weights' precision and layout, and whether the activations are
    quantized to int8 by the kernel. `key` names it in a LatencyTable."""

    op: str
    weights: DType
    layout: WeightLayout = field(default_factory=WeightLayout)
    act_quant: bool = False

    @property
    def key(self) -> str:
        if self.op == "MatMul":
            return f"MatMul/{self.weights.name}"
        acts = DType.I8 if self.act_quant else DType.F32
        return f"{self.op}/{PrecisionChoice(self.weights, acts, self.layout).label}"


def kernel_for(layer_type: LayerType, choice: PrecisionChoice) -> Kernel | None:
    """The kernel a layer of `layer_type` runs for `choice` (module docstring table); None for
    the layer types whose latency is not modelled."""
    if layer_type not in _MATMUL_TYPES or choice.weights is None:
        return None
    weights, acts = choice.weights, choice.activation_dtype
    if weights.is_float:
        f16 = weights is DType.F16 and acts is DType.F16
        return Kernel("MatMul", DType.F16 if f16 else DType.F32)
    layout = WeightLayout(
        group_size=choice.layout.group_size,
        per_channel=choice.layout.per_channel,
        packing=choice.layout.packing,
    )
    if layer_type is LayerType.CONVOLUTION or (weights is DType.BITNET158 and acts is not DType.I8):
        return Kernel("DequantizeLowBit+MatMul", weights, layout)
    if weights is DType.BITNET158:
        return Kernel("BitLinear", weights, layout, act_quant=True)
    if weights is DType.I8 and acts is DType.I8 and layout.group_size is None:
        return Kernel("Int8MatMul", weights, layout, act_quant=True)
    return Kernel("LowBitMatMul", weights, layout, act_quant=acts is DType.I8)


def default_kernels() -> tuple[Kernel, ...]:
    """The kernels of every default candidate of linear, output and convolution layers."""
    kernels: dict[str, Kernel] = {}
    for layer_type in _MATMUL_TYPES:
        probe = Layer("probe", layer_type, 0, ("probe",), "probe", weight="w", weight_shape=(8, 8))
        for choice in candidate_choices(probe):
            kernel = kernel_for(layer_type, choice)
            if kernel is not None:
                kernels.setdefault(kernel.key, kernel)
    return tuple(kernels.values())


# -- the latency table ----------------------------------------------------------------------------


Curve = tuple[tuple[int, float], ...]
"""(K·N, µs) points of one kernel at one M, sorted by K·N."""


@dataclass(frozen=True)
class LatencyTable:
    """Measured kernel times on one machine: `curves[kernel key][M]` (see the module docstring).
    Build one by hand for tests, or with `measure` / `for_this_machine`."""

    machine: str
    curves: Mapping[str, Mapping[int, Curve]]

    def __post_init__(self) -> None:
        problems = []
        frozen: dict[str, Mapping[int, Curve]] = {}
        for key, by_tokens in self.curves.items():
            if not by_tokens:
                problems.append(f"kernel {key!r} has no measurements")
                continue
            rows: dict[int, Curve] = {}
            for m, points in by_tokens.items():
                curve = tuple(sorted((int(kn), float(us)) for kn, us in points))
                if not curve or int(m) < 1 or any(kn <= 0 or not us >= 0 for kn, us in curve):
                    problems.append(
                        f"kernel {key!r} at M={m}: needs M ≥ 1 and (K·N > 0, µs ≥ 0) points, got {points!r}"
                    )
                rows[int(m)] = curve
            frozen[key] = MappingProxyType(dict(sorted(rows.items())))
        if problems:
            raise ConfigError(problems, source="LatencyTable")
        object.__setattr__(self, "curves", MappingProxyType(frozen))

    def micros(self, kernel: Kernel | str, k: int, n: int, tokens: float = 1) -> float:
        """Predicted µs of one call of `kernel` with X[tokens, k] and W[k, n] (interpolated)."""
        key = kernel if isinstance(kernel, str) else kernel.key
        by_tokens = self.curves.get(key)
        if by_tokens is None:
            raise ConfigError(
                f"the latency table of {self.machine} has no kernel {key!r}; measure it with "
                "LatencyTable.for_this_machine(kernels=[...])"
            )
        if tokens < 1:
            raise ConfigError(f"tokens={tokens!r} must be at least 1")
        size = k * n
        ms = list(by_tokens)
        if len(ms) == 1:
            return _interpolate(by_tokens[ms[0]], size) * tokens / ms[0]
        lo, hi = (ms[0], ms[1]) if tokens <= ms[1] else (ms[-2], ms[-1])
        for a, b in itertools.pairwise(ms):
            if a <= tokens <= b:
                lo, hi = a, b
                break
        t_lo, t_hi = _interpolate(by_tokens[lo], size), _interpolate(by_tokens[hi], size)
        return max(0.0, t_lo + (t_hi - t_lo) * (tokens - lo) / (hi - lo))

    def with_curves(self, curves: Mapping[str, Mapping[int, Curve]]) -> LatencyTable:
        """This table plus (or with replaced) `curves`."""
        return LatencyTable(self.machine, {**self.curves, **curves})

    def to_json(self) -> dict:
        return {
            "machine": self.machine,
            "curves": {
                key: {str(m): [list(p) for p in curve] for m, curve in by_tokens.items()}
                for key, by_tokens in self.curves.items()
            },
        }

    @classmethod
    def from_json(cls, data: Mapping) -> LatencyTable:
        try:
            curves = {
                str(key): {
                    int(m): tuple((int(kn), float(us)) for kn, us in curve) for m, curve in rows.items()
                }
                for key, rows in data["curves"].items()
            }
            return cls(str(data["machine"]), curves)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"not a latency table: {exc}", source="LatencyTable JSON") from exc

    @classmethod
    def measure(cls, kernels: Iterable[Kernel] | None = None, *, progress: bool = False) -> LatencyTable:
        """Time `kernels` (default: `default_kernels()`) on this machine now (module docstring)."""
        kernels = tuple(kernels) if kernels is not None else default_kernels()
        start = time.perf_counter()
        rng = np.random.default_rng(0)
        curves: dict[str, dict[int, list[tuple[int, float]]]] = {}
        todo = [(kernel, size) for kernel in kernels for size in SIZES]
        if progress:
            from tqdm import tqdm

            todo = tqdm(todo, desc="latency table", unit="model")
        for kernel, (k, n) in todo:
            times = _measure_kernel(kernel, k, n, rng)
            for m, micros in times.items():
                curves.setdefault(kernel.key, {}).setdefault(m, []).append((k * n, micros))
        logger.info("measured %d kernels in %.1f s", len(kernels), time.perf_counter() - start)
        frozen = {key: {m: tuple(c) for m, c in rows.items()} for key, rows in curves.items()}
        return cls(runtime.machine_key(), frozen)

    @classmethod
    def for_this_machine(
        cls, kernels: Iterable[Kernel] | None = None, *, progress: bool = False
    ) -> LatencyTable:
        """The cached table of this machine, with any of `kernels` (default: `default_kernels()`)
        it lacks measured now and added to the cache."""
        kernels = tuple(kernels) if kernels is not None else default_kernels()
        machine = runtime.machine_key()
        table = cls(machine, {})
        cached = _CACHE.load().get(machine)
        if cached is not None:
            try:
                table = cls.from_json({"machine": machine, "curves": cached})
            except ConfigError as exc:
                logger.warning("ignoring the cached latency table in %s: %s", cache_path(), exc)
        missing = [k for k in kernels if k.key not in table.curves]
        if missing:
            table = table.with_curves(cls.measure(missing, progress=progress).curves)
            _save(machine, table)
        return table


def _interpolate(curve: Curve, size: int) -> float:
    if size <= curve[0][0] or len(curve) == 1:
        return curve[0][1] if size <= curve[0][0] else curve[0][1] * size / curve[0][0]
    for (x0, y0), (x1, y1) in itertools.pairwise(curve):
        if size <= x1:
            return y0 + (y1 - y0) * (size - x0) / (x1 - x0)
    (x0, y0), (x1, y1) = curve[-2], curve[-1]
    return max(y1, y1 + (y1 - y0) * (size - x1) / (x1 - x0))


# -- measuring ------------------------------------------------------------------------------------


def _measure_kernel(kernel: Kernel, k: int, n: int, rng: np.random.Generator) -> dict[int, float]:
    """Median µs per call at each M of TOKENS; for Int8MatMul the faster of its two kernels."""
    best: dict[int, float] = {}
    for build in _BUILDERS[kernel.op]:
        model = build(kernel, k, n, rng)
        session = runtime.session(model, threads=1)
        for m in TOKENS:
            x = rng.standard_normal((m, k)).astype(np.float32)
            micros = _median_micros(session, {"X": x})
            best[m] = min(best.get(m, math.inf), micros)
    return best


def _median_micros(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> float:
    return median_micros(lambda: session.run(None, feeds), runs=_MIN_RUNS, warmup=_WARMUP, budget_s=_BUDGET_S)


def _graph(
    nodes: list[onnx.NodeProto], k: int, n: int, weights: Mapping[str, np.ndarray], domains: Sequence[str]
) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["M", k])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])
    inits = [numpy_helper.from_array(v, name) for name, v in weights.items()]
    graph = helper.make_graph(nodes, "kernel", [x], [y], inits)
    opsets = [helper.make_opsetid("", 17)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=opsets)


def _group(kernel: Kernel, k: int) -> int:
    # The converter's whole row: K rounded up to a whole byte of codes.
    per_byte = 8 // kernel.weights.bits
    return kernel.layout.group_size or math.ceil(k / per_byte) * per_byte


def _codes(kernel: Kernel, k: int, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Packed random weights and scales in the kernels/README.md encodings."""
    if kernel.weights is DType.BITNET158:
        per_byte = kernel.layout.packing.weights_per_byte
        width = math.ceil(k / per_byte)
        if kernel.layout.packing is TernaryPacking.BASE3:
            packed = rng.integers(0, 243, size=(n, width), dtype=np.uint8)
        else:
            packed = rng.integers(0, 256, size=(n, width), dtype=np.uint8)
            packed ^= (packed & (packed >> 1) & 0x55) << 1  # code 3 → 1: valid ternary codes only
        scale = np.ones(n if kernel.layout.per_channel else 1, np.float32)
        return {"W": packed, "scales": scale}
    group = _group(kernel, k)
    groups = math.ceil(k / group)
    return {
        "W": rng.integers(0, 256, size=(n, groups * group * kernel.weights.bits // 8), dtype=np.uint8),
        "scales": rng.uniform(1e-3, 2e-3, size=(n, groups)).astype(np.float32),
    }


def _matmul(kernel: Kernel, k: int, n: int, rng: np.random.Generator) -> onnx.ModelProto:
    w = (rng.standard_normal((k, n)) * 0.02).astype(np.float32)
    if kernel.weights is DType.F32:
        return _graph([helper.make_node("MatMul", ["X", "W"], ["Y"])], k, n, {"W": w}, ())
    nodes = [
        helper.make_node("Cast", ["X"], ["Xh"], to=TensorProto.FLOAT16),
        helper.make_node("MatMul", ["Xh", "W"], ["Yh"]),
        helper.make_node("Cast", ["Yh"], ["Y"], to=TensorProto.FLOAT),
    ]
    return _graph(nodes, k, n, {"W": w.astype(np.float16)}, ())


def _bitlinear(kernel: Kernel, k: int, n: int, rng: np.random.Generator) -> onnx.ModelProto:
    weights = _codes(kernel, k, n, rng)
    node = helper.make_node(
        runtime.BITLINEAR,
        ["X", "W", "scales"],
        ["Y"],
        domain=runtime.DOMAIN,
        K=k,
        format=kernel.layout.packing.value,
    )
    return _graph([node], k, n, weights, (runtime.DOMAIN,))


def _lowbit(kernel: Kernel, k: int, n: int, rng: np.random.Generator) -> onnx.ModelProto:
    weights = _codes(kernel, k, n, rng)
    node = helper.make_node(
        runtime.LOWBIT_MATMUL,
        ["X", "W", "scales"],
        ["Y"],
        domain=runtime.DOMAIN,
        K=k,
        bits=kernel.weights.bits,
        group_size=_group(kernel, k),
        act_quant=int(kernel.act_quant),
    )
    return _graph([node], k, n, weights, (runtime.DOMAIN,))


def _dynamic_quantize_matmul(kernel: Kernel, k: int, n: int, rng: np.random.Generator) -> onnx.ModelProto:
    weights = {
        "B": rng.integers(-127, 128, size=(k, n), dtype=np.int8),
        "b_scale": rng.uniform(1e-3, 2e-3, size=n).astype(np.float32),
    }
    node = helper.make_node("DynamicQuantizeMatMul", ["X", "B", "b_scale"], ["Y"], domain=_MS_DOMAIN)
    return _graph([node], k, n, weights, (_MS_DOMAIN,))


def _dequantized_matmul(kernel: Kernel, k: int, n: int, rng: np.random.Generator) -> onnx.ModelProto:
    weights = _codes(kernel, k, n, rng)
    attrs: dict[str, object] = {"K": k, "to": TensorProto.FLOAT}
    if kernel.weights is DType.BITNET158:
        attrs.update(bits=0, format=kernel.layout.packing.value)
    else:
        attrs.update(bits=kernel.weights.bits, group_size=_group(kernel, k))
    nodes = [
        helper.make_node(runtime.DEQUANTIZE_LOWBIT, ["W", "scales"], ["Wf"], domain=runtime.DOMAIN, **attrs),
        helper.make_node("Transpose", ["Wf"], ["Wt"], perm=[1, 0]),
        helper.make_node("MatMul", ["X", "Wt"], ["Y"]),
    ]
    model = _graph(nodes, k, n, weights, (runtime.DOMAIN,))
    # A custom op's output type must be declared (kernels/README.md, DequantizeLowBit).
    model.graph.value_info.append(helper.make_tensor_value_info("Wf", TensorProto.FLOAT, [n, k]))
    return model


_Builder = Callable[[Kernel, int, int, np.random.Generator], onnx.ModelProto]
_BUILDERS: Mapping[str, tuple[_Builder, ...]] = MappingProxyType(
    {
        "MatMul": (_matmul,),
        "BitLinear": (_bitlinear,),
        "LowBitMatMul": (_lowbit,),
        "Int8MatMul": (_lowbit, _dynamic_quantize_matmul),
        "DequantizeLowBit+MatMul": (_dequantized_matmul,),
    }
)


# -- the machine and the cache --------------------------------------------------------------------


def cache_path() -> Path:
    """Where measured latency tables are kept, one per machine key."""
    return _CACHE.path()


def _save(machine: str, table: LatencyTable) -> None:
    machines = _CACHE.load()
    machines[machine] = table.to_json()["curves"]
    _CACHE.store(machines)


# -- the cost model -------------------------------------------------------------------------------


def storage_shape(layer: Layer) -> tuple[int, ...] | None:
    """The shape the compiler stores `layer`'s weight in (module docstring), None without one."""
    shape = layer.weight_shape
    if shape is None or layer.weight is None:
        return None
    matrix = layer.layer_type in (LayerType.LINEAR, LayerType.OUTPUT) and len(shape) == 2
    if matrix and layer.weight_nk is False:
        return (shape[1], shape[0])
    if layer.layer_type is LayerType.CONVOLUTION and len(shape) > 2:
        return (shape[0], math.prod(shape[1:]))
    return tuple(shape)


class CostModel:
    """Bytes and latency of layers under precision choices (module docstring)."""

    def __init__(self, latency_table: LatencyTable) -> None:
        self.latency_table = latency_table

    def weight_bytes(self, layer: Layer, choice: PrecisionChoice) -> int:
        shape = storage_shape(layer)
        if shape is None:
            return 0
        return storage_bytes(choice.precision, shape, choice.layout if choice.precision.is_integer else None)

    def bias_bytes(self, layer: Layer, choice: PrecisionChoice) -> int:
        shape = storage_shape(layer)
        if layer.bias is None or shape is None:
            return 0
        count = math.prod(shape) if layer.layer_type is LayerType.NORMALIZATION else shape[0]
        dtype = choice.precision if choice.precision.is_float else DType.F32
        return storage_bytes(dtype, (count,))

    def memory_bytes(self, layer: Layer, choice: PrecisionChoice) -> int:
        """Bytes the compiled layer stores alone: weights and bias (module docstring)."""
        return self.weight_bytes(layer, choice) + self.bias_bytes(layer, choice)

    def plan_bytes(self, layers: Iterable[Layer], plan: Mapping[str, PrecisionChoice]) -> int:
        """Bytes of a whole plan; a weight several layers store alike counts once."""
        total = 0
        stored: set[tuple[str, DType, WeightLayout]] = set()
        for layer in layers:
            choice = plan[layer.name]
            total += self.bias_bytes(layer, choice)
            if layer.weight is None:
                continue
            layout = choice.layout if choice.precision.is_integer else WeightLayout()
            key = (layer.weight, choice.precision, layout)
            if key not in stored:
                stored.add(key)
                total += self.weight_bytes(layer, choice)
        return total

    def latency_us(self, layer: Layer, choice: PrecisionChoice, tokens: float = 1) -> float:
        """Predicted µs of the layer's kernel for `tokens` rows (0 where not modelled)."""
        kernel = kernel_for(layer.layer_type, choice)
        shape = storage_shape(layer)
        if kernel is None or shape is None or len(shape) != 2:
            return 0.0
        n, k = shape
        return self.latency_table.micros(kernel, k, n, tokens)

    def plan_latency_us(
        self, layers: Iterable[Layer], plan: Mapping[str, PrecisionChoice], tokens: float = 1
    ) -> float:
        return sum(self.latency_us(layer, plan[layer.name], tokens) for layer in layers)
