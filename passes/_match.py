"""Matching graph neighbourhoods, with a reason for every miss.

Every predicate here returns a `MatchResult` (after onnxscript's rewriter): truthy on success, with
named `bindings`; on a miss, `reason` says why in words a user can act on, `node` is where it
failed, and `matched` holds the nodes matched before the miss. `len(matched)` is the score
`explain` uses to show each rule's closest attempt (onnxscript's MatchingTracer idea).

`GraphView` is built once per pass over a gs.Graph: node order, graph inputs/outputs, and memoized
constant checks. A tensor is *constant* when it is an initializer or computed only from constants
(Constant nodes, Sqrt/Cast of a Constant, ...); rules read the value only of tiny constants
(`scalar`, `small_array`), never of weights, so classification reads no weight bytes.

Weights are found through `resolve_constant`: from a consumer's input back to an initializer through
Identity, Cast, Transpose, DequantizeLinear (constant scale and zero point) and Reshape (constant
shape). `linear_weight` adds what a MatMul/Gemm/MatMulNBits anchor implies: y = x·Wᵀ with W [N, K]
(N outputs, K inputs); `LinearWeight.nk` says whether the initializer itself holds W as [N, K]
(torch's Linear layout, Gemm transB=1, MatMul through Transpose) or as [K, N] (MatMul's B read
directly), and `matrix_nk` computes W [N, K] whatever the chain (it reads the weight's bytes).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from bitnet_onnx.core.errors import UnsupportedModelError
from bitnet_onnx.passes._graph import constant_values

__all__ = [
    "CHAIN_OPS",
    "ConstantChain",
    "GraphView",
    "LinearWeight",
    "MatchResult",
    "OpTypes",
    "bias_of_gemm",
    "label",
    "linear_weight",
    "match_child_path",
    "match_parent_path",
    "resolve_constant",
    "split_constant",
    "view_constant",
]

OpTypes = str | frozenset[str]

# Ops a constant weight may pass through on its way to the op that uses it.
CHAIN_OPS = frozenset({"Identity", "Cast", "Transpose", "DequantizeLinear", "Reshape"})

_MAX_CONSTANT_DEPTH = 16
_RANDOM_OPS = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli", "Multinomial"}
)
_MAX_CHAIN = 8


@dataclass(frozen=True)
class MatchResult:
    ok: bool
    bindings: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    reason: str = ""
    node: gs.Node | None = None  # where the match failed (on success: the anchor)
    matched: tuple[gs.Node, ...] = ()  # nodes matched (before the miss, on failure)

    def __bool__(self) -> bool:
        return self.ok

    @property
    def score(self) -> int:
        return len(self.matched)

    @classmethod
    def success(cls, node: gs.Node | None, matched: Iterable[gs.Node] = (), **bindings: Any) -> MatchResult:
        return cls(True, MappingProxyType(bindings), "", node, tuple(matched))

    @classmethod
    def fail(cls, reason: str, node: gs.Node | None = None, matched: Iterable[gs.Node] = ()) -> MatchResult:
        return cls(False, MappingProxyType({}), reason, node, tuple(matched))

    def within(self, matched: Iterable[gs.Node], prefix: str = "") -> MatchResult:
        """This failure seen from a caller that had already matched `matched` (scores add up)."""
        return MatchResult(False, self.bindings, prefix + self.reason, self.node, (*matched, *self.matched))


def _ops(op_types: OpTypes) -> frozenset[str]:
    return frozenset({op_types}) if isinstance(op_types, str) else op_types


def _describe(op_types: OpTypes) -> str:
    ops = sorted(_ops(op_types))
    return ops[0] if len(ops) == 1 else "/".join(ops)


def label(node: gs.Node) -> str:
    return f"{node.op} {node.name!r}"


class GraphView:
    """Index over a gs.Graph's main graph, built once per pass. Producers and consumers are read
    live from the tensors; node order, names and the constant memo are taken when it is built, so a
    pass that edits the graph builds a new view before it matches again."""

    def __init__(self, graph: gs.Graph) -> None:
        self.graph = graph
        self.nodes: list[gs.Node] = list(graph.nodes)
        self._position = {id(node): i for i, node in enumerate(self.nodes)}
        self._by_name = {node.name: node for node in self.nodes if node.name}
        self._inputs = {id(t) for t in graph.inputs}
        self._outputs = {id(t) for t in graph.outputs}
        self._constant: dict[int, bool] = {}
        # The memo is keyed by id(): it holds the tensors it answered for, so that none of them is
        # freed and its id taken by a tensor a later edit creates (which would inherit the answer).
        self._answered: list[gs.Tensor] = []

    def position(self, node: gs.Node) -> int:
        return self._position[id(node)]

    def node(self, name: str) -> gs.Node | None:
        return self._by_name.get(name)

    def is_graph_input(self, tensor: gs.Tensor) -> bool:
        return id(tensor) in self._inputs

    def is_graph_output(self, tensor: gs.Tensor) -> bool:
        return id(tensor) in self._outputs

    @staticmethod
    def producer(tensor: gs.Tensor) -> gs.Node | None:
        return tensor.inputs[0] if tensor.inputs else None

    @staticmethod
    def consumers(tensor: gs.Tensor) -> list[gs.Node]:
        return list(tensor.outputs)

    # -- constants -------------------------------------------------------------------------------
    def _remember(self, tensor: gs.Tensor, constant: bool) -> None:
        self._constant[id(tensor)] = constant
        self._answered.append(tensor)

    def is_constant(self, tensor: gs.Tensor) -> bool:
        """An initializer, or a value computed only from constants (no graph input, no randomness)."""
        memo = self._constant
        stack = [tensor]
        visiting: set[int] = set()
        while stack:
            current = stack[-1]
            if id(current) in memo:
                stack.pop()
                continue
            leaf = self._constant_leaf(current)
            if leaf is not None:
                self._remember(current, leaf)
                stack.pop()
                continue
            inputs = [t for t in current.inputs[0].inputs if t.name]
            if any(memo.get(id(t)) is False for t in inputs):
                self._remember(current, False)
                stack.pop()
                continue
            pending = [t for t in inputs if id(t) not in memo]
            if not pending:
                self._remember(current, bool(inputs))
                stack.pop()
            elif id(current) in visiting:  # a cycle: nothing on it is constant
                self._remember(current, False)
                stack.pop()
            else:
                visiting.add(id(current))
                stack.extend(pending)
        return memo[id(tensor)]

    def _constant_leaf(self, tensor: gs.Tensor) -> bool | None:
        """True/False when `tensor` decides by itself, None when its producer's inputs decide."""
        if isinstance(tensor, gs.Constant):
            return True
        producer = self.producer(tensor)
        if producer is None or self.is_graph_input(tensor):
            return False
        if producer.op == "Constant":
            return True
        if producer.op in _RANDOM_OPS or any(True for _ in producer.subgraphs()):
            return False
        return None

    def small_array(self, tensor: gs.Tensor, limit: int = 64) -> np.ndarray | None:
        """The value of an initializer or Constant-node output of at most `limit` elements."""
        if isinstance(tensor, gs.Constant):
            return tensor.values if math.prod(tensor.shape) <= limit else None
        producer = self.producer(tensor)
        if producer is None or producer.op != "Constant":
            return None
        attrs = producer.attrs
        if "value" in attrs:
            value = attrs["value"]
            return value.values if math.prod(value.shape) <= limit else None
        for key, dtype in (("value_float", np.float32), ("value_floats", np.float32)):
            if key in attrs:
                return np.asarray(attrs[key], dtype=dtype)
        for key in ("value_int", "value_ints"):
            if key in attrs:
                return np.asarray(attrs[key], dtype=np.int64)
        return None

    def scalar(self, tensor: gs.Tensor, depth: int = 0) -> float | None:
        """The value of a one-element constant, following Identity/Cast/Sqrt/... and arithmetic
        on other one-element constants (exporters write √scale as Sqrt(Constant) → Cast)."""
        array = self.small_array(tensor, limit=1)
        if array is not None:
            return float(np.asarray(array, dtype=np.float64).reshape(-1)[0]) if array.size == 1 else None
        producer = self.producer(tensor)
        if producer is None or depth > _MAX_CONSTANT_DEPTH:
            return None
        if producer.op in _SCALAR_UNARY:
            value = self.scalar(producer.inputs[0], depth + 1)
            return None if value is None else _SCALAR_UNARY[producer.op](value)
        if producer.op in _SCALAR_BINARY and len(producer.inputs) == 2:
            a, b = (self.scalar(t, depth + 1) for t in producer.inputs)
            if a is None or b is None:
                return None
            with np.errstate(all="ignore"):
                return float(_SCALAR_BINARY[producer.op](np.float64(a), np.float64(b)))
        return None


