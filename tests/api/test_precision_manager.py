"""PrecisionManager: the seed's "Complete Mixed Precision Setup" and "Optimization Objectives" in
Python with concrete values, policies and errors, the static error estimate, and one integration
run on the tiny trained-like LLaMA (sensitivity measured, plans compiled and verified on held-out
inputs)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from bitnet_onnx import (
    ComponentType,
    ConditionOperator,
    ConditionType,
    ConfigError,
    DType,
    LayerPrecisionConfig,
    LayerPrecisionSpec,
    LayerType,
    MixedPrecisionConfig,
    PolicyAction,
    PolicyCondition,
    PolicyRule,
    PrecisionPolicy,
)
from bitnet_onnx.api.precision_manager import PrecisionManager, static_sensitivity
from bitnet_onnx.core.dtypes import ConversionStrategy, WeightLayout
from bitnet_onnx.core.layers import Layer, SupportMatrix
from bitnet_onnx.optimize.calibration import Calibration
from bitnet_onnx.optimize.cost_model import CostModel, LatencyTable, default_kernels
from bitnet_onnx.optimize.objectives import (
    Accuracy,
    Balanced,
    Memory,
    OptimizationObjective,
    PrecisionChoice,
    Speed,
    candidate_choices,
)
from bitnet_onnx.optimize.search import estimate_plan

W, B, ACT, OUT = ComponentType.WEIGHTS, ComponentType.BIAS, ComponentType.ACTIVATIONS, ComponentType.OUTPUTS
WEIGHTS = np.array([[1.0, -0.5, 0.0, 2.0], [-1.0, 0.25, 0.5, -2.0]], np.float32)
ACTIVATIONS = np.array([[1.0, -2.0, 0.5, 0.0]], np.float32)
P = PrecisionChoice.parse
Llama = tuple[onnx.ModelProto, Calibration, Path]

# Every default kernel at one constant time per call (µs), whatever the shape: the speed model of
# these tests. Float matmuls 100 (F16 120: casts), integer ones 40, ternary 20, the rest 60.
_TIMES = {"MatMul/F32": 100.0, "MatMul/F16": 120.0, "Int8MatMul/I8/I8": 40.0, "BitLinear/BITNET158/I8": 20.0}
TABLE = LatencyTable("test", {k.key: {1: ((1, _TIMES.get(k.key, 60.0)),)} for k in default_kernels()})


def _rng_weights(seed: int, shape: tuple[int, int] = (64, 128)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --- Complete Mixed Precision Setup ---------------------------------------------------------------


def test_complete_setup() -> None:
    # 1. Create configuration
    config = MixedPrecisionConfig.balanced().with_layer_config(
        "attention", LayerPrecisionConfig(LayerType.ATTENTION, DType.F16)
    )
    # 2. Create precision manager
    precision_manager = PrecisionManager(config, cost_model=CostModel(TABLE))
    # 3. Register layers
    layer_spec = LayerPrecisionSpec("linear_0", LayerType.LINEAR, DType.I8, DType.I8, DType.BITNET158)
    precision_manager.register_layer(layer_spec)
    # 4. Use for tensor operations
    optimal_precision = precision_manager.get_optimal_precision("linear_0", ComponentType.WEIGHTS, WEIGHTS)
    assert optimal_precision is DType.BITNET158
    converted_tensor = precision_manager.convert_for_operation(WEIGHTS, "linear_0", ComponentType.WEIGHTS)
    assert converted_tensor.dtype is DType.BITNET158
    # As in test_seed_examples: scale γ = 0.90625, 2-bit codes [2,0,1,2] -> 146, [0,1,2,0] -> 36.
    np.testing.assert_array_equal(converted_tensor.scales, [0.90625])
    np.testing.assert_array_equal(converted_tensor.data, [[146], [36]])

    # The spec's other components: I8 activations per token, I8 outputs, F32 bias (added in float).
    assert precision_manager.get_optimal_precision("linear_0", ACT) is DType.I8
    assert precision_manager.get_optimal_precision("linear_0", OUT) is DType.I8
    assert precision_manager.get_optimal_precision("linear_0", B) is DType.F32
    activations = precision_manager.convert_for_operation(ACTIVATIONS, "linear_0", ACT)
    assert activations.dtype is DType.I8
    # s = max|x| = 2: codes rint(x · 127/2) = 64, -127, 32, 0 (stored + 128), scale 2/127.
    np.testing.assert_array_equal(activations.data, [[192, 1, 160, 128]])
    np.testing.assert_allclose(activations.dequantize(), [[64 * 2 / 127, -2.0, 32 * 2 / 127, 0.0]], rtol=1e-6)

    # A layer the config names (typed, exact) but nobody registered: the config answers.
    assert precision_manager.get_optimal_precision("attention", ACT) is DType.F16
    assert precision_manager.convert_for_operation(ACTIVATIONS, "attention", ACT).dtype is DType.F16

    # Validate configurations
    config.validate()
    report = precision_manager.validate_configuration()
    assert report.ok
    assert [f.subject for f in report.for_rule("accuracy-impact")] == ["linear_0/weights"]


def test_unknown_layer_and_bad_weights() -> None:
    manager = PrecisionManager(MixedPrecisionConfig.balanced(), cost_model=CostModel(TABLE))
    with pytest.raises(ConfigError, match=r"unknown layer 'linear_9'.*register it with register_layer"):
        manager.get_optimal_precision("linear_9", W)
    spec = LayerPrecisionSpec("l", LayerType.LINEAR, DType.F32, DType.F32, DType.F32, weight_shape=(4, 4))
    with pytest.raises(ConfigError, match=r"weights of shape \(2, 4\) do not match .* weight_shape \(4, 4\)"):
        manager.register_layer(spec, weights=WEIGHTS)
    manager.register_layer(spec)
    with pytest.raises(ConfigError, match="already registered"):
        manager.register_layer(spec)
    with pytest.raises(ConfigError, match="objective must be Memory, Speed, Accuracy or Balanced"):
        manager.optimize_precision("memory:0.5")  # type: ignore[arg-type]


def test_policies_decide_on_the_tensor_statistics() -> None:
    # Heavy-tailed weights (kurtosis above 3) keep F16 instead of the spec's ternary.
    policy = PrecisionPolicy("tails", "Heavy tails", "Keep outlier-heavy weights in F16").add_rule(
        PolicyRule("kurtosis", PolicyAction.set_component_precision(W, DType.F16)).add_condition(
            PolicyCondition(
                ConditionType.WEIGHT_STATISTIC, ConditionOperator.GREATER_THAN, 3.0, key="kurtosis"
            )
        )
    )
    manager = PrecisionManager(
        MixedPrecisionConfig.balanced().with_policy(policy), cost_model=CostModel(TABLE)
    )
    spec = LayerPrecisionSpec(
        "fc", LayerType.LINEAR, DType.I8, DType.F32, DType.BITNET158, weight_shape=(64, 128)
    )
    manager.register_layer(spec)
    gaussian = _rng_weights(0)
    heavy = gaussian.copy()
    heavy[0, :4] = 40.0  # a few outliers: kurtosis far above 3
    assert manager.get_optimal_precision("fc", W, gaussian) is DType.BITNET158
    assert manager.get_optimal_precision("fc", W, heavy) is DType.F16
    assert manager.convert_for_operation(heavy, "fc", W).dtype is DType.F16
    assert manager.get_optimal_precision("fc", ACT, heavy) is DType.I8  # the rule sets weights only


# --- Optimization Objectives ----------------------------------------------------------------------


def _manager(pinned: str | None = None) -> PrecisionManager:
    manager = PrecisionManager(MixedPrecisionConfig.new("custom"), cost_model=CostModel(TABLE))
    for i in range(4):
        spec = LayerPrecisionSpec(
            f"linear_{i}", LayerType.LINEAR, DType.F32, DType.F32, DType.F32, weight_shape=(64, 128)
        )
        if spec.name != pinned:
            spec = spec.with_dynamic_adjustment()
        manager.register_layer(spec, weights=_rng_weights(i))
    return manager


def _brute_force_best(manager: PrecisionManager, objective: OptimizationObjective) -> float:
    """The optimum of `objective`'s own criterion over every plan (4 layers × 10 choices)."""
    layers = [
        Layer(s.name, s.layer_type, i, (s.name,), "registered", weight=f"{s.name}.weight",
              weight_shape=s.weight_shape, weight_nk=True)
        for i, s in enumerate(manager.layers)
    ]  # fmt: skip
    choices = candidate_choices(layers[0])
    table = static_sensitivity(layers, {layer.name: choices for layer in layers}, manager._weights)
    cost = CostModel(TABLE)
    base = estimate_plan(layers, {layer.name: P("F32") for layer in layers}, table, cost)
    best = math.inf
    for combo in itertools.product(choices, repeat=len(layers)):
        e = estimate_plan(layers, dict(zip([x.name for x in layers], combo, strict=True)), table, cost)
        if isinstance(objective, Speed):
            if e.error <= 1 - objective.min_accuracy + 1e-12:
                best = min(best, e.latency_us)
        elif isinstance(objective, Accuracy):
            if e.error <= 1 - objective.min_accuracy + 1e-12:
                best = min(best, e.bytes)
        elif e.bytes <= (1 - objective.target_reduction) * base.bytes:
            best = min(best, e.error)
    return best


