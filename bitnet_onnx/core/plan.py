"""The precision plan: for every layer, the decision for each of its components, and the types a
decision is made of (the config's `Resolution`, the policies' `Conflict`s).

`assign_precision` builds it from the config and the policies; the optimizer may replace decisions;
`rewrite` realises it in the graph; `validate` reads it back from the compiled graph and compares.
The validation rules (`config.validation`) judge `PlannedLayer`s: a layer's plan with the shapes
that counting its stored bytes needs; the seed's `LayerPrecisionSpec` is an adapter to and from it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from types import MappingProxyType

from bitnet_onnx.core.dtypes import ConversionStrategy, DType, WeightLayout, storage_bytes
from bitnet_onnx.core.layers import ComponentType, Layer, LayerType

__all__ = [
    "Conflict",
    "Decision",
    "LayerPlan",
    "PlannedLayer",
    "Resolution",
    "component_settings",
    "components_of",
]

# Decision fields that say why, not how: every other field (and every field of a dataclass-valued
# one, such as the layout) is a setting of the component, so a knob added to them is shown as is.
_WHY = frozenset(["dtype", "source", "overrode", "explanation", "conflicts", "origin"])


@dataclass(frozen=True)
class Resolution:
    """A resolved precision, its knobs and the level that decided it. `str()` gives
    `layer_type:linear→BITNET158`, the form pass logs use for what a decision overrode."""

    dtype: DType
    source: str
    layout: WeightLayout = field(default_factory=WeightLayout)
    conversion_strategy: ConversionStrategy | None = None  # None: the converter's default

    def __str__(self) -> str:
        return f"{self.source}→{self.dtype.name}"


@dataclass(frozen=True)
class Conflict:
    """A lower-ranked policy that matched too but wanted a different outcome."""

    policy_id: str
    rule_id: str
    priority: int
    dtype: DType
    conversion_strategy: ConversionStrategy | None

    def __str__(self) -> str:
        strategy = f" ({self.conversion_strategy.value})" if self.conversion_strategy is not None else ""
        who = f"policy {self.policy_id!r} rule {self.rule_id!r} (priority {self.priority})"
        return f"{who} wanted {self.dtype.name}{strategy}"


@dataclass(frozen=True)
class Decision:
    """The final precision of one component of one layer, and why.

    `source` is `policy:POLICY/RULE` or, when no policy decided, the config's source. `overrode` is
    the config resolution a policy replaced (None when none did); `origin` is the deciding rule's
    file and line when it came from a config file. `explanation` is one line for logs.
    """

    dtype: DType
    source: str
    layout: WeightLayout
    conversion_strategy: ConversionStrategy | None
    overrode: Resolution | None
    explanation: str
    conflicts: tuple[Conflict, ...] = ()
    origin: str | None = None

    @classmethod
    def of_config(cls, resolution: Resolution) -> Decision:
        """The config's resolution as the decision, no policy involved."""
        return cls(
            resolution.dtype,
            resolution.source,
            resolution.layout,
            resolution.conversion_strategy,
            None,
            f"config {resolution}",
        )


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


@dataclass(frozen=True)
class PlannedLayer:
    """One layer of a plan as the validation rules see it: its `LayerPlan` and, beside it, the
    shapes its stored bytes are counted with. `weight_shape` is [rows, K] for a matrix (K, the
    reduction axis, last, as groups run along it); `bias_shape` is set only when the layer has a
    bias. Without a shape (or a decision) the component stores 0 bytes."""

    plan: LayerPlan
    weight_shape: tuple[int, ...] | None = None
    bias_shape: tuple[int, ...] | None = None

    @property
    def name(self) -> str:
        return self.plan.layer.name

    @property
    def layer_type(self) -> LayerType:
        return self.plan.layer.layer_type

    def dtype(self, component: ComponentType) -> DType | None:
        return self.plan.dtype(component)

    def memory_bytes(self) -> int:
        """Bytes the layer stores: its weights (in their decision's layout, scales and zero points
        included) and its bias."""
        total = 0
        for component, shape in (
            (ComponentType.WEIGHTS, self.weight_shape),
            (ComponentType.BIAS, self.bias_shape),
        ):
            decision = self.plan.decisions.get(component)
            if decision is not None and shape is not None:
                total += storage_bytes(decision.dtype, shape, decision.layout)
        return total


def _plain(value: object) -> str | int | float | bool | None:
    return value.value if isinstance(value, enum.Enum) else value  # type: ignore[return-value]


def component_settings(decision: Decision) -> dict[str, str | int | float | bool | None]:
    """How one component is realised, as plain values: `precision`, each knob of the decision
    (the layout's fields flattened, the conversion strategy; None where the converter picks), and
    `rule`, the source that decided it."""
    settings: dict[str, str | int | float | bool | None] = {"precision": decision.dtype.name}
    for f in fields(decision):
        if f.name in _WHY:
            continue
        value = getattr(decision, f.name)
        if is_dataclass(value) and not isinstance(value, type):
            settings.update({g.name: _plain(getattr(value, g.name)) for g in fields(value)})
        else:
            settings[f.name] = _plain(value)
    settings["rule"] = decision.source
    return settings
