"""Reading a policy written as in the `policies:` section of a config file (schema in
`bitnet_onnx.config.config_file`): `read_policy`."""

from __future__ import annotations

from typing import Any

from bitnet_onnx.config.policy_model import (
    ACTION_FIELDS,
    ActionKind,
    ConditionOperator,
    ConditionType,
    PolicyAction,
    PolicyCondition,
    PolicyRule,
    PrecisionPolicy,
)
from bitnet_onnx.core._schema import Problems, SchemaPath, describe_value
from bitnet_onnx.core.dtypes import ConversionStrategy, DType, TernaryScale
from bitnet_onnx.core.layers import ComponentType

__all__ = ["read_policy"]

_ACTION_KEYS = ("precision", "component", "steps", "strategy", "scale")


def read_policy(
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
    `PrecisionPolicy.collect_problems`'s job.
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
    needed = ACTION_FIELDS[kind]
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
