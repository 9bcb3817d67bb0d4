"""Walkers over an ONNX model's graphs and tensors, subgraphs included: what the passes, model files
and the optimizer's model hashing all traverse."""

from __future__ import annotations

from collections.abc import Iterator

import onnx

__all__ = ["all_graph_protos", "tensor_protos"]


def all_graph_protos(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`graph` and every subgraph nested in its nodes' attributes (If/Loop/Scan bodies)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from all_graph_protos(attr.g)
            for sub in attr.graphs:
                yield from all_graph_protos(sub)


def tensor_protos(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every initializer and attribute tensor of `model`, subgraphs included: graph by graph
    (`all_graph_protos` order), each graph's initializers before its nodes' attribute tensors."""
    for graph in all_graph_protos(model.graph):
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
