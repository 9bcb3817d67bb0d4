"""Graphs, plans and runners for the rewrite tests: layers built in code, plans made by hand."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import numpy_helper

from bitnet_onnx import runtime
from bitnet_onnx.core.dtypes import ConversionStrategy, DType, WeightLayout
from bitnet_onnx.core.errors import KernelLibraryError
from bitnet_onnx.core.layers import Layer, LayerType
from bitnet_onnx.core.plan import Decision, LayerPlan, components_of
from bitnet_onnx.passes.base import PassContext, PassResult
from bitnet_onnx.passes.p50_rewrite import RewritePass

__all__ = [
    "LinearCase",
    "decision",
    "export",
    "initializers",
    "linear_case",
    "make_plan",
    "needs_op",
    "ops",
    "relative_error",
    "rewrite",
    "round_to",
    "run",
]

F32 = np.float32


def decision(
    dtype: DType | str,
    layout: WeightLayout | None = None,
    strategy: ConversionStrategy | None = None,
    source: str = "test:plan",
) -> Decision:
    return Decision(DType.parse(dtype), source, layout or WeightLayout(), strategy, None, "set by the test")


def make_plan(
    layer: Layer, default: DType | str = DType.F32, **components: DType | str | Decision
) -> LayerPlan:
    """A plan deciding every component the layer has: `components` by name, the rest `default`."""
    decisions = {}
    for component in components_of(layer):
        value = components.get(component.value, default)
        decisions[component] = value if isinstance(value, Decision) else decision(value)
    unknown = set(components) - {c.value for c in components_of(layer)}
    if unknown:
        raise ValueError(f"{layer.name} has no components {unknown}")
    return LayerPlan(layer, decisions)


def rewrite(
    graph: gs.Graph, plans: Sequence[LayerPlan], *, seed: int = 0, measure: bool = False
) -> tuple[PassResult, PassContext]:
    layers = {p.layer.name: p.layer for p in plans}
    ctx = PassContext(
        config=None,
        seed=seed,
        measure_kernels=measure,
        layers=layers,
        plan={p.layer.name: p for p in plans},
        passes_run=["annotate_layers", "assign_precision"],
    )
    return RewritePass().run(graph, ctx), ctx


def export(graph: gs.Graph) -> onnx.ModelProto:
    """The graph as a model that passes the checker and strict shape inference (types as declared)."""
    model = gs.export_onnx(graph)
    onnx.checker.check_model(model)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    return model


def run(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """The model's outputs in onnxruntime with the op library; skips the test when the library is missing."""
    try:
        session = runtime.session(model)
    except KernelLibraryError as exc:
        pytest.skip(str(exc))
    return session.run(None, dict(feeds))


def ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def needs_op(name: str) -> None:
    """Skip a test whose graph needs a bitnet op this build of the library does not register."""
    if name not in runtime.OP_NAMES:
        pytest.skip(
            f"the op library does not register bitnet.{name} yet (runtime.OP_NAMES = {runtime.OP_NAMES})"
        )


def round_to(values: np.ndarray, dtype: DType) -> np.ndarray:
    """float32 values rounded to a float precision and widened back."""
    return np.asarray(values, F32).astype(dtype.numpy_type).astype(F32)


def qdq_per_tensor(x: np.ndarray) -> np.ndarray:
    """numpy DynamicQuantizeLinear → DequantizeLinear: uint8, zero point, range [min(x, 0), max(x, 0)]."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = F32((hi - lo) / 255.0)
    zero = np.clip(np.rint(-lo / scale), 0, 255)
    return ((np.clip(np.rint(x / scale) + zero, 0, 255) - zero) * scale).astype(F32)


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """‖a − e‖ / ‖e‖ over all elements, in float64."""
    a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.linalg.norm(a - e) / np.linalg.norm(e))


@dataclass(frozen=True)
class LinearCase:
    """One linear layer: the graph, its Layer, W[N, K] and the bias as the model holds them."""

    graph: gs.Graph
    layer: Layer
    rows: np.ndarray
    bias: np.ndarray | None
    k: int
    n: int

    def reference(self, x: np.ndarray) -> np.ndarray:
        y = x.astype(np.float64) @ self.rows.astype(np.float64).T
        return (y + self.bias if self.bias is not None else y).astype(F32)


def linear_case(
    k: int = 64,
    n: int = 32,
    *,
    style: str = "matmul",
    bias: bool = True,
    leading: Sequence[int | str] = ("batch", "seq"),
    rows: np.ndarray | None = None,
    x_dtype: type = F32,
    layer_type: LayerType = LayerType.LINEAR,
    seed: int = 0,
) -> LinearCase:
    """`style`: "matmul" (MatMul with B[K, N] plus an Add of the bias), "transpose" (MatMul reading
    Transpose(W[N, K]), as a tied head), "gemm" (Gemm with transB=1 and C)."""
    rng = np.random.default_rng(seed)
    if rows is None:
        rows = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(F32)
    b = rng.standard_normal(n).astype(F32) * 0.1 if bias else None
    x = gs.Variable("x", dtype=x_dtype, shape=[*leading, k] if style != "gemm" else ["m", k])
    y = gs.Variable("y", dtype=x_dtype, shape=[*leading, n] if style != "gemm" else ["m", n])
    nodes = []
    name = "model.proj"
    weight = f"{name}.weight"
    bias_name = f"{name}.bias" if bias else None
    if style == "gemm":
        inputs = [x, gs.Constant(weight, rows.astype(x_dtype))]
        if bias:
            inputs.append(gs.Constant(bias_name, b.astype(x_dtype)))
        nodes.append(gs.Node("Gemm", "/model/proj/Gemm", {"transB": 1}, inputs, [y]))
    else:
        if style == "matmul":
            w = gs.Constant(weight, np.ascontiguousarray(rows.T.astype(x_dtype)))
        else:
            wt = gs.Variable("/model/proj/Transpose_output_0", dtype=x_dtype, shape=[k, n])
            nodes.append(
                gs.Node(
                    "Transpose",
                    "/model/proj/Transpose",
                    {"perm": [1, 0]},
                    [gs.Constant(weight, rows.astype(x_dtype))],
                    [wt],
                )
            )
            w = wt
        product = (
            y if not bias else gs.Variable("/model/proj/MatMul_output_0", dtype=x_dtype, shape=[*leading, n])
        )
        nodes.append(gs.Node("MatMul", "/model/proj/MatMul", {}, [x, w], [product]))
        if bias:
            nodes.append(
                gs.Node(
                    "Add", "/model/proj/Add", {}, [product, gs.Constant(bias_name, b.astype(x_dtype))], [y]
                )
            )
    graph = gs.Graph(nodes=nodes, inputs=[x], outputs=[y], opset=17)
    anchor = next(node.name for node in nodes if node.op in ("MatMul", "Gemm"))
    layer_nodes = (anchor, *(node.name for node in nodes if node.op == "Add"))
    layer = Layer(
        name,
        layer_type,
        0,
        layer_nodes,
        "test",
        weight=weight,
        weight_shape=(n, k) if style != "matmul" else (k, n),
        bias=bias_name,
    )
    return LinearCase(graph, layer, rows, b, k, n)
