"""Random small ONNX models built from the op set the layer annotator knows (passes/layer_patterns.py).

`random_models()` is a hypothesis strategy of `RandomModel`s: a start (a dense float input, token
ids through a Gather embedding, or an image through Conv + Relu + Flatten), then a chain of blocks
on the running activation [..., H] (rank 2 or 3): MatMul or Gemm with constant weights of random
shapes and an optional bias Add, Relu / SiLU (Sigmoid·Mul) / decomposed erf-GELU / Tanh,
LayerNormalization, decomposed LayerNorm and RMSNorm, a Softmax attention fragment, Reshape and
Transpose, and residual Adds. Weights are random in value kind too (normal, zero, constant, ternary,
large, subnormal, with zero rows; in one model out of ten also NaN or Inf) and in how they reach
their op: an initializer, a Constant node, through Transpose or Identity, or tied (one initializer
read by two layers). The model computes in float32 or float16; opsets 13 to 21 (ReduceMean's axes
are an attribute before 18 and an input from 18; LayerNormalization from 17, Gelu from 20).

The model's own numbers are not the point: every model is valid ONNX that onnxruntime runs, and the
fuzz tests check what the compiler does with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

__all__ = ["DIMS", "RandomModel", "random_models"]

DIMS = {"batch": 2, "seq": 3}
"""Sizes of the symbolic dims, for sample inputs and compile(dims=...)."""

WEIGHT_KINDS = (
    "normal",
    "normal",
    "normal",
    "normal",
    "ternary",
    "zeros",
    "constant",
    "large",
    "subnormal",
    "zero_rows",
)
NONFINITE_KINDS = (*WEIGHT_KINDS, "nan", "inf")
WEIGHT_SOURCES = (
    "initializer",
    "initializer",
    "initializer",
    "constant_node",
    "transposed",
    "identity",
    "tied",
)


@dataclass(frozen=True, repr=False)
class RandomModel:
    """A model, one feed per input, and the blocks it was built from (for reading a failure)."""

    model: onnx.ModelProto
    feeds: dict[str, np.ndarray]
    blocks: tuple[str, ...]
    weight_kinds: tuple[str, ...]

    def __repr__(self) -> str:
        return f"RandomModel(blocks={self.blocks}, weight_kinds={self.weight_kinds})"


@dataclass
class _Flow:
    """The running activation: its name, rank, last dim and a key equal for tensors of one shape."""

    name: str
    rank: int
    width: int
    shape_key: tuple[object, ...]


@dataclass
class _Builder:
    rng: np.random.Generator
    opset: int
    dtype: type
    draw: Callable[[st.SearchStrategy[str]], str]
    kinds: tuple[str, ...] = WEIGHT_KINDS
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    drawn: list[str] = field(default_factory=list)
    weights: dict[tuple[int, ...], str] = field(default_factory=dict)  # for tying
    count: int = 0

    @property
    def onnx_type(self) -> int:
        return helper.np_dtype_to_tensor_dtype(np.dtype(self.dtype))

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def const(self, array: np.ndarray, stem: str) -> str:
        name = self.name(stem)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def weight(self, shape: Sequence[int], stem: str, fan_in: int, transposable: bool = False) -> str:
        """A float constant of `shape`, with a random value kind, reaching its reader a random way."""
        shape = tuple(shape)
        kind = self.draw(st.sampled_from(self.kinds))
        source = self.draw(st.sampled_from(WEIGHT_SOURCES))
        if source == "transposed" and not (transposable and len(shape) == 2):
            source = "initializer"
        if source == "tied" and shape not in self.weights:
            source = "initializer"
        self.drawn.append(f"{kind}/{source}")
        values = _weights(self.rng, shape, kind, fan_in).astype(self.dtype)
        if source == "tied":
            return self.weights[shape]
        if source == "constant_node":
            name = self.name(stem)
            tensor = numpy_helper.from_array(values, f"{name}_value")
            self.nodes.append(
                helper.make_node("Constant", [], [name], name=f"/{name}/Constant", value=tensor)
            )
        elif source == "transposed":
            name = self.op("Transpose", [self.const(np.ascontiguousarray(values.T), stem)], perm=[1, 0])
        elif source == "identity":
            name = self.op("Identity", [self.const(values, stem)])
        else:
            name = self.const(values, stem)
        self.weights.setdefault(shape, name)
        return name

    def op(self, op: str, inputs: Sequence[str], **attrs: object) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=self.name(f"/{op}"), **attrs))
        return out

    def scalar(self, value: float) -> str:
        return self.const(np.asarray(value, self.dtype), "c")

    def reduce_mean(self, x: str) -> str:
        if self.opset >= 18:
            return self.op("ReduceMean", [x, self.const(np.array([-1], np.int64), "axes")], keepdims=1)
        return self.op("ReduceMean", [x], axes=[-1], keepdims=1)


def _weights(rng: np.random.Generator, shape: Sequence[int], kind: str, fan_in: int) -> np.ndarray:
    """float64 values of one kind; the builder rounds them to the model's type (subnormal and large
    are relative to float32: in a float16 model they underflow to 0 and stay finite)."""
    normal = rng.standard_normal(shape) / math.sqrt(max(fan_in, 1))
    if kind == "ternary":
        return rng.integers(-1, 2, size=shape) * 0.05
    if kind == "zeros":
        return np.zeros(shape)
    if kind == "constant":
        return np.full(shape, 0.125)
    if kind == "large":
        return normal * 3e3
    if kind == "subnormal":
        return normal * 1e-39
    if kind == "zero_rows" and normal.ndim >= 1 and normal.size:
        normal[..., ::2] = 0.0
        normal[::2] = 0.0
    if kind in ("nan", "inf") and normal.size:
        normal.reshape(-1)[rng.integers(normal.size)] = np.nan if kind == "nan" else -np.inf
    return normal


# -- blocks: each takes the flow and returns the new one ------------------------------------------


def _linear(b: _Builder, x: _Flow, n: int, style: str, bias: bool) -> _Flow:
    if style == "gemm" and x.rank == 2:
        trans_b = int(b.rng.integers(2))
        w = b.weight((n, x.width) if trans_b else (x.width, n), "weight", x.width)
        inputs = [x.name, w] + ([b.weight((n,), "bias", x.width)] if bias else [])
        out = b.op("Gemm", inputs, transB=trans_b)
    else:
        out = b.op("MatMul", [x.name, b.weight((x.width, n), "weight", x.width, transposable=True)])
        if bias:
            operands = [out, b.weight((n,), "bias", x.width)]
            out = b.op("Add", operands if b.rng.integers(2) else operands[::-1])
    return _Flow(out, x.rank, n, (*x.shape_key[:-1], n))


def _activation(b: _Builder, x: _Flow, kind: str) -> _Flow:
    if kind == "silu":
        out = b.op("Mul", [x.name, b.op("Sigmoid", [x.name])])
    elif kind == "gelu_erf":
        erf = b.op("Erf", [b.op("Div", [x.name, b.scalar(math.sqrt(2.0))])])
        one = b.op("Add", [erf, b.scalar(1.0)])
        out = b.op("Mul", [b.op("Mul", [x.name, one]), b.scalar(0.5)])
    elif kind == "Gelu" and b.opset < 20:
        return _activation(b, x, "gelu_erf")
    else:
        out = b.op(kind, [x.name])
    return _Flow(out, x.rank, x.width, x.shape_key)


def _norm(b: _Builder, x: _Flow, kind: str) -> _Flow:
    gamma = b.weight((x.width,), "gamma", 1)
    if kind == "layer_norm_op" and b.opset >= 17:
        out = b.op("LayerNormalization", [x.name, gamma, b.weight((x.width,), "beta", 1)], axis=-1)
        return _Flow(out, x.rank, x.width, x.shape_key)
    centred = x.name
    if kind == "layer_norm":
        centred = b.op("Sub", [x.name, b.reduce_mean(x.name)])
    variance = b.reduce_mean(b.op("Pow", [centred, b.scalar(2.0)]))
    std = b.op("Sqrt", [b.op("Add", [variance, b.scalar(1e-5)])])
    if kind == "layer_norm":
        normed = b.op("Div", [centred, std])
        out = b.op("Add", [b.op("Mul", [normed, gamma]), b.weight((x.width,), "beta", 1)])
    else:
        out = b.op("Mul", [b.op("Mul", [x.name, b.op("Reciprocal", [std])]), gamma])
    return _Flow(out, x.rank, x.width, x.shape_key)


def _attention(b: _Builder, x: _Flow, head: int, bias: bool) -> _Flow:
    q, k, v = (_linear(b, x, head, "matmul", bias) for _ in range(3))
    perm = [0, 2, 1] if x.rank == 3 else [1, 0]
    scores = b.op("MatMul", [q.name, b.op("Transpose", [k.name], perm=perm)])
    scores = b.op("Mul", [scores, b.scalar(1.0 / math.sqrt(head))])
    probs = b.op("Softmax", [scores], axis=-1)
    context = _Flow(b.op("MatMul", [probs, v.name]), x.rank, head, q.shape_key)
    return _linear(b, context, x.width, "matmul", bias)


def _reshape(b: _Builder, x: _Flow) -> _Flow:
    # Swap batch and sequence (the last axis stays); not in float16 models, which onnxruntime 1.32
    # itself cannot load once such a Transpose feeds a MatMul (SIGSEGV in MatmulTransposeFusion).
    if x.rank == 3 and b.dtype is np.float32 and b.rng.integers(2):
        out = b.op("Transpose", [x.name], perm=[1, 0, 2])
        key = (x.shape_key[1], x.shape_key[0], x.width)
        return _Flow(out, 3, x.width, key)
    target = [-1, x.width] if x.rank == 3 else [1, -1, x.width]
    out = b.op("Reshape", [x.name, b.const(np.array(target, np.int64), "shape")])
    return _Flow(out, len(target), x.width, (*x.shape_key, "reshaped"))


def _conv_start(
    b: _Builder, batch: int | str, channels: int, size: int, layers: int
) -> tuple[str, _Flow, list[int | str]]:
    x = "image"
    dims = [batch, channels, size, size]
    flow = x
    c = channels
    for _ in range(layers):
        out_c = int(b.rng.integers(1, 6))
        kernel = int(b.rng.choice([1, 3]))
        w = b.weight((out_c, c, kernel, kernel), "conv_weight", c * kernel * kernel)
        inputs = [flow, w] + ([b.weight((out_c,), "conv_bias", c)] if b.rng.integers(2) else [])
        flow = b.op("Relu", [b.op("Conv", inputs, pads=[kernel // 2] * 4)])
        c = out_c
    flat = b.op("Flatten", [flow], axis=1)
    return x, _Flow(flat, 2, c * size * size, ("batch", "flat")), dims


# -- the strategy ------------------------------------------------------------------------------------

_BLOCKS = ("linear", "linear", "linear", "activation", "norm", "attention", "reshape", "residual")
_ACTIVATIONS = ("Relu", "silu", "gelu_erf", "Tanh", "Sigmoid", "Gelu")
_NORMS = ("layer_norm_op", "layer_norm", "rms_norm")


@st.composite
def random_models(draw: st.DrawFn, max_blocks: int = 6) -> RandomModel:
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    opset = draw(st.sampled_from([13, 14, 15, 17, 18, 20, 21]))
    dtype = draw(st.sampled_from([np.float32, np.float32, np.float32, np.float16]))
    kinds = NONFINITE_KINDS if draw(st.integers(0, 9)) == 0 else WEIGHT_KINDS
    builder = _Builder(rng, opset, dtype, draw, kinds)
    batch: int | str = draw(st.sampled_from(["batch", 1, 2]))
    batch_size = DIMS["batch"] if batch == "batch" else batch
    start = draw(st.sampled_from(["dense2", "dense3", "embedding", "conv"]))
    blocks = [start]
    feeds: dict[str, np.ndarray] = {}
    inputs: list[onnx.ValueInfoProto] = []
    width = draw(st.integers(1, 40))
    if start == "conv":
        channels, size = draw(st.integers(1, 4)), draw(st.integers(1, 6))
        name, flow, dims = _conv_start(builder, batch, channels, size, draw(st.integers(1, 2)))
        inputs.append(helper.make_tensor_value_info(name, builder.onnx_type, dims))
        feeds[name] = rng.standard_normal((batch_size, channels, size, size)).astype(dtype)
    elif start == "embedding":
        vocab = draw(st.integers(1, 50))
        seq: int | str = draw(st.sampled_from(["seq", 1, 4]))
        seq_size = DIMS["seq"] if seq == "seq" else seq
        table = builder.weight((vocab, width), "embed_tokens.weight", 1)
        inputs.append(helper.make_tensor_value_info("input_ids", TensorProto.INT64, [batch, seq]))
        feeds["input_ids"] = rng.integers(0, vocab, size=(batch_size, seq_size)).astype(np.int64)
        flow = _Flow(builder.op("Gather", [table, "input_ids"]), 3, width, (batch, seq, width))
    else:
        rank = 2 if start == "dense2" else 3
        seq = draw(st.sampled_from(["seq", 1, 5]))
        dims = [batch, width] if rank == 2 else [batch, seq, width]
        inputs.append(helper.make_tensor_value_info("x", builder.onnx_type, dims))
        shape = [DIMS[d] if isinstance(d, str) else d for d in dims]
        feeds["x"] = rng.standard_normal(shape).astype(dtype)
        flow = _Flow("x", rank, width, tuple(dims))
    seen = [flow]
    for i in range(draw(st.integers(1, max_blocks))):
        block = draw(st.sampled_from(_BLOCKS)) if i else "linear"
        if block == "linear":
            n = draw(st.integers(1, 40))
            style = draw(st.sampled_from(["matmul", "gemm"])) if flow.rank == 2 else "matmul"
            flow = _linear(builder, flow, n, style, draw(st.booleans()))
            block = f"{style}({flow.width})"
        elif block == "activation":
            kind = draw(st.sampled_from(_ACTIVATIONS))
            flow, block = _activation(builder, flow, kind), kind
        elif block == "norm":
            kind = draw(st.sampled_from(_NORMS))
            flow, block = _norm(builder, flow, kind), kind
        elif block == "attention":
            flow = _attention(builder, flow, draw(st.integers(1, 16)), draw(st.booleans()))
        elif block == "reshape":
            flow = _reshape(builder, flow)
        else:
            same = [s for s in seen[:-1] if s.shape_key == flow.shape_key and s.name != flow.name]
            if not same:
                continue
            partner = same[0]
            flow = _Flow(builder.op("Add", [flow.name, partner.name]), flow.rank, flow.width, flow.shape_key)
        blocks.append(block)
        seen.append(flow)
    outputs = {flow.name: flow.rank}
    if len(seen) > 2 and draw(st.booleans()):
        middle = seen[len(seen) // 2]
        outputs.setdefault(middle.name, middle.rank)
    inferred = draw(st.booleans())  # else outputs of known rank only, for the compiler to infer
    graph = helper.make_graph(
        builder.nodes,
        "random",
        inputs,
        [helper.make_tensor_value_info(o, builder.onnx_type, [None] * rank) for o, rank in outputs.items()],
        builder.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    if inferred:
        model = _declare_output_shapes(model)
    return RandomModel(model, feeds, tuple(blocks), tuple(builder.drawn))


def _declare_output_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {v.name: v for v in inferred.graph.value_info}
    for output in model.graph.output:
        if output.name in known:
            output.type.CopyFrom(known[output.name].type)
    return model