def test_memory_objective() -> None:
    precision_manager = _manager()
    result = precision_manager.optimize_precision(Memory(target_reduction=0.5))
    # F16 (stored, F32 compute) halves every layer at an error of ~3e-8 each; any plan keeping a
    # layer F32 needs I8 or lower elsewhere (≥ 5e-5): all F16, exactly half.
    assert result.feasible
    assert {name: c.label for name, c in result.plan.items()} == dict.fromkeys(result.plan, "F16/F32")
    assert result.predicted.bytes == result.base.bytes // 2 == 4 * 64 * 128 * 2
    assert result.predicted.error == pytest.approx(_brute_force_best(precision_manager, Memory(0.5)))
    assert all(spec.weight_precision is DType.F16 for spec in precision_manager.layers)
    assert precision_manager.verification is None  # no model: nothing to compile


def test_speed_objective() -> None:
    precision_manager = _manager()
    result = precision_manager.optimize_precision(Speed(target_speedup=2.0))
    assert result.feasible and result.speedup >= 2.0
    assert result.predicted.cosine >= 0.99  # the default floor
    assert result.predicted.latency_us == pytest.approx(_brute_force_best(_manager(), Speed(2.0)))


def test_accuracy_objective() -> None:
    precision_manager = _manager()
    result = precision_manager.optimize_precision(Accuracy(min_accuracy=0.95))
    assert result.feasible and result.predicted.cosine >= 0.95
    assert result.predicted.bytes == _brute_force_best(_manager(), Accuracy(0.95))
    # The specs follow the plan: weights, activations, layout.
    for spec in precision_manager.layers:
        choice = result.plan[spec.name]
        assert (spec.weight_precision, spec.input_precision) == (choice.weights, choice.activation_dtype)


