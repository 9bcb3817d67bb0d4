"""GPTQ (numerics.gptq) against an independent numpy reference, and through the converter."""

from __future__ import annotations

import numpy as np
import pytest

from bitnet_onnx.core.dtypes import ConversionStrategy, DType, TernaryScale, WeightLayout, storage_bytes
from bitnet_onnx.core.errors import ConfigError, ConversionError
from bitnet_onnx.numerics.converter import ConversionConfig, PrecisionConverter
from bitnet_onnx.numerics.gptq import DAMPING, Hessian, gptq_groups, gptq_ternary
from bitnet_onnx.numerics.quantization import (
    TERNARY_EPS,
    GroupWeights,
    clipped_groups,
    encode_groups,
    ternarize,
)

F32 = np.float32


def _correlated(n: int, k: int, seed: int) -> np.ndarray:
    """Activations X [n, K] with strongly correlated columns (a low-rank part plus noise), as a
    trained layer's inputs are."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(8, k))
    return (rng.normal(size=(n, 8)) @ mixing + 0.1 * rng.normal(size=(n, k))).astype(F32)


def _layer(n_out: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(W [N, K], calibration X, held-out X) of one layer."""
    w = np.random.default_rng(seed + 100).normal(size=(n_out, k)).astype(F32)
    x = _correlated(512, k, seed)
    return w, x[:384], x[384:]


def _hessian(x: np.ndarray) -> np.ndarray:
    h = Hessian(x.shape[-1])
    h.add(x)
    return h.matrix


