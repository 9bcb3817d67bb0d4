"""The layer rewriters of the `rewrite` pass: one module per layer kind, and the dispatch table.

- LINEAR, OUTPUT → `linear`: BitLinear, LowBitMatMul, DynamicQuantizeMatMul (`int8_choice`),
  DequantizeLowBit + MatMul, or the float MatMul/Gemm reading weights stored in a float type.
- EMBEDDING → `embedding`: Gather on a float table, or on a packed table + DequantizeLowBit.
- CONVOLUTION → `convolution`: Conv reading float-stored weights, or packed ones + DequantizeLowBit.
- NORMALIZATION, ACTIVATION, OTHER → `cast_island`: the nodes in the compute type, their inputs and
  outputs converted at the layer's boundary.
- ATTENTION → `attention`: a cast island, or (I8) DynamicQuantizeLinear + MatMulInteger for QKᵀ, ·V.

Shared pieces: `_edit` (naming and creating nodes), `_precision` (compute type, input and output
conversions), `_weights` (resolving, converting and sharing weights), `_base` (what a rewriter gets
and returns).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from bitnet_onnx.core.layers import LayerType

from ._base import LayerRewrite, RewriteEnv, Rewriter
from ._edit import LayerEditor
from .attention import rewrite_attention
from .cast_island import rewrite_island
from .convolution import rewrite_convolution
from .embedding import rewrite_embedding
from .linear import rewrite_linear

__all__ = ["REWRITERS", "LayerEditor", "LayerRewrite", "RewriteEnv", "Rewriter"]

REWRITERS: Mapping[LayerType, Rewriter] = MappingProxyType(
    {
        LayerType.LINEAR: rewrite_linear,
        LayerType.OUTPUT: rewrite_linear,
        LayerType.EMBEDDING: rewrite_embedding,
        LayerType.CONVOLUTION: rewrite_convolution,
        LayerType.NORMALIZATION: rewrite_island,
        LayerType.ACTIVATION: rewrite_island,
        LayerType.OTHER: rewrite_island,
        LayerType.ATTENTION: rewrite_attention,
    }
)
