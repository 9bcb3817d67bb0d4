"""Per-layer precision specs and the manager that holds them, checks them and trims their memory.

A `LayerPrecisionSpec` says, for one layer, which precision each component is stored or computed
in: WEIGHTS use `weight_precision`, ACTIVATIONS (the layer's input) `input_precision`, OUTPUTS
`output_precision`, and BIAS `bias_precision`, which defaults to `output_precision` because the bias
is added to the output. GRADIENTS may be recorded for parity with the seed design but inference
graphs have none, so asking a spec for them is an error.

Memory is what a layer stores: its weights and its bias, counted exactly by
`dtypes.storage_bytes` with the spec's `WeightLayout`. Activations and outputs are transient and
depend on the batch, so they are not counted. A spec without `weight_shape` stores no weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from bitnet_onnx.dtypes import DType, WeightLayout, storage_bytes
from bitnet_onnx.errors import ConfigError
from bitnet_onnx.layers import ComponentType, LayerType

__all__ = ["LayerPrecisionSpec"]


def _shape(value: tuple[int, ...] | None, what: str, layer: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    shape = tuple(value)
    if not shape or any(not isinstance(d, int) or isinstance(d, bool) or d <= 0 for d in shape):
        raise ConfigError(
            f"layer {layer!r}: {what} {value!r} must be a non-empty tuple of positive integers, e.g. (4096, 4096)"
        )
    return shape


@dataclass(frozen=True)
class LayerPrecisionSpec:
    """The precisions of one layer's components, plus what is needed to count its bytes.

    `weight_shape` is [rows, K] for a matrix (K, the reduction axis, last, as groups run along it);
    `bias_shape` is given only when the layer has a bias. `dynamic_adjustment` lets an optimizer
    move this layer's precisions; a spec without it is pinned.
    """

    name: str
    layer_type: LayerType
    input_precision: DType
    output_precision: DType
    weight_precision: DType
    bias_precision: DType | None = None
    gradient_precision: DType | None = None
    weight_shape: tuple[int, ...] | None = None
    bias_shape: tuple[int, ...] | None = None
    layout: WeightLayout = field(default_factory=WeightLayout)
    dynamic_adjustment: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"layer name {self.name!r} must be a non-empty string")
        # Normalizing here lets specs be written with strings ("i8", "linear") as configs do.
        set_ = object.__setattr__
        set_(self, "layer_type", LayerType.parse(self.layer_type))
        for attr in ("input_precision", "output_precision", "weight_precision"):
            set_(self, attr, DType.parse(getattr(self, attr)))
        for attr in ("bias_precision", "gradient_precision"):
            if getattr(self, attr) is not None:
                set_(self, attr, DType.parse(getattr(self, attr)))
        set_(self, "weight_shape", _shape(self.weight_shape, "weight_shape", self.name))
        set_(self, "bias_shape", _shape(self.bias_shape, "bias_shape", self.name))

    def precision_for(self, component: ComponentType | str) -> DType:
        """The precision this layer uses for `component`; GRADIENTS raise (inference only)."""
        component = ComponentType.parse(component)
        if component is ComponentType.WEIGHTS:
            return self.weight_precision
        if component is ComponentType.ACTIVATIONS:
            return self.input_precision
        if component is ComponentType.OUTPUTS:
            return self.output_precision
        if component is ComponentType.BIAS:
            return self.bias_precision or self.output_precision
        raise ConfigError(
            f"layer {self.name!r}: the gradients component is not applicable to inference graphs; "
            "ask for weights, bias, activations or outputs"
        )

    def with_component_precision(self, component: ComponentType | str, dtype: DType | str) -> LayerPrecisionSpec:
        """A copy with `component` set to `dtype` (GRADIENTS are recorded, never used)."""
        attr = {
            ComponentType.WEIGHTS: "weight_precision",
            ComponentType.ACTIVATIONS: "input_precision",
            ComponentType.OUTPUTS: "output_precision",
            ComponentType.BIAS: "bias_precision",
            ComponentType.GRADIENTS: "gradient_precision",
        }[ComponentType.parse(component)]
        return replace(self, **{attr: DType.parse(dtype)})

    def with_dynamic_adjustment(self) -> LayerPrecisionSpec:
        """A copy an optimizer is allowed to move."""
        return replace(self, dynamic_adjustment=True)

    @property
    def parameter_count(self) -> int:
        """Stored elements: weights plus bias."""
        return sum(math.prod(s) for s in (self.weight_shape, self.bias_shape) if s is not None)

    def component_bytes(self, component: ComponentType | str, dtype: DType | None = None) -> int:
        """Bytes `component` takes at rest in `dtype` (default: its current precision).

        Only WEIGHTS and BIAS are stored; every other component takes 0 bytes.
        """
        component = ComponentType.parse(component)
        if component is ComponentType.WEIGHTS and self.weight_shape is not None:
            return storage_bytes(dtype or self.weight_precision, self.weight_shape, self.layout)
        if component is ComponentType.BIAS and self.bias_shape is not None:
            return storage_bytes(dtype or self.precision_for(component), self.bias_shape)
        return 0

    def memory_bytes(self) -> int:
        """Bytes this layer stores: weights plus bias, scales and zero points included."""
        return self.component_bytes(ComponentType.WEIGHTS) + self.component_bytes(ComponentType.BIAS)