def test_balanced_objective() -> None:
    precision_manager = _manager()
    result = precision_manager.optimize_precision(
        Balanced(memory_weight=0.4, speed_weight=0.3, accuracy_weight=0.3)
    )
    assert result.feasible
    # Ternary: fewest bytes, fastest kernel (20 µs), and 1 − cosine ≈ 0.14 of a worst case I1 ≈ 0.2
    # per layer: 0.4·(1−0.064) + 0.3·1 − 0.3·0.7 beats I8's 0.4·0.75 + 0.3·0.75 − 0.3·0.0003.
    assert {c.label for c in result.plan.values()} == {"BITNET158/I8"}


def test_pinned_layer_keeps_its_precision() -> None:
    precision_manager = _manager(pinned="linear_2")
    result = precision_manager.optimize_precision(Memory(0.5))
    assert result.plan["linear_2"] == P("F32")
    assert precision_manager.get_layer("linear_2").weight_precision is DType.F32
    assert result.feasible and result.reduction >= 0.5
    blocked = _manager(pinned="linear_2").optimize_precision(Memory(0.9))
    assert not blocked.feasible and "linear_2" in blocked.limiting_layers


def test_static_estimate_hand_checked() -> None:
    layer = Layer("l", LayerType.LINEAR, 0, ("l",), "r", weight="w", weight_shape=(2, 4), weight_nk=True)
    table = static_sensitivity([layer], {"l": (P("F32"), P("BITNET158/F32"))}, {"l": WEIGHTS})
    assert table.get("l", P("F32")).cosine == 1.0
    # Ternary, as in test_complete_setup: W ≈ γ·T with γ = 0.90625, T = [[1,-1,0,1],[-1,0,1,-1]].
    residual = WEIGHTS - 0.90625 * np.array([[1, -1, 0, 1], [-1, 0, 1, -1]])
    r_w = np.linalg.norm(residual) / np.linalg.norm(WEIGHTS)
    entry = table.get("l", P("BITNET158/F32"))
    assert entry.rel_error == pytest.approx(r_w, rel=1e-6)
    assert 1 - entry.cosine == pytest.approx(0.5 * r_w**2, rel=1e-6)


