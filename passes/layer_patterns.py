# ruff: noqa: E501  (the rule table keeps one line per rule, with its sketch as a trailing comment)
"""The annotation rule table: which subgraphs are layers of which type.

`RULES` is data: one `LayerRule` per entry, most specific first, each with a trailing comment that
sketches the subgraph it recognizes. A rule has a name (logged as the deciding rule and stamped as
`bitnet.rule`), a layer type, the op types it anchors on, a match function and a priority; the
engine in `p20_annotate_layers` tries rules by priority (then table order), anchors in model order,
and the first rule to claim a node keeps it. This module knows no layer names and no engine.

A match function takes (anchor node, GraphView) and returns a MatchResult. On success it binds
`layer`, a `LayerMatch`; on a miss the reason says which part of the sketch was not found, and
`matched` holds the nodes matched up to there (so `explain` can show the closest attempt).

What the rules accept, beyond the sketches:
- constants are initializers or values computed from constants only (Constant nodes, Sqrt/Cast of
  a Constant); weights, tables, gains and biases may reach their op through Identity, Cast,
  DequantizeLinear (and, for linear weights, Transpose and Reshape);
- commutative Add/Mul operands in either order; Div(1, ·) or Reciprocal for an inverse;
- torch/HF's Casts around an RMSNorm and Mul(√scale) on q and k separately; `IsNaN → Where`
  around the Softmax; `Where` for a masked fill of the scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto

from bitnet_onnx.core.layers import LayerType
from bitnet_onnx.passes._match import (
    CHAIN_OPS,
    ConstantChain,
    GraphView,
    MatchResult,
    bias_of_gemm,
    label,
    linear_weight,
    resolve_constant,
    split_constant,
)

__all__ = ["RULES", "LayerMatch", "LayerRule"]


@dataclass(frozen=True)
class LayerMatch:
    """What a rule found. `nodes` are the layer's own nodes, anchor first (they may belong to no
    other layer); `shared` are weight/bias chain nodes (Identity, Cast, Transpose, ...), which a
    layer may share with another (the first to claim one keeps it). `param` is the tensor whose name
    can name the layer (weight, table or gain as the anchor reads it); `projections` are the anchors
    of an attention block's q/k/v/o projections."""

    nodes: tuple[gs.Node, ...]
    shared: tuple[gs.Node, ...] = ()
    param: gs.Tensor | None = None
    weight: ConstantChain | None = None
    weight_nk: bool | None = None
    bias: ConstantChain | None = None
    projections: tuple[gs.Node, ...] = ()


@dataclass(frozen=True)
class LayerRule:
    name: str
    layer_type: LayerType
    anchor_ops: frozenset[str]
    match: Callable[[gs.Node, GraphView], MatchResult]
    priority: int


# -- small helpers ---------------------------------------------------------------------------------

_DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})
_MS = "com.microsoft"
_PARAM_CHAIN = frozenset({"Identity", "Cast", "DequantizeLinear"})
_LINEAR_OPS = frozenset({"MatMul", "Gemm", "MatMulNBits"})


def _domain(node: gs.Node) -> str:
    return node.domain or ""


def _found(anchor: gs.Node, match: LayerMatch) -> MatchResult:
    return MatchResult.success(anchor, (*match.nodes, *match.shared), layer=match)


def _near(value: float | None, target: float) -> bool:
    return value is not None and math.isclose(value, target, rel_tol=1e-3, abs_tol=1e-6)


def _sole_consumer(view: GraphView, node: gs.Node, op: str) -> gs.Node | None:
    users = view.consumers(node.outputs[0])
    return users[0] if len(users) == 1 and users[0].op == op else None


def _scaled_by(view: GraphView, node: gs.Node | None, op: str, value: float) -> gs.Tensor | None:
    """For node = x·c (op Mul) or x/c (op Div) with a constant c ≈ `value`: x."""
    if node is None or node.op != op:
        return None
    split = split_constant(view, node)
    if split is None or not _near(view.scalar(split[1]), value):
        return None
    if op == "Div" and node.inputs[1] is not split[1]:
        return None  # c/x is not x/c
    return split[0]


def _adds_one(view: GraphView, node: gs.Node | None) -> bool:
    split = split_constant(view, node) if node is not None and node.op == "Add" else None
    return split is not None and _near(view.scalar(split[1]), 1.0)


def _param(view: GraphView, tensor: gs.Tensor) -> ConstantChain | None:
    found = resolve_constant(view, tensor, _PARAM_CHAIN)
    return found.bindings["chain"] if found else None


