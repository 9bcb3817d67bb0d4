"""analysis.analyze: bytes per layer and per type against hand-computed storage, totals against the
compile's, accuracy from the validation report, latency interleaving, JSON round trip."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bitnet_onnx.compiler.compile import compile
from bitnet_onnx.config.report import OutputMetrics
from bitnet_onnx.core.dtypes import DType, TernaryPacking, WeightLayout, storage_bytes
from bitnet_onnx.core.errors import ConfigError, UnsupportedModelError
from bitnet_onnx.core.layers import ComponentType, LayerType
from bitnet_onnx.optimize import analysis as analysis_module
from bitnet_onnx.optimize.analysis import NO_LAYER, Analysis, Timing, analyze, measure_latency
from bitnet_onnx.optimize.objectives import Accuracy, Balanced, Memory, Speed
from bitnet_onnx.runtime import timing as timing_module
from models import llama

FIXTURES = Path(__file__).resolve().parents[2] / "models" / "fixtures"
K, N1, N2 = 64, 32, 16
F32_BYTES = 4


def _tiny() -> onnx.ModelProto:
    """x[batch, 64] → fc1 (MatMul W[64, 32] + bias) → Relu → fc2 (W stored [16, 32], read through a
    Transpose) → Reshape by a constant shape (16 bytes of no layer) → y[batch, 16]."""
    rng = np.random.default_rng(0)
    initializers = [
        numpy_helper.from_array((rng.standard_normal((K, N1)) * 0.1).astype(np.float32), "fc1.weight"),
        numpy_helper.from_array((rng.standard_normal(N1) * 0.1).astype(np.float32), "fc1.bias"),
        numpy_helper.from_array((rng.standard_normal((N2, N1)) * 0.1).astype(np.float32), "fc2.weight"),
        numpy_helper.from_array(np.array([-1, N2], dtype=np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "fc1.weight"], ["h"], name="/fc1/MatMul"),
        helper.make_node("Add", ["h", "fc1.bias"], ["hb"], name="/fc1/Add"),
        helper.make_node("Relu", ["hb"], ["r"], name="/act/Relu"),
        helper.make_node("Transpose", ["fc2.weight"], ["w2t"], name="/fc2/Transpose", perm=[1, 0]),
        helper.make_node("MatMul", ["r", "w2t"], ["y0"], name="/fc2/MatMul"),
        helper.make_node("Reshape", ["y0", "shape"], ["y"], name="/Reshape"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", N2])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    onnx.save(_tiny(), path)
    return path


FC1_BEFORE = K * N1 * F32_BYTES + N1 * F32_BYTES  # 8320
FC2_BEFORE = N2 * N1 * F32_BYTES  # 2048
SHAPE_BYTES = 2 * 8


def _bitnet(shape: tuple[int, int], packing: TernaryPacking) -> int:
    rows, k = shape
    return rows * math.ceil(k / packing.weights_per_byte) + F32_BYTES  # one float32 scale per tensor


# preset → (fc1 bytes after, fc2 bytes after), by hand and by storage_bytes
AFTER = {
    # fc1: ternary 2-bit weights + F16 bias; fc2 (the output layer): int8 rows, one float32 scale each
    "balanced": (
        _bitnet((N1, K), TernaryPacking.TWO_BIT) + N1 * 2,
        storage_bytes(DType.I8, (N2, N1), WeightLayout()),
    ),
    # halves everything
    "conservative": (K * N1 * 2 + N1 * 2, N2 * N1 * 2),
    # fc1: ternary base-3 weights + F16 bias; fc2: int8 rows, one float32 scale each
    "aggressive": (
        _bitnet((N1, K), TernaryPacking.BASE3) + N1 * 2,
        storage_bytes(DType.I8, (N2, N1), WeightLayout()),
    ),
}


def test_hand_computed_storage_matches_storage_bytes():
    assert AFTER["balanced"][0] == 32 * 16 + 4 + 64 == storage_bytes(DType.BITNET158, (N1, K)) + N1 * 2
    assert AFTER["aggressive"][0] == 32 * 13 + 4 + 64
    assert AFTER["aggressive"][1] == 16 * 32 + 16 * 4


@pytest.mark.parametrize("preset", sorted(AFTER))
def test_bytes_per_layer_and_type_are_the_hand_computed_ones(tiny_path, preset):
    result = analyze(tiny_path, preset)
    layers = {layer.name: layer for layer in result.layers}
    assert list(layers) == ["fc1", "act", "fc2"]
    fc1_after, fc2_after = AFTER[preset]
    assert (layers["fc1"].bytes_before, layers["fc1"].bytes_after) == (FC1_BEFORE, fc1_after)
    assert (layers["fc2"].bytes_before, layers["fc2"].bytes_after) == (FC2_BEFORE, fc2_after)
    assert (layers["act"].bytes_before, layers["act"].bytes_after) == (0, 0)
    assert result.bytes_before == FC1_BEFORE + FC2_BEFORE + SHAPE_BYTES
    assert result.bytes_after == fc1_after + fc2_after + SHAPE_BYTES
    assert result.compression == result.bytes_before / result.bytes_after
    assert dict(result.memory_by_type_before) == {
        "linear": FC1_BEFORE, "activation": 0, "output": FC2_BEFORE, NO_LAYER: SHAPE_BYTES,
    }  # fmt: skip
    assert dict(result.memory_by_type_after) == {
        "linear": fc1_after, "activation": 0, "output": fc2_after, NO_LAYER: SHAPE_BYTES,
    }  # fmt: skip


def test_precisions_and_ops_are_those_of_the_compiled_model(tiny_path):
    result = analyze(tiny_path, "balanced")
    fc1, act, fc2 = result.layers
    assert fc1.layer_type is LayerType.LINEAR and fc1.op == "BitLinear"
    assert dict(fc1.precisions) == {
        ComponentType.WEIGHTS: DType.BITNET158,
        ComponentType.BIAS: DType.F16,
        ComponentType.ACTIVATIONS: DType.I8,
        ComponentType.OUTPUTS: DType.F32,
    }
    assert act.layer_type is LayerType.ACTIVATION and ComponentType.WEIGHTS not in act.precisions
    # I8 × I8 runs on whichever int8 kernel measured faster on this machine (rewrite's int8 choice)
    assert fc2.layer_type is LayerType.OUTPUT and fc2.op in ("LowBitMatMul", "DynamicQuantizeMatMul")
    assert (
        fc2.precisions[ComponentType.WEIGHTS] is DType.I8
        and fc2.precisions[ComponentType.OUTPUTS] is DType.F32
    )


def test_accuracy_is_the_validation_report_of_the_compile(tiny_path):
    result = analyze(tiny_path, "aggressive")
    report = compile(tiny_path, "aggressive", strict=False).report
    assert result.accuracy == report.outputs
    assert result.accuracy_inputs == report.inputs
    assert result.min_cosine == min(m.cosine for m in report.outputs) < 1.0


def test_unmeasured_parts_are_none(tiny_path):
    result = analyze(tiny_path, "balanced")
    assert result.estimated_speedup is None and result.timing is None and result.measured_speedup is None
    assert all(layer.sensitivity is None for layer in result.layers)
    assert result.objective is None and result.feasible is None and result.notes == ()


@pytest.mark.parametrize(
    ("preset", "choices"),
    [
        ("balanced", ["BITNET158/I8", "F32", "I8/I8"]),
        ("aggressive", ["BITNET158b3/I8", "F32", "I8/I8"]),
        ("conservative", ["F16/F32", "F32", "F16/F32"]),
    ],
)
def test_each_layer_names_the_choice_it_realises(tiny_path, preset, choices):
    result = analyze(tiny_path, preset)
    assert [layer.choice for layer in result.layers] == choices
    act = result.layers[1].precision_choice
    assert act is not None and act.weights is None and act.activation_dtype is DType.F32


@pytest.mark.parametrize(
    "fixture", ["llama_tiny", "bert_tiny", "gpt2_tiny", "gpt2_tiny_unfolded", "convnet_tiny"]
)
def test_layer_bytes_add_up_to_the_compile_totals(fixture):
    path = FIXTURES / f"{fixture}.onnx"
    result = analyze(path, "balanced")
    compiled = compile(path, "balanced", strict=False)
    assert result.bytes_before == compiled.bytes_before
    assert result.bytes_after == compiled.bytes_after
    assert sum(layer.bytes_before for layer in result.layers) + result.memory_by_type_before[NO_LAYER] == (
        compiled.bytes_before
    )
    assert sum(result.memory_by_type_after.values()) == compiled.bytes_after
    assert [layer.name for layer in result.layers] == [r.name for r in compiled.layers]


def test_a_tied_table_counts_once_for_the_first_layer_reading_it(tmp_path):
    path = tmp_path / "tied.onnx"
    onnx.save(llama.build(llama.LlamaConfig(tie_embeddings=True)), path)
    result = analyze(path, "conservative")
    layers = {layer.name: layer for layer in result.layers}
    table = 256 * 64 * F32_BYTES
    assert layers["model.embed_tokens"].bytes_before == table
    assert layers["lm_head"].bytes_before == 0
    assert result.bytes_before == compile(path, "conservative", strict=False).bytes_before


def test_a_compile_result_is_analyzed_from_its_file(tiny_path, tmp_path):
    compiled = compile(tiny_path, "balanced", output=tmp_path / "out.onnx", strict=False)
    result = analyze(tiny_path, compiled)
    assert result.bytes_after == compiled.bytes_after
    assert result.config == str(tmp_path / "out.onnx")
    with pytest.raises(ConfigError, match="compiled model on disk"):
        analyze(tiny_path, compile(tiny_path, "balanced", strict=False))


class _FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _FakeSession:
    def __init__(self, name: str, seconds: float, clock: _FakeClock, calls: list[str]) -> None:
        self.name, self.seconds, self.clock, self.calls = name, seconds, clock, calls

    def run(self, outputs, feeds):
        assert list(feeds) == ["x"]
        self.calls.append(self.name)
        self.clock.now += self.seconds


def test_latency_is_the_median_of_interleaved_runs_after_a_warm_up(monkeypatch):
    clock, calls = _FakeClock(), []
    monkeypatch.setattr(timing_module.time, "perf_counter", clock)
    monkeypatch.setattr(timing_module.time, "perf_counter_ns", lambda: round(clock() * 1e9))
    original = _FakeSession("original", 0.003, clock, calls)
    compiled = _FakeSession("compiled", 0.001, clock, calls)
    timing = measure_latency(original, compiled, {"x": np.zeros((1, K), np.float32)}, runs=4)
    assert calls == ["original", "compiled"] + ["original", "compiled", "compiled", "original"] * 2
    assert timing == Timing(pytest.approx(3000.0), pytest.approx(1000.0), 4, 1)
    assert timing.speedup == pytest.approx(3.0)
    with pytest.raises(ConfigError, match="at least 1"):
        measure_latency(original, compiled, {}, runs=0)


def test_measured_speedup_runs_both_models_at_batch_one(tiny_path, monkeypatch):
    seen: list[dict[str, np.ndarray]] = []

    def fake(original, compiled, feeds, *, runs=analysis_module.SPEED_RUNS):
        seen.append(dict(feeds))
        for session in (original, compiled):
            session.run(None, feeds)  # both sessions load and run the feeds
        return Timing(2.0, 1.0, runs, analysis_module.SPEED_THREADS)

    monkeypatch.setattr(analysis_module, "measure_latency", fake)
    from bitnet_onnx.optimize.calibration import Calibration

    calibration = Calibration((({"x": np.ones((4, K), np.float32)}),))
    result = analyze(tiny_path, "balanced", calibration, measure_speed=True)
    assert seen[0]["x"].shape == (1, K)  # the first row of the open batch axis
    assert result.measured_speedup == 2.0
    assert "generated" not in result.accuracy_inputs  # validated on the calibration batch


def test_json_round_trip(tiny_path):
    result = dataclasses.replace(
        analyze(tiny_path, "aggressive"),
        estimated_speedup=1.5,
        timing=Timing(10.0, 5.0, 15, 1),
        objective="memory:0.5",
        feasible=True,
        objective_message="met",
        limiting_layers=("fc2",),
    )
    data = result.to_json()
    assert data["compression"] == result.compression and data["measured_speedup"] == 2.0
    assert Analysis.from_json(data) == result
    with pytest.raises(UnsupportedModelError, match="analyze --json"):
        Analysis.from_json({"model": "m"})


def test_estimated_speedup_sums_the_cost_model_over_the_layers(tiny_path):
    from bitnet_onnx.optimize.cost_model import CostModel, LatencyTable

    # one point per kernel, above every size: a constant time
    big = 10**9
    table = LatencyTable(
        "test",
        {
            "MatMul/F32": {1: ((big, 10.0),)},
            "MatMul/F16": {1: ((big, 5.0),)},
            "BitLinear/BITNET158/I8": {1: ((big, 2.0),)},
            "Int8MatMul/I8/I8": {1: ((big, 3.0),)},
        },
    )
    result = analyze(tiny_path, "balanced", cost=CostModel(table))
    # F32: fc1 10 + fc2 10; balanced: fc1 BitLinear 2 + fc2 (I8 weights and activations) 3
    assert result.estimated_speedup == pytest.approx(20.0 / 5.0)


def test_sensitivity_is_the_table_entry_of_each_layers_choice(tiny_path, tmp_path):
    from bitnet_onnx.optimize.calibration import Calibration
    from bitnet_onnx.optimize.objectives import PrecisionChoice
    from bitnet_onnx.optimize.sensitivity import SensitivityEntry, SensitivityTable, measure_sensitivity

    plain = analyze(tiny_path, "balanced")
    calibration = Calibration.generated(tiny_path, 2, seed=0)
    chosen = {layer.name: [layer.precision_choice] for layer in plain.layers}
    table = measure_sensitivity(tiny_path, calibration, choices=chosen, cache_dir=tmp_path)
    result = analyze(tiny_path, "balanced", calibration, sensitivity=table)
    for layer in result.layers:
        assert layer.sensitivity == table.get(layer.name, layer.precision_choice).cosine
    fc1 = result.layers[0]
    assert fc1.sensitivity < 1.0  # ternary weights move the outputs
    # an entry at another layout of the same precisions stands in; a layer without entry stays None
    other = SensitivityEntry("fc1", PrecisionChoice.parse("BITNET158b3/I8"), 0.5, 0.1)
    partial = analyze(tiny_path, "balanced", sensitivity=SensitivityTable("sha", (other,)))
    assert [layer.sensitivity for layer in partial.layers] == [0.5, None, None]
    assert partial.notes == ("sensitivity: the table has no entry for 2 of 3 layers at their precision",)


def test_summary_lists_every_layer_and_the_headline_figures(tiny_path):
    result = dataclasses.replace(
        analyze(tiny_path, "aggressive"),
        timing=Timing(30.0, 10.0, 15, 1),
        objective="memory:0.99",
        feasible=False,
        objective_message="short by 0.1",
        limiting_layers=("fc2", "fc1"),
    )
    text = result.summary()
    for layer in result.layers:
        assert layer.name in text and layer.choice in text
    assert "fc1    linear      BITNET158b3/I8  8320 → 484" in text
    assert (
        f"stored bytes: {result.bytes_before} → {result.bytes_after} ({result.compression:.2f}x smaller)"
        in text
    )
    assert "estimated speedup (matmuls, 1 token): not estimated" in text
    assert "measured speedup (whole model, batch 1): 3.00x" in text
    assert f"y [1, 16]: cosine {result.accuracy[0].cosine:.6f}" in text
    assert "objective memory:0.99: NOT met. short by 0.1" in text and "limiting layers: fc2, fc1" in text


def _judged(bytes_after: int, cosines: tuple[float, ...], estimated: float | None, measured: float | None):
    outputs = tuple(OutputMetrics(f"y{i}", (1,), 0.0, 0.0, c, 0.0) for i, c in enumerate(cosines))
    timing = Timing(original_us=measured * 100.0, compiled_us=100.0, runs=1, threads=1) if measured else None
    return Analysis("m", "custom", 1000, bytes_after, (), {}, {}, outputs, "held out", estimated, timing)


@pytest.mark.parametrize(
    ("objective", "bytes_after", "cosines", "estimated", "measured", "met"),
    [
        (Memory(0.25), 750, (0.5,), None, None, True),  # exactly a quarter saved
        (Memory(0.25), 751, (1.0,), None, None, False),
        (Accuracy(0.99), 1000, (0.999, 0.99), None, None, True),
        (Accuracy(0.99), 100, (0.999, 0.989), None, None, False),  # the lowest output decides
        (Accuracy(0.99), 100, (math.nan,), None, None, False),
        (Speed(2.0), 1000, (0.995,), 3.0, 1.5, False),  # measured beats estimated
        (Speed(2.0), 1000, (0.995,), 1.5, 2.5, True),
        (Speed(2.0), 1000, (0.995,), 2.5, None, True),  # not timed: the estimate
        (Speed(2.0, 0.999), 1000, (0.995,), 9.0, 9.0, False),  # fast but below the floor
        (Speed(2.0), 1000, (0.995,), None, None, False),
        (Balanced(1, 1, 1), 1000, (0.1,), None, None, True),
    ],
)
def test_meets_judges_an_objective_on_the_measured_numbers(
    objective, bytes_after, cosines, estimated, measured, met
):
    assert _judged(bytes_after, cosines, estimated, measured).meets(objective) is met
