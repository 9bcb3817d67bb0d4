"""Per-layer precision specs and the manager that holds them, checks them and trims their memory.

A `LayerPrecisionSpec` says, for one layer, which precision each component is stored or computed
in: WEIGHTS use `weight_precision`, ACTIVATIONS (the layer's input) `input_precision`, OUTPUTS
`output_precision`, and BIAS `bias_precision`. The bias is added to the output in float before the
output is handed on, so it defaults to `output_precision` when that is a float, and to F32 (what
the kernels take) when the output is handed on quantized (I8, as in the seed's layer specs).
GRADIENTS may be recorded for parity with the seed design but inference graphs have none, so
asking a spec for them is an error.

A spec is the seed's spelling of one layer of a precision plan, not a second model of it:
`to_plan(index)` gives the plan's type (`core.plan.PlannedLayer`: the layer's `LayerPlan`, one
decision per component the spec states, with its weight and bias shapes), which is what the
validation rules judge; `of_plan(planned, support)` reads a plan's layer back as a spec.

Memory is what a layer stores: its weights and its bias, counted exactly by
`dtypes.storage_bytes` with the spec's `WeightLayout`. Activations and outputs are transient and
depend on the batch, so they are not counted. A spec without `weight_shape` stores no weights.

`LayerPrecisionManager.optimize_for_memory` proposes precision drops until a target fraction of the
stored bytes is saved. It only moves specs registered with dynamic adjustment (every other spec is
pinned and never moved), only to precisions the support matrix allows, and only down the precision
ladder (`DType.rank`). It is a deterministic greedy: every stored component of a movable layer
offers one move, to the nearest lower allowed precision that stores fewer bytes; the move saving the
most bytes per ladder step lost is taken first (ties: fewer steps, then registration order, then
weights before bias), and the component then offers its next move. It stops as soon as the target is
reached, so the last move overshoots by at most one rung of one component. When every move is used
up first, the result says so (`feasible` is False, `reason` why) and still carries the largest
saving found. A movable spec of a type that stores weights (linear, convolution, embedding, output)
without `weight_shape` is an error naming it: its bytes would count as 0 and the plan come back
empty.
"""

from __future__ import annotations

import difflib
import heapq
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from fractions import Fraction

from bitnet_onnx.core.dtypes import ConversionStrategy, DType, WeightLayout, storage_bytes
from bitnet_onnx.core.errors import ConfigError
from bitnet_onnx.core.layers import ComponentType, Layer, LayerType, SupportMatrix
from bitnet_onnx.core.plan import Decision, LayerPlan, PlannedLayer

__all__ = [
    "LayerPrecisionManager",
    "LayerPrecisionSpec",
    "MemoryOptimization",
    "MemoryOptimizationResult",
    "require_weight_shapes",
]

logger = logging.getLogger(__name__)

# Components a layer stores (the only ones memory optimization can shrink), in tie-break order.
_STORED = (ComponentType.WEIGHTS, ComponentType.BIAS)
# Components a registered spec must satisfy the support matrix for (gradients are never used).
_CHECKED = (ComponentType.WEIGHTS, ComponentType.BIAS, ComponentType.ACTIVATIONS, ComponentType.OUTPUTS)
# Layer types that always store a weight: a spec of one without weight_shape cannot be counted.
_WEIGHTED = frozenset([LayerType.LINEAR, LayerType.CONVOLUTION, LayerType.EMBEDDING, LayerType.OUTPUT])


def require_weight_shapes(specs: Iterable[LayerPrecisionSpec], needed_for: str) -> None:
    """ConfigError naming every spec of a weighted layer type (linear, convolution, embedding,
    output) without `weight_shape`: its bytes and its precision choices cannot be known, and
    `needed_for` (e.g. "optimize_for_memory") would otherwise work on zero bytes without a word."""
    missing = [spec.name for spec in specs if spec.layer_type in _WEIGHTED and spec.weight_shape is None]
    if missing:
        raise ConfigError(
            f"{needed_for} needs the weight shapes of {', '.join(repr(n) for n in missing)}, "
            f"{'a layer' if len(missing) == 1 else 'layers'} of a type that stores weights; register "
            "LayerPrecisionSpec(..., weight_shape=(rows, K), bias_shape=(rows,) when it has a bias)"
        )