def _chain_nodes(*chains: ConstantChain | None) -> tuple[gs.Node, ...]:
    return tuple(n for chain in chains if chain is not None for n in chain.nodes)


# -- attention ---------------------------------------------------------------------------------

_SCORE_OPS = frozenset({"Add", "Mul", "Div", "Where", "Cast", "Sub"})  # scale, mask, masked fill
_FIRST_INPUT_OPS = frozenset(
    {
        "Reshape",
        "Transpose",
        "Slice",
        "Expand",
        "Unsqueeze",
        "Squeeze",
        "Cast",
        "Identity",
        "Split",
        "Neg",
        "Flatten",
        "RotaryEmbedding",  # com.microsoft, onnxruntime's fusion: input 0 is the projected q or k
    }
)
_HEAD_MERGE_OPS = frozenset({"Reshape", "Transpose", "Cast", "Identity", "Flatten", "Squeeze"})
_SEARCH_BUDGET = 96


def _scores_path(view: GraphView, tensor: gs.Tensor, depth: int = 0) -> list[gs.Node] | None:
    """Nodes from the Softmax input up to a MatMul of two activations, through scale/mask ops."""
    producer = view.producer(tensor)
    if producer is None or depth > 6:
        return None
    if producer.op == "MatMul":
        dynamic = not any(view.is_constant(t) for t in producer.inputs)
        return [producer] if dynamic else None
    if producer.op not in _SCORE_OPS:
        return None
    inputs = producer.inputs[1:] if producer.op == "Where" else producer.inputs
    for t in inputs:
        if not view.is_constant(t):
            path = _scores_path(view, t, depth + 1)
            if path is not None:
                return [producer, *path]
    return None


def _strip_scale(view: GraphView, tensor: gs.Tensor, nodes: list[gs.Node], *, transpose: bool) -> gs.Tensor:
    """Follows q (or k) up through scalar Mul/Div (and, for k, the Transpose swapping the last two axes)."""
    while True:
        producer = view.producer(tensor)
        if producer is None:
            return tensor
        if producer.op in ("Mul", "Div"):
            split = split_constant(view, producer)
            if (
                split is None
                or view.scalar(split[1]) is None
                or (producer.op == "Div" and producer.inputs[1] is not split[1])
            ):
                return tensor
            nodes.append(producer)
            tensor = split[0]
        elif transpose and producer.op == "Transpose" and _swaps_last_two(producer.attrs.get("perm")):
            nodes.append(producer)
            tensor = producer.inputs[0]
        else:
            return tensor


def _swaps_last_two(perm: Sequence[int] | None) -> bool:
    if not perm or len(perm) < 2:
        return False
    n = len(perm)
    return list(perm) == [*range(n - 2), n - 1, n - 2]


def _probs_path(view: GraphView, softmax: gs.Node) -> tuple[list[gs.Node], gs.Node | None, str]:
    """From the Softmax output down to the ·V MatMul: (guard nodes, the MatMul or None, why not)."""
    nodes: list[gs.Node] = []
    tensor = softmax.outputs[0]
    for _ in range(4):
        users = view.consumers(tensor)
        pv = next((u for u in users if u.op == "MatMul" and u.inputs[0] is tensor), None)
        if pv is not None:
            return nodes, pv, ""
        isnan = next((u for u in users if u.op == "IsNaN"), None)
        guard = next(
            (u for u in users if isnan is not None and u.op == "Where" and u.inputs[0] is isnan.outputs[0]),
            None,
        )
        if isnan is not None and guard is not None:
            nodes += [isnan, guard]
            tensor = guard.outputs[0]
        elif len(users) == 1 and users[0].op in ("Cast", "Dropout", "Identity"):
            nodes.append(users[0])
            tensor = users[0].outputs[0]
        else:
            read_by = ", ".join(sorted({u.op for u in users})) or "nothing"
            return nodes, None, f"the Softmax output is read by {read_by}, not by the probabilities·V MatMul"
    return nodes, None, "no probabilities·V MatMul within 4 ops of the Softmax"


def _is_linear(view: GraphView, node: gs.Node) -> bool:
    return node.op in _LINEAR_OPS and bool(linear_weight(view, node))


