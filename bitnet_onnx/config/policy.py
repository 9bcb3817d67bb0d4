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
`read_policy` / `PrecisionPolicy.to_dict` (schema in `bitnet_onnx.config.config_file`).

This module is the policy engine's public face; the parts live beside it: `policy_facts` (what a
policy may know about a layer), `policy_model` (conditions, actions, rules, policies and their
checks), `policy_reader` (config-file data → policy), `policy_engine` (the decision).
"""

from __future__ import annotations

from bitnet_onnx.config.policy_engine import PolicyEngine
from bitnet_onnx.config.policy_facts import WEIGHT_STATISTICS, LayerFacts, weight_statistics
from bitnet_onnx.config.policy_model import (
    ActionKind,
    ConditionOperator,
    ConditionType,
    ConditionValue,
    PolicyAction,
    PolicyCondition,
    PolicyRule,
    PrecisionPolicy,
)
from bitnet_onnx.config.policy_reader import read_policy

__all__ = [
    "WEIGHT_STATISTICS",
    "ActionKind",
    "ConditionOperator",
    "ConditionType",
    "ConditionValue",
    "LayerFacts",
    "PolicyAction",
    "PolicyCondition",
    "PolicyEngine",
    "PolicyRule",
    "PrecisionPolicy",
    "read_policy",
    "weight_statistics",
]