def _shape(value: tuple[int, ...] | None, what: str, layer: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    shape = tuple(value)
    if not shape or any(not isinstance(d, int) or isinstance(d, bool) or d <= 0 for d in shape):
        raise ConfigError(
            f"layer {layer!r}: {what} {value!r} must be a non-empty tuple of positive integers, "
            "e.g. (4096, 4096)"
        )
    return shape


@dataclass(frozen=True)
class LayerPrecisionSpec:
    """The precisions of one layer's components, plus what is needed to count its bytes.

    `weight_shape` is [rows, K] for a matrix (K, the reduction axis, last, as groups run along it);
    `bias_shape` is given only when the layer has a bias. `dynamic_adjustment` lets an optimizer
    move this layer's precisions; a spec without it is pinned. `conversion_strategy` is how its
    weights are converted (the plan's weights decision carries it; gptq is an optimizer choice).
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
    conversion_strategy: ConversionStrategy | None = None  # the weights'; None: the converter's default

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

    @classmethod
    def of_plan(cls, planned: PlannedLayer, support: SupportMatrix) -> LayerPrecisionSpec:
        """The spec of one layer of a plan (the inverse of `to_plan` for the components the plan
        decides). The plan decides only the components the layer has; a spec states all four, so a
        missing one takes a placeholder the matrix allows (the layer's own weights or activations
        precision when allowed, else the most precise)."""
        plan, layer = planned.plan, planned.plan.layer

        def precision(component: ComponentType, *fallbacks: ComponentType) -> DType:
            own = plan.dtype(component)
            if own is not None:
                return own
            allowed = support.allowed(layer.layer_type, component)
            for other in fallbacks:
                candidate = plan.dtype(other)
                if candidate is not None and candidate in allowed:
                    return candidate
            return max(allowed, key=DType.rank)

        weights = plan.decisions.get(ComponentType.WEIGHTS)
        return cls(
            name=layer.name,
            layer_type=layer.layer_type,
            input_precision=precision(
                ComponentType.ACTIVATIONS, ComponentType.WEIGHTS, ComponentType.OUTPUTS
            ),
            output_precision=precision(ComponentType.OUTPUTS, ComponentType.ACTIVATIONS),
            weight_precision=precision(
                ComponentType.WEIGHTS, ComponentType.ACTIVATIONS, ComponentType.OUTPUTS
            ),
            bias_precision=plan.dtype(ComponentType.BIAS),
            gradient_precision=plan.dtype(ComponentType.GRADIENTS),
            weight_shape=planned.weight_shape,
            bias_shape=planned.bias_shape,
            layout=weights.layout if weights is not None else WeightLayout(),
            conversion_strategy=weights.conversion_strategy if weights is not None else None,
        )

    def layer(self, index: int) -> Layer:
        """The `Layer` this spec stands for at position `index` of a model (weights stored as its
        `weight_shape`, rows first)."""
        return Layer(
            self.name,
            self.layer_type,
            index,
            (self.name,),
            "registered",
            weight=f"{self.name}.weight" if self.weight_shape is not None else None,
            weight_shape=self.weight_shape,
            bias=f"{self.name}.bias" if self.bias_shape is not None else None,
            weight_nk=True if self.weight_shape is not None and len(self.weight_shape) == 2 else None,
        )

    def to_plan(self, index: int = 0) -> PlannedLayer:
        """This spec as a layer of a plan: a decision (source `spec:NAME`) for each of the four
        inference components, the bias at `precision_for`'s default when the spec sets none, and the
        gradients when recorded; the weights in the spec's layout."""
        source = f"spec:{self.name}"
        decided = {c: self.precision_for(c) for c in _CHECKED}
        if self.gradient_precision is not None:
            decided[ComponentType.GRADIENTS] = self.gradient_precision
        decisions = {
            c: Decision(
                dtype,
                source,
                self.layout if c is ComponentType.WEIGHTS else WeightLayout(),
                self.conversion_strategy if c is ComponentType.WEIGHTS else None,
                None,
                f"{c.value} {dtype.name} by the registered spec {self.name!r}",
            )
            for c, dtype in decided.items()
        }
        return PlannedLayer(LayerPlan(self.layer(index), decisions), self.weight_shape, self.bias_shape)

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
            return self.bias_precision or self._default_bias_precision
        raise ConfigError(
            f"layer {self.name!r}: the gradients component is not applicable to inference graphs; "
            "ask for weights, bias, activations or outputs"
        )

    @property
    def _default_bias_precision(self) -> DType:
        return self.output_precision if self.output_precision.is_float else DType.F32

    def with_component_precision(
        self, component: ComponentType | str, dtype: DType | str
    ) -> LayerPrecisionSpec:
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


@dataclass(frozen=True)
class MemoryOptimization:
    """One proposed change: store `component` of `layer` in `to_dtype` instead of `from_dtype`."""

    layer: str
    component: ComponentType
    from_dtype: DType
    to_dtype: DType
    bytes_before: int
    bytes_after: int

    @property
    def bytes_saved(self) -> int:
        return self.bytes_before - self.bytes_after


@dataclass(frozen=True)
class MemoryOptimizationResult:
    """The proposals of `optimize_for_memory` and what they achieve. Iterates over the proposals,
    so it can be handed to `apply_optimizations` as is."""

    proposals: tuple[MemoryOptimization, ...]
    target_reduction: float
    bytes_before: int
    bytes_after: int
    reason: str = ""  # why the target is not reached; empty when it is

    @property
    def bytes_saved(self) -> int:
        return self.bytes_before - self.bytes_after

    @property
    def achieved_reduction(self) -> float:
        """Fraction of the stored bytes saved (0.0 when nothing is stored)."""
        return self.bytes_saved / self.bytes_before if self.bytes_before else 0.0

    @property
    def feasible(self) -> bool:
        return self.achieved_reduction >= self.target_reduction

    def __iter__(self) -> Iterator[MemoryOptimization]:
        return iter(self.proposals)

    def __len__(self) -> int:
        return len(self.proposals)


def _ladder_desc(dtypes: Iterable[DType]) -> str:
    return ", ".join(d.name for d in sorted(dtypes, key=DType.rank, reverse=True))


class LayerPrecisionManager:
    """Holds the precision specs of a model's layers, in registration order, keyed by unique name.

    Every spec is checked against `support_matrix` when it enters (registration or an applied
    optimization), so the manager never holds a combination the matrix forbids.
    """

    def __init__(self, support_matrix: SupportMatrix | None = None) -> None:
        self.support_matrix = support_matrix or SupportMatrix()
        self._specs: dict[str, LayerPrecisionSpec] = {}

    def register_layer(self, spec: LayerPrecisionSpec) -> None:
        """Add `spec`; a name already registered, or a precision the matrix forbids, raises ConfigError."""
        problems = []
        if spec.name in self._specs:
            problems.append(
                f"layer {spec.name!r} is already registered; unregister it first or choose another name"
            )
        problems += self._support_problems(spec)
        if problems:
            raise ConfigError(problems)
        self._specs[spec.name] = spec
        logger.debug("registered layer %s", spec.name)

    def unregister(self, name: str) -> None:
        self.get_layer(name)
        del self._specs[name]

    def get_layer(self, name: str) -> LayerPrecisionSpec:
        """The spec registered as `name`; an unknown name raises ConfigError with the closest names."""
        spec = self._specs.get(name)
        if spec is not None:
            return spec
        close = difflib.get_close_matches(name, list(self._specs), n=3)
        hint = (
            f"did you mean {', '.join(repr(c) for c in close)}?"
            if close
            else "register it with register_layer"
        )
        raise ConfigError(f"unknown layer {name!r} ({len(self._specs)} registered); {hint}")

    def layers(self) -> tuple[LayerPrecisionSpec, ...]:
        """Every spec, in registration order."""
        return tuple(self._specs.values())

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __len__(self) -> int:
        return len(self._specs)

    def memory_bytes(self) -> int:
        """Bytes all layers store (weights and biases, with scales and zero points)."""
        return sum(spec.memory_bytes() for spec in self._specs.values())

    def memory_by_layer(self) -> dict[str, int]:
        """Bytes each layer stores, in registration order."""
        return {name: spec.memory_bytes() for name, spec in self._specs.items()}

    def optimize_for_memory(self, target_reduction: float) -> MemoryOptimizationResult:
        """Propose precision drops saving at least `target_reduction` of the stored bytes (see the
        module docstring for the greedy). Nothing is changed until `apply_optimizations`."""
        if not 0.0 <= target_reduction <= 1.0:
            raise ConfigError(
                f"target_reduction {target_reduction!r} must be a fraction between 0 and 1, e.g. 0.5"
            )
        require_weight_shapes(
            (spec for spec in self._specs.values() if spec.dynamic_adjustment), "optimize_for_memory"
        )
        before = self.memory_bytes()
        goal = target_reduction * before
        current: dict[tuple[str, ComponentType], DType] = {}
        heap: list[tuple[Fraction, int, int, int, str, ComponentType, DType]] = []
        for index, spec in enumerate(self._specs.values()):
            if not spec.dynamic_adjustment:
                continue
            for order, component in enumerate(_STORED):
                if spec.component_bytes(component) > 0:
                    current[spec.name, component] = spec.precision_for(component)
                    self._push_next_move(heap, spec, component, current[spec.name, component], index, order)
        saved = 0
        while heap and saved < goal:
            _, _, index, order, name, component, to_dtype = heapq.heappop(heap)
            spec = self._specs[name]
            was = spec.component_bytes(component, current[name, component])
            saved += was - spec.component_bytes(component, to_dtype)
            current[name, component] = to_dtype
            self._push_next_move(heap, spec, component, to_dtype, index, order)
        proposals = []
        for (name, component), to_dtype in current.items():
            spec = self._specs[name]
            from_dtype = spec.precision_for(component)
            if to_dtype is not from_dtype:
                proposals.append(
                    MemoryOptimization(
                        name,
                        component,
                        from_dtype,
                        to_dtype,
                        spec.component_bytes(component),
                        spec.component_bytes(component, to_dtype),
                    )
                )
        movable = sum(spec.dynamic_adjustment for spec in self._specs.values())
        reached = (saved / before if before else 0.0) >= target_reduction
        reason = ""
        if not reached:
            if not before:
                reason = (
                    f"the {len(self._specs)} registered layer(s) store no bytes (no weight or bias shapes)"
                )
            elif not movable:
                reason = (
                    f"no layer may move: register specs with_dynamic_adjustment() ({len(self._specs)} "
                    "registered, all pinned)"
                )
            else:
                reason = (
                    f"every allowed lower precision of the {movable} movable layer(s) is used: best "
                    f"saving {saved} of {before} bytes"
                )
            logger.info("memory target %.3f not reachable: %s", target_reduction, reason)
        return MemoryOptimizationResult(tuple(proposals), target_reduction, before, before - saved, reason)

    def _push_next_move(
        self,
        heap: list,
        spec: LayerPrecisionSpec,
        component: ComponentType,
        dtype: DType,
        index: int,
        order: int,
    ) -> None:
        now = spec.component_bytes(component, dtype)
        allowed = self.support_matrix.allowed(spec.layer_type, component)
        for lower in sorted((d for d in allowed if d.rank() < dtype.rank()), key=DType.rank, reverse=True):
            after = spec.component_bytes(component, lower)
            if after < now:
                steps = dtype.rank() - lower.rank()
                heapq.heappush(
                    heap, (-Fraction(now - after, steps), steps, index, order, spec.name, component, lower)
                )
                return

    def apply_optimizations(self, proposals: Iterable[MemoryOptimization]) -> None:
        """Apply `proposals` in order, all or none. A proposal that no longer applies (unknown or
        pinned layer, precision or bytes changed since it was made, target now forbidden) raises
        ConfigError listing every such proposal."""
        updated = dict(self._specs)
        problems = []
        for p in proposals:
            spec = updated.get(p.layer)
            where = f"proposal {p.layer!r} {p.component.value} {p.from_dtype.name}->{p.to_dtype.name}"
            if spec is None:
                problems.append(f"{where}: layer is not registered")
                continue
            if not spec.dynamic_adjustment:
                problems.append(
                    f"{where}: layer is pinned; register it with_dynamic_adjustment() to let it move"
                )
                continue
            if (
                spec.precision_for(p.component) is not p.from_dtype
                or spec.component_bytes(p.component) != p.bytes_before
            ):
                problems.append(
                    f"{where}: stale, the layer now has {spec.precision_for(p.component).name} "
                    f"({spec.component_bytes(p.component)} bytes); run optimize_for_memory again"
                )
                continue
            moved = spec.with_component_precision(p.component, p.to_dtype)
            found = self._support_problems(moved)
            if found:
                problems += [f"{where}: {f}" for f in found]
                continue
            updated[p.layer] = moved
        if problems:
            raise ConfigError(problems)
        self._specs = updated

    def _support_problems(self, spec: LayerPrecisionSpec) -> list[str]:
        problems = []
        for component in _CHECKED:
            dtype = spec.precision_for(component)
            allowed = self.support_matrix.allowed(spec.layer_type, component)
            if dtype not in allowed:
                implicit = (
                    " (the default: the outputs' precision if float, else F32)"
                    if component is ComponentType.BIAS and spec.bias_precision is None
                    else ""
                )
                problems.append(
                    f"layer {spec.name!r} ({spec.layer_type.value}): {component.value} in "
                    f"{dtype.name}{implicit} is not supported; choose one of {_ladder_desc(allowed)}"
                )
        return problems
