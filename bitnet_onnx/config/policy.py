"""Precision policies: rules, written as data, that adjust a layer component's configured precision
from facts about the layer (type, name, position, size, weight statistics, measured sensitivity)
and about the model (memory use against a budget).

`PolicyEngine.decide(facts, component, current)` takes the config's `Resolution` for one component
of one layer and returns a `Decision`. Evaluation is deterministic:

1. Enabled policies are tried by `priority`, higher first; equal priorities keep insertion order.
2. In a policy, rules are tried in order. A rule matches when all its conditions hold (a rule with
   no conditions always matches). Its action must also apply to the component (below); if it does
   not, the rule is passed over (the explanation says so) and the next rule is tried. The first
   rule that matches and applies is the policy's outcome.
3. The first policy with an outcome decides: `source` is `policy:POLICY_ID/RULE_ID` and `overrode`
   is the config's resolution. Every later policy whose outcome differs (precision, layout or
   conversion strategy) is listed in `conflicts`, so the compiler can report it.
4. No outcome: the config's resolution stands and `overrode` is None.

Conditions (`PolicyCondition(type, operator, value, key=None)`) read one fact each:
LAYER_TYPE, COMPONENT (the component being decided), LAYER_NAME, LAYER_INDEX (0-based position in
the model; a value may be "first", "last" or negative, counted from the end), PARAMETER_COUNT,
MEMORY_USAGE (percent of the memory budget the model uses), WEIGHT_STATISTIC (`key` names one of
`WEIGHT_STATISTICS`, see `weight_statistics`) and SENSITIVITY (the measured error with the layer
alone in precision `key`, default the current precision). A fact that was not supplied (no memory
figure, a statistic or sensitivity missing from its map) makes the condition false. Operators:
EQUAL, NOT_EQUAL, IN, NOT_IN for every type; GREATER_THAN, GREATER_EQUAL, LESS_THAN, LESS_EQUAL
for numbers and LAYER_INDEX; MATCHES (fnmatch glob, case-sensitive), MATCHES_REGEX (full match),
CONTAINS, STARTS_WITH, ENDS_WITH for LAYER_NAME. Comparisons are exact.

Actions (`PolicyAction.set_precision(...)` etc.) and when they apply:
- SET_PRECISION(p): p must be allowed by the support matrix for the layer type and component.
- SET_COMPONENT_PRECISION(c, p): only when deciding component c; p must be allowed.
- KEEP_ORIGINAL: the model's own precision (`LayerFacts.original_dtype`), if allowed.
- RAISE_PRECISION(n), LOWER_PRECISION(n): n steps along the precision ladder (`DType.step`),
  counting only precisions the support matrix allows here (the others are skipped), clamped at
  the ends.
- SET_CONVERSION_STRATEGY(s): keeps the precision, sets the conversion strategy.
- SET_TERNARY_SCALE(r): keeps the precision, sets the ternary scale rule (`TernaryScale`: absmean,
  the γ BitNet b1.58 trains with, or least_squares, for ternarizing float weights after training);
  only when the current precision is BITNET158.
When an action changes the precision, the knobs of the current resolution come along, except
those that do not fit the new precision, which fall back to their defaults (`config.fit_layout`).

Policies are read from and written to the `policies:` section of a config file with
`PrecisionPolicy.from_dict` / `to_dict` (schema in `bitnet_onnx.config.config_file`).
"""

from __future__ import annotations

import enum
import fnmatch
import logging
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from bitnet_onnx.config.config import Resolution, fit_layout
from bitnet_onnx.core._schema import Problems, SchemaPath, describe_value, did_you_mean, parse_enum
from bitnet_onnx.core.dtypes import ConversionStrategy, DType, TernaryScale, WeightLayout
from bitnet_onnx.core.layers import ComponentType, LayerType, SupportMatrix

if TYPE_CHECKING:
    from bitnet_onnx.config.config import MixedPrecisionConfig

__all__ = [
    "WEIGHT_STATISTICS",
    "ActionKind",
    "ConditionOperator",
    "ConditionType",
    "ConditionValue",
    "Conflict",
    "Decision",
    "LayerFacts",
    "PolicyAction",
    "PolicyCondition",
    "PolicyEngine",
    "PolicyRule",
    "PrecisionPolicy",
    "weight_statistics",
]

logger = logging.getLogger(__name__)

WEIGHT_STATISTICS = ("absmax", "absmean", "mean", "std", "kurtosis", "outlier_ratio", "zero_fraction")
_OUTLIER_SIGMAS = 3.0
_CHUNK = 1 << 20  # elements per float64 chunk, so statistics of a big table stay cheap in memory

ConditionValue = Any
"""A condition's operand: a number, a string, a LayerType, a ComponentType, or for IN / NOT_IN a
tuple of those (a list is turned into a tuple)."""


