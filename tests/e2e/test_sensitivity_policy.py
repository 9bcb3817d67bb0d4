"""A policy's `sensitivity` condition in compile(): the sensitivity is measured (and cached), and the
layers the policy moves are exactly those whose measured error is over its threshold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import bitnet_onnx
from bitnet_onnx.config.config import MixedPrecisionConfig
from bitnet_onnx.config.policy import (
    ConditionOperator,
    ConditionType,
    PolicyAction,
    PolicyCondition,
    PolicyRule,
    PrecisionPolicy,
)
from bitnet_onnx.core.dtypes import DType
from bitnet_onnx.core.errors import ConfigError
from bitnet_onnx.core.layers import Layer, LayerType
from bitnet_onnx.optimize.calibration import Calibration
from bitnet_onnx.optimize.objectives import PrecisionChoice, candidate_choices
from bitnet_onnx.optimize.sensitivity import measure_sensitivity, measurer

FIXTURES = Path(__file__).resolve().parents[2] / "models" / "fixtures"
MODEL = FIXTURES / "llama_tiny.onnx"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "bitnet-onnx" / "sensitivity"


def _policy(threshold: float) -> PrecisionPolicy:
    conditions = (
        PolicyCondition(ConditionType.LAYER_TYPE, ConditionOperator.EQUAL, LayerType.LINEAR),
        PolicyCondition(
            ConditionType.SENSITIVITY, ConditionOperator.GREATER_THAN, threshold, key=DType.BITNET158
        ),
    )
    rule = PolicyRule("too_sensitive", PolicyAction.set_precision(DType.F16), conditions)
    return PrecisionPolicy("keep_sensitive", rules=(rule,))


def test_compile_measures_sensitivity_and_moves_exactly_the_layers_over_the_threshold(cache):
    feeds = dict(np.load(FIXTURES / "llama_tiny.inputs.npz"))
    # The reference: the same measurement made directly (it fills the cache compile() then reads).
    result = bitnet_onnx.compile(MODEL, "balanced", inputs=feeds, measure_kernels=False)
    linear = [r.name for r in result.layers if r.layer_type == "linear"]
    table = measure_sensitivity(
        MODEL,
        Calibration((feeds,)),
        layers=linear,
        choices={name: [_ternary(name)] for name in linear},
    )
    errors = {e.layer: 1.0 - e.cosine for e in table.entries}
    threshold = float(np.median(list(errors.values())))
    config = MixedPrecisionConfig.balanced().with_policy(_policy(threshold))
    with pytest.raises(ConfigError, match=r"keep_sensitive/too_sensitive have a sensitivity condition"):
        bitnet_onnx.compile(MODEL, config, inputs=feeds, measure_kernels=False)  # nothing to measure with
    calls = []

    def calibration() -> Calibration:
        calls.append(1)
        return Calibration((feeds,))

    compiled = bitnet_onnx.compile(
        MODEL, config, inputs=feeds, measure_kernels=False, sensitivity=measurer(MODEL, calibration)
    )
    assert calls == [1]
    moved = {r.name for r in compiled.layers if r.rule.startswith("policy:keep_sensitive")}
    expected = {name for name, error in errors.items() if error > threshold}
    assert moved == expected and 0 < len(moved) < len(linear)
    assert all(r.precisions["weights"] == "F16" for r in compiled.layers if r.name in moved)
    assert any(cache.glob("*.json"))


def _ternary(name: str) -> PrecisionChoice:
    layer = Layer(name, LayerType.LINEAR, 0, (), "test", "w", (64, 64))
    return next(c for c in candidate_choices(layer) if c.precision is DType.BITNET158)
