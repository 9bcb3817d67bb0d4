"""What every layer rewriter receives and returns.

A rewriter is a function `(env, edit, plan) -> LayerRewrite` for one layer type. `env` holds what
all rewrites of one pass run share (the graph, unique names, the weight store, whether kernels may
be timed); `edit` makes this layer's nodes; `plan` is the layer's decisions. The rewriter leaves
the graph valid except for dead nodes and tensors (the pass cleans up once at the end), keeps the
names, types and shapes of the layer's boundary tensors, and returns what it did.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import onnx_graphsurgeon as gs
from onnx import helper

from bitnet_onnx.core.dtypes import DType
from bitnet_onnx.core.errors import UnsupportedModelError
from bitnet_onnx.core.layers import ComponentType, Layer
from bitnet_onnx.core.plan import LayerPlan
from bitnet_onnx.passes._match import GraphView

from ._edit import LayerEditor, Names
from ._weights import WeightStore

__all__ = ["LayerRewrite", "RewriteEnv", "Rewriter", "component_dtype", "constant_bytes", "detach"]


@dataclass(frozen=True)
class LayerRewrite:
    """What one layer's rewrite did.

    `op` names what computes the layer now (e.g. "BitLinear", "DequantizeLowBit+MatMul", "MatMul"
    when untouched). `bytes_before` counts the constants the layer read before (weights, bias);
    `bytes_after` those it reads now that it stored itself (an encoding another layer stored first
    counts there). `weights` names the initializers that now hold the layer's weight (how the pass
    sees whether tied layers share one). `detail` is one line for the log; `stats` carries numbers
    such as the I8 kernel timings.
    """

    op: str
    bytes_before: int
    bytes_after: int
    detail: str
    weights: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    stats: Mapping[str, int | float | str] = field(default_factory=dict)


@dataclass
class RewriteEnv:
    """Shared by all rewrites of one pass run."""

    graph: gs.Graph
    view: GraphView  # built when the pass started; constants and producers stay valid as layers change
    names: Names
    weights: WeightStore
    measure_kernels: bool
    nodes: dict[str, gs.Node]  # by name, as the graph stood when the pass started

    @classmethod
    def of(
        cls,
        graph: gs.Graph,
        seed: int,
        measure_kernels: bool,
        hessians: Mapping[str, np.ndarray] | None = None,
    ) -> RewriteEnv:
        return cls(
            graph,
            GraphView(graph),
            Names(graph),
            WeightStore(seed, hessians or {}),
            measure_kernels,
            {node.name: node for node in graph.nodes},
        )

    def layer_nodes(self, layer: Layer) -> list[gs.Node]:
        """The layer's nodes, anchor first; UnsupportedModelError if one is not in the graph."""
        missing = [name for name in layer.nodes if name not in self.nodes]
        if missing:
            raise UnsupportedModelError(
                f"layer {layer.name!r} names nodes {missing} that are not in the graph; "
                "the graph changed after annotate_layers ran"
            )
        return [self.nodes[name] for name in layer.nodes]


class Rewriter(Protocol):
    def __call__(self, env: RewriteEnv, edit: LayerEditor, plan: LayerPlan) -> LayerRewrite: ...


def component_dtype(plan: LayerPlan, component: ComponentType) -> DType:
    """The planned precision of a component, F32 (unchanged) when the layer has no such decision."""
    return plan.dtype(component) or DType.F32


def constant_bytes(tensor: gs.Tensor | None) -> int:
    """Bytes a constant stores, read from its type and shape (lazy values stay unread)."""
    if not isinstance(tensor, gs.Constant):
        return 0
    dtype = tensor.dtype  # an ONNX type number where gs knows no numpy type for it
    itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(dtype) if isinstance(dtype, int) else dtype).itemsize
    return itemsize * math.prod(int(d) for d in tensor.shape)


def detach(node: gs.Node) -> None:
    """Disconnect a replaced node; the pass's cleanup removes it."""
    node.inputs.clear()
    node.outputs.clear()
