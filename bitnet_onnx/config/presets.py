"""The strategy presets, as data. `MixedPrecisionConfig.new(strategy)` makes its config from one of these.

Layer-type defaults (a layer type's precision decides every component that accepts it; `+` marks a
component override; see `bitnet_onnx.config.config` for the resolution order). "F16 stored" is F16
with activations and outputs F32 (`+activ./outputs F32`): the weights, bias and tables are stored
in float16 and the layer computes in float32:

| layer type    | conservative | balanced                 | aggressive                              |
|---------------|--------------|--------------------------|-----------------------------------------|
| linear        | F16 stored   | BITNET158, +activ. I8    | BITNET158 base-3 packed, +activ. I8     |
| convolution   | F16 stored   | BITNET158, +activ. I8    | BITNET158 base-3 packed, +activ. I8     |
| attention     | F16 stored   | F16 stored               | I8, +outputs F32                        |
| embedding     | F16 stored   | F16 stored               | I8, +outputs F32                        |
| output        | F16 stored   | I8, +outputs F32         | I8, +outputs F32                        |
| normalization | F16 stored   | F16 stored               | F16 stored                              |
| activation    | F32          | F32                      | F32                                     |
| other         | F32          | F32                      | F32                                     |

Component defaults (what a component gets when its layer's precision does not fit it, e.g. the
bias and outputs of a ternary layer, or the bias of an I8 layer) and the strategy default
(`default_precision`, last resort):

| component   | conservative | balanced  | aggressive         |
|-------------|--------------|-----------|--------------------|
| weights     | F16          | BITNET158 | I4, group size 128 |
| bias        | F16          | F16       | F16                |
| activations | F32          | I8        | I8                 |
| outputs     | F32          | F32       | F32                |
| gradients   | F16          | F16       | F16                |
| *default*   | F16          | I8        | I4                 |

Why F16 is stored and not computed: onnxruntime's CPU provider has no float16 kernel for MatMul,
Gemm, LayerNormalization, Softmax, Gelu and most other ops on x86; it computes a float16 node in
float32 with a Cast on each side. F16 activations or outputs therefore add two conversions per
layer boundary and buy nothing: `conservative` with F16 compute was slower than the fp32 model
(a 6-layer hidden-384 BERT at 1 thread, batch 16: 1.17x the fp32 time), and a ~100M ternary decoder
decoded 4.79 -> 4.04 ms/token with its linear outputs F32. Stored F16 halves the float bytes of the
file; onnxruntime folds the Cast of each constant at session init (its optimized graph holds the
fp32 model's graph plus one Cast after each embedding Gather, which reads the float16 table), so
the layers run as fast as fp32 ones. A config entry or override that asks for F16 activations or
outputs is honoured as written (F16 compute, with its Casts).

Why the rest: balanced is the seed's recommendation (ternary weights and int8 activations in the
matmuls, F16 for attention, normalization and embedding, stored as above), except for the output
layer: the seed's F16 there is measured to be the wrong trade on CPU. onnxruntime widens F16
weights back to fp32 at load, so an F16 lm_head costs as much as the fp32 one (37-44 % of a ~100M
decoder's batch-1 forward) and its table is most of the compiled file. As I8 (int8 weights per
row, int8 activations, float32 logits) the same decoder is 1/6.9 of the fp32 file instead of
1/5.7, 8.2x faster at batch 1 instead of 4.3x, with the exactly-ternary twin's logits cosine
unchanged (0.99930 vs 0.99933); measured by `bitnet-onnx bench compiler`. Conservative keeps
everything float. Aggressive goes to the smallest file the kernels run: ternary linear layers
packed 5 per byte (1.6 bits per weight), int8 weights and activations wherever the support matrix
allows them, F16 storage only where it allows nothing lower. Activation layers store nothing, so
they are F32. "other" (ops the annotator could not classify) keeps F32 everywhere, since an
unknown op may be index or shape arithmetic. Every preset passes `validate()`; CUSTOM starts with
no tables and F32 as the default.

Outputs: no preset hands on I8 outputs, although the support matrix accepts them (the seed's
layer specs use them). An I8 output costs a quantize/dequantize pair at every layer boundary and
buys nothing, since the next BitLinear re-quantizes its input per token anyway. So every preset
has a float32 outputs component default, and aggressive's I8 layer types override their outputs to
F32 (without it, their I8 precision would decide the outputs too).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from bitnet_onnx.config.entries import ComponentPrecisionConfig, LayerPrecisionConfig, MixedPrecisionStrategy
from bitnet_onnx.core.dtypes import DType, TernaryPacking, WeightLayout
from bitnet_onnx.core.layers import ComponentType, LayerType

__all__ = ["PRESETS", "Preset"]


@dataclass(frozen=True)
class Preset:
    """A strategy's defaults: the fields of the `MixedPrecisionConfig` that `new(strategy)` returns
    (no layer entries, the default support matrix, no policies)."""

    strategy: MixedPrecisionStrategy
    default_precision: DType
    layer_types: Mapping[LayerType, LayerPrecisionConfig] = field(default_factory=dict)
    components: Mapping[ComponentType, ComponentPrecisionConfig] = field(default_factory=dict)


_L, _C = LayerType, ComponentType
_BASE3 = WeightLayout(packing=TernaryPacking.BASE3)


def _components(
    table: Mapping[ComponentType, DType | ComponentPrecisionConfig],
) -> dict[ComponentType, ComponentPrecisionConfig]:
    return {
        c: v if isinstance(v, ComponentPrecisionConfig) else ComponentPrecisionConfig(v)
        for c, v in table.items()
    }


def _ternary(layer_type: LayerType, layout: WeightLayout) -> LayerPrecisionConfig:
    return LayerPrecisionConfig(layer_type, DType.BITNET158, layout).with_component_override(
        _C.ACTIVATIONS, DType.I8
    )


def _int8(layer_type: LayerType) -> LayerPrecisionConfig:
    # I8 would decide the outputs too, and they stay float (see "Outputs" above).
    return LayerPrecisionConfig(layer_type, DType.I8).with_component_override(_C.OUTPUTS, DType.F32)


def _f16_stored(layer_type: LayerType) -> LayerPrecisionConfig:
    # F16 would decide the activations and outputs too, and they compute in float32 (see "Why F16
    # is stored" above).
    return (
        LayerPrecisionConfig(layer_type, DType.F16)
        .with_component_override(_C.ACTIVATIONS, DType.F32)
        .with_component_override(_C.OUTPUTS, DType.F32)
    )


PRESETS: Mapping[MixedPrecisionStrategy, Preset] = MappingProxyType(
    {
        MixedPrecisionStrategy.CONSERVATIVE: Preset(
            MixedPrecisionStrategy.CONSERVATIVE,
            DType.F16,
            layer_types={
                _L.LINEAR: _f16_stored(_L.LINEAR),
                _L.CONVOLUTION: _f16_stored(_L.CONVOLUTION),
                _L.ATTENTION: _f16_stored(_L.ATTENTION),
                _L.EMBEDDING: _f16_stored(_L.EMBEDDING),
                _L.OUTPUT: _f16_stored(_L.OUTPUT),
                _L.NORMALIZATION: _f16_stored(_L.NORMALIZATION),
                _L.ACTIVATION: LayerPrecisionConfig(_L.ACTIVATION, DType.F32),
                _L.OTHER: LayerPrecisionConfig(_L.OTHER, DType.F32),
            },
            components=_components(
                {
                    _C.WEIGHTS: DType.F16,
                    _C.BIAS: DType.F16,
                    _C.ACTIVATIONS: DType.F32,
                    _C.OUTPUTS: DType.F32,
                    _C.GRADIENTS: DType.F16,
                }
            ),
        ),
        MixedPrecisionStrategy.BALANCED: Preset(
            MixedPrecisionStrategy.BALANCED,
            DType.I8,
            layer_types={
                _L.LINEAR: _ternary(_L.LINEAR, WeightLayout()),
                _L.CONVOLUTION: _ternary(_L.CONVOLUTION, WeightLayout()),
                _L.ATTENTION: _f16_stored(_L.ATTENTION),
                _L.EMBEDDING: _f16_stored(_L.EMBEDDING),
                _L.OUTPUT: LayerPrecisionConfig(_L.OUTPUT, DType.I8).with_component_override(
                    _C.OUTPUTS, DType.F32
                ),
                _L.NORMALIZATION: _f16_stored(_L.NORMALIZATION),
                _L.ACTIVATION: LayerPrecisionConfig(_L.ACTIVATION, DType.F32),
                _L.OTHER: LayerPrecisionConfig(_L.OTHER, DType.F32),
            },
            components=_components(
                {
                    _C.WEIGHTS: DType.BITNET158,
                    _C.BIAS: DType.F16,
                    _C.ACTIVATIONS: DType.I8,
                    _C.OUTPUTS: DType.F32,
                    _C.GRADIENTS: DType.F16,
                }
            ),
        ),
        MixedPrecisionStrategy.AGGRESSIVE: Preset(
            MixedPrecisionStrategy.AGGRESSIVE,
            DType.I4,
            layer_types={
                _L.LINEAR: _ternary(_L.LINEAR, _BASE3),
                _L.CONVOLUTION: _ternary(_L.CONVOLUTION, _BASE3),
                _L.ATTENTION: _int8(_L.ATTENTION),
                _L.EMBEDDING: _int8(_L.EMBEDDING),
                _L.OUTPUT: _int8(_L.OUTPUT),
                _L.NORMALIZATION: _f16_stored(_L.NORMALIZATION),
                _L.ACTIVATION: LayerPrecisionConfig(_L.ACTIVATION, DType.F32),
                _L.OTHER: LayerPrecisionConfig(_L.OTHER, DType.F32),
            },
            components=_components(
                {
                    _C.WEIGHTS: ComponentPrecisionConfig(DType.I4, WeightLayout(group_size=128)),
                    _C.BIAS: DType.F16,
                    _C.ACTIVATIONS: DType.I8,
                    _C.OUTPUTS: DType.F32,
                    _C.GRADIENTS: DType.F16,
                }
            ),
        ),
        MixedPrecisionStrategy.CUSTOM: Preset(MixedPrecisionStrategy.CUSTOM, DType.F32),
    }
)
