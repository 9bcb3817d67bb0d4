"""PrecisionConverter: each strategy's semantics, exact storage, errors, validation and stats."""

from __future__ import annotations

import dataclasses

import ml_dtypes
import numpy as np
import pytest

from bitnet_onnx.core.dtypes import (
    ConversionStrategy,
    DType,
    TernaryPacking,
    TernaryScale,
    WeightLayout,
    storage_bytes,
)
from bitnet_onnx.core.errors import ConfigError, ConversionError
from bitnet_onnx.numerics.converter import (
    DEFAULT_TOLERANCES,
    ConversionConfig,
    PrecisionConverter,
    QuantizedTensor,
)
from bitnet_onnx.numerics.packing import unpack_int, unpack_ternary
from bitnet_onnx.numerics.quantization import grouped, quantize_groups, quantize_tokens, ternarize

F32 = np.float32
S = ConversionStrategy
INTEGERS = [DType.I8, DType.I4, DType.I2, DType.I1]


def _weights(shape: tuple[int, ...], seed: int = 0, kind: str = "normal") -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.laplace(size=shape) if kind == "laplace" else rng.normal(size=shape)).astype(F32)


def _convert(w: np.ndarray, dtype: DType, **config: object) -> QuantizedTensor:
    return PrecisionConverter(ConversionConfig(**config)).convert_tensor(w, dtype, name="w")


def _rel_error(q: QuantizedTensor, w: np.ndarray) -> float:
    return float(np.linalg.norm(q.dequantize() - w) / np.linalg.norm(w))


# --- storage -------------------------------------------------------------------------------------


LAYOUTS = [
    {},
    {"group_size": 32},
    {"group_size": 16, "asymmetric": True},
    {"per_channel": True, "ternary_packing": TernaryPacking.BASE3},
    {"ternary_scale": TernaryScale.LEAST_SQUARES},
]


STORAGE_CASES = [
    pytest.param(strategy, dtype, layout, id=f"{strategy.name}-{dtype.name}-{i}")
    for strategy in S
    if strategy is not S.GPTQ  # needs a layer's activations: tests/numerics/test_gptq.py
    for dtype in DType
    for i, layout in enumerate(LAYOUTS)
    # asymmetric needs a scaling strategy and bits >= 2
    if not (layout.get("asymmetric") and (strategy is S.DIRECT or dtype is DType.I1))
]


@pytest.mark.parametrize(("strategy", "dtype", "layout"), STORAGE_CASES)
@pytest.mark.parametrize("shape", [(3, 40), (2, 3, 37), (50,), ()])
def test_nbytes_equals_storage_bytes(strategy: S, dtype: DType, layout: dict, shape: tuple[int, ...]) -> None:
    q = _convert(_weights(shape), dtype, strategy=strategy, **layout)
    assert q.nbytes == storage_bytes(dtype, shape, q.layout)
    assert q.dequantize().shape == shape and q.dequantize().dtype == F32


def test_ternary_true_compression_ratio_through_converter() -> None:
    w = _weights((256, 1024))
    converter = PrecisionConverter(ConversionConfig(ternary_packing=TernaryPacking.BASE3))
    converter.convert_tensor(w, DType.BITNET158)
    assert converter.stats.bytes_in == 256 * 1024 * 4
    assert converter.stats.bytes_out == 256 * 205 + 4
    assert converter.stats.compression_ratio == pytest.approx(19.98, abs=0.01)


# --- SCALED is the README reference -------------------------------------------------------------


@pytest.mark.parametrize("scale", list(TernaryScale))
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("packing", list(TernaryPacking))
def test_scaled_ternary_is_the_reference(
    per_channel: bool, packing: TernaryPacking, scale: TernaryScale
) -> None:
    w = _weights((6, 33))
    q = _convert(w, DType.BITNET158, per_channel=per_channel, ternary_packing=packing, ternary_scale=scale)
    ref = ternarize(w, per_channel, scale)
    np.testing.assert_array_equal(unpack_ternary(q.data, 33, packing), ref.values)
    np.testing.assert_array_equal(q.scales, ref.scale)
    assert q.zero_points is None and q.layout.packing is packing and q.layout.per_channel is per_channel
    assert q.layout.ternary_scale is scale


