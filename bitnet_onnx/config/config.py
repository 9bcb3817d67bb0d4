"""Mixed-precision configuration: which precision each component of each layer gets, and why.

A `MixedPrecisionConfig` answers one question, `resolve(layer_name, layer_type, component)`, with a
`Resolution`: the precision, the knobs that shape its conversion (group size, zero points, ternary
scale granularity, rule and packing, conversion strategy) and the `source` naming the level that decided.

Resolution order; the first level that applies wins:

1. the entry of `layers` whose key is exactly the layer's name: its override for the component
   (source `layer:NAME/COMPONENT`), then its own precision (`layer:NAME`);
2. the entries of `layers` whose key is a glob matching the name, most specific first, each with
   its component override before its precision (`glob:PATTERN/COMPONENT`, `glob:PATTERN`);
3. the layer-type default `layer_types[type]`, override then precision
   (`layer_type:TYPE/COMPONENT`, `layer_type:TYPE`);
4. the component default `components[component]` (`component:COMPONENT`);
5. the strategy default `default_precision` (`strategy:STRATEGY`).

So a component override beats its own entry's precision, and an exact entry (the most specific
statement about one layer) beats every glob, overrides included.

A level applies when it names a precision that the support matrix allows for the layer type and
component. An entry's precision is meant for the layer as a whole and decides only the components
that can take it: `LayerPrecisionConfig(LINEAR, BITNET158)` sets the weights and leaves the bias
(float only) and the activations (float or I8) to the levels below. The knobs come with the
precision from the level that decided; they are never mixed across levels. `validate()` rejects
settings that could never apply and checks that every layer type and component resolves, so
`resolve` always answers for a valid config.

Globs use `fnmatch` syntax, case-sensitive, and `*` also crosses dots. A key containing `*`, `?` or
`[` is a glob, any other key an exact name. Most specific first: more literal characters, then
fewer wildcards (`*`, `?` and a `[...]` class count one each), then the entry inserted first. For
`layers.0.mlp.up_proj`, `*.mlp.up_proj` (12 literal characters) beats `layers.*` (7). An entry's
`layer_type`, when not None, restricts a glob to layers of that type; on an exact name it must
agree with the layer's type (a mismatch is a ConfigError from `resolve`).

The presets (`conservative()`, `balanced()`, `aggressive()`) are data in `bitnet_onnx.config.presets`,
whose docstring has their tables; `new(CUSTOM)` starts empty with everything at F32.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from bitnet_onnx.config.entries import ComponentPrecisionConfig, LayerPrecisionConfig, MixedPrecisionStrategy
from bitnet_onnx.config.presets import PRESETS
from bitnet_onnx.core._schema import Problems, SchemaPath
from bitnet_onnx.core.dtypes import ConversionStrategy, DType, TernaryPacking, TernaryScale, WeightLayout
from bitnet_onnx.core.errors import ConfigError
from bitnet_onnx.core.layers import ComponentType, LayerType, SupportMatrix
from bitnet_onnx.core.plan import Resolution

if TYPE_CHECKING:
    from bitnet_onnx.config.policy import PrecisionPolicy

__all__ = [
    "ComponentPrecisionConfig",
    "LayerPrecisionConfig",
    "MixedPrecisionConfig",
    "MixedPrecisionStrategy",
    "fit_layout",
]

_GLOB_CHARS = frozenset("*?[")
_GROUPED = frozenset({DType.I8, DType.I4, DType.I2, DType.I1})  # group-wise integer formats
_ZERO_POINT = frozenset({DType.I8, DType.I4, DType.I2})  # asymmetric needs bits >= 2


@dataclass(frozen=True, eq=False)
class MixedPrecisionConfig:
    """Strategy, defaults, per-layer entries, support matrix and policies. Immutable: every
    `with_*` method returns a new config. Equality compares `layers` in order, since insertion
    order breaks ties between equally specific globs."""

    strategy: MixedPrecisionStrategy
    default_precision: DType
    layer_types: Mapping[LayerType, LayerPrecisionConfig] = field(default_factory=dict)
    components: Mapping[ComponentType, ComponentPrecisionConfig] = field(default_factory=dict)
    layers: Mapping[str, LayerPrecisionConfig] = field(default_factory=dict)  # names and globs, in order
    support: SupportMatrix = field(default_factory=SupportMatrix)
    policies: tuple[PrecisionPolicy, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "strategy", MixedPrecisionStrategy.parse(self.strategy))
        object.__setattr__(self, "default_precision", DType.parse(self.default_precision))
        object.__setattr__(
            self,
            "layer_types",
            MappingProxyType({LayerType.parse(t): c for t, c in self.layer_types.items()}),
        )
        object.__setattr__(
            self,
            "components",
            MappingProxyType({ComponentType.parse(c): v for c, v in self.components.items()}),
        )
        object.__setattr__(self, "layers", MappingProxyType(dict(self.layers)))
        object.__setattr__(self, "policies", tuple(self.policies))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MixedPrecisionConfig):
            return NotImplemented
        return self._identity() == other._identity()

    __hash__ = None  # type: ignore[assignment]  # mappings inside are not hashable

    def _identity(self) -> tuple[Any, ...]:
        return (
            self.strategy,
            self.default_precision,
            dict(self.layer_types),
            dict(self.components),
            list(self.layers.items()),
            self.support,
            self.policies,
        )

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def new(cls, strategy: MixedPrecisionStrategy | str) -> MixedPrecisionConfig:
        """The preset of `strategy` (CUSTOM: no defaults beyond F32 everywhere)."""
        preset = PRESETS[MixedPrecisionStrategy.parse(strategy)]
        return cls(preset.strategy, preset.default_precision, preset.layer_types, preset.components)

    @classmethod
    def conservative(cls) -> MixedPrecisionConfig:
        return cls.new(MixedPrecisionStrategy.CONSERVATIVE)

    @classmethod
    def balanced(cls) -> MixedPrecisionConfig:
        return cls.new(MixedPrecisionStrategy.BALANCED)

    @classmethod
    def aggressive(cls) -> MixedPrecisionConfig:
        return cls.new(MixedPrecisionStrategy.AGGRESSIVE)

    def with_layer_config(self, name_or_glob: str, config: LayerPrecisionConfig) -> MixedPrecisionConfig:
        """Add (or replace, keeping its place in the order) the entry for a layer name or glob."""
        return replace(self, layers={**self.layers, name_or_glob: config})

    def with_layer_type_config(self, config: LayerPrecisionConfig) -> MixedPrecisionConfig:
        """Set the default of `config.layer_type`."""
        if config.layer_type is None:
            raise ConfigError("a layer-type default needs a layer_type; got LayerPrecisionConfig(None, ...)")
        return replace(self, layer_types={**self.layer_types, config.layer_type: config})

    def with_component_config(
        self, component: ComponentType | str, config: ComponentPrecisionConfig
    ) -> MixedPrecisionConfig:
        return replace(self, components={**self.components, ComponentType.parse(component): config})

    def with_default_precision(self, precision: DType | str) -> MixedPrecisionConfig:
        return replace(self, default_precision=DType.parse(precision))

    def with_support(self, support: SupportMatrix) -> MixedPrecisionConfig:
        return replace(self, support=support)

    def with_policy(self, policy: PrecisionPolicy) -> MixedPrecisionConfig:
        return replace(self, policies=(*self.policies, policy))

    # -- resolution ---------------------------------------------------------------------------

    def resolve(
        self, layer_name: str, layer_type: LayerType | str, component: ComponentType | str
    ) -> Resolution:
        """The precision of `component` in the layer `layer_name` of type `layer_type`."""
        layer_type = LayerType.parse(layer_type)
        component = ComponentType.parse(component)
        for source, setting in self._candidates(layer_name, layer_type, component):
            if self.support.allows(layer_type, component, setting.precision):
                return Resolution(setting.precision, source, setting.layout, setting.conversion_strategy)
        raise ConfigError(
            f"layer {layer_name!r} ({layer_type.value}): no configured precision is allowed for its "
            f"{component.value} (allowed: {_names(self.support.allowed(layer_type, component))}); "
            f"add a layer_types entry for {layer_type.value} or change default_precision"
        )

    def _candidates(
        self, name: str, layer_type: LayerType, component: ComponentType
    ) -> Iterator[tuple[str, ComponentPrecisionConfig]]:
        exact = None if _is_glob(name) else self.layers.get(name)
        if exact is not None:
            if exact.layer_type not in (None, layer_type):
                raise ConfigError(
                    f"layer {name!r} is a {layer_type.value} layer but layers[{name!r}] is written for "
                    f"{exact.layer_type.value}; fix its layer_type or remove it"
                )
            yield from _entry_candidates(f"layer:{name}", exact, component)
        for pattern in self._globs_by_specificity:
            entry = self.layers[pattern]
            if entry.layer_type in (None, layer_type) and fnmatch.fnmatchcase(name, pattern):
                yield from _entry_candidates(f"glob:{pattern}", entry, component)
        type_entry = self.layer_types.get(layer_type)
        if type_entry is not None:
            yield from _entry_candidates(f"layer_type:{layer_type.value}", type_entry, component)
        component_entry = self.components.get(component)
        if component_entry is not None:
            yield f"component:{component.value}", component_entry
        yield f"strategy:{self.strategy.value}", ComponentPrecisionConfig(self.default_precision)

    @functools.cached_property
    def _globs_by_specificity(self) -> tuple[str, ...]:
        ranked = []
        for order, key in enumerate(self.layers):
            shape = _glob_shape(key) if isinstance(key, str) and _is_glob(key) else None
            if isinstance(shape, tuple):  # a bad glob is a validation problem, never a match
                literal, wild = shape
                ranked.append(((-literal, wild, order), key))
        return tuple(key for _, key in sorted(ranked))

    # -- validation ---------------------------------------------------------------------------

    def validate(self) -> None:
        """Raise one ConfigError listing every problem (see `collect_problems`)."""
        problems = Problems()
        self.collect_problems(problems)
        problems.raise_if_any()

    def collect_problems(self, problems: Problems) -> None:
        """Record every problem under the path its setting has in a config file: support rows,
        settings the support matrix never allows, bad knobs, bad globs, layer types or components
        that resolve to nothing, and the policies' own problems."""
        support_ok = self._check_support(problems)
        before = len(problems)
        for layer_type, entry in self.layer_types.items():
            path: SchemaPath = ("layer_types", layer_type.value)
            if entry.layer_type is not layer_type:
                got = entry.layer_type.value if entry.layer_type else None
                problems.add((*path, "layer_type"), f"must be {layer_type.value!r} (the key), not {got!r}")
            if support_ok:
                self._check_entry(problems, path, entry)
        for component, setting in self.components.items():
            path = ("components", component.value)
            if support_ok:
                allowed = _union(self.support.allowed(t, component) for t in LayerType)
                if setting.precision not in allowed:
                    problems.add(
                        (*path, "precision"),
                        f"{setting.precision.name} is not allowed for {component.value} in any layer type "
                        f"(allowed: {_names(allowed)})",
                    )
            _check_knobs(problems, path, setting)
        # A gap in the defaults is reported only when the defaults themselves are sound, so a
        # wrong default is not reported a second time as its consequence.
        if support_ok and len(problems) == before:
            self._check_totality(problems)
        for key, entry in self.layers.items():
            path = ("layers", key)
            if not isinstance(key, str):
                problems.add(("layers",), f"key {key!r} must be a string (a layer name or glob)")
                continue
            shape = _glob_shape(key) if _is_glob(key) else _name_problem(key)
            if isinstance(shape, str):
                problems.add(path, shape)
            if support_ok:
                self._check_entry(problems, path, entry)
        seen: dict[str, int] = {}
        for i, policy in enumerate(self.policies):
            if isinstance(policy.id, str):  # any other id is the policy's own problem, reported below
                if policy.id in seen:
                    problems.add(
                        ("policies", i, "id"),
                        f"duplicate policy id {policy.id!r} (also policies[{seen[policy.id]}])",
                    )
                seen.setdefault(policy.id, i)
            policy.collect_problems(problems, ("policies", i), self.support if support_ok else None)

    def _check_support(self, problems: Problems) -> bool:
        ok = True
        for what, rows, keys in (
            ("layers", self.support.layers, LayerType),
            ("components", self.support.components, ComponentType),
        ):
            for key in keys:
                row = rows.get(key)
                if row is None:
                    ok = False
                    problems.add(("support", what), f"no row for {key.value}; every {what[:-1]} needs one")
                elif not row or not all(isinstance(d, DType) for d in row):
                    ok = False
                    problems.add(("support", what, key.value), "must be a non-empty list of precisions")
        return ok

    def _check_entry(self, problems: Problems, path: SchemaPath, entry: LayerPrecisionConfig) -> None:
        types = [entry.layer_type] if entry.layer_type is not None else list(LayerType)
        where = f"{entry.layer_type.value} layers" if entry.layer_type is not None else "any layer type"
        allowed = _union(self.support.allowed(t, c) for t in types for c in ComponentType)
        if entry.precision not in allowed:
            problems.add(
                (*path, "precision"),
                f"{entry.precision.name} is not allowed for {where} (allowed: {_names(allowed)})",
            )
        _check_knobs(problems, path, entry.setting)
        for component, override in entry.component_overrides.items():
            opath = (*path, "components", component.value)
            allowed = _union(self.support.allowed(t, component) for t in types)
            if override.precision not in allowed:
                problems.add(
                    opath,
                    f"{override.precision.name} is not allowed for {component.value} of {where} "
                    f"(allowed: {_names(allowed)})",
                )
            _check_knobs(problems, opath, override)

    def _check_totality(self, problems: Problems) -> None:
        defaults_only = replace(self, layers={}, policies=())
        for layer_type in LayerType:
            stuck = []
            for component in ComponentType:
                candidates = defaults_only._candidates("", layer_type, component)
                if not any(self.support.allows(layer_type, component, s.precision) for _, s in candidates):
                    stuck.append(component.value)
            if stuck:
                problems.add(
                    ("default_precision",),
                    f"{layer_type.value} layers get no allowed precision for {', '.join(stuck)}: neither "
                    f"layer_types.{layer_type.value}, the component defaults nor default_precision "
                    f"{self.default_precision.name} is allowed there; add a layer_types entry for "
                    f"{layer_type.value} or a component default",
                )


