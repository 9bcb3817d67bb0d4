"""rewrite, CONVOLUTION layers (passes/rewrite/convolution.py): one test per case."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from bitnet_onnx.core.dtypes import DType, TernaryPacking, WeightLayout, storage_bytes
from bitnet_onnx.core.layers import Layer, LayerType
from bitnet_onnx.numerics.converter import PrecisionConverter
from tests.passes.rewrite_graphs import (
    decision,
    export,
    initializers,
    make_plan,
    needs_op,
    ops,
    relative_error,
    rewrite,
    round_to,
    run,
)

F32 = np.float32
COUT, CIN, KH = 6, 4, 3


def _weights() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((COUT, CIN, KH, KH)) / np.sqrt(CIN * KH * KH)).astype(F32)
    return w, (0.1 * rng.standard_normal(COUT)).astype(F32)


def _conv() -> tuple[gs.Graph, Layer]:
    w, b = _weights()
    x = gs.Variable("x", dtype=F32, shape=["n", CIN, 7, 7])
    y = gs.Variable("y", dtype=F32, shape=["n", COUT, 7, 7])
    node = gs.Node(
        "Conv", "/layer1/conv/Conv", {"pads": [1, 1, 1, 1], "kernel_shape": [KH, KH]},
        [x, gs.Constant("layer1.conv.weight", w), gs.Constant("layer1.conv.bias", b)], [y],
    )  # fmt: skip
    graph = gs.Graph(nodes=[node], inputs=[x], outputs=[y], opset=17)
    layer = Layer(
        "layer1.conv", LayerType.CONVOLUTION, 0, (node.name,), "test",
        weight="layer1.conv.weight", weight_shape=w.shape, bias="layer1.conv.bias",
    )  # fmt: skip
    return graph, layer


def _conv_reference(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Same-padded 3×3 convolution, in float64."""
    n, _, h, width = x.shape
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, COUT, h, width))
    for i in range(KH):
        for j in range(KH):
            patch = padded[:, :, i : i + h, j : j + width]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j].astype(np.float64))
    return (out + b[None, :, None, None]).astype(F32)


def _x() -> np.ndarray:
    return np.random.default_rng(9).standard_normal((2, CIN, 7, 7)).astype(F32)


@pytest.mark.kernels
@pytest.mark.parametrize("weights", [DType.F16, DType.BF16])
def test_case_2_float_weights_are_stored_in_their_type_and_cast_for_the_conv(weights):
    graph, layer = _conv()
    result, _ = rewrite(graph, [make_plan(layer, weights=weights)])
    model = export(graph)
    assert ops(model) == {"Cast": 1, "Conv": 1}
    arrays = initializers(model)
    assert arrays[f"layer1.conv.weight_{weights.name.lower()}"].shape == (COUT, CIN, KH, KH)
    w, b = _weights()
    assert f"constants {w.nbytes + b.nbytes} → {w.nbytes // 2 + b.nbytes} bytes" in result.changes[0].detail
    x = _x()
    (y,) = run(model, {"x": x})
    np.testing.assert_allclose(y, _conv_reference(x, round_to(w, weights), b), rtol=1e-4, atol=1e-5)


_PACKED = [
    (DType.BITNET158, WeightLayout()),
    (DType.BITNET158, WeightLayout(per_channel=True, packing=TernaryPacking.BASE3)),
    (DType.I8, WeightLayout()),
    (DType.I4, WeightLayout(group_size=8)),
    (DType.I4, WeightLayout(asymmetric=True)),
    (DType.I2, WeightLayout(group_size=12)),
]


@pytest.mark.kernels
@pytest.mark.parametrize(("weights", "layout"), _PACKED)
def test_case_3_low_bit_weights_are_stored_packed_and_unpacked_for_the_conv(weights, layout):
    needs_op("DequantizeLowBit")
    graph, layer = _conv()
    rewrite(graph, [make_plan(layer, weights=decision(weights, layout))])
    model = export(graph)
    assert ops(model) == {"DequantizeLowBit": 1, "Reshape": 1, "Conv": 1}
    w, b = _weights()
    rows = w.reshape(COUT, -1)
    converted = PrecisionConverter().convert_tensor(rows, weights, layout=layout)
    arrays = initializers(model)
    packed = [
        a
        for n, a in arrays.items()
        if n.startswith("layer1.conv.weight_") and n != "layer1.conv.weight_shape"
    ]
    assert sum(a.nbytes for a in packed) == storage_bytes(weights, rows.shape, converted.layout)
    x = _x()
    (y,) = run(model, {"x": x})
    dequantized = converted.dequantize().reshape(w.shape)
    np.testing.assert_allclose(y, _conv_reference(x, dequantized, b), rtol=1e-4, atol=1e-5)
    bound = {DType.BITNET158: 0.7, DType.I8: 0.02, DType.I4: 0.25, DType.I2: 0.8}[weights]
    assert relative_error(y, _conv_reference(x, w, b)) < bound


@pytest.mark.kernels
def test_case_4_int8_activations_are_emulated_per_tensor():
    graph, layer = _conv()
    rewrite(graph, [make_plan(layer, activations="I8")])
    model = export(graph)
    assert ops(model) == {"DynamicQuantizeLinear": 1, "DequantizeLinear": 1, "Conv": 1}
    x = _x()
    (y,) = run(model, {"x": x})
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = F32((hi - lo) / 255)
    zero = np.clip(np.rint(-lo / scale), 0, 255)
    xq = ((np.clip(np.rint(x / scale) + zero, 0, 255) - zero) * scale).astype(F32)
    np.testing.assert_allclose(y, _conv_reference(xq, *_weights()), rtol=1e-4, atol=1e-5)


@pytest.mark.kernels
def test_case_5_f16_convolution_computes_in_float16_with_its_bias_in_float16():
    graph, layer = _conv()
    rewrite(graph, [make_plan(layer, default="F16")])
    model = export(graph)
    assert ops(model) == {"Cast": 2, "Conv": 1}
    assert {a.dtype for a in initializers(model).values()} == {np.dtype(np.float16)}
    x = _x()
    (y,) = run(model, {"x": x})
    w, b = _weights()
    h = lambda a: round_to(a, DType.F16)  # noqa: E731
    np.testing.assert_allclose(y, h(_conv_reference(h(x), h(w), h(b))), rtol=3e-3, atol=3e-3)
