"""LINEAR and OUTPUT layers: MatMul or Gemm with a constant weight, in the plan's precisions.

The layer is its anchor `MatMul(X, B)` or `Gemm(A, B, C)` with B the weight (through the chains
`_weights` resolves), and its bias: Gemm's C, or the constant of an `Add` that alone reads the
MatMul's output. W[N, K] are the weight's rows, A the ACTIVATIONS precision, O the OUTPUTS one.

Cases by the WEIGHTS precision:

0. An anchor onnxruntime quantized already (com.microsoft MatMulNBits, `_nbits`): kept as it is
   when the plan's weights store as many bits as the node or more (quantization is not undone;
   assign_precision then plans the node's own precision), with accuracy_level 4 (int8
   activations) when A = I8 and none (its input's float type) otherwise;
   else its weights are read back as float W[N, K] (the node becomes the float MatMul it stands
   for) and re-quantized by the case below that the plan asks for. A weight read through a
   DequantizeLinear of integer codes (QDQ) is kept the same way (the chain and the float MatMul
   stay; activations and outputs convert as in case 6), or read back through the chain and
   re-quantized.

1. BITNET158 with A = I8 → one `bitnet.BitLinear(X, W[N, ceil(K/ppb)], scale, bias?)` with
   attributes K and format (`layout.packing`); the scale is [1], or [N] with `layout.per_channel`.
   The bias Add is absorbed into the op. X keeps any leading shape; float32 and float16 X go in as
   they are (any other float type is cast to float32), and the output has X's type.
2. BITNET158 with float A → the packed ternary initializer, `bitnet.DequantizeLowBit(bits=0)` to
   W[N, K] in the compute type, then the kept MatMul (through a Transpose) or Gemm (transB=1).
   Storage is ternary and the arithmetic float: the file shrinks 16× (20× base-3) but the layer
   unpacks its weights on every run, so it is slower than a float MatMul. The log says so.
3. I4 / I2 / I1 → `bitnet.LowBitMatMul(X, W, scales, zero_points?, bias?)` with attributes K,
   bits, group_size (None resolved to the converter's whole row) and act_quant = 1 when A is I8
   (per-token int8, integer accumulation), else 0 (X converted to A first; float16 X stays float16).
   Zero points come with `layout.asymmetric`; symmetric weights before a bias get an empty uint8
   [0] zero_points initializer, since the op takes no empty input names.
4. I8 → with A = I8 and one group per row, the faster of `LowBitMatMul(bits=8, act_quant=1)` and
   onnxruntime's `com.microsoft.DynamicQuantizeMatMul(X, B[K, N], b_scale[N], b_zero_point?,
   bias?)` (int8 B, or uint8 B with per-column zero points when asymmetric), measured once per
   shape (`int8_choice`). A layer whose packed weight another layer stored already (a head tied to
   an I8 embedding) takes LowBitMatMul and reads that table: storing it once beats any speed
   difference between two int8 kernels. Otherwise (float A, or groups within a row) LowBitMatMul
   as in case 3.
5. F16 / BF16 → the weight stored in that type (in its initializer's orientation, so a tied table
   is shared), cast to the compute type when that differs, into the kept MatMul or Gemm.
6. F32 → a float32 weight is left as the model has it; a weight of another float type (a float16
   model) is stored in float32 as in case 5, so the plan's F32 is what the file holds.

With float weights (cases 5, 6) and A = I8, the activations are emulated (`_precision` case 3:
DynamicQuantizeLinear → DequantizeLinear) in front of the float layer. MatMulInteger would need
int8 weights, a precision the plan did not give them; the emulation keeps both precisions true.

Activations and outputs convert as `_precision` says (cases 3 and 4 there). The bias is stored
in its BIAS precision (F32, F16 or BF16), cast to float32 for the bitnet and com.microsoft ops and
to the compute type for a float Add or Gemm. A plain float32 bias vector is kept as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx_graphsurgeon as gs
from onnx import helper

from bitnet_onnx.core.dtypes import DType
from bitnet_onnx.core.errors import UnsupportedModelError
from bitnet_onnx.core.layers import ComponentType, Layer
from bitnet_onnx.core.plan import LayerPlan
from bitnet_onnx.passes._match import linear_weight, resolve_constant
from bitnet_onnx.runtime import BITLINEAR, DEQUANTIZE_LOWBIT, DOMAIN, LOWBIT_MATMUL

from ._base import LayerRewrite, RewriteEnv, component_dtype, constant_bytes, detach
from ._edit import EMPTY, LayerEditor, onnx_type
from ._nbits import as_float_matmul, fewer_bits, needs_requantize
from ._precision import (
    FLOAT32,
    KERNEL_INPUT_TYPES,
    InputConverter,
    compute_type,
    float_type,
    route_output,
    tensor_type,
)
from ._weights import StoredQuantized, WeightOperand, bias_values, resolve_operand
from .int8_choice import MS_DOMAIN, Int8Kernel, choose_int8_kernel

__all__ = ["rewrite_linear"]

_NO_ZERO_POINTS = np.zeros((0,), np.uint8)
_INT8_ACCURACY = 4  # MatMulNBits' accuracy_level computing with int8 activations
_CODE_BITS = {"int8": 8, "uint8": 8, "int4": 4, "uint4": 4}  # QDQ weight codes
_W, _B, _A, _O = ComponentType.WEIGHTS, ComponentType.BIAS, ComponentType.ACTIVATIONS, ComponentType.OUTPUTS


@dataclass(frozen=True)
class _Site:
    """The layer as found in the graph."""

    anchor: gs.Node
    x: gs.Tensor
    operand: WeightOperand
    rows_transposed: bool  # W[N, K] is the initializer's orientation transposed
    n: int
    k: int
    bias_add: gs.Node | None  # the Add of the bias after a MatMul
    bias: gs.Tensor | None  # the bias as its op reads it (Gemm's C or the Add's constant)
    boundary: gs.Variable  # the layer's output

    def leading(self, n: int) -> list[int | str | None] | None:
        return None if self.x.shape is None else [*self.x.shape[:-1], n]


def rewrite_linear(env: RewriteEnv, edit: LayerEditor, plan: LayerPlan) -> LayerRewrite:
    weights = component_dtype(plan, _W)
    anchor = env.layer_nodes(edit.layer)[0]
    if anchor.op == "MatMulNBits":  # case 0
        if not needs_requantize(anchor, weights):
            return _kept_nbits(edit, anchor, plan)
        as_float_matmul(edit, anchor, env.view)
    site = _find(env, edit.layer)
    activations = component_dtype(plan, _A)
    before = constant_bytes(site.operand.initializer) + _bias_bytes(env, site)
    if _keeps_dequantized(site, weights):  # case 0, QDQ
        return _floating(env, edit, plan, site, before, keep=True)
    if weights is DType.BITNET158 and activations is DType.I8:
        return _bitlinear(env, edit, plan, site, before)
    if weights is DType.BITNET158:
        return _dequantized(env, edit, plan, site, before)
    if weights in (DType.I4, DType.I2, DType.I1):
        return _lowbit(env, edit, plan, site, before, "")
    if weights is DType.I8:
        return _int8(env, edit, plan, site, before)
    return _floating(env, edit, plan, site, before)


# -- finding the layer ------------------------------------------------------------------------------


def _find(env: RewriteEnv, layer: Layer) -> _Site:
    anchor = env.layer_nodes(layer)[0]
    if anchor.op not in ("MatMul", "Gemm"):
        raise UnsupportedModelError(
            f"layer {layer.name!r}: its anchor {anchor.op} {anchor.name!r} is not a MatMul, Gemm or "
            "MatMulNBits; the graph changed after annotate_layers ran"
        )
    found = linear_weight(env.view, anchor)
    if not found:
        raise UnsupportedModelError(f"layer {layer.name!r}: {found.reason}")
    weight = found.bindings["weight"]
    operand = resolve_operand(env.view, anchor.inputs[1], layer)
    # The anchor reads the initializer transposed or not; W[N, K] is what it reads, or that transposed.
    rows_transposed = operand.transposed ^ (not weight.anchor_nk)
    bias_add, bias = None, None
    if anchor.op == "Gemm" and len(anchor.inputs) > 2 and anchor.inputs[2].name:
        bias = anchor.inputs[2]
    elif layer.bias is not None:
        bias_add, bias = _bias_add(env, layer, anchor)
    boundary = (bias_add or anchor).outputs[0]
    return _Site(
        anchor, anchor.inputs[0], operand, rows_transposed, weight.n, weight.k, bias_add, bias, boundary
    )


def _bias_add(env: RewriteEnv, layer: Layer, anchor: gs.Node) -> tuple[gs.Node, gs.Tensor]:
    y = anchor.outputs[0]
    users = list(y.outputs)
    if len(users) == 1 and users[0].op == "Add" and not env.view.is_graph_output(y):
        add = users[0]
        other = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
        if env.view.is_constant(other):
            return add, other
    raise UnsupportedModelError(
        f"layer {layer.name!r}: its bias {layer.bias!r} is not added by an Add that alone reads "
        f"{anchor.name!r}'s output; the graph changed after annotate_layers ran"
    )


def _bias_bytes(env: RewriteEnv, site: _Site) -> int:
    if site.bias is None:
        return 0
    found = resolve_constant(env.view, site.bias)
    return constant_bytes(found.bindings["chain"].constant) if found else 0


# -- case 0: kept as onnxruntime quantized it ---------------------------------------------------------


def _kept_nbits(edit: LayerEditor, anchor: gs.Node, plan: LayerPlan) -> LayerRewrite:
    """Case 0, kept: the node as it is, computing on int8 activations (accuracy_level 4, per block
    at run time) when the plan's are I8 and on its input's float type otherwise; its output is
    converted to O like any layer's."""
    weights, activations = component_dtype(plan, _W), component_dtype(plan, _A)
    boundary = anchor.outputs[0]
    result = edit.variable("MatMulNBits_output", tensor_type(boundary), boundary.shape)
    anchor.outputs[0] = result
    route_output(edit, result, component_dtype(plan, _O), boundary)
    if activations is DType.I8:
        anchor.attrs["accuracy_level"] = _INT8_ACCURACY
    else:
        anchor.attrs.pop("accuracy_level", None)
    stored = sum(constant_bytes(t) for t in anchor.inputs[1:])
    bits, block = int(anchor.attrs["bits"]), int(anchor.attrs["block_size"])
    computes = "int8 activations" if activations is DType.I8 else "float activations"
    detail = (
        f"kept: {bits}-bit MatMulNBits (block {block}) on {computes}; {weights.name} weights would store "
        "no fewer bits, and quantization is not undone"
    )
    return LayerRewrite("MatMulNBits", stored, stored, detail, (anchor.inputs[1].name,))


