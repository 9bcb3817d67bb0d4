"""NORMALIZATION, ACTIVATION and OTHER layers (and float attention): the layer's nodes as an island
computing in one type.

Let A be the ACTIVATIONS precision, O the OUTPUTS one, and, for a normalization, W and B the
WEIGHTS and BIAS precisions of its gain and shift.

1. Compute type c: `_precision`'s rule (float16 when A and the float W, B are all F16, else
   float32; BF16 values are rounded to BF16 and computed in float32, since onnxruntime's CPU
   provider has no bfloat16 kernels for these ops).
2. Inputs: every float tensor a node of the layer reads from outside it (another layer, a graph
   input) is converted once: to A, then to c (I8: the per-tensor emulation).
3. Constants: the gain and shift (`layer.weight`, `layer.bias`) are stored in their W and B
   precisions through the converter (the decision's strategy) and cast to c when that differs.
   Every other float initializer a node reads (ε, a scale, a mask table, Pow's exponent) is
   stored in c: finite values beyond c's range saturate to ±max (a float32-min mask fill becomes
   float16-min, as fp16 models write it) and infinities stay. A constant computed by nodes outside
   the layer is cast to c.
4. Inside: every float tensor the layer's nodes produce takes type c. A Cast to a float type casts
   to c (HF's RMSNorm upcast inside an F16 island computes in F16: the island's type is the layer's
   precision); ConstantOfShape's float value is given in c. Every output of a multi-output op
   whose type parameter an input shares takes c too (SkipSimplifiedLayerNormalization's residual
   sum beside its normalized output; GroupQueryAttention's present key and value beside its
   output): onnxruntime binds one type per parameter. An output typed by an attribute (the mean
   and inverse-std of LayerNormalization-like ops, stash type float32) keeps its type.
5. Outputs: every float tensor the layer produces that is read outside it (or is a graph output)
   leaves through `_precision`'s output conversion (to O, then the type the model had there);
   readers inside the layer keep reading the c value.

6. A float Cast whose result a ReduceMean of the layer reads becomes a CastLike (opset 15 and
   later): our input conversion, and also a conversion outside the layer, such as the output
   conversion of the layer before (an F16 linear layer feeding an F32 norm, whose own input
   conversion is then a no-op). onnxruntime 1.32's LayerNormFusion takes a Cast feeding a
   LayerNorm's ReduceMean and Sub for an fp16→fp32 upcast and fuses the LayerNorm on the Cast's
   *input*: after a downcast (or the BF16 round trip) that input has another type than the stored
   gain, and the session fails ("Type parameter (T) of Optype (LayerNormalization) bound to
   different types"). With CastLike the fusion sees no such Cast: a float16 LayerNorm stays
   decomposed on CPU (onnxruntime has no fp16 LayerNorm kernel there), a float32 one fuses on the
   rounded input. The fold pass does not cancel a CastLike, so two F16 norms in a row keep one
   extra conversion pair between them. The layer's own Casts (case 4) stay Casts.

onnxruntime's CPU provider runs float16 nodes that lack an fp16 kernel through its own casts and
keeps the values between such nodes in float32: on CPU an F16 island rounds where its boundary and
constants are, not after each op. An island whose conversions are all no-ops leaves the layer as
it was.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_graphsurgeon as gs
from onnx import helper

from bitnet_onnx.core.dtypes import DType
from bitnet_onnx.core.errors import UnsupportedModelError
from bitnet_onnx.core.layers import ComponentType
from bitnet_onnx.core.plan import LayerPlan
from bitnet_onnx.passes._contrib_types import typed_by_attribute
from bitnet_onnx.passes._match import resolve_constant

from ._base import LayerRewrite, RewriteEnv, component_dtype, constant_bytes
from ._edit import LayerEditor, onnx_type
from ._precision import InputConverter, compute_type, route_output, tensor_type
from ._weights import resolve_operand

__all__ = ["rewrite_island", "run_island"]

_FLOAT_KINDS = frozenset({"float32", "float16", "bfloat16"})
_CAST_LIKE_OPSET = 15


def rewrite_island(env: RewriteEnv, edit: LayerEditor, plan: LayerPlan) -> LayerRewrite:
    nodes = env.layer_nodes(edit.layer)
    return run_island(env, edit, plan, nodes)


def run_island(env: RewriteEnv, edit: LayerEditor, plan: LayerPlan, nodes: Sequence[gs.Node]) -> LayerRewrite:
    """Cases 1-6 over `nodes` (the layer's, or an attention layer's float part)."""
    layer = edit.layer
    activations = component_dtype(plan, ComponentType.ACTIVATIONS)
    weights, bias = plan.dtype(ComponentType.WEIGHTS), plan.dtype(ComponentType.BIAS)
    compute = compute_type(activations, weights, bias)
    inside = {id(n) for n in nodes}
    produced = {id(t) for n in nodes for t in n.outputs}
    convert = InputConverter(edit, activations)
    constants: dict[str, gs.Tensor] = {}
    before = after = 0
    params: list[str] = []  # the initializers now holding the gain and shift

    # Case 5 first: readers outside see the boundary tensors, readers inside the c values.
    boundaries: list[tuple[gs.Variable, gs.Variable]] = []
    for node in nodes:
        for i, out in enumerate(node.outputs):
            if not _is_float(out) or _keeps_type(node, i):
                continue
            outside = env.view.is_graph_output(out) or any(id(c) not in inside for c in out.outputs)
            if outside:
                result = edit.variable(f"{node.op}_output", compute, out.shape)
                for reader in [c for c in out.outputs if id(c) in inside]:
                    reader.inputs[reader.inputs.index(out)] = result
                node.outputs[i] = result
                boundaries.append((result, out))
            else:
                out.dtype = compute  # case 4
    for node in nodes:
        _retype(node, compute)
        for i, tensor in enumerate(node.inputs):
            if id(tensor) in produced or not tensor.name or not _is_float(tensor):
                continue
            param = _param_component(env, layer, tensor)
            if param is not None:  # case 3: gain or shift
                if tensor.name not in constants:
                    value, stored, original, name = _stored_param(env, edit, plan, param, tensor, compute)
                    constants[tensor.name] = value
                    before, after = before + original, after + stored
                    params.append(name)
                node.inputs[i] = constants[tensor.name]
            elif isinstance(tensor, gs.Constant):  # case 3: any other float constant
                if tensor.name not in constants:
                    constants[tensor.name] = _constant_in(edit, tensor, compute)
                node.inputs[i] = constants[tensor.name]
            elif env.view.is_constant(tensor):
                node.inputs[i] = edit.cast(tensor, compute)
            else:  # case 2
                node.inputs[i] = convert(tensor, compute)
    for node in nodes:
        if node.op == "ReduceMean" and env.graph.opset >= _CAST_LIKE_OPSET:
            _cast_like(edit, node.inputs[0], inside)
    for result, boundary in boundaries:
        route_output(edit, result, component_dtype(plan, ComponentType.OUTPUTS), boundary)
    # What computes the layer: its ops in graph order (a decomposed norm is not its anchor op alone).
    op = "+".join(dict.fromkeys(n.op for n in sorted(nodes, key=env.view.position)))
    detail = f"{len(nodes)} nodes in {compute.name}, {activations.name} activations"
    if weights is not None:
        detail += f", {weights.name} weights"
    return LayerRewrite(op, before, after, detail, tuple(params))


def _is_float(tensor: gs.Tensor) -> bool:
    return tensor.dtype is not None and np.dtype(tensor.dtype).name in _FLOAT_KINDS


def _keeps_type(node: gs.Node, index: int) -> bool:
    # A single output takes c (a Cast's or ConstantOfShape's target type is retyped by case 4).
    return len(node.outputs) > 1 and typed_by_attribute(node.domain or "", node.op, index)


def _cast_like(edit: LayerEditor, tensor: gs.Tensor, inside: set[int]) -> None:
    """Case 6: the float Cast (not one of the layer's own nodes) that feeds a ReduceMean becomes a
    CastLike."""
    cast = tensor.inputs[0] if tensor.inputs else None
    if cast is None or cast.op != "Cast" or id(cast) in inside or not _is_float(tensor):
        return
    like = edit.constant(f"{np.dtype(tensor.dtype).name}_like", np.zeros((), tensor.dtype))
    cast.op = "CastLike"
    cast.attrs.clear()
    cast.inputs.append(like)


def _retype(node: gs.Node, compute: np.dtype) -> None:
    """Case 4 for ops that name a float type in their attributes."""
    if (
        node.op == "Cast"
        and np.dtype(helper.tensor_dtype_to_np_dtype(int(node.attrs["to"]))).name in _FLOAT_KINDS
    ):
        node.attrs["to"] = onnx_type(compute)
    elif node.op == "ConstantOfShape" and isinstance(node.attrs.get("value"), gs.Constant):
        value = node.attrs["value"]
        if np.dtype(value.dtype).name in _FLOAT_KINDS:
            node.attrs["value"] = gs.Constant(value.name, _saturated(np.asarray(value.values), compute))


def _param_component(env: RewriteEnv, layer, tensor: gs.Tensor) -> ComponentType | None:
    if layer.weight is None and layer.bias is None:
        return None
    found = env.view.is_constant(tensor) and _initializer_name(env, tensor)
    if found and found == layer.weight:
        return ComponentType.WEIGHTS
    if found and found == layer.bias:
        return ComponentType.BIAS
    return None


def _initializer_name(env: RewriteEnv, tensor: gs.Tensor) -> str | None:
    found = resolve_constant(env.view, tensor)
    return found.bindings["chain"].constant.name if found else None


def _stored_param(
    env: RewriteEnv,
    edit: LayerEditor,
    plan: LayerPlan,
    component: ComponentType,
    tensor: gs.Tensor,
    compute: np.dtype,
) -> tuple[gs.Tensor, int, int, str]:
    """The gain or shift in its precision, cast to c: (tensor, bytes stored, bytes before, the
    initializer holding it)."""
    decision = plan.decisions.get(component)
    operand = resolve_operand(env.view, tensor, edit.layer)
    original = constant_bytes(operand.initializer)
    if decision is None or (decision.dtype is DType.F32 and operand.dtype == np.float32):
        return edit.cast(tensor, compute), original, original, operand.initializer.name
    if not decision.dtype.is_float:
        raise UnsupportedModelError(
            f"layer {edit.layer.name!r}: a {component.value} in {decision.dtype.name} cannot be realised for "
            f"a {edit.layer.layer_type.value} layer; use F32, F16 or BF16"
        )
    stored, shared = env.weights.floating(edit, operand, decision)
    value: gs.Tensor = stored.constant
    if operand.transposed:
        value = edit.apply("Transpose", [value], value.dtype, list(operand.shape), {"perm": [1, 0]})
    return edit.cast(value, compute), 0 if shared else stored.nbytes, original, stored.constant.name


def _constant_in(edit: LayerEditor, tensor: gs.Constant, compute: np.dtype) -> gs.Tensor:
    if tensor_type(tensor) == compute:
        return tensor
    return edit.constant(
        f"{_stem(tensor.name)}_{compute.name}", _saturated(np.asarray(tensor.values), compute)
    )


def _saturated(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """`values` in `dtype`, finite values beyond its range clipped to ±max, infinities kept."""
    top = float(np.finfo(dtype).max) if dtype.name != "bfloat16" else 3.3895313892515355e38
    wide = values.astype(np.float64)
    clipped = np.where(np.isfinite(wide), np.clip(wide, -top, top), wide)
    return clipped.astype(dtype)


def _stem(name: str) -> str:
    return name.rsplit("/", 1)[-1].replace(":", "_") or "constant"
