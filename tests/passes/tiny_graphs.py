"""Small gs graphs built in code for the matcher and rule tests, named like torch.onnx names them."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

__all__ = ["GraphBuilder", "gelu_erf", "gelu_tanh", "layer_norm", "rms_norm", "sdpa"]

F32 = np.float32


class GraphBuilder:
    """Appends nodes to one gs graph; scalars become Constant nodes, as torch.onnx writes them."""

    def __init__(self) -> None:
        self.nodes: list[gs.Node] = []
        self.inputs: list[gs.Variable] = []
        self._count = 0

    def input(self, name: str, shape: Sequence[int | str] = ("batch", 8), dtype: type = F32) -> gs.Variable:
        tensor = gs.Variable(name, dtype=dtype, shape=list(shape))
        self.inputs.append(tensor)
        return tensor

    @staticmethod
    def weight(name: str, shape: Sequence[int], seed: int = 0, dtype: type = F32) -> gs.Constant:
        rng = np.random.default_rng(seed)
        return gs.Constant(name, rng.standard_normal(shape).astype(dtype))

    def scalar(self, value: float, scope: str = "") -> gs.Variable:
        return self.op(
            "Constant", [], scope, value=gs.Constant(f"c{self._count}", np.asarray(value, dtype=F32))
        )

    def op(
        self,
        op: str,
        inputs: Sequence[gs.Tensor],
        scope: str = "",
        *,
        outputs: int = 1,
        domain: str | None = None,
        **attrs,
    ) -> gs.Variable:
        self._count += 1
        name = f"{scope}/{op}_{self._count}"
        outs = [gs.Variable(f"{name}_output_{i}") for i in range(outputs)]
        node = gs.Node(op, name, attrs, list(inputs), outs, domain=domain)
        self.nodes.append(node)
        return outs[0]

    def node(self, tensor: gs.Tensor) -> gs.Node:
        return tensor.inputs[0]

    def graph(self, *outputs: gs.Variable) -> gs.Graph:
        for out in outputs:
            if out.dtype is None:
                out.dtype = F32
        return gs.Graph(nodes=list(self.nodes), inputs=list(self.inputs), outputs=list(outputs), opset=17)

    def model(self, *outputs: gs.Variable) -> onnx.ModelProto:
        return gs.export_onnx(self.graph(*outputs))


def rms_norm(
    b: GraphBuilder, x: gs.Tensor, scope: str, *, style: str = "reciprocal", width: int = 8
) -> gs.Variable:
    """x · 1/sqrt(mean(x²) + ε) · γ in the `style` exporters write: `reciprocal` (the builders),
    `hf` (Cast → … → Div(1, ·) → Mul → Cast → Mul(γ)) or `divide` (x / sqrt(…) · γ)."""
    if style == "hf":
        x = b.op("Cast", [x], scope, to=onnx.TensorProto.FLOAT)
    square = b.op("Pow", [x, b.scalar(2.0, scope)], scope)
    variance = b.op("ReduceMean", [square], scope, axes=[-1], keepdims=1)
    std = b.op("Sqrt", [b.op("Add", [variance, b.scalar(1e-5, scope)], scope)], scope)
    if style == "divide":
        normed = b.op("Div", [x, std], scope)
    else:
        inverse = (
            b.op("Div", [b.scalar(1.0, scope), std], scope)
            if style == "hf"
            else b.op("Reciprocal", [std], scope)
        )
        normed = b.op("Mul", [x, inverse], scope)
    if style == "hf":
        normed = b.op("Cast", [normed], scope, to=onnx.TensorProto.FLOAT)
    gain = gs.Constant(f"{scope.strip('/').replace('/', '.')}.weight", np.ones(width, F32))
    return b.op("Mul", [gain, normed], scope)


def layer_norm(b: GraphBuilder, x: gs.Tensor, scope: str, width: int = 8) -> gs.Variable:
    """(x − mean(x)) / sqrt(mean((x − mean(x))²) + ε) · γ + β."""
    centred = b.op("Sub", [x, b.op("ReduceMean", [x], scope, axes=[-1], keepdims=1)], scope)
    variance = b.op(
        "ReduceMean", [b.op("Pow", [centred, b.scalar(2.0, scope)], scope)], scope, axes=[-1], keepdims=1
    )
    std = b.op("Sqrt", [b.op("Add", [variance, b.scalar(1e-12, scope)], scope)], scope)
    prefix = scope.strip("/").replace("/", ".")
    scaled = b.op(
        "Mul",
        [b.op("Div", [centred, std], scope), gs.Constant(f"{prefix}.weight", np.ones(width, F32))],
        scope,
    )
    return b.op("Add", [scaled, gs.Constant(f"{prefix}.bias", np.zeros(width, F32))], scope)


def gelu_erf(b: GraphBuilder, x: gs.Tensor, scope: str) -> gs.Variable:
    """x · (1 + erf(x / √2)) · 0.5, as BERT exports it."""
    erf = b.op("Erf", [b.op("Div", [x, b.scalar(math.sqrt(2.0), scope)], scope)], scope)
    return b.op(
        "Mul",
        [b.op("Mul", [x, b.op("Add", [erf, b.scalar(1.0, scope)], scope)], scope), b.scalar(0.5, scope)],
        scope,
    )


def gelu_tanh(b: GraphBuilder, x: gs.Tensor, scope: str) -> gs.Variable:
    """0.5·x · (1 + tanh(√(2/π)·(x + 0.044715·x³))), as GPT-2 exports it."""
    half = b.op("Mul", [x, b.scalar(0.5, scope)], scope)
    cubic = b.op("Mul", [b.op("Pow", [x, b.scalar(3.0, scope)], scope), b.scalar(0.044715, scope)], scope)
    inner = b.op("Mul", [b.op("Add", [x, cubic], scope), b.scalar(math.sqrt(2.0 / math.pi), scope)], scope)
    return b.op(
        "Mul", [half, b.op("Add", [b.op("Tanh", [inner], scope), b.scalar(1.0, scope)], scope)], scope
    )


def sdpa(
    b: GraphBuilder,
    x: gs.Tensor,
    scope: str,
    *,
    heads: int = 2,
    width: int = 8,
    mask: gs.Tensor | None = None,
) -> gs.Variable:
    """q/k/v projections → heads → softmax(q·kᵀ·s + mask) with HF's NaN guard → ·v → merge → o_proj.

    x is [batch, seq, width]; every projection is a MatMul with a [width, width] initializer named
    like the HF parameter (`<scope>.q_proj.weight`)."""
    prefix = scope.strip("/").replace("/", ".")
    head_dim = width // heads
    split = [0, 0, heads, head_dim]
    projected = []
    for i, kind in enumerate(("q", "k", "v")):
        w = b.weight(f"{prefix}.{kind}_proj.weight", (width, width), seed=i)
        y = b.op("MatMul", [x, w], f"{scope}/{kind}_proj")
        y = b.op("Reshape", [y, gs.Constant(f"{prefix}.{kind}.shape", np.asarray(split, np.int64))], scope)
        projected.append(b.op("Transpose", [y], scope, perm=[0, 2, 1, 3]))
    q, k, v = projected
    scores = b.op("MatMul", [q, b.op("Transpose", [k], scope, perm=[0, 1, 3, 2])], scope)
    scores = b.op("Mul", [scores, b.scalar(head_dim**-0.5, scope)], scope)
    if mask is not None:
        scores = b.op("Add", [scores, mask], scope)
    probs = b.op("Softmax", [scores], scope, axis=-1)
    guarded = b.op("Where", [b.op("IsNaN", [probs], scope), b.scalar(0.0, scope), probs], scope)
    context = b.op("Transpose", [b.op("MatMul", [guarded, v], scope)], scope, perm=[0, 2, 1, 3])
    merged = b.op(
        "Reshape", [context, gs.Constant(f"{prefix}.merge", np.asarray([0, 0, width], np.int64))], scope
    )
    return b.op(
        "MatMul", [merged, b.weight(f"{prefix}.o_proj.weight", (width, width), seed=3)], f"{scope}/o_proj"
    )
