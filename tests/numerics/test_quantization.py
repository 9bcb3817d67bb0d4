"""Reference numerics: hand-computed codes and scales, lossless ternary recovery, the NaN-row rule,
and the op references against independent straightforward computations."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto

from bitnet_onnx.core.dtypes import TernaryPacking, TernaryScale
from bitnet_onnx.core.errors import ConfigError
from bitnet_onnx.numerics.packing import pack_int, pack_ternary
from bitnet_onnx.numerics.quantization import (
    GroupWeights,
    bitlinear_reference,
    dequantize_lowbit_reference,
    encode_groups,
    group_scales,
    lowbit_matmul_reference,
    quantize_groups,
    quantize_lowbit_reference,
    quantize_tokens,
    ternarize,
)

F32 = np.float32


# --- ternary -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scale", "expected"),
    [
        # γ = mean|W| = (0.5 + 1 + 0.1 + 2)/4 summed in float64 from the float32 values
        (TernaryScale.ABSMEAN, F32((0.5 + 1.0 + np.float64(F32(0.1)) + 2.0) / 4)),
        (TernaryScale.LEAST_SQUARES, F32(3.5 / 3)),  # α = mean(0.5, 1, 2) over the kept entries
    ],
)
def test_ternarize_by_hand(scale: TernaryScale, expected: np.float32) -> None:
    # γ ≈ 0.9; W/γ ≈ [0.56, -1.11, 0.11, 2.22] → [1, -1, 0, 1]
    tw = ternarize(np.array([[0.5, -1.0, 0.1, 2.0]], F32), scale=scale)
    assert tw.values.tolist() == [[1, -1, 0, 1]]
    assert tw.values.dtype == np.int8
    assert tw.scale.dtype == F32 and tw.scale.shape == (1,)
    assert tw.scale[0] == expected


def test_absmean_is_the_default_scale() -> None:
    w = np.random.default_rng(2).normal(size=(8, 40)).astype(F32)
    assert ternarize(w).scale[0] == ternarize(w, scale=TernaryScale.ABSMEAN).scale[0]
    assert ternarize(w).scale[0] == F32(np.abs(w.astype(np.float64)).mean())


@pytest.mark.parametrize(
    ("scale", "expected"),
    [(TernaryScale.ABSMEAN, [F32(2.2 / 4), 0.0]), (TernaryScale.LEAST_SQUARES, [1.0, 0.0])],
)
def test_ternarize_per_channel_by_hand_with_zero_row(scale: TernaryScale, expected: list[float]) -> None:
    # row 0: γ = 0.55, W/γ ≈ [1.82, -1.82, 0, 0.36] → [1, -1, 0, 0], α = 1 (0.2 is dropped, so the
    # row is not exactly ternary and absmean keeps γ); row 1 all zero → scale 0 under both rules
    w = np.array([[1.0, -1.0, 0.0, 0.2], [0, 0, 0, 0]], F32)
    tw = ternarize(w, per_channel=True, scale=scale)
    assert tw.values.tolist() == [[1, -1, 0, 0], [0, 0, 0, 0]]
    assert tw.scale.tolist() == expected


@pytest.mark.parametrize("scale", list(TernaryScale))
@pytest.mark.parametrize("alpha", [0.01, 0.3, 7.0])
@pytest.mark.parametrize("shape", [(1, 5), (16, 33), (3, 4, 20)])
@pytest.mark.parametrize("per_channel", [False, True])
def test_exactly_ternary_weights_recovered_losslessly(
    alpha: float, shape: tuple[int, ...], per_channel: bool, scale: TernaryScale
) -> None:
    t = np.random.default_rng(3).integers(-1, 2, size=shape).astype(np.int8)
    t.reshape(-1, shape[-1])[:, 0] = 1  # no all-zero row
    w = F32(alpha) * t.astype(F32)
    tw = ternarize(w, per_channel, scale)
    np.testing.assert_array_equal(tw.values, t)
    assert (tw.scale == F32(alpha)).all()
    np.testing.assert_array_equal(tw.dequantize(), w)


def test_exactness_is_judged_per_row_or_per_tensor() -> None:
    # rows exactly ternary × 2 and × 0.5, and one float row: per row, the exact rows keep their s and
    # the float row gets its γ; per tensor, three magnitudes are not ternary × one s, so γ of all.
    w = np.array([[2.0, 0.0, -2.0, 2.0], [0.5, -0.5, 0.0, 0.0], [0.3, -0.7, 0.1, 0.9]], F32)
    per_row = ternarize(w, per_channel=True)
    assert per_row.scale.tolist() == [2.0, 0.5, F32(2.0 / 4)]
    assert ternarize(w).scale.tolist() == [F32(np.abs(w.astype(np.float64)).mean())]


@pytest.mark.parametrize("per_channel", [False, True])
def test_absmean_is_bitnet_b158_quantization(per_channel: bool) -> None:
    # T·γ is the weight a BitNet b1.58 model computes with in training: W_q = clip(round(W/γ))·γ.
    w = np.random.default_rng(4).standard_t(4, size=(12, 64)).astype(F32)
    tw = ternarize(w, per_channel)
    gamma = np.abs(w.astype(np.float64)).mean(axis=-1 if per_channel else None, keepdims=per_channel)
    gamma32 = gamma.astype(F32)
    expected = np.clip(np.rint(w / (gamma32 + F32(1e-6))), -1, 1) * gamma32
    np.testing.assert_array_equal(tw.dequantize(), expected.astype(F32))


@pytest.mark.parametrize("scale", list(TernaryScale))
def test_ternarize_all_zero_tensor(scale: TernaryScale) -> None:
    for per_channel in (False, True):
        tw = ternarize(np.zeros((2, 3), F32), per_channel, scale)
        assert (tw.values == 0).all() and (tw.scale == 0).all()


@pytest.mark.parametrize("scale", list(TernaryScale))
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_ternarize_non_finite_row(scale: TernaryScale, bad: float) -> None:
    w = np.ones((3, 4), F32)
    w[1, 2] = bad
    per_row = ternarize(w, per_channel=True, scale=scale)
    assert per_row.scale[0] == 1.0 and np.isnan(per_row.scale[1]) and per_row.scale[2] == 1.0
    assert (per_row.values[1] == 0).all() and (per_row.values[0] == 1).all()
    assert np.isnan(ternarize(w, scale=scale).scale).all()


def test_ternarize_widens_float16() -> None:
    w = np.array([[0.5, -1.0, 0.0, 2.0]], np.float16)
    tw = ternarize(w)
    assert tw.values.tolist() == [[1, -1, 0, 1]] and tw.scale.dtype == F32


# --- group-wise integers -------------------------------------------------------------------------


def test_int4_symmetric_by_hand_half_to_even() -> None:
    # s = 1.75/7 = 0.25; w/s = [7, -2.5, 1, 0] → rint [7, -2, 1, 0]; u = q + 8
    gw = quantize_groups(np.array([[1.75, -0.625, 0.25, 0.0]], F32), bits=4, group_size=4)
    assert gw.scales.tolist() == [[0.25]]
    assert gw.zero_points is None
    assert gw.codes.tolist() == [[15, 6, 9, 8]]
    np.testing.assert_array_equal(gw.dequantize(), [[1.75, -0.5, 0.25, 0.0]])


def test_int2_symmetric_by_hand() -> None:
    # qmax = 1, s = 0.5; w/s = [1, -0.5, 0.4, -1] → [1, 0, 0, -1]; u = q + 2
    gw = quantize_groups(np.array([[0.5, -0.25, 0.2, -0.5]], F32), bits=2, group_size=4)
    assert gw.codes.tolist() == [[3, 2, 2, 1]]
    assert gw.scales.tolist() == [[0.5]]


def test_int8_per_row_by_hand() -> None:
    # group_size None = the whole row; s = 127/127 = 1; -63.5 → -64, 0.5 → 0 (half to even)
    gw = quantize_groups(np.array([[127.0, -63.5, 0.5]], F32), bits=8)
    assert gw.group_size == 3 and gw.scales.tolist() == [[1.0]]
    assert gw.codes.tolist() == [[255, 64, 128]]


def test_int1_scale_is_mean_over_real_elements() -> None:
    # K=4 in a group of 8: s = (0.5 + 1.5 + 0 + 2)/4 = 1, not /8; u = (w >= 0)
    gw = quantize_groups(np.array([[0.5, -1.5, 0.0, 2.0]], F32), bits=1, group_size=8)
    assert gw.scales.tolist() == [[1.0]]
    assert gw.codes.tolist() == [[1, 0, 1, 1]]
    np.testing.assert_array_equal(gw.dequantize(), [[1.0, -1.0, 1.0, 1.0]])


def test_int4_asymmetric_by_hand() -> None:
    # lo = -1, hi = 2.75, s = 3.75/15 = 0.25, zp = rint(1/0.25) = 4; w/s = [-4, 1.5, 11, 2] → +4
    gw = quantize_groups(np.array([[-1.0, 0.375, 2.75, 0.5]], F32), bits=4, group_size=4, asymmetric=True)
    assert gw.scales.tolist() == [[0.25]]
    assert gw.zero_points is not None and gw.zero_points.tolist() == [[4]]
    assert gw.codes.tolist() == [[0, 6, 15, 6]]
    np.testing.assert_array_equal(gw.dequantize(), [[-1.0, 0.5, 2.75, 0.5]])


def test_asymmetric_all_positive_group_has_zero_point_zero() -> None:
    gw = quantize_groups(np.array([[0.5, 1.0, 3.75, 2.0]], F32), bits=4, group_size=4, asymmetric=True)
    assert gw.zero_points.tolist() == [[0]] and gw.codes.tolist() == [[2, 4, 15, 8]]


@pytest.mark.parametrize(
    ("bits", "asymmetric", "code", "zp"),
    [(8, False, 128, None), (4, False, 8, None), (2, False, 2, None), (1, False, 1, None), (4, True, 0, 0)],
)
def test_all_zero_group_stores_zero_scale_and_zero_point(
    bits: int, asymmetric: bool, code: int, zp: int | None
) -> None:
    w = np.zeros((2, 16), F32)
    w[1, 8:] = np.linspace(-1, 1, 8)
    gw = quantize_groups(w, bits, group_size=8, asymmetric=asymmetric)
    assert gw.scales[0].tolist() == [0.0, 0.0] and gw.scales[1, 0] == 0.0
    assert (gw.codes[0] == code).all() and (gw.codes[1, :8] == code).all()
    if zp is not None:
        assert gw.zero_points[0].tolist() == [zp, zp]
    assert (gw.dequantize()[0] == 0).all()


def test_non_finite_row_gets_nan_scales_and_zero_codes() -> None:
    w = np.ones((2, 8), F32)
    w[0, 3] = np.nan
    gw = quantize_groups(w, bits=4, group_size=4)
    assert np.isnan(gw.scales[0]).all() and (gw.codes[0] == 8).all()
    assert gw.scales[1].tolist() == [F32(1 / 7)] * 2


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("asymmetric", [False, True])
@pytest.mark.parametrize(("shape", "group_size"), [((4, 64), 32), ((3, 2, 50), 16), ((1, 9), None)])
def test_group_quantization_error_within_half_step(
    bits: int, asymmetric: bool, shape: tuple[int, ...], group_size: int | None
) -> None:
    w = np.random.default_rng(4).normal(size=shape).astype(F32)
    gw = quantize_groups(w, bits, group_size, asymmetric)
    step = np.repeat(gw.scales, gw.group_size, axis=-1)[..., : shape[-1]]
    err = np.abs(gw.dequantize() - w)
    assert (err <= step * 0.5 * (1 + 1e-5)).all()


def test_encode_groups_uses_given_scales_and_saturates() -> None:
    w = np.array([[1.0, -3.0, 0.2, 0.0]], F32)
    codes = encode_groups(w, np.array([[0.25]], F32), None, bits=4, group_size=4)
    assert codes.tolist() == [[12, 1, 9, 8]]  # 4, -12 → -7, 0.8 → 1, 0


def test_group_scales_reject_asymmetric_one_bit() -> None:
    with pytest.raises(ConfigError, match="1-bit codes are symmetric only"):
        group_scales(np.zeros((1, 8), F32), bits=1, group_size=8, asymmetric=True)


# --- activations ---------------------------------------------------------------------------------


def test_quantize_tokens_by_hand() -> None:
    # s = 2, inv = 63.5: [63.5, -127, 31.75, 0] → [64, -127, 32, 0]
    act = quantize_tokens(np.array([[1.0, -2.0, 0.5, 0.0]], F32))
    assert act.values.tolist() == [[64, -127, 32, 0]]
    assert act.values.dtype == np.int8
    assert act.absmax.tolist() == [2.0] and act.factor[0] == F32(2) / F32(127)


def test_quantize_tokens_zero_and_non_finite_rows() -> None:
    x = np.array([[0, 0, 0], [1, np.nan, 2], [-np.inf, 0, 1], [3, 0, -3]], F32)
    act = quantize_tokens(x)
    assert act.finite.tolist() == [True, False, False, True]
    assert (act.values[:3] == 0).all() and act.values[3].tolist() == [127, 0, -127]
    assert act.absmax[0] == 0 and np.isnan(act.absmax[1:3]).all()


def test_quantize_tokens_keeps_leading_shape() -> None:
    x = np.random.default_rng(5).normal(size=(2, 3, 16)).astype(np.float16)
    act = quantize_tokens(x)
    assert act.values.shape == (2, 3, 16) and act.absmax.shape == (2, 3)
    assert (np.abs(act.values).max(axis=-1) == 127).all()


# --- ops -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["2bit", "base3"])
def test_bitlinear_by_hand(fmt: str) -> None:
    t = np.array([[1, -1, 0, 1], [0, 1, 1, -1]], np.int8)
    packed = pack_ternary(t, TernaryPacking(fmt))
    x = np.array([[1.0, -2.0, 0.5, 0.0], [0, 0, 0, 0]], F32)  # xq row 0 = [64, -127, 32, 0]
    bias = np.array([0.25, -1.0], F32)
    y = bitlinear_reference(x, packed, np.array([0.5], F32), bias, k=4, format=fmt)
    d = F32(2) / F32(127)
    expected0 = [F32(191) * d * F32(0.5) + F32(0.25), F32(-95) * d * F32(0.5) + F32(-1.0)]
    assert y[0].tolist() == expected0
    assert y[1].tolist() == [0.25, -1.0]  # s = 0 → bias


@pytest.mark.parametrize("x_dtype", [np.float32, np.float16])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize(("lead", "k", "n"), [((1,), 5, 3), ((2, 3), 37, 8), ((4,), 130, 17)])
def test_bitlinear_matches_straightforward_formula(
    x_dtype: type, per_channel: bool, lead: tuple[int, ...], k: int, n: int
) -> None:
    rng = np.random.default_rng(6)
    tw = ternarize(rng.normal(size=(n, k)).astype(F32), per_channel)
    x = rng.normal(size=(*lead, k)).astype(x_dtype)
    x.reshape(-1, k)[0, 0] = np.nan
    y = bitlinear_reference(x, pack_ternary(tw.values, TernaryPacking.BASE3), tw.scale, None, k, "base3")
    assert y.dtype == x_dtype and y.shape == (*lead, n)
    rows = x.reshape(-1, k).astype(F32)
    for m, row in enumerate(rows):
        got = y.reshape(-1, n)[m]
        if m == 0:
            assert np.isnan(got).all()
            continue
        s = np.abs(row).max()
        xq = np.clip(np.rint(row * (F32(127) / s)), -127, 127).astype(np.int64)
        acc = np.array([sum(int(a) * int(b) for a, b in zip(xq, t, strict=True)) for t in tw.values])
        expected = (acc.astype(F32) * (s / F32(127))) * np.broadcast_to(tw.scale, (n,))
        np.testing.assert_array_equal(got, expected.astype(x_dtype))


def _naive_lowbit_int(x: np.ndarray, gw: GroupWeights) -> np.ndarray:
    """act_quant=1 written out element by element (an independent check of the vectorized form)."""
    k = x.shape[-1]
    out = np.zeros((x.shape[0], gw.codes.shape[0]), F32)
    for m, row in enumerate(x):
        s = np.abs(row).max()
        xq = np.clip(np.rint(row * (F32(127) / s)), -127, 127).astype(np.int64)
        for n_, u in enumerate(gw.codes.astype(np.int64)):
            y = F32(0)
            for g in range(gw.scales.shape[1]):
                acc = 0
                for i in range(g * gw.group_size, min(k, (g + 1) * gw.group_size)):
                    if gw.bits == 1:
                        q = 2 * u[i] - 1
                    else:
                        zp = 1 << (gw.bits - 1) if gw.zero_points is None else int(gw.zero_points[n_, g])
                        q = u[i] - zp
                    acc += int(xq[i]) * q
                y = F32(y + F32(acc) * gw.scales[n_, g])
            out[m, n_] = y * (s / F32(127))
    return out


@pytest.mark.parametrize(
    ("bits", "group_size", "asymmetric"),
    [
        (8, 16, False),
        (4, 8, False),
        (4, 8, True),
        (2, 4, True),
        (2, 16, False),
        (1, 8, False),
        (4, 40, False),
    ],
)
@pytest.mark.parametrize("k", [16, 37])
def test_lowbit_matmul_int_path_matches_naive(bits: int, group_size: int, asymmetric: bool, k: int) -> None:
    rng = np.random.default_rng(7)
    gw = quantize_groups(rng.normal(size=(5, k)).astype(F32), bits, group_size, asymmetric)
    packed = pack_int(gw.codes, bits, group_size, gw.zero_points)
    x = rng.normal(size=(3, k)).astype(F32)
    y = lowbit_matmul_reference(x, packed, gw.scales, gw.zero_points, None, k, bits, group_size, act_quant=1)
    np.testing.assert_array_equal(y, _naive_lowbit_int(x, gw))


@pytest.mark.parametrize(("bits", "asymmetric"), [(8, False), (4, True), (2, False), (1, False)])
@pytest.mark.parametrize("x_dtype", [np.float32, np.float16])
def test_lowbit_matmul_float_path(bits: int, asymmetric: bool, x_dtype: type) -> None:
    rng = np.random.default_rng(8)
    k, n = 70, 6
    gw = quantize_groups(rng.normal(size=(n, k)).astype(F32), bits, 32, asymmetric)
    packed = pack_int(gw.codes, bits, 32, gw.zero_points)
    x = rng.normal(size=(2, 2, k)).astype(x_dtype)
    x[1, 0, 5] = -np.inf
    bias = rng.normal(size=n).astype(F32)
    y = lowbit_matmul_reference(x, packed, gw.scales, gw.zero_points, bias, k, bits, 32, act_quant=0)
    assert y.dtype == x_dtype and y.shape == (2, 2, n)
    with np.errstate(invalid="ignore"):  # the -inf row; the reference turns it into NaN
        expected = (x.astype(np.float64) @ gw.dequantize().astype(np.float64).T + bias).astype(x_dtype)
    assert np.isnan(y[1, 0]).all()
    mask = np.ones((2, 2), bool)
    mask[1, 0] = False
    np.testing.assert_allclose(
        y[mask].astype(F32),
        expected[mask].astype(F32),
        rtol=1e-3 if x_dtype == np.float16 else 1e-6,
        atol=1e-5,
    )


@pytest.mark.parametrize("to", [TensorProto.FLOAT, TensorProto.FLOAT16])
@pytest.mark.parametrize(
    ("bits", "group_size", "asymmetric", "fmt", "per_channel"),
    [
        (0, 0, False, "2bit", False),
        (0, 0, False, "base3", True),
        (8, 45, False, "", False),
        (4, 32, True, "", False),
        (2, 16, False, "", False),
        (1, 8, False, "", False),
    ],
)
def test_quantize_then_dequantize_lowbit(
    to: int, bits: int, group_size: int, asymmetric: bool, fmt: str, per_channel: bool
) -> None:
    x = np.random.default_rng(9).normal(size=(2, 3, 45)).astype(F32)
    q, scales, zps = quantize_lowbit_reference(x, bits, group_size, asymmetric, fmt or "2bit", per_channel)
    assert q.dtype == np.uint8 and scales.dtype == F32 and zps.dtype == np.uint8
    assert zps.size == 0 if not asymmetric else zps.shape == scales.shape
    out = dequantize_lowbit_reference(
        q, scales, zps if asymmetric else None, 45, bits, fmt or "2bit", group_size, to
    )
    assert out.dtype == (F32 if to == TensorProto.FLOAT else np.float16) and out.shape == x.shape
    if bits == 0:
        expected = ternarize(x, per_channel).dequantize()
    else:
        expected = quantize_groups(x, bits, group_size, asymmetric).dequantize()
    np.testing.assert_array_equal(out, expected.astype(out.dtype))


def test_op_reference_argument_errors() -> None:
    x = np.zeros((1, 8), F32)
    packed = pack_ternary(np.zeros((2, 8), np.int8), TernaryPacking.TWO_BIT)
    with pytest.raises(ConfigError, match="unknown ternary format 'base4'"):
        bitlinear_reference(x, packed, np.ones(1, F32), None, 8, "base4")
    with pytest.raises(ConfigError, match="last axis must be K=9"):
        bitlinear_reference(x, packed, np.ones(1, F32), None, 9, "2bit")
    with pytest.raises(ConfigError, match="scale holds 3 values; need 1 or N=2"):
        bitlinear_reference(x, packed, np.ones(3, F32), None, 8, "2bit")
    with pytest.raises(ConfigError, match="bias has shape"):
        bitlinear_reference(x, packed, np.ones(1, F32), np.ones(3, F32), 8, "2bit")
    with pytest.raises(ConfigError, match="float32 or float16"):
        bitlinear_reference(x.astype(np.float64), packed, np.ones(1, F32), None, 8, "2bit")
    w = pack_int(np.zeros((2, 8), np.uint8), 4, 8)
    with pytest.raises(ConfigError, match="act_quant=2"):
        lowbit_matmul_reference(x, w, np.ones((2, 1), F32), None, None, 8, 4, 8, act_quant=2)
    with pytest.raises(ConfigError, match=r"scales have shape \(2,\); need \(2, 1\)"):
        lowbit_matmul_reference(x, w, np.ones(2, F32), None, None, 8, 4, 8, act_quant=0)
    with pytest.raises(ConfigError, match="to=7"):
        dequantize_lowbit_reference(w, np.ones((2, 1), F32), None, 8, 4, group_size=8, to=7)