def test_static_analysis() -> None:
    precision_manager = _manager()
    precision_manager.optimize_precision(Memory(0.5))
    analysis = precision_manager.analyze_configuration()
    assert analysis.bytes_before == 4 * 64 * 128 * 4
    assert analysis.bytes_after == 4 * 64 * 128 * 2
    assert analysis.compression == 2.0
    assert analysis.estimated_speedup == pytest.approx(1.0)  # F16 stored, the fp32 MatMul computes
    assert analysis.accuracy == () and analysis.min_cosine is None
    assert analysis.objective == "memory:0.5" and analysis.feasible
    assert [row.choice for row in analysis.layers] == ["F16/F32"] * 4
    assert "accuracy not measured" in analysis.notes[0]


def test_to_config_reproduces_the_specs(tmp_path: Path) -> None:
    from bitnet_onnx.config.config_file import load_config, save_config

    precision_manager = _manager()
    result = precision_manager.optimize_precision(Accuracy(0.95))
    config = precision_manager.to_config()
    save_config(config, tmp_path / "plan.yaml")
    again = load_config(tmp_path / "plan.yaml")
    for spec in precision_manager.layers:
        assert again.resolve(spec.name, LayerType.LINEAR, W).dtype is result.plan[spec.name].weights


# --- a model: the tiny trained-like LLaMA ---------------------------------------------------------


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Llama:
    from models import llama as builder
    from models.weights import WeightInit

    model = builder.build(builder.LlamaConfig.preset("tiny", weights=WeightInit.TRAINED_LIKE))
    calibration = Calibration.generated(model, n=4, seed=0, dims={"batch": 1, "seq": 16})
    cache = tmp_path_factory.mktemp("sensitivity")
    manager = PrecisionManager.from_model(model, calibration=calibration, cache_dir=cache, workers=2)
    manager.sensitivity()  # measured once here; the tests' managers read it from the cache
    return model, calibration, cache


def _fresh(llama: Llama, **kwargs: object) -> PrecisionManager:
    model, calibration, cache = llama
    return PrecisionManager.from_model(model, calibration=calibration, cache_dir=cache, **kwargs)


def test_from_model_registers_the_annotated_layers(llama: Llama) -> None:
    manager = _fresh(llama, dynamic=("*mlp*",))
    names = [spec.name for spec in manager.layers]
    assert names[0] == "model.embed_tokens" and names[-1] == "lm_head" and len(names) == 25
    dynamic = {spec.name for spec in manager.layers if spec.dynamic_adjustment}
    assert dynamic == {n for n in names if ".mlp." in n}
    assert all(spec.weight_precision is DType.F32 for spec in manager.layers)  # CUSTOM: as given
    # At these tiny sizes fp32's MatMul may be the fastest kernel, so int8 MLPs may be predicted
    # slower: allow them to check that only the dynamic layers move.
    result = manager.optimize_precision(Memory(0.3), verify_plan=False, allow_slower=True)
    assert set(result.moved) <= dynamic
    assert result.feasible


def test_memory_half_on_llama(llama: Llama, record_property: Callable[[str, object], None]) -> None:
    manager = _fresh(llama)
    result = manager.optimize_precision(Memory(0.5))
    check = manager.verification
    assert result.feasible and check is not None and check.met
    assert check.reduction >= 0.5
    tried = [(v.measured.bytes, v.predicted.error, v.measured.error) for v in check.tried]
    record_property("memory_plans_bytes_predicted_measured_error", tried)
    assert len(check.tried) >= 2
    # The kept plan has the smallest measured error among the plans tried that reach the bytes.
    assert check.best.measured.error == min(v.measured.error for v in check.tried if v.meets)
    assert result.plan == check.best.plan
    # Bytes are exact: the compiled model stores what the cost model predicted.
    assert all(v.measured.bytes == v.predicted.bytes for v in check.tried)
    # The additive 1 − cosine model is within a small factor of the measured error.
    for v in check.tried:
        assert 0.2 < v.measured.error / v.predicted.error < 5
    analysis = manager.analyze_configuration()
    assert analysis.bytes_after == check.best.measured.bytes
    assert analysis.objective == "memory:0.5" and analysis.feasible


