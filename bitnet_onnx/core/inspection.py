"""What a compiled model says about its layers, read back from node metadata_props.

The compiler stamps these keys on every node it annotated (Netron shows them):
`bitnet.layer` (the layer's name), `bitnet.layer_type`, `bitnet.rule` (the pattern that classified
it) from annotate_layers, and `bitnet.op` (what computes the layer), `bitnet.dtype.<component>`
(the precision of each component), `bitnet.component.<component>` (the component's settings as
JSON: precision, every layout knob, conversion strategy and the rule that decided it),
`bitnet.layer_index` (the layer's position in the model) and, for ternary weights,
`bitnet.ternary_scale` (the scale rule, `absmean` or `least_squares`) from rewrite. `read_layers`
groups the nodes by `bitnet.layer` (a node computing several layers in one call carries each one's
keys in `bitnet.fused`) and takes each other key from the first of the layer's nodes
that carries it; layers come in model order (the order of compile's table), graph order where a
model predates `bitnet.layer_index`. A model that was never compiled has no layers.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

import onnx

from bitnet_onnx.core._text import table
from bitnet_onnx.core.dtypes import WeightLayout
from bitnet_onnx.core.layers import ComponentType
from bitnet_onnx.core.metadata import (
    COMPONENT_KEY_PREFIX,
    DTYPE_KEY_PREFIX,
    FUSED_KEY,
    INDEX_KEY,
    LAYER_KEY,
    LAYER_TYPE_KEY,
    OP_KEY,
    RULE_KEY,
    TERNARY_SCALE_KEY,
    fused_members,
)

__all__ = [
    "LayerRecord",
    "components_table",
    "layers_table",
    "read_layers",
]

_COMPONENT_ORDER = {c.value: i for i, c in enumerate(ComponentType)}


@dataclass(frozen=True)
class LayerRecord:
    """One layer of a compiled model: its type, the precision of each component (component name →
    precision name, in ComponentType order), each component's settings (component name → setting →
    value, the same order), the op that computes it, the deciding rule, its nodes, its position, and
    the scale rule of its ternary weights ("" when they are not ternary); for a layer computed in one
    op call with its siblings (fuse_siblings), those layers and its rows of the stacked weight."""

    name: str
    layer_type: str
    precisions: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    op: str = ""
    rule: str = ""
    nodes: tuple[str, ...] = ()
    ternary_scale: str = ""
    components: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: MappingProxyType({}))
    index: int | None = None
    fused: tuple[str, ...] = ()  # the layers one op call computes with this one (itself included)
    rows: tuple[int, int] | None = None  # its rows [start, stop) of that call's stacked weight

    def __post_init__(self) -> None:
        object.__setattr__(self, "precisions", _in_component_order(self.precisions))
        object.__setattr__(self, "components", _in_component_order(self.components))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "layer_type": self.layer_type,
            "index": self.index,
            "precisions": dict(self.precisions),
            "components": {c: dict(v) for c, v in self.components.items()},
            "op": self.op,
            "rule": self.rule,
            "nodes": list(self.nodes),
            "ternary_scale": self.ternary_scale,
            "fused": list(self.fused),
            "rows": None if self.rows is None else list(self.rows),
        }


def _in_component_order(by_component: Mapping[str, Any]) -> Mapping[str, Any]:
    ordered = sorted(by_component.items(), key=lambda kv: _COMPONENT_ORDER.get(kv[0], len(_COMPONENT_ORDER)))
    return MappingProxyType(dict(ordered))


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
        for props, rows, fused in _node_layers(node):
            name = props.get(LAYER_KEY)
            if name is None:
                continue
            entry = found.setdefault(name, {"nodes": [], "precisions": {}, "components": {}})
            entry["nodes"].append(node.name)
            if rows is not None:
                entry.setdefault("rows", rows)
                entry.setdefault("fused", fused)
            for key, value in props.items():
                if key.startswith(DTYPE_KEY_PREFIX):
                    entry["precisions"].setdefault(key[len(DTYPE_KEY_PREFIX) :], value)
                elif key.startswith(COMPONENT_KEY_PREFIX):
                    entry["components"].setdefault(key[len(COMPONENT_KEY_PREFIX) :], _settings(value))
                elif key in (LAYER_TYPE_KEY, OP_KEY, RULE_KEY, INDEX_KEY, TERNARY_SCALE_KEY):
                    entry.setdefault(key, value)
    records = [
        LayerRecord(
            name=name,
            layer_type=entry.get(LAYER_TYPE_KEY, ""),
            precisions=entry["precisions"],
            op=entry.get(OP_KEY, ""),
            rule=entry.get(RULE_KEY, ""),
            nodes=tuple(entry["nodes"]),
            components=entry["components"],
            index=int(entry[INDEX_KEY]) if entry.get(INDEX_KEY, "").isdigit() else None,
            ternary_scale=entry.get(TERNARY_SCALE_KEY, ""),
            fused=entry.get("fused", ()),
            rows=entry.get("rows"),
        )
        for name, entry in found.items()
    ]
    graph_order = {r.name: i for i, r in enumerate(records)}
    return tuple(sorted(records, key=lambda r: (r.index is None, r.index or 0, graph_order[r.name])))


def _node_layers(
    node: onnx.NodeProto,
) -> list[tuple[Mapping[str, str], tuple[int, int] | None, tuple[str, ...]]]:
    """(annotations, rows in a fused weight, the fused layers) of each layer `node` computes: one
    layer's own, or those of every layer of a fused op call (`FUSED_KEY`)."""
    props = {p.key: p.value for p in node.metadata_props}
    if FUSED_KEY not in props:
        return [(props, None, ())]
    members = fused_members(props[FUSED_KEY])
    names = tuple(m.annotations.get(LAYER_KEY, "") for m in members)
    return [(m.annotations, (m.start, m.stop), names) for m in members]