class _ParsedEnum(enum.Enum):
    @classmethod
    def parse(cls, value: Any) -> Any:
        return parse_enum(cls, value, _ENUM_NOUNS[cls.__name__])


class ConditionType(_ParsedEnum):
    LAYER_TYPE = "layer_type"
    LAYER_NAME = "layer_name"
    LAYER_INDEX = "layer_index"
    PARAMETER_COUNT = "parameter_count"
    MEMORY_USAGE = "memory_usage"
    WEIGHT_STATISTIC = "weight_statistic"
    SENSITIVITY = "sensitivity"
    COMPONENT = "component"


class ConditionOperator(_ParsedEnum):
    EQUAL = "equal"
    NOT_EQUAL = "not_equal"
    GREATER_THAN = "greater_than"
    GREATER_EQUAL = "greater_equal"
    LESS_THAN = "less_than"
    LESS_EQUAL = "less_equal"
    IN = "in"
    NOT_IN = "not_in"
    MATCHES = "matches"
    MATCHES_REGEX = "matches_regex"
    CONTAINS = "contains"
    STARTS_WITH = "starts_with"
    ENDS_WITH = "ends_with"

    @property
    def symbol(self) -> str:
        return _SYMBOLS[self]


class ActionKind(_ParsedEnum):
    SET_PRECISION = "set_precision"
    SET_COMPONENT_PRECISION = "set_component_precision"
    KEEP_ORIGINAL = "keep_original"
    RAISE_PRECISION = "raise_precision"
    LOWER_PRECISION = "lower_precision"
    SET_CONVERSION_STRATEGY = "set_conversion_strategy"
    SET_TERNARY_SCALE = "set_ternary_scale"


_ENUM_NOUNS = {
    "ConditionType": "condition type",
    "ConditionOperator": "operator",
    "ActionKind": "action type",
}
_Op = ConditionOperator
_SYMBOLS = {
    _Op.EQUAL: "==", _Op.NOT_EQUAL: "!=", _Op.GREATER_THAN: ">", _Op.GREATER_EQUAL: ">=",
    _Op.LESS_THAN: "<", _Op.LESS_EQUAL: "<=", _Op.IN: "in", _Op.NOT_IN: "not in",
    _Op.MATCHES: "matches", _Op.MATCHES_REGEX: "matches regex", _Op.CONTAINS: "contains",
    _Op.STARTS_WITH: "starts with", _Op.ENDS_WITH: "ends with",
}  # fmt: skip
_MEMBERSHIP = (_Op.EQUAL, _Op.NOT_EQUAL, _Op.IN, _Op.NOT_IN)
_ORDER = (_Op.GREATER_THAN, _Op.GREATER_EQUAL, _Op.LESS_THAN, _Op.LESS_EQUAL)
_TEXT = (_Op.MATCHES, _Op.MATCHES_REGEX, _Op.CONTAINS, _Op.STARTS_WITH, _Op.ENDS_WITH)
_NUMERIC = (
    ConditionType.PARAMETER_COUNT,
    ConditionType.MEMORY_USAGE,
    ConditionType.WEIGHT_STATISTIC,
    ConditionType.SENSITIVITY,
)
_OPERATORS: dict[ConditionType, tuple[ConditionOperator, ...]] = {
    ConditionType.LAYER_TYPE: _MEMBERSHIP,
    ConditionType.COMPONENT: _MEMBERSHIP,
    ConditionType.LAYER_NAME: _MEMBERSHIP + _TEXT,
    ConditionType.LAYER_INDEX: _MEMBERSHIP + _ORDER,
    **{t: _MEMBERSHIP + _ORDER for t in _NUMERIC},
}
_INDEX_WORDS = ("first", "last")