def test_ternary_scale_default_is_absmean_and_a_layout_carries_it() -> None:
    w = _weights((4, 40))
    assert ConversionConfig().ternary_scale is TernaryScale.ABSMEAN
    default = _convert(w, DType.BITNET158)
    np.testing.assert_array_equal(default.scales, [np.float32(np.abs(w.astype(np.float64)).mean())])
    layout = WeightLayout(ternary_scale=TernaryScale.LEAST_SQUARES)
    q = PrecisionConverter(ConversionConfig()).convert_tensor(w, DType.BITNET158, layout=layout)
    np.testing.assert_array_equal(q.scales, ternarize(w, scale=TernaryScale.LEAST_SQUARES).scale)
    assert ConversionConfig().with_layout(layout).layout == layout
    with pytest.raises(ConfigError, match="ternary_scale 'absmean' must be a TernaryScale"):
        ConversionConfig(ternary_scale="absmean")


@pytest.mark.parametrize(
    ("dtype", "group_size", "asymmetric"),
    [
        (d, g, a)
        for d in INTEGERS
        for g, a in [(None, False), (32, False), (32, True)]
        if not (a and d.bits == 1)
    ],
)
def test_scaled_integers_are_the_reference(dtype: DType, group_size: int | None, asymmetric: bool) -> None:
    w = _weights((4, 70))
    q = _convert(w, dtype, group_size=group_size, asymmetric=asymmetric)
    ref = quantize_groups(w, dtype.bits, group_size, asymmetric)
    assert q.layout.group_size == ref.group_size and q.layout.asymmetric is asymmetric
    np.testing.assert_array_equal(unpack_int(q.data, 70, dtype.bits, ref.group_size), ref.codes)
    np.testing.assert_array_equal(q.scales, ref.scales)
    np.testing.assert_array_equal(q.dequantize(), ref.dequantize())


def test_i8_weights_default_to_per_row_symmetric() -> None:
    q = _convert(_weights((5, 12)), DType.I8)
    assert q.layout.group_size == 12 and not q.layout.asymmetric
    assert q.scales.shape == (5, 1) and q.zero_points is None and q.data.shape == (5, 12)


@pytest.mark.parametrize(("dtype", "numpy_type"), [(DType.F16, np.float16), (DType.BF16, ml_dtypes.bfloat16)])
@pytest.mark.parametrize("strategy", [S.DIRECT, S.SCALED, S.QUANTIZATION_AWARE])
def test_float_targets_are_round_to_nearest_casts(dtype: DType, numpy_type: type, strategy: S) -> None:
    w = _weights((4, 9))
    q = _convert(w, dtype, strategy=strategy)
    assert q.data.dtype == np.dtype(numpy_type) and q.scales is None
    np.testing.assert_array_equal(q.data, w.astype(numpy_type))


def test_float64_and_bfloat16_sources() -> None:
    w = _weights((2, 8)).astype(np.float64)
    q = _convert(w, DType.F32)
    np.testing.assert_array_equal(q.data, w.astype(F32))
    assert q.metadata["source_dtype"] == "float64"
    q = _convert(w.astype(ml_dtypes.bfloat16), DType.I8)
    assert q.metadata["source_dtype"] == "BF16"


# --- DIRECT --------------------------------------------------------------------------------------

ROW = np.array([[-3.7, -0.5, 0.5, 0.6, 2.5, 9.0]], F32)


@pytest.mark.parametrize(
    ("dtype", "expected", "saturated"),
    [
        (DType.I8, [-4, 0, 0, 1, 2, 9], 0),
        (DType.I4, [-4, 0, 0, 1, 2, 7], 1),
        (DType.I2, [-2, 0, 0, 1, 1, 1], 3),
        (DType.I1, [-1, -1, 1, 1, 1, 1], 0),
        (DType.BITNET158, [-1, 0, 0, 1, 1, 1], 3),
    ],
)
def test_direct_rounds_and_saturates_without_scaling(
    dtype: DType, expected: list[int], saturated: int
) -> None:
    converter = PrecisionConverter(ConversionConfig(strategy=S.DIRECT))
    q = converter.convert_tensor(ROW, dtype, name="row")
    assert q.dequantize().tolist() == [expected]
    assert (q.scales == 1).all()
    assert q.metadata["saturated"] == str(saturated)
    assert converter.stats.saturated_values == saturated