def _settings(text: str) -> Mapping[str, Any]:
    """A component's settings from its JSON annotation; {} for one that is not a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return MappingProxyType({})
    return MappingProxyType(value if isinstance(value, dict) else {})


def layers_table(records: Iterable[LayerRecord]) -> str:
    """One row per layer: name, type, precision per component (`w`eights, `b`ias, `a`ctivations,
    `o`utputs), ternary scale rule, op (`BitLinear (1 of 3 fused)` for a layer computed in one call
    with its siblings) and rule."""
    rows = [
        [
            r.name,
            r.layer_type,
            " ".join(f"{c[0]}:{d}" for c, d in r.precisions.items()) or "-",
            r.ternary_scale or "-",
            _op(r),
            r.rule or "-",
        ]
        for r in records
    ]
    return table(["layer", "type", "precision", "scale", "op", "rule"], rows)


def _op(record: LayerRecord) -> str:
    if not record.op:
        return "-"
    if not record.fused:
        return record.op
    return f"{record.op} ({record.fused.index(record.name) + 1} of {len(record.fused)} fused)"


_SHOWN_APART = ("precision", "rule", "conversion_strategy")


def _default_knobs() -> dict[str, Any]:
    layout = WeightLayout()
    return {f.name: getattr(layout, f.name) for f in fields(layout)}


def _knobs(settings: Mapping[str, Any]) -> str:
    """`group_size=64 per_channel=true packing=base3`: the knobs that differ from a default
    `WeightLayout` (the JSON record has all of them)."""
    defaults = {k: v.value if isinstance(v, enum.Enum) else v for k, v in _default_knobs().items()}
    shown = [
        f"{key}={json.dumps(value) if isinstance(value, bool) else value}"
        for key, value in settings.items()
        if key not in _SHOWN_APART and value is not None and (key not in defaults or value != defaults[key])
    ]
    return " ".join(shown) or "-"


def components_table(records: Iterable[LayerRecord]) -> str:
    """One row per component of each layer: its precision, the knobs that are set, the conversion
    strategy and the rule that decided it, with the layer's type and op on its first row."""
    rows = []
    for r in records:
        components = r.components or {c: {"precision": d} for c, d in r.precisions.items()}
        for i, (component, settings) in enumerate(components.items()):
            first = i == 0
            rows.append(
                [
                    r.name if first else "",
                    r.layer_type if first else "",
                    component,
                    str(settings.get("precision", "-")),
                    _knobs(settings),
                    str(settings.get("conversion_strategy") or "-"),
                    str(settings.get("rule") or "-"),
                    _op(r) if first else "",
                ]
            )
    return table(["layer", "type", "component", "precision", "knobs", "conversion", "rule", "op"], rows)
