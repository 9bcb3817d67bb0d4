"""The trained BitNet b1.58 fixture (made by `models.train_bitnet`) and how to judge a compile of it.

No torch: tests and `bitnet-onnx bench compiler` use this module.

- `load()`: the float-mode model (latent weights in plain MatMuls) and its reference, the held-out
  token window and the logits of the QAT forward on it (what the model was trained to compute).
- `exact_semantics(model)`: the same graph computing BitNet b1.58 exactly in float32 onnxruntime ops:
  every QAT linear (`QAT_LINEAR`, the projections of the decoder layers) computes
  y = (xq · T) · (s/127) · γ with T, γ from its latent weight (`ternarize`, absmean per tensor) and
  xq the per-token absmax int8 activations, s = max|x| over the last axis: kernels/README.md's
  BitLinear, in its evaluation order. Everything else stays float32. What is left against the
  reference is float rounding: the trainer's torch forward multiplies in another order, and a
  value that lands on the other side of a rounding boundary of the int8 activation grid moves
  every later layer a little.
- `exact_ternary_twin(model)`: the model with each QAT linear's latent weight replaced by T·γ, a
  float model whose weights are exactly ternary × γ. Compiled with any config that makes those
  layers BITNET158, it gives the exact semantics of the ternary layers under that config's
  precisions for everything else (the compiler keeps γ for exactly ternary weights, and the
  BitLinear op quantizes the activations).
- `perplexity(logits, ids)` and `mean_abs_diff(a, b)`: the measures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bitnet_onnx.numerics.quantization import TernaryWeights, ternarize

__all__ = [
    "MODEL",
    "QAT_LINEAR",
    "REFERENCE",
    "Reference",
    "exact_semantics",
    "exact_ternary_twin",
    "load",
    "mean_abs_diff",
    "perplexity",
]

MODEL = Path(__file__).parent / "fixtures" / "qat" / "bitnet_lm.onnx"
REFERENCE = Path(__file__).parent / "fixtures" / "qat" / "bitnet_lm.reference.npz"
QAT_LINEAR = re.compile(r"/model/layers\.\d+/(self_attn|mlp)/\w+_proj/MatMul")
"""Names of the MatMul nodes that were BitLinear in training (embedding and lm_head stay float)."""


@dataclass(frozen=True)
class Reference:
    input_ids: np.ndarray  # int64 [1, T]: the held-out window
    logits: np.ndarray  # float32 [1, T, 256]: the QAT forward's logits on it


def load() -> tuple[onnx.ModelProto, Reference]:
    with np.load(REFERENCE) as data:
        reference = Reference(data["input_ids"], data["logits"])
    return onnx.load(MODEL), reference


def perplexity(logits: np.ndarray, ids: np.ndarray) -> float:
    """exp of the mean next-token cross entropy of logits [1, T, V] on ids [1, T] (T − 1 predictions)."""
    z = logits[0, :-1].astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return float(np.exp(-logp[np.arange(z.shape[0]), ids[0, 1:]].mean()))


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def exact_ternary_twin(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose QAT linears' latent weights are replaced by T·γ (module docstring)."""
    out = _copy(model)
    for weight, tw, _ in _qat_weights(out):
        weight.CopyFrom(numpy_helper.from_array(tw.dequantize().T.copy(), weight.name))
    return out


def exact_semantics(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose QAT linears compute BitNet b1.58 exactly (module docstring), in float32
    onnxruntime ops and in the BitLinear op's evaluation order."""
    out = _copy(model)
    graph = out.graph
    replaced: dict[str, list[onnx.NodeProto]] = {}
    for weight, tw, node in _qat_weights(out):
        weight.CopyFrom(numpy_helper.from_array(tw.values.T.astype(np.float32), weight.name))
        gamma = numpy_helper.from_array(tw.scale.reshape(()), f"{node.name}/gamma")
        graph.initializer.append(gamma)
        replaced[node.name] = _bitlinear(node, gamma.name)
    nodes = [new for node in graph.node for new in replaced.get(node.name, [node])]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(127.0, np.float32), "qat/127"),
            numpy_helper.from_array(np.array(-127.0, np.float32), "qat/-127"),
        ]
    )
    onnx.checker.check_model(out)
    return out


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _qat_weights(model: onnx.ModelProto) -> list[tuple[onnx.TensorProto, TernaryWeights, onnx.NodeProto]]:
    """(initializer, its ternarization as rows W[N, K], node) of every QAT linear."""
    inits = {t.name: t for t in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if QAT_LINEAR.fullmatch(node.name) and node.input[1] in inits:
            weight = inits[node.input[1]]
            found.append((weight, ternarize(numpy_helper.to_array(weight).T), node))  # MatMul B is [K, N]
    if not found:
        raise ValueError("no QAT linear (a node named like /model/layers.N/mlp/up_proj/MatMul) in the model")
    return found


def _bitlinear(matmul: onnx.NodeProto, gamma: str) -> list[onnx.NodeProto]:
    """kernels/README.md's BitLinear as float32 ops: s = max|x| over the last axis, xq =
    clip(round(x · (127/s)), −127, 127), acc = xq · T (integer-valued, exact in float32 for these
    sizes), y = (acc · (s/127)) · γ. s > 0 here: a hidden state is never all zero."""
    x, t = matmul.input
    p = f"{matmul.name}/exact/"
    return [
        helper.make_node("Abs", [x], [p + "abs"]),
        helper.make_node("ReduceMax", [p + "abs"], [p + "s"], axes=[-1], keepdims=1),
        helper.make_node("Div", ["qat/127", p + "s"], [p + "inv"]),
        helper.make_node("Mul", [x, p + "inv"], [p + "scaled"]),
        helper.make_node("Round", [p + "scaled"], [p + "rounded"]),
        helper.make_node("Clip", [p + "rounded", "qat/-127", "qat/127"], [p + "xq"]),
        helper.make_node("MatMul", [p + "xq", t], [p + "acc"]),
        helper.make_node("Div", [p + "s", "qat/127"], [p + "factor"]),
        helper.make_node("Mul", [p + "acc", p + "factor"], [p + "y"]),
        helper.make_node("Mul", [p + "y", gamma], list(matmul.output)),
    ]
