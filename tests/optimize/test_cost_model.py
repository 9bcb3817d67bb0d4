"""Cost model: exact bytes per layer and plan, kernel per choice, latency interpolation on a fixed
table (no timing here), the table's JSON form and cache key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bitnet_onnx import ConfigError, DType, LayerType, runtime
from bitnet_onnx.core.dtypes import TernaryPacking, WeightLayout
from bitnet_onnx.core.layers import Layer
from bitnet_onnx.optimize.cost_model import (
    CostModel,
    Kernel,
    LatencyTable,
    cache_path,
    default_kernels,
    kernel_for,
    storage_shape,
)
from bitnet_onnx.optimize.objectives import PrecisionChoice

P = PrecisionChoice.parse

TABLE = LatencyTable(
    "test-machine",
    {
        "MatMul/F32": {1: ((1000, 10.0), (3000, 30.0), (7000, 50.0)), 16: ((1000, 40.0), (7000, 200.0))},
        "BitLinear/BITNET158/I8": {1: ((1000, 2.0), (7000, 8.0))},
        "Int8MatMul/I8/I8": {1: ((1000, 4.0),), 16: ((1000, 19.0),)},
    },
)


def _linear(name: str = "fc", k: int = 64, n: int = 32, *, nk: bool = True, bias: bool = False) -> Layer:
    shape = (n, k) if nk else (k, n)
    return Layer(
        name,
        LayerType.LINEAR,
        0,
        (name,),
        "rule",
        weight=f"{name}.weight",
        weight_shape=shape,
        bias=f"{name}.bias" if bias else None,
        weight_nk=nk,
    )


@pytest.mark.parametrize("nk", [True, False])
def test_linear_bytes_hand_computed(nk: bool) -> None:
    layer = _linear(k=64, n=32, nk=nk, bias=True)
    cost = CostModel(TABLE)
    assert storage_shape(layer) == (32, 64)
    # F32: 32·64·4 weights + 32·4 bias.
    assert cost.memory_bytes(layer, P("F32")) == 8192 + 128
    # F16: halves the weights and the bias.
    assert cost.memory_bytes(layer, P("F16")) == 4096 + 64
    # Ternary 2-bit: 32 rows of 16 bytes + one float32 scale; the bias stays F32.
    assert cost.memory_bytes(layer, P("BITNET158/I8")) == 32 * 16 + 4 + 128
    # Ternary base-3: ceil(64/5) = 13 bytes a row.
    assert cost.memory_bytes(layer, P("BITNET158b3/I8")) == 32 * 13 + 4 + 128
    # I4 g32: 2 groups a row, 16 bytes of codes per group... 32 bytes + 2 scales a row.
    assert cost.memory_bytes(layer, P("I4g32/I8")) == 32 * (32 + 2 * 4) + 128
    # I8 whole row: 64 codes + one scale a row.
    assert cost.memory_bytes(layer, P("I8/I8")) == 32 * (64 + 4) + 128
    # Asymmetric I4 g64: codes + scale + zero point a row.
    assert cost.memory_bytes(layer, P("I4g64z/F32")) == 32 * (32 + 4 + 1) + 128


def test_other_layer_types_bytes() -> None:
    cost = CostModel(TABLE)
    conv = Layer(
        "conv", LayerType.CONVOLUTION, 0, ("c",), "r", weight="cw", weight_shape=(16, 8, 3, 3), bias="cb"
    )
    assert storage_shape(conv) == (16, 72)
    assert cost.memory_bytes(conv, P("F32")) == 16 * 72 * 4 + 16 * 4
    assert cost.memory_bytes(conv, P("I8/F32")) == 16 * (72 + 4) + 16 * 4
    norm = Layer("ln", LayerType.NORMALIZATION, 0, ("n",), "r", weight="g", weight_shape=(64,), bias="b")
    assert cost.memory_bytes(norm, P("F16")) == 64 * 2 + 64 * 2
    attention = Layer("attn", LayerType.ATTENTION, 0, ("a",), "r")
    assert cost.memory_bytes(attention, P("F16").weightless()) == 0
    embedding = Layer("emb", LayerType.EMBEDDING, 0, ("g",), "r", weight="table", weight_shape=(100, 64))
    assert cost.memory_bytes(embedding, P("I8/F32")) == 100 * (64 + 4)


def test_tied_table_stored_once_when_alike() -> None:
    cost = CostModel(TABLE)
    embedding = Layer("emb", LayerType.EMBEDDING, 0, ("g",), "r", weight="table", weight_shape=(100, 64))
    head = Layer(
        "lm_head", LayerType.OUTPUT, 1, ("m",), "r", weight="table", weight_shape=(100, 64), weight_nk=True
    )
    layers = [embedding, head]
    f32 = 100 * 64 * 4
    int8 = 100 * (64 + 4)
    assert cost.plan_bytes(layers, {"emb": P("F32"), "lm_head": P("F32")}) == f32
    assert cost.plan_bytes(layers, {"emb": P("I8/F32"), "lm_head": P("I8/I8")}) == int8  # same codes
    assert cost.plan_bytes(layers, {"emb": P("I8/F32"), "lm_head": P("F32")}) == f32 + int8
    assert cost.plan_bytes(layers, {"emb": P("F16"), "lm_head": P("F16")}) == f32 // 2


@pytest.mark.parametrize(
    ("layer_type", "label", "key"),
    [
        (LayerType.LINEAR, "F32", "MatMul/F32"),
        (LayerType.LINEAR, "F16", "MatMul/F16"),
        (LayerType.LINEAR, "F16/F32", "MatMul/F32"),
        (LayerType.LINEAR, "BF16", "MatMul/F32"),
        (LayerType.LINEAR, "BITNET158/I8", "BitLinear/BITNET158/I8"),
        (LayerType.LINEAR, "BITNET158b3/I8", "BitLinear/BITNET158b3/I8"),
        (LayerType.LINEAR, "BITNET158/F32", "DequantizeLowBit+MatMul/BITNET158/F32"),
        (LayerType.OUTPUT, "I8/I8", "Int8MatMul/I8/I8"),
        (LayerType.LINEAR, "I8g64/I8", "LowBitMatMul/I8g64/I8"),
        (LayerType.LINEAR, "I8/F32", "LowBitMatMul/I8/F32"),
        (LayerType.LINEAR, "I4g128z/I8", "LowBitMatMul/I4g128/I8"),  # zero points: same kernel
        (LayerType.CONVOLUTION, "I4g128/F32", "DequantizeLowBit+MatMul/I4g128/F32"),
        (LayerType.CONVOLUTION, "F16", "MatMul/F16"),
    ],
)
def test_kernel_for(layer_type: LayerType, label: str, key: str) -> None:
    kernel = kernel_for(layer_type, P(label))
    assert kernel is not None and kernel.key == key


def test_no_kernel_outside_matmuls() -> None:
    assert kernel_for(LayerType.EMBEDDING, P("I8/F32")) is None
    assert kernel_for(LayerType.ATTENTION, P("F16").weightless()) is None
    keys = [k.key for k in default_kernels()]
    assert len(keys) == len(set(keys)) == 15
    assert {"MatMul/F32", "BitLinear/BITNET158/I8", "DequantizeLowBit+MatMul/BITNET158b3/F32"} <= set(keys)


@pytest.mark.parametrize(
    ("kn", "tokens", "expected"),
    [
        (1000, 1, 10.0),  # a measured point
        (2000, 1, 20.0),  # between 1000 and 3000
        (5000, 1, 40.0),  # between 3000 (30) and 7000 (50)
        (500, 1, 10.0),  # below the smallest: its time
        (11000, 1, 70.0),  # above the largest: the last slope, 20 µs per 4000
        (1000, 16, 40.0),
        (4000, 16, 120.0),  # 40 + 160 · 3000/6000
        (1000, 6, 10.0 + (40.0 - 10.0) * 5 / 15),  # linear in M between 1 and 16
        (1000, 31, 10.0 + (40.0 - 10.0) * 30 / 15),  # beyond 16: the same slope
    ],
)
def test_interpolation(kn: int, tokens: int, expected: float) -> None:
    assert TABLE.micros("MatMul/F32", kn, 1, tokens) == pytest.approx(expected)


def test_interpolation_through_three_token_counts() -> None:
    table = LatencyTable(
        "m", {"MatMul/F32": {1: ((1000, 10.0),), 16: ((1000, 40.0),), 256: ((1000, 520.0),)}}
    )
    assert table.micros("MatMul/F32", 1000, 1, 136) == pytest.approx(280.0)  # halfway from 16 to 256
    assert table.micros("MatMul/F32", 1000, 1, 8) == pytest.approx(10.0 + 30.0 * 7 / 15)
    assert table.micros("MatMul/F32", 1000, 1, 496) == pytest.approx(1000.0)  # beyond: the last slope


def test_single_token_curve_scales_with_tokens() -> None:
    assert TABLE.micros("BitLinear/BITNET158/I8", 4000, 1, 1) == pytest.approx(5.0)
    assert TABLE.micros("BitLinear/BITNET158/I8", 4000, 1, 3) == pytest.approx(15.0)


def test_layer_and_plan_latency_are_sums() -> None:
    cost = CostModel(TABLE)
    a = _linear("a", k=50, n=40)  # K·N = 2000
    b = _linear("b", k=100, n=50, nk=False)  # K·N = 5000, stored as [K, N]
    emb = Layer("emb", LayerType.EMBEDDING, 0, ("g",), "r", weight="t", weight_shape=(10, 8))
    assert cost.latency_us(a, P("F32")) == pytest.approx(20.0)
    assert cost.latency_us(b, P("F32")) == pytest.approx(40.0)
    assert cost.latency_us(b, P("BITNET158/I8")) == pytest.approx(2.0 + 6.0 * 4000 / 6000)
    assert cost.latency_us(emb, P("I8/F32")) == 0.0
    plan = {"a": P("F32"), "b": P("BITNET158/I8"), "emb": P("I8/F32")}
    assert cost.plan_latency_us([a, b, emb], plan) == pytest.approx(20.0 + 6.0)
    assert cost.plan_latency_us([a, b, emb], plan, tokens=16) == pytest.approx(
        (40.0 + 160.0 * 1000 / 6000) + 6.0 * 16
    )


def test_missing_kernel_and_bad_tokens() -> None:
    cost = CostModel(TABLE)
    with pytest.raises(ConfigError, match=r"no kernel 'LowBitMatMul/I4g128/I8'.*for_this_machine"):
        cost.latency_us(_linear(), P("I4g128/I8"))
    with pytest.raises(ConfigError, match="at least 1"):
        TABLE.micros("MatMul/F32", 10, 10, 0)


def test_table_validation_collects_problems() -> None:
    with pytest.raises(ConfigError) as info:
        LatencyTable("m", {"a": {}, "b": {0: ((10, 1.0),)}, "c": {1: ((10, -1.0),)}})
    assert len(info.value.problems) == 3
    assert "kernel 'a' has no measurements" in str(info.value)


def test_json_round_trip() -> None:
    again = LatencyTable.from_json(json.loads(json.dumps(TABLE.to_json())))
    assert again == TABLE
    with pytest.raises(ConfigError, match="not a latency table"):
        LatencyTable.from_json({"machine": "m"})


def test_cached_table_is_used_without_measuring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_path() == tmp_path / "bitnet-onnx" / "latency.json"
    key = runtime.machine_key()
    assert key.count("|") == 4 and key.endswith(tuple("|" + isa.value for isa in runtime.Isa))
    stored = TABLE.to_json()["curves"]
    cache_path().parent.mkdir(parents=True)
    cache_path().write_text(json.dumps({"version": 2, "machines": {key: stored}}))

    def no_timing(*args: object, **kwargs: object) -> LatencyTable:
        raise AssertionError("must not measure: the cache has every kernel asked for")

    monkeypatch.setattr(LatencyTable, "measure", no_timing)
    kernels = [Kernel("MatMul", DType.F32), Kernel("BitLinear", DType.BITNET158, act_quant=True)]
    table = LatencyTable.for_this_machine(kernels)
    assert table.machine == key
    assert table.micros("MatMul/F32", 2000, 1) == pytest.approx(20.0)
    # A table of the layout before M = 256 was measured reads as empty: measured again.
    cache_path().write_text(json.dumps({"version": 1, "machines": {key: stored}}))
    with pytest.raises(AssertionError, match="must not measure"):
        LatencyTable.for_this_machine(kernels)


def test_isa_is_part_of_the_machine_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(runtime.ISA_ENV, "ref")
    assert runtime.machine_key().endswith("|ref")
    monkeypatch.delenv(runtime.ISA_ENV)
    assert runtime.machine_key().endswith("|" + runtime.dispatch_isa().value)


def test_kernel_key_names_layout() -> None:
    base3 = WeightLayout(packing=TernaryPacking.BASE3)
    assert Kernel("BitLinear", DType.BITNET158, base3, act_quant=True).key == "BitLinear/BITNET158b3/I8"
    assert Kernel("LowBitMatMul", DType.I2, WeightLayout(group_size=64)).key == "LowBitMatMul/I2g64/F32"


@pytest.mark.parametrize("kernel", default_kernels(), ids=lambda k: k.key)
def test_every_kernel_model_runs(kernel: Kernel) -> None:
    """The one-op models the table is measured with are valid for onnxruntime with our ops (the
    times themselves are not checked)."""
    import numpy as np

    from bitnet_onnx.optimize import cost_model

    times = cost_model._measure_kernel(kernel, 128, 16, np.random.default_rng(0))
    assert sorted(times) == list(cost_model.TOKENS)
    assert all(us > 0 for us in times.values())
