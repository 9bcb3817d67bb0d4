"""The usage examples of the seed design (shared/seed/mixed_precision_README.md), in Python.

Each test is one example of the seed README, translated with bitnet-onnx names and completed with
the concrete values it must produce. The examples run as the seed writes them, with the default
support matrix: its layer specs hand I8 outputs on (quantized per token, read back by the next
layer), and the bias of such a layer, left unset, is F32. The seed's PrecisionManager
(get_optimal_precision, convert_for_operation, optimize_precision, validate_configuration,
analyze_configuration) belongs to the optimizer issue; the "complete setup" example here stops
before it and uses the config, the layer manager, the validator and the quantizer that the
PrecisionManager will coordinate.
"""

from __future__ import annotations

import numpy as np
import pytest

from bitnet_onnx import (
    ComponentType,
    ConditionOperator,
    ConditionType,
    ConversionConfig,
    ConversionError,
    ConversionStrategy,
    DType,
    LayerFacts,
    LayerPrecisionConfig,
    LayerPrecisionManager,
    LayerPrecisionSpec,
    LayerType,
    MixedPrecisionConfig,
    MixedPrecisionError,
    MixedPrecisionQuantizationConfig,
    MixedPrecisionQuantizer,
    MixedPrecisionStrategy,
    PolicyAction,
    PolicyCondition,
    PolicyEngine,
    PolicyRule,
    PrecisionConverter,
    PrecisionPolicy,
    PrecisionValidator,
    Severity,
    ValidationError,
)
from bitnet_onnx.core.dtypes import TernaryPacking, storage_bytes

W, B, ACT, OUT = ComponentType.WEIGHTS, ComponentType.BIAS, ComponentType.ACTIVATIONS, ComponentType.OUTPUTS

# Weights and activations with hand-computed quantizations (see the tests that use them).
WEIGHTS = np.array([[1.0, -0.5, 0.0, 2.0], [-1.0, 0.25, 0.5, -2.0]], np.float32)
ACTIVATIONS = np.array([[1.0, -2.0, 0.5, 0.0]], np.float32)


def resolved(config: MixedPrecisionConfig, name: str, layer_type: LayerType) -> dict[ComponentType, str]:
    return {c: str(config.resolve(name, layer_type, c)) for c in (W, B, ACT, OUT)}


# --- Basic Configuration --------------------------------------------------------------------------


def test_basic_configuration() -> None:
    config = MixedPrecisionConfig.balanced()
    config.validate()
    assert resolved(config, "layers.0.mlp.up_proj", LayerType.LINEAR) == {
        W: "layer_type:linear→BITNET158",
        B: "component:bias→F16",
        ACT: "layer_type:linear/activations→I8",
        OUT: "component:outputs→F32",
    }

    custom_config = MixedPrecisionConfig.new(MixedPrecisionStrategy.CUSTOM).with_layer_config(
        "attention_layer",
        LayerPrecisionConfig(LayerType.ATTENTION, DType.F16).with_component_override(
            ComponentType.WEIGHTS, DType.I8
        ),
    )
    custom_config.validate()
    assert resolved(custom_config, "attention_layer", LayerType.ATTENTION) == {
        W: "layer:attention_layer/weights→I8",
        B: "layer:attention_layer→F16",
        ACT: "layer:attention_layer→F16",
        OUT: "layer:attention_layer→F16",
    }
    # Any other layer falls through to the CUSTOM strategy default.
    assert str(custom_config.resolve("other", LayerType.ATTENTION, W)) == "strategy:custom→F32"


# --- Layer-Specific Precision Management ----------------------------------------------------------


def seed_layer_spec(**shapes) -> LayerPrecisionSpec:
    return (
        LayerPrecisionSpec(
            "transformer_layer_0",
            LayerType.LINEAR,
            DType.I8,  # input precision
            DType.I8,  # output precision
            DType.BITNET158,  # weight precision
            **shapes,
        )
        .with_component_precision(ComponentType.BIAS, DType.F16)
        .with_dynamic_adjustment()
    )


