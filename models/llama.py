"""LLaMA-style decoder as torch.onnx exports it: a prefill forward, or with `kv_cache` a decode step.

input_ids int64 [batch, seq] → logits float32 [batch, seq, vocab]. With `kv_cache` (the interface
of torch's dynamo export of a model called with use_cache=True), also inputs attention_mask int64
[batch, total_sequence_length], position_ids int64 [batch, seq] and past_key_values.i.key/value
float32 [batch, num_kv_heads, past_sequence_length, head_dim]; outputs present.i.key/value (the past
with the new tokens' rotated keys / values appended on axis 2); the rotary tables' rows are gathered
at position_ids; a key is masked (float32 min) after the new token's cache position (past …
total − 1) and where attention_mask is 0. The graph, per layer i (scope
`/model/layers.i`):
  h = x + o_proj(attention(rope(q_proj(rms(x))), rope(k_proj(rms(x))), v_proj(rms(x))))
  y = h + down_proj(silu(gate_proj(rms(h))) * up_proj(rms(h)))
with
- the token embedding a Gather on `model.embed_tokens.weight` [vocab, hidden];
- RMSNorm y = γ · x / sqrt(mean(x²) + ε) as `RMSNormStyle` says: decomposed
  Pow → ReduceMean → Add(ε) → Sqrt → Reciprocal → Mul(x) → Mul(γ) (what exporters emit below opset
  23), the opset-23 `RMSNormalization`, or onnxruntime's `SimplifiedLayerNormalization`;
- every projection a MatMul with a constant [K, N] weight named like the HF parameter
  (`model.layers.0.self_attn.q_proj.weight`), node `/model/layers.0/self_attn/q_proj/MatMul`;
- rotary embedding with precomputed tables `model.rotary_emb.{cos,sin}_cached` [max_seq, head_dim]
  sliced to seq: q·cos + rotate_half(q)·sin, rotate_half(x) = concat(−x[..., d/2:], x[..., :d/2]);
- grouped-query attention: k and v have num_kv_heads heads, repeated to num_heads by
  Unsqueeze → Expand → Reshape (HF's repeat_kv); scores = q·kᵀ · head_dim^−½ + causal mask (a
  sliced [1, 1, max_seq, max_seq] table of 0 / float32 min), Softmax, ·v;
- SwiGLU MLP, SiLU written as Sigmoid then Mul;
- the final norm `model.norm`, then `lm_head` as `HeadStyle` says. With `tie_embeddings` the head
  reuses the embedding initializer itself: Transpose → MatMul, or Gemm(transB=1).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from models._onnx import GraphBuilder, check_opset, require
from models.weights import WeightInit, WeightSampler

__all__ = ["PRESETS", "HeadStyle", "LlamaConfig", "RMSNormStyle", "build"]


class RMSNormStyle(enum.Enum):
    DECOMPOSED = "decomposed"
    RMS_NORMALIZATION = "rms_normalization"  # ONNX opset 23
    # onnxruntime's fusion: registered by onnxruntime in the default ONNX domain, so onnxruntime runs
    # it while onnx.checker rejects it ("No Op registered for SimplifiedLayerNormalization").
    SIMPLIFIED_LAYER_NORMALIZATION = "simplified_layer_normalization"


class HeadStyle(enum.Enum):
    MATMUL = "matmul"  # MatMul(h, W[hidden, vocab]); tied: MatMul(h, Transpose(table))
    GEMM = "gemm"  # Reshape(h, [-1, hidden]) → Gemm(·, W[vocab, hidden], transB=1) → Reshape back


_SIZES = (
    "vocab_size",
    "hidden_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "intermediate_size",
    "max_seq_len",
)


@dataclass(frozen=True)
class LlamaConfig:
    """Shape, graph style and weights of one decoder. The defaults are the `tiny` preset."""

    vocab_size: int = 256
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    max_seq_len: int = 64
    tie_embeddings: bool = False
    norm: RMSNormStyle = RMSNormStyle.DECOMPOSED
    head: HeadStyle = HeadStyle.MATMUL
    weights: WeightInit = WeightInit.RANDOM
    opset: int = 17
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    seed: int = 0
    kv_cache: bool = False

    def __post_init__(self) -> None:
        problems = [f"{k} must be positive, got {getattr(self, k)}" for k in _SIZES if getattr(self, k) <= 0]
        if not problems:
            if self.hidden_size % self.num_heads:
                problems.append(
                    f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}"
                )
            elif self.head_dim % 2:
                problems.append(f"head_dim {self.head_dim} must be even for rotary embedding")
            if self.num_heads % self.num_kv_heads:
                problems.append(
                    f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}"
                )
        least = {RMSNormStyle.RMS_NORMALIZATION: 23}.get(self.norm, 13)
        problems += check_opset(self.opset, least, f"norm={self.norm.value}")
        require(problems, "LlamaConfig")

    @classmethod
    def preset(cls, name: str, **changes: Any) -> LlamaConfig:
        """A named preset (`PRESETS`), with any fields replaced."""
        if name not in PRESETS:
            require([f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}"], "LlamaConfig.preset")
        return replace(PRESETS[name], **changes)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def num_parameters(self) -> int:
        """Trainable parameters (rotary tables and the mask are buffers, not counted)."""
        h, kv = self.hidden_size, self.num_kv_heads * self.head_dim
        per_layer = 2 * h * h + 2 * h * kv + 3 * h * self.intermediate_size + 2 * h
        tables = self.vocab_size * h * (1 if self.tie_embeddings else 2)
        return self.num_layers * per_layer + tables + h


PRESETS: dict[str, LlamaConfig] = {
    "tiny": LlamaConfig(),  # ~107 k parameters, 0.5 MB: tests
    # ~101 M parameters (0.4 GB fp32): the compiler benchmark. A 16 k vocabulary keeps the float
    # lm_head a small share of the forward pass, as in the 1B-class models it stands in for.
    "small": LlamaConfig(
        vocab_size=16384,
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        num_kv_heads=4,
        intermediate_size=2048,
        max_seq_len=512,
    ),
    # TinyLlama-1.1B's shape: ~1.1 B parameters, 4.4 GB fp32 (save with external data).
    "1b": LlamaConfig(
        vocab_size=32000,
        hidden_size=2048,
        num_layers=22,
        num_heads=32,
        num_kv_heads=4,
        intermediate_size=5632,
        max_seq_len=2048,
    ),
}


def build(config: LlamaConfig) -> onnx.ModelProto:
    """The decoder described by `config` (weights inside the proto; see `_onnx.save_model`)."""
    return _Decoder(config).build()


class _Decoder:
    def __init__(self, config: LlamaConfig) -> None:
        self.c = config
        self.b = GraphBuilder("llama", config.opset)
        self.w = WeightSampler(config.weights, config.seed)

    def build(self) -> onnx.ModelProto:
        c, b = self.c, self.b
        ids = b.input("input_ids", TensorProto.INT64, ["batch", "seq"])
        pasts: list[tuple[str, str] | None] = [None] * c.num_layers
        if c.kv_cache:
            padding = b.input("attention_mask", TensorProto.INT64, ["batch", "total_sequence_length"])
            positions = b.input("position_ids", TensorProto.INT64, ["batch", "seq"])
            cache_shape = ["batch", c.num_kv_heads, "past_sequence_length", c.head_dim]
            pasts = [
                (
                    b.input(f"past_key_values.{i}.key", TensorProto.FLOAT, cache_shape),
                    b.input(f"past_key_values.{i}.value", TensorProto.FLOAT, cache_shape),
                )
                for i in range(c.num_layers)
            ]
        table = b.initializer(
            "model.embed_tokens.weight",
            self.w.matrix("model.embed_tokens.weight", (c.vocab_size, c.hidden_size), out_axis=0, depth=0.0),
        )
        x = b.node("Gather", [table, ids], "/model/embed_tokens")
        if c.kv_cache:
            cos, sin = self._rotary_rows(positions)
            mask = self._cached_mask(ids, padding)
        else:
            seq = b.seq_len(ids, "/model")
            cos, sin = self._rotary_tables(seq)
            mask = self._causal_mask(seq)
        for i in range(c.num_layers):
            x = self._layer(i, x, cos, sin, mask, pasts[i])
        x = self._rms_norm(x, "model.norm", "/model/norm", depth=1.0)
        self._lm_head(x, table)
        b.output("logits", TensorProto.FLOAT, ["batch", "seq", c.vocab_size])
        if c.kv_cache:
            total = ["batch", c.num_kv_heads, "total_sequence_length", c.head_dim]
            for i in range(c.num_layers):
                b.output(f"present.{i}.key", TensorProto.FLOAT, total)
                b.output(f"present.{i}.value", TensorProto.FLOAT, total)
        return b.finish(f"LLaMA-style decoder: {c}")

    # -- pieces shared by all layers ------------------------------------------------------------
    def _angle_tables(self) -> list[tuple[str, np.ndarray]]:
        """(kind, table) of the cos and sin tables [max_seq, head_dim]."""
        c = self.c
        inv_freq = 1.0 / c.rope_theta ** (np.arange(0, c.head_dim, 2, dtype=np.float64) / c.head_dim)
        freqs = np.outer(np.arange(c.max_seq_len, dtype=np.float64), inv_freq)
        angles = np.concatenate([freqs, freqs], axis=-1)
        return [("cos", np.cos(angles).astype(np.float32)), ("sin", np.sin(angles).astype(np.float32))]

    def _rotary_tables(self, seq: str) -> tuple[str, str]:
        b = self.b
        out = []
        for kind, table in self._angle_tables():
            name = b.initializer(f"model.rotary_emb.{kind}_cached", table)
            zero, axis = b.ints("/model/rotary_emb", [0]), b.ints("/model/rotary_emb", [0])
            rows = b.node("Slice", [name, zero, seq, axis], "/model/rotary_emb")
            out.append(b.node("Unsqueeze", [rows, b.ints("/model/rotary_emb", [0, 1])], "/model/rotary_emb"))
        return out[0], out[1]

    def _rotary_rows(self, positions: str) -> tuple[str, str]:
        """The tables' rows at `positions`, [batch, 1, seq, head_dim]."""
        b, scope = self.b, "/model/rotary_emb"
        out = []
        for kind, table in self._angle_tables():
            rows = b.node(
                "Gather", [b.initializer(f"model.rotary_emb.{kind}_cached", table), positions], scope
            )
            out.append(b.node("Unsqueeze", [rows, b.ints(scope, [1])], scope))
        return out[0], out[1]

    def _causal_mask(self, seq: str) -> str:
        b, n = self.b, self.c.max_seq_len
        upper = np.triu(np.full((n, n), np.finfo(np.float32).min, dtype=np.float32), k=1)
        table = b.initializer("model.causal_mask", upper.reshape(1, 1, n, n))
        ends = b.node("Concat", [seq, seq], "/model", axis=0)
        return b.node("Slice", [table, b.ints("/model", [0, 0]), ends, b.ints("/model", [2, 3])], "/model")

    def _cached_mask(self, ids: str, padding: str) -> str:
        """[batch, 1, seq, total]: 0 where the key is at or before the new token's cache position
        (total − seq … total − 1, as HF's cache_position) and not padding, else float32 min — a
        Where, as torch exports HF's mask (no table of float32 min for a compile to narrow)."""
        b, scope = self.b, "/model"
        zero, one = b.constant(scope, np.asarray(0, np.int64)), b.constant(scope, np.asarray(1, np.int64))
        total = b.node("Gather", [b.node("Shape", [padding], scope), one], scope, axis=0)
        seq = b.node("Gather", [b.node("Shape", [ids], scope), one], scope, axis=0)
        rows = b.node("Range", [b.node("Sub", [total, seq], scope), total, one], scope)
        cols = b.node("Range", [zero, total, one], scope)
        causal = b.node(
            "LessOrEqual",
            [
                b.node("Unsqueeze", [cols, b.ints(scope, [0])], scope),
                b.node("Unsqueeze", [rows, b.ints(scope, [1])], scope),
            ],
            scope,
        )
        keep = b.node("Cast", [padding], scope, to=TensorProto.BOOL)
        allowed = b.node(
            "And",
            [
                b.node("Unsqueeze", [causal, b.ints(scope, [0, 1])], scope),
                b.node("Unsqueeze", [keep, b.ints(scope, [1, 2])], scope),
            ],
            scope,
        )
        lowest = b.constant(scope, np.asarray(np.finfo(np.float32).min, np.float32))
        return b.node("Where", [allowed, b.constant(scope, np.asarray(0.0, np.float32)), lowest], scope)

    # -- one decoder layer ----------------------------------------------------------------------
    def _layer(self, i: int, x: str, cos: str, sin: str, mask: str, past: tuple[str, str] | None) -> str:
        depth = i / max(1, self.c.num_layers - 1)
        prefix, scope = f"model.layers.{i}", f"/model/layers.{i}"
        normed = self._rms_norm(x, f"{prefix}.input_layernorm", f"{scope}/input_layernorm", depth)
        attn = self._attention(normed, i, depth, cos, sin, mask, past)
        h = self.b.node("Add", [x, attn], scope)
        normed = self._rms_norm(
            h, f"{prefix}.post_attention_layernorm", f"{scope}/post_attention_layernorm", depth
        )
        return self.b.node("Add", [h, self._mlp(normed, prefix, scope, depth)], scope)

    def _rms_norm(self, x: str, prefix: str, scope: str, depth: float) -> str:
        c, b = self.c, self.b
        gain = b.initializer(f"{prefix}.weight", self.w.gain(f"{prefix}.weight", c.hidden_size, depth=depth))
        if c.norm is RMSNormStyle.RMS_NORMALIZATION:
            return b.node("RMSNormalization", [x, gain], scope, axis=-1, epsilon=c.rms_eps)
        if c.norm is RMSNormStyle.SIMPLIFIED_LAYER_NORMALIZATION:
            return b.node(
                "SimplifiedLayerNormalization", [x, gain], scope, axis=-1, epsilon=c.rms_eps, stash_type=1
            )
        square = b.node("Pow", [x, b.constant(scope, 2.0)], scope)
        variance = b.reduce_mean(square, scope)
        std = b.node("Sqrt", [b.node("Add", [variance, b.constant(scope, c.rms_eps)], scope)], scope)
        normed = b.node("Mul", [x, b.node("Reciprocal", [std], scope)], scope)
        return b.node("Mul", [gain, normed], scope)

    def _linear(
        self, x: str, name: str, scope: str, k: int, n: int, depth: float, output: str | None = None
    ) -> str:
        weight = self.b.initializer(
            f"{name}.weight", self.w.matrix(f"{name}.weight", (k, n), out_axis=1, depth=depth)
        )
        return self.b.node("MatMul", [x, weight], scope, output=output)

    def _heads(self, x: str, scope: str, heads: int) -> str:
        """[batch, seq, heads·d] → [batch, heads, seq, d]."""
        split = self.b.node("Reshape", [x, self.b.ints(scope, [0, 0, heads, self.c.head_dim])], scope)
        return self.b.node("Transpose", [split], scope, perm=[0, 2, 1, 3])

    def _rope(self, x: str, scope: str, cos: str, sin: str) -> str:
        b, half = self.b, self.c.head_dim // 2
        first = b.node("Slice", [x, b.ints(scope, [0]), b.ints(scope, [half]), b.ints(scope, [3])], scope)
        second = b.node(
            "Slice", [x, b.ints(scope, [half]), b.ints(scope, [2 * half]), b.ints(scope, [3])], scope
        )
        rotated = b.node("Concat", [b.node("Neg", [second], scope), first], scope, axis=-1)
        return b.node("Add", [b.node("Mul", [x, cos], scope), b.node("Mul", [rotated, sin], scope)], scope)

    def _repeat_kv(self, x: str, scope: str) -> str:
        c, b = self.c, self.b
        n_rep = c.num_heads // c.num_kv_heads
        if n_rep == 1:
            return x
        grown = b.node("Unsqueeze", [x, b.ints(scope, [2])], scope)
        grown = b.node("Expand", [grown, b.ints(scope, [1, 1, n_rep, 1, 1])], scope)
        return b.node("Reshape", [grown, b.ints(scope, [0, c.num_heads, -1, c.head_dim])], scope)

    def _attention(
        self, x: str, i: int, depth: float, cos: str, sin: str, mask: str, past: tuple[str, str] | None
    ) -> str:
        c, b = self.c, self.b
        p, s = f"model.layers.{i}.self_attn", f"/model/layers.{i}/self_attn"
        kv_width = c.num_kv_heads * c.head_dim
        q = self._heads(
            self._linear(x, f"{p}.q_proj", f"{s}/q_proj", c.hidden_size, c.hidden_size, depth), s, c.num_heads
        )
        k = self._heads(
            self._linear(x, f"{p}.k_proj", f"{s}/k_proj", c.hidden_size, kv_width, depth), s, c.num_kv_heads
        )
        v = self._heads(
            self._linear(x, f"{p}.v_proj", f"{s}/v_proj", c.hidden_size, kv_width, depth), s, c.num_kv_heads
        )
        q, k = self._rope(q, s, cos, sin), self._rope(k, s, cos, sin)
        if past is not None:
            k = b.node("Concat", [past[0], k], s, output=f"present.{i}.key", axis=2)
            v = b.node("Concat", [past[1], v], s, output=f"present.{i}.value", axis=2)
        k, v = self._repeat_kv(k, s), self._repeat_kv(v, s)
        scores = b.node("MatMul", [q, b.node("Transpose", [k], s, perm=[0, 1, 3, 2])], s)
        scores = b.node("Mul", [scores, b.constant(s, float(c.head_dim**-0.5))], s)
        probs = b.node("Softmax", [b.node("Add", [scores, mask], s)], s, axis=-1)
        context = b.node("Transpose", [b.node("MatMul", [probs, v], s)], s, perm=[0, 2, 1, 3])
        merged = b.node("Reshape", [context, b.ints(s, [0, 0, c.hidden_size])], s)
        return self._linear(merged, f"{p}.o_proj", f"{s}/o_proj", c.hidden_size, c.hidden_size, depth)

    def _mlp(self, x: str, prefix: str, scope: str, depth: float) -> str:
        c, b = self.c, self.b
        p, s = f"{prefix}.mlp", f"{scope}/mlp"
        gate = self._linear(x, f"{p}.gate_proj", f"{s}/gate_proj", c.hidden_size, c.intermediate_size, depth)
        up = self._linear(x, f"{p}.up_proj", f"{s}/up_proj", c.hidden_size, c.intermediate_size, depth)
        silu = b.node("Mul", [gate, b.node("Sigmoid", [gate], f"{s}/act_fn")], f"{s}/act_fn")
        return self._linear(
            b.node("Mul", [silu, up], s),
            f"{p}.down_proj",
            f"{s}/down_proj",
            c.intermediate_size,
            c.hidden_size,
            depth,
        )

    def _lm_head(self, x: str, table: str) -> str:
        c, b = self.c, self.b
        if c.head is HeadStyle.MATMUL:
            if c.tie_embeddings:
                transposed = b.node("Transpose", [table], "/lm_head", perm=[1, 0])
                return b.node("MatMul", [x, transposed], "/lm_head", output="logits")
            return self._linear(
                x, "lm_head", "/lm_head", c.hidden_size, c.vocab_size, depth=1.0, output="logits"
            )
        weight = table
        if not c.tie_embeddings:
            # The same draw as the MATMUL head, stored [vocab, hidden]: both styles compute the same logits.
            drawn = self.w.matrix("lm_head.weight", (c.hidden_size, c.vocab_size), out_axis=1, depth=1.0)
            weight = b.initializer("lm_head.weight", np.ascontiguousarray(drawn.T))
        rows = b.node("Reshape", [x, b.ints("/lm_head", [-1, c.hidden_size])], "/lm_head")
        logits = b.node("Gemm", [rows, weight], "/lm_head", transB=1)
        lead = b.node(
            "Slice",
            [b.node("Shape", [x], "/lm_head"), b.ints("/lm_head", [0]), b.ints("/lm_head", [2])],
            "/lm_head",
        )
        shape = b.node("Concat", [lead, b.ints("/lm_head", [c.vocab_size])], "/lm_head", axis=0)
        return b.node("Reshape", [logits, shape], "/lm_head", output="logits")