def weight_statistics(weights: Any) -> dict[str, float]:
    """Statistics of a weight tensor, over all its elements, computed in float64:

    absmax max|w|; absmean mean|w| (the BitNet ternary scale); mean; std (population);
    kurtosis, the excess kurtosis m4/m2² − 3 (0 for a Gaussian, large for heavy tails);
    outlier_ratio, the fraction of elements farther than 3 std from the mean (0.0027 for a
    Gaussian); zero_fraction, the fraction of exact zeros. An empty tensor gives NaN everywhere,
    a constant one NaN kurtosis; NaN makes every comparison but NOT_EQUAL false.
    """
    flat = np.asarray(weights).reshape(-1)
    n = flat.size
    if n == 0:
        return dict.fromkeys(WEIGHT_STATISTICS, math.nan)
    total = abs_total = absmax = zeros = 0.0
    for chunk in _chunks(flat):
        total += chunk.sum()
        magnitude = np.abs(chunk)
        abs_total += magnitude.sum()
        absmax = max(absmax, float(magnitude.max()))
        zeros += np.count_nonzero(chunk == 0)
    mean = total / n
    m2 = m4 = 0.0
    for chunk in _chunks(flat):
        square = (chunk - mean) ** 2
        m2 += square.sum()
        m4 += (square**2).sum()
    m2, m4 = m2 / n, m4 / n
    std = math.sqrt(m2)
    outliers = 0
    if std > 0:
        for chunk in _chunks(flat):
            outliers += np.count_nonzero(np.abs(chunk - mean) > _OUTLIER_SIGMAS * std)
    return {
        "absmax": absmax,
        "absmean": float(abs_total / n),
        "mean": float(mean),
        "std": std,
        "kurtosis": float(m4 / (m2 * m2) - 3.0) if m2 > 0 else math.nan,
        "outlier_ratio": outliers / n,
        "zero_fraction": float(zeros / n),
    }


def _chunks(flat: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, flat.size, _CHUNK):
        yield flat[start : start + _CHUNK].astype(np.float64)


@dataclass(frozen=True)
class LayerFacts:
    """What the policies may look at for one layer; the compiler fills it in.

    `index` is the layer's 0-based position among the model's `layer_count` layers;
    `memory_usage` is the percent of the memory budget the model uses (None: no budget given);
    `weight_statistics` comes from `weight_statistics(...)`; `sensitivity` maps a precision to the
    model's output error measured with this layer alone in that precision; `original_dtype` is the
    precision the layer has in the input model (what KEEP_ORIGINAL restores).
    """

    name: str
    layer_type: LayerType
    index: int
    layer_count: int
    parameter_count: int = 0
    memory_usage: float | None = None
    weight_statistics: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    sensitivity: Mapping[DType, float] = field(default_factory=lambda: MappingProxyType({}))
    original_dtype: DType = DType.F32

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer_type", LayerType.parse(self.layer_type))
        object.__setattr__(self, "original_dtype", DType.parse(self.original_dtype))
        object.__setattr__(self, "weight_statistics", MappingProxyType(dict(self.weight_statistics)))
        sensitivity = {DType.parse(k): v for k, v in self.sensitivity.items()}
        object.__setattr__(self, "sensitivity", MappingProxyType(sensitivity))