_SCALAR_UNARY = {
    "Identity": lambda v: v,
    "Cast": lambda v: v,
    "Reshape": lambda v: v,
    "Unsqueeze": lambda v: v,
    "Squeeze": lambda v: v,
    "Expand": lambda v: v,
    "Sqrt": lambda v: math.sqrt(v) if v >= 0 else math.nan,
    "Reciprocal": lambda v: 1.0 / v if v else math.inf,
    "Neg": lambda v: -v,
}
_SCALAR_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide, "Pow": np.power}


def split_constant(view: GraphView, node: gs.Node) -> tuple[gs.Tensor, gs.Tensor] | None:
    """For a binary node with exactly one constant input: (the other input, the constant one)."""
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    a_const, b_const = view.is_constant(a), view.is_constant(b)
    if a_const == b_const:
        return None
    return (b, a) if a_const else (a, b)


# -- paths ---------------------------------------------------------------------------------------


def match_parent_path(
    view: GraphView, node: gs.Node, path: Sequence[tuple[OpTypes, int | None]]
) -> MatchResult:
    """Walks producers: step i follows input `index` of the current node (None: the first input whose
    producer has the op type) to a node of `op_types`. Binds `path` (the nodes, nearest first)."""
    matched: list[gs.Node] = []
    current = node
    for op_types, index in path:
        candidates = range(len(current.inputs)) if index is None else [index]
        found = None
        seen = []
        for i in candidates:
            if i >= len(current.inputs):
                continue
            parent = view.producer(current.inputs[i])
            if parent is not None and parent.op in _ops(op_types):
                found = parent
                break
            seen.append(
                f"input {i} {'is a graph input or constant' if parent is None else 'comes from ' + parent.op}"
            )
        if found is None:
            where = f"input {index}" if index is not None else "no input"
            detail = "; ".join(seen) if seen else f"{label(current)} has no input {index}"
            return MatchResult.fail(
                f"{where} of {label(current)} is not produced by {_describe(op_types)} ({detail})",
                current,
                matched,
            )
        matched.append(found)
        current = found
    return MatchResult.success(node, matched, path=tuple(matched))