def test_direct_float_saturates_beyond_range() -> None:
    w = np.array([1.0, 1e5, -7e4, 65519.0], F32)
    q = _convert(w, DType.F16, strategy=S.DIRECT)
    assert q.data.tolist() == [1.0, 65504.0, -65504.0, 65504.0]
    assert q.metadata["saturated"] == "2"


def test_direct_asymmetric_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="asymmetric=True contradicts strategy DIRECT"):
        ConversionConfig(strategy=S.DIRECT, asymmetric=True)


# --- QUANTIZATION_AWARE --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [DType.I8, DType.I4, DType.I2])
@pytest.mark.parametrize("asymmetric", [False, True])
def test_quantization_aware_never_worse_per_group(dtype: DType, asymmetric: bool) -> None:
    w = _weights((8, 256), kind="laplace")
    scaled = _convert(w, dtype, group_size=64, asymmetric=asymmetric)
    aware = _convert(w, dtype, group_size=64, asymmetric=asymmetric, strategy=S.QUANTIZATION_AWARE)

    def group_sse(q: QuantizedTensor) -> np.ndarray:
        return (grouped(q.dequantize() - w, 64).astype(np.float64) ** 2).sum(-1)

    assert (group_sse(aware) <= group_sse(scaled)).all()
    if dtype is not DType.I8:  # at 8 bits clipping 5% of the range costs more than it saves
        assert group_sse(aware).sum() < group_sse(scaled).sum()


def test_quantization_aware_clips_an_outlier() -> None:
    w = np.concatenate([np.linspace(-1, 1, 63, dtype=F32), [8.0]])[None, :]
    scaled = _convert(w, DType.I4)
    aware = _convert(w, DType.I4, strategy=S.QUANTIZATION_AWARE)
    assert aware.scales[0, 0] < scaled.scales[0, 0]
    assert _rel_error(aware, w) < _rel_error(scaled, w)


@pytest.mark.parametrize("per_channel", [False, True])
def test_quantization_aware_ternary_not_worse_and_deterministic(per_channel: bool) -> None:
    w = _weights((16, 128), kind="laplace")
    scaled = _convert(w, DType.BITNET158, per_channel=per_channel)
    aware = _convert(w, DType.BITNET158, per_channel=per_channel, strategy=S.QUANTIZATION_AWARE)
    again = _convert(w, DType.BITNET158, per_channel=per_channel, strategy=S.QUANTIZATION_AWARE)
    assert _rel_error(aware, w) < _rel_error(scaled, w)
    np.testing.assert_array_equal(aware.data, again.data)
    np.testing.assert_array_equal(aware.scales, again.scales)


def test_quantization_aware_i1_is_scaled() -> None:
    w = _weights((3, 40))
    a = _convert(w, DType.I1, strategy=S.QUANTIZATION_AWARE)
    b = _convert(w, DType.I1)
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.scales, b.scales)


@pytest.mark.parametrize("strategy", [S.SCALED, S.QUANTIZATION_AWARE, S.STOCHASTIC_ROUNDING])
@pytest.mark.parametrize("per_channel", [False, True])
def test_exactly_ternary_weights_are_lossless(strategy: S, per_channel: bool) -> None:
    t = np.random.default_rng(1).integers(-1, 2, size=(8, 50)).astype(F32)
    t[:, 0] = 1
    w = F32(0.125) * t
    q = _convert(w, DType.BITNET158, strategy=strategy, per_channel=per_channel)
    np.testing.assert_array_equal(q.dequantize(), w)


# --- STOCHASTIC_ROUNDING -------------------------------------------------------------------------


def _mean_of_copies(dtype: DType, x: float, anchors: list[float], **config: object) -> tuple[float, float]:
    """Convert rows of [anchors..., x, x, ...] (anchors fix the scale) and average the copies of x."""
    copies = 4000
    w = np.full((10, len(anchors) + copies), x, F32)
    w[:, : len(anchors)] = anchors
    q = _convert(w, dtype, strategy=S.STOCHASTIC_ROUNDING, seed=7, **config)
    values = q.dequantize()[:, len(anchors) :].astype(np.float64)
    return float(values.mean()), float(values.std() / np.sqrt(values.size))


