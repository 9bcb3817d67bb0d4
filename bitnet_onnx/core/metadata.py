"""The keys the compiler stamps into node metadata_props (Netron shows them), in one place:
annotate_layers writes the layer, its type and the rule that classified it; rewrite writes the op
that computes the layer, each component's precision and settings (JSON: precision, layout knobs,
conversion strategy, deciding rule), the scale rule of ternary weights and the layer's position in
the model; `inspection.read_layers` and profiling read them back."""

from __future__ import annotations

from bitnet_onnx.core.layers import ComponentType

__all__ = [
    "COMPONENT_KEY_PREFIX",
    "DTYPE_KEY_PREFIX",
    "INDEX_KEY",
    "LAYER_KEY",
    "LAYER_TYPE_KEY",
    "OP_KEY",
    "RULE_KEY",
    "TERNARY_SCALE_KEY",
    "component_key",
    "dtype_key",
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