# -- cases 1, 3, 4: our kernels and onnxruntime's ------------------------------------------------------


def _bitlinear(env: RewriteEnv, edit: LayerEditor, plan: LayerPlan, site: _Site, before: int) -> LayerRewrite:
    decision = plan.decisions[_W]
    stored, shared = env.weights.quantized(edit, site.operand, site.rows_transposed, decision)
    bias, bias_bytes = _float32_bias(env, edit, plan, site)
    _remove(site)
    x = _kernel_input(edit, site.x)
    inputs = [x, stored.data, stored.scales, *([bias] if bias is not None else [])]
    attrs = {"K": site.k, "format": decision.layout.packing.value}
    result = edit.apply(BITLINEAR, inputs, tensor_type(x), site.leading(site.n), attrs, DOMAIN)
    route_output(edit, result, component_dtype(plan, _O), site.boundary)
    scale = "a scale per row" if decision.layout.per_channel else "one scale"
    detail = (
        f"BitLinear K={site.k} N={site.n}, ternary {decision.layout.packing.value} with {scale}, int8 "
        f"activations per token{', bias absorbed' if bias is not None else ''}"
    )
    return _kernel_result(BITLINEAR, stored, shared, before, bias_bytes, detail)


def _lowbit(
    env: RewriteEnv, edit: LayerEditor, plan: LayerPlan, site: _Site, before: int, why: str
) -> LayerRewrite:
    decision = plan.decisions[_W]
    activations = component_dtype(plan, _A)
    stored, shared = env.weights.quantized(edit, site.operand, site.rows_transposed, decision)
    bias, bias_bytes = _float32_bias(env, edit, plan, site)
    _remove(site)
    act_quant = int(activations is DType.I8)
    if act_quant:
        x = _kernel_input(edit, site.x)
    else:
        x = InputConverter(edit, activations)(site.x, compute_type(activations, decision.dtype))
    layout = stored.tensor.layout
    optional: list[gs.Tensor] = []
    if stored.zero_points is not None or bias is not None:
        # The op takes no empty input names: symmetric weights before a bias get an empty tensor.
        zero_points = stored.zero_points
        optional.append(
            zero_points if zero_points is not None else edit.constant("no_zero_points", _NO_ZERO_POINTS)
        )
    if bias is not None:
        optional.append(bias)
    attrs = {
        "K": site.k,
        "bits": decision.dtype.bits,
        "group_size": layout.group_size,
        "act_quant": act_quant,
    }
    result = edit.apply(
        LOWBIT_MATMUL,
        [x, stored.data, stored.scales, *optional],
        tensor_type(x),
        site.leading(site.n),
        attrs,
        DOMAIN,
    )
    route_output(edit, result, component_dtype(plan, _O), site.boundary)
    acts = "int8 activations per token" if act_quant else f"{activations.name} activations"
    zero = ", zero points" if stored.zero_points is not None else ""
    detail = (
        f"LowBitMatMul K={site.k} N={site.n}, {decision.dtype.bits}-bit weights in groups of "
        f"{layout.group_size}{zero}, {acts}{', bias absorbed' if bias is not None else ''}{why}"
    )
    return _kernel_result(LOWBIT_MATMUL, stored, shared, before, bias_bytes, detail)


