"""BERT-style encoder with a sequence-classification head, as torch.onnx exports it.

input_ids, attention_mask int64 [batch, seq] → by `BertHead`: CLASSIFIER, last_hidden_state float32
[batch, seq, hidden] and logits float32 [batch, num_labels] (HF BertForSequenceClassification in eval
mode); MEAN_POOLING, sentence_embedding float32 [batch, hidden] (a sentence-transformers encoder:
BertModel, Pooling with mean tokens, Normalize). The graph:
- embeddings (scope `/bert/embeddings`): Gather on the word, position and token-type tables
  (positions and token types are slices of the `position_ids` / `token_type_ids` buffers, all-zero
  token types as HF uses when none are given), summed, then LayerNorm;
- the mask as HF extends it: (1 − mask[:, None, None, :]) · float32 min, added to the scores;
- per layer (scope `/bert/encoder/layer.i`): query/key/value projections, scores = q·kᵀ / sqrt(d)
  + mask, Softmax, ·v, output dense + residual + LayerNorm; intermediate dense + GELU, output dense
  + residual + LayerNorm;
- CLASSIFIER: pooler (first token → dense → Tanh) and the classifier dense → `logits`;
- MEAN_POOLING (scope `/pooling`): the mean of the tokens the mask keeps, Σ x·m / max(Σ m, 1e-9),
  then (scope `/normalize`) divided by max(‖·‖₂, 1e-12), the clamps sentence-transformers and
  torch's F.normalize use.
Styles: `LayerNormStyle` (the opset-17 fused op, or ReduceMean → Sub → Pow → ReduceMean → Add →
Sqrt → Div → Mul → Add as exporters write it below opset 17), `GeluStyle` (Erf form
x·0.5·(1 + erf(x/√2)) or tanh form 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))), `LinearStyle`
(MatMul with a [K, N] weight + Add bias, or Gemm(transB=1) with a [N, K] weight as torch writes a
2-D Linear; 3-D inputs are reshaped to 2-D around the Gemm). Pooler and classifier act on 2-D
inputs, so they are a single Gemm in the GEMM style.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from models._onnx import GraphBuilder, check_opset, require
from models.weights import WeightInit, WeightSampler

__all__ = ["BertConfig", "BertHead", "GeluStyle", "LayerNormStyle", "LinearStyle", "build"]


class LayerNormStyle(enum.Enum):
    LAYER_NORMALIZATION = "layer_normalization"  # ONNX opset 17
    DECOMPOSED = "decomposed"


class GeluStyle(enum.Enum):
    ERF = "erf"
    TANH = "tanh"


class LinearStyle(enum.Enum):
    MATMUL_ADD = "matmul_add"
    GEMM = "gemm"


class BertHead(enum.Enum):
    CLASSIFIER = "classifier"  # last_hidden_state and logits
    MEAN_POOLING = "mean_pooling"  # sentence_embedding, L2-normalized


@dataclass(frozen=True)
class BertConfig:
    """Shape, graph style and weights of one encoder. The defaults are a tiny test model."""

    vocab_size: int = 256
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128
    max_position: int = 64
    type_vocab_size: int = 2
    num_labels: int = 3
    norm: LayerNormStyle = LayerNormStyle.LAYER_NORMALIZATION
    gelu: GeluStyle = GeluStyle.ERF
    linear: LinearStyle = LinearStyle.MATMUL_ADD
    head: BertHead = BertHead.CLASSIFIER
    weights: WeightInit = WeightInit.RANDOM
    opset: int = 17
    layer_norm_eps: float = 1e-12
    seed: int = 0

    def __post_init__(self) -> None:
        sizes = (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "max_position",
            "type_vocab_size",
            "num_labels",
        )
        problems = [f"{k} must be positive, got {getattr(self, k)}" for k in sizes if getattr(self, k) <= 0]
        if not problems and self.hidden_size % self.num_heads:
            problems.append(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        least = {LayerNormStyle.LAYER_NORMALIZATION: 17}.get(self.norm, 13)
        problems += check_opset(self.opset, least, f"norm={self.norm.value}")
        require(problems, "BertConfig")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def build(config: BertConfig) -> onnx.ModelProto:
    """The encoder described by `config`."""
    return _Encoder(config).build()


class _Encoder:
    def __init__(self, config: BertConfig) -> None:
        self.c = config
        self.b = GraphBuilder("bert", config.opset)
        self.w = WeightSampler(config.weights, config.seed)

    def build(self) -> onnx.ModelProto:
        c, b = self.c, self.b
        ids = b.input("input_ids", TensorProto.INT64, ["batch", "seq"])
        mask = b.input("attention_mask", TensorProto.INT64, ["batch", "seq"])
        x = self._embeddings(ids)
        additive = self._extended_mask(mask)
        classifier = c.head is BertHead.CLASSIFIER
        for i in range(c.num_layers):
            last = i == c.num_layers - 1
            x = self._layer(i, x, additive, output="last_hidden_state" if last and classifier else None)
        if not classifier:
            self._mean_pooling(x, mask)
            b.output("sentence_embedding", TensorProto.FLOAT, ["batch", c.hidden_size])
            return b.finish(f"BERT-style sentence encoder: {c}")
        b.output("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", c.hidden_size])
        h, s = c.hidden_size, "/bert/pooler"
        first = b.node("Gather", [x, b.constant(s, np.asarray(0, np.int64))], s, axis=1)
        pooled = self._linear(first, "bert.pooler.dense", f"{s}/dense", h, h, 1.0, per_token=False)
        pooled = b.node("Tanh", [pooled], f"{s}/activation")
        self._linear(
            pooled, "classifier", "/classifier", h, c.num_labels, 1.0, per_token=False, output="logits"
        )
        b.output("logits", TensorProto.FLOAT, ["batch", c.num_labels])
        return b.finish(f"BERT-style encoder: {c}")

    def _mean_pooling(self, x: str, mask: str) -> None:
        b, s = self.b, "/pooling"
        weights = b.node("Unsqueeze", [b.node("Cast", [mask], s, to=TensorProto.FLOAT), b.ints(s, [2])], s)
        summed = b.node("ReduceSum", [b.node("Mul", [x, weights], s), b.ints(s, [1])], s, keepdims=0)
        counts = b.node("ReduceSum", [weights, b.ints(s, [1])], s, keepdims=0)
        mean = b.node("Div", [summed, b.node("Max", [counts, b.constant(s, 1e-9)], s)], s)
        s = "/normalize"
        squares = b.node("ReduceSum", [b.node("Mul", [mean, mean], s), b.ints(s, [-1])], s, keepdims=1)
        norm = b.node("Max", [b.node("Sqrt", [squares], s), b.constant(s, 1e-12)], s)
        b.node("Div", [mean, norm], s, output="sentence_embedding")

    def _embeddings(self, ids: str) -> str:
        c, b, s = self.c, self.b, "/bert/embeddings"
        seq = b.seq_len(ids, s)
        summed = ""
        for kind, rows in (
            ("word", c.vocab_size),
            ("token_type", c.type_vocab_size),
            ("position", c.max_position),
        ):
            name = f"bert.embeddings.{kind}_embeddings.weight"
            table = b.initializer(name, self.w.matrix(name, (rows, c.hidden_size), out_axis=0, depth=0.0))
            index = ids if kind == "word" else self._buffer_slice(kind, seq)
            looked_up = b.node("Gather", [table, index], f"{s}/{kind}_embeddings")
            summed = b.node("Add", [summed, looked_up], s) if summed else looked_up
        return self._layer_norm(summed, "bert.embeddings.LayerNorm", f"{s}/LayerNorm", 0.0)

    def _buffer_slice(self, kind: str, seq: str) -> str:
        """positions 0..seq-1 or all-zero token types, as [1, seq] slices of HF's int64 buffers."""
        c, b, s = self.c, self.b, "/bert/embeddings"
        values = np.arange(c.max_position) if kind == "position" else np.zeros(c.max_position)
        buffer = b.initializer(f"bert.embeddings.{kind}_ids", values.astype(np.int64).reshape(1, -1))
        return b.node("Slice", [buffer, b.ints(s, [0]), seq, b.ints(s, [1])], s)

    def _extended_mask(self, mask: str) -> str:
        b, s = self.b, "/bert"
        expanded = b.node("Unsqueeze", [mask, b.ints(s, [1, 2])], s)
        inverted = b.node("Sub", [b.constant(s, 1.0), b.node("Cast", [expanded], s, to=TensorProto.FLOAT)], s)
        return b.node("Mul", [inverted, b.constant(s, float(np.finfo(np.float32).min))], s)

    def _layer(self, i: int, x: str, mask: str, output: str | None) -> str:
        c, b = self.c, self.b
        depth = i / max(1, c.num_layers - 1)
        p, s = f"bert.encoder.layer.{i}", f"/bert/encoder/layer.{i}"
        attended = self._self_attention(x, f"{p}.attention.self", f"{s}/attention/self", depth, mask)
        dense = self._linear(
            attended,
            f"{p}.attention.output.dense",
            f"{s}/attention/output/dense",
            c.hidden_size,
            c.hidden_size,
            depth,
        )
        h = b.node("Add", [dense, x], f"{s}/attention/output")
        h = self._layer_norm(h, f"{p}.attention.output.LayerNorm", f"{s}/attention/output/LayerNorm", depth)
        inner = self._linear(
            h, f"{p}.intermediate.dense", f"{s}/intermediate/dense", c.hidden_size, c.intermediate_size, depth
        )
        inner = self._gelu(inner, f"{s}/intermediate/intermediate_act_fn")
        out = self._linear(
            inner, f"{p}.output.dense", f"{s}/output/dense", c.intermediate_size, c.hidden_size, depth
        )
        out = b.node("Add", [out, h], f"{s}/output")
        return self._layer_norm(out, f"{p}.output.LayerNorm", f"{s}/output/LayerNorm", depth, output=output)

    def _self_attention(self, x: str, p: str, s: str, depth: float, mask: str) -> str:
        c, b = self.c, self.b
        heads = []
        for kind in ("query", "key", "value"):
            projected = self._linear(x, f"{p}.{kind}", f"{s}/{kind}", c.hidden_size, c.hidden_size, depth)
            split = b.node("Reshape", [projected, b.ints(s, [0, 0, c.num_heads, c.head_dim])], s)
            heads.append(b.node("Transpose", [split], s, perm=[0, 2, 1, 3]))
        q, k, v = heads
        scores = b.node("MatMul", [q, b.node("Transpose", [k], s, perm=[0, 1, 3, 2])], s)
        scores = b.node("Div", [scores, b.constant(s, float(math.sqrt(c.head_dim)))], s)
        probs = b.node("Softmax", [b.node("Add", [scores, mask], s)], s, axis=-1)
        context = b.node("Transpose", [b.node("MatMul", [probs, v], s)], s, perm=[0, 2, 1, 3])
        return b.node("Reshape", [context, b.ints(s, [0, 0, c.hidden_size])], s)

    def _linear(
        self,
        x: str,
        p: str,
        s: str,
        k: int,
        n: int,
        depth: float,
        *,
        per_token: bool = True,
        output: str | None = None,
    ) -> str:
        """y = x·W + b over the last axis of x [batch, seq, k] (`per_token`) or [batch, k]."""
        c, b = self.c, self.b
        bias = b.initializer(f"{p}.bias", self.w.bias(f"{p}.bias", n))
        if c.linear is LinearStyle.MATMUL_ADD:
            weight = b.initializer(
                f"{p}.weight", self.w.matrix(f"{p}.weight", (k, n), out_axis=1, depth=depth)
            )
            return b.node("Add", [b.node("MatMul", [x, weight], s), bias], s, output=output)
        # The same draw as MATMUL_ADD, stored [N, K]: every style computes the same function.
        drawn = self.w.matrix(f"{p}.weight", (k, n), out_axis=1, depth=depth)
        weight = b.initializer(f"{p}.weight", np.ascontiguousarray(drawn.T))
        if not per_token:
            return b.node("Gemm", [x, weight, bias], s, transB=1, output=output)
        rows = b.node("Reshape", [x, b.ints(s, [-1, k])], s)
        y = b.node("Gemm", [rows, weight, bias], s, transB=1)
        lead = b.node("Slice", [b.node("Shape", [x], s), b.ints(s, [0]), b.ints(s, [2])], s)
        return b.node("Reshape", [y, b.node("Concat", [lead, b.ints(s, [n])], s, axis=0)], s, output=output)

    def _layer_norm(self, x: str, p: str, s: str, depth: float, output: str | None = None) -> str:
        c, b = self.c, self.b
        gamma = b.initializer(f"{p}.weight", self.w.gain(f"{p}.weight", c.hidden_size, depth=depth))
        beta = b.initializer(f"{p}.bias", self.w.bias(f"{p}.bias", c.hidden_size))
        if c.norm is LayerNormStyle.LAYER_NORMALIZATION:
            return b.node(
                "LayerNormalization", [x, gamma, beta], s, axis=-1, epsilon=c.layer_norm_eps, output=output
            )
        centred = b.node("Sub", [x, b.reduce_mean(x, s)], s)
        variance = b.reduce_mean(b.node("Pow", [centred, b.constant(s, 2.0)], s), s)
        std = b.node("Sqrt", [b.node("Add", [variance, b.constant(s, c.layer_norm_eps)], s)], s)
        scaled = b.node("Mul", [b.node("Div", [centred, std], s), gamma], s)
        return b.node("Add", [scaled, beta], s, output=output)

    def _gelu(self, x: str, s: str) -> str:
        b = self.b
        if self.c.gelu is GeluStyle.ERF:
            erf = b.node("Erf", [b.node("Div", [x, b.constant(s, math.sqrt(2.0))], s)], s)
            return b.node(
                "Mul",
                [b.node("Mul", [x, b.node("Add", [erf, b.constant(s, 1.0)], s)], s), b.constant(s, 0.5)],
                s,
            )
        half = b.node("Mul", [x, b.constant(s, 0.5)], s)
        cubic = b.node("Mul", [b.node("Pow", [x, b.constant(s, 3.0)], s), b.constant(s, 0.044715)], s)
        inner = b.node("Mul", [b.node("Add", [x, cubic], s), b.constant(s, math.sqrt(2.0 / math.pi))], s)
        return b.node("Mul", [half, b.node("Add", [b.node("Tanh", [inner], s), b.constant(s, 1.0)], s)], s)