def test_accuracy_on_llama_beats_conservative(
    llama: Llama, record_property: Callable[[str, object], None]
) -> None:
    from bitnet_onnx import compile

    model, calibration, _ = llama
    manager = _fresh(llama)
    # allow_slower: this ~100 µs model's speed is timing noise; the verdict here is accuracy and bytes.
    result = manager.optimize_precision(Accuracy(0.99), allow_slower=True)
    check = manager.verification
    assert result.feasible and check is not None and check.met
    assert check.best.measured.cosine >= 0.99
    # Held-out inputs: the verification batch is not one the sensitivity was measured on.
    fitted, held_out = calibration.split(0.25)
    assert all(
        not all(np.array_equal(h[k], f[k]) for k in h) for h in held_out.batches for f in fitted.batches
    )
    conservative = compile(model, MixedPrecisionConfig.conservative(), strict=False, measure_kernels=False)
    record_property("accuracy_plan_bytes", check.best.measured.bytes)
    record_property("conservative_bytes", conservative.bytes_after)
    record_property("accuracy_measured_cosine", check.best.measured.cosine)
    assert check.best.measured.bytes < conservative.bytes_after


def test_verify_backs_off_and_reports_a_measured_miss(llama: Llama) -> None:
    """An optimistic error table (every error / 50) lets the search pick a plan that misses
    Accuracy(0.99) when measured: verify moves the most sensitive moved layer one step up per
    round (at most 3) and says so, and the manager reports the miss (feasible False, the measured
    shortfall) rather than hiding it."""
    from bitnet_onnx.optimize.sensitivity import SensitivityEntry, SensitivityTable

    manager = _fresh(llama)
    table = manager.sensitivity()
    optimistic = SensitivityTable(
        table.model_sha256,
        tuple(
            SensitivityEntry(e.layer, e.choice, 1 - (1 - e.cosine) / 50, e.rel_error) for e in table.entries
        ),
    )
    manager._model.sensitivity = optimistic  # the table the search trusts
    # Every candidate offered (at these tiny sizes int8 kernels may be predicted slower than fp32).
    missed = manager.optimize_precision(Accuracy(0.99), allow_slower=True)
    check = manager.verification
    assert check is not None and not check.met
    plans = [v.plan for v in check.tried]
    # The plan and its two alternatives, then one plan per back-off round, from the chosen plan on.
    rounds = plans[3:]
    assert len(rounds) == 3 and "round 3: backed off" in check.message
    for before, after in zip([plans[0], *rounds[:-1]], rounds, strict=True):
        assert sum(before[name] != after[name] for name in after) == 1  # one layer per round
    assert not missed.feasible and "NOT met" in missed.message
    assert missed.shortfall == pytest.approx(0.99 - check.best.measured.cosine)


def test_registered_layers_without_weight_shapes_are_an_error_not_a_mislabelled_analysis() -> None:
    manager = PrecisionManager(MixedPrecisionConfig.balanced(), cost_model=CostModel(TABLE))
    ternary = LayerPrecisionSpec("layer_0", LayerType.LINEAR, DType.I8, DType.I8, DType.BITNET158)
    manager.register_layer(ternary.with_dynamic_adjustment())
    with pytest.raises(ConfigError, match=r"needs the weight shapes of 'layer_0'.*weight_shape=\(rows, K\)"):
        manager.analyze_configuration()
    with pytest.raises(ConfigError, match=r"needs the weight shapes of 'layer_0'"):
        manager.optimize_precision(Memory(0.5))
    shaped = PrecisionManager(MixedPrecisionConfig.balanced(), cost_model=CostModel(TABLE))
    shaped.register_layer(replace(ternary, weight_shape=(64, 128)))
    (row,) = shaped.analyze_configuration().layers
    assert row.choice == "BITNET158/I8" and row.bytes_after == 64 * 32 + 4


def test_a_gptq_spec_survives_into_the_plan_and_the_config_the_manager_writes() -> None:
    spec = LayerPrecisionSpec(
        "fc", LayerType.LINEAR, DType.I8, DType.F32, DType.I4, weight_shape=(8, 128),
        layout=WeightLayout(group_size=128), conversion_strategy=ConversionStrategy.GPTQ,
    )  # fmt: skip
    planned = spec.to_plan()
    assert planned.plan.decisions[ComponentType.WEIGHTS].conversion_strategy is ConversionStrategy.GPTQ
    assert LayerPrecisionSpec.of_plan(planned, SupportMatrix()).conversion_strategy is ConversionStrategy.GPTQ
    manager = PrecisionManager(MixedPrecisionConfig.new("custom"))
    manager.register_layer(spec)
    weights = manager.to_config().resolve("fc", LayerType.LINEAR, ComponentType.WEIGHTS)
    assert weights.conversion_strategy is ConversionStrategy.GPTQ
