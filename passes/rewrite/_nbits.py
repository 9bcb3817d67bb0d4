"""Linear layers onnxruntime quantized already: com.microsoft MatMulNBits, read back as float weights.

MatMulNBits(A, B, scales, zero_points?, g_idx?, bias?) with attributes K, N, bits (2..8) and
block_size computes A · Wᵀ (+ bias) with W[N, K] = (q − zero_point) · scale per block of
`block_size` along K. B is uint8 [N, k_blocks, blob]: each block's `block_size` values packed
`8 / bits` to a byte, the first in the lowest bits; the last block is padded past K. scales hold
one value per (row, block); zero points are absent (2^(bits−1), the middle of the range), packed
like B (`bits` each, a row padded to whole bytes) or given in the scales' float type.

A plan either keeps such a layer as it is or re-quantizes it (`needs_requantize`): its weights are
re-quantized only when the plan's WEIGHTS precision stores fewer bits than the node does (a
ternary or 2-bit plan for a 4-bit layer); a plan of as many bits or more cannot get back what
quantization lost, so the node stays, its 4-bit blocks being the closest to what was asked.
`as_float_matmul` makes the node the float layer the rest of the linear rewrite reads: MatMul(A,
Wᵀ as a float32 [K, N] initializer), then the bias Add when the node has a bias.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from bitnet_onnx.core.dtypes import DType
from bitnet_onnx.core.errors import UnsupportedModelError
from bitnet_onnx.passes._match import view_constant

from ._edit import LayerEditor

__all__ = ["as_float_matmul", "dequantize", "fewer_bits", "needs_requantize", "stored_dtype"]

_WIDTHS = {2: DType.I2, 4: DType.I4, 8: DType.I8}


def stored_dtype(node: gs.Node) -> DType | None:
    """The precision the node stores its weights in; None for a bit width no DType has (3, 5-7)."""
    return _WIDTHS.get(int(node.attrs.get("bits", 4)))


def fewer_bits(stored_bits: int, weights: DType) -> bool:
    """Whether `weights` stores fewer bits per weight than weights quantized to `stored_bits` (the
    test for re-quantizing any already-quantized layer: MatMulNBits, or QDQ's DequantizeLinear)."""
    return not weights.is_float and (weights is DType.BITNET158 or weights.bits < stored_bits)


def needs_requantize(node: gs.Node, weights: DType) -> bool:
    """Whether the plan's WEIGHTS precision stores fewer bits per weight than the node does."""
    return fewer_bits(int(node.attrs.get("bits", 4)), weights)


def _unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The first `count` `bits`-wide values of each row of `packed` (uint8 [rows, bytes]), lowest first."""
    per_byte = 8 // bits
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    values = (packed[..., None] >> shifts) & np.uint8((1 << bits) - 1)
    return values.reshape(packed.shape[0], -1)[:, :count]


def dequantize(node: gs.Node, view) -> np.ndarray:
    """W[N, K] float32 of a MatMulNBits node (see the module docstring); UnsupportedModelError for
    what the node does not hold as constants or a width packing does not cover."""
    attrs = node.attrs
    k, n, bits, block = (int(attrs[a]) for a in ("K", "N", "bits", "block_size"))
    if 8 % bits:
        raise UnsupportedModelError(
            f"MatMulNBits {node.name!r}: {bits}-bit weights are not read back (2, 4 and 8 bits are); give "
            "the layer a precision of at least that many bits to keep it as it is"
        )
    inputs = list(node.inputs) + [gs.Variable.empty()] * (6 - len(node.inputs))
    if inputs[4].name:
        raise UnsupportedModelError(
            f"MatMulNBits {node.name!r} reorders its blocks (g_idx); such a layer is kept as it is only: "
            "give it a precision of at least its bit width"
        )
    blocks = math.ceil(k / block)
    q = _unpack(np.asarray(view_constant(view, inputs[1]), np.uint8).reshape(n, -1), bits, blocks * block)
    scales = np.asarray(view_constant(view, inputs[2]), np.float32).reshape(n, blocks)
    if not inputs[3].name:
        zero = np.full((n, blocks), 1 << (bits - 1), np.float32)
    else:
        raw = np.asarray(view_constant(view, inputs[3]))
        packed = raw.dtype == np.uint8
        zero = (_unpack(raw.reshape(n, -1), bits, blocks) if packed else raw.reshape(n, blocks)).astype(
            np.float32
        )
    per_block = (q.reshape(n, blocks, block).astype(np.float32) - zero[..., None]) * scales[..., None]
    return per_block.reshape(n, blocks * block)[:, :k]


def as_float_matmul(edit: LayerEditor, node: gs.Node, view) -> None:
    """Turns `node` (MatMulNBits) into MatMul(A, W[K, N] float32) [+ bias Add] in place: its name
    and output stay, so the layer's annotation and readers are unchanged."""
    weight = dequantize(node, view)
    a, bias = node.inputs[0], node.inputs[5] if len(node.inputs) > 5 and node.inputs[5].name else None
    y = node.outputs[0]
    node.op, node.domain = "MatMul", ""
    node.attrs.clear()
    node.inputs.clear()  # graphsurgeon's synchronized lists take no slice assignment
    node.inputs.extend([a, edit.constant("weight_dequantized", np.ascontiguousarray(weight.T))])
    if bias is not None:
        product = edit.variable("MatMul_output", y.dtype, y.shape)
        node.outputs.clear()
        node.outputs.append(product)
        edit.node("Add", [product, bias], [y])