def test_layer_specific_management() -> None:
    layer_manager = LayerPrecisionManager()
    layer_manager.register_layer(seed_layer_spec(weight_shape=(64, 64), bias_shape=(64,)))

    spec = layer_manager.get_layer("transformer_layer_0")
    assert (
        spec.precision_for(W),
        spec.precision_for(B),
        spec.precision_for(ACT),
        spec.precision_for(OUT),
    ) == (
        DType.BITNET158,
        DType.F16,
        DType.I8,
        DType.I8,
    )
    # Ternary 2-bit packing: 64 rows x 16 bytes + one float32 scale; bias 64 x 2 bytes.
    assert layer_manager.memory_by_layer() == {"transformer_layer_0": 64 * 16 + 4 + 64 * 2}

    optimizations = layer_manager.optimize_for_memory(0.5)
    # The only saving left: I1 weights, 64 x 8 bytes + 64 row scales = 768 < 1028 bytes; the bias
    # cannot go below 16 bits. 260 of 1156 bytes is short of half, and the result says so.
    assert [(p.layer, p.component, p.from_dtype, p.to_dtype, p.bytes_saved) for p in optimizations] == [
        ("transformer_layer_0", W, DType.BITNET158, DType.I1, 1028 - 768)
    ]
    assert not optimizations.feasible
    assert optimizations.achieved_reduction == pytest.approx(260 / 1156)

    layer_manager.apply_optimizations(optimizations)
    assert layer_manager.get_layer("transformer_layer_0").weight_precision is DType.I1
    assert layer_manager.memory_bytes() == 768 + 128


# --- Precision Conversion -------------------------------------------------------------------------


def test_precision_conversion() -> None:
    config = ConversionConfig(
        strategy=ConversionStrategy.SCALED,
        preserve_metadata=True,
        validate_results=True,
    )
    converter = PrecisionConverter(config)
    tensor = np.array([[1.0, -0.5, 0.25, 2.0], [0.5, 0.0, -1.0, 0.75]], np.float32)

    converted_tensor = converter.convert_tensor(tensor, DType.I8)

    # Symmetric absmax per row: s = max|w| / 127, code = rint(w / s), stored u = code + 128.
    np.testing.assert_array_equal(converted_tensor.scales, np.float32([[2 / 127], [1 / 127]]))
    np.testing.assert_array_equal(converted_tensor.data, [[192, 96, 144, 255], [192, 128, 1, 223]])
    codes = np.array([[64, -32, 16, 127], [64, 0, -127, 95]], np.float32)
    np.testing.assert_allclose(converted_tensor.dequantize(), codes * converted_tensor.scales, rtol=1e-6)
    assert converted_tensor.nbytes == storage_bytes(DType.I8, (2, 4)) == 8 + 2 * 4
    assert converted_tensor.metadata["strategy"] == "scaled"
    assert converter.stats.conversions == 1


# --- Policy-Based Precision Selection -------------------------------------------------------------


def test_policy_based_selection() -> None:
    policy_engine = PolicyEngine()
    memory_policy = PrecisionPolicy(
        "memory_critical",
        "Memory Critical Policy",
        "Use aggressive quantization when memory is limited",
    ).add_rule(
        PolicyRule("high_memory_usage", PolicyAction.set_precision(DType.I4)).add_condition(
            PolicyCondition(ConditionType.MEMORY_USAGE, ConditionOperator.GREATER_THAN, 80.0)
        )
    )
    policy_engine.add_policy(memory_policy)

    config = MixedPrecisionConfig.balanced()
    current = config.resolve("layers.0.mlp.up_proj", LayerType.LINEAR, W)
    facts = LayerFacts("layers.0.mlp.up_proj", LayerType.LINEAR, index=0, layer_count=4, memory_usage=85.0)
    decision = policy_engine.decide(facts, W, current)
    assert decision.dtype is DType.I4
    assert decision.source == "policy:memory_critical/high_memory_usage"
    assert str(decision.overrode) == "layer_type:linear→BITNET158"
    assert "memory_usage 85 > 80" in decision.explanation

    calm = LayerFacts("layers.0.mlp.up_proj", LayerType.LINEAR, index=0, layer_count=4, memory_usage=50.0)
    assert policy_engine.decide(calm, W, current).dtype is DType.BITNET158
    # Attention weights cannot be I4: the rule is passed over, with the reason.
    attn = LayerFacts("layers.0.self_attn", LayerType.ATTENTION, index=1, layer_count=4, memory_usage=85.0)
    kept = policy_engine.decide(attn, W, config.resolve("layers.0.self_attn", LayerType.ATTENTION, W))
    assert kept.dtype is DType.F16
    assert "I4 is not allowed for the weights of attention layers" in kept.explanation


# --- Complete Mixed Precision Setup (without the PrecisionManager) --------------------------------


