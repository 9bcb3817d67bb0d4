"""Policy engine: conditions × operators, actions, ordering, conflicts, explanations, dict form."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bitnet_onnx.config import policy_facts, policy_model
from bitnet_onnx.config.config import MixedPrecisionConfig
from bitnet_onnx.config.policy import (
    WEIGHT_STATISTICS,
    ActionKind,
    ConditionOperator,
    ConditionType,
    LayerFacts,
    PolicyAction,
    PolicyCondition,
    PolicyEngine,
    PolicyRule,
    PrecisionPolicy,
    read_policy,
    weight_statistics,
)
from bitnet_onnx.core._schema import Problems
from bitnet_onnx.core.dtypes import ConversionStrategy, DType, TernaryPacking, TernaryScale, WeightLayout
from bitnet_onnx.core.errors import ConfigError
from bitnet_onnx.core.layers import ComponentType, LayerType, SupportMatrix
from bitnet_onnx.core.plan import Conflict, Resolution

L, C, D = LayerType, ComponentType, DType
T, Op = ConditionType, ConditionOperator

FACTS = LayerFacts(
    name="layers.3.mlp.up_proj",
    layer_type=L.LINEAR,
    index=3,
    layer_count=8,
    parameter_count=1_000_000,
    memory_usage=85.0,
    weight_statistics={"kurtosis": 4.5, "outlier_ratio": 0.01},
    sensitivity={D.I4: 0.02, D.BITNET158: 0.05},
    original_dtype=D.F16,
)
CURRENT = Resolution(D.BITNET158, "layer_type:linear")


def engine_with(*policies: PrecisionPolicy, support: SupportMatrix | None = None) -> PolicyEngine:
    return PolicyEngine(policies, support)


def single(
    action: PolicyAction, *conditions: PolicyCondition, pid: str = "p", priority: int = 0
) -> PrecisionPolicy:
    rule = PolicyRule("r", action)
    for condition in conditions:
        rule = rule.add_condition(condition)
    return PrecisionPolicy(pid, priority=priority).add_rule(rule)


# -- conditions: every type with every operator it takes ------------------------------------------

CASES = [
    # LAYER_TYPE (linear)
    (T.LAYER_TYPE, Op.EQUAL, "linear", None, True),
    (T.LAYER_TYPE, Op.EQUAL, L.ATTENTION, None, False),
    (T.LAYER_TYPE, Op.NOT_EQUAL, L.LINEAR, None, False),
    (T.LAYER_TYPE, Op.IN, ["convolution", "linear"], None, True),
    (T.LAYER_TYPE, Op.NOT_IN, [L.ATTENTION], None, True),
    # COMPONENT (weights)
    (T.COMPONENT, Op.EQUAL, "weights", None, True),
    (T.COMPONENT, Op.NOT_EQUAL, C.BIAS, None, True),
    (T.COMPONENT, Op.IN, ["bias", "outputs"], None, False),
    (T.COMPONENT, Op.NOT_IN, ["bias"], None, True),
    # LAYER_NAME (layers.3.mlp.up_proj)
    (T.LAYER_NAME, Op.EQUAL, "layers.3.mlp.up_proj", None, True),
    (T.LAYER_NAME, Op.NOT_EQUAL, "layers.3.mlp.up_proj", None, False),
    (T.LAYER_NAME, Op.IN, ["lm_head", "layers.3.mlp.up_proj"], None, True),
    (T.LAYER_NAME, Op.NOT_IN, ["lm_head"], None, True),
    (T.LAYER_NAME, Op.MATCHES, "layers.*.mlp.*", None, True),
    (T.LAYER_NAME, Op.MATCHES, "layers.*.self_attn.*", None, False),
    (T.LAYER_NAME, Op.MATCHES, "LAYERS.*", None, False),
    (T.LAYER_NAME, Op.MATCHES_REGEX, r"layers\.[0-3]\.mlp\..*", None, True),
    (T.LAYER_NAME, Op.MATCHES_REGEX, r"layers\.3", None, False),  # full match, not search
    (T.LAYER_NAME, Op.CONTAINS, "mlp", None, True),
    (T.LAYER_NAME, Op.CONTAINS, "attn", None, False),
    (T.LAYER_NAME, Op.STARTS_WITH, "layers.3", None, True),
    (T.LAYER_NAME, Op.ENDS_WITH, "proj", None, True),
    (T.LAYER_NAME, Op.ENDS_WITH, "gate", None, False),
    # LAYER_INDEX (3 of 8)
    (T.LAYER_INDEX, Op.EQUAL, 3, None, True),
    (T.LAYER_INDEX, Op.EQUAL, "first", None, False),
    (T.LAYER_INDEX, Op.EQUAL, -5, None, True),
    (T.LAYER_INDEX, Op.NOT_EQUAL, "last", None, True),
    (T.LAYER_INDEX, Op.IN, ["First", 3], None, True),
    (T.LAYER_INDEX, Op.NOT_IN, [-1, 0], None, True),
    (T.LAYER_INDEX, Op.GREATER_THAN, 2, None, True),
    (T.LAYER_INDEX, Op.GREATER_EQUAL, 4, None, False),
    (T.LAYER_INDEX, Op.LESS_THAN, -4, None, True),
    (T.LAYER_INDEX, Op.LESS_EQUAL, 3, None, True),
    # PARAMETER_COUNT (1e6)
    (T.PARAMETER_COUNT, Op.EQUAL, 1_000_000, None, True),
    (T.PARAMETER_COUNT, Op.NOT_EQUAL, 1_000_000, None, False),
    (T.PARAMETER_COUNT, Op.GREATER_THAN, 999_999, None, True),
    (T.PARAMETER_COUNT, Op.GREATER_EQUAL, 1e6, None, True),
    (T.PARAMETER_COUNT, Op.LESS_THAN, 1e6, None, False),
    (T.PARAMETER_COUNT, Op.LESS_EQUAL, 1e6, None, True),
    (T.PARAMETER_COUNT, Op.IN, [5, 1_000_000], None, True),
    (T.PARAMETER_COUNT, Op.NOT_IN, [1_000_000], None, False),
    # MEMORY_USAGE (85 %)
    (T.MEMORY_USAGE, Op.GREATER_THAN, 80, None, True),
    (T.MEMORY_USAGE, Op.LESS_THAN, 80.0, None, False),
    (T.MEMORY_USAGE, Op.GREATER_EQUAL, 85, None, True),
    (T.MEMORY_USAGE, Op.LESS_EQUAL, 84.9, None, False),
    (T.MEMORY_USAGE, Op.EQUAL, 85, None, True),
    (T.MEMORY_USAGE, Op.NOT_EQUAL, 85.0, None, False),
    (T.MEMORY_USAGE, Op.IN, [80, 85], None, True),
    (T.MEMORY_USAGE, Op.NOT_IN, [80], None, True),
    # WEIGHT_STATISTIC (kurtosis 4.5, outlier_ratio 0.01)
    (T.WEIGHT_STATISTIC, Op.GREATER_THAN, 3, "kurtosis", True),
    (T.WEIGHT_STATISTIC, Op.LESS_THAN, 3, "kurtosis", False),
    (T.WEIGHT_STATISTIC, Op.GREATER_EQUAL, 0.01, "outlier_ratio", True),
    (T.WEIGHT_STATISTIC, Op.LESS_EQUAL, 0.009, "outlier_ratio", False),
    (T.WEIGHT_STATISTIC, Op.EQUAL, 4.5, "kurtosis", True),
    (T.WEIGHT_STATISTIC, Op.NOT_EQUAL, 4.5, "kurtosis", False),
    (T.WEIGHT_STATISTIC, Op.IN, [4.5], "kurtosis", True),
    (T.WEIGHT_STATISTIC, Op.NOT_IN, [4.5], "kurtosis", False),
    # SENSITIVITY (BITNET158 0.05 is the current precision's; I4 0.02)
    (T.SENSITIVITY, Op.GREATER_THAN, 0.04, None, True),
    (T.SENSITIVITY, Op.LESS_THAN, 0.03, "I4", True),
    (T.SENSITIVITY, Op.LESS_EQUAL, 0.01, D.I4, False),
    (T.SENSITIVITY, Op.GREATER_EQUAL, 0.05, None, True),
    (T.SENSITIVITY, Op.EQUAL, 0.02, "int4", True),
    (T.SENSITIVITY, Op.NOT_EQUAL, 0.05, None, False),
    (T.SENSITIVITY, Op.IN, [0.05], None, True),
    (T.SENSITIVITY, Op.NOT_IN, [0.05], None, False),
]


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


# -- actions --------------------------------------------------------------------------------------


def decide(action: PolicyAction, component=C.WEIGHTS, current=CURRENT, facts=FACTS, support=None):
    return engine_with(single(action), support=support).decide(facts, component, current)


def test_set_precision():
    decision = decide(PolicyAction.set_precision("I4"))
    assert (decision.dtype, decision.source, decision.overrode) == (D.I4, "policy:p/r", CURRENT)


def test_set_precision_not_allowed_for_the_component_is_passed_over():
    current = Resolution(D.F16, "component:bias")
    decision = decide(PolicyAction.set_precision(D.I4), C.BIAS, current)
    assert (decision.dtype, decision.source, decision.overrode) == (D.F16, "component:bias", None)
    assert (
        "policy 'p' rule 'r' passed over: I4 is not allowed for the bias of linear layers"
        in decision.explanation
    )


def test_set_component_precision_touches_only_its_component():
    action = PolicyAction.set_component_precision("bias", "F32")
    weights = decide(action)
    assert (
        weights.dtype is D.BITNET158 and weights.overrode is None and "passed over" not in weights.explanation
    )
    bias = decide(action, C.BIAS, Resolution(D.F16, "component:bias"))
    assert (bias.dtype, bias.source) == (D.F32, "policy:p/r")


def test_keep_original():
    assert decide(PolicyAction.keep_original()).dtype is D.F16  # FACTS.original_dtype
    facts = LayerFacts("n", L.NORMALIZATION, 0, 1, original_dtype=D.I8)  # never allowed for a norm
    decision = decide(
        PolicyAction.keep_original(), facts=facts, current=Resolution(D.F16, "layer_type:normalization")
    )
    assert (
        decision.dtype is D.F16
        and "I8 is not allowed for the weights of normalization layers" in decision.explanation
    )


@pytest.mark.parametrize(
    "layer_type, start, action, expected",
    [
        (L.LINEAR, D.BITNET158, PolicyAction.raise_precision(), D.I2),
        (L.LINEAR, D.BITNET158, PolicyAction.raise_precision(2), D.I4),
        (L.LINEAR, D.BITNET158, PolicyAction.raise_precision(100), D.F32),  # clamped at the top
        (L.LINEAR, D.BITNET158, PolicyAction.lower_precision(), D.I1),
        (L.LINEAR, D.BITNET158, PolicyAction.lower_precision(3), D.I1),  # clamped at the bottom
        (L.LINEAR, D.F32, PolicyAction.raise_precision(), D.F32),
        # attention weights take F32, F16, BF16, I8: the integer rungs below I8 are skipped
        (L.ATTENTION, D.I8, PolicyAction.raise_precision(), D.BF16),
        (L.ATTENTION, D.F16, PolicyAction.lower_precision(2), D.I8),
        (L.ATTENTION, D.F16, PolicyAction.lower_precision(3), D.I8),
        (L.ATTENTION, D.F32, PolicyAction.lower_precision(4), D.I8),
    ],
)
def test_raise_and_lower_move_along_allowed_precisions(layer_type, start, action, expected):
    facts = LayerFacts("x", layer_type, 0, 1)
    assert decide(action, facts=facts, current=Resolution(start, "s")).dtype is expected


def test_raise_skips_precisions_removed_from_the_support_matrix():
    support = SupportMatrix().with_layer(L.LINEAR, [D.F32, D.F16, D.I8, D.BITNET158])
    assert decide(PolicyAction.raise_precision(), support=support).dtype is D.I8
    assert decide(PolicyAction.raise_precision(2), support=support).dtype is D.F16
    assert (
        decide(PolicyAction.lower_precision(), support=support, current=Resolution(D.I8, "s")).dtype
        is D.BITNET158
    )


def test_set_conversion_strategy_keeps_precision_and_layout():
    current = Resolution(D.I4, "glob:x", WeightLayout(group_size=64))
    decision = decide(PolicyAction.set_conversion_strategy("stochastic_rounding"), current=current)
    assert decision.dtype is D.I4 and decision.layout == WeightLayout(group_size=64)
    assert decision.conversion_strategy is ConversionStrategy.STOCHASTIC_ROUNDING


def test_set_ternary_scale_keeps_precision_and_the_other_knobs():
    current = Resolution(D.BITNET158, "s", WeightLayout(per_channel=True), ConversionStrategy.SCALED)
    decision = decide(PolicyAction.set_ternary_scale("least_squares"), current=current)
    assert decision.dtype is D.BITNET158 and decision.conversion_strategy is ConversionStrategy.SCALED
    assert decision.layout == WeightLayout(per_channel=True, ternary_scale=TernaryScale.LEAST_SQUARES)
    assert decision.source == "policy:p/r" and "set_ternary_scale least_squares" in decision.explanation


def test_set_ternary_scale_on_another_precision_is_passed_over():
    decision = decide(
        PolicyAction.set_ternary_scale(TernaryScale.LEAST_SQUARES), current=Resolution(D.I4, "s")
    )
    assert (decision.dtype, decision.layout, decision.overrode) == (D.I4, WeightLayout(), None)
    assert "passed over: set_ternary_scale applies to BITNET158, not I4" in decision.explanation


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


def test_changed_precision_keeps_only_knobs_that_fit():
    ternary = Resolution(
        D.BITNET158,
        "s",
        WeightLayout(per_channel=True, packing=TernaryPacking.BASE3),
        ConversionStrategy.SCALED,
    )
    to_i4 = decide(PolicyAction.set_precision(D.I4), current=ternary)
    assert to_i4.layout == WeightLayout() and to_i4.conversion_strategy is ConversionStrategy.SCALED
    grouped = Resolution(D.I4, "s", WeightLayout(group_size=64, asymmetric=True))
    assert decide(PolicyAction.lower_precision(), current=grouped).layout == WeightLayout(
        group_size=64, asymmetric=True
    )
    assert decide(PolicyAction.lower_precision(3), current=grouped).layout == WeightLayout(
        group_size=64
    )  # I1


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


# -- ordering, determinism, conflicts --------------------------------------------------------------


def test_higher_priority_wins_and_the_other_outcome_is_a_conflict():
    low = single(PolicyAction.set_precision(D.I4), pid="low", priority=1)
    high = single(PolicyAction.set_precision(D.I8), pid="high", priority=5)
    decision = engine_with(low, high).decide(FACTS, C.WEIGHTS, CURRENT)
    assert (decision.dtype, decision.source) == (D.I8, "policy:high/r")
    assert decision.conflicts == (Conflict("low", "r", 1, D.I4, None),)
    assert "conflict: policy 'low' rule 'r' (priority 1) wanted I4" in decision.explanation


def test_equal_priorities_go_by_insertion_order():
    a = single(PolicyAction.set_precision(D.I4), pid="a")
    b = single(PolicyAction.set_precision(D.I8), pid="b")
    assert engine_with(a, b).decide(FACTS, C.WEIGHTS, CURRENT).source == "policy:a/r"
    assert engine_with(b, a).decide(FACTS, C.WEIGHTS, CURRENT).source == "policy:b/r"


def test_agreeing_policies_are_not_conflicts():
    a = single(PolicyAction.set_precision(D.I4), pid="a")
    b = single(PolicyAction.lower_precision(), pid="b", priority=-1)  # BITNET158 -> I1: differs
    c = single(PolicyAction.raise_precision(2), pid="c", priority=-2)  # BITNET158 -> I4: same as a
    decision = engine_with(a, b, c).decide(FACTS, C.WEIGHTS, CURRENT)
    assert [x.policy_id for x in decision.conflicts] == ["b"]


def test_disabled_policies_are_ignored():
    off = PrecisionPolicy("off", priority=100, enabled=False).add_rule(
        PolicyRule("r", PolicyAction.set_precision(D.F32))
    )
    on = single(PolicyAction.set_precision(D.I8), pid="on")
    decision = engine_with(off, on).decide(FACTS, C.WEIGHTS, CURRENT)
    assert decision.source == "policy:on/r" and decision.conflicts == ()


def test_first_matching_rule_of_a_policy_wins():
    never = PolicyCondition(T.LAYER_TYPE, Op.EQUAL, L.ATTENTION)
    policy = (
        PrecisionPolicy("p")
        .add_rule(PolicyRule("no", PolicyAction.set_precision(D.F32)).add_condition(never))
        .add_rule(PolicyRule("yes", PolicyAction.set_precision(D.I8)))
        .add_rule(PolicyRule("later", PolicyAction.set_precision(D.I4)))
    )
    decision = engine_with(policy).decide(FACTS, C.WEIGHTS, CURRENT)
    assert decision.source == "policy:p/yes" and decision.conflicts == ()


def test_all_conditions_of_a_rule_must_hold():
    policy = single(
        PolicyAction.set_precision(D.I4),
        PolicyCondition(T.MEMORY_USAGE, Op.GREATER_THAN, 80),
        PolicyCondition(T.LAYER_INDEX, Op.EQUAL, "last"),
    )
    assert engine_with(policy).decide(FACTS, C.WEIGHTS, CURRENT).overrode is None
    last = LayerFacts("x", L.LINEAR, 7, 8, memory_usage=90.0)
    assert engine_with(policy).decide(last, C.WEIGHTS, CURRENT).dtype is D.I4


def test_decisions_are_deterministic():
    policies = [
        single(PolicyAction.set_precision(d), pid=f"p{i}", priority=i % 3)
        for i, d in enumerate([D.I4, D.I8, D.I2, D.F16, D.I1])
    ]
    first = engine_with(*policies).decide(FACTS, C.WEIGHTS, CURRENT)
    for _ in range(3):
        assert engine_with(*policies).decide(FACTS, C.WEIGHTS, CURRENT) == first
    assert first.source == "policy:p2/r"  # the only priority 2; then p1, p4 (1) and p0, p3 (0)
    assert [c.policy_id for c in first.conflicts] == ["p1", "p4", "p0", "p3"]


def test_no_policy_keeps_the_config_resolution():
    current = Resolution(D.I4, "glob:x", WeightLayout(group_size=32), ConversionStrategy.SCALED)
    decision = PolicyEngine().decide(FACTS, C.WEIGHTS, current)
    assert (decision.dtype, decision.source, decision.layout, decision.conversion_strategy) == (
        D.I4, "glob:x", WeightLayout(group_size=32), ConversionStrategy.SCALED,
    )  # fmt: skip
    assert decision.overrode is None and decision.explanation == "config glob:x→I4 (no policy matched)"


def test_explanation_names_policy_rule_conditions_values_and_what_was_overridden():
    rule = PolicyRule("over_budget", PolicyAction.set_precision(D.I4), origin="cfg.yaml:12")
    rule = rule.add_condition(PolicyCondition(T.MEMORY_USAGE, Op.GREATER_THAN, 80))
    rule = rule.add_condition(PolicyCondition(T.WEIGHT_STATISTIC, Op.LESS_THAN, 10, "kurtosis"))
    rule = rule.add_condition(PolicyCondition(T.LAYER_INDEX, Op.IN, ["first", 3]))
    decision = engine_with(PrecisionPolicy("mem", priority=5).add_rule(rule)).decide(
        FACTS, C.WEIGHTS, CURRENT
    )
    assert decision.explanation == (
        "policy 'mem' (priority 5) rule 'over_budget' [cfg.yaml:12]: memory_usage 85 > 80, "
        "weight_statistic[kurtosis] 4.5 < 10, layer_index 3 in [first, 3] → set_precision I4 = I4; "
        "overrode config layer_type:linear→BITNET158"
    )
    assert decision.origin == "cfg.yaml:12"


def test_engine_from_config_uses_its_policies_and_support():
    support = SupportMatrix().with_layer(L.ATTENTION, [D.F32, D.F16, D.I4])
    policy = single(PolicyAction.set_precision(D.I4), PolicyCondition(T.LAYER_TYPE, Op.EQUAL, L.ATTENTION))
    config = MixedPrecisionConfig.balanced().with_support(support).with_policy(policy)
    engine = PolicyEngine.from_config(config)
    facts = LayerFacts("attn", L.ATTENTION, 0, 1)
    assert engine.policies == (policy,)
    assert engine.decide(facts, C.WEIGHTS, config.resolve("attn", L.ATTENTION, C.WEIGHTS)).dtype is D.I4


def test_add_policy_rejects_duplicate_ids_and_lists_all_problems():
    engine = engine_with(single(PolicyAction.keep_original()))
    with pytest.raises(ConfigError, match="a policy with id 'p' is already registered"):
        engine.add_policy(single(PolicyAction.keep_original()))
    bad = (
        PrecisionPolicy("", priority="high")
        .add_rule(
            PolicyRule("r", PolicyAction.raise_precision(-1)).add_condition(
                PolicyCondition(T.COMPONENT, Op.CONTAINS, "bias")
            )
        )
        .add_rule(PolicyRule("r", PolicyAction.keep_original()))
    )
    with pytest.raises(ConfigError) as info:
        engine.add_policy(bad)
    assert len(info.value.problems) == 5, info.value.problems
    assert len(engine.policies) == 1


# -- dict form -------------------------------------------------------------------------------------


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


# -- weight statistics ------------------------------------------------------------------------------


def test_weight_statistics_by_hand():
    stats = weight_statistics(np.array([[-2.0, 0.0], [0.0, 2.0]], dtype=np.float32))
    # mean 0, m2 = 8/4 = 2, m4 = 32/4 = 8, excess kurtosis 8/2² − 3 = −1
    assert stats == pytest.approx(
        {"absmax": 2.0, "absmean": 1.0, "mean": 0.0, "std": math.sqrt(2.0), "kurtosis": -1.0,
         "outlier_ratio": 0.0, "zero_fraction": 0.5}
    )  # fmt: skip
    assert tuple(stats) == WEIGHT_STATISTICS


def test_weight_statistics_outlier_and_kurtosis_against_numpy():
    w = np.zeros(100)
    w[0] = 10.0  # mean 0.1, std sqrt(1 − 0.01): only the 10 is more than 3 std from the mean
    stats = weight_statistics(w)
    centered = w - w.mean()
    assert stats["outlier_ratio"] == 0.01
    assert stats["std"] == pytest.approx(math.sqrt(0.99))
    assert stats["kurtosis"] == pytest.approx(np.mean(centered**4) / np.mean(centered**2) ** 2 - 3)
    assert stats["zero_fraction"] == 0.99


def test_weight_statistics_of_a_gaussian():
    stats = weight_statistics(np.random.default_rng(0).standard_normal(1_000_000))
    assert stats["kurtosis"] == pytest.approx(0.0, abs=0.03)
    assert stats["outlier_ratio"] == pytest.approx(0.0027, abs=0.0003)
    assert stats["std"] == pytest.approx(1.0, abs=0.01)
    assert stats["absmean"] == pytest.approx(math.sqrt(2 / math.pi), abs=0.01)


def test_weight_statistics_do_not_depend_on_chunking(monkeypatch):
    w = np.random.default_rng(1).laplace(size=(13, 17)).astype(np.float16)
    whole = weight_statistics(w)
    monkeypatch.setattr(policy_facts, "_CHUNK", 7)
    assert weight_statistics(w) == pytest.approx(whole, rel=1e-12)


def test_weight_statistics_of_degenerate_tensors():
    assert all(math.isnan(v) for v in weight_statistics(np.zeros((0, 4))).values())
    constant = weight_statistics(np.full(5, 3.0))
    assert math.isnan(constant["kurtosis"])
    assert (constant["std"], constant["outlier_ratio"], constant["absmax"]) == (0.0, 0.0, 3.0)


def test_seed_policy_example():
    policy_engine = PolicyEngine()
    memory_policy = PrecisionPolicy(
        "memory_critical", "Memory Critical Policy", "Use aggressive quantization when memory is limited"
    ).add_rule(
        PolicyRule("high_memory_usage", PolicyAction.set_precision(DType.I4)).add_condition(
            PolicyCondition(ConditionType.MEMORY_USAGE, ConditionOperator.GREATER_THAN, 80.0)
        )
    )
    policy_engine.add_policy(memory_policy)
    current = MixedPrecisionConfig.balanced().resolve("linear_0", L.LINEAR, C.WEIGHTS)
    tight = LayerFacts("linear_0", L.LINEAR, 0, 1, memory_usage=85.0)
    roomy = LayerFacts("linear_0", L.LINEAR, 0, 1, memory_usage=50.0)
    assert policy_engine.decide(tight, C.WEIGHTS, current).dtype is D.I4
    assert policy_engine.decide(roomy, C.WEIGHTS, current).dtype is D.BITNET158
    # the bias cannot be 4-bit: the rule is passed over and the config stands
    bias = MixedPrecisionConfig.balanced().resolve("linear_0", L.LINEAR, C.BIAS)
    assert policy_engine.decide(tight, C.BIAS, bias).dtype is D.F16