def _int8(env: RewriteEnv, edit: LayerEditor, plan: LayerPlan, site: _Site, before: int) -> LayerRewrite:
    decision = plan.decisions[_W]
    if component_dtype(plan, _A) is not DType.I8:
        return _lowbit(env, edit, plan, site, before, "")
    existing = env.weights.stored_quantized(site.operand, site.rows_transposed, decision)
    if existing is not None:
        return _lowbit(env, edit, plan, site, before, f"; reads the table {existing.owner!r} stored")
    group = decision.layout.group_size
    if group is not None and group < site.k:
        return _lowbit(env, edit, plan, site, before, f"; groups of {group} within a row: no onnxruntime op")
    x_type = tensor_type(site.x) if tensor_type(site.x) in KERNEL_INPUT_TYPES else FLOAT32
    choice = choose_int8_kernel(site.k, site.n, x_type, decision.layout.asymmetric, env.measure_kernels)
    stats: dict[str, int | float | str] = {f"int8_us.{name}": us for name, us in choice.micros.items()}
    stats.update({f"int8_left_out.{name}": why for name, why in choice.excluded.items()})
    if choice.kernel is Int8Kernel.LOWBIT_MATMUL:
        result = _lowbit(env, edit, plan, site, before, f"; I8 kernel {choice.describe()}")
    else:
        result = _dynamic_quantize_matmul(env, edit, plan, site, before, choice.describe())
    return replace(result, stats=stats)