def match_child_path(
    view: GraphView, node: gs.Node, path: Sequence[tuple[OpTypes, int | None]]
) -> MatchResult:
    """Walks consumers of output 0: step i goes to a consumer of `op_types` that reads the current
    output at input `index` (None: at any input). Binds `path` (the nodes, nearest first)."""
    matched: list[gs.Node] = []
    current = node
    for op_types, index in path:
        output = current.outputs[0]
        found = None
        for child in view.consumers(output):
            if child.op in _ops(op_types) and (
                index is None or (index < len(child.inputs) and child.inputs[index] is output)
            ):
                found = child
                break
        if found is None:
            users = ", ".join(sorted({c.op for c in view.consumers(output)})) or "nothing"
            slot = "" if index is None else f" at input {index}"
            return MatchResult.fail(
                f"the output of {label(current)} is not read by {_describe(op_types)}{slot} "
                f"(read by {users})",
                current,
                matched,
            )
        matched.append(found)
        current = found
    return MatchResult.success(node, matched, path=tuple(matched))


# -- constants through chains ------------------------------------------------------------------


@dataclass(frozen=True)
class ConstantChain:
    """An initializer as a consumer sees it: `nodes` lead from the consumer's input (first) back to
    `constant`; `shape` is the shape the consumer sees."""

    constant: gs.Constant
    nodes: tuple[gs.Node, ...]
    shape: tuple[int, ...]

    @property
    def ops(self) -> tuple[str, ...]:
        return tuple(n.op for n in self.nodes)

    def evaluate(self, view: GraphView) -> np.ndarray:
        """The tensor as the consumer sees it (reads the initializer's bytes)."""
        value = np.asarray(constant_values(self.constant))
        for node in reversed(self.nodes):
            value = _apply(view, node, value)
        return value


def _apply(view: GraphView, node: gs.Node, value: np.ndarray) -> np.ndarray:
    if node.op == "Identity":
        return value
    if node.op == "Cast":
        return value.astype(onnx.helper.tensor_dtype_to_np_dtype(node.attrs["to"]))
    if node.op == "Transpose":
        return np.transpose(value, node.attrs.get("perm"))
    if node.op == "Reshape":
        return value.reshape(_reshape_target(value.shape, view.small_array(node.inputs[1], limit=16), node))
    if node.op == "DequantizeLinear":
        return _dequantize(view, node, value)
    raise AssertionError(f"{node.op} is not a chain op")  # resolve_constant admits only CHAIN_OPS