@pytest.mark.parametrize(
    ("dtype", "x", "anchors", "config"),
    [
        (DType.I8, 0.3, [127.0], {}),
        (DType.I4, 0.3, [7.0], {}),
        (DType.I4, 0.37, [-1.0, 2.0], {"asymmetric": True}),
        (DType.I2, 0.3, [-1.0, 2.0], {"asymmetric": True}),
        (DType.I2, 0.3, [1.0], {}),
        (DType.I1, 0.3, [1.0], {}),
        (DType.BITNET158, 0.3, [1.0], {"per_channel": True}),
        (DType.BITNET158, -0.8, [1.0], {}),
    ],
)
def test_stochastic_rounding_is_unbiased(dtype: DType, x: float, anchors: list[float], config: dict) -> None:
    mean, stderr = _mean_of_copies(dtype, x, anchors, **config)
    assert stderr > 0  # it really rounds both ways
    assert abs(mean - F32(x)) < 5 * stderr


@pytest.mark.parametrize(
    ("dtype", "x"), [(DType.BF16, 1 + 2**-9), (DType.F16, 1 + 2**-12), (DType.F16, -3e-6)]
)
def test_stochastic_float_cast_is_unbiased(dtype: DType, x: float) -> None:
    w = np.full(40000, x, F32)
    q = _convert(w, dtype, strategy=S.STOCHASTIC_ROUNDING, seed=3)
    values = q.data.astype(np.float64)
    assert len(np.unique(values)) == 2
    assert abs(values.mean() - F32(x)) < 5 * values.std() / np.sqrt(values.size)


def test_stochastic_rounding_is_seeded() -> None:
    w = _weights((4, 64))
    a = _convert(w, DType.I4, strategy=S.STOCHASTIC_ROUNDING, seed=11)
    b = _convert(w, DType.I4, strategy=S.STOCHASTIC_ROUNDING, seed=11)
    c = _convert(w, DType.I4, strategy=S.STOCHASTIC_ROUNDING, seed=12)
    np.testing.assert_array_equal(a.data, b.data)
    assert not np.array_equal(a.data, c.data)
    assert a.metadata["seed"] == "11"


def test_stochastic_asymmetric_codes_never_clip() -> None:
    w = _weights((4, 64))
    q = _convert(w, DType.I2, strategy=S.STOCHASTIC_ROUNDING, asymmetric=True, group_size=16)
    err = np.abs(q.dequantize() - w)
    step = np.repeat(q.scales, 16, axis=-1)
    assert (err < step * (1 + 1e-5)).all()  # within one step: nothing was clipped


# --- errors --------------------------------------------------------------------------------------


def test_non_finite_input_names_the_tensor() -> None:
    w = np.array([1.0, np.nan, np.inf, -np.inf], F32)
    converter = PrecisionConverter()
    with pytest.raises(ConversionError, match=r"F32 to I4: tensor 'layers.0.w' holds 1 NaN and 2 infinite"):
        converter.convert_tensor(w, DType.I4, name="layers.0.w")
    assert converter.stats.failures == 1 and converter.stats.conversions == 0


@pytest.mark.parametrize("strategy", [S.SCALED, S.QUANTIZATION_AWARE, S.STOCHASTIC_ROUNDING])
def test_float_overflow_names_count_and_max(strategy: S) -> None:
    w = np.array([1.0, 1e6, -7e4, 65510.0], F32)  # 65510 rounds to 65504: in range
    with pytest.raises(
        ConversionError, match=r"'big' has 2 values beyond the F16 range .*max \|x\| = 1e\+06"
    ):
        _convert_named(w, DType.F16, "big", strategy=strategy)


def _convert_named(w: np.ndarray, dtype: DType, name: str, **config: object) -> QuantizedTensor:
    return PrecisionConverter(ConversionConfig(**config)).convert_tensor(w, dtype, name=name)


@pytest.mark.parametrize(
    ("numpy_type", "source"),
    [(F32, DType.F32), (np.float16, DType.F16), (ml_dtypes.bfloat16, DType.BF16), (np.float64, "float64")],
)
def test_error_carries_source_and_target_dtypes(numpy_type: type, source: DType | str) -> None:
    w = np.array([[1.0, np.nan]], numpy_type)
    with pytest.raises(ConversionError) as info:
        _convert_named(w, DType.I4, "w")
    assert (info.value.from_dtype, info.value.to_dtype) == (source, DType.I4)
    name = source.name if isinstance(source, DType) else source
    assert str(info.value).startswith(f"cannot convert {name} to I4: tensor 'w' holds 1 NaN")


