"""Graph edits for one layer's rewrite: new nodes, tensors and initializers, named after the layer.

A `LayerEditor` is how a rewriter adds to the graph:

1. Names. Nodes are `<layer>/<Op>`, their outputs `<layer>/<Op>_output`, initializers
   `<layer>.<role>`; a name already taken gets `_1`, `_2`, ... The names depend only on the graph
   and the order of the edits, never on dict or set iteration, so compiling twice gives the same
   names (and the same bytes).
2. Types. Every tensor it creates carries its dtype and, when the inputs' shapes are known, its
   shape: onnx shape inference cannot see through the bitnet ops, so what the graph says about
   their outputs is all the checker and onnxruntime get.
3. Record. It keeps the nodes and initializers it made, so the pass can annotate the nodes with the
   layer's precisions and tell a rewritten layer from an untouched one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs
from onnx import helper

from bitnet_onnx.core.layers import Layer

__all__ = ["EMPTY", "LayerEditor", "Names", "Shape", "onnx_type"]

Shape = Sequence[int | str | None] | None

EMPTY = gs.Variable.empty()
"""An omitted optional input (exported as the empty name)."""


def onnx_type(dtype: np.dtype | type) -> int:
    """The TensorProto element type of a numpy dtype (ml_dtypes' bfloat16 included)."""
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


class Names:
    """Unique node and tensor names in one graph; one instance per pass run."""

    def __init__(self, graph: gs.Graph) -> None:
        self._nodes = {node.name for node in graph.nodes if node.name}
        self._tensors = set(graph.tensors())

    def node(self, base: str) -> str:
        return self._fresh(base, self._nodes)

    def tensor(self, base: str) -> str:
        return self._fresh(base, self._tensors)

    @staticmethod
    def _fresh(base: str, used: set[str]) -> str:
        name, i = base, 0
        while name in used:
            i += 1
            name = f"{base}_{i}"
        used.add(name)
        return name


@dataclass
class LayerEditor:
    graph: gs.Graph
    layer: Layer
    names: Names
    created: list[gs.Node] = field(default_factory=list)
    stored: list[gs.Constant] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Whether the layer gained nodes or initializers (an untouched layer gains neither)."""
        return bool(self.created or self.stored)

    def node(
        self,
        op: str,
        inputs: Sequence[gs.Tensor],
        outputs: Sequence[gs.Tensor],
        attrs: Mapping[str, Any] | None = None,
        domain: str | None = None,
    ) -> gs.Node:
        """Add a node reading `inputs` and writing `outputs` (existing tensors)."""
        node = gs.Node(
            op,
            name=self.names.node(f"{self.layer.name}/{op}"),
            attrs=dict(attrs or {}),
            inputs=list(inputs),
            outputs=list(outputs),
            domain=domain,
        )
        self.graph.nodes.append(node)
        self.created.append(node)
        return node

    def variable(self, stem: str, dtype: np.dtype | type, shape: Shape) -> gs.Variable:
        """A new tensor `<layer>/<stem>` of `dtype` and `shape` (None: unknown)."""
        name = self.names.tensor(f"{self.layer.name}/{stem}")
        return gs.Variable(name, dtype=np.dtype(dtype), shape=None if shape is None else list(shape))

    def apply(
        self,
        op: str,
        inputs: Sequence[gs.Tensor],
        dtype: np.dtype | type,
        shape: Shape,
        attrs: Mapping[str, Any] | None = None,
        domain: str | None = None,
    ) -> gs.Variable:
        """Add a node with one output `<layer>/<Op>_output` of `dtype` and `shape`; return it."""
        out = self.variable(f"{op}_output", dtype, shape)
        self.node(op, inputs, [out], attrs, domain)
        return out

    def constant(self, role: str, values: np.ndarray) -> gs.Constant:
        """A new initializer `<layer>.<role>` holding `values` as they are (dtype kept)."""
        constant = gs.Constant(self.names.tensor(f"{self.layer.name}.{role}"), np.ascontiguousarray(values))
        self.stored.append(constant)
        return constant

    def cast(self, tensor: gs.Tensor, dtype: np.dtype | type) -> gs.Tensor:
        """`tensor` as `dtype`: itself when it already is, else the output of a new Cast."""
        if tensor.dtype is not None and np.dtype(tensor.dtype) == np.dtype(dtype):
            return tensor
        return self.apply("Cast", [tensor], dtype, tensor.shape, {"to": onnx_type(dtype)})
