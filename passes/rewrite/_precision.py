"""How a layer's precisions become tensor types: its compute type and the conversions at its boundary.

1. Float precisions are numpy types: F32 float32, F16 float16, BF16 bfloat16 (ml_dtypes). A tensor
   without a type is refused, never guessed: normalize types every tensor after ONNX's and
   onnxruntime's ops, so an untyped one follows an op nobody can type (a custom domain's), and a
   wrong guess gives onnxruntime mismatched float types. `tensor_type` raises an
   UnsupportedModelError naming the tensor, the node producing it and the fix (declare the types
   in the model's value_info).
2. Compute type. onnxruntime's CPU kernels compute in float32 and float16 (a float16 node without
   an fp16 kernel gets onnxruntime's own casts, and the values between such nodes stay float32;
   where its cast back to float16 meets our cast up to float32, it drops the pair, so on CPU an
   F16 layer's outputs can keep float32 values); it has no bfloat16 kernel for MatMul, Add,
   Softmax and most other ops. So a layer computes in
   float16 when every float precision it involves (its activations, and its weights and bias when
   those are float) is F16, and in float32 otherwise. A tensor of a narrower precision than the
   compute type (a BF16 weight, F16 activations beside F32 weights) is rounded to its precision
   and widened: the values are those of its precision, the arithmetic is float32's. Quantized
   weights are dequantized straight into the compute type.
3. Inputs (ACTIVATIONS). Float A: Cast to A, then to the compute type when that differs (each Cast
   only when the tensor does not have the type already). I8 where no integer kernel computes:
   emulated per tensor with ONNX's DynamicQuantizeLinear → DequantizeLinear (uint8 with a zero
   point, the granularity standard ONNX offers at run time); the values are int8's, the
   arithmetic float32's. It buys no speed; it realises the precision the plan asked for. The
   integer kernels (BitLinear, LowBitMatMul with act_quant = 1, DynamicQuantizeMatMul) quantize
   their input themselves and take it as it is.
4. Outputs (OUTPUTS). The result, in its compute type, is converted to the output precision (a
   Cast, or the I8 emulation), then back to the type the boundary tensor had, so the layers
   around keep the types they were built for. A following layer that computes in the lower type
   casts down again; the fold pass removes the pairs that cancel (F16→F32→F16 is exact).
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_dtypes
import numpy as np
import onnx_graphsurgeon as gs

from bitnet_onnx.core.dtypes import DType
from bitnet_onnx.core.errors import ConfigError, UnsupportedModelError

from ._edit import LayerEditor, onnx_type

__all__ = [
    "FLOAT32",
    "KERNEL_INPUT_TYPES",
    "InputConverter",
    "compute_type",
    "float_type",
    "route_output",
    "tensor_type",
]

FLOAT32 = np.dtype(np.float32)
FLOAT16 = np.dtype(np.float16)
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
KERNEL_INPUT_TYPES = (FLOAT32, FLOAT16)
"""The X types the bitnet ops accept (kernels/README.md)."""

_FLOAT_TYPES = {DType.F32: FLOAT32, DType.F16: FLOAT16, DType.BF16: BFLOAT16}


def float_type(dtype: DType) -> np.dtype:
    """The numpy type of a float precision."""
    return _FLOAT_TYPES[dtype]


def tensor_type(tensor: gs.Tensor) -> np.dtype:
    """A tensor's numpy type; UnsupportedModelError when the graph does not say (case 1)."""
    if tensor.dtype is None:
        producer = tensor.inputs[0] if tensor.inputs else None
        source = (
            f", the output of node {producer.name!r} ({producer.domain + ' ' if producer.domain else ''}"
            f"{producer.op}),"
            if producer is not None
            else ""
        )
        raise UnsupportedModelError(
            f"tensor {tensor.name!r}{source} has no type, so the rewrite cannot tell which conversions it "
            "needs, and it does not guess one. onnx shape inference leaves the tensors after an op it cannot "
            "type untyped (normalize warns which op); declare the types of that op's outputs in the model's "
            "value_info (onnx.helper.make_tensor_value_info) and compile again"
        )
    return np.dtype(tensor.dtype)


