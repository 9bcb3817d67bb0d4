"""What a policy is: conditions on a layer's facts, actions, rules and policies, each able to say
what is wrong with it (`collect_problems`), describe itself and write itself as config-file data
(`to_dict`; reading is `policy_reader.read_policy`). Deciding with them is `policy_engine.PolicyEngine`."""

from __future__ import annotations

import enum
import fnmatch
import re
from dataclasses import dataclass, field, replace
from typing import Any

from bitnet_onnx.config.policy_facts import WEIGHT_STATISTICS, LayerFacts
from bitnet_onnx.core._schema import Problems, SchemaPath, describe_value, did_you_mean, parse_enum
from bitnet_onnx.core.dtypes import ConversionStrategy, DType, TernaryScale
from bitnet_onnx.core.layers import ComponentType, LayerType, SupportMatrix

__all__ = [
    "ACTION_FIELDS",
    "ActionKind",
    "ConditionOperator",
    "ConditionType",
    "ConditionValue",
    "PolicyAction",
    "PolicyCondition",
    "PolicyRule",
    "PrecisionPolicy",
]

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
        needed = ACTION_FIELDS[self.kind]
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


ACTION_FIELDS: dict[ActionKind, tuple[str, ...]] = {  # what each action kind takes, by config-file key
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
