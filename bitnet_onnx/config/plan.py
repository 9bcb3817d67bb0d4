"""The precision plan: for every layer, the decision for each of its components.

`assign_precision` builds it from the config and the policies; the optimizer may replace decisions;
`rewrite` realises it in the graph; `validate` reads it back from the compiled graph and compares.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from bitnet_onnx.config.policy import Decision
from bitnet_onnx.core.dtypes import DType
from bitnet_onnx.core.layers import ComponentType, Layer, LayerType

__all__ = ["LayerPlan", "components_of"]

_WEIGHTED = (ComponentType.WEIGHTS, ComponentType.BIAS, ComponentType.ACTIVATIONS, ComponentType.OUTPUTS)
_COMPUTE_ONLY = (ComponentType.ACTIVATIONS, ComponentType.OUTPUTS)

_COMPONENTS: dict[LayerType, tuple[ComponentType, ...]] = {
    LayerType.LINEAR: _WEIGHTED,
    LayerType.CONVOLUTION: _WEIGHTED,
    LayerType.OUTPUT: _WEIGHTED,
    LayerType.EMBEDDING: (ComponentType.WEIGHTS, ComponentType.OUTPUTS),
    LayerType.NORMALIZATION: _WEIGHTED,
    LayerType.ATTENTION: _COMPUTE_ONLY,
    LayerType.ACTIVATION: _COMPUTE_ONLY,
    LayerType.OTHER: _COMPUTE_ONLY,
}


def components_of(layer: Layer) -> tuple[ComponentType, ...]:
    """The components a layer has in an inference graph: weights only when it has a weight
    initializer, bias only when it has a bias, never gradients."""
    return tuple(
        c
        for c in _COMPONENTS[layer.layer_type]
        if (c is not ComponentType.WEIGHTS or layer.weight is not None)
        and (c is not ComponentType.BIAS or layer.bias is not None)
    )


@dataclass(frozen=True)
class LayerPlan:
    layer: Layer
    decisions: Mapping[ComponentType, Decision] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "decisions", MappingProxyType(dict(self.decisions)))

    def dtype(self, component: ComponentType) -> DType | None:
        decision = self.decisions.get(component)
        return decision.dtype if decision else None
