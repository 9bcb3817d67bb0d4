"""The seed's quantization integration: quantize a layer's tensors in the precisions its spec names.

A `MixedPrecisionQuantizer` holds registered `LayerPrecisionSpec`s (in a `LayerPrecisionManager`,
so a duplicate name or a precision the support matrix forbids is a ConfigError) and one
`PrecisionConverter`. For a registered layer:

- `quantize_weights(w, layer)` converts `w` to the spec's `weight_precision` with the spec's
  `layout` (group size, zero points, ternary scale granularity and packing);
- `quantize_activations(x, layer)` converts `x` to the spec's `input_precision`: a float cast, or
  I8 per token exactly as the ops quantize activations at run time.

The config says how tensors are converted (`conversion`: strategy, seed, validation) and what a
layer gets when it is described by `layer_spec` (`weight_precision`, `activation_precision`, and
the layout knobs of `conversion`). Presets: `bitnet()` is BitNet b1.58 (ternary weights with the
absmean rule, per-token int8 activations); `int8()` is W8A8 (per-row symmetric int8 weights,
per-token int8 activations), the accuracy-first alternative the same ops run (LowBitMatMul, bits 8).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from bitnet_onnx.config.layer_precision import LayerPrecisionManager, LayerPrecisionSpec
from bitnet_onnx.core.dtypes import DType
from bitnet_onnx.core.errors import ConfigError
from bitnet_onnx.core.layers import ComponentType, LayerType, SupportMatrix
from bitnet_onnx.numerics.converter import (
    ConversionConfig,
    ConversionStats,
    PrecisionConverter,
    QuantizedTensor,
)

__all__ = ["MixedPrecisionQuantizationConfig", "MixedPrecisionQuantizer"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MixedPrecisionQuantizationConfig:
    """How a `MixedPrecisionQuantizer` converts, and the precisions `layer_spec` gives a layer.

    `weight_precision` must be allowed for linear-layer weights and `activation_precision` for
    activations by `support_matrix` (the matrix registered specs are checked against).
    """

    weight_precision: DType = DType.BITNET158
    activation_precision: DType = DType.I8
    conversion: ConversionConfig = field(default_factory=ConversionConfig)
    support_matrix: SupportMatrix = field(default_factory=SupportMatrix)

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight_precision", DType.parse(self.weight_precision))
        object.__setattr__(self, "activation_precision", DType.parse(self.activation_precision))
        problems = []
        for key, component, dtype in (
            ("weight_precision", ComponentType.WEIGHTS, self.weight_precision),
            ("activation_precision", ComponentType.ACTIVATIONS, self.activation_precision),
        ):
            allowed = self.support_matrix.allowed(LayerType.LINEAR, component)
            if dtype not in allowed:
                choices = ", ".join(d.name for d in sorted(allowed, key=DType.rank, reverse=True))
                problems.append(
                    f"{key} {dtype.name} is not supported for linear {component.value}; use {choices}"
                )
        if problems:
            raise ConfigError(problems, source="MixedPrecisionQuantizationConfig")

    @classmethod
    def bitnet(cls) -> MixedPrecisionQuantizationConfig:
        """BitNet b1.58: BITNET158 weights (absmean pattern, least-squares scale per tensor, 2-bit
        packing), I8 per-token activations."""
        return cls(DType.BITNET158, DType.I8)

    @classmethod
    def int8(cls) -> MixedPrecisionQuantizationConfig:
        """W8A8: I8 weights (one symmetric scale per row), I8 per-token activations."""
        return cls(DType.I8, DType.I8)

    def layer_spec(
        self,
        name: str,
        layer_type: LayerType | str = LayerType.LINEAR,
        *,
        weight_shape: tuple[int, ...] | None = None,
        bias_shape: tuple[int, ...] | None = None,
    ) -> LayerPrecisionSpec:
        """A spec with this config's precisions: weights `weight_precision` laid out per
        `conversion`, activations `activation_precision`, outputs F32 (the ops return their
        input's float type)."""
        return LayerPrecisionSpec(
            name,
            LayerType.parse(layer_type),
            input_precision=self.activation_precision,
            output_precision=DType.F32,
            weight_precision=self.weight_precision,
            weight_shape=weight_shape,
            bias_shape=bias_shape,
            layout=self.conversion.layout,
        )


class MixedPrecisionQuantizer:
    """Quantizes weights and activations of registered layers in their spec's precisions."""

    def __init__(self, config: MixedPrecisionQuantizationConfig | None = None) -> None:
        self.config = config or MixedPrecisionQuantizationConfig.bitnet()
        self.layers = LayerPrecisionManager(self.config.support_matrix)
        self.converter = PrecisionConverter(self.config.conversion)

    @property
    def stats(self) -> ConversionStats:
        """Totals over every tensor this quantizer converted."""
        return self.converter.stats

    def register_layer(self, spec: LayerPrecisionSpec) -> None:
        """Register `spec`; a duplicate name or an unsupported precision raises ConfigError."""
        self.layers.register_layer(spec)

    def quantize_weights(self, weights: np.ndarray, layer_name: str) -> QuantizedTensor:
        """`weights` in the layer's weight precision and layout.

        Raises ConfigError for an unknown layer (naming the closest registered ones) or weights
        whose shape differs from the spec's `weight_shape`; ConversionError as `convert_tensor`.
        """
        spec = self.layers.get_layer(layer_name)
        weights = np.asarray(weights)
        if spec.weight_shape is not None and weights.shape != spec.weight_shape:
            raise ConfigError(
                f"layer {layer_name!r}: weights have shape {weights.shape} but its spec says "
                f"weight_shape {spec.weight_shape}; register the layer with the shape it has"
            )
        logger.debug("quantizing weights of %s to %s", layer_name, spec.weight_precision.name)
        return self.converter.convert_tensor(
            weights, spec.weight_precision, name=f"{layer_name}.weights", layout=spec.layout
        )

    def quantize_activations(self, x: np.ndarray, layer_name: str) -> QuantizedTensor:
        """`x` [..., K] in the layer's input precision (float, or I8 per token).

        Raises ConfigError for an unknown layer or when K differs from the spec's weights;
        ConversionError as `PrecisionConverter.convert_activations`.
        """
        spec = self.layers.get_layer(layer_name)
        x = np.asarray(x)
        if spec.weight_shape is not None and (x.ndim == 0 or x.shape[-1] != spec.weight_shape[-1]):
            raise ConfigError(
                f"layer {layer_name!r}: activations have shape {x.shape} but the layer's weights "
                f"{spec.weight_shape} reduce over K={spec.weight_shape[-1]} (the last axis)"
            )
        logger.debug("quantizing activations of %s to %s", layer_name, spec.input_precision.name)
        return self.converter.convert_activations(x, spec.input_precision, name=f"{layer_name}.activations")
