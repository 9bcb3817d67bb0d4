"""assign_precision: plans from config and policies, facts, warnings, validation (hand-built layers)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from bitnet_onnx.config.config import LayerPrecisionConfig, MixedPrecisionConfig
from bitnet_onnx.config.policy import (
    ConditionOperator,
    ConditionType,
    PolicyAction,
    PolicyCondition,
    PolicyEngine,
    PolicyRule,
    PrecisionPolicy,
)
from bitnet_onnx.core.dtypes import DType, TernaryPacking, WeightLayout, storage_bytes
from bitnet_onnx.core.errors import ConfigError, ValidationError
from bitnet_onnx.core.layers import ComponentType, Layer, LayerType
from bitnet_onnx.passes import p30_assign_precision
from bitnet_onnx.passes.base import PassContext
from bitnet_onnx.passes.p30_assign_precision import AssignPrecisionPass

W, B, A, OUT = ComponentType.WEIGHTS, ComponentType.BIAS, ComponentType.ACTIVATIONS, ComponentType.OUTPUTS


def _model(weight_scale: dict[str, float] | None = None, weight_dtype=np.float32):
    """embed (Gather [16, 8]) → q_proj (MatMul [8, 8] + bias) → attn (no weights) → up_proj [8, 32]."""
    scales = weight_scale or {}
    rng = np.random.default_rng(0)

    def weight(name, shape):
        values = (rng.standard_normal(shape) * scales.get(name, 0.02)).astype(weight_dtype)
        return gs.Constant(name, values)

    x = gs.Variable("x", np.float32, (1, 8))
    tensors = {
        "embed.weight": weight("embed.weight", (16, 8)),
        "q.weight": weight("q.weight", (8, 8)),
        "q.bias": gs.Constant("q.bias", np.zeros(8, np.float32)),
        "up.weight": weight("up.weight", (8, 32)),
    }
    y = gs.Variable("y", np.float32, (1, 32))
    nodes = [
        gs.Node("MatMul", "q", inputs=[x, tensors["q.weight"]], outputs=[h := gs.Variable("h", np.float32)]),
        gs.Node("Add", "q_add", inputs=[h, tensors["q.bias"]], outputs=[h2 := gs.Variable("h2", np.float32)]),
        gs.Node("MatMul", "up", inputs=[h2, tensors["up.weight"]], outputs=[y]),
        gs.Node("Gather", "embed", inputs=[tensors["embed.weight"], x], outputs=[gs.Variable("e")]),
    ]
    graph = gs.Graph(nodes=nodes, inputs=[x], outputs=[y])
    layers = {
        "embed": Layer("embed", LayerType.EMBEDDING, 0, ("embed",), "test", "embed.weight", (16, 8)),
        "layers.0.q_proj": Layer(
            "layers.0.q_proj", LayerType.LINEAR, 1, ("q", "q_add"), "test", "q.weight", (8, 8), bias="q.bias"
        ),
        "layers.0.attn": Layer("layers.0.attn", LayerType.ATTENTION, 2, ("attn",), "test"),
        "layers.0.mlp.up_proj": Layer(
            "layers.0.mlp.up_proj", LayerType.LINEAR, 3, ("up",), "test", "up.weight", (8, 32)
        ),
    }
    return graph, layers


def _run(config=None, policies=(), memory_budget=None, **model_args):
    graph, layers = _model(**model_args)
    config = config or MixedPrecisionConfig.balanced()
    engine = PolicyEngine(policies, config.support) if policies else None
    ctx = PassContext(config=config, policy=engine, layers=layers)
    result = AssignPrecisionPass(memory_budget=memory_budget).run(graph, ctx)
    return ctx, result


def _policy(pid, *conditions, action, priority=0, rule="r"):
    return PrecisionPolicy(pid, priority=priority, rules=(PolicyRule(rule, action, conditions),))


def test_balanced_plan_has_every_component_with_its_config_source():
    ctx, result = _run()
    q = ctx.plan["layers.0.q_proj"]
    assert {c: q.dtype(c) for c in q.decisions} == {
        W: DType.BITNET158,
        B: DType.F16,
        A: DType.I8,
        OUT: DType.F32,
    }
    assert q.decisions[W].source == "layer_type:linear"
    assert q.decisions[A].source == "layer_type:linear/activations"
    assert q.decisions[B].source == "component:bias"
    assert set(ctx.plan["layers.0.attn"].decisions) == {A, OUT}
    assert set(ctx.plan["embed"].decisions) == {W, OUT}
    assert set(ctx.plan["layers.0.mlp.up_proj"].decisions) == {W, A, OUT}  # no bias
    assert list(ctx.plan) == ["embed", "layers.0.q_proj", "layers.0.attn", "layers.0.mlp.up_proj"]
    assert not result.modified and result.stats["layers"] == 4 and result.stats["components"] == 11


def test_one_change_per_component_with_dtype_source_and_explanation():
    _, result = _run()
    change = next(c for c in result.changes if c.layer == "layers.0.q_proj" and c.component == "weights")
    assert change.action == "assign" and change.dtype == "BITNET158"
    assert change.source == "layer_type:linear" and change.overrode is None
    assert change.detail == "config layer_type:linear→BITNET158"
    assert [(c.layer, c.component) for c in result.changes][:3] == [
        ("embed", "weights"),
        ("embed", "outputs"),
        ("layers.0.q_proj", "weights"),
    ]


def test_exact_layer_entry_beats_the_layer_type():
    config = MixedPrecisionConfig.balanced().with_layer_config(
        "layers.0.mlp.up_proj", LayerPrecisionConfig(LayerType.LINEAR, DType.I4, WeightLayout(group_size=8))
    )
    ctx, _ = _run(config)
    decision = ctx.plan["layers.0.mlp.up_proj"].decisions[W]
    assert decision.dtype is DType.I4 and decision.layout.group_size == 8
    assert decision.source == "layer:layers.0.mlp.up_proj"


def test_policy_overrides_and_the_change_says_what_it_overrode():
    policy = _policy(
        "mlp_i4",
        PolicyCondition(ConditionType.LAYER_NAME, ConditionOperator.MATCHES, "*.mlp.*"),
        PolicyCondition(ConditionType.COMPONENT, ConditionOperator.EQUAL, "weights"),
        action=PolicyAction.set_precision(DType.I4),
    )
    ctx, result = _run(policies=[policy])
    decision = ctx.plan["layers.0.mlp.up_proj"].decisions[W]
    assert decision.dtype is DType.I4 and decision.source == "policy:mlp_i4/r"
    change = next(c for c in result.changes if c.layer == "layers.0.mlp.up_proj" and c.component == "weights")
    assert change.overrode == "layer_type:linear→BITNET158"
    assert "policy 'mlp_i4'" in change.detail and "overrode config" in change.detail
    assert ctx.plan["layers.0.q_proj"].dtype(W) is DType.BITNET158
    assert result.stats["policy_decisions"] == 1


def test_layer_index_last_and_keep_original():
    last = _policy(
        "last_f16",
        PolicyCondition(ConditionType.LAYER_INDEX, ConditionOperator.EQUAL, "last"),
        action=PolicyAction.set_precision(DType.F16),
        priority=1,
    )
    keep = _policy(
        "keep_embed",
        PolicyCondition(ConditionType.LAYER_TYPE, ConditionOperator.EQUAL, "embedding"),
        PolicyCondition(ConditionType.COMPONENT, ConditionOperator.EQUAL, "weights"),
        action=PolicyAction.keep_original(),
    )
    ctx, _ = _run(policies=[last, keep], weight_dtype=np.float16)
    assert ctx.plan["layers.0.mlp.up_proj"].dtype(W) is DType.F16
    assert ctx.plan["embed"].dtype(W) is DType.F16  # the model stores it in float16


def _statistic_policy():
    return _policy(
        "wide",
        PolicyCondition(ConditionType.WEIGHT_STATISTIC, ConditionOperator.GREATER_THAN, 1.0, key="absmax"),
        PolicyCondition(ConditionType.COMPONENT, ConditionOperator.EQUAL, "weights"),
        action=PolicyAction.set_precision(DType.F16),
    )


def test_weight_statistics_decide_and_are_computed_once_per_weight(monkeypatch):
    calls = []
    real = p30_assign_precision.weight_statistics
    monkeypatch.setattr(p30_assign_precision, "weight_statistics", lambda w: calls.append(w.shape) or real(w))
    ctx, result = _run(policies=[_statistic_policy()], weight_scale={"q.weight": 10.0})
    assert ctx.plan["layers.0.q_proj"].dtype(W) is DType.F16  # absmax ≈ 25 > 1
    assert ctx.plan["layers.0.mlp.up_proj"].dtype(W) is DType.BITNET158  # absmax ≈ 0.05
    assert sorted(calls) == [(8, 8), (8, 32), (16, 8)]
    assert result.stats["weight_statistics"] == 3


def test_weight_statistics_are_not_computed_when_no_policy_asks(monkeypatch):
    monkeypatch.setattr(p30_assign_precision, "weight_statistics", pytest.fail)
    name_policy = _policy(
        "n",
        PolicyCondition(ConditionType.LAYER_NAME, ConditionOperator.CONTAINS, "q_proj"),
        action=PolicyAction.set_precision(DType.F16),
    )
    _, result = _run(policies=[name_policy])
    assert result.stats["weight_statistics"] == 0
    disabled = PrecisionPolicy("off", enabled=False, rules=_statistic_policy().rules)
    _run(policies=[name_policy, disabled])


def _planned_bytes(config: MixedPrecisionConfig) -> int:
    """Weights and bias at the config's precisions, by hand."""
    linear = config.layer_types[LayerType.LINEAR]
    return (
        storage_bytes(DType.F16, (16, 8))  # embed
        + storage_bytes(DType.BITNET158, (8, 8), linear.layout)
        + storage_bytes(DType.F16, (8,))  # q bias
        + storage_bytes(DType.BITNET158, (8, 32), linear.layout)
    )


