"""Policy facts (config/policy_facts.py): weight statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bitnet_onnx.config import policy_facts
from bitnet_onnx.config.policy import (
    WEIGHT_STATISTICS,
    weight_statistics,
)


def test_weight_statistics_by_hand():
    stats = weight_statistics(np.array([[-2.0, 0.0], [0.0, 2.0]], dtype=np.float32))
    # mean 0, m2 = 8/4 = 2, m4 = 32/4 = 8, excess kurtosis 8/2² − 3 = −1
    assert stats == pytest.approx(
        {"absmax": 2.0, "absmean": 1.0, "mean": 0.0, "std": math.sqrt(2.0), "kurtosis": -1.0,
         "outlier_ratio": 0.0, "zero_fraction": 0.5}
    )  # fmt: skip
    assert tuple(stats) == WEIGHT_STATISTICS


def test_weight_statistics_outlier_and_kurtosis_against_numpy():
    w = np.zeros(100)
    w[0] = 10.0  # mean 0.1, std sqrt(1 − 0.01): only the 10 is more than 3 std from the mean
    stats = weight_statistics(w)
    centered = w - w.mean()
    assert stats["outlier_ratio"] == 0.01
    assert stats["std"] == pytest.approx(math.sqrt(0.99))
    assert stats["kurtosis"] == pytest.approx(np.mean(centered**4) / np.mean(centered**2) ** 2 - 3)
    assert stats["zero_fraction"] == 0.99


def test_weight_statistics_of_a_gaussian():
    stats = weight_statistics(np.random.default_rng(0).standard_normal(1_000_000))
    assert stats["kurtosis"] == pytest.approx(0.0, abs=0.03)
    assert stats["outlier_ratio"] == pytest.approx(0.0027, abs=0.0003)
    assert stats["std"] == pytest.approx(1.0, abs=0.01)
    assert stats["absmean"] == pytest.approx(math.sqrt(2 / math.pi), abs=0.01)


def test_weight_statistics_do_not_depend_on_chunking(monkeypatch):
    w = np.random.default_rng(1).laplace(size=(13, 17)).astype(np.float16)
    whole = weight_statistics(w)
    monkeypatch.setattr(policy_facts, "_CHUNK", 7)
    assert weight_statistics(w) == pytest.approx(whole, rel=1e-12)


def test_weight_statistics_of_degenerate_tensors():
    assert all(math.isnan(v) for v in weight_statistics(np.zeros((0, 4))).values())
    constant = weight_statistics(np.full(5, 3.0))
    assert math.isnan(constant["kurtosis"])
    assert (constant["std"], constant["outlier_ratio"], constant["absmax"]) == (0.0, 0.0, 3.0)
