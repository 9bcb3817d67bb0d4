"""Types and shapes for onnxruntime's own ops, so that onnx shape inference types the tensors after them.

onnx's shape inference knows ONNX's ops only: after a com.microsoft op, or an op onnxruntime defines
in the default domain that ONNX does not (SimplifiedLayerNormalization), every tensor downstream
stays untyped. `typing_schemas()` gives onnx a schema with an inference function for each
such op, and normalize moves the nodes to the schemas' domains in its private copy of the graph
while it runs the inference.

1. Ops: every op this onnxruntime defines in com.microsoft, and every op it defines in the default
   domain that ONNX defines at no opset (the newest onnxruntime version of each).
2. Types, from onnxruntime's signature of the op: an output takes the element type of the first
   present, typed input bound to the same type parameter (ONNX's rule: one parameter, one type per
   node), else the only type its parameter allows, else the fixed type the signature gives it.
   Anything else stays untyped (SimplifiedLayerNormalization's inv_std_var, float or double by an
   attribute); onnxruntime refuses a model that breaks its signature, so the rule is exact for the
   models it runs.
3. Shapes, from `SHAPES`: one rule per output for the ops exporters and onnxruntime's optimizers
   emit; other outputs get their type and no shape (onnx's inference downstream still types
   everything; it cannot shape what follows).
4. Domains: the schemas live in private domains (`TYPING_DOMAINS`), never in "" or com.microsoft.
   onnx's schema registry is global to the process: schemas there would change onnx.checker for
   everyone in it (accepting, and checking against this copy of the signature, ops it rejects
   today) and could collide with a later ONNX op of the same name. The inference functions serve
   shape inference only, so the schemas declare no attributes.
5. Scoped: the schemas are in the registry only inside `with typing_schemas():` blocks. Tools that
   read the whole registry map op names across domains (onnx.reference, which onnxruntime's
   quantizers import, refuses a name in two domains: 'Trilu' in "" and in the typing domain), so
   after the block they see onnx's registry as it was. A lock and a count of the blocks open (in
   any thread) make the first one register and the last one deregister; a schema already in a
   typing domain when the first block opens (another copy of this module holds it) is used and
   left alone. An op whose signature onnx cannot hold (a type a newer onnxruntime knows and this
   onnx does not) gets no schema and stays untyped.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import onnx
import onnx.defs
import onnx.shape_inference
from onnx import helper
from onnx.shape_inference import InferenceContext

__all__ = [
    "SHAPES",
    "TYPING_DOMAINS",
    "LastDimFromAttribute",
    "LeadingDims",
    "MatMulOf",
    "SameAs",
    "typed_by_attribute",
    "typing_schemas",
]

logger = logging.getLogger(__name__)

_MS = "com.microsoft"
TYPING_DOMAINS: Mapping[str, str] = {
    "": "bitnet.normalize.typed.ai.onnx",
    _MS: "bitnet.normalize.typed.com.microsoft",
}
"""Real domain → the private domain its ops' typing schemas are registered in."""


# -- 3. shape rules ----------------------------------------------------------------------------------


def _input_type(ctx: InferenceContext, index: int) -> onnx.TypeProto | None:
    """Input `index`'s tensor type, None when the input is absent or its type unknown."""
    if index >= ctx.get_num_inputs() or not ctx.has_input(index):
        return None
    found = ctx.get_input_type(index)
    if found is None or found.WhichOneof("value") != "tensor_type":
        return None
    return found


def _input_shape(ctx: InferenceContext, index: int) -> onnx.TensorShapeProto | None:
    found = _input_type(ctx, index)
    return found.tensor_type.shape if found is not None and found.tensor_type.HasField("shape") else None


@dataclass(frozen=True)
class SameAs:
    """The shape of input `input`."""

    input: int

    def shape(self, ctx: InferenceContext) -> onnx.TensorShapeProto | None:
        return _input_shape(ctx, self.input)