@dataclass(frozen=True)
class PolicyCondition:
    """One test on one fact. `key` names the statistic (WEIGHT_STATISTIC) or the precision
    (SENSITIVITY, default: the precision being decided); other types take no key."""

    condition_type: ConditionType
    operator: ConditionOperator
    value: ConditionValue
    key: str | DType | None = None

    def __post_init__(self) -> None:
        ctype = ConditionType.parse(self.condition_type)
        object.__setattr__(self, "condition_type", ctype)
        object.__setattr__(self, "operator", ConditionOperator.parse(self.operator))
        value = tuple(self.value) if isinstance(self.value, (list, tuple)) else self.value
        parse = {ConditionType.LAYER_TYPE: LayerType.parse, ConditionType.COMPONENT: ComponentType.parse}.get(
            ctype
        )
        if ctype is ConditionType.LAYER_INDEX:
            parse = _index_word
        if parse is not None:
            value = tuple(parse(v) for v in value) if isinstance(value, tuple) else parse(value)
        object.__setattr__(self, "value", value)
        if ctype is ConditionType.SENSITIVITY and self.key is not None:
            object.__setattr__(self, "key", DType.parse(self.key))

    def collect_problems(self, problems: Problems, path: SchemaPath) -> None:
        ctype, op, value = self.condition_type, self.operator, self.value
        allowed = _OPERATORS[ctype]
        if op not in allowed:
            choices = ", ".join(o.value for o in allowed)
            problems.add(
                (*path, "operator"), f"{op.value} does not apply to {ctype.value}; use one of {choices}"
            )
            return
        many = op in (_Op.IN, _Op.NOT_IN)
        if many and (not isinstance(value, tuple) or not value):
            problems.add((*path, "value"), f"{op.value} needs a non-empty list, not {describe_value(value)}")
            return
        if not many and isinstance(value, tuple):
            problems.add((*path, "value"), f"{op.value} needs a single value, not a list; use in / not_in")
            return
        for item in value if many else (value,):
            problem = self._value_problem(item)
            if problem:
                problems.add((*path, "value"), problem)
        if ctype is ConditionType.WEIGHT_STATISTIC:
            if self.key not in WEIGHT_STATISTICS:
                hint = did_you_mean(str(self.key), WEIGHT_STATISTICS)
                choices = ", ".join(WEIGHT_STATISTICS)
                problems.add(
                    (*path, "key"), f"unknown weight statistic {self.key!r}{hint}; choose one of {choices}"
                )
        elif ctype is not ConditionType.SENSITIVITY and self.key is not None:
            problems.add((*path, "key"), "only weight_statistic and sensitivity conditions take a key")

    def _value_problem(self, item: Any) -> str | None:
        ctype, op = self.condition_type, self.operator
        if ctype is ConditionType.LAYER_NAME:
            if not isinstance(item, str):
                return f"a layer name condition needs a string, not {describe_value(item)}"
            if op is _Op.MATCHES_REGEX:
                try:
                    re.compile(item)
                except re.error as exc:
                    return f"invalid regular expression {item!r}: {exc}"
            return None
        if ctype is ConditionType.LAYER_INDEX:
            if isinstance(item, str) and item in _INDEX_WORDS:
                return None if op in _MEMBERSHIP else f"{item!r} only works with equal, not_equal, in, not_in"
            return (
                None
                if _is_int(item)
                else f"a layer index is an integer, 'first' or 'last', not {describe_value(item)}"
            )
        if ctype in _NUMERIC and not _is_number(item):
            return f"{ctype.value} is compared with a number, not {describe_value(item)}"
        return None

    def evaluate(self, facts: LayerFacts, component: ComponentType, current: DType) -> tuple[bool, Any]:
        """Whether the condition holds, and the fact it read (None when not supplied)."""
        actual = self._fact(facts, component, current)
        if actual is None:
            return False, None
        expected = self.value
        if self.condition_type is ConditionType.LAYER_INDEX:
            expected = (
                tuple(_absolute_index(v, facts.layer_count) for v in expected)
                if isinstance(expected, tuple)
                else _absolute_index(expected, facts.layer_count)
            )
        return _compare(self.operator, actual, expected), actual

    def _fact(self, facts: LayerFacts, component: ComponentType, current: DType) -> Any:
        ctype = self.condition_type
        if ctype is ConditionType.LAYER_TYPE:
            return facts.layer_type
        if ctype is ConditionType.COMPONENT:
            return component
        if ctype is ConditionType.LAYER_NAME:
            return facts.name
        if ctype is ConditionType.LAYER_INDEX:
            return facts.index
        if ctype is ConditionType.PARAMETER_COUNT:
            return facts.parameter_count
        if ctype is ConditionType.MEMORY_USAGE:
            return facts.memory_usage
        if ctype is ConditionType.WEIGHT_STATISTIC:
            return facts.weight_statistics.get(str(self.key))
        return facts.sensitivity.get(self.key if isinstance(self.key, DType) else current)

    def describe(self, actual: Any = None) -> str:
        """`memory_usage 85 > 80`; the fact is left out when `actual` is None."""
        name = self.condition_type.value
        if self.key is not None:
            name += f"[{_show(self.key)}]"
        fact = f" {_show(actual)}" if actual is not None else ""
        return f"{name}{fact} {self.operator.symbol} {_show(self.value)}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.condition_type.value,
            "operator": self.operator.value,
            "value": _plain(self.value),
        }
        if self.key is not None:
            out["key"] = _plain(self.key)
        return out