def _entry_candidates(
    source: str, entry: LayerPrecisionConfig, component: ComponentType
) -> Iterator[tuple[str, ComponentPrecisionConfig]]:
    override = entry.component_overrides.get(component)
    if override is not None:
        yield f"{source}/{component.value}", override
    yield source, entry.setting


def _check_knobs(problems: Problems, path: SchemaPath, setting: ComponentPrecisionConfig) -> None:
    dtype, layout = setting.precision, setting.layout
    group = layout.group_size
    if group is not None:
        if not isinstance(group, int) or isinstance(group, bool) or group <= 0:
            problems.add((*path, "group_size"), f"must be a positive integer, not {group!r}")
        elif dtype not in _GROUPED:
            problems.add((*path, "group_size"), f"applies to I8, I4, I2 and I1 only, not {dtype.name}")
        elif group * dtype.bits % 8:
            problems.add(
                (*path, "group_size"),
                f"{group} × {dtype.bits} bits is not a whole number of bytes; with {dtype.name} use a "
                f"multiple of {8 // dtype.bits} (e.g. 32, 64, 128)",
            )
    if not isinstance(layout.asymmetric, bool):
        problems.add((*path, "asymmetric"), f"must be true or false, not {layout.asymmetric!r}")
    elif layout.asymmetric and dtype not in _ZERO_POINT:
        problems.add((*path, "asymmetric"), f"zero points apply to I8, I4 and I2 only, not {dtype.name}")
    elif layout.asymmetric and setting.conversion_strategy is ConversionStrategy.DIRECT:
        problems.add(
            (*path, "asymmetric"),
            "DIRECT conversion stores raw values with no zero point; use another conversion_strategy "
            "or drop asymmetric",
        )
    if not isinstance(layout.per_channel, bool):
        problems.add((*path, "per_channel"), f"must be true or false, not {layout.per_channel!r}")
    elif layout.per_channel and dtype is not DType.BITNET158:
        problems.add(
            (*path, "per_channel"), f"per-channel ternary scales apply to BITNET158 only, not {dtype.name}"
        )
    if not isinstance(layout.packing, TernaryPacking):
        problems.add((*path, "packing"), f"must be a TernaryPacking, not {layout.packing!r}")
    elif layout.packing is not TernaryPacking.TWO_BIT and dtype is not DType.BITNET158:
        problems.add((*path, "packing"), f"ternary packing applies to BITNET158 only, not {dtype.name}")
    if not isinstance(layout.ternary_scale, TernaryScale):
        problems.add((*path, "ternary_scale"), f"must be a TernaryScale, not {layout.ternary_scale!r}")
    elif layout.ternary_scale is not TernaryScale.ABSMEAN and dtype is not DType.BITNET158:
        problems.add(
            (*path, "ternary_scale"), f"the ternary scale rule applies to BITNET158 only, not {dtype.name}"
        )


