"""CompileReport, output metrics and thresholds (bitnet_onnx.config.report)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bitnet_onnx.config.config import MixedPrecisionStrategy
from bitnet_onnx.config.report import (
    THRESHOLDS,
    CompileReport,
    CompileValidationError,
    Thresholds,
    compare_outputs,
)
from bitnet_onnx.config.validation import Finding, Severity


def test_identical_outputs():
    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    m = compare_outputs("y", x, x.copy())
    assert (m.max_abs_error, m.max_rel_error, m.shape) == (0.0, 0.0, (3, 5))
    assert m.cosine == pytest.approx(1.0, abs=1e-15)


def test_hand_computed_metrics():
    m = compare_outputs("y", np.array([2.0, 0.0, -1.0]), np.array([2.0, 1.0, -1.0], np.float32))
    assert m.max_abs_error == 1.0
    assert m.max_rel_error == 0.5  # relative to max |reference| = 2
    assert m.cosine == pytest.approx(5 / (math.sqrt(5) * math.sqrt(6)))


@pytest.mark.parametrize(
    "ref, out, cosine",
    [([0.0, 0.0], [0.0, 0.0], 1.0), ([0.0, 0.0], [1.0, 0.0], 0.0), ([1.0, 0.0], [0.0, 0.0], 0.0)],
)
def test_zero_outputs(ref, out, cosine):
    assert compare_outputs("y", np.array(ref), np.array(out)).cosine == cosine


def test_reference_zero_and_output_not_is_infinitely_relative():
    m = compare_outputs("y", np.zeros(2), np.array([0.0, 1e-3]))
    assert m.max_rel_error == math.inf and m.max_abs_error == pytest.approx(1e-3)


def test_non_finite_where_the_original_is_finite_fails():
    m = compare_outputs("y", np.array([1.0, 2.0]), np.array([1.0, np.nan]))
    assert m.max_abs_error == math.inf and math.isnan(m.cosine)
    assert m.misses(THRESHOLDS[MixedPrecisionStrategy.AGGRESSIVE]) == [
        "cosine nan < 0.65",
        "max relative error inf > 1.5",
    ]


def test_same_non_finite_values_are_compared_on_the_rest():
    m = compare_outputs("y", np.array([np.inf, np.nan, 1.0]), np.array([np.inf, np.nan, 1.0]))
    assert m.max_abs_error == 0.0 and m.cosine == 1.0
    m = compare_outputs("y", np.array([np.inf, 1.0]), np.array([-np.inf, 1.0]))
    assert m.max_abs_error == math.inf


def test_bool_and_integer_outputs():
    m = compare_outputs("ids", np.array([1, 2, 3], np.int64), np.array([1, 2, 4], np.int64))
    assert m.max_abs_error == 1.0 and m.max_rel_error == pytest.approx(1 / 3)


def test_thresholds_per_strategy_are_ordered_strict_to_loose():
    c, b, a = (Thresholds.for_strategy(s) for s in ("conservative", "balanced", "aggressive"))
    assert c.min_cosine > b.min_cosine > a.min_cosine
    assert c.max_rel_error < b.max_rel_error < a.max_rel_error
    assert Thresholds.for_strategy("custom") == a
    assert (c.min_cosine, b.min_cosine, a.min_cosine) == (0.999, 0.75, 0.65)


def test_misses_name_each_threshold():
    m = compare_outputs("y", np.array([1.0, 0.0]), np.array([0.0, 1.0]))
    assert m.misses(Thresholds(0.5, 0.5)) == ["cosine 0 < 0.5", "max relative error 1 > 0.5"]
    assert m.misses(Thresholds(-1.0, 1.0)) == []


def _report(findings=(), outputs=None) -> CompileReport:
    if outputs is None:
        outputs = (compare_outputs("y", np.array([1.0, 2.0]), np.array([1.0, 2.1])),)
    return CompileReport(
        findings=tuple(findings),
        strategy="balanced",
        thresholds=THRESHOLDS[MixedPrecisionStrategy.BALANCED],
        outputs=outputs,
        inputs="the given inputs",
    )


def test_goal_met_needs_compared_outputs_within_thresholds():
    assert _report().goal_met and _report().ok
    assert not _report(outputs=()).goal_met
    far = (compare_outputs("y", np.array([1.0, 0.0]), np.array([0.0, 1.0])),)
    assert not _report(outputs=far).goal_met


def test_raise_if_errors_carries_the_report_and_lists_every_error():
    errors = [Finding("readback", Severity.ERROR, f"l{i}/weights", "bad") for i in range(2)]
    report = _report([*errors, Finding("numerics", Severity.WARNING, "output y", "low")])
    with pytest.raises(CompileValidationError, match=r"found 2 error\(s\)") as info:
        report.raise_if_errors()
    assert info.value.report is report and len(info.value.findings) == 3
    assert "[readback] l1/weights: bad" in str(info.value)
    _report([errors[0].__class__("x", Severity.WARNING, "model", "w")]).raise_if_errors()


def test_json_and_summary():
    far = compare_outputs("z", np.array([1.0, 2.0]), np.array([1.0, np.nan]))
    report = _report([Finding("numerics", Severity.WARNING, "output z", "missed")], outputs=(far,))
    data = json.loads(json.dumps(report.to_json()))
    assert data["outputs"][0]["max_abs_error"] == "inf" and data["outputs"][0]["cosine"] == "nan"
    assert data["goal_met"] is False and data["ok"] is True
    assert data["findings"][0] == {
        "rule": "numerics",
        "severity": "warning",
        "subject": "output z",
        "message": "missed",
        "suggestion": "",
    }
    summary = report.summary()
    assert "thresholds for balanced: cosine ≥ 0.75, max rel ≤ 1" in summary
    assert "z [2]: cosine nan" in summary and "MISSED" in summary
    assert "warning: [numerics] output z: missed" in summary