def _upstream_projections(view: GraphView, sources: Iterable[gs.Tensor]) -> list[gs.Node]:
    """Linear layers feeding q/k/v through head plumbing (reshape, transpose, rotary, repeat_kv,
    split of a fused qkv, bias Add). An Add is crossed only when it adds a constant (a bias) or
    two products (rotary embedding), so the search never escapes into the residual stream."""
    found: list[gs.Node] = []
    seen: set[int] = set()
    stack = list(sources)
    budget = _SEARCH_BUDGET
    while stack and budget:
        producer = view.producer(stack.pop())
        if producer is None or id(producer) in seen:
            continue
        seen.add(id(producer))
        budget -= 1
        if _is_linear(view, producer):
            found.append(producer)
            continue
        dynamic = [t for t in producer.inputs if t.name and not view.is_constant(t)]
        if producer.op in _FIRST_INPUT_OPS:
            stack.extend(dynamic[:1] if dynamic and dynamic[0] is producer.inputs[0] else [])
        elif producer.op in ("Concat", "Mul"):
            stack.extend(dynamic)
        elif producer.op == "Add":
            products = all((p := view.producer(t)) is not None and p.op == "Mul" for t in dynamic)
            if len(dynamic) == 1 or products:
                stack.extend(dynamic)
    return sorted(found, key=view.position)


def _output_projection(view: GraphView, tensor: gs.Tensor) -> gs.Node | None:
    """The linear layer that merges the heads: attention output → Transpose/Reshape [→ RMSNorm, as
    BitNet's attention sub-norm] → linear."""
    for _ in range(8):
        normed = _rms_normed(view, tensor)
        if normed is not None:
            tensor = normed
            continue
        users = [
            u for u in view.consumers(tensor) if u.op != "Shape"
        ]  # exporters read shapes for Reshape targets
        if len(users) != 1:
            return None
        user = users[0]
        if _is_linear(view, user) and user.inputs[0] is tensor:
            return user
        if user.op not in _HEAD_MERGE_OPS:
            return None
        tensor = user.outputs[0]
    return None


def _rms_normed(view: GraphView, x: gs.Tensor) -> gs.Tensor | None:
    """The output of the RMSNorm reading `x` (fused, or decomposed as rule rms_norm matches it);
    None when no RMSNorm reads it."""
    for user in view.consumers(x):
        if user.op in ("RMSNormalization", "SimplifiedLayerNormalization") and user.inputs[0] is x:
            return user.outputs[0]
        square = user.op == "Pow" or (user.op == "Mul" and user.inputs[0] is user.inputs[1] is x)
        mean = _sole_consumer(view, user, "ReduceMean") if square else None
        add = _sole_consumer(view, mean, "Add") if mean is not None else None
        sqrt = _sole_consumer(view, add, "Sqrt") if add is not None else None
        found = match_rms_norm(sqrt, view) if sqrt is not None else None
        if found:
            nodes = found.bindings["layer"].nodes
            inside = {id(n) for n in nodes}
            for node in nodes:
                if any(id(c) not in inside for c in view.consumers(node.outputs[0])):
                    return node.outputs[0]
    return None


def _projections(view: GraphView, sources: Iterable[gs.Tensor], output: gs.Tensor) -> tuple[gs.Node, ...]:
    upstream = _upstream_projections(view, sources)
    merge = _output_projection(view, output)
    return tuple(upstream + ([merge] if merge is not None and merge not in upstream else []))


def match_attention(softmax: gs.Node, view: GraphView) -> MatchResult:
    scores = _scores_path(view, softmax.inputs[0])
    if scores is None:
        return MatchResult.fail(
            "the Softmax input is not a MatMul of two activations (QKᵀ), directly or through scale "
            "Mul/Div, mask Add/Where or Cast",
            softmax,
            (softmax,),
        )
    qk = scores[-1]
    nodes = [softmax, *scores]
    q = _strip_scale(view, qk.inputs[0], nodes, transpose=False)
    k = _strip_scale(view, qk.inputs[1], nodes, transpose=True)
    guard, pv, why = _probs_path(view, softmax)
    nodes += guard
    if pv is None:
        return MatchResult.fail(why, softmax, nodes)
    v = pv.inputs[1]
    if view.is_constant(v):
        return MatchResult.fail(f"V of {label(pv)} is constant: not an attention block", pv, nodes)
    nodes.append(pv)
    projections = _projections(view, (q, k, v), pv.outputs[0])
    return _found(softmax, LayerMatch(nodes=tuple(nodes), projections=projections))


_FUSED_ATTENTION = {  # op → domains where it means attention
    "Attention": frozenset({_MS, *_DEFAULT_DOMAINS}),
    "MultiHeadAttention": frozenset({_MS}),
    "GroupQueryAttention": frozenset({_MS}),
}


