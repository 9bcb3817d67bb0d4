"""Token-by-token generation with a decoder's KV cache (`generate`).

A decoder here is a graph with the interface `kv_cache` recognises: an `input_ids` input, past
key/value inputs paired with present outputs, a `logits` output (else the first output that is not
a present one), and optionally `attention_mask` (ones of the total length past + new) and
`position_ids` (past .. past + new - 1). The prompt runs in one call on an empty cache (past length
0, the prefill); each further token runs in one call on the presents the previous call returned.
Any other input is an error naming it: generate does not guess what to feed.

The interface is read from the session (names, declared shapes and types). An empty past needs every
axis but the batch and sequence ones: a fixed declared size, else the head size `kv_cache.head_size`
reads from the model's attention op (onnxruntime-genai leaves it symbolic), so pass `model` then.
With `model`, the ids are also checked against the tables they index: token ids below the
embedding's rows, positions below the model's maximum positions: the rows of the table position ids
gather from, else of the cos cache of a fused rotary op (GroupQueryAttention, RotaryEmbedding).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper
from tqdm import tqdm

from bitnet_onnx.core.errors import ConfigError, UnsupportedModelError
from bitnet_onnx.runtime.kv_cache import CachePair, cache_pairs, head_size
from bitnet_onnx.runtime.sample_inputs import table_rows

__all__ = ["CacheSlot", "DecoderInterface", "Generation", "Sampling", "decoder_interface", "generate"]

_IDS = "input_ids"
_MASK = "attention_mask"
_POSITIONS = "position_ids"
_LOGITS = "logits"
_COS_CACHE_INPUT = {"GroupQueryAttention": 7, "RotaryEmbedding": 2}  # com.microsoft signatures
_ORT_TYPES = {
    "tensor(float)": onnx.TensorProto.FLOAT,
    "tensor(float16)": onnx.TensorProto.FLOAT16,
    "tensor(bfloat16)": onnx.TensorProto.BFLOAT16,
    "tensor(int64)": onnx.TensorProto.INT64,
    "tensor(int32)": onnx.TensorProto.INT32,
}


@dataclass(frozen=True)
class Sampling:
    """How the next token is picked from the last position's logits: the argmax when `temperature`
    is 0 (greedy), else a draw from softmax(logits / temperature) restricted to the `top_k` largest
    (all when None), from a generator seeded with `seed` (None: fresh entropy)."""

    temperature: float = 0.0
    top_k: int | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise ConfigError(f"temperature={self.temperature} must be ≥ 0 (0 picks the argmax, greedy)")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"top_k={self.top_k} must be at least 1 (or None for every token)")
        if self.temperature == 0 and (self.top_k is not None or self.seed is not None):
            raise ConfigError(
                "top_k and seed apply to sampling: set a temperature > 0 (temperature 0 is greedy decoding)"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class CacheSlot:
    """One past input, the present output that returns it grown, and the past's shape at batch 1
    and past length 0 (the empty cache of the prefill)."""

    pair: CachePair
    empty_shape: tuple[int, ...]
    dtype: np.dtype


@dataclass(frozen=True)
class DecoderInterface:
    """What generate feeds a decoder session and reads back from it."""

    ids_dtype: np.dtype
    mask_dtype: np.dtype | None  # None: the model has no attention_mask input
    positions_dtype: np.dtype | None  # None: the model has no position_ids input
    logits: str
    cache: tuple[CacheSlot, ...]
    vocab_rows: int | None  # rows of the embedding table input_ids index, when known
    max_positions: int | None  # rows of the table position_ids index, when known


@dataclass(frozen=True)
class Generation:
    """The result of `generate`: the generated tokens (after the prompt), the prefill's wall time,
    each decode step's wall time (one step per token after the first, which the prefill gives), and,
    when asked for, the last position's logits that picked each token."""

    prompt: tuple[int, ...]
    tokens: tuple[int, ...]
    prefill_ms: float
    step_ms: tuple[float, ...]
    logits: tuple[np.ndarray, ...] = ()

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Decode steps per second of decode wall time (None without a decode step, n = 1)."""
        total = sum(self.step_ms)
        return 1000.0 * len(self.step_ms) / total if self.step_ms and total > 0 else None


@dataclass(frozen=True)
class _Declared:
    """A graph input or output as declared: element type and dims (size, symbol or None)."""

    elem_type: int
    dims: tuple[int | str | None, ...]

    @classmethod
    def of(cls, value: onnx.ValueInfoProto) -> _Declared:
        tensor = value.type.tensor_type
        dims = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim
        )
        return cls(tensor.elem_type, dims)

    @property
    def type_name(self) -> str:
        return onnx.TensorProto.DataType.Name(self.elem_type).lower()

    @property
    def dtype(self) -> np.dtype:
        try:
            return np.dtype(helper.tensor_dtype_to_np_dtype(self.elem_type))
        except KeyError:  # UNDEFINED has no numpy type; the int/float checks refuse it by type_name
            return np.dtype(object)


def _interface_proto(session: ort.InferenceSession) -> onnx.ModelProto:
    """A graph holding only the session's inputs and outputs as onnxruntime reports them (it may
    have replaced a declared size it contradicts by None)."""

    def value(arg: ort.NodeArg) -> onnx.ValueInfoProto:
        shape = [d if isinstance(d, (int, str)) else None for d in arg.shape]
        return helper.make_tensor_value_info(arg.name, _ORT_TYPES.get(arg.type, 0), shape)

    graph = helper.make_graph(
        [], "interface", [value(a) for a in session.get_inputs()], [value(a) for a in session.get_outputs()]
    )
    return helper.make_model(graph)


def decoder_interface(
    session: ort.InferenceSession, model: onnx.ModelProto | None = None
) -> DecoderInterface:
    """The decoder interface of `session` (see the module docstring); `model`, the graph it runs,
    gives the declared shapes, symbolic head sizes and the id limits. Raises UnsupportedModelError
    naming what is missing."""
    proto = model if model is not None else _interface_proto(session)
    initializers = {t.name for t in proto.graph.initializer}
    inputs = {v.name: _Declared.of(v) for v in proto.graph.input if v.name not in initializers}
    outputs = {v.name: _Declared.of(v) for v in proto.graph.output}
    pairs = cache_pairs(proto)
    if not pairs:
        raise UnsupportedModelError(
            "the model has no KV cache: no past input pairs with a present output (inputs: "
            f"{', '.join(inputs)}; outputs: {', '.join(outputs)}); generate needs a decoder exported with "
            "past_key_values.N.key/value inputs and present.N.key/value outputs (e.g. torch.onnx.export "
            "of a model called with use_cache=True)"
        )
    if _IDS not in inputs:
        raise UnsupportedModelError(f"the model has no {_IDS!r} input (its inputs: {', '.join(inputs)})")
    fed = {_IDS, _MASK, _POSITIONS} | {p.past for p in pairs}
    unknown = [name for name in inputs if name not in fed]
    if unknown:
        raise UnsupportedModelError(
            f"generate cannot feed the model's input(s) {', '.join(unknown)}: it feeds {_IDS}, {_MASK}, "
            f"{_POSITIONS} and the past key/value inputs"
        )
    presents = {p.present for p in pairs}
    logits = _LOGITS if _LOGITS in outputs else next((o for o in outputs if o not in presents), None)
    if logits is None:
        raise UnsupportedModelError(
            f"the model has no logits output besides its presents ({', '.join(outputs)})"
        )
    for name in (_IDS, _MASK, _POSITIONS):
        if name in inputs and inputs[name].dtype not in (np.int64, np.int32):
            raise UnsupportedModelError(
                f"input {name!r} is {inputs[name].type_name}; generate feeds int64 or int32"
            )
    tables = table_rows(model.graph) if model is not None else {}
    return DecoderInterface(
        ids_dtype=inputs[_IDS].dtype,
        mask_dtype=inputs[_MASK].dtype if _MASK in inputs else None,
        positions_dtype=inputs[_POSITIONS].dtype if _POSITIONS in inputs else None,
        logits=logits,
        cache=tuple(_slot(pair, inputs[pair.past], outputs[pair.present], model) for pair in pairs),
        vocab_rows=tables.get(_IDS),
        max_positions=tables.get(_POSITIONS) or (_rotary_rows(model) if model is not None else None),
    )


def _rotary_rows(model: onnx.ModelProto) -> int | None:
    """The rows of the cos cache a fused rotary op reads (onnxruntime-genai has no position input:
    GroupQueryAttention rotates by the mask's positions), when it is an initializer."""
    rows = {t.name: int(t.dims[0]) for t in model.graph.initializer if t.dims}
    for node in model.graph.node:
        slot = _COS_CACHE_INPUT.get(node.op_type)
        if slot is not None and len(node.input) > slot and node.input[slot] in rows:
            return rows[node.input[slot]]
    return None


def _slot(pair: CachePair, past: _Declared, present: _Declared, model: onnx.ModelProto | None) -> CacheSlot:
    if pair.axis is None:
        raise UnsupportedModelError(
            f"cache input {pair.past!r} declares no sequence axis (no dim named past…, and {pair.present!r} "
            "declares the same dims); re-export it with dynamic past/present sequence dims"
        )
    if past.dtype not in (np.float32, np.float16):
        raise UnsupportedModelError(
            f"cache input {pair.past!r} is {past.type_name}; generate feeds float or float16"
        )
    if len(past.dims) != len(present.dims):
        raise UnsupportedModelError(
            f"mismatched cache shapes: {pair.past!r} has rank {len(past.dims)}, {pair.present!r} rank "
            f"{len(present.dims)}"
        )
    shape = []
    for axis, (size, grown) in enumerate(zip(past.dims, present.dims, strict=True)):
        if axis == pair.axis:
            shape.append(0)
        elif axis == 0:
            shape.append(1)  # batch 1
        elif isinstance(size, int) and isinstance(grown, int) and size != grown:
            raise UnsupportedModelError(
                f"mismatched cache shapes: {pair.past!r} declares {list(past.dims)} but {pair.present!r} "
                f"declares {list(present.dims)} (axis {axis}: {size} vs {grown}); the present returned "
                "must be feedable as the next past"
            )
        elif isinstance(size, int) or isinstance(grown, int):
            shape.append(size if isinstance(size, int) else grown)
        else:
            found = head_size(model, pair.past) if model is not None and axis == len(past.dims) - 1 else None
            if found is None:
                raise UnsupportedModelError(
                    f"cache input {pair.past!r} axis {axis} has the symbolic size {size!r}, so an empty "
                    "cache cannot be made"
                    + ("" if model is not None else "; pass the model (generate(..., model=...)) to read it")
                )
            shape.append(found)
    return CacheSlot(pair, tuple(shape), past.dtype)


def generate(
    session: ort.InferenceSession,
    ids: Sequence[int],
    n: int,
    *,
    sampling: Sampling = Sampling(),
    model: onnx.ModelProto | None = None,
    progress: bool = False,
    keep_logits: bool = False,
) -> Generation:
    """Generate `n` tokens after the prompt `ids` with `session`'s KV cache (batch 1): one prefill
    call on the prompt, then one call per token. `model` is the graph the session runs (see the
    module docstring); `keep_logits` keeps the logits row that picked each token."""
    interface = decoder_interface(session, model)
    prompt = tuple(int(i) for i in ids)
    _check_request(interface, prompt, n)
    rng = np.random.default_rng(sampling.seed)
    cache = {slot.pair.past: np.zeros(slot.empty_shape, slot.dtype) for slot in interface.cache}
    names = [interface.logits, *(slot.pair.present for slot in interface.cache)]
    tokens: list[int] = []
    kept: list[np.ndarray] = []
    step_ms: list[float] = []
    prefill_ms = 0.0
    new = list(prompt)
    with tqdm(total=n, desc="generate", unit="tok", disable=not progress) as bar:
        while len(tokens) < n:
            past = len(prompt) + len(tokens) - len(new)
            feeds = _feeds(interface, new, past, cache)
            start = time.perf_counter()
            outputs = _run(session, names, feeds)
            elapsed = 1000.0 * (time.perf_counter() - start)
            if tokens:
                step_ms.append(elapsed)
            else:
                prefill_ms = elapsed
            cache = _next_cache(interface, outputs[1:], past + len(new))
            row = _last_row(interface.logits, outputs[0])
            token = _pick(row, sampling, rng)
            tokens.append(token)
            if keep_logits:
                kept.append(row)
            new = [token]
            bar.update()
    return Generation(prompt, tuple(tokens), prefill_ms, tuple(step_ms), tuple(kept))


def _check_request(interface: DecoderInterface, prompt: tuple[int, ...], n: int) -> None:
    if n < 1:
        raise ConfigError(f"n={n}: generate at least one token")
    if not prompt:
        raise ConfigError("the prompt is empty: give at least one token id")
    bad = [i for i in prompt if i < 0 or (interface.vocab_rows is not None and i >= interface.vocab_rows)]
    if bad:
        limit = f" below {interface.vocab_rows} (the embedding's rows)" if interface.vocab_rows else ""
        raise ConfigError(f"prompt token ids {bad} are out of range: ids must be ≥ 0{limit}")
    # The last token generated is never fed back, so the longest sequence fed is prompt + n - 1.
    longest = len(prompt) + n - 1
    if interface.max_positions is not None and longest > interface.max_positions:
        raise ConfigError(
            f"a prompt of {len(prompt)} tokens plus {n} generated needs {longest} positions; the model has "
            f"{interface.max_positions} (its position table's rows): shorten the prompt or generate fewer "
            "tokens"
        )


def _feeds(
    interface: DecoderInterface, new: list[int], past: int, cache: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    feeds = {_IDS: np.asarray([new], interface.ids_dtype), **cache}
    if interface.mask_dtype is not None:
        feeds[_MASK] = np.ones((1, past + len(new)), interface.mask_dtype)
    if interface.positions_dtype is not None:
        feeds[_POSITIONS] = np.arange(past, past + len(new), dtype=interface.positions_dtype)[None]
    return feeds


def _run(session: ort.InferenceSession, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    try:
        return session.run(names, feeds)
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in feeds.items())
        raise UnsupportedModelError(f"onnxruntime failed on a decode step fed {shapes}: {exc}") from exc


def _next_cache(interface: DecoderInterface, presents: list[np.ndarray], total: int) -> dict[str, np.ndarray]:
    cache = {}
    for slot, present in zip(interface.cache, presents, strict=True):
        expected = list(slot.empty_shape)
        expected[slot.pair.axis] = total
        if list(present.shape) != expected:
            raise UnsupportedModelError(
                f"mismatched cache shapes: {slot.pair.present!r} came back {list(present.shape)}, the next "
                f"{slot.pair.past!r} must be {expected} (the past grown by the tokens fed)"
            )
        cache[slot.pair.past] = present
    return cache


def _last_row(name: str, logits: np.ndarray) -> np.ndarray:
    if logits.ndim < 2 or logits.shape[0] != 1:
        raise UnsupportedModelError(
            f"output {name!r} has shape {list(logits.shape)}; expected [1, seq, vocab]"
        )
    return np.asarray(logits.reshape(-1, logits.shape[-1])[-1], np.float32)


def _pick(row: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
    if sampling.greedy:
        return int(np.argmax(row))
    scaled = row.astype(np.float64) / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < scaled.size:
        dropped = np.argpartition(scaled, -sampling.top_k)[: -sampling.top_k]
        scaled[dropped] = -np.inf
    weights = np.exp(scaled - scaled.max())
    return int(rng.choice(scaled.size, p=weights / weights.sum()))