@dataclass(frozen=True)
class PolicyAction:
    """What a matching rule does. Build one with the class methods (`set_precision(DType.I4)`, ...)."""

    kind: ActionKind
    precision: DType | None = None
    component: ComponentType | None = None
    steps: int | None = None
    conversion_strategy: ConversionStrategy | None = None
    ternary_scale: TernaryScale | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", ActionKind.parse(self.kind))
        if self.ternary_scale is not None:
            object.__setattr__(self, "ternary_scale", TernaryScale.parse(self.ternary_scale))
        if self.precision is not None:
            object.__setattr__(self, "precision", DType.parse(self.precision))
        if self.component is not None:
            object.__setattr__(self, "component", ComponentType.parse(self.component))
        if self.conversion_strategy is not None:
            object.__setattr__(
                self, "conversion_strategy", ConversionStrategy.parse(self.conversion_strategy)
            )

    @classmethod
    def set_precision(cls, precision: DType | str) -> PolicyAction:
        return cls(ActionKind.SET_PRECISION, precision=DType.parse(precision))

    @classmethod
    def set_component_precision(cls, component: ComponentType | str, precision: DType | str) -> PolicyAction:
        return cls(ActionKind.SET_COMPONENT_PRECISION, precision=precision, component=component)

    @classmethod
    def keep_original(cls) -> PolicyAction:
        return cls(ActionKind.KEEP_ORIGINAL)

    @classmethod
    def raise_precision(cls, steps: int = 1) -> PolicyAction:
        return cls(ActionKind.RAISE_PRECISION, steps=steps)

    @classmethod
    def lower_precision(cls, steps: int = 1) -> PolicyAction:
        return cls(ActionKind.LOWER_PRECISION, steps=steps)

    @classmethod
    def set_conversion_strategy(cls, strategy: ConversionStrategy | str) -> PolicyAction:
        return cls(ActionKind.SET_CONVERSION_STRATEGY, conversion_strategy=strategy)

    @classmethod
    def set_ternary_scale(cls, scale: TernaryScale | str) -> PolicyAction:
        return cls(ActionKind.SET_TERNARY_SCALE, ternary_scale=scale)

    def _fields(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "component": self.component,
            "steps": self.steps,
            "strategy": self.conversion_strategy,
            "scale": self.ternary_scale,
        }

    def collect_problems(self, problems: Problems, path: SchemaPath, support: SupportMatrix | None) -> None:
        needed = _ACTION_FIELDS[self.kind]
        for name, value in self._fields().items():
            if name in needed and value is None and name != "steps":
                problems.add(path, f"{self.kind.value} needs {name}")
            elif name not in needed and value is not None:
                problems.add((*path, name), f"{self.kind.value} takes no {name}")
        if self.kind in (ActionKind.RAISE_PRECISION, ActionKind.LOWER_PRECISION) and (
            not _is_int(self.steps) or self.steps < 1
        ):
            problems.add((*path, "steps"), f"must be a positive integer, not {self.steps!r}")
        if support is None or self.precision is None:
            return
        components = [self.component] if self.component is not None else list(ComponentType)
        allowed = frozenset().union(*(support.allowed(t, c) for t in LayerType for c in components))
        if self.precision not in allowed:
            where = self.component.value if self.component is not None else "any component"
            names = ", ".join(d.name for d in sorted(allowed, key=DType.rank, reverse=True))
            problems.add(
                (*path, "precision"),
                f"{self.precision.name} is not allowed for {where} of any layer type (allowed: {names})",
            )

    def describe(self) -> str:
        """`set_component_precision bias F32`, `raise_precision by 2`."""
        parts = [self.kind.value]
        if self.component is not None:
            parts.append(self.component.value)
        if self.precision is not None:
            parts.append(self.precision.name)
        if self.steps is not None:
            parts.append(f"by {self.steps}")
        if self.conversion_strategy is not None:
            parts.append(str(self.conversion_strategy.value))
        if self.ternary_scale is not None:
            parts.append(self.ternary_scale.value)
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.kind.value}
        out.update({k: _plain(v) for k, v in self._fields().items() if v is not None})
        return out


_ACTION_KEYS = ("precision", "component", "steps", "strategy", "scale")
_ACTION_FIELDS: dict[ActionKind, tuple[str, ...]] = {
    ActionKind.SET_PRECISION: ("precision",),
    ActionKind.SET_COMPONENT_PRECISION: ("component", "precision"),
    ActionKind.KEEP_ORIGINAL: (),
    ActionKind.RAISE_PRECISION: ("steps",),
    ActionKind.LOWER_PRECISION: ("steps",),
    ActionKind.SET_CONVERSION_STRATEGY: ("strategy",),
    ActionKind.SET_TERNARY_SCALE: ("scale",),
}


@dataclass(frozen=True)
class PolicyRule:
    """Conditions (all must hold) and an action. `origin` is where the rule was written (a config
    file and line), shown in explanations; it does not take part in equality."""

    id: str
    action: PolicyAction
    conditions: tuple[PolicyCondition, ...] = ()
    origin: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "conditions", tuple(self.conditions))

    def add_condition(self, condition: PolicyCondition) -> PolicyRule:
        return replace(self, conditions=(*self.conditions, condition))


