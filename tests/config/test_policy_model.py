"""Policy model (config/policy_model.py): conditions × operators and their checks, action checks."""

from __future__ import annotations

import pytest

from bitnet_onnx.config import policy_model
from bitnet_onnx.config.policy import (
    ActionKind,
    LayerFacts,
    PolicyAction,
    PolicyCondition,
)
from bitnet_onnx.core.dtypes import TernaryScale
from bitnet_onnx.core.errors import ConfigError
from tests.config.policy_cases import CASES, CURRENT, FACTS, C, D, L, Op, T, engine_with, single


@pytest.mark.parametrize(
    "ctype, op, value, key, expected",
    CASES,
    ids=[f"{c[0].value}-{c[1].value}-{i}" for i, c in enumerate(CASES)],
)
def test_condition(ctype, op, value, key, expected):
    condition = PolicyCondition(ctype, op, value, key)
    holds, _ = condition.evaluate(FACTS, C.WEIGHTS, CURRENT.dtype)
    assert holds is expected
    # and through the engine, which must accept the condition as valid
    decision = engine_with(single(PolicyAction.set_precision(D.I4), condition)).decide(
        FACTS, C.WEIGHTS, CURRENT
    )
    assert (decision.dtype is D.I4) is expected


def test_every_condition_type_and_operator_is_covered():
    covered = {(c[0], c[1]) for c in CASES}
    assert covered == {(t, o) for t, ops in policy_model._OPERATORS.items() for o in ops}


@pytest.mark.parametrize(
    "condition",
    [
        PolicyCondition(T.MEMORY_USAGE, Op.NOT_EQUAL, 50),  # memory_usage not supplied
        PolicyCondition(T.WEIGHT_STATISTIC, Op.NOT_EQUAL, 1.0, "absmax"),  # not in the map
        PolicyCondition(T.SENSITIVITY, Op.NOT_EQUAL, 1.0, "I8"),  # not measured
    ],
)
def test_facts_not_supplied_make_conditions_false(condition):
    facts = LayerFacts("x", L.LINEAR, 0, 1, weight_statistics={"kurtosis": 1.0}, sensitivity={D.I4: 0.1})
    assert condition.evaluate(facts, C.WEIGHTS, D.I4) == (False, None)


def test_layer_index_words_and_negative_indices():
    last = PolicyCondition(T.LAYER_INDEX, Op.EQUAL, "last")
    first = PolicyCondition(T.LAYER_INDEX, Op.EQUAL, "first")
    minus_one = PolicyCondition(T.LAYER_INDEX, Op.EQUAL, -1)
    for index, expected in ((0, (True, False, False)), (7, (False, True, True)), (4, (False, False, False))):
        facts = LayerFacts("x", L.LINEAR, index, 8)
        got = tuple(c.evaluate(facts, C.WEIGHTS, D.F32)[0] for c in (first, last, minus_one))
        assert got == expected


@pytest.mark.parametrize(
    "condition, words",
    [
        (
            PolicyCondition(T.LAYER_TYPE, Op.GREATER_THAN, "linear"),
            "operator: greater_than does not apply to layer_type",
        ),
        (PolicyCondition(T.MEMORY_USAGE, Op.MATCHES, 80), "operator: matches does not apply to memory_usage"),
        (
            PolicyCondition(T.LAYER_NAME, Op.EQUAL, 3),
            "value: a layer name condition needs a string, not a number",
        ),
        (
            PolicyCondition(T.MEMORY_USAGE, Op.GREATER_THAN, "high"),
            "memory_usage is compared with a number, not the string 'high'",
        ),
        (PolicyCondition(T.PARAMETER_COUNT, Op.LESS_THAN, True), "not a boolean"),
        (
            PolicyCondition(T.LAYER_NAME, Op.IN, "lm_head"),
            "value: in needs a non-empty list, not the string 'lm_head'",
        ),
        (PolicyCondition(T.LAYER_NAME, Op.NOT_IN, []), "not_in needs a non-empty list"),
        (
            PolicyCondition(T.LAYER_NAME, Op.EQUAL, ["a", "b"]),
            "equal needs a single value, not a list; use in / not_in",
        ),
        (
            PolicyCondition(T.WEIGHT_STATISTIC, Op.LESS_THAN, 3, "kurtosys"),
            "unknown weight statistic 'kurtosys' (did you mean 'kurtosis'?)",
        ),
        (PolicyCondition(T.WEIGHT_STATISTIC, Op.LESS_THAN, 3), "unknown weight statistic None"),
        (
            PolicyCondition(T.LAYER_TYPE, Op.EQUAL, "linear", "x"),
            "only weight_statistic and sensitivity conditions take a key",
        ),
        (
            PolicyCondition(T.LAYER_NAME, Op.MATCHES_REGEX, "layers.(0"),
            "invalid regular expression 'layers.(0'",
        ),
        (
            PolicyCondition(T.LAYER_INDEX, Op.GREATER_THAN, "first"),
            "'first' only works with equal, not_equal, in, not_in",
        ),
        (
            PolicyCondition(T.LAYER_INDEX, Op.EQUAL, "middle"),
            "a layer index is an integer, 'first' or 'last', not the string 'middle'",
        ),
    ],
)
def test_invalid_conditions_are_rejected_with_the_reason(condition, words):
    with pytest.raises(ConfigError) as info:
        engine_with(single(PolicyAction.keep_original(), condition))
    assert len(info.value.problems) == 1
    assert words in info.value.problems[0]
    assert info.value.problems[0].startswith("policies.p.rules[0].conditions[0]")


def test_unknown_enum_values_fail_at_construction_with_choices():
    with pytest.raises(
        ConfigError, match=r"unknown layer type 'linaer' \(did you mean 'linear'\?\); choose one of linear"
    ):
        PolicyCondition(T.LAYER_TYPE, Op.EQUAL, "linaer")
    with pytest.raises(
        ConfigError,
        match=r"unknown operator 'greater' \(did you mean 'greater_than'\?\); choose one of equal",
    ):
        PolicyCondition(T.MEMORY_USAGE, "greater", 80)


@pytest.mark.parametrize(
    "action, words",
    [
        (PolicyAction(ActionKind.SET_PRECISION), "action: set_precision needs precision"),
        (
            PolicyAction(ActionKind.KEEP_ORIGINAL, precision=D.F16),
            "action.precision: keep_original takes no precision",
        ),
        (PolicyAction.raise_precision(0), "action.steps: must be a positive integer, not 0"),
        (PolicyAction(ActionKind.LOWER_PRECISION), "action.steps: must be a positive integer, not None"),
        (
            PolicyAction.set_component_precision("bias", "I8"),
            "I8 is not allowed for bias of any layer type (allowed: F32, F16, BF16)",
        ),
        (PolicyAction(ActionKind.SET_CONVERSION_STRATEGY), "set_conversion_strategy needs strategy"),
        (PolicyAction(ActionKind.SET_TERNARY_SCALE), "set_ternary_scale needs scale"),
        (
            PolicyAction(ActionKind.SET_PRECISION, D.I4, ternary_scale=TernaryScale.ABSMEAN),
            "action.scale: set_precision takes no scale",
        ),
    ],
)
def test_invalid_actions(action, words):
    with pytest.raises(ConfigError) as info:
        engine_with(single(action))
    assert any(words in p for p in info.value.problems), info.value.problems