def _reference(w: np.ndarray, h: np.ndarray, group_size: int, start, round_column) -> np.ndarray:
    """GPTQ as the optimal-brain-quantizer recursion it stands for: after each column, every later
    column is updated at once and the inverse Hessian is downdated explicitly (no Cholesky factor,
    no blocks)."""
    weights = w.astype(np.float64).copy()
    h = h.astype(np.float64).copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    weights[:, dead] = 0.0
    h += DAMPING * np.mean(np.diag(h)) * np.eye(h.shape[0])
    inverse = np.linalg.inv(h)
    codes = []
    grid = None
    for j in range(weights.shape[1]):
        if j % group_size == 0:
            grid = start(weights[:, j : j + group_size], j // group_size)
        code, q = round_column(weights[:, j], grid)
        codes.append(code)
        error = (weights[:, j] - q) / inverse[j, j]
        weights[:, j:] -= np.outer(error, inverse[j, j:])
        inverse -= np.outer(inverse[:, j], inverse[j, :]) / inverse[j, j]
    return np.stack(codes, axis=1)


def _reference_groups(w, h, bits, group_size, asymmetric):
    scales = {}

    def start(current, index):
        grid = clipped_groups(current, bits, None, asymmetric)
        scales[index] = grid.scales, grid.zero_points
        return scales[index]

    def round_column(column, grid):
        s, zp = grid
        codes = encode_groups(column[:, None], s, zp, bits, None)
        return codes[:, 0], GroupWeights(codes, s, zp, bits, 8 // bits).dequantize()[:, 0]

    codes = _reference(w, h, group_size, start, round_column)
    return codes, np.concatenate([scales[i][0] for i in sorted(scales)], axis=1)


GROUP_CASES = [
    pytest.param(bits, group, asym, id=f"I{bits}-g{group}{'z' if asym else ''}")
    for bits in (8, 4, 2)
    for group, asym in ((16, False), (48, True), (200, False))
]


@pytest.mark.parametrize(("bits", "group_size", "asymmetric"), GROUP_CASES)
def test_groups_equal_the_reference(bits: int, group_size: int, asymmetric: bool) -> None:
    # K = 200 with blocks of 64: groups of 48 straddle block ends, so the lazy updates are exercised.
    w, x, _ = _layer(12, 200)
    h = _hessian(x)
    got = gptq_groups(w, h, bits, group_size, asymmetric, block_size=64)
    codes, scales = _reference_groups(w, h, bits, group_size, asymmetric)
    np.testing.assert_array_equal(got.codes, codes)
    np.testing.assert_allclose(got.scales, scales, rtol=1e-6)
    assert (got.zero_points is not None) == asymmetric


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("scale", list(TernaryScale))
def test_ternary_equals_the_reference(per_channel: bool, scale: TernaryScale) -> None:
    w, x, _ = _layer(12, 200, seed=1)
    h = _hessian(x)
    got = gptq_ternary(w, h, per_channel, scale, block_size=64)
    s = ternarize(w, per_channel, scale).scale
    column_scale = np.broadcast_to(s, (w.shape[0],)).astype(F32)

    def round_column(column, grid):
        t = np.clip(np.rint(column.astype(F32) / (column_scale + TERNARY_EPS)), -1, 1).astype(np.int8)
        return t, t * column_scale

    np.testing.assert_array_equal(got.values, _reference(w, h, w.shape[1], lambda c, i: None, round_column))
    np.testing.assert_array_equal(got.scale, s)


QUANTIZED = [DType.I4, DType.I2, DType.BITNET158]


ERROR_CASES = [
    pytest.param(DType.I4, WeightLayout(group_size=32), id="I4-g32"),
    pytest.param(DType.I4, WeightLayout(), id="I4-row"),
    pytest.param(DType.I2, WeightLayout(group_size=32, asymmetric=True), id="I2-g32z"),
    pytest.param(DType.I2, WeightLayout(), id="I2-row"),
    pytest.param(DType.BITNET158, WeightLayout(), id="BITNET158"),
    pytest.param(DType.BITNET158, WeightLayout(per_channel=True), id="BITNET158-pc"),
]


@pytest.mark.parametrize(("dtype", "layout"), ERROR_CASES)
def test_output_error_below_round_to_nearest(dtype: DType, layout: WeightLayout) -> None:
    w, x, held_out = _layer(64, 256, seed=2)
    h = _hessian(x)
    gptq = PrecisionConverter(ConversionConfig(strategy=ConversionStrategy.GPTQ))
    ours = gptq.convert_tensor(w, dtype, layout=layout, hessian=h).dequantize()
    for rounding in (ConversionStrategy.SCALED, ConversionStrategy.QUANTIZATION_AWARE):
        nearest = PrecisionConverter(ConversionConfig(strategy=rounding)).convert_tensor(
            w, dtype, layout=layout
        )
        for acts in (x, held_out):
            exact = acts @ w.T
            error = np.linalg.norm(exact - acts @ nearest.dequantize().T)
            assert np.linalg.norm(exact - acts @ ours.T) < 0.8 * error


@pytest.mark.parametrize("dtype", [DType.I8, *QUANTIZED], ids=lambda d: d.name)
def test_converter_stores_exact_bytes_deterministically(dtype: DType) -> None:
    w, x, _ = _layer(10, 70, seed=3)
    h = _hessian(x)
    layout = WeightLayout(group_size=32, asymmetric=dtype is DType.I4)
    converter = PrecisionConverter(ConversionConfig(strategy=ConversionStrategy.GPTQ))
    first = converter.convert_tensor(w, dtype, layout=layout, hessian=h, name="w")
    second = converter.convert_tensor(w, dtype, layout=layout, hessian=h, name="w")
    assert first.nbytes == storage_bytes(dtype, w.shape, first.layout)
    assert first.metadata["strategy"] == "gptq"
    np.testing.assert_array_equal(first.data, second.data)
    np.testing.assert_array_equal(first.scales, second.scales)


def test_float_targets_are_the_exact_cast_without_activations() -> None:
    w = np.random.default_rng(4).normal(size=(3, 5)).astype(F32)
    converter = PrecisionConverter(ConversionConfig(strategy=ConversionStrategy.GPTQ))
    np.testing.assert_array_equal(converter.convert_tensor(w, DType.F16).data, w.astype(np.float16))


def test_columns_no_sample_reaches_are_zero() -> None:
    w, x, _ = _layer(6, 32, seed=5)
    x[:, 3] = 0.0
    got = gptq_groups(w, _hessian(x), 4, 32)
    assert np.all(got.dequantize()[:, 3] == 0.0)


def test_identity_hessian_gives_the_clipped_round_to_nearest() -> None:
    # With H ∝ I no column's error can be compensated by another: GPTQ is QUANTIZATION_AWARE.
    w = np.random.default_rng(6).normal(size=(8, 64)).astype(F32)
    got = gptq_groups(w, np.eye(64), 4, 32)
    expected = clipped_groups(w, 4, 32, False)
    np.testing.assert_array_equal(got.codes, expected.codes)
    np.testing.assert_array_equal(got.scales, expected.scales)


def test_hessian_accumulates_batches_and_drops_non_finite_rows() -> None:
    x = np.random.default_rng(7).normal(size=(2, 5, 4)).astype(F32)
    h = Hessian(4)
    h.add(x[0])
    bad = x[1].copy()
    bad[2, 1] = np.nan
    h.add(bad)
    kept = np.concatenate([x[0], np.delete(x[1], 2, axis=0)]).astype(np.float64)
    assert h.samples == 9
    np.testing.assert_allclose(h.matrix, 2.0 * kept.T @ kept / 9)


def test_bad_inputs_name_the_problem_and_the_fix() -> None:
    w = np.ones((4, 8), F32)
    converter = PrecisionConverter(ConversionConfig(strategy=ConversionStrategy.GPTQ))
    with pytest.raises(ConversionError, match="hessian=H"):
        converter.convert_tensor(w, DType.I4, name="w")
    with pytest.raises(ConversionError, match="I8, I4, I2 and BITNET158"):
        converter.convert_tensor(w, DType.I1, hessian=np.eye(8))
    with pytest.raises(ConversionError, match="weight matrix"):
        converter.convert_tensor(np.ones(8, F32), DType.I4, hessian=np.eye(8))
    with pytest.raises(ConfigError, match=r"needs \[8, 8\]"):
        converter.convert_tensor(w, DType.I4, hessian=np.eye(7))
    with pytest.raises(ConfigError, match="no finite activation rows"):
        Hessian(8).matrix  # noqa: B018
    with pytest.raises(ConfigError, match="K=8"):
        Hessian(8).add(np.ones((2, 7)))
