"""Decode benchmark: LLaMA-style KV-cache decoders token by token, ours against onnxruntime's own
quantizations, in one run (issue 11, TARGETS.md "LLM decoding").

1. Models. `models.llama` with `kv_cache=True` (the interface of torch's dynamo export of a
   use_cache model) at each --sizes preset (`small` is the ~100M-parameter decoder), with random
   N(0, 0.02²) and exactly-ternary ({−1, 0, +1} × one scale per matrix) weights. Built once into
   --cache-dir, in a folder named with a hash of the builder's sources.
2. Contenders, each made from the fp32 model in this process: fp32 itself; onnxruntime's
   MatMulNBitsQuantizer 4-bit with blocks of 32 and of 128 and 2-bit with blocks of 32
   (symmetric, accuracy_level 4: int8 activations); onnxruntime's quantize_dynamic int8
   (DynamicQuantizeMatMul / MatMulInteger); ours, `bitnet_onnx.compile(..., "balanced")`.
3. Timing, per contender and --threads count, batch 1: `runtime.generate` on a --prefill-token
   prompt then --steps greedy tokens; prefill ms is the prefill call, decode ms/token the median of
   the decode steps; the best of --repeats generate runs (sessions take turns, so a noisy
   neighbour slows them alike).
4. Weight bytes per token: the bytes of every initializer a matmul-like node reads (weights,
   scales, zero points; not the embedding or rotary tables, of which a token reads one row).
   bytes / ms per token is each contender's weight stream; the fastest one measured in the run
   bounds what a token can cost: ours' bytes at that stream is its floor.
5. Accuracy of ours on the exactly-ternary model: the logits' cosine against fp32 at each of the
   first 64 greedy steps while the two pick the same tokens (and how many steps they agree).

The run ends with the ratios of TARGETS.md "LLM decoding": ours against fp32, the faster ORT 4-bit,
ORT 2-bit at 1 thread, and ours at 2 threads against 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

# Imported before any compile: onnxruntime.quantization loads onnx.reference, which refuses op names
# registered in two domains, as compile's typing schemas (bitnet.normalize.typed.*) then are.
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

from bench.compiler import _builder_hash, _ints, _needs_external_data, suite_parser
from bitnet_onnx import runtime
from bitnet_onnx.compiler.compile import compile
from bitnet_onnx.core._text import table
from bitnet_onnx.core.errors import ConfigError
from bitnet_onnx.runtime.decoding import generate
from models import llama
from models._onnx import save_model
from models.weights import WeightInit

__all__ = ["Contender", "Timing", "main", "weight_bytes"]

logger = logging.getLogger(__name__)

_WEIGHTS = {"random": WeightInit.RANDOM, "ternary": WeightInit.TERNARY}
_MATMUL_OPS = frozenset(
    {"MatMul", "Gemm", "MatMulNBits", "MatMulInteger", "DynamicQuantizeMatMul", "BitLinear", "LowBitMatMul"}
)
_COSINE_STEPS = 64


@dataclass(frozen=True)
class Contender:
    """A way to run the decoder: `make(fp32 path, folder)` writes its model and returns the path."""

    name: str
    label: str
    make: Callable[[Path, Path], Path]


@dataclass(frozen=True)
class Timing:
    weights: str
    contender: str
    threads: int
    prefill_ms: float
    decode_ms: float  # median ms per decode step (one token)
    weight_bytes: int

    @property
    def stream_gbps(self) -> float:
        return self.weight_bytes / (self.decode_ms * 1e6)


def _fp32(model: Path, folder: Path) -> Path:
    return model


def _nbits(bits: int, block: int) -> Callable[[Path, Path], Path]:
    def make(model: Path, folder: Path) -> Path:
        quantizer = MatMulNBitsQuantizer(
            onnx.load(model), bits=bits, block_size=block, is_symmetric=True, accuracy_level=4
        )
        quantizer.process()
        out = folder / f"nbits{bits}b{block}.onnx"
        save_model(quantizer.model.model, out)
        return out

    return make


def _int8_dynamic(model: Path, folder: Path) -> Path:
    out = folder / "int8_dynamic.onnx"
    large = model.with_name(f"{model.name}.data").exists()
    quantize_dynamic(model, out, weight_type=QuantType.QInt8, use_external_data_format=large)
    return out


def _ours(model: Path, folder: Path) -> Path:
    out = folder / "balanced.onnx"
    compile(model, "balanced", output=out, strict=False)
    return out


CONTENDERS = (
    Contender("fp32", "fp32", _fp32),
    Contender("nbits4b32", "ORT MatMulNBits 4-bit b32 acc4", _nbits(4, 32)),
    Contender("nbits4b128", "ORT MatMulNBits 4-bit b128 acc4", _nbits(4, 128)),
    Contender("nbits2b32", "ORT MatMulNBits 2-bit b32 acc4", _nbits(2, 32)),
    Contender("int8", "ORT quantize_dynamic int8", _int8_dynamic),
    Contender("ours", "bitnet-onnx balanced", _ours),
)


def _model(size: str, weights: str, cache: Path) -> Path:
    """The KV-cache decoder of `size` with `weights`, built into `cache` unless it is there (with
    external data past protobuf's 2 GB, the `1b` preset)."""
    folder = cache / f"llama_kv_{size}_{weights}_{_builder_hash()}"
    path = folder / "model.onnx"
    if not path.is_file():
        logger.info("building %s", path)
        config = llama.LlamaConfig.preset(size, kv_cache=True, weights=_WEIGHTS[weights])
        partial = cache / f"{folder.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        save_model(llama.build(config), partial / path.name, external_data=_needs_external_data(size))
        os.replace(partial, folder)  # the model and its data file appear together
    return path


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the initializers matmul-like nodes read (what one decode step streams)."""
    sizes = {t.name: _tensor_bytes(t) for t in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    read: set[str] = set()
    pending = [name for node in model.graph.node if node.op_type in _MATMUL_OPS for name in node.input]
    while pending:  # through the Concat/Expand a fused call (fuse_siblings) stacks its weights with
        name = pending.pop()
        producer = producers.get(name)
        if producer is not None and producer.op_type in ("Concat", "Expand") and name not in read:
            pending.extend(producer.input)
        read.add(name)
    return sum(size for name, size in sizes.items() if name in read)


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return (count + 1) // 2
    return count * itemsize


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = runtime.session_options(threads)
    options.log_severity_level = 3  # errors only
    return runtime.session(str(path), options=options)


def _prompt(vocab: int, length: int) -> list[int]:
    return [int(i) for i in np.random.default_rng(0).integers(0, vocab, size=length)]


def _time(
    paths: dict[str, Path], weights: str, threads: int, prompt: list[int], steps: int, repeats: int
) -> list[Timing]:
    sessions = {name: _session(path, threads) for name, path in paths.items()}
    models = {name: onnx.load(path, load_external_data=False) for name, path in paths.items()}
    best: dict[str, tuple[float, float]] = {}
    for _ in range(repeats):  # the contenders take turns
        for name, session in sessions.items():
            result = generate(session, prompt, steps + 1, model=models[name])
            decode = statistics.median(result.step_ms)
            old = best.get(name, (float("inf"), float("inf")))
            best[name] = (min(old[0], result.prefill_ms), min(old[1], decode))
    return [
        Timing(weights, name, threads, prefill, decode, weight_bytes(models[name]))
        for name, (prefill, decode) in best.items()
    ]


@dataclass(frozen=True)
class Agreement:
    of: int  # greedy steps compared
    steps: int  # greedy steps before ours first picks another token than fp32
    min_cosine: float  # over those steps' logits


def _agreement(fp32: Path, ours: Path, prompt: list[int], steps: int) -> Agreement:
    runs = [
        generate(_session(path, 1), prompt, steps, model=onnx.load(path, load_external_data=False),
                 keep_logits=True)
        for path in (fp32, ours)
    ]  # fmt: skip
    cosines = []
    for a, b, row_a, row_b in zip(
        runs[0].tokens, runs[1].tokens, runs[0].logits, runs[1].logits, strict=True
    ):
        x, y = row_a.astype(np.float64), row_b.astype(np.float64)
        cosines.append(float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y))))
        if a != b:  # later steps see different sequences: their logits are not comparable
            break
    agreeing = next(
        (i for i, (a, b) in enumerate(zip(*(r.tokens for r in runs), strict=True)) if a != b), steps
    )
    return Agreement(steps, agreeing, min(cosines))


def _report(size: str, timings: list[Timing], agreement: Agreement | None, prefill: int, steps: int) -> str:
    labels = {c.name: c.label for c in CONTENDERS}
    fastest = max(timings, key=lambda t: t.stream_gbps)
    rows = []
    for t in timings:
        rows.append(
            [
                t.weights,
                labels[t.contender],
                str(t.threads),
                f"{t.prefill_ms:.1f}",
                f"{t.decode_ms:.2f}",
                f"{t.weight_bytes / 2**20:.1f}",
                f"{t.stream_gbps:.1f}",
                f"{t.weight_bytes / (fastest.stream_gbps * 1e6):.2f}",
            ]
        )
    head = ["weights", "contender", "T", f"prefill {prefill} ms", "decode ms/token", "weight MiB", "GB/s",
            "floor ms"]  # fmt: skip
    lines = [
        f"bench decode: llama {size} with KV cache, batch 1, prompt {prefill} tokens, {steps} decode steps",
        f"machine: {runtime.cpu_model() or 'unknown CPU'}, onnxruntime {ort.__version__}, ISA path "
        f"{runtime.dispatch_isa().value}",
        table(head, rows),
        f"fastest weight stream: {labels[fastest.contender]} ({fastest.weights}, T{fastest.threads}) at "
        f"{fastest.stream_gbps:.1f} GB/s; floor ms = the contender's weight bytes at that stream",
        "",
        "ratios (decode ms/token; > 1: ours is faster):",
    ]
    by = {(t.weights, t.contender, t.threads): t for t in timings}
    for weights in dict.fromkeys(t.weights for t in timings):
        for threads in sorted({t.threads for t in timings}):
            ours = by.get((weights, "ours", threads))
            if ours is None:
                continue
            for name in ("fp32", "nbits4b32", "nbits4b128", "nbits2b32", "int8"):
                other = by.get((weights, name, threads))
                if other is not None:
                    ratio = other.decode_ms / ours.decode_ms
                    lines.append(f"  {weights} T{threads}: ours vs {labels[name]}: {ratio:.2f}×")
        one, two = by.get((weights, "ours", 1)), by.get((weights, "ours", 2))
        if one is not None and two is not None:
            lines.append(f"  {weights}: ours T2 vs T1: {one.decode_ms / two.decode_ms:.2f}×")
    if agreement is not None:
        lines.append(
            f"exactly-ternary: ours picks fp32's greedy tokens for {agreement.steps} of {agreement.of} "
            f"steps; logits cosine ≥ {agreement.min_cosine:.5f} up to the first difference"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = suite_parser("decode", __doc__)
    parser.add_argument("--weights", default="random,ternary", help="random and/or ternary, comma-separated")
    parser.add_argument("--contenders", default=",".join(c.name for c in CONTENDERS), help="comma-separated")
    parser.add_argument("--threads", default="1,2", help="intra-op thread counts, comma-separated")
    parser.add_argument("--prefill", type=int, default=128, help="prompt tokens (default %(default)s)")
    parser.add_argument("--steps", type=int, default=128, help="decode steps timed (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=2, help="generate runs per contender (best)")
    return parser


def _choices(text: str, known: Sequence[str], what: str) -> list[str]:
    chosen = [item for item in text.split(",") if item]
    unknown = [item for item in chosen if item not in known]
    if unknown or not chosen:
        raise ConfigError(f"--{what} {text!r}: choose among {', '.join(known)}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    threads = _ints(args.threads, "threads")
    weights = _choices(args.weights, list(_WEIGHTS), "weights")
    names = _choices(args.contenders, [c.name for c in CONTENDERS], "contenders")
    contenders = [c for c in CONTENDERS if c.name in names]
    for size in _choices(args.sizes, list(llama.PRESETS), "sizes"):
        config = llama.LlamaConfig.preset(size)
        if args.prefill + args.steps + 1 > config.max_seq_len:
            raise ConfigError(
                f"--prefill {args.prefill} + --steps {args.steps} exceed the {size} preset's "
                f"{config.max_seq_len} positions"
            )
        prompt = _prompt(config.vocab_size, args.prefill)
        timings: list[Timing] = []
        agreement = None
        with tempfile.TemporaryDirectory(prefix="bitnet-onnx-bench-decode-") as tmp:
            for kind in weights:
                model = _model(size, kind, args.cache_dir)
                folder = Path(tmp) / kind
                folder.mkdir()
                paths = {}
                for contender in contenders:
                    logger.info("making %s (%s weights)", contender.label, kind)
                    paths[contender.name] = contender.make(model, folder)
                for count in threads:
                    timings += _time(paths, kind, count, prompt, args.steps, args.repeats)
                if kind == "ternary" and "ours" in paths and "fp32" in paths:
                    short = prompt[:16]
                    steps = min(_COSINE_STEPS, config.max_seq_len - len(short))
                    agreement = _agreement(paths["fp32"], paths["ours"], short, steps)
        print(_report(size, timings, agreement, args.prefill, args.steps))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