def test_memory_usage_is_percent_of_the_budget_at_config_precisions():
    config = MixedPrecisionConfig.balanced()
    planned = _planned_bytes(config)
    assert planned == 256 + (16 + 4) + 16 + (64 + 4)
    over = _policy(
        "tight",
        PolicyCondition(ConditionType.MEMORY_USAGE, ConditionOperator.GREATER_THAN, 80.0),
        PolicyCondition(ConditionType.LAYER_TYPE, ConditionOperator.EQUAL, "embedding"),
        PolicyCondition(ConditionType.COMPONENT, ConditionOperator.EQUAL, "weights"),
        action=PolicyAction.set_precision(DType.I8),
    )
    ctx, result = _run(config, [over], memory_budget=400)
    assert result.stats["memory_usage_percent"] == round(100 * planned / 400, 3)  # 91 %
    assert ctx.plan["embed"].dtype(W) is DType.I8
    ctx, result = _run(config, [over], memory_budget=4000)
    assert ctx.plan["embed"].dtype(W) is DType.F16


def test_no_budget_means_no_memory_fact():
    over = _policy(
        "any",
        PolicyCondition(ConditionType.MEMORY_USAGE, ConditionOperator.GREATER_EQUAL, 0.0),
        action=PolicyAction.set_precision(DType.F32),
    )
    ctx, result = _run(policies=[over])
    assert "memory_usage_percent" not in result.stats
    assert ctx.plan["layers.0.q_proj"].dtype(W) is DType.BITNET158