def _dynamic_quantize_matmul(
    env: RewriteEnv, edit: LayerEditor, plan: LayerPlan, site: _Site, before: int, how: str
) -> LayerRewrite:
    decision = plan.decisions[_W]
    qt = env.weights.rows(edit, site.operand, site.rows_transposed, decision)
    codes = np.asarray(qt.data)  # [N, K] uint8: one group per row, bits 8 is one code per byte
    if qt.zero_points is None:
        b = edit.constant("weight_int8", (codes.astype(np.int16) - 128).astype(np.int8).T)
        zero = EMPTY
    else:
        b = edit.constant("weight_uint8", codes.T)
        zero = edit.constant("weight_zero_points", qt.zero_points[:, 0])
    scale = edit.constant("weight_scales", qt.scales[:, 0])
    bias, bias_bytes = _float32_bias(env, edit, plan, site)
    _remove(site)
    x = edit.cast(site.x, FLOAT32)
    optional = [zero, bias if bias is not None else EMPTY]
    while optional and optional[-1] is EMPTY:
        optional.pop()
    result = edit.apply(
        "DynamicQuantizeMatMul", [x, b, scale, *optional], FLOAT32, site.leading(site.n), None, MS_DOMAIN
    )
    route_output(edit, result, component_dtype(plan, _O), site.boundary)
    after = sum(constant_bytes(t) for t in (b, scale, zero)) + bias_bytes
    detail = (
        f"com.microsoft.DynamicQuantizeMatMul K={site.k} N={site.n}, int8 weights with a scale per "
        f"column, activations quantized per tensor by onnxruntime; I8 kernel {how}"
    )
    return LayerRewrite("DynamicQuantizeMatMul", before, after, detail, (b.name,))