def compute_type(activations: DType, *stored: DType | None) -> np.dtype:
    """Case 2: float16 when the activations and every float stored precision are F16, else float32."""
    floats = [d for d in (activations, *stored) if d is not None and d.is_float]
    return FLOAT16 if activations is DType.F16 and all(d is DType.F16 for d in floats) else FLOAT32


class InputConverter:
    """Case 3 for one layer: each input tensor is converted once, however many nodes read it."""

    def __init__(self, editor: LayerEditor, activations: DType) -> None:
        if not (activations.is_float or activations is DType.I8):
            raise ConfigError(
                f"layer {editor.layer.name!r}: activations in {activations.name} cannot be realised; "
                "activations are float (F32, F16, BF16) or per-token I8"
            )
        self.editor = editor
        self.activations = activations
        self._done: dict[tuple[str, str], gs.Tensor] = {}

    def __call__(self, tensor: gs.Tensor, compute: np.dtype) -> gs.Tensor:
        key = (tensor.name, compute.name)
        if key not in self._done:
            self._done[key] = self._convert(tensor, compute)
        return self._done[key]

    def _convert(self, tensor: gs.Tensor, compute: np.dtype) -> gs.Tensor:
        edit = self.editor
        if self.activations is DType.I8:
            return edit.cast(_quantize_dequantize(edit, edit.cast(tensor, FLOAT32)), compute)
        return edit.cast(edit.cast(tensor, float_type(self.activations)), compute)


def _quantize_dequantize(edit: LayerEditor, tensor: gs.Tensor) -> gs.Variable:
    """float32 → DynamicQuantizeLinear → DequantizeLinear → float32: the values of per-tensor int8."""
    q = edit.variable("DynamicQuantizeLinear_output", np.uint8, tensor.shape)
    scale = edit.variable("DynamicQuantizeLinear_scale", np.float32, [])
    zero_point = edit.variable("DynamicQuantizeLinear_zero_point", np.uint8, [])
    edit.node("DynamicQuantizeLinear", [tensor], [q, scale, zero_point])
    return edit.apply("DequantizeLinear", [q, scale, zero_point], FLOAT32, tensor.shape)


def route_output(edit: LayerEditor, result: gs.Variable, outputs: DType, boundary: gs.Variable) -> None:
    """Case 4: make `boundary` (detached from its old producer) the end of `result`'s conversions.

    `result` is the fresh output of the layer's last compute node; when nothing needs converting,
    that node writes `boundary` itself and the layer's own readers of `result` read `boundary`.
    `boundary` keeps its name, type and shape.
    """
    if not (outputs.is_float or outputs is DType.I8):
        raise ConfigError(
            f"layer {edit.layer.name!r}: outputs in {outputs.name} cannot be realised; "
            "outputs are float (F32, F16, BF16) or I8"
        )
    target = tensor_type(boundary)
    steps: list[np.dtype | DType] = []
    current = tensor_type(result)
    if outputs is DType.I8:
        if current != FLOAT32:
            steps.append(FLOAT32)
        steps.append(DType.I8)
        current = FLOAT32
    elif current != float_type(outputs):
        steps.append(float_type(outputs))
        current = float_type(outputs)
    if current != target:
        steps.append(target)
    _chain(edit, result, steps, boundary)


def _chain(
    edit: LayerEditor, result: gs.Variable, steps: Sequence[np.dtype | DType], boundary: gs.Variable
) -> None:
    tensor: gs.Tensor = result
    for step in steps:
        if step is DType.I8:
            tensor = _quantize_dequantize(edit, tensor)
        else:
            tensor = edit.apply("Cast", [tensor], step, tensor.shape, {"to": onnx_type(step)})
    producer = tensor.inputs[0]
    producer.outputs[producer.outputs.index(tensor)] = boundary
    if tensor is result:  # nothing converted: whoever read the result reads the boundary
        for reader in list(result.outputs):
            for i, t in enumerate(reader.inputs):
                if t is result:
                    reader.inputs[i] = boundary
