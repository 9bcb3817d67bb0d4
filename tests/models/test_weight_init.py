"""Weight recipes: statistics as documented, and reproducibility by (seed, tensor name)."""

from __future__ import annotations

import numpy as np
import pytest

from models.weights import WeightInit, WeightSampler, ternary_scale


def _excess_kurtosis(x: np.ndarray) -> float:
    x = x.ravel().astype(np.float64)
    x = x - x.mean()
    return float((x**4).mean() / (x**2).mean() ** 2 - 3.0)


def test_random_weights_are_normal_with_std_002_and_unit_gains():
    sampler = WeightSampler(WeightInit.RANDOM, seed=0)
    w = sampler.matrix("w", (512, 256), out_axis=1, depth=0.5)
    assert w.dtype == np.float32 and w.shape == (512, 256)
    assert abs(w.std() - 0.02) < 0.0005 and abs(_excess_kurtosis(w)) < 0.1
    np.testing.assert_array_equal(sampler.gain("g", 8, depth=0.0), np.ones(8, np.float32))


def test_trained_like_weights_are_heavy_tailed_most_at_the_ends_with_outlier_input_channels():
    sampler = WeightSampler(WeightInit.TRAINED_LIKE, seed=0)
    ends = sampler.matrix("a", (1000, 400), out_axis=1, depth=0.0)
    middle = sampler.matrix("a", (1000, 400), out_axis=1, depth=0.5)
    assert _excess_kurtosis(middle) > 1.0  # per-channel spread and outliers alone make tails
    assert _excess_kurtosis(ends) > 4.0 * _excess_kurtosis(middle)
    row_rms = np.sqrt((ends.astype(np.float64) ** 2).mean(axis=1))
    outliers = row_rms > 5.0 * np.median(row_rms)
    assert outliers.sum() == 10  # round(1000 / 100) input channels, x16 at the ends
    column_rms = np.sqrt((middle[~outliers].astype(np.float64) ** 2).mean(axis=0))
    assert column_rms.std() / column_rms.mean() > 0.2  # per-output-channel spread


def test_trained_like_gains_have_outlier_channels():
    gain = WeightSampler(WeightInit.TRAINED_LIKE, seed=0).gain("g", 300, depth=1.0)
    assert (gain > 4.0).sum() == 3 and np.median(np.abs(gain - 1.0)) < 0.1


@pytest.mark.parametrize(
    ("shape", "out_axis", "fan_in"), [((96, 40), 1, 96), ((40, 96), 0, 96), ((8, 4, 3, 3), 0, 36)]
)
def test_ternary_weights_are_trits_times_the_fan_in_scale(shape, out_axis, fan_in):
    w = WeightSampler(WeightInit.TERNARY, seed=0).matrix("t", shape, out_axis=out_axis, depth=0.0)
    scale = ternary_scale(fan_in)
    assert set(np.unique(w).tolist()) == {-scale, 0.0, scale}
    assert scale == np.float32(np.sqrt(1.5 / fan_in))


def test_a_tensor_depends_only_on_seed_and_name():
    a = WeightSampler(WeightInit.TRAINED_LIKE, seed=7)
    first = a.matrix("x", (16, 8), out_axis=1, depth=0.2)
    a.matrix("other", (100, 100), out_axis=1, depth=0.2)
    np.testing.assert_array_equal(a.matrix("x", (16, 8), out_axis=1, depth=0.2), first)
    assert not np.array_equal(
        WeightSampler(WeightInit.TRAINED_LIKE, seed=8).matrix("x", (16, 8), out_axis=1, depth=0.2), first
    )
    assert not np.array_equal(a.matrix("y", (16, 8), out_axis=1, depth=0.2), first)


def _ternarization_error(w: np.ndarray) -> float:
    """Relative error of BitNet b1.58 ternarization (absmean pattern, least-squares scale)."""
    trits = np.clip(np.rint(w / (np.abs(w).mean() + 1e-6)), -1, 1)
    scale = np.abs(w[trits != 0]).mean()
    return float(np.linalg.norm(w - trits * scale) / np.linalg.norm(w))


def test_trained_like_layers_differ_in_sensitivity_and_ternary_layers_have_none():
    trained = WeightSampler(WeightInit.TRAINED_LIKE, seed=0)
    errors = [
        _ternarization_error(trained.matrix("w", (512, 512), out_axis=1, depth=d)) for d in (0.0, 0.5, 1.0)
    ]
    assert errors[0] > 1.2 * errors[1] and errors[2] > 1.2 * errors[1]
    ternary = WeightSampler(WeightInit.TERNARY, seed=0).matrix("w", (512, 512), out_axis=1, depth=0.0)
    assert _ternarization_error(ternary) < 1e-6