@dataclass(frozen=True)
class LastDimFromAttribute:
    """The shape of input `input` with the last dim the value of the int attribute `attribute`."""

    input: int
    attribute: str

    def shape(self, ctx: InferenceContext) -> onnx.TensorShapeProto | None:
        source = _input_shape(ctx, self.input)
        value = ctx.get_attribute(self.attribute)
        if source is None or not source.dim or value is None or value.type != onnx.AttributeProto.INT:
            return None
        shape = onnx.TensorShapeProto()
        shape.CopyFrom(source)
        shape.dim[-1].Clear()
        shape.dim[-1].dim_value = value.i
        return shape


@dataclass(frozen=True)
class LeadingDims:
    """The first `count` dims of input `input`, then one unknown dim (attention: batch, sequence, ?)."""

    input: int
    count: int

    def shape(self, ctx: InferenceContext) -> onnx.TensorShapeProto | None:
        source = _input_shape(ctx, self.input)
        if source is None or len(source.dim) < self.count:
            return None
        shape = onnx.TensorShapeProto()
        shape.dim.extend(source.dim[: self.count])
        shape.dim.add()
        return shape


@dataclass(frozen=True)
class MatMulOf:
    """The shape of ONNX's MatMul(input `a`, input `b`), by onnx's own MatMul inference."""

    a: int
    b: int

    def shape(self, ctx: InferenceContext) -> onnx.TensorShapeProto | None:
        shapes = [_input_shape(ctx, self.a), _input_shape(ctx, self.b)]
        if any(s is None for s in shapes):
            return None
        # Float operands: only the shapes matter, and MatMul's types leave int8 out.
        operands = {name: helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, None) for name in ("a", "b")}
        for name, shape in zip(("a", "b"), shapes, strict=True):
            operands[name].tensor_type.shape.CopyFrom(shape)
        try:
            inferred = onnx.shape_inference.infer_node_outputs(
                _matmul_schema(), helper.make_node("MatMul", ["a", "b"], ["y"]), operands
            )
        except onnx.shape_inference.InferenceError:  # shapes that do not multiply: leave it unshaped
            return None
        out = inferred.get("y")
        return out.tensor_type.shape if out is not None and out.tensor_type.HasField("shape") else None


@functools.cache
def _matmul_schema() -> onnx.defs.OpSchema:
    return onnx.defs.get_schema("MatMul", 13)


ShapeRule = SameAs | LastDimFromAttribute | LeadingDims | MatMulOf

_NORM_OUTPUTS = (SameAs(0), None, None, SameAs(0))  # output, mean, inv_std_var, input_skip_bias_sum
_ATTENTION_OUTPUT = (LeadingDims(0, 2),)  # (batch, sequence, v hidden): query may be packed
SHAPES: Mapping[tuple[str, str], tuple[ShapeRule | None, ...]] = {
    ("", "SimplifiedLayerNormalization"): (SameAs(0),),
    (_MS, "SkipLayerNormalization"): _NORM_OUTPUTS,
    (_MS, "SkipSimplifiedLayerNormalization"): _NORM_OUTPUTS,
    (_MS, "GroupNorm"): (SameAs(0),),
    (_MS, "SkipGroupNorm"): (SameAs(0), SameAs(0)),  # Y, X + skip + bias
    (_MS, "Gelu"): (SameAs(0),),
    (_MS, "FastGelu"): (SameAs(0),),  # X + bias broadcast along the last axis
    (_MS, "BiasGelu"): (SameAs(0),),
    (_MS, "QuickGelu"): (SameAs(0),),
    (_MS, "BiasAdd"): (SameAs(0),),
    (_MS, "BiasSoftmax"): (SameAs(0),),
    (_MS, "RotaryEmbedding"): (SameAs(0),),
    (_MS, "MatMulNBits"): (LastDimFromAttribute(0, "N"),),  # A[..., K] → Y[..., N]
    (_MS, "MatMulIntegerToFloat"): (MatMulOf(0, 1),),
    (_MS, "DynamicQuantizeMatMul"): (MatMulOf(0, 1),),
    (_MS, "GemmFastGelu"): (MatMulOf(0, 1),),
    (_MS, "Attention"): _ATTENTION_OUTPUT,
    (_MS, "MultiHeadAttention"): _ATTENTION_OUTPUT,
    (_MS, "GroupQueryAttention"): _ATTENTION_OUTPUT,
    (_MS, "SparseAttention"): _ATTENTION_OUTPUT,
    (_MS, "DecoderMaskedMultiHeadAttention"): _ATTENTION_OUTPUT,
}
"""(domain, op) → a shape rule per output index (None or past the end: no shape)."""