def test_complete_setup() -> None:
    # 1. Create configuration
    config = MixedPrecisionConfig.balanced().with_layer_config(
        "attention", LayerPrecisionConfig(LayerType.ATTENTION, DType.F16)
    )
    config.validate()

    # 3. Register layers
    layer_manager = LayerPrecisionManager(config.support)
    layer_spec = LayerPrecisionSpec(
        "linear_0",
        LayerType.LINEAR,
        DType.I8,
        DType.I8,
        DType.BITNET158,
    )
    layer_manager.register_layer(layer_spec)
    assert {c: layer_manager.get_layer("linear_0").precision_for(c) for c in (W, B, ACT, OUT)} == {
        W: DType.BITNET158,
        B: DType.F32,  # added in float before the I8 output is quantized
        ACT: DType.I8,
        OUT: DType.I8,
    }
    attention = LayerPrecisionSpec(
        "attention",
        LayerType.ATTENTION,
        *(config.resolve("attention", LayerType.ATTENTION, c).dtype for c in (ACT, OUT, W)),
    )
    layer_manager.register_layer(attention)
    assert (attention.input_precision, attention.output_precision, attention.weight_precision) == (
        DType.F16,
        DType.F16,
        DType.F16,
    )
    assert str(config.resolve("attention", LayerType.ATTENTION, W)) == "layer:attention→F16"

    # 4. The precision for an operation, and the tensor converted to it
    assert config.resolve("linear_0", LayerType.LINEAR, W).dtype is layer_spec.precision_for(W)
    quantizer = MixedPrecisionQuantizer(MixedPrecisionQuantizationConfig.bitnet())
    quantizer.register_layer(layer_spec)
    converted_tensor = quantizer.quantize_weights(WEIGHTS, "linear_0")
    assert converted_tensor.dtype is DType.BITNET158
    # As in test_quantization_integration: scale γ = 0.90625, codes [2,0,1,2] -> 146, [0,1,2,0] -> 36.
    np.testing.assert_array_equal(converted_tensor.scales, [0.90625])
    np.testing.assert_array_equal(converted_tensor.data, [[146], [36]])

    report = PrecisionValidator().validate(layer_manager)
    assert report.ok
    # linear_0 hands I8 on; attention reads F16: one conversion.
    assert report.for_rule("performance-impact")[0].message == (
        "1 precision conversions between consecutive layers: linear_0 I8 -> attention F16"
    )


# --- Configuration Strategies ---------------------------------------------------------------------

LINEAR_SHAPE = (4096, 4096)
F32_BYTES = 4096 * 4096 * 4


@pytest.mark.parametrize(
    ("config", "linear_w", "linear_act", "attention_w", "normalization_w", "weight_bytes"),
    [
        (MixedPrecisionConfig.conservative(), DType.F16, DType.F32, DType.F16, DType.F16, 4096 * 4096 * 2),
        # ternary at 2 bits: 4096 rows x 1024 bytes + one scale
        (MixedPrecisionConfig.balanced(), DType.BITNET158, DType.I8, DType.F16, DType.F16, 4096 * 1024 + 4),
        # ternary base-3: 5 weights per byte, 4096 rows x ceil(4096 / 5) = 820 bytes + one scale
        (MixedPrecisionConfig.aggressive(), DType.BITNET158, DType.I8, DType.I8, DType.F16, 4096 * 820 + 4),
    ],
)
def test_strategies(
    config: MixedPrecisionConfig,
    linear_w: DType,
    linear_act: DType,
    attention_w: DType,
    normalization_w: DType,
    weight_bytes: int,
) -> None:
    config.validate()
    weights = config.resolve("fc", LayerType.LINEAR, W)
    assert weights.dtype is linear_w
    assert config.resolve("fc", LayerType.LINEAR, ACT).dtype is linear_act
    assert config.resolve("attn", LayerType.ATTENTION, W).dtype is attention_w
    assert config.resolve("ln", LayerType.NORMALIZATION, W).dtype is normalization_w
    assert storage_bytes(weights.dtype, LINEAR_SHAPE, weights.layout) == weight_bytes


def test_true_compression_ratios() -> None:
    # The seed claims 32x for BitNet158; the packed formats give 16x (2 bits) and ~20x (base 3).
    two_bit = storage_bytes(DType.BITNET158, LINEAR_SHAPE)
    assert F32_BYTES / two_bit == pytest.approx(16.0, rel=1e-5)
    aggressive = MixedPrecisionConfig.aggressive().resolve("fc", LayerType.LINEAR, W)
    assert aggressive.layout.packing is TernaryPacking.BASE3
    assert F32_BYTES / storage_bytes(DType.BITNET158, LINEAR_SHAPE, aggressive.layout) == pytest.approx(
        19.98, abs=0.01
    )


# --- Validation and Best Practices ----------------------------------------------------------------


