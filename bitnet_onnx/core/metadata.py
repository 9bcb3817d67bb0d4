"""The keys the compiler stamps into node metadata_props (Netron shows them), in one place:
annotate_layers writes the layer, its type and the rule that classified it; rewrite writes the op
that computes the layer, each component's precision and settings (JSON: precision, layout knobs,
conversion strategy, deciding rule), the scale rule of ternary weights and the layer's position in
the model; fuse_siblings writes, on a node computing several layers in one call, each layer's
annotations; `inspection.read_layers` and profiling read them back."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bitnet_onnx.core.layers import ComponentType

__all__ = [
    "COMPONENT_KEY_PREFIX",
    "DTYPE_KEY_PREFIX",
    "FUSED_KEY",
    "INDEX_KEY",
    "LAYER_KEY",
    "LAYER_TYPE_KEY",
    "OP_KEY",
    "RULE_KEY",
    "TERNARY_SCALE_KEY",
    "FusedMember",
    "component_key",
    "dtype_key",
    "fused_members",
    "fused_value",
]

LAYER_KEY = "bitnet.layer"
LAYER_TYPE_KEY = "bitnet.layer_type"
RULE_KEY = "bitnet.rule"
OP_KEY = "bitnet.op"
DTYPE_KEY_PREFIX = "bitnet.dtype."
COMPONENT_KEY_PREFIX = "bitnet.component."
INDEX_KEY = "bitnet.layer_index"
TERNARY_SCALE_KEY = "bitnet.ternary_scale"  # the BITNET158 scale rule (kernels/README.md)


def dtype_key(component: ComponentType) -> str:
    """The key holding a component's precision, e.g. `bitnet.dtype.weights`."""
    return f"{DTYPE_KEY_PREFIX}{component.value}"


def component_key(component: ComponentType) -> str:
    """The key holding a component's settings as JSON (`plan.component_settings`), e.g.
    `bitnet.component.weights`."""
    return f"{COMPONENT_KEY_PREFIX}{component.value}"


FUSED_KEY = "bitnet.fused"
"""On a node that computes several layers in one call (fuse_siblings) and on its Split: JSON, a list
of {"rows": [start, stop], "annotations": {key: value}}, one per layer in the order of its rows.
Such a node's `bitnet.layer` is the layers' names joined by "+" (what Netron and profiling show)
and it carries every other key on which the layers agree."""


@dataclass(frozen=True)
class FusedMember:
    """One layer of a fused op call: its annotations and its rows [start, stop) of the stacked weight."""

    annotations: Mapping[str, str]
    start: int
    stop: int


def fused_value(members: Sequence[FusedMember]) -> dict[str, str]:
    """The annotations of a node computing `members` in one call (see FUSED_KEY)."""
    shared = [set(m.annotations.items()) for m in members]
    common = {k: v for k, v in sorted(set.intersection(*shared)) if k not in (LAYER_KEY, INDEX_KEY)}
    return {
        **common,
        LAYER_KEY: "+".join(m.annotations.get(LAYER_KEY, "") for m in members),
        FUSED_KEY: json.dumps(
            [{"rows": [m.start, m.stop], "annotations": dict(m.annotations)} for m in members]
        ),
    }


def fused_members(value: str) -> tuple[FusedMember, ...]:
    """The members a FUSED_KEY value names (() for text that is not such a list)."""
    try:
        items = json.loads(value)
    except json.JSONDecodeError:
        return ()
    if not isinstance(items, list):
        return ()
    return tuple(
        FusedMember({str(k): str(v) for k, v in item["annotations"].items()}, *item["rows"])
        for item in items
        if isinstance(item, dict)
        and isinstance(item.get("annotations"), dict)
        and len(item.get("rows", ())) == 2
    )
