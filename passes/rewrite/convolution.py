"""CONVOLUTION layers: Conv (or ConvTranspose) with a constant weight, in the plan's precisions.

Let A, O be the ACTIVATIONS and OUTPUTS precisions and the weight W[d0, d1, k...].

1. WEIGHTS F32: a float32 weight as the model has it (another float type is stored as in case 2).
2. WEIGHTS F16 / BF16 (or F32 of a float16 model): the weight stored in that type, cast to the
   compute type when that differs (a cast island of one tensor), into the kept Conv.
3. WEIGHTS I8 / I4 / I2 / I1 / BITNET158: weight-only compression. The weight is stored packed as
   rows W[d0, d1·k...] (one row per output channel of a Conv) in the kernels/README encodings,
   `bitnet.DequantizeLowBit` unpacks it to the compute type and a Reshape restores its shape for
   the kept Conv. The file shrinks by the format's factor; the arithmetic is the float Conv's,
   and the weights are unpacked on every run (no integer convolution kernel exists here).
4. ACTIVATIONS: `_precision`'s input conversion; I8 is the per-tensor DynamicQuantizeLinear →
   DequantizeLinear emulation (a Conv's last axis is a spatial one, so per-token scales would mean
   nothing; per tensor is the granularity ONNX offers).
5. BIAS: stored in its precision, cast to the compute type. OUTPUTS: `_precision`'s output
   conversion.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from bitnet_onnx.core.dtypes import DType
from bitnet_onnx.core.errors import UnsupportedModelError
from bitnet_onnx.core.layers import ComponentType
from bitnet_onnx.core.plan import LayerPlan
from bitnet_onnx.passes._match import resolve_constant
from bitnet_onnx.runtime import DEQUANTIZE_LOWBIT, DOMAIN

from ._base import LayerRewrite, RewriteEnv, component_dtype, constant_bytes
from ._edit import LayerEditor, onnx_type
from ._precision import InputConverter, compute_type, route_output
from ._weights import resolve_operand

__all__ = ["rewrite_convolution"]

_W, _B, _A, _O = ComponentType.WEIGHTS, ComponentType.BIAS, ComponentType.ACTIVATIONS, ComponentType.OUTPUTS


def rewrite_convolution(env: RewriteEnv, edit: LayerEditor, plan: LayerPlan) -> LayerRewrite:
    layer = edit.layer
    conv = env.layer_nodes(layer)[0]
    if conv.op not in ("Conv", "ConvTranspose"):
        raise UnsupportedModelError(
            f"layer {layer.name!r}: its anchor {conv.op} {conv.name!r} is not a Conv; give the layer F32 "
            "precision"
        )
    operand = resolve_operand(env.view, conv.inputs[1], layer)
    shape = list(operand.shape)
    weights = component_dtype(plan, _W)
    activations = component_dtype(plan, _A)
    compute = compute_type(activations, weights, plan.dtype(_B))
    before = after = constant_bytes(operand.initializer)
    names: tuple[str, ...] = (operand.initializer.name,)
    note = ""
    weight: gs.Tensor | None = None
    if weights is DType.F32 and operand.dtype == np.float32:
        if operand.dtype != compute:
            weight = edit.cast(conv.inputs[1], compute)
    elif weights.is_float:
        if operand.transposed:
            raise UnsupportedModelError(
                f"layer {layer.name!r}: its weight reaches the Conv through a Transpose; give the layer F32 "
                "precision or fold the Transpose into the weight"
            )
        stored, shared = env.weights.floating(edit, operand, plan.decisions[_W])
        weight = edit.cast(stored.constant, compute)
        after, names = (0 if shared else stored.nbytes), (stored.constant.name,)
        note = "; shared" if shared else ""
    else:
        decision = plan.decisions[_W]
        stored, shared = env.weights.quantized(edit, operand, operand.transposed, decision)
        rows = int(stored.data.shape[0])
        k = int(np.prod(shape)) // rows
        attrs: dict[str, object] = {"K": k, "bits": 0 if weights is DType.BITNET158 else weights.bits}
        if weights is DType.BITNET158:
            attrs["format"] = decision.layout.packing.value
        else:
            attrs["group_size"] = stored.tensor.layout.group_size
        attrs["to"] = onnx_type(compute)
        inputs = [
            stored.data,
            stored.scales,
            *([stored.zero_points] if stored.zero_points is not None else []),
        ]
        flat = edit.apply(DEQUANTIZE_LOWBIT, inputs, compute, [rows, k], attrs, DOMAIN)
        target = edit.constant("weight_shape", np.asarray(shape, dtype=np.int64))
        weight = edit.apply("Reshape", [flat, target], compute, shape)
        after, names = (0 if shared else stored.nbytes) + constant_bytes(target), (stored.data.name,)
        note = f"; {weights.name} weights unpacked by DequantizeLowBit on every run (weight-only compression)"
    conv.inputs[0] = InputConverter(edit, activations)(conv.inputs[0], compute)
    if weight is not None:
        conv.inputs[1] = weight
    if len(conv.inputs) > 2 and conv.inputs[2].name:
        bias, bias_before, bias_after = _bias(env, edit, plan, conv.inputs[2], compute)
        conv.inputs[2] = bias
        before, after = before + bias_before, after + bias_after
    boundary = conv.outputs[0]
    result = edit.variable(f"{conv.op}_output", compute, boundary.shape)
    conv.outputs[0] = result
    route_output(edit, result, component_dtype(plan, _O), boundary)
    detail = f"{conv.op} in {compute.name}, {weights.name} weights, {activations.name} activations{note}"
    return LayerRewrite(conv.op, before, after, detail, names)


def _bias(
    env: RewriteEnv, edit: LayerEditor, plan: LayerPlan, tensor: gs.Tensor, compute: np.dtype
) -> tuple[gs.Tensor, int, int]:
    """The Conv bias in its BIAS precision, cast to c: (tensor, bytes before, bytes after). A bias
    the plan does not decide (not an initializer: a Constant node's output) is cast as it is."""
    decision = plan.decisions.get(_B)
    if decision is None and not resolve_constant(env.view, tensor):
        return edit.cast(tensor, compute), 0, 0
    operand = resolve_operand(env.view, tensor, edit.layer)
    before = constant_bytes(operand.initializer)
    if decision is None or (decision.dtype is DType.F32 and operand.dtype == np.float32):
        return edit.cast(tensor, compute), before, before
    if not decision.dtype.is_float:
        raise UnsupportedModelError(
            f"layer {edit.layer.name!r}: a bias in {decision.dtype.name} cannot be realised; use F32, F16 "
            "or BF16"
        )
    stored, shared = env.weights.floating(edit, operand, decision)
    return edit.cast(stored.constant, compute), before, 0 if shared else stored.nbytes