def test_over_budget_stops_the_compile_with_the_validator_error():
    with pytest.raises(ValidationError, match=r"memory-budget\] model: layers store 360 bytes, 260 over"):
        _run(memory_budget=100)


def test_base3_packing_counts_fewer_bytes():
    config = MixedPrecisionConfig.aggressive()
    assert config.layer_types[LayerType.LINEAR].layout.packing is TernaryPacking.BASE3
    _, result = _run(config, memory_budget=10_000)
    embed_i8 = storage_bytes(DType.I8, (16, 8))
    ternary = storage_bytes(DType.BITNET158, (8, 8), WeightLayout(packing=TernaryPacking.BASE3))
    ternary += storage_bytes(DType.BITNET158, (8, 32), WeightLayout(packing=TernaryPacking.BASE3))
    expected = embed_i8 + ternary + storage_bytes(DType.F16, (8,))
    assert result.stats["memory_usage_percent"] == round(100 * expected / 10_000, 3)


def test_config_entry_naming_no_layer_warns_with_the_closest_names():
    config = (
        MixedPrecisionConfig.balanced()
        .with_layer_config("layers.0.q_prj", LayerPrecisionConfig(LayerType.LINEAR, DType.F16))
        .with_layer_config("decoder.*", LayerPrecisionConfig(None, DType.F16))
    )
    _, result = _run(config)
    assert (
        "config layers['layers.0.q_prj'] names no layer of this model (closest: 'layers.0.q_proj'"
        in (result.warnings[0])
    )
    assert result.warnings[1] == "config layers['decoder.*'] is a glob that matches no layer of this model"