def test_integer_and_empty_inputs_rejected() -> None:
    with pytest.raises(ConversionError, match="has dtype int32; only float tensors convert"):
        _convert(np.ones((2, 2), np.int32), DType.I8)
    with pytest.raises(ConversionError, match=r"shape \(0, 4\): nothing to quantize"):
        _convert(np.ones((0, 4), F32), DType.I4)
    assert _convert(np.ones((0, 4), F32), DType.F16).nbytes == 0


def test_invalid_layout_for_target() -> None:
    with pytest.raises(ConfigError, match="group_size=12 is invalid for 1-bit"):
        _convert(_weights((2, 24)), DType.I1, group_size=12)
    with pytest.raises(ConfigError, match="1-bit codes are symmetric only"):
        _convert(_weights((2, 24)), DType.I1, asymmetric=True)
    with pytest.raises(ConfigError, match="unknown precision 'int3'"):
        _convert(_weights((2, 24)), "int3")


def test_config_collects_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        ConversionConfig(seed=-1, group_size=0, validation_tolerance=0.0)
    assert len(info.value.problems) == 3
    assert "ConversionConfig" in str(info.value)
    assert all(key in str(info.value) for key in ("seed", "group_size", "validation_tolerance"))


@pytest.mark.parametrize(
    ("text", "strategy"),
    [
        ("direct", S.DIRECT),
        ("SCALED", S.SCALED),
        ("quantization-aware", S.QUANTIZATION_AWARE),
        ("stochastic_rounding", S.STOCHASTIC_ROUNDING),
        (S.SCALED, S.SCALED),
    ],
)
def test_strategy_parse(text: str | S, strategy: S) -> None:
    assert ConversionStrategy.parse(text) is strategy


def test_strategy_parse_unknown() -> None:
    with pytest.raises(ConfigError, match="unknown conversion strategy 'fast'; choose one of direct, scaled"):
        ConversionStrategy.parse("fast")


# --- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", list(DType))
@pytest.mark.parametrize("kind", ["normal", "laplace"])
def test_validation_passes_scaled_conversions_of_typical_weights(dtype: DType, kind: str) -> None:
    converter = PrecisionConverter(ConversionConfig(validate_results=True))
    q = converter.convert_tensor(_weights((64, 512), kind=kind), dtype, name="w")
    rel = float(q.metadata["relative_rms_error"])
    assert rel <= DEFAULT_TOLERANCES[dtype]
    assert converter.stats.max_relative_error == rel
    assert converter.stats.max_abs_error == float(q.metadata["max_abs_error"])


def test_validation_rejects_direct_on_small_weights() -> None:
    w = F32(0.01) * _weights((4, 32))
    converter = PrecisionConverter(ConversionConfig(strategy=S.DIRECT, validate_results=True))
    with pytest.raises(
        ConversionError, match=r"tensor 'small': relative RMS error 1 exceeds the tolerance 0.03"
    ):
        converter.convert_tensor(w, DType.I8, name="small")
    assert converter.stats.failures == 1


def test_validation_tolerance_override() -> None:
    w = _weights((4, 64))
    with pytest.raises(ConversionError, match=r"exceeds the tolerance 0\.001"):
        _convert(w, DType.I8, validate_results=True, validation_tolerance=1e-3)
    assert ConversionConfig(validation_tolerance=0.5).tolerance(DType.I8) == 0.5
    assert ConversionConfig().tolerance(DType.I4) == DEFAULT_TOLERANCES[DType.I4]


# --- batch, stats, metadata, immutability --------------------------------------------------------


def test_convert_batch_collects_every_failure() -> None:
    converter = PrecisionConverter()
    tensors = {"a": _weights((2, 8)), "b": np.array([np.nan], F32), "c": np.array([1, 2], np.int64)}
    with pytest.raises(ConversionError, match=r"2 of 3 tensors failed") as info:
        converter.convert_batch(tensors, DType.I8)
    assert "tensor 'b'" in str(info.value) and "tensor 'c'" in str(info.value)
    assert converter.stats.conversions == 1 and converter.stats.failures == 2


