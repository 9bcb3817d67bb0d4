"""The plan's per-component settings (bitnet_onnx.core.plan.component_settings) and a planned layer's
stored bytes."""

from __future__ import annotations

import enum
from dataclasses import fields

import pytest

from bitnet_onnx.config.config import fit_layout
from bitnet_onnx.core.dtypes import ConversionStrategy, DType, TernaryPacking, WeightLayout
from bitnet_onnx.core.layers import ComponentType, Layer, LayerType
from bitnet_onnx.core.plan import Decision, LayerPlan, PlannedLayer, component_settings


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


_LAYOUTS = [
    WeightLayout(),
    WeightLayout(group_size=32),
    WeightLayout(group_size=32, asymmetric=True),
    WeightLayout(per_channel=True, packing=TernaryPacking.BASE3),
]


@pytest.mark.parametrize("weights", [DType.F32, DType.F16, DType.I8, DType.I4, DType.I2, DType.BITNET158])
@pytest.mark.parametrize("layout", _LAYOUTS, ids=str)
@pytest.mark.parametrize("bias", [None, DType.F16, DType.F32])
def test_a_planned_layer_stores_its_weights_in_their_layout_and_its_bias(weights, layout, bias):
    """Bytes counted by hand: float elements × bytes each; integer codes packed per row of K with
    one float32 scale per group (and a one-byte zero point per group when asymmetric)."""
    rows, k = 6, 64
    fits = fit_layout(weights, layout)
    layer = Layer("fc", LayerType.LINEAR, 0, ("fc",), "rule", weight="w", weight_shape=(rows, k), bias="b")
    decisions = {ComponentType.WEIGHTS: Decision(weights, "s", fits, None, None, "")}
    if bias is not None:
        decisions[ComponentType.BIAS] = Decision(bias, "s", WeightLayout(), None, None, "")
    planned = PlannedLayer(LayerPlan(layer, decisions), (rows, k), (rows,) if bias else None)
    if weights.is_float:
        expected = rows * k * weights.bits // 8
    elif weights is DType.BITNET158:
        per_byte = 5 if fits.packing is TernaryPacking.BASE3 else 4
        expected = rows * -(-k // per_byte) + 4 * (rows if fits.per_channel else 1)
    else:
        groups = rows * (k // fits.group_size if fits.group_size else 1)
        expected = rows * k * weights.bits // 8 + 4 * groups
        expected += groups if fits.asymmetric else 0  # one byte per zero point
    expected += rows * bias.bits // 8 if bias is not None else 0
    assert planned.memory_bytes() == expected
    assert planned.name == "fc" and planned.layer_type is LayerType.LINEAR
    assert PlannedLayer(LayerPlan(layer, decisions)).memory_bytes() == 0  # no shapes: nothing counted