def _kernel_input(edit: LayerEditor, x: gs.Tensor) -> gs.Tensor:
    """X for an op that quantizes it itself: float32 and float16 as they are, else float32."""
    return x if tensor_type(x) in KERNEL_INPUT_TYPES else edit.cast(x, FLOAT32)


def _kernel_result(
    op: str, stored: StoredQuantized, shared: bool, before: int, bias_bytes: int, detail: str
) -> LayerRewrite:
    if shared:
        detail += f"; reads the weights layer {stored.owner!r} stored"
    after = (0 if shared else stored.nbytes) + bias_bytes
    return LayerRewrite(op, before, after, detail, (stored.data.name,))


# -- cases 2, 5, 6: the float MatMul or Gemm, kept ------------------------------------------------------


def _dequantized(
    env: RewriteEnv, edit: LayerEditor, plan: LayerPlan, site: _Site, before: int
) -> LayerRewrite:
    decision = plan.decisions[_W]
    stored, shared = env.weights.quantized(edit, site.operand, site.rows_transposed, decision)
    compute = compute_type(component_dtype(plan, _A), decision.dtype, plan.dtype(_B))
    attrs = {"K": site.k, "bits": 0, "format": decision.layout.packing.value, "to": onnx_type(compute)}
    rows = edit.apply(
        DEQUANTIZE_LOWBIT, [stored.data, stored.scales], compute, [site.n, site.k], attrs, DOMAIN
    )
    bias_bytes = _float_compute(env, edit, plan, site, compute, rows, is_nk=True)
    detail = (
        f"ternary {decision.layout.packing.value} storage, {compute.name} compute: DequantizeLowBit → "
        f"{site.anchor.op} (the weights are unpacked on every run: a much smaller file, but slower than "
        "a float layer; int8 activations would run BitLinear)"
    )
    op = f"{DEQUANTIZE_LOWBIT}+{site.anchor.op}"
    if shared:
        detail += f"; reads the weights layer {stored.owner!r} stored"
    return LayerRewrite(
        op, before, (0 if shared else stored.nbytes) + bias_bytes, detail, (stored.data.name,)
    )


def _keeps_dequantized(site: _Site, weights: DType) -> bool:
    """Whether the weight comes through a DequantizeLinear of integer codes that `weights` would
    store in no fewer bits."""
    if not any(n.op == "DequantizeLinear" for n in site.operand.value_chain.nodes):
        return False
    dtype = site.operand.initializer.dtype  # an ONNX type number where gs knows no numpy type
    bits = _CODE_BITS.get(
        np.dtype(helper.tensor_dtype_to_np_dtype(dtype) if isinstance(dtype, int) else dtype).name
    )
    return bits is not None and not fewer_bits(bits, weights)


def _floating(
    env: RewriteEnv, edit: LayerEditor, plan: LayerPlan, site: _Site, before: int, *, keep: bool = False
) -> LayerRewrite:
    """Cases 5 and 6; with `keep`, the weight chain stays as the model has it (case 0, QDQ)."""
    weights = component_dtype(plan, _W)
    activations = component_dtype(plan, _A)
    compute = compute_type(activations, weights, plan.dtype(_B))
    if keep or (weights is DType.F32 and site.operand.dtype == np.float32):
        operand = site.anchor.inputs[1]
        weight = None if site.operand.dtype == compute else edit.cast(operand, compute)
        stored_bytes, names, note = (
            constant_bytes(site.operand.initializer),
            (site.operand.initializer.name,),
            "",
        )
        bias_bytes = _float_compute(env, edit, plan, site, compute, weight, is_nk=None)
    else:
        stored, shared = env.weights.floating(edit, site.operand, plan.decisions[_W])
        weight = edit.cast(stored.constant, compute)
        # Float encodings keep the initializer's orientation: [N, K] unless W is its transpose.
        bias_bytes = _float_compute(env, edit, plan, site, compute, weight, is_nk=not site.rows_transposed)
        stored_bytes = 0 if shared else stored.nbytes
        names = (stored.constant.name,)
        note = f"; reads the weights layer {stored.owner!r} stored" if shared else ""
    detail = (
        f"{site.anchor.op} in {compute.name}, {weights.name} weights, {activations.name} activations{note}"
    )
    return LayerRewrite(site.anchor.op, before, stored_bytes + bias_bytes, detail, names)


