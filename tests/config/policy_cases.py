"""Shared by the policy tests: a layer's facts, a config resolution, one-rule policies, and every
condition type with every operator it takes (CASES)."""

from __future__ import annotations

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
from bitnet_onnx.core.dtypes import DType
from bitnet_onnx.core.layers import ComponentType, LayerType, SupportMatrix
from bitnet_onnx.core.plan import Resolution

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
