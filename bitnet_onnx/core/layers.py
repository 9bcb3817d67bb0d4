"""Layer and component vocabulary, and the support matrix: which precisions each accepts.

The default matrix is the seed design's table (linear/convolution: every precision; attention,
embedding, output: floats and I8; normalization: floats only). It is data, and a config may replace
any row.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from bitnet_onnx.core._schema import parse_enum
from bitnet_onnx.core.dtypes import DType

__all__ = ["ComponentType", "Layer", "LayerType", "SupportMatrix"]


class LayerType(enum.Enum):
    LINEAR = "linear"
    CONVOLUTION = "convolution"
    ATTENTION = "attention"
    EMBEDDING = "embedding"
    NORMALIZATION = "normalization"
    ACTIVATION = "activation"
    OUTPUT = "output"
    OTHER = "other"

    @classmethod
    def parse(cls, value: str | LayerType) -> LayerType:
        return parse_enum(cls, value, "layer type")


class ComponentType(enum.Enum):
    WEIGHTS = "weights"
    BIAS = "bias"
    ACTIVATIONS = "activations"  # the layer's input, as the layer computes with it
    OUTPUTS = "outputs"  # the layer's result, as it is handed to the next layer
    GRADIENTS = "gradients"  # kept for parity with the seed design; inference graphs have none

    @classmethod
    def parse(cls, value: str | ComponentType) -> ComponentType:
        return parse_enum(cls, value, "component")

    @property
    def applies_to_inference(self) -> bool:
        return self is not ComponentType.GRADIENTS


_FLOATS = frozenset({DType.F32, DType.F16, DType.BF16})
_ALL = frozenset(DType)

_DEFAULT_LAYERS: dict[LayerType, frozenset[DType]] = {
    LayerType.LINEAR: _ALL,
    LayerType.CONVOLUTION: _ALL,
    LayerType.ATTENTION: _FLOATS | {DType.I8},
    LayerType.EMBEDDING: _FLOATS | {DType.I8},
    LayerType.NORMALIZATION: _FLOATS,
    LayerType.ACTIVATION: _FLOATS | {DType.I8},
    LayerType.OUTPUT: _FLOATS | {DType.I8},
    LayerType.OTHER: _FLOATS,
}

# Components constrain on top of the layer: biases stay float (they are added in float); activations
# and outputs can be float or per-token int8 (an I8 output is handed on quantized, as the seed's
# layer specs do: the next layer reads it back at int8 precision).
_DEFAULT_COMPONENTS: dict[ComponentType, frozenset[DType]] = {
    ComponentType.WEIGHTS: _ALL,
    ComponentType.BIAS: _FLOATS,
    ComponentType.ACTIVATIONS: _FLOATS | {DType.I8},
    ComponentType.OUTPUTS: _FLOATS | {DType.I8},
    ComponentType.GRADIENTS: _FLOATS,
}


def _frozen(m: Mapping) -> Mapping:
    return MappingProxyType({k: frozenset(v) for k, v in m.items()})


@dataclass(frozen=True)
class SupportMatrix:
    """Which precisions a layer type and a component accept. A pair is allowed when both are.

    Only WEIGHTS follow the layer row in full; the other components follow their own row, since
    e.g. a ternary linear layer still takes float or int8 activations.
    """

    layers: Mapping[LayerType, frozenset[DType]] = field(default_factory=lambda: _frozen(_DEFAULT_LAYERS))
    components: Mapping[ComponentType, frozenset[DType]] = field(
        default_factory=lambda: _frozen(_DEFAULT_COMPONENTS)
    )

    def allowed(self, layer_type: LayerType, component: ComponentType) -> frozenset[DType]:
        comp = self.components[component]
        if component is ComponentType.WEIGHTS:
            return self.layers[layer_type] & comp
        if layer_type is LayerType.NORMALIZATION:
            # A normalization computes in float whatever it is fed.
            return comp & self.layers[layer_type]
        return comp

    def allows(self, layer_type: LayerType, component: ComponentType, dtype: DType) -> bool:
        return dtype in self.allowed(layer_type, component)

    def with_layer(self, layer_type: LayerType, dtypes: Iterable[DType]) -> SupportMatrix:
        return replace(self, layers=_frozen({**self.layers, layer_type: frozenset(dtypes)}))

    def with_component(self, component: ComponentType, dtypes: Iterable[DType]) -> SupportMatrix:
        return replace(self, components=_frozen({**self.components, component: frozenset(dtypes)}))


@dataclass(frozen=True)
class Layer:
    """A named group of graph nodes that gets one precision per component.

    Names come from the model itself (initializer or node names, e.g. `model.layers.0.self_attn.q_proj`).
    `nodes` are graph node names, the anchor (the weight-bearing or defining node) first. `weight` and
    `bias` are initializer names as they appear in the graph. `block` names the attention block a
    projection belongs to (and, for an attention layer, its own block); `tied_with` names the other
    layer reading the same weight table (embedding ↔ lm_head). `rule` is the pattern that classified it.
    `weight_nodes` are the nodes between the anchor's weight input and the initializer (Identity,
    Cast, Transpose, DequantizeLinear, Reshape; anchor side first). For a matrix weight (linear,
    output), `weight_nk` is True when the initializer holds W as [N, K] (out, in; torch's Linear,
    Gemm transB=1, MatMul through Transpose), False when it holds [K, N] (MatMul's B read
    directly), None when the chain reshapes it or the layer has no matrix weight.
    """

    name: str
    layer_type: LayerType
    index: int
    nodes: tuple[str, ...]
    rule: str
    weight: str | None = None
    weight_shape: tuple[int, ...] | None = None
    bias: str | None = None
    block: str | None = None
    tied_with: str | None = None
    weight_nodes: tuple[str, ...] = ()
    weight_nk: bool | None = None

    @property
    def parameter_count(self) -> int:
        return math.prod(self.weight_shape) if self.weight_shape else 0
