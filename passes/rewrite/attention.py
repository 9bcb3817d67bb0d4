"""ATTENTION layers: the QKᵀ … Softmax … ·V subgraph (or a fused attention op) in its precisions.

Components: ACTIVATIONS (what the two products compute with) and OUTPUTS.

1. F32 / F16 / BF16 activations: a cast island around the layer's nodes (`cast_island`): q, k, v
   and the mask enter in the compute type, the scale and mask constants are stored in it, the
   context leaves through the output conversion. A fused com.microsoft Attention,
   MultiHeadAttention or GroupQueryAttention node is an island of one node.
2. I8 activations, decomposed attention: both products run on integers. Each of QKᵀ and P·V,
   MatMul(a, b), becomes DynamicQuantizeLinear(a), DynamicQuantizeLinear(b) (uint8 with a zero
   point, per tensor), MatMulInteger (exact int32 accumulation), Cast to float32 and a Mul by
   the product of the two scales. The scale, mask, Softmax and guards between them stay float32:
   they are not products. The choice of per-tensor quantization is ONNX's: it is what
   DynamicQuantizeLinear computes at run time, and onnxruntime runs MatMulInteger with MLAS's
   int8 GEMM. The softmax probabilities lie in [0, 1], so their zero point is 0 and their 255
   levels span [0, max p].
3. I8 activations, fused attention op (com.microsoft Attention, MultiHeadAttention,
   GroupQueryAttention): onnxruntime has no integer form of them, so the op computes in float32
   and its float inputs (q, k, v, the past KV cache) take the I8 emulation of `_precision` case 3:
   a cast island whose values are int8's per tensor. It realises the precision the plan asked
   for (the presets' I8 attention, whatever the exporter fused) without buying speed.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from bitnet_onnx.core.dtypes import DType
from bitnet_onnx.core.errors import ConfigError
from bitnet_onnx.core.layers import ComponentType
from bitnet_onnx.core.plan import LayerPlan

from ._base import LayerRewrite, RewriteEnv, component_dtype, detach
from ._edit import LayerEditor
from ._precision import FLOAT32, route_output
from .cast_island import run_island

__all__ = ["rewrite_attention"]

_FUSED = frozenset({"Attention", "MultiHeadAttention", "GroupQueryAttention"})


def rewrite_attention(env: RewriteEnv, edit: LayerEditor, plan: LayerPlan) -> LayerRewrite:
    nodes = env.layer_nodes(edit.layer)
    if component_dtype(plan, ComponentType.ACTIVATIONS) is not DType.I8 or any(n.op in _FUSED for n in nodes):
        return run_island(env, edit, plan, nodes)
    products = sorted((n for n in nodes if n.op == "MatMul"), key=env.view.position)
    if len(products) != 2:
        raise ConfigError(
            f"layer {edit.layer.name!r}: I8 attention needs the QKᵀ and probabilities·V MatMuls, but the "
            "layer "
            f"has {len(products)} MatMul nodes; give this attention layer F16 or F32 precision",
            source=plan.decisions[ComponentType.ACTIVATIONS].source,
        )
    scores, context = products
    _integer_product(edit, scores, DType.F32)
    _integer_product(edit, context, component_dtype(plan, ComponentType.OUTPUTS))
    detail = (
        "QKᵀ and probabilities·V as DynamicQuantizeLinear + MatMulInteger (per-tensor uint8), "
        "softmax in float32"
    )
    return LayerRewrite("MatMulInteger", 0, 0, detail)


def _integer_product(edit: LayerEditor, matmul: gs.Node, outputs: DType) -> None:
    """Case 2 for one MatMul: its output tensor keeps its name and type."""
    a, b = matmul.inputs
    boundary = matmul.outputs[0]
    detach(matmul)
    quantized = []
    for operand in (a, b):
        x = edit.cast(operand, FLOAT32)
        q = edit.variable("DynamicQuantizeLinear_output", np.uint8, x.shape)
        scale = edit.variable("DynamicQuantizeLinear_scale", np.float32, [])
        zero_point = edit.variable("DynamicQuantizeLinear_zero_point", np.uint8, [])
        edit.node("DynamicQuantizeLinear", [x], [q, scale, zero_point])
        quantized.append((q, scale, zero_point))
    (qa, sa, za), (qb, sb, zb) = quantized
    product = edit.apply("MatMulInteger", [qa, qb, za, zb], np.int32, boundary.shape)
    scale = edit.apply("Mul", [sa, sb], np.float32, [])
    result = edit.apply("Mul", [edit.cast(product, FLOAT32), scale], FLOAT32, boundary.shape)
    route_output(edit, result, outputs, boundary)