@dataclass(frozen=True)
class PrecisionPolicy:
    """A named, prioritized list of rules. Immutable: `add_rule` returns a new policy."""

    id: str
    name: str = ""
    description: str = ""
    priority: int = 0  # higher is tried first
    enabled: bool = True
    rules: tuple[PolicyRule, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))

    def add_rule(self, rule: PolicyRule) -> PrecisionPolicy:
        return replace(self, rules=(*self.rules, rule))

    def collect_problems(self, problems: Problems, path: SchemaPath, support: SupportMatrix | None) -> None:
        """Record every problem of this policy under `path` (its place in a config file). With a
        support matrix, also precisions it never allows."""
        if not isinstance(self.id, str) or not self.id.strip():
            problems.add((*path, "id"), f"a policy needs a non-empty id, not {self.id!r}")
        if not _is_int(self.priority):
            problems.add((*path, "priority"), f"must be an integer, not {self.priority!r}")
        if not isinstance(self.enabled, bool):
            problems.add((*path, "enabled"), f"must be true or false, not {self.enabled!r}")
        seen: dict[str, int] = {}
        for i, rule in enumerate(self.rules):
            rpath = (*path, "rules", i)
            if not isinstance(rule.id, str) or not rule.id.strip():
                problems.add((*rpath, "id"), f"a rule needs a non-empty id, not {rule.id!r}")
            elif rule.id in seen:
                problems.add((*rpath, "id"), f"duplicate rule id {rule.id!r} (also rules[{seen[rule.id]}])")
            seen.setdefault(rule.id, i)
            for j, condition in enumerate(rule.conditions):
                condition.collect_problems(problems, (*rpath, "conditions", j))
            rule.action.collect_problems(problems, (*rpath, "action"), support)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id}
        if self.name:
            out["name"] = self.name
        if self.description:
            out["description"] = self.description
        out["priority"] = self.priority
        out["enabled"] = self.enabled
        out["rules"] = [
            {"id": r.id, "conditions": [c.to_dict() for c in r.conditions], "action": r.action.to_dict()}
            for r in self.rules
        ]
        return out

    @classmethod
    def from_dict(
        cls,
        data: Any,
        *,
        problems: Problems | None = None,
        path: SchemaPath = (),
        origin: str | None = None,
    ) -> PrecisionPolicy | None:
        """Read a policy written as in the `policies:` section of a config file.

        Without `problems`, a ConfigError lists every problem. With it, problems are added there
        under `path` and None is returned for an unreadable policy. `origin` (a file name) is
        combined with each rule's line, when `problems` knows it, into `PolicyRule.origin`.
        Semantic checks (allowed precisions, operators per condition type) are
        `collect_problems`'s job.
        """
        own = problems is None
        problems = problems if problems is not None else Problems()
        before = len(problems)
        policy = _read_policy(data, problems, path, origin)
        if own:
            problems.raise_if_any()
        return policy if len(problems) == before else None


def _read_policy(
    data: Any, problems: Problems, path: SchemaPath, origin: str | None
) -> PrecisionPolicy | None:
    body = problems.mapping(data, path, "a policy")
    if body is None:
        return None
    keys = ("id", "name", "description", "priority", "enabled", "rules")
    problems.keys(body, path, keys, required=("id",))
    rules_data = body.get("rules", [])
    if not isinstance(rules_data, list):
        problems.add((*path, "rules"), f"must be a list of rules, not {describe_value(rules_data)}")
        rules_data = []
    rules = [_read_rule(r, problems, (*path, "rules", i), origin) for i, r in enumerate(rules_data)]
    texts = {k: body.get(k, "") for k in ("name", "description")}
    for key, text in texts.items():
        if not isinstance(text, str):
            problems.add((*path, key), f"must be a string, not {describe_value(text)}")
    if any(r is None for r in rules) or any(not isinstance(t, str) for t in texts.values()):
        return None
    return PrecisionPolicy(
        id=body.get("id", ""),
        name=texts["name"],
        description=texts["description"],
        priority=body.get("priority", 0),
        enabled=body.get("enabled", True),
        rules=tuple(r for r in rules if r is not None),
    )


def _read_rule(data: Any, problems: Problems, path: SchemaPath, origin: str | None) -> PolicyRule | None:
    body = problems.mapping(data, path, "a rule")
    if body is None:
        return None
    problems.keys(body, path, ("id", "conditions", "action"), required=("id", "action"))
    conditions_data = body.get("conditions", [])
    if not isinstance(conditions_data, list):
        problems.add(
            (*path, "conditions"), f"must be a list of conditions, not {describe_value(conditions_data)}"
        )
        conditions_data = []
    conditions = [
        _read_condition(c, problems, (*path, "conditions", i)) for i, c in enumerate(conditions_data)
    ]
    action = _read_action(body["action"], problems, (*path, "action")) if "action" in body else None
    if action is None or any(c is None for c in conditions):
        return None
    line = problems.line(path)
    where = f"{origin}:{line}" if origin and line is not None else origin
    return PolicyRule(body.get("id", ""), action, tuple(c for c in conditions if c is not None), origin=where)


def _read_condition(data: Any, problems: Problems, path: SchemaPath) -> PolicyCondition | None:
    body = problems.mapping(data, path, "a condition")
    if body is None:
        return None
    ok = problems.keys(
        body, path, ("type", "operator", "value", "key"), required=("type", "operator", "value")
    )
    ctype = problems.parse(ConditionType.parse, body.get("type"), (*path, "type")) if "type" in body else None
    op = (
        problems.parse(ConditionOperator.parse, body.get("operator"), (*path, "operator"))
        if "operator" in body
        else None
    )
    key = body.get("key")
    if ctype is ConditionType.SENSITIVITY and key is not None:
        key = problems.parse(DType.parse, key, (*path, "key"))
        ok = ok and key is not None
    if not ok or ctype is None or op is None:
        return None
    return problems.parse(
        lambda value: PolicyCondition(ctype, op, value, key), body["value"], (*path, "value")
    )