# -- 2. types -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Signature:
    """onnxruntime's formal parameters of one op: a type string per position (a type parameter or a
    fixed `tensor(...)`), None where a heterogeneous variadic parameter allows each its own type."""

    inputs: tuple[str | None, ...]
    outputs: tuple[str | None, ...]
    variadic_input: bool
    variadic_output: bool
    only_type: Mapping[str, int]  # type parameter → its single allowed element type

    def input_param(self, index: int) -> str | None:
        return _position(self.inputs, self.variadic_input, index)

    def element_type(self, ctx: InferenceContext, output: int) -> int | None:
        param = _position(self.outputs, self.variadic_output, output)
        if param is None:
            return None
        fixed = _tensor_element_type(param) or self.only_type.get(param)
        if fixed:
            return fixed
        for index in range(ctx.get_num_inputs()):
            if self.input_param(index) != param:
                continue
            found = _input_type(ctx, index)
            if found is not None and found.tensor_type.elem_type:
                return found.tensor_type.elem_type
        return None


def _position(params: tuple[str | None, ...], variadic: bool, index: int) -> str | None:
    if index < len(params):
        return params[index]
    return params[-1] if variadic and params else None


_ELEMENT_TYPES = {f"tensor({name.lower()})": value for name, value in onnx.TensorProto.DataType.items()}


def _tensor_element_type(type_str: str) -> int | None:
    """`tensor(float16)` → TensorProto.FLOAT16; None for a type parameter or a non-tensor type."""
    return _ELEMENT_TYPES.get(type_str)


def _infer(signature: _Signature, shapes: tuple[ShapeRule | None, ...], ctx: InferenceContext) -> None:
    """The inference function of one op: cases 2 and 3 for each output the node has."""
    for output in range(ctx.get_num_outputs()):
        if not ctx.has_output(output):
            continue
        element_type = signature.element_type(ctx, output)
        if element_type is None:
            continue
        typed = helper.make_tensor_type_proto(element_type, None)
        rule = shapes[output] if output < len(shapes) else None
        shape = rule.shape(ctx) if rule is not None else None
        if shape is not None:
            typed.tensor_type.shape.CopyFrom(shape)
        ctx.set_output_type(output, typed)


def typed_by_attribute(domain: str, op: str, index: int) -> bool:
    """Whether output `index` of `op` has a type parameter no input of the op is bound to (a stash
    type, e.g. LayerNormalization's Mean and InvStdDev, typed by `stash_type`), by onnxruntime's
    signature for its own ops and ONNX's for the others; False for an op neither knows."""
    schema: Any = None
    if (domain or "", op) in _onnxruntime_ops():
        schema = _onnxruntime_ops()[(domain or "", op)]
        inputs, outputs = [p.typeStr for p in schema.inputs], [p.typeStr for p in schema.outputs]
    elif onnx.defs.has(op, domain or ""):
        schema = onnx.defs.get_schema(op, domain or "")
        inputs, outputs = [p.type_str for p in schema.inputs], [p.type_str for p in schema.outputs]
    if schema is None or index >= len(outputs):
        return False
    return _tensor_element_type(outputs[index]) is None and outputs[index] not in inputs


# -- 1./4./5. registration --------------------------------------------------------------------------


