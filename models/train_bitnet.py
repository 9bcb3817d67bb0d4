"""Trains the committed BitNet b1.58 fixture: a tiny byte-level LM with quantization-aware training.

Run from the repository root (needs torch==2.13.0; CI never runs this, the outputs are committed):
    python -m models.train_bitnet

What it trains: a LLaMA-style pre-norm decoder (RMSNorm, causal multi-head attention without
positional encoding, SwiGLU MLP, untied float embedding and lm_head), vocabulary = the 256 byte
values. Every projection of every layer is a BitLinear in training, as BitNet b1.58 defines it:
- weights: γ = mean|W| over the tensor, T = clip(round(W / (γ + 1e-6)), −1, 1), used as T·γ;
- activations per token (last axis): s = max|x|, x_q = clip(round(x · 127/s), −128, 127) · s/127;
- both through the straight-through estimator (the forward sees the quantized values, the gradient
  flows to the float latent weights and activations as if the quantizer were the identity).
Embedding, norms and lm_head stay float, as in BitNet.

Text: the docstrings of a fixed list of standard-library modules (their modules, classes and
functions, in name order), read offline from this interpreter. The first `_TRAIN_MODULES` are the
training text; the held-out window is taken from `_HELD_OUT_MODULES`, never trained on.

What it writes into models/fixtures/ (CPU, one torch thread, a fixed seed):
- `bitnet_lm.onnx`: the model exported in *float* mode (the latent weights in plain MatMul
  initializers, no quantization in the graph), the way a QAT checkpoint usually ships;
- `bitnet_lm.reference.npz`: `input_ids` int64 [1, T] (the held-out window) and `logits` float32
  [1, T, 256], the QAT forward's logits on it (what the model was trained to compute).
It prints the sha256 of both and the held-out perplexity.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import math
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from torch.nn import functional

from models.bitnet_fixture import MODEL, REFERENCE, perplexity

__all__ = ["BitNetConfig", "main"]

OPSET = 17
SEED = 0
_EPS = 1e-6  # ε of the absmean rule (kernels/README.md)
_TRAIN_MODULES = (
    "collections", "functools", "itertools", "os", "pathlib", "re", "string", "json", "argparse",
    "datetime", "decimal", "fractions", "statistics", "random", "heapq", "bisect", "shutil", "logging",
    "subprocess", "threading", "queue", "csv", "typing", "dataclasses", "enum", "inspect", "ast",
    "email.message", "http.client", "urllib.parse", "zipfile", "tarfile", "tempfile", "unittest.case",
)  # fmt: skip
_HELD_OUT_MODULES = ("textwrap", "difflib")


@dataclass(frozen=True)
class BitNetConfig:
    vocab_size: int = 256
    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 192
    rms_eps: float = 1e-5
    seq_len: int = 128
    batch: int = 16
    steps: int = 500
    lr: float = 4e-3
    held_out_tokens: int = 512


class BitLinear(nn.Linear):
    """nn.Linear without bias; in QAT mode its forward is BitNet b1.58's (module docstring)."""

    qat = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not BitLinear.qat:
            return functional.linear(x, self.weight)
        w = self.weight
        gamma = w.abs().mean()
        w_q = torch.clamp(torch.round(w / (gamma + _EPS)), -1, 1) * gamma
        s = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
        x_q = torch.clamp(torch.round(x * (127.0 / s)), -128, 127) * (s / 127.0)
        return functional.linear(x + (x_q - x).detach(), w + (w_q - w).detach())


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class Attention(nn.Module):
    def __init__(self, c: BitNetConfig) -> None:
        super().__init__()
        self.heads = c.num_heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (
            BitLinear(c.hidden_size, c.hidden_size, bias=False) for _ in range(4)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            p(x).view(b, t, self.heads, d // self.heads).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        scores = q @ k.transpose(-1, -2) * (d // self.heads) ** -0.5
        mask = torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), diagonal=1)
        scores = scores.masked_fill(mask, torch.finfo(scores.dtype).min)
        out = torch.softmax(scores, dim=-1) @ v
        return self.o_proj(out.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, c: BitNetConfig) -> None:
        super().__init__()
        self.gate_proj = BitLinear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = BitLinear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = BitLinear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(functional.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, c: BitNetConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_eps)
        self.mlp = MLP(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    def __init__(self, c: BitNetConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(Layer(c) for _ in range(c.num_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


class BitNetLM(nn.Module):
    def __init__(self, c: BitNetConfig) -> None:
        super().__init__()
        self.model = Decoder(c)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.model(input_ids))


def corpus(modules: tuple[str, ...]) -> bytes:
    """The docstrings of `modules` and of their public classes and functions, in name order."""
    parts = []
    for name in modules:
        module = importlib.import_module(name)
        parts.append(inspect.getdoc(module) or "")
        members = inspect.getmembers(module, lambda o: inspect.isclass(o) or inspect.isfunction(o))
        for _, obj in sorted(members):
            if getattr(obj, "__module__", None) == module.__name__:
                parts.append(inspect.getdoc(obj) or "")
    return "\n\n".join(p for p in parts if p).encode("utf-8")


def train(c: BitNetConfig, data: torch.Tensor) -> BitNetLM:
    torch.manual_seed(SEED)
    model = BitNetLM(c)
    opt = torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=0.01, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(SEED)
    BitLinear.qat = True
    model.train()
    for step in range(c.steps):
        lr = c.lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / c.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        start = torch.randint(0, data.numel() - c.seq_len - 1, (c.batch,), generator=gen)
        window = torch.stack([data[s : s + c.seq_len + 1] for s in start.tolist()])
        logits = model(window[:, :-1])
        loss = functional.cross_entropy(logits.reshape(-1, c.vocab_size), window[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == c.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}  lr {lr:.2e}", flush=True)
    model.eval()
    return model


def export(model: BitNetLM, ids: np.ndarray, path: Path) -> None:
    """Float-mode export (latent weights in plain MatMuls), checked against torch in onnxruntime."""
    BitLinear.qat = False
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        staged = Path(tmp) / path.name
        torch.onnx.export(
            model,
            (torch.from_numpy(ids[:, :8]),),
            staged,
            input_names=["input_ids"],
            output_names=["logits"],
            dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
        proto = onnx.load(staged)
        onnx.checker.check_model(proto, full_check=True)
        session = ort.InferenceSession(staged, providers=["CPUExecutionProvider"])
        got = session.run(None, {"input_ids": ids})[0]
        with torch.no_grad():
            want = model(torch.from_numpy(ids)).numpy()
        error = float(np.abs(got - want).max())
        if error > 1e-4:
            raise RuntimeError(f"onnxruntime differs from torch's float forward by {error:g}")
        path.write_bytes(staged.read_bytes())


def main() -> None:
    torch.set_num_threads(1)
    c = BitNetConfig()
    train_text = np.frombuffer(corpus(_TRAIN_MODULES), dtype=np.uint8)
    held_out = np.frombuffer(corpus(_HELD_OUT_MODULES), dtype=np.uint8)
    ids = held_out[: c.held_out_tokens].astype(np.int64)[None, :]
    print(f"train text {train_text.size} bytes, held-out window {ids.shape[1]} of {held_out.size} bytes")
    began = time.perf_counter()
    model = train(c, torch.from_numpy(train_text.astype(np.int64)))
    print(f"trained in {time.perf_counter() - began:.1f} s")
    BitLinear.qat = True
    with torch.no_grad():
        reference = model(torch.from_numpy(ids)).numpy()
    BitLinear.qat = False
    with torch.no_grad():
        latent = model(torch.from_numpy(ids)).numpy()
    MODEL.parent.mkdir(exist_ok=True)
    export(model, ids, MODEL)
    np.savez_compressed(REFERENCE, input_ids=ids, logits=reference)
    print(
        f"held-out perplexity: QAT forward {perplexity(reference, ids):.4f}, "
        f"float latent weights {perplexity(latent, ids):.4f}"
    )
    for p in (MODEL, REFERENCE):
        print(f"{p.name}: {p.stat().st_size} bytes, sha256 {hashlib.sha256(p.read_bytes()).hexdigest()}")


if __name__ == "__main__":
    main()