def fit_layout(dtype: DType, layout: WeightLayout) -> WeightLayout:
    """`layout` with every knob that does not apply to `dtype` back at its default (used when a
    policy moves a component to another precision and its knobs come along)."""
    group = layout.group_size
    fits_group = dtype in _GROUPED and isinstance(group, int) and group > 0 and group * dtype.bits % 8 == 0
    ternary = dtype is DType.BITNET158
    return WeightLayout(
        group_size=group if fits_group else None,
        asymmetric=layout.asymmetric and dtype in _ZERO_POINT,
        per_channel=layout.per_channel and ternary,
        packing=layout.packing if ternary else TernaryPacking.TWO_BIT,
        ternary_scale=layout.ternary_scale if ternary else TernaryScale.ABSMEAN,
    )


def _is_glob(key: str) -> bool:
    return any(ch in _GLOB_CHARS for ch in key)


def _name_problem(key: str) -> str | None:
    if not key.strip():
        return "a layer name or glob must not be empty"
    if key != key.strip():
        return "has leading or trailing spaces"
    return None


@functools.lru_cache(maxsize=1024)
def _glob_shape(pattern: str) -> tuple[int, int] | str:
    """(literal characters, wildcards) of a glob, or what is wrong with it."""
    problem = _name_problem(pattern)
    if problem:
        return problem
    literal = wild = i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch in "*?":
            wild += 1
            i += 1
        elif ch == "[":
            j = i + 1
            if j < len(pattern) and pattern[j] == "!":
                j += 1
            if j < len(pattern) and pattern[j] == "]":
                j += 1  # a leading ] is a member, as in fnmatch
            close = pattern.find("]", j)
            if close < 0:
                return f"unclosed '[' at position {i} in glob {pattern!r}; close it or escape it as '[[]'"
            wild += 1
            i = close + 1
        else:
            literal += 1
            i += 1
    return literal, wild


def _union(sets: Iterable[frozenset[DType]]) -> frozenset[DType]:
    return frozenset().union(*sets)


def _names(dtypes: frozenset[DType] | set[DType]) -> str:
    return ", ".join(d.name for d in sorted(dtypes, key=DType.rank, reverse=True)) or "nothing"