class _Registry:
    """The typing schemas' presence in onnx's registry, counted over the open blocks (case 5)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.typed: frozenset[tuple[str, str]] = frozenset()
        self.ours: list[tuple[str, str]] = []  # (op, typing domain) this process registered

    def enter(self) -> frozenset[tuple[str, str]]:
        with self.lock:
            if self.users == 0:
                self._register()
            self.users += 1
            return self.typed

    def exit(self) -> None:
        with self.lock:
            self.users -= 1
            if self.users == 0:
                for op, domain in self.ours:
                    onnx.defs.deregister_schema(op, 1, domain)
                self.ours = []

    def _register(self) -> None:
        typed = set()
        for (domain, op), schema in _onnxruntime_ops().items():
            private = TYPING_DOMAINS[domain]
            if not onnx.defs.has(op, private):
                try:
                    onnx.defs.register_schema(_typing_schema(domain, op, schema))
                except (ValueError, onnx.defs.SchemaError) as exc:  # a type onnx does not know: untyped
                    logger.debug("no typing schema for %s %s: %s", domain or "default-domain", op, exc)
                    continue
                self.ours.append((op, private))
            typed.add((domain, op))
        logger.debug("typing schemas for %d onnxruntime ops", len(typed))
        self.typed = frozenset(typed)


_REGISTRY = _Registry()


@contextlib.contextmanager
def typing_schemas() -> Iterator[frozenset[tuple[str, str]]]:
    """The typing schemas, in onnx's registry for the block; yields the (real domain, op) pairs they
    type: a node of such an op is typed when it sits in `TYPING_DOMAINS[domain]`, imported at
    version 1."""
    typed = _REGISTRY.enter()
    try:
        yield typed
    finally:
        _REGISTRY.exit()


@functools.cache
def _onnxruntime_ops() -> dict[tuple[str, str], Any]:
    """(domain, op) → onnxruntime's newest schema of it, for the ops of case 1."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_c

    newest: dict[tuple[str, str], Any] = {}
    for schema in ort_c.get_all_operator_schema():
        domain = "" if schema.domain == "ai.onnx" else schema.domain
        if domain not in TYPING_DOMAINS or (domain == "" and onnx.defs.has(schema.name, "")):
            continue
        key = (domain, schema.name)
        if key not in newest or newest[key].since_version < schema.since_version:
            newest[key] = schema
    return newest


_OPTIONS = {
    "Single": onnx.defs.OpSchema.FormalParameterOption.Single,
    "Optional": onnx.defs.OpSchema.FormalParameterOption.Optional,
    "Variadic": onnx.defs.OpSchema.FormalParameterOption.Variadic,
}


def _typing_schema(domain: str, op: str, schema: Any) -> onnx.defs.OpSchema:
    """An OpSchema in `domain`'s typing domain with onnxruntime's formal parameters and type
    constraints (`schema`), inferring as cases 2 and 3 say."""
    only_type = {}
    for constraint in schema.type_constraints:
        allowed = [_tensor_element_type(t) for t in constraint.allowed_type_strs]
        if len(allowed) == 1 and allowed[0] is not None:
            only_type[constraint.type_param_str] = allowed[0]
    signature = _Signature(
        inputs=_type_strings(schema.inputs),
        outputs=_type_strings(schema.outputs),
        variadic_input=_ends_variadic(schema.inputs),
        variadic_output=_ends_variadic(schema.outputs),
        only_type=only_type,
    )
    typing = onnx.defs.OpSchema(
        op,
        TYPING_DOMAINS[domain],
        1,
        f"onnxruntime's {op} ({domain or 'default domain'}), typed for bitnet-onnx's shape inference",
        inputs=[_formal(p) for p in schema.inputs],
        outputs=[_formal(p) for p in schema.outputs],
        type_constraints=[(c.type_param_str, list(c.allowed_type_strs), "") for c in schema.type_constraints],
    )
    typing.set_type_and_shape_inference_function(
        functools.partial(_infer, signature, SHAPES.get((domain, op), ()))
    )
    return typing


def _formal(param: Any) -> onnx.defs.OpSchema.FormalParameter:
    return onnx.defs.OpSchema.FormalParameter(
        param.name,
        param.typeStr,
        param_option=_OPTIONS[param.option.name],
        is_homogeneous=param.isHomogeneous,
    )


def _type_strings(params: Any) -> tuple[str | None, ...]:
    return tuple(None if p.option.name == "Variadic" and not p.isHomogeneous else p.typeStr for p in params)


def _ends_variadic(params: Any) -> bool:
    return bool(params) and params[-1].option.name == "Variadic"