def _read_action(data: Any, problems: Problems, path: SchemaPath) -> PolicyAction | None:
    body = problems.mapping(data, path, "an action")
    if body is None:
        return None
    kind = problems.parse(ActionKind.parse, body["type"], (*path, "type")) if "type" in body else None
    if kind is None:
        problems.keys(body, path, ("type", *_ACTION_KEYS), required=("type",))
        return None
    needed = _ACTION_FIELDS[kind]
    problems.keys(body, path, ("type", *needed), required=[n for n in needed if n != "steps"])
    parsers = {
        "precision": DType.parse,
        "component": ComponentType.parse,
        "strategy": ConversionStrategy.parse,
        "scale": TernaryScale.parse,
    }
    read = {
        name: problems.parse(parsers[name], body[name], (*path, name))
        for name in needed
        if name in parsers and name in body
    }
    if any(value is None for value in read.values()) or any(n not in body for n in needed if n != "steps"):
        return None
    steps = body.get("steps", 1) if "steps" in needed else None
    return PolicyAction(
        kind,
        precision=read.get("precision"),
        component=read.get("component"),
        steps=steps,
        conversion_strategy=read.get("strategy"),
        ternary_scale=read.get("scale"),
    )


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


@dataclass(frozen=True)
class _Outcome:
    policy: PrecisionPolicy
    rule: PolicyRule
    evaluated: tuple[tuple[PolicyCondition, Any], ...]
    dtype: DType
    layout: WeightLayout
    conversion_strategy: ConversionStrategy | None

    @property
    def result(self) -> tuple[DType, WeightLayout, ConversionStrategy | None]:
        return self.dtype, self.layout, self.conversion_strategy


class PolicyEngine:
    """Holds the policies and decides. The support matrix bounds what actions may choose."""

    def __init__(
        self, policies: Iterable[PrecisionPolicy] = (), support: SupportMatrix | None = None
    ) -> None:
        self.support = support if support is not None else SupportMatrix()
        self._policies: list[PrecisionPolicy] = []
        for policy in policies:
            self.add_policy(policy)

    @classmethod
    def from_config(cls, config: MixedPrecisionConfig) -> PolicyEngine:
        return cls(config.policies, config.support)

    @property
    def policies(self) -> tuple[PrecisionPolicy, ...]:
        return tuple(self._policies)

    def add_policy(self, policy: PrecisionPolicy) -> None:
        """Add a policy after checking it; a ConfigError lists every problem."""
        problems = Problems()
        path: SchemaPath = ("policies", policy.id)
        if any(p.id == policy.id for p in self._policies):
            problems.add((*path, "id"), f"a policy with id {policy.id!r} is already registered")
        policy.collect_problems(problems, path, self.support)
        problems.raise_if_any()
        self._policies.append(policy)

    def _ranked(self) -> list[PrecisionPolicy]:
        enabled = [(i, p) for i, p in enumerate(self._policies) if p.enabled]
        return [p for _, p in sorted(enabled, key=lambda ip: (-ip[1].priority, ip[0]))]

    def decide(self, facts: LayerFacts, component: ComponentType | str, current: Resolution) -> Decision:
        component = ComponentType.parse(component)
        outcomes: list[_Outcome] = []
        notes: list[str] = []
        for policy in self._ranked():
            outcome = self._policy_outcome(policy, facts, component, current, notes)
            if outcome is not None:
                outcomes.append(outcome)
        if not outcomes:
            explanation = f"config {current} (no policy matched)" + "".join(f"; {n}" for n in notes)
            return Decision(
                current.dtype, current.source, current.layout, current.conversion_strategy, None, explanation
            )
        win = outcomes[0]
        conflicts = tuple(
            Conflict(o.policy.id, o.rule.id, o.policy.priority, o.dtype, o.conversion_strategy)
            for o in outcomes[1:]
            if o.result != win.result
        )
        conditions = ", ".join(c.describe(actual) for c, actual in win.evaluated) or "no conditions"
        where = f" [{win.rule.origin}]" if win.rule.origin else ""
        explanation = (
            f"policy {win.policy.id!r} (priority {win.policy.priority}) rule {win.rule.id!r}{where}: "
            f"{conditions} → {win.rule.action.describe()} = {win.dtype.name}; overrode config {current}"
        )
        explanation += "".join(f"; {n}" for n in notes)
        explanation += "".join(f"; conflict: {c}" for c in conflicts)
        if conflicts:
            logger.debug("layer %s %s: %d policy conflicts", facts.name, component.value, len(conflicts))
        return Decision(
            win.dtype,
            f"policy:{win.policy.id}/{win.rule.id}",
            win.layout,
            win.conversion_strategy,
            current,
            explanation,
            conflicts,
            win.rule.origin,
        )

    def _policy_outcome(
        self,
        policy: PrecisionPolicy,
        facts: LayerFacts,
        component: ComponentType,
        current: Resolution,
        notes: list[str],
    ) -> _Outcome | None:
        for rule in policy.rules:
            evaluated = []
            matched = True
            for condition in rule.conditions:
                holds, actual = condition.evaluate(facts, component, current.dtype)
                evaluated.append((condition, actual))
                matched = matched and holds
            if not matched:
                continue
            applied = self._apply(rule.action, facts, component, current)
            if isinstance(applied, str):
                if applied:
                    notes.append(f"policy {policy.id!r} rule {rule.id!r} passed over: {applied}")
                continue
            return _Outcome(policy, rule, tuple(evaluated), *applied)
        return None

    def _apply(
        self, action: PolicyAction, facts: LayerFacts, component: ComponentType, current: Resolution
    ) -> tuple[DType, WeightLayout, ConversionStrategy | None] | str:
        """The action's (precision, layout, conversion strategy), or why it does not apply ("" when
        it is simply not about this component). A new precision takes the knobs that fit it."""
        allowed = self.support.allowed(facts.layer_type, component)
        kind = action.kind
        if kind is ActionKind.SET_CONVERSION_STRATEGY:
            return current.dtype, current.layout, action.conversion_strategy
        if kind is ActionKind.SET_TERNARY_SCALE:
            if current.dtype is not DType.BITNET158:
                return f"set_ternary_scale applies to BITNET158, not {current.dtype.name}"
            layout = replace(current.layout, ternary_scale=action.ternary_scale)
            return current.dtype, layout, current.conversion_strategy
        if kind in (ActionKind.RAISE_PRECISION, ActionKind.LOWER_PRECISION):
            sign = 1 if kind is ActionKind.RAISE_PRECISION else -1
            target = _move(current.dtype, sign * (action.steps or 1), allowed)
            return target, _carried_layout(target, current), current.conversion_strategy
        if kind is ActionKind.SET_COMPONENT_PRECISION and action.component is not component:
            return ""
        target = facts.original_dtype if kind is ActionKind.KEEP_ORIGINAL else action.precision
        if target is None:
            return f"{kind.value} names no precision"
        if target not in allowed:
            return (
                f"{target.name} is not allowed for the {component.value} of {facts.layer_type.value} layers"
            )
        return target, _carried_layout(target, current), current.conversion_strategy