def _dequantize(view: GraphView, node: gs.Node, value: np.ndarray) -> np.ndarray:
    scale = np.asarray(view_constant(view, node.inputs[1]), dtype=np.float32)
    has_zero = len(node.inputs) > 2 and node.inputs[2].name
    zero = np.asarray(view_constant(view, node.inputs[2]), dtype=np.float32) if has_zero else np.float32(0)
    block = int(node.attrs.get("block_size", 0))
    if block:  # opset 21 blocked: one scale (and zero point) per `block` values along `axis`
        axis = int(node.attrs.get("axis", 1)) % value.ndim
        size = value.shape[axis]
        scale = np.repeat(scale, block, axis=axis).take(range(size), axis=axis)
        zero = np.repeat(zero, block, axis=axis).take(range(size), axis=axis) if np.ndim(zero) else zero
    elif scale.ndim == 1 and value.ndim > 1:
        axis = node.attrs.get("axis", 1) % value.ndim
        shape = [1] * value.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), np.reshape(zero, shape) if np.ndim(zero) else zero
    return ((value.astype(np.float32) - zero) * scale).astype(np.float32)


def view_constant(view: GraphView, tensor: gs.Tensor) -> np.ndarray:
    """Any constant's value, small or not (DequantizeLinear scales are one per output row)."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(constant_values(tensor))
    found = resolve_constant(view, tensor)
    if not found:
        raise UnsupportedModelError(f"{tensor.name!r} is not a constant: {found.reason}")
    return found.bindings["chain"].evaluate(view)


def _reshape_target(shape: Sequence[int], target: np.ndarray | None, node: gs.Node) -> tuple[int, ...]:
    if target is None:
        raise UnsupportedModelError(f"{label(node)}: the target shape is not a small constant")
    dims = [int(d) for d in target.reshape(-1)]
    if not node.attrs.get("allowzero", 0):
        dims = [shape[i] if d == 0 and i < len(shape) else d for i, d in enumerate(dims)]
    if -1 in dims:
        known = math.prod(d for d in dims if d != -1)
        dims[dims.index(-1)] = math.prod(shape) // known if known else 0
    return tuple(dims)


def resolve_constant(view: GraphView, tensor: gs.Tensor, ops: frozenset[str] = CHAIN_OPS) -> MatchResult:
    """Follows `tensor` back through `ops` to an initializer. Binds `chain` (a ConstantChain)."""
    nodes: list[gs.Node] = []
    current = tensor
    for _ in range(_MAX_CHAIN):
        if isinstance(current, gs.Constant):
            try:
                shape = _chain_shape(view, tuple(current.shape), nodes)
            except UnsupportedModelError as exc:
                return MatchResult.fail(str(exc), nodes[-1] if nodes else None, nodes)
            return MatchResult.success(None, nodes, chain=ConstantChain(current, tuple(nodes), shape))
        producer = view.producer(current)
        if producer is None:
            what = (
                "a graph input"
                if view.is_graph_input(current)
                else "neither an initializer nor produced by a node"
            )
            return MatchResult.fail(f"{current.name!r} is {what}, not a constant", None, nodes)
        if producer.op == "Constant":
            return MatchResult.fail(
                f"{current.name!r} comes from Constant node {producer.name!r}, not from an initializer",
                producer,
                nodes,
            )
        if producer.op not in ops:
            allowed = "/".join(sorted(ops))
            return MatchResult.fail(
                f"{current.name!r} is computed by {label(producer)}, not by {allowed} of an initializer",
                producer,
                nodes,
            )
        for extra in producer.inputs[1:]:
            if extra.name and not view.is_constant(extra):
                return MatchResult.fail(
                    f"{label(producer)} has a non-constant input {extra.name!r}", producer, nodes
                )
        nodes.append(producer)
        current = producer.inputs[0]
    return MatchResult.fail(
        f"more than {_MAX_CHAIN} ops between {tensor.name!r} and any initializer", None, nodes
    )


def _chain_shape(view: GraphView, shape: tuple[int, ...], nodes: Sequence[gs.Node]) -> tuple[int, ...]:
    for node in reversed(nodes):
        if node.op == "Transpose":
            perm = node.attrs.get("perm") or list(reversed(range(len(shape))))
            shape = tuple(shape[p] for p in perm)
        elif node.op == "Reshape":
            shape = _reshape_target(shape, view.small_array(node.inputs[1], limit=16), node)
    return shape


# -- linear weights ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinearWeight:
    """The weight W [N, K] of y = x·Wᵀ (+ b) computed by a MatMul, Gemm or MatMulNBits anchor.

    `nk` is True when the initializer holds W as [N, K], False when it holds Wᵀ [K, N], None when
    the chain reshapes it (then only `matrix_nk` knows the layout). `anchor_nk` says how the anchor
    itself reads its weight input (Gemm transB=1 and MatMulNBits: [N, K]; MatMul: [K, N])."""

    chain: ConstantChain
    n: int
    k: int
    nk: bool | None
    anchor_nk: bool

    def matrix_nk(self, view: GraphView) -> np.ndarray:
        """W as an [N, K] array (reads the weight's bytes)."""
        seen = self.chain.evaluate(view)
        matrix = seen if self.anchor_nk else seen.T
        if matrix.shape != (self.n, self.k):
            raise UnsupportedModelError(
                f"weight {self.chain.constant.name!r} of shape {list(seen.shape)} is not a plain "
                f"[{self.n}, {self.k}] matrix (packed weights are read by their own op)"
            )
        return matrix


def _orientation(anchor_nk: bool, chain: ConstantChain) -> bool | None:
    nk = anchor_nk
    for node in chain.nodes:  # from the anchor towards the initializer
        if node.op == "Reshape":
            return None
        if node.op == "Transpose":
            nk = not nk
    return nk


def linear_weight(view: GraphView, node: gs.Node) -> MatchResult:
    """The constant weight of a MatMul / Gemm / com.microsoft MatMulNBits. Binds `weight` (LinearWeight)."""
    if node.op == "MatMulNBits":
        return _nbits_weight(view, node)
    if node.op not in ("MatMul", "Gemm"):
        return MatchResult.fail(f"{label(node)} is not MatMul, Gemm or MatMulNBits", node)
    if len(node.inputs) < 2:
        return MatchResult.fail(f"{label(node)} has fewer than two inputs", node)
    if view.is_constant(node.inputs[0]):
        return MatchResult.fail(f"input A of {label(node)} is constant: no activation flows through it", node)
    if node.op == "Gemm":
        if node.attrs.get("transA", 0):
            return MatchResult.fail(f"{label(node)} has transA=1; only x·W forms are linear layers", node)
        if float(node.attrs.get("alpha", 1.0)) != 1.0:
            return MatchResult.fail(f"{label(node)} has alpha={node.attrs['alpha']}, not 1", node)
    found = resolve_constant(view, node.inputs[1])
    if not found:
        return found.within((), f"weight input B of {label(node)}: ")
    chain: ConstantChain = found.bindings["chain"]
    if len(chain.shape) != 2:
        return MatchResult.fail(
            f"weight input B of {label(node)} is {len(chain.shape)}-D {list(chain.shape)}; "
            "a linear layer needs 2-D",
            node,
        )
    anchor_nk = node.op == "Gemm" and bool(node.attrs.get("transB", 0))
    n, k = chain.shape if anchor_nk else reversed(chain.shape)
    weight = LinearWeight(chain, int(n), int(k), _orientation(anchor_nk, chain), anchor_nk)
    return MatchResult.success(node, (node, *chain.nodes), weight=weight)


def _nbits_weight(view: GraphView, node: gs.Node) -> MatchResult:
    if len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Constant):
        return MatchResult.fail(f"input B of {label(node)} is not an initializer", node)
    constant = node.inputs[1]
    n, k = int(node.attrs.get("N", 0)), int(node.attrs.get("K", 0))
    chain = ConstantChain(constant, (), (n, k))  # the logical W its packed blocks [N, blocks, blob] hold
    return MatchResult.success(node, (node,), weight=LinearWeight(chain, n, k, True, True))


def bias_of_gemm(view: GraphView, node: gs.Node) -> MatchResult:
    """A Gemm's C input as a constant chain (binds `bias`, None when C is absent)."""
    if len(node.inputs) < 3 or not node.inputs[2].name:
        return MatchResult.success(node, (), bias=None)
    if float(node.attrs.get("beta", 1.0)) != 1.0:
        return MatchResult.fail(f"{label(node)} has beta={node.attrs['beta']}, not 1", node)
    found = resolve_constant(view, node.inputs[2], frozenset({"Identity", "Cast"}))
    if not found:
        return found.within((), f"input C of {label(node)} is not a constant bias: ")
    return MatchResult.success(node, found.matched, bias=found.bindings["chain"])
