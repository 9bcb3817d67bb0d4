"""The plan's per-component settings (bitnet_onnx.plan.component_settings)."""

from __future__ import annotations

import enum
from dataclasses import fields

import pytest

from bitnet_onnx.core.dtypes import ConversionStrategy, DType, TernaryPacking, WeightLayout
from bitnet_onnx.core.plan import Decision, component_settings


@pytest.mark.parametrize(
    ("dtype", "layout", "strategy"),
    [
        (DType.BITNET158, WeightLayout(per_channel=True, packing=TernaryPacking.BASE3), None),
        (DType.I4, WeightLayout(group_size=32, asymmetric=True), ConversionStrategy.SCALED),
        (DType.F16, WeightLayout(), ConversionStrategy.DIRECT),
    ],
)
def test_settings_hold_the_precision_every_layout_knob_the_strategy_and_the_rule(dtype, layout, strategy):
    decision = Decision(dtype, "policy:p/r", layout, strategy, None, "why")
    settings = component_settings(decision)
    expected = {
        "precision": dtype.name,
        **{
            f.name: v.value if isinstance(v := getattr(layout, f.name), enum.Enum) else v
            for f in fields(layout)
        },
        "conversion_strategy": strategy.value if strategy else None,
        "rule": "policy:p/r",
    }
    assert settings == expected
    keys = list(settings)
    assert keys[0] == "precision" and keys[-1] == "rule"