def _carried_layout(dtype: DType, current: Resolution) -> WeightLayout:
    return fit_layout(dtype, current.layout) if dtype is not current.dtype else current.layout


def _move(dtype: DType, delta: int, allowed: frozenset[DType]) -> DType:
    """`delta` steps along the ladder counting only allowed precisions, clamped at the ends."""
    sign = 1 if delta > 0 else -1
    here = dtype
    for _ in range(abs(delta)):
        probe = here
        while True:
            nxt = probe.step(sign)
            if nxt is probe:
                return here  # end of the ladder: no allowed precision further on
            probe = nxt
            if probe in allowed:
                break
        here = probe
    return here


def _compare(op: ConditionOperator, actual: Any, expected: Any) -> bool:
    if op is _Op.EQUAL:
        return bool(actual == expected)
    if op is _Op.NOT_EQUAL:
        return bool(actual != expected)
    if op is _Op.IN:
        return actual in expected
    if op is _Op.NOT_IN:
        return actual not in expected
    if op is _Op.GREATER_THAN:
        return bool(actual > expected)
    if op is _Op.GREATER_EQUAL:
        return bool(actual >= expected)
    if op is _Op.LESS_THAN:
        return bool(actual < expected)
    if op is _Op.LESS_EQUAL:
        return bool(actual <= expected)
    if op is _Op.MATCHES:
        return fnmatch.fnmatchcase(actual, expected)
    if op is _Op.MATCHES_REGEX:
        return re.fullmatch(expected, actual) is not None
    if op is _Op.CONTAINS:
        return expected in actual
    if op is _Op.STARTS_WITH:
        return bool(actual.startswith(expected))
    return bool(actual.endswith(expected))


def _index_word(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in _INDEX_WORDS:
        return value.strip().lower()
    return value


def _absolute_index(value: Any, count: int) -> Any:
    if value == "first":
        return 0
    if value == "last":
        return count - 1
    if _is_int(value) and value < 0:
        return count + value
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _plain(value: Any) -> Any:
    """A value as it is written in a config file."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, DType):
        return value.name
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, DType):
        return value.name
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