def match_fused_attention(node: gs.Node, view: GraphView) -> MatchResult:
    domain = _domain(node)
    if domain not in _FUSED_ATTENTION[node.op]:
        return MatchResult.fail(
            f"{label(node)} is in domain {domain!r}, not onnxruntime's or ONNX's", node, (node,)
        )
    if node.op == "Attention" and domain == _MS:
        # onnxruntime's Attention(x, W_qkv, b_qkv, ...) projects q, k and v itself.
        if len(node.inputs) < 2 or not node.inputs[1].name:
            return MatchResult.fail(f"{label(node)} has no weight input", node, (node,))
        weight = resolve_constant(view, node.inputs[1])
        if not weight:
            return weight.within((node,), f"the qkv weight of {label(node)}: ")
        chain = weight.bindings["chain"]
        bias = _param(view, node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
        projections = _projections(view, (), node.outputs[0])
        match = LayerMatch(
            nodes=(node,),
            shared=_chain_nodes(chain, bias),
            param=node.inputs[1],
            weight=chain,
            bias=bias,
            projections=projections,
        )
        return _found(node, match)
    sources = [t for t in node.inputs[:3] if t.name]
    return _found(node, LayerMatch(nodes=(node,), projections=_projections(view, sources, node.outputs[0])))


# -- normalization -------------------------------------------------------------------------------

_FUSED_NORMS = {  # op → (scale input, bias input or None)
    "LayerNormalization": (1, 2),
    "RMSNormalization": (1, None),
    "SimplifiedLayerNormalization": (1, None),
    "SkipLayerNormalization": (2, 3),
    "SkipSimplifiedLayerNormalization": (2, None),
    "BatchNormalization": (1, 2),
    "InstanceNormalization": (1, 2),
    "GroupNormalization": (1, 2),
}


def match_fused_norm(node: gs.Node, view: GraphView) -> MatchResult:
    if _domain(node) not in (*_DEFAULT_DOMAINS, _MS):
        return MatchResult.fail(f"{label(node)} is in domain {_domain(node)!r}", node, (node,))
    scale_at, bias_at = _FUSED_NORMS[node.op]
    if len(node.inputs) <= scale_at:
        return MatchResult.fail(f"{label(node)} has no scale input {scale_at}", node, (node,))
    scale = node.inputs[scale_at]
    weight = _param(view, scale)
    has_bias = bias_at is not None and len(node.inputs) > bias_at and node.inputs[bias_at].name
    bias = _param(view, node.inputs[bias_at]) if has_bias else None
    match = LayerMatch(
        nodes=(node,), shared=_chain_nodes(weight, bias), param=scale, weight=weight, bias=bias
    )
    return _found(node, match)


def _variance_of(view: GraphView, sqrt: gs.Node, nodes: list[gs.Node]) -> tuple[gs.Tensor | None, str]:
    """sqrt(mean(d²) + ε) → d (appending Add, ReduceMean, Pow to `nodes`), or None and why not."""
    add = view.producer(sqrt.inputs[0])
    variance = None
    if add is not None and add.op == "Add":
        split = split_constant(view, add)
        variance = split[0] if split is not None and view.scalar(split[1]) is not None else None
    if variance is None:
        return None, "the Sqrt input is not Add(variance, ε) with a scalar constant ε"
    nodes.append(add)
    mean = view.producer(variance)
    if mean is None or mean.op != "ReduceMean":
        return None, f"ε is added to {mean.op if mean else 'a graph input'}, not to a ReduceMean"
    nodes.append(mean)
    square = view.producer(mean.inputs[0])
    if square is not None and square.op == "Pow" and _near(view.scalar(square.inputs[1]), 2.0):
        nodes.append(square)
        return square.inputs[0], ""
    if square is not None and square.op == "Mul" and square.inputs[0] is square.inputs[1]:
        nodes.append(square)
        return square.inputs[0], ""
    return None, "the ReduceMean input is not a square (Pow(d, 2) or Mul(d, d))"


def _centred(view: GraphView, d: gs.Tensor) -> tuple[gs.Node, gs.Node] | None:
    """d = x − mean(x): (the Sub, the ReduceMean)."""
    sub = view.producer(d)
    if sub is None or sub.op != "Sub":
        return None
    mean = view.producer(sub.inputs[1])
    if mean is None or mean.op != "ReduceMean" or mean.inputs[0] is not sub.inputs[0]:
        return None
    return sub, mean


def _normalized(view: GraphView, sqrt: gs.Node, d: gs.Tensor, nodes: list[gs.Node]) -> gs.Node | None:
    """The node computing d / sqrt(...): Div(d, s), or Mul(d, Reciprocal(s)) / Mul(d, Div(1, s))."""
    for user in view.consumers(sqrt.outputs[0]):
        if user.op == "Div" and user.inputs[0] is d and user.inputs[1] is sqrt.outputs[0]:
            return user
        inverse = user.op == "Reciprocal" or (
            user.op == "Div" and user.inputs[1] is sqrt.outputs[0] and _near(view.scalar(user.inputs[0]), 1.0)
        )
        if not inverse:
            continue
        for mul in view.consumers(user.outputs[0]):
            if mul.op == "Mul" and d in mul.inputs:
                nodes.append(user)
                return mul
    return None


def _affine_tail(
    view: GraphView, last: gs.Node, nodes: list[gs.Node], *, with_beta: bool
) -> tuple[gs.Tensor | None, gs.Tensor | None]:
    """After the normalized value: [Cast] → [Mul(γ)] → [Add(β)], each the sole reader of the one
    before. Appends what it finds; returns (γ, β) as the nodes read them."""
    gamma = beta = None
    cast = _sole_consumer(view, last, "Cast")
    if cast is not None:
        nodes.append(cast)
        last = cast
    mul = _sole_consumer(view, last, "Mul")
    split = split_constant(view, mul) if mul is not None else None
    if mul is not None and split is not None:
        nodes.append(mul)
        gamma, last = split[1], mul
    add = _sole_consumer(view, last, "Add") if with_beta else None
    split = split_constant(view, add) if add is not None else None
    if add is not None and split is not None:
        nodes.append(add)
        beta = split[1]
    return gamma, beta


def _norm_match(
    view: GraphView, nodes: list[gs.Node], gamma: gs.Tensor | None, beta: gs.Tensor | None
) -> MatchResult:
    weight = _param(view, gamma) if gamma is not None else None
    bias = _param(view, beta) if beta is not None else None
    match = LayerMatch(
        nodes=tuple(nodes), shared=_chain_nodes(weight, bias), param=gamma, weight=weight, bias=bias
    )
    return _found(nodes[0], match)


def match_layer_norm(sqrt: gs.Node, view: GraphView) -> MatchResult:
    nodes = [sqrt]
    d, why = _variance_of(view, sqrt, nodes)
    if d is None:
        return MatchResult.fail(why, sqrt, nodes)
    centred = _centred(view, d)
    if centred is None:
        return MatchResult.fail(
            "the squared value is not x − mean(x) (Sub of a ReduceMean): no centring", sqrt, nodes
        )
    nodes += centred
    normed = _normalized(view, sqrt, d, nodes)
    if normed is None:
        return MatchResult.fail(
            "x − mean(x) is not divided by the Sqrt (Div, or Mul by its inverse)", sqrt, nodes
        )
    nodes.append(normed)
    gamma, beta = _affine_tail(view, normed, nodes, with_beta=True)
    return _norm_match(view, nodes, gamma, beta)


def match_rms_norm(sqrt: gs.Node, view: GraphView) -> MatchResult:
    nodes = [sqrt]
    x, why = _variance_of(view, sqrt, nodes)
    if x is None:
        return MatchResult.fail(why, sqrt, nodes)
    if _centred(view, x) is not None:
        return MatchResult.fail("x − mean(x) is squared: a LayerNorm, not an RMSNorm", sqrt, nodes)
    normed = _normalized(view, sqrt, x, nodes)
    if normed is None:
        return MatchResult.fail(
            "the Sqrt is not inverted (Reciprocal, Div(1, ·)) and multiplied by x, nor does it divide x",
            sqrt,
            nodes,
        )
    nodes.append(normed)
    upcast = view.producer(x)
    if upcast is not None and upcast.op == "Cast":
        nodes.append(upcast)  # HF computes the norm in float32: Cast(x) feeds Pow and the product
    gamma, _ = _affine_tail(view, normed, nodes, with_beta=False)
    return _norm_match(view, nodes, gamma, None)


# -- activations ---------------------------------------------------------------------------------


def match_squared_relu(relu: gs.Node, view: GraphView) -> MatchResult:
    """Relu(x)² (BitNet b1.58's MLP, Primer): Pow(r, 2) or Mul(r, r) the sole reader of r."""
    users = list({id(u): u for u in view.consumers(relu.outputs[0])}.values())  # Mul(r, r) reads it twice
    if len(users) == 1:
        square = users[0]
        if (square.op == "Pow" and _near(view.scalar(square.inputs[1]), 2.0)) or (
            square.op == "Mul" and square.inputs[0] is square.inputs[1]
        ):
            return _found(relu, LayerMatch(nodes=(relu, square)))
    return MatchResult.fail(
        "the Relu output is not squared (Pow 2 or Mul by itself) by its only reader", relu, (relu,)
    )


def match_silu(sigmoid: gs.Node, view: GraphView) -> MatchResult:
    x = sigmoid.inputs[0]
    for mul in view.consumers(sigmoid.outputs[0]):
        if mul.op == "Mul" and x in mul.inputs:
            return _found(sigmoid, LayerMatch(nodes=(sigmoid, mul)))
    return MatchResult.fail(
        "no Mul reads both the Sigmoid output and its input x (a Sigmoid alone is a gate, not SiLU)",
        sigmoid,
        (sigmoid,),
    )


def _times_x(view: GraphView, node: gs.Node, x: gs.Tensor, nodes: list[gs.Node]) -> bool:
    """`node` reads the bracket (1 + erf/tanh): finishes x·0.5·bracket as Mul(x, ·) → Mul(·, 0.5),
    Mul(Mul(x, 0.5), ·) or Mul(x, Mul(·, 0.5)) (torch's dynamo exporter). Appends the nodes; False
    when none of these forms is there."""
    mul = _sole_consumer(view, node, "Mul")
    if mul is None:
        return False
    if _scaled_by(view, mul, "Mul", 0.5) is node.outputs[0]:
        times = _sole_consumer(view, mul, "Mul")
        if times is not None and x in times.inputs:
            nodes += [mul, times]
            return True
        return False
    other = mul.inputs[1] if mul.inputs[0] is node.outputs[0] else mul.inputs[0]
    if other is x:
        nodes.append(mul)
        half = _sole_consumer(view, mul, "Mul")
        if half is not None and _scaled_by(view, half, "Mul", 0.5) is mul.outputs[0]:
            nodes.append(half)
            return True
        return False
    producer = view.producer(other)
    if _scaled_by(view, producer, "Mul", 0.5) is x:
        nodes += [producer, mul]
        return True
    return False


def _gelu_end(view: GraphView, start: gs.Node, x: gs.Tensor, nodes: list[gs.Node], what: str) -> MatchResult:
    """What both GELU forms end with: `what` (the Erf or Tanh at `start`) + 1, times x and 0.5."""
    one = _sole_consumer(view, start, "Add")
    if one is None or not _adds_one(view, one):
        return MatchResult.fail(f"{what} is not followed by Add 1", start, nodes)
    nodes.append(one)
    if not _times_x(view, one, x, nodes):
        return MatchResult.fail(f"1 + {what} is not multiplied by x and 0.5", start, nodes)
    return _found(start, LayerMatch(nodes=tuple(nodes)))


def match_gelu_erf(erf: gs.Node, view: GraphView) -> MatchResult:
    nodes = [erf]
    scale = view.producer(erf.inputs[0])
    x = _scaled_by(view, scale, "Div", math.sqrt(2.0))
    if x is None:
        x = _scaled_by(view, scale, "Mul", math.sqrt(0.5))
    if x is None:
        return MatchResult.fail("the Erf input is not x/√2 (Div by √2 or Mul by 1/√2)", erf, nodes)
    nodes.append(scale)
    return _gelu_end(view, erf, x, nodes, "erf(x/√2)")


def match_gelu_tanh(tanh: gs.Node, view: GraphView) -> MatchResult:
    nodes = [tanh]
    scale = view.producer(tanh.inputs[0])
    inner = _scaled_by(view, scale, "Mul", math.sqrt(2.0 / math.pi))
    if inner is None:
        return MatchResult.fail("the Tanh input is not √(2/π)·(…)", tanh, nodes)
    nodes.append(scale)
    add = view.producer(inner)
    if add is None or add.op != "Add" or len(add.inputs) != 2:
        return MatchResult.fail("√(2/π) does not scale a sum x + 0.044715·x³", tanh, nodes)
    for x, cubic in (add.inputs, reversed(add.inputs)):
        coeff = view.producer(cubic)
        power = _scaled_by(view, coeff, "Mul", 0.044715)
        pow_node = view.producer(power) if power is not None else None
        if (
            pow_node is not None
            and pow_node.op == "Pow"
            and pow_node.inputs[0] is x
            and _near(view.scalar(pow_node.inputs[1]), 3.0)
        ):
            nodes += [add, coeff, pow_node]
            break
    else:
        return MatchResult.fail("the scaled sum is not x + 0.044715·Pow(x, 3)", tanh, nodes)
    return _gelu_end(view, tanh, x, nodes, "tanh(…)")


_ACTIVATION_OPS = frozenset(
    {
        "Relu",
        "LeakyRelu",
        "PRelu",
        "Elu",
        "Selu",
        "Celu",
        "ThresholdedRelu",
        "Gelu",
        "FastGelu",
        "BiasGelu",
        "QuickGelu",
        "Tanh",
        "Sigmoid",
        "HardSigmoid",
        "HardSwish",
        "Softplus",
        "Softsign",
        "Mish",
    }
)


def match_activation(node: gs.Node, view: GraphView) -> MatchResult:
    if not node.inputs or view.is_constant(node.inputs[0]):
        return MatchResult.fail(f"{label(node)} acts on a constant: nothing flows through it", node, (node,))
    return _found(node, LayerMatch(nodes=(node,)))


# -- weight-bearing layers -------------------------------------------------------------------------


def _bias_add(view: GraphView, node: gs.Node, n: int) -> tuple[gs.Node, ConstantChain] | None:
    """MatMul → Add(b) with b a constant of N elements (in either operand order)."""
    add = _sole_consumer(view, node, "Add")
    split = split_constant(view, add) if add is not None else None
    if add is None or split is None:
        return None
    chain = _param(view, split[1])
    if chain is None or math.prod(chain.shape) != n or (chain.shape and chain.shape[-1] != n):
        return None
    return add, chain


def match_linear(node: gs.Node, view: GraphView) -> MatchResult:
    found = linear_weight(view, node)
    if not found:
        return found.within((), "")
    weight = found.bindings["weight"]
    nodes, bias = [node], None
    if node.op == "Gemm":
        gemm_bias = bias_of_gemm(view, node)
        if not gemm_bias:
            return gemm_bias.within((node,))
        bias = gemm_bias.bindings["bias"]
    elif node.op == "MatMulNBits":
        bias = _param(view, node.inputs[5]) if len(node.inputs) > 5 and node.inputs[5].name else None
    elif (add := _bias_add(view, node, weight.n)) is not None:
        nodes.append(add[0])
        bias = add[1]
    match = LayerMatch(
        nodes=tuple(nodes),
        shared=_chain_nodes(weight.chain, bias),
        param=node.inputs[1],
        weight=weight.chain,
        weight_nk=weight.nk,
        bias=bias,
    )
    return _found(node, match)


_TO_OUTPUT_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Cast", "Identity"})


def match_output_projection(node: gs.Node, view: GraphView) -> MatchResult:
    linear = match_linear(node, view)
    if not linear:
        return linear
    match: LayerMatch = linear.bindings["layer"]
    frontier = [match.nodes[-1].outputs[0]]
    for _ in range(4):
        if any(view.is_graph_output(t) for t in frontier):
            return linear
        frontier = [u.outputs[0] for t in frontier for u in view.consumers(t) if u.op in _TO_OUTPUT_OPS]
    return MatchResult.fail(
        f"the result of {label(node)} does not reach a graph output through "
        f"{'/'.join(sorted(_TO_OUTPUT_OPS))}",
        node,
        linear.matched,
    )


def match_embedding(gather: gs.Node, view: GraphView) -> MatchResult:
    if gather.attrs.get("axis", 0) != 0:
        return MatchResult.fail(
            f"{label(gather)} gathers along axis {gather.attrs['axis']}, not table rows", gather, (gather,)
        )
    found = resolve_constant(view, gather.inputs[0], _PARAM_CHAIN)
    if not found:
        return found.within((gather,), "the table (input 0): ")
    table: ConstantChain = found.bindings["chain"]
    if len(table.shape) != 2:
        return MatchResult.fail(
            f"the table {table.constant.name!r} is {len(table.shape)}-D, not [rows, width]", gather, (gather,)
        )
    if not _reads_float(table):
        return MatchResult.fail(
            f"the table {table.constant.name!r} holds integers: an index buffer, not an embedding",
            gather,
            (gather,),
        )
    if view.is_constant(gather.inputs[1]):
        return MatchResult.fail(
            "the indices are constant: a fixed lookup, not an embedding", gather, (gather,)
        )
    return _found(
        gather, LayerMatch(nodes=(gather,), shared=table.nodes, param=gather.inputs[0], weight=table)
    )


def _reads_float(chain: ConstantChain) -> bool:
    for node in chain.nodes:  # from the reader towards the initializer: the nearest conversion decides
        if node.op == "DequantizeLinear":
            return True
        if node.op == "Cast":
            return node.attrs["to"] in _FLOAT_TYPES
    dtype = chain.constant.dtype  # a numpy dtype, or an ONNX type number where numpy has none
    if isinstance(dtype, int):
        return dtype in _FLOAT_TYPES
    return np.dtype(dtype).kind == "f" or "float" in str(dtype)  # ml_dtypes' bfloat16/float8 are kind "V"


_FLOAT_TYPES = frozenset(
    {
        TensorProto.FLOAT,
        TensorProto.FLOAT16,
        TensorProto.BFLOAT16,
        TensorProto.DOUBLE,
        TensorProto.FLOAT8E4M3FN,
        TensorProto.FLOAT8E4M3FNUZ,
        TensorProto.FLOAT8E5M2,
        TensorProto.FLOAT8E5M2FNUZ,
    }
)


def match_convolution(conv: gs.Node, view: GraphView) -> MatchResult:
    found = (
        resolve_constant(view, conv.inputs[1], CHAIN_OPS - {"Reshape", "Transpose"})
        if len(conv.inputs) > 1
        else None
    )
    if not found:
        reason = found.reason if found is not None else "it has no weight input"
        return MatchResult.fail(f"the weight of {label(conv)}: {reason}", conv, (conv,))
    weight: ConstantChain = found.bindings["chain"]
    bias = _param(view, conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2].name else None
    match = LayerMatch(
        nodes=(conv,), shared=_chain_nodes(weight, bias), param=conv.inputs[1], weight=weight, bias=bias
    )
    return _found(conv, match)


def _rule(
    name: str,
    layer_type: LayerType,
    anchors: Iterable[str],
    match: Callable[[gs.Node, GraphView], MatchResult],
    priority: int,
) -> LayerRule:
    return LayerRule(name, layer_type, frozenset(anchors), match, priority)


A, N, ACT = LayerType.ATTENTION, LayerType.NORMALIZATION, LayerType.ACTIVATION
# fmt: off
RULES: tuple[LayerRule, ...] = (
    _rule("fused_attention", A, _FUSED_ATTENTION, match_fused_attention, 100),  # Attention(x, W_qkv, b) (ORT) | Attention(q, k, v) (ONNX 23) | MultiHeadAttention / GroupQueryAttention(q, k, v, ...)
    _rule("attention", A, {"Softmax"}, match_attention, 100),  # MatMul(q[·s], kᵀ[·s]) [·s | /s] [+ mask | Where] → Softmax [→ IsNaN → Where] → MatMul(·, v)
    _rule("fused_norm", N, _FUSED_NORMS, match_fused_norm, 90),  # LayerNormalization(x, γ, β) | RMSNormalization / SimplifiedLayerNormalization(x, γ) | Skip*Norm | Batch/Instance/GroupNormalization
    _rule("layer_norm", N, {"Sqrt"}, match_layer_norm, 90),  # d = x − ReduceMean(x); d / Sqrt(ReduceMean(Pow(d, 2)) + ε) [· γ] [+ β]
    _rule("rms_norm", N, {"Sqrt"}, match_rms_norm, 90),  # [Cast] x · Reciprocal|Div(1, ·)(Sqrt(ReduceMean(Pow(x, 2)) + ε)) [→ Cast] [· γ]   or x / Sqrt(…)
    _rule("gelu_erf", ACT, {"Erf"}, match_gelu_erf, 80),  # x · 0.5 · (1 + Erf(x / √2)), the three products in any order
    _rule("gelu_tanh", ACT, {"Tanh"}, match_gelu_tanh, 80),  # 0.5·x · (1 + Tanh(√(2/π) · (x + 0.044715 · Pow(x, 3))))
    _rule("silu", ACT, {"Sigmoid"}, match_silu, 80),  # x · Sigmoid(x)
    _rule("squared_relu", ACT, {"Relu"}, match_squared_relu, 80),  # Relu(x) → Pow(·, 2) | Mul(·, ·) (BitNet b1.58)
    _rule("embedding", LayerType.EMBEDDING, {"Gather"}, match_embedding, 70),  # Gather(table[V, H], ids), axis 0, table through Identity/Cast/DequantizeLinear
    _rule("output_projection", LayerType.OUTPUT, _LINEAR_OPS, match_output_projection, 60),  # linear [+ b] → [Reshape/Flatten/Squeeze/Cast] → graph output
    _rule("linear", LayerType.LINEAR, _LINEAR_OPS, match_linear, 50),  # MatMul(x, W[K, N]) [+ b] | Gemm(x, W, b) | MatMulNBits; W through Identity/Cast/Transpose/DequantizeLinear/Reshape
    _rule("convolution", LayerType.CONVOLUTION, {"Conv", "ConvTranspose"}, match_convolution, 50),  # Conv(x, W[O, I, kH, kW], b)
    _rule("activation", ACT, _ACTIVATION_OPS, match_activation, 10),  # Relu(x) | Gelu(x) | Tanh(x) | Sigmoid(x) | ...
)
# fmt: on
