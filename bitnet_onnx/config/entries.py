"""The values a mixed-precision config is made of: the strategy, one component's precision setting
(`ComponentPrecisionConfig`) and one layer entry (`LayerPrecisionConfig`).

They live apart from `MixedPrecisionConfig` (config.py) so that the presets (presets.py) can be
built from them and config.py can take its presets from presets.py, with no import cycle; config.py
re-exports them, as the place every user of a config imports from.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from bitnet_onnx.core._schema import parse_enum
from bitnet_onnx.core.dtypes import ConversionStrategy, DType, WeightLayout
from bitnet_onnx.core.layers import ComponentType, LayerType

__all__ = ["ComponentPrecisionConfig", "LayerPrecisionConfig", "MixedPrecisionStrategy"]


class MixedPrecisionStrategy(enum.Enum):
    CONSERVATIVE = "conservative"
    BALANCED = "balanced"
    AGGRESSIVE = "aggressive"
    CUSTOM = "custom"

    @classmethod
    def parse(cls, value: str | MixedPrecisionStrategy) -> MixedPrecisionStrategy:
        return parse_enum(cls, value, "strategy")


def _optional_strategy(value: Any) -> ConversionStrategy | None:
    return None if value is None else ConversionStrategy.parse(value)


@dataclass(frozen=True)
class ComponentPrecisionConfig:
    """A precision plus the knobs that matter to converting a tensor to it.

    `layout.group_size` (integer precisions; None is one group per row), `layout.asymmetric`
    (zero points; I8, I4, I2), `layout.per_channel` (BITNET158: one scale per output row) and
    `layout.packing` (BITNET158 at rest) and `layout.ternary_scale` (BITNET158's scale rule: γ as
    trained, or least squares) are those of `dtypes.WeightLayout`; `conversion_strategy`
    None leaves the choice to the converter.
    """

    precision: DType
    layout: WeightLayout = field(default_factory=WeightLayout)
    conversion_strategy: ConversionStrategy | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", DType.parse(self.precision))
        object.__setattr__(self, "conversion_strategy", _optional_strategy(self.conversion_strategy))


@dataclass(frozen=True)
class LayerPrecisionConfig:
    """The precision of a layer (or of every layer a glob or a layer type covers), with knobs and
    per-component overrides. `layer_type` None means any type (useful on globs). Immutable:
    `with_component_override` returns a new object."""

    layer_type: LayerType | None
    precision: DType
    layout: WeightLayout = field(default_factory=WeightLayout)
    conversion_strategy: ConversionStrategy | None = None
    component_overrides: Mapping[ComponentType, ComponentPrecisionConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.layer_type is not None:
            object.__setattr__(self, "layer_type", LayerType.parse(self.layer_type))
        object.__setattr__(self, "precision", DType.parse(self.precision))
        object.__setattr__(self, "conversion_strategy", _optional_strategy(self.conversion_strategy))
        overrides = {ComponentType.parse(c): o for c, o in self.component_overrides.items()}
        object.__setattr__(self, "component_overrides", MappingProxyType(overrides))

    @property
    def setting(self) -> ComponentPrecisionConfig:
        """The entry's own precision and knobs, as they apply to any component that takes them."""
        return ComponentPrecisionConfig(self.precision, self.layout, self.conversion_strategy)

    def with_component_override(
        self,
        component: ComponentType | str,
        precision: DType | str,
        *,
        layout: WeightLayout | None = None,
        conversion_strategy: ConversionStrategy | str | None = None,
    ) -> LayerPrecisionConfig:
        override = ComponentPrecisionConfig(
            DType.parse(precision), layout or WeightLayout(), _optional_strategy(conversion_strategy)
        )
        overrides = {**self.component_overrides, ComponentType.parse(component): override}
        return replace(self, component_overrides=overrides)
