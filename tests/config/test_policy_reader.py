"""Policy reader (config/policy_reader.py): read_policy, the dict form and its problems."""

from __future__ import annotations

import pytest

from bitnet_onnx.config.policy import (
    PolicyAction,
    PolicyCondition,
    PolicyRule,
    PrecisionPolicy,
    read_policy,
)
from bitnet_onnx.core._schema import Problems
from bitnet_onnx.core.dtypes import ConversionStrategy
from bitnet_onnx.core.errors import ConfigError
from tests.config.policy_cases import CASES, C, D


def full_policy() -> PrecisionPolicy:
    actions = [
        PolicyAction.set_precision(D.I4),
        PolicyAction.set_component_precision(C.BIAS, D.F32),
        PolicyAction.keep_original(),
        PolicyAction.raise_precision(2),
        PolicyAction.lower_precision(),
        PolicyAction.set_conversion_strategy(ConversionStrategy.QUANTIZATION_AWARE),
    ]
    conditions = [PolicyCondition(c[0], c[1], c[2], c[3]) for c in CASES]
    policy = PrecisionPolicy("all", "All", "every action", priority=-3, enabled=False)
    for i, action in enumerate(actions):
        policy = policy.add_rule(PolicyRule(f"r{i}", action, tuple(conditions[i::6])))
    return policy


def test_set_ternary_scale_round_trips_and_bad_scales_are_named():
    policy = PrecisionPolicy("p").add_rule(PolicyRule("r", PolicyAction.set_ternary_scale("least_squares")))
    data = policy.to_dict()
    assert data["rules"][0]["action"] == {"type": "set_ternary_scale", "scale": "least_squares"}
    assert read_policy(data) == policy
    bad = {"id": "p", "rules": [{"id": "r", "action": {"type": "set_ternary_scale", "scale": "lsq"}}]}
    with pytest.raises(
        ConfigError,
        match=r"rules\[0\]\.action\.scale: unknown ternary_scale 'lsq'.*"
        r"choose one of absmean, least_squares",
    ):
        read_policy(bad)
    missing = {"id": "p", "rules": [{"id": "r", "action": {"type": "set_ternary_scale"}}]}
    with pytest.raises(ConfigError, match="missing required key 'scale'"):
        read_policy(missing)


def test_to_dict_read_policy_round_trip():
    policy = full_policy()
    data = policy.to_dict()
    assert read_policy(data) == policy
    assert data["rules"][3]["action"] == {"type": "raise_precision", "steps": 2}
    assert data["rules"][1]["action"] == {
        "type": "set_component_precision",
        "precision": "F32",
        "component": "bias",
    }


def test_read_policy_defaults():
    policy = read_policy({"id": "p", "rules": [{"id": "r", "action": {"type": "raise_precision"}}]})
    assert policy == PrecisionPolicy("p").add_rule(PolicyRule("r", PolicyAction.raise_precision(1)))


def test_read_policy_collects_every_problem():
    data = {
        "id": "p",
        "priorty": 3,
        "rules": [
            {"id": "r", "conditions": [{"type": "memory", "operator": "greater_than", "value": 1}]},
            {"id": "s", "action": {"type": "set_precision", "precision": "F12", "steps": 2}},
            {"id": "t", "conditions": [{"type": "layer_type", "operator": "equal", "value": "linaer"}],
             "action": {"type": "keep"}},
        ],
    }  # fmt: skip
    with pytest.raises(ConfigError) as info:
        read_policy(data)
    text = "\n".join(info.value.problems)
    for words in [
        "priorty: unknown key 'priorty' (did you mean 'priority'?)",
        "rules[0]: missing required key 'action'",
        "rules[0].conditions[0].type: unknown condition type 'memory' (did you mean 'memory_usage'?)",
        "rules[1].action.steps: unknown key 'steps'",
        "rules[1].action.precision: unknown precision 'F12'",
        "rules[2].conditions[0].value: unknown layer type 'linaer'",
        "rules[2].action.type: unknown action type 'keep' (did you mean 'keep_original'?)",
    ]:
        assert words in text, (words, text)
    assert len(info.value.problems) == 7


def test_read_policy_with_a_collector_returns_none_and_records_lines():
    problems = Problems("f.yaml", {("policies", 0): 4, ("policies", 0, "rules", 0): 7})
    assert read_policy({"id": "p", "rules": [{"id": "r"}]}, problems=problems, path=("policies", 0)) is None
    with pytest.raises(ConfigError, match=r"line 7: policies\[0\].rules\[0\]: missing required key 'action'"):
        problems.raise_if_any()
    good = {"id": "p", "rules": [{"id": "r", "action": {"type": "keep_original"}}]}
    problems = Problems("f.yaml", {("policies", 0, "rules", 0): 7})
    policy = read_policy(good, problems=problems, path=("policies", 0), origin="f.yaml")
    assert policy is not None and policy.rules[0].origin == "f.yaml:7"
