"""What a compiled model says about its layers, read back from node metadata_props.

The compiler stamps these keys on every node it annotated (Netron shows them):
`bitnet.layer` (the layer's name), `bitnet.layer_type`, `bitnet.rule` (the pattern that classified
it) from annotate_layers, and `bitnet.op` (what computes the layer) and `bitnet.dtype.<component>`
(the precision of each component) and, for ternary weights, `bitnet.ternary_scale` (the scale rule,
`absmean` or `least_squares`) from rewrite. `read_layers` groups the nodes by `bitnet.layer`,
in graph order, and takes each other key from the first of the layer's nodes that carries it.
A model that was never compiled has no layers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import onnx

from bitnet_onnx.core._text import table
from bitnet_onnx.core.layers import ComponentType
from bitnet_onnx.core.metadata import (
    DTYPE_KEY_PREFIX,
    LAYER_KEY,
    LAYER_TYPE_KEY,
    OP_KEY,
    RULE_KEY,
    TERNARY_SCALE_KEY,
)

__all__ = [
    "LayerRecord",
    "layers_table",
    "read_layers",
]

_COMPONENT_ORDER = {c.value: i for i, c in enumerate(ComponentType)}


@dataclass(frozen=True)
class LayerRecord:
    """One layer of a compiled model: its type, the precision of each component (component name →
    precision name, in ComponentType order), the op that computes it, the deciding rule, its nodes,
    and the scale rule of its ternary weights ("" when they are not ternary)."""

    name: str
    layer_type: str
    precisions: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    op: str = ""
    rule: str = ""
    nodes: tuple[str, ...] = ()
    ternary_scale: str = ""

    def __post_init__(self) -> None:
        ordered = sorted(
            self.precisions.items(), key=lambda kv: _COMPONENT_ORDER.get(kv[0], len(_COMPONENT_ORDER))
        )
        object.__setattr__(self, "precisions", MappingProxyType(dict(ordered)))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "layer_type": self.layer_type,
            "precisions": dict(self.precisions),
            "op": self.op,
            "rule": self.rule,
            "nodes": list(self.nodes),
            "ternary_scale": self.ternary_scale,
        }


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _nodes(attr.g)
            for sub in attr.graphs:
                yield from _nodes(sub)


def read_layers(model: onnx.ModelProto) -> tuple[LayerRecord, ...]:
    """The layers the model's node metadata describes, in graph order."""
    found: dict[str, dict[str, Any]] = {}
    for node in _nodes(model.graph):
        props = {p.key: p.value for p in node.metadata_props}
        name = props.get(LAYER_KEY)
        if name is None:
            continue
        entry = found.setdefault(name, {"nodes": [], "precisions": {}})
        entry["nodes"].append(node.name)
        for key, value in props.items():
            if key.startswith(DTYPE_KEY_PREFIX):
                entry["precisions"].setdefault(key[len(DTYPE_KEY_PREFIX) :], value)
            elif key in (LAYER_TYPE_KEY, OP_KEY, RULE_KEY, TERNARY_SCALE_KEY):
                entry.setdefault(key, value)
    return tuple(
        LayerRecord(
            name=name,
            layer_type=entry.get(LAYER_TYPE_KEY, ""),
            precisions=entry["precisions"],
            op=entry.get(OP_KEY, ""),
            rule=entry.get(RULE_KEY, ""),
            nodes=tuple(entry["nodes"]),
            ternary_scale=entry.get(TERNARY_SCALE_KEY, ""),
        )
        for name, entry in found.items()
    )


def layers_table(records: Iterable[LayerRecord]) -> str:
    """One row per layer: name, type, precision per component (`w`eights, `b`ias, `a`ctivations,
    `o`utputs), ternary scale rule, op and rule."""
    rows = [
        [
            r.name,
            r.layer_type,
            " ".join(f"{c[0]}:{d}" for c, d in r.precisions.items()) or "-",
            r.ternary_scale or "-",
            r.op or "-",
            r.rule or "-",
        ]
        for r in records
    ]
    return table(["layer", "type", "precision", "scale", "op", "rule"], rows)