def test_convert_batch_and_stats() -> None:
    converter = PrecisionConverter()
    out = converter.convert_batch({"x": _weights((4, 16)), "y": _weights((8,))}, "int4")
    assert list(out) == ["x", "y"] and all(q.dtype is DType.I4 for q in out.values())
    converter.convert_tensor(_weights((2, 8)), DType.F16)
    stats = converter.stats
    assert stats.conversions == 3 and stats.failures == 0
    assert dict(stats.by_dtype) == {DType.I4: 2, DType.F16: 1}
    assert stats.bytes_in == (64 + 8 + 16) * 4
    assert stats.bytes_out == (4 * 8 + 4 * 4) + (4 + 4) + 16 * 2
    assert stats.max_relative_error is None  # not validated


def test_metadata() -> None:
    w = _weights((2, 8))
    q = _convert(w, DType.BITNET158)
    assert dict(q.metadata) == {"source_dtype": "F32", "strategy": "scaled", "name": "w"}
    assert dict(_convert(w, DType.BITNET158, preserve_metadata=False).metadata) == {}


def test_quantized_tensor_is_immutable() -> None:
    q = _convert(_weights((2, 8)), DType.I4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        q.dtype = DType.I8  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        q.data[0, 0] = 1


# --- activations and per-call layouts ------------------------------------------------------------


def test_int8_activations_are_per_token_readme_formula() -> None:
    x = np.array([[1.0, -2.0, 0.5, 0.0], [0, 0, 0, 0]], F32)  # s = 2: [64, -127, 32, 0]
    q = PrecisionConverter().convert_activations(x, DType.I8, name="act")
    assert q.dtype is DType.I8 and q.layout.group_size == 4 and q.zero_points is None
    assert q.data.tolist() == [[192, 1, 160, 128], [128] * 4]
    assert q.scales.tolist() == [[F32(2) / F32(127)], [0.0]]
    assert q.metadata["strategy"] == "per_token"
    assert q.nbytes == storage_bytes(DType.I8, x.shape, q.layout)
    np.testing.assert_array_equal(q.dequantize()[0], F32(2) / F32(127) * np.array([64, -127, 32, 0], F32))


@pytest.mark.parametrize("shape", [(2, 3, 16), (16,)])
def test_int8_activations_match_quantize_tokens(shape: tuple[int, ...]) -> None:
    x = _weights(shape).astype(np.float16)
    q = PrecisionConverter(ConversionConfig(strategy=S.DIRECT)).convert_activations(x, "int8")
    tokens = quantize_tokens(x)
    np.testing.assert_array_equal(q.dequantize(), tokens.dequantize())


def test_float_activations_and_rejected_targets() -> None:
    converter = PrecisionConverter()
    x = _weights((2, 8))
    np.testing.assert_array_equal(converter.convert_activations(x, DType.F16).data, x.astype(np.float16))
    with pytest.raises(ConversionError, match=r"tensor 'act': activations quantize to I8 .* or a float type"):
        converter.convert_activations(x, DType.I4, name="act")
    with pytest.raises(ConversionError, match="'act' holds 1 NaN"):
        converter.convert_activations(np.array([np.nan, 1], F32), DType.I8, name="act")


def test_layout_override_for_one_call() -> None:
    converter = PrecisionConverter(ConversionConfig(group_size=64))
    w = _weights((4, 128))
    q = converter.convert_tensor(w, DType.I4, layout=WeightLayout(group_size=32, asymmetric=True))
    assert q.layout.group_size == 32 and q.zero_points is not None and q.scales.shape == (4, 4)
    assert converter.convert_tensor(w, DType.I4).layout.group_size == 64
    t = converter.convert_tensor(w, DType.BITNET158, layout=WeightLayout(per_channel=True))
    assert t.scales.shape == (4,)
    with pytest.raises(ConfigError, match="asymmetric=True contradicts strategy DIRECT"):
        PrecisionConverter(ConversionConfig(strategy=S.DIRECT)).convert_tensor(
            w, DType.I4, layout=WeightLayout(asymmetric=True)
        )


def test_config_layout_round_trip() -> None:
    layout = WeightLayout(group_size=32, asymmetric=True, per_channel=True, packing=TernaryPacking.BASE3)
    assert ConversionConfig().with_layout(layout).layout == layout