def _float_compute(
    env: RewriteEnv,
    edit: LayerEditor,
    plan: LayerPlan,
    site: _Site,
    compute: np.dtype,
    weight: gs.Tensor | None,
    is_nk: bool | None,
) -> int:
    """Rewire the kept anchor: X converted, the weight (None: unchanged; `is_nk`: [N, K] rather than
    [K, N]), the bias in the compute type, the output through `route_output`. Returns the bias bytes."""
    anchor = site.anchor
    anchor.inputs[0] = InputConverter(edit, component_dtype(plan, _A))(site.x, compute)
    if weight is not None and is_nk is not None:
        if anchor.op == "Gemm":
            anchor.attrs["transB"] = int(is_nk)
        elif is_nk:
            shape = weight.shape[::-1] if weight.shape is not None else None
            weight = edit.apply("Transpose", [weight], compute, shape, {"perm": [1, 0]})
    if weight is not None:
        anchor.inputs[1] = weight
    bias_bytes = 0
    if site.bias is not None:
        bias, bias_bytes = _stored_bias(env, edit, plan, site, site.bias)
        bias = edit.cast(bias, compute)
        if site.bias_add is not None:
            add = site.bias_add
            add.inputs[1 if add.inputs[1] is site.bias else 0] = bias
        else:
            anchor.inputs[2] = bias
    last = site.bias_add or anchor
    if site.bias_add is not None:
        anchor.outputs[0].dtype = compute  # the product, inside the layer
    result = edit.variable(f"{last.op}_output", compute, site.boundary.shape)
    last.outputs[0] = result
    route_output(edit, result, component_dtype(plan, _O), site.boundary)
    return bias_bytes


# -- bias ---------------------------------------------------------------------------------------------


def _stored_bias(
    env: RewriteEnv, edit: LayerEditor, plan: LayerPlan, site: _Site, bias: gs.Tensor
) -> tuple[gs.Tensor, int]:
    """The bias (`bias`, as its op reads it) in its BIAS precision: the model's own tensor when that
    already is it, else a converted [N] initializer. Returns it and the bytes it stores."""
    decision = plan.decisions.get(_B)
    dtype = decision.dtype if decision is not None else DType.F32
    if not dtype.is_float:
        raise UnsupportedModelError(
            f"layer {edit.layer.name!r}: a bias in {dtype.name} cannot be realised; biases are F32, F16 "
            "or BF16"
        )
    if (
        isinstance(bias, gs.Constant)
        and tensor_type(bias) == float_type(dtype)
        and tuple(bias.shape) == (site.n,)
    ):
        return bias, constant_bytes(bias)
    values = bias_values(env.view, bias, edit.layer, site.n)
    if decision is None:
        converted = values.astype(np.float32)
    else:
        converted = env.weights.convert(edit.layer, values, decision, edit.layer.bias or bias.name).data
    constant = edit.constant(f"bias_{dtype.name.lower()}", converted)
    return constant, constant_bytes(constant)


def _float32_bias(
    env: RewriteEnv, edit: LayerEditor, plan: LayerPlan, site: _Site
) -> tuple[gs.Tensor | None, int]:
    """The bias as the bitnet and com.microsoft ops take it: float32 [N] (cast from its storage)."""
    if site.bias is None:
        return None, 0
    bias, nbytes = _stored_bias(env, edit, plan, site, site.bias)
    return edit.cast(bias, FLOAT32), nbytes


def _remove(site: _Site) -> None:
    """Detach the anchor and the absorbed bias Add (their inputs were read into `site`)."""
    detach(site.anchor)
    if site.bias_add is not None:
        detach(site.bias_add)
