"""EMBEDDING layers: Gather(table, ids) on a constant table [V, H], in the plan's precisions.

Components: WEIGHTS (the table) and OUTPUTS (the gathered rows as the next layer gets them).

1. F32: a float32 table as the model has it (another float type is stored as in case 2).
2. F16 / BF16 (or F32 of a float16 model): the table stored in that type; Gather reads it and the
   rows leave through `_precision`'s output conversion (to the OUTPUTS type, then to the type the
   model had there).
3. I8 / I4 / I2 / I1 / BITNET158: the table packed row by row in the kernels/README encodings,
   a row of H values being one weight row with K = H: the same bytes a tied head reads as W[N, K].
   `Gather(packed, ids)` gives uint8 [..., row_bytes]; per-row metadata is gathered the same way
   (integer scales [V, groups] and zero points, ternary scales [V] with `per_channel`; a ternary
   table with one scale reads its [1] as it is); `bitnet.DequantizeLowBit` turns the gathered rows
   into float [..., H] (float16 when the outputs are F16, float32 otherwise). Only the rows a batch
   reads are unpacked: the table stays packed in the file and in memory.

The Gather must take rows (axis 0); any other axis is an UnsupportedModelError.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from bitnet_onnx.core.dtypes import DType
from bitnet_onnx.core.errors import UnsupportedModelError
from bitnet_onnx.core.layers import ComponentType
from bitnet_onnx.core.plan import LayerPlan
from bitnet_onnx.runtime import DEQUANTIZE_LOWBIT, DOMAIN

from ._base import LayerRewrite, RewriteEnv, component_dtype, constant_bytes, detach
from ._edit import LayerEditor, onnx_type
from ._precision import FLOAT16, FLOAT32, float_type, route_output
from ._weights import resolve_operand

__all__ = ["rewrite_embedding"]


def rewrite_embedding(env: RewriteEnv, edit: LayerEditor, plan: LayerPlan) -> LayerRewrite:
    layer = edit.layer
    gather = env.layer_nodes(layer)[0]
    if gather.op != "Gather" or int(gather.attrs.get("axis", 0)) != 0:
        raise UnsupportedModelError(
            f"layer {layer.name!r}: its anchor {gather.op} {gather.name!r} is not a Gather of table rows "
            "(axis 0); give the layer F32 precision"
        )
    operand = resolve_operand(env.view, gather.inputs[0], layer)
    weights = component_dtype(plan, ComponentType.WEIGHTS)
    outputs = component_dtype(plan, ComponentType.OUTPUTS)
    ids, boundary = gather.inputs[1], gather.outputs[0]
    before = constant_bytes(operand.initializer)
    v, h = operand.shape
    rows_shape = None if ids.shape is None else [*ids.shape, h]

    if weights.is_float:
        table_type, stored_bytes, names, note = operand.dtype, before, (operand.initializer.name,), ""
        if weights is not DType.F32 or operand.dtype != np.float32:
            stored, shared = env.weights.floating(edit, operand, plan.decisions[ComponentType.WEIGHTS])
            table: gs.Tensor = stored.constant
            table_type = float_type(weights)
            if operand.transposed:  # float encodings keep the initializer's orientation
                table = edit.apply("Transpose", [table], table_type, [v, h], {"perm": [1, 0]})
            gather.inputs[0] = table
            stored_bytes, names = (0 if shared else stored.nbytes), (stored.constant.name,)
            note = f"; reads the table layer {stored.owner!r} stored" if shared else ""
        result = edit.variable("Gather_output", table_type, rows_shape)
        gather.outputs[0] = result
        route_output(edit, result, outputs, boundary)
        detail = f"Gather of a {weights.name} table [{v}, {h}]{note}"
        return LayerRewrite("Gather", before, stored_bytes, detail, names)

    decision = plan.decisions[ComponentType.WEIGHTS]
    stored, shared = env.weights.quantized(edit, operand, operand.transposed, decision)
    detach(gather)
    layout = stored.tensor.layout
    row_bytes = int(stored.data.shape[-1])
    packed = edit.apply(
        "Gather", [stored.data, ids], np.uint8, None if ids.shape is None else [*ids.shape, row_bytes]
    )
    inputs = [packed]
    for meta in (stored.scales, stored.zero_points):
        if meta is None:
            continue
        if meta.shape[0] == v and not (weights is DType.BITNET158 and not layout.per_channel):
            shape = None if ids.shape is None else [*ids.shape, *meta.shape[1:]]
            meta = edit.apply("Gather", [meta, ids], meta.dtype, shape)
        inputs.append(meta)
    to = FLOAT16 if outputs is DType.F16 else FLOAT32
    attrs: dict[str, object] = {
        "K": h,
        "bits": 0 if weights is DType.BITNET158 else weights.bits,
        "to": onnx_type(to),
    }
    if weights is DType.BITNET158:
        attrs["format"] = layout.packing.value
    else:
        attrs["group_size"] = layout.group_size
    result = edit.apply(DEQUANTIZE_LOWBIT, inputs, to, rows_shape, attrs, DOMAIN)
    route_output(edit, result, outputs, boundary)
    detail = (
        f"Gather of a packed {weights.name} table [{v}, {h}] ({row_bytes} bytes a row) → DequantizeLowBit"
    )
    if shared:
        detail += f"; reads the table layer {stored.owner!r} stored"
    after = 0 if shared else stored.nbytes
    return LayerRewrite(f"Gather+{DEQUANTIZE_LOWBIT}", before, after, detail, (stored.data.name,))