def test_policy_conflicts_warn_naming_both_policies_once_per_pair():
    strong = _policy(
        "strong",
        PolicyCondition(ConditionType.LAYER_TYPE, ConditionOperator.EQUAL, "linear"),
        PolicyCondition(ConditionType.COMPONENT, ConditionOperator.EQUAL, "weights"),
        action=PolicyAction.set_precision(DType.I8),
        priority=5,
        rule="lin8",
    )
    weak = _policy(
        "weak",
        PolicyCondition(ConditionType.COMPONENT, ConditionOperator.EQUAL, "weights"),
        action=PolicyAction.set_precision(DType.I4),
        rule="all4",
    )
    ctx, result = _run(policies=[weak, strong])
    assert ctx.plan["layers.0.q_proj"].dtype(W) is DType.I8
    conflicts = [w for w in result.warnings if w.startswith("policy conflict")]
    assert conflicts == [
        "policy conflict on 2 component(s) (layers.0.q_proj/weights, layers.0.mlp.up_proj/weights): "
        "policy:strong/lin8 chose I8; policy:weak/all4 (priority 0) wanted I4; "
        "the higher priority (then the earlier policy) wins"
    ]


def test_validator_warnings_go_into_the_record():
    config = MixedPrecisionConfig.balanced().with_layer_config(
        "layers.0.q_proj", LayerPrecisionConfig(LayerType.LINEAR, DType.I1)
    )
    _, result = _run(config)
    assert any("[accuracy-impact] layers.0.q_proj/weights: 1-bit weights" in w for w in result.warnings)
    assert result.stats["validator_warnings"] >= 1


def test_components_a_layer_lacks_get_no_findings():
    config = MixedPrecisionConfig.balanced().with_layer_config(
        "layers.0.attn", LayerPrecisionConfig(LayerType.ATTENTION, DType.I8)
    )
    _, result = _run(config)
    assert not any("layers.0.attn/weights" in w for w in result.warnings)


def test_exact_entry_of_the_wrong_layer_type_is_a_config_error():
    config = MixedPrecisionConfig.balanced().with_layer_config(
        "embed", LayerPrecisionConfig(LayerType.LINEAR, DType.I4)
    )
    with pytest.raises(ConfigError, match="layer 'embed' is a embedding layer but layers"):
        _run(config)


def test_same_inputs_give_the_same_plan_and_record():
    policy = _statistic_policy()
    first_ctx, first = _run(policies=[policy], memory_budget=5000)
    second_ctx, second = _run(policies=[policy], memory_budget=5000)
    assert first.changes == second.changes and first.warnings == second.warnings
    assert first.stats == second.stats
    assert {n: dict(p.decisions) for n, p in first_ctx.plan.items()} == {
        n: dict(p.decisions) for n, p in second_ctx.plan.items()
    }


@pytest.mark.parametrize("bad", [0, -5, True, 1.5])
def test_bad_memory_budget_is_a_config_error(bad):
    with pytest.raises(ConfigError, match=r"memory_budget .* must be a positive number of bytes"):
        AssignPrecisionPass(memory_budget=bad)


@pytest.mark.parametrize("weight_nk, expected", [(False, 10 * 2 + 4), (True, 6 * 3 + 4), (None, 6 * 3 + 4)])
def test_memory_counts_rows_of_the_reduction_axis(weight_nk, expected):
    w = gs.Constant("w", np.ones((6, 10), np.float32))
    x, y = gs.Variable("x", np.float32, (1, 6)), gs.Variable("y", np.float32, (1, 10))
    graph = gs.Graph(nodes=[gs.Node("MatMul", "mm", inputs=[x, w], outputs=[y])], inputs=[x], outputs=[y])
    layer = Layer("l", LayerType.LINEAR, 0, ("mm",), "test", "w", (6, 10), weight_nk=weight_nk)
    ctx = PassContext(config=MixedPrecisionConfig.balanced(), layers={"l": layer})
    result = AssignPrecisionPass(memory_budget=100).run(graph, ctx)
    assert result.stats["memory_usage_percent"] == expected


def test_a_sensitivity_condition_outside_compile_is_refused_naming_the_rule():
    asks = _policy(
        "keep_sensitive",
        PolicyCondition(ConditionType.SENSITIVITY, ConditionOperator.GREATER_THAN, 0.01),
        action=PolicyAction.keep_original(),
        rule="over_one_percent",
    )
    with pytest.raises(ConfigError, match=r"keep_sensitive/over_one_percent .*bitnet-onnx analyze"):
        _run(policies=[asks])
