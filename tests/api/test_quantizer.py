"""MixedPrecisionQuantizer: the seed's quantization example, per-layer precisions and layouts, errors."""

from __future__ import annotations

import numpy as np
import pytest

from bitnet_onnx.api.quantizer import MixedPrecisionQuantizationConfig, MixedPrecisionQuantizer
from bitnet_onnx.config.layer_precision import LayerPrecisionSpec
from bitnet_onnx.core.dtypes import ConversionStrategy, DType, TernaryPacking, WeightLayout, storage_bytes
from bitnet_onnx.core.errors import ConfigError, ConversionError
from bitnet_onnx.core.layers import ComponentType, LayerType, SupportMatrix
from bitnet_onnx.numerics.converter import ConversionConfig
from bitnet_onnx.numerics.quantization import quantize_groups, quantize_tokens, ternarize

F32 = np.float32


def _rng_array(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(F32)


def test_seed_example() -> None:
    # The seed's "Integration with Quantization" example, with the layer spec of its "Layer-Specific
    # Precision Management" example (I8 in, I8 out, ternary weights, F16 bias).
    config = MixedPrecisionQuantizationConfig.bitnet()
    quantizer = MixedPrecisionQuantizer(config)
    layer_spec = LayerPrecisionSpec("layer_0", LayerType.LINEAR, DType.I8, DType.I8, DType.BITNET158)
    quantizer.register_layer(layer_spec.with_component_precision(ComponentType.BIAS, DType.F16))
    weights, activations = _rng_array((16, 64)), _rng_array((3, 64), seed=1)

    quantized_weights = quantizer.quantize_weights(weights, "layer_0")
    quantized_activations = quantizer.quantize_activations(activations, "layer_0")

    assert quantized_weights.dtype is DType.BITNET158
    np.testing.assert_array_equal(quantized_weights.dequantize(), ternarize(weights).dequantize())
    assert quantized_activations.dtype is DType.I8
    np.testing.assert_array_equal(
        quantized_activations.dequantize(), quantize_tokens(activations).dequantize()
    )
    assert quantizer.stats.conversions == 2
    assert quantized_weights.metadata["name"] == "layer_0.weights"


@pytest.mark.parametrize(
    ("preset", "weights", "activations"),
    [
        (MixedPrecisionQuantizationConfig.bitnet, DType.BITNET158, DType.I8),
        (MixedPrecisionQuantizationConfig.int8, DType.I8, DType.I8),
    ],
)
def test_presets_through_layer_spec(preset: object, weights: DType, activations: DType) -> None:
    config = preset()  # type: ignore[operator]
    assert (config.weight_precision, config.activation_precision) == (weights, activations)
    quantizer = MixedPrecisionQuantizer(config)
    quantizer.register_layer(config.layer_spec("proj", weight_shape=(8, 32)))
    w = _rng_array((8, 32))
    q = quantizer.quantize_weights(w, "proj")
    assert q.dtype is weights and q.nbytes == storage_bytes(weights, (8, 32), q.layout)
    assert quantizer.quantize_activations(_rng_array((2, 32)), "proj").dtype is activations


def test_int8_weights_are_per_row_symmetric() -> None:
    config = MixedPrecisionQuantizationConfig.int8()
    quantizer = MixedPrecisionQuantizer(config)
    quantizer.register_layer(config.layer_spec("fc"))
    w = _rng_array((4, 24))
    q = quantizer.quantize_weights(w, "fc")
    assert q.scales.shape == (4, 1) and q.zero_points is None
    np.testing.assert_array_equal(q.dequantize(), quantize_groups(w, 8).dequantize())


@pytest.mark.parametrize(
    ("weight", "layout", "scale_shape"),
    [
        (DType.I4, WeightLayout(group_size=16), (6, 3)),
        (DType.I4, WeightLayout(group_size=16, asymmetric=True), (6, 3)),
        (DType.I2, WeightLayout(group_size=8), (6, 6)),
        (DType.I1, WeightLayout(group_size=24), (6, 2)),
        (DType.BITNET158, WeightLayout(per_channel=True, packing=TernaryPacking.BASE3), (6,)),
        (DType.F16, WeightLayout(), None),
    ],
)
def test_each_layer_uses_its_own_precision_and_layout(
    weight: DType, layout: WeightLayout, scale_shape: tuple[int, ...] | None
) -> None:
    quantizer = MixedPrecisionQuantizer()
    quantizer.register_layer(
        LayerPrecisionSpec("a", LayerType.LINEAR, DType.F32, DType.F32, weight, layout=layout)
    )
    quantizer.register_layer(LayerPrecisionSpec("b", LayerType.LINEAR, DType.F32, DType.F32, DType.BITNET158))
    w = _rng_array((6, 48))
    q = quantizer.quantize_weights(w, "a")
    assert q.dtype is weight
    assert (q.scales.shape if q.scales is not None else None) == scale_shape
    assert q.nbytes == storage_bytes(weight, w.shape, q.layout)
    assert quantizer.quantize_weights(w, "b").scales.shape == (1,)


@pytest.mark.parametrize(("activation", "numpy_type"), [(DType.F32, np.float32), (DType.F16, np.float16)])
def test_float_activations_are_cast(activation: DType, numpy_type: type) -> None:
    quantizer = MixedPrecisionQuantizer()
    quantizer.register_layer(LayerPrecisionSpec("x", "linear", activation, "f32", "ternary"))
    x = _rng_array((2, 5, 7))
    q = quantizer.quantize_activations(x, "x")
    assert q.dtype is activation
    np.testing.assert_array_equal(q.data, x.astype(numpy_type))


def test_conversion_config_reaches_the_converter() -> None:
    config = MixedPrecisionQuantizationConfig(
        DType.I4,
        DType.I8,
        ConversionConfig(strategy=ConversionStrategy.STOCHASTIC_ROUNDING, seed=5, group_size=8),
    )
    w = _rng_array((4, 32))
    results = []
    for _ in range(2):
        quantizer = MixedPrecisionQuantizer(config)
        quantizer.register_layer(config.layer_spec("l"))
        results.append(quantizer.quantize_weights(w, "l"))
    assert results[0].layout.group_size == 8 and results[0].metadata["seed"] == "5"
    np.testing.assert_array_equal(results[0].data, results[1].data)


def test_duplicate_layer_is_a_config_error() -> None:
    quantizer = MixedPrecisionQuantizer()
    spec = MixedPrecisionQuantizationConfig.bitnet().layer_spec("layers.0.mlp.up_proj")
    quantizer.register_layer(spec)
    with pytest.raises(ConfigError, match=r"'layers\.0\.mlp\.up_proj' is already registered"):
        quantizer.register_layer(spec)


def test_unknown_layer_lists_closest_names() -> None:
    quantizer = MixedPrecisionQuantizer()
    config = quantizer.config
    for name in ("layers.0.mlp.up_proj", "layers.0.mlp.down_proj", "layers.1.attn.q_proj"):
        quantizer.register_layer(config.layer_spec(name))
    with pytest.raises(
        ConfigError, match=r"unknown layer 'layers.0.mlp.upproj'.*did you mean 'layers.0.mlp.up_proj'"
    ):
        quantizer.quantize_weights(_rng_array((2, 4)), "layers.0.mlp.upproj")
    with pytest.raises(ConfigError, match="unknown layer 'nothing'"):
        quantizer.quantize_activations(_rng_array((2, 4)), "nothing")


def test_unsupported_spec_rejected_at_registration() -> None:
    quantizer = MixedPrecisionQuantizer()
    with pytest.raises(ConfigError, match="activations in I4 is not supported"):
        quantizer.register_layer(LayerPrecisionSpec("n", LayerType.LINEAR, DType.I4, DType.F32, DType.I4))


def test_custom_support_matrix_is_used() -> None:
    matrix = SupportMatrix().with_layer(LayerType.LINEAR, {DType.F32, DType.F16, DType.I8})
    with pytest.raises(ConfigError, match="weight_precision BITNET158 is not supported for linear weights"):
        MixedPrecisionQuantizationConfig(support_matrix=matrix)
    quantizer = MixedPrecisionQuantizer(MixedPrecisionQuantizationConfig(DType.I8, support_matrix=matrix))
    with pytest.raises(ConfigError, match="weights in BITNET158 is not supported"):
        quantizer.register_layer(
            LayerPrecisionSpec("l", LayerType.LINEAR, DType.I8, DType.F32, DType.BITNET158)
        )


def test_config_collects_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        MixedPrecisionQuantizationConfig(
            DType.F32, DType.I4, support_matrix=SupportMatrix().with_layer(LayerType.LINEAR, {DType.I8})
        )
    assert len(info.value.problems) == 2
    assert "activation_precision I4" in str(info.value) and "weight_precision F32" in str(info.value)


def test_shapes_checked_against_spec() -> None:
    quantizer = MixedPrecisionQuantizer()
    quantizer.register_layer(quantizer.config.layer_spec("l", weight_shape=(8, 32)))
    with pytest.raises(
        ConfigError, match=r"'l': weights have shape \(32, 8\) but its spec says weight_shape \(8, 32\)"
    ):
        quantizer.quantize_weights(_rng_array((32, 8)), "l")
    with pytest.raises(ConfigError, match="reduce over K=32"):
        quantizer.quantize_activations(_rng_array((2, 8)), "l")


def test_non_finite_activations_name_the_layer() -> None:
    quantizer = MixedPrecisionQuantizer()
    quantizer.register_layer(quantizer.config.layer_spec("blk"))
    with pytest.raises(ConversionError, match=r"tensor 'blk\.activations' holds 1 NaN"):
        quantizer.quantize_activations(np.array([[1.0, np.nan]], F32), "blk")
    assert quantizer.stats.failures == 1