def test_validation_rules_of_the_seed() -> None:
    specs = [
        LayerPrecisionSpec(
            "embed", LayerType.EMBEDDING, DType.F16, DType.F16, DType.F16, weight_shape=(100, 8)
        ),
        LayerPrecisionSpec("attn", LayerType.ATTENTION, DType.F16, DType.F16, DType.I4, weight_shape=(8, 8)),
        LayerPrecisionSpec(
            "fc", LayerType.LINEAR, DType.I4, DType.I4, DType.I1, bias_precision=DType.I8, weight_shape=(8, 8)
        ),
        LayerPrecisionSpec("head", LayerType.OUTPUT, DType.F32, DType.F32, DType.F16, weight_shape=(100, 8)),
    ]
    report = PrecisionValidator().validate_specs(specs, budget_bytes=3000)
    fired = {(f.rule_id, f.severity, f.subject) for f in report.findings}
    assert fired == {
        ("layer-precision", Severity.ERROR, "attn/weights"),  # Layer-Precision Compatibility
        ("component-precision", Severity.ERROR, "fc/activations"),  # Component-Precision Compatibility
        ("component-precision", Severity.ERROR, "fc/outputs"),
        ("component-precision", Severity.ERROR, "fc/bias"),
        # Memory: 1600 + (8*4 + 8*4) + (8*1 + 8*4) + 1600 = 3304 bytes > 3000
        ("memory-budget", Severity.ERROR, "model"),
        # Performance: attn F16 -> fc I4 and fc I4 -> head F32 are 2 conversions, within the default 4
        ("performance-impact", Severity.INFO, "model"),
        ("accuracy-impact", Severity.WARNING, "attn/weights"),  # Accuracy: attention below 8 bits
        ("accuracy-impact", Severity.WARNING, "fc/weights"),  # 1-bit weights
    }
    assert (
        report.for_rule("memory-budget")[0].message == "layers store 3304 bytes, 304 over the budget of 3000"
    )
    # Best practice 3: validate before deployment.
    with pytest.raises(ValidationError) as info:
        report.raise_if_errors()
    assert str(info.value).startswith("precision validation found 5 error(s):")


def test_best_practice_critical_layers_at_higher_precision() -> None:
    config = MixedPrecisionConfig.balanced().with_layer_config(
        "output_layer", LayerPrecisionConfig(LayerType.OUTPUT, DType.F16)
    )
    config.validate()
    assert str(config.resolve("output_layer", LayerType.OUTPUT, W)) == "layer:output_layer→F16"


# --- Error Handling -------------------------------------------------------------------------------


def test_error_handling() -> None:
    converter = PrecisionConverter(ConversionConfig())
    with pytest.raises(MixedPrecisionError) as info:
        converter.convert_tensor(np.array([[np.nan, 1.0]], np.float32), DType.I8, name="layer_0.weights")
    err = info.value
    assert isinstance(err, ConversionError)
    assert (err.from_dtype, err.to_dtype) == (DType.F32, DType.I8)
    assert "layer_0.weights" in err.reason
    assert str(err).startswith("cannot convert F32 to I8: tensor 'layer_0.weights' holds 1 NaN")
    assert issubclass(ValidationError, MixedPrecisionError)


# --- Integration with Quantization ----------------------------------------------------------------


def test_quantization_integration() -> None:
    config = MixedPrecisionQuantizationConfig.bitnet()
    quantizer = MixedPrecisionQuantizer(config)

    # Register layers
    layer_spec = config.layer_spec("layer_0", weight_shape=(2, 4))
    quantizer.register_layer(layer_spec)

    quantized_weights = quantizer.quantize_weights(WEIGHTS, "layer_0")
    # gamma = mean|W| = 7.25 / 8 = 0.90625; T = clip(rint(W / gamma), -1, 1); the scale is gamma
    # (BitNet b1.58's; the least-squares one, mean |W| over the non-zero T, would be 7/6).
    ternary = np.array([[1, -1, 0, 1], [-1, 0, 1, -1]], np.float32)
    np.testing.assert_array_equal(quantized_weights.scales, [0.90625])
    np.testing.assert_array_equal(quantized_weights.dequantize(), ternary * np.float32(0.90625))
    # 2-bit codes w+1, first weight in the low bits: [2,0,1,2] -> 146, [0,1,2,0] -> 36.
    np.testing.assert_array_equal(quantized_weights.data, [[146], [36]])
    assert quantized_weights.nbytes == storage_bytes(DType.BITNET158, (2, 4)) == 2 + 4

    quantized_activations = quantizer.quantize_activations(ACTIVATIONS, "layer_0")
    # Per token: s = max|x| = 2, xq = rint(x * 127 / 2) = [64 (63.5 to even), -127, 32 (31.75), 0].
    assert quantized_activations.dtype is DType.I8
    np.testing.assert_allclose(quantized_activations.scales, [[2 / 127]], rtol=1e-7)
    np.testing.assert_array_equal(quantized_activations.data, [[64 + 128, -127 + 128, 32 + 128, 128]])
