"""Policy engine (config/policy_engine.py): actions, ordering, determinism, conflicts, explanations."""

from __future__ import annotations

import pytest

from bitnet_onnx.config.config import MixedPrecisionConfig
from bitnet_onnx.config.policy import (
    ConditionOperator,
    ConditionType,
    LayerFacts,
    PolicyAction,
    PolicyCondition,
    PolicyEngine,
    PolicyRule,
    PrecisionPolicy,
)
from bitnet_onnx.core.dtypes import ConversionStrategy, DType, TernaryPacking, TernaryScale, WeightLayout
from bitnet_onnx.core.errors import ConfigError
from bitnet_onnx.core.layers import SupportMatrix
from bitnet_onnx.core.plan import Conflict, Resolution
from tests.config.policy_cases import CURRENT, FACTS, C, D, L, Op, T, engine_with, single


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
