"""Precision conversion of float numpy tensors to any `DType`, returning packed `QuantizedTensor`s.

The quantized encodings are those of kernels/README.md (`packing`, `quantization`); what a strategy
changes is how scales are chosen and how values are rounded:

1. DIRECT: no scaling. Round to nearest and saturate to the target's range, scale 1: integer types
   get q = clip(rint(w), lo, hi) over `DType.value_range` (I8 −128..127, I4 −8..7, I2 −2..1),
   BITNET158 gets T = clip(rint(w), −1, 1) (a dead zone |w| ≤ 0.5 → 0), I1 gets sign(w) with
   0 → +1; floats get a round-to-nearest cast that saturates values beyond the finite range to ±max.
   The number of saturated values is counted (stats, metadata). DIRECT has no zero point, so
   `asymmetric` with DIRECT is a configuration error.
2. SCALED: the README formats: absmean ternary with the scale rule `ternary_scale` (γ = mean|W| by
   default, as BitNet b1.58 trains; or the least-squares α of the pattern; weights exactly ternary × s
   keep s under both), absmax (symmetric) or min/max (asymmetric) groups, mean|w| for I1. Float
   targets: the exact round-to-nearest cast.
3. QUANTIZATION_AWARE: scales chosen to minimise the squared error, deterministically. Integer
   groups try clipping ratios 1.0, 0.95, ..., 0.5 of the SCALED range and keep, per group, the
   ratio with the smallest error (the first on ties, so 1.0 wins ties). BITNET158 tries threshold
   ratios r of γ (T = clip(rint(W / (r·γ + ε)), −1, 1), 1.0 first, then 0.5 ... 2.0) per tensor or
   per row and keeps the pattern whose least-squares scale gives the smallest error (the scale is
   that least-squares one whatever `ternary_scale` says: minimising the error is the point). I1 is SCALED:
   for a sign pattern mean|w| already is the least-squares scale. Floats: the exact cast.
4. STOCHASTIC_ROUNDING: seeded (`ConversionConfig.seed`, one generator per converter, drawn in call
   order) and unbiased, E[dequantized] = w, with scales wide enough that nothing is clipped:
   symmetric groups keep the SCALED absmax scale and round w/s down or up with probability equal to
   the fraction; asymmetric groups use s = (hi − lo)/(2^bits − 2) and zp = ceil(−lo/s) so every
   w/s + zp lies inside the code range; I1 uses s = max|w| and P(u = 1) = (w/s + 1)/2; BITNET158
   uses α = max|W| (per tensor or row) and P(T = sign w) = |w|/α. Floats round to one of the two
   neighbouring F16/BF16/F32 values with probability proportional to the distance to the other.
5. GPTQ: error compensation with the layer's calibration activations (`gptq`; `convert_tensor`'s
   `hessian`, H = 2·XᵀX/n): a weight matrix W [N, K] to I8/I4/I2 groups (the layout's group size
   and zero points) or BITNET158 (the layout's scale rule), column by column, each rounded after
   the earlier columns' errors were spread over it. Deterministic. Floats: the exact cast. I1, a
   tensor that is not a matrix, or no Hessian: a ConversionError.

Activations (`convert_activations`) take a float type as above, or I8 per token exactly as the ops
quantize them at run time (kernels/README.md: s = max|x| per row, xq = clip(rint(x · 127/s))); no
strategy applies to that. `convert_tensor(..., layout=)` replaces the config's layout knobs for one
call (a layer's own group size, zero points, ternary scale granularity, rule and packing).

Failures: NaN or ±Inf in the input is a ConversionError naming the tensor. A float target that
cannot hold a value (the cast would give ±Inf) is a ConversionError with the count and max|x|,
except under DIRECT, which saturates. With `validate_results`, every result is dequantized and its
relative RMS error ‖ŵ − w‖ / ‖w‖ compared to the tolerance (`validation_tolerance`, or the per-dtype
default `DEFAULT_TOLERANCES`, calibrated for deterministic rounding of Gaussian/Laplace weights with
whole-row groups); exceeding it is a ConversionError. A ConversionError's `to_dtype` is the target
DType and its `from_dtype` the source's DType (F32, F16, BF16), or the numpy name of a source no
DType describes (float64, int32); `convert_batch` reports its failures together, from "float".
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import ml_dtypes
import numpy as np

from bitnet_onnx.core.dtypes import ConversionStrategy, DType, TernaryPacking, TernaryScale, WeightLayout
from bitnet_onnx.core.errors import ConfigError, ConversionError
from bitnet_onnx.numerics.gptq import gptq_groups, gptq_ternary
from bitnet_onnx.numerics.packing import (
    pack_int,
    pack_ternary,
    resolve_group_size,
    symmetric_zero_point,
    unpack_int,
    unpack_ternary,
)
from bitnet_onnx.numerics.quantization import (
    TERNARY_EPS,
    GroupWeights,
    TernaryWeights,
    clipped_groups,
    encode_groups,
    group_scales,
    grouped,
    quantize_groups,
    quantize_tokens,
    ternarize,
    ungrouped,
)

__all__ = [
    "DEFAULT_TOLERANCES",
    "ConversionConfig",
    "ConversionStats",
    "PrecisionConverter",
    "QuantizedTensor",
]

logger = logging.getLogger(__name__)

DEFAULT_TOLERANCES: Mapping[DType, float] = MappingProxyType(
    {
        DType.F32: 1e-6,
        DType.F16: 1e-3,
        DType.BF16: 8e-3,
        DType.I8: 0.03,
        DType.I4: 0.35,
        DType.I2: 0.95,
        DType.I1: 0.8,
        DType.BITNET158: 0.7,
    }
)
"""Largest relative RMS error `validate_results` accepts per target, unless overridden."""

_THRESHOLD_RATIOS = (1.0, *(round(0.5 + 0.1 * i, 1) for i in range(16) if i != 5))  # 1.0, 0.5 ... 2.0


@dataclass(frozen=True)
class ConversionConfig:
    """Knobs of a `PrecisionConverter`.

    `group_size` (elements per scale along the last axis; None = one group per row), and
    `asymmetric` apply to integer targets; `per_channel` (one scale per row), `ternary_packing` and
    `ternary_scale` (the SCALED scale rule, `TernaryScale`) to BITNET158. `seed` drives
    STOCHASTIC_ROUNDING. `preserve_metadata` records provenance (name, source dtype, strategy, seed,
    saturation, measured error) in `QuantizedTensor.metadata`.
    `validate_results` dequantizes every result and checks its relative RMS error against
    `validation_tolerance` (None = `DEFAULT_TOLERANCES[target]`).
    """

    strategy: ConversionStrategy = ConversionStrategy.SCALED
    preserve_metadata: bool = True
    validate_results: bool = False
    seed: int = 0
    group_size: int | None = None
    asymmetric: bool = False
    per_channel: bool = False
    ternary_packing: TernaryPacking = TernaryPacking.TWO_BIT
    ternary_scale: TernaryScale = TernaryScale.ABSMEAN
    validation_tolerance: float | None = None

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.strategy, ConversionStrategy):
            problems.append(f"strategy {self.strategy!r} must be a ConversionStrategy")
        if not isinstance(self.ternary_packing, TernaryPacking):
            problems.append(f"ternary_packing {self.ternary_packing!r} must be a TernaryPacking")
        if not isinstance(self.ternary_scale, TernaryScale):
            problems.append(f"ternary_scale {self.ternary_scale!r} must be a TernaryScale")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            problems.append(f"seed {self.seed!r} must be a non-negative integer")
        if self.group_size is not None and (
            not isinstance(self.group_size, int) or isinstance(self.group_size, bool) or self.group_size <= 0
        ):
            problems.append(f"group_size {self.group_size!r} must be a positive integer or None (whole row)")
        if self.validation_tolerance is not None and not (
            isinstance(self.validation_tolerance, (int, float)) and self.validation_tolerance > 0
        ):
            problems.append(f"validation_tolerance {self.validation_tolerance!r} must be a positive number")
        if self.asymmetric and self.strategy is ConversionStrategy.DIRECT:
            problems.append(
                "asymmetric=True contradicts strategy DIRECT, which stores raw values with scale 1 and no "
                "zero point; use SCALED (or another scaling strategy) or set asymmetric=False"
            )
        if problems:
            raise ConfigError(problems, source="ConversionConfig")

    @property
    def layout(self) -> WeightLayout:
        """The layout knobs as a `WeightLayout` (group_size unresolved: None is one group per row)."""
        return WeightLayout(
            self.group_size, self.asymmetric, self.per_channel, self.ternary_packing, self.ternary_scale
        )

    def with_layout(self, layout: WeightLayout) -> ConversionConfig:
        """A copy whose layout knobs are those of `layout` (validated again)."""
        return replace(
            self,
            group_size=layout.group_size,
            asymmetric=layout.asymmetric,
            per_channel=layout.per_channel,
            ternary_packing=layout.packing,
            ternary_scale=layout.ternary_scale,
        )

    def tolerance(self, dtype: DType) -> float:
        """The relative RMS error `validate_results` accepts for `dtype`."""
        return (
            self.validation_tolerance if self.validation_tolerance is not None else DEFAULT_TOLERANCES[dtype]
        )


@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """A tensor stored in `dtype`: what the compiler writes into the model, and how to read it back.

    - float dtypes: `data` is the cast array (float32, float16 or bfloat16) of `shape`; no scales.
    - BITNET158: `data` is packed ternary uint8 [..., ceil(K/ppb)] in `layout.packing`; `scales`
      float32 [1], or [rows] when `layout.per_channel`.
    - I8/I4/I2/I1: `data` is packed codes uint8 [..., ceil(K/G)·G·bits/8] with G =
      `layout.group_size`; `scales` float32 [..., ceil(K/G)]; `zero_points` uint8 of the same shape
      when `layout.asymmetric`.
    A scalar is stored as one row of one element. `nbytes` equals `storage_bytes(dtype, shape, layout)`.
    """

    dtype: DType
    shape: tuple[int, ...]
    layout: WeightLayout
    data: np.ndarray
    scales: np.ndarray | None = None
    zero_points: np.ndarray | None = None
    metadata: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        for array in (self.data, self.scales, self.zero_points):
            if array is not None:
                array.setflags(write=False)

    @property
    def nbytes(self) -> int:
        """Bytes stored: data, scales and zero points."""
        return sum(a.nbytes for a in (self.data, self.scales, self.zero_points) if a is not None)

    def dequantize(self) -> np.ndarray:
        """The float32 values this tensor stands for, of `shape` (README decode formulas)."""
        if self.dtype.is_float:
            return self.data.astype(np.float32)
        k = self.shape[-1] if self.shape else 1
        if self.dtype is DType.BITNET158:
            values = unpack_ternary(self.data, k, self.layout.packing)
            out = TernaryWeights(values, self.scales).dequantize()
        else:
            bits, group_size = self.dtype.bits, self.layout.group_size
            codes = unpack_int(self.data, k, bits, group_size)
            out = GroupWeights(codes, self.scales, self.zero_points, bits, group_size).dequantize()
        return out.reshape(self.shape)


@dataclass(frozen=True)
class ConversionStats:
    """Running totals of a converter. Errors are measured on validated conversions only."""

    conversions: int = 0
    failures: int = 0
    by_dtype: Mapping[DType, int] = field(default_factory=lambda: MappingProxyType({}))
    bytes_in: int = 0
    bytes_out: int = 0
    saturated_values: int = 0
    max_abs_error: float | None = None
    max_relative_error: float | None = None

    @property
    def compression_ratio(self) -> float:
        """bytes_in / bytes_out (1.0 before any conversion)."""
        return self.bytes_in / self.bytes_out if self.bytes_out else 1.0


@dataclass(frozen=True)
class _Measured:
    abs_error: float
    relative_error: float


class PrecisionConverter:
    """Converts float numpy tensors to any `DType` under one `ConversionConfig`."""

    def __init__(self, config: ConversionConfig | None = None) -> None:
        self.config = config or ConversionConfig()
        self._rng = np.random.default_rng(self.config.seed)
        self._stats = ConversionStats()

    @property
    def stats(self) -> ConversionStats:
        return self._stats

    def convert_tensor(
        self,
        array: np.ndarray,
        dtype: DType | str,
        *,
        name: str | None = None,
        layout: WeightLayout | None = None,
        hessian: np.ndarray | None = None,
    ) -> QuantizedTensor:
        """Convert one float tensor (float16/bfloat16/float32/float64) to `dtype`.

        `layout`, when given, replaces the config's layout knobs for this call (a layer's own group
        size, zero points, ternary scale granularity and packing). `hessian` is the layer's
        H = 2·XᵀX/n [K, K] (`gptq.Hessian`) that GPTQ needs for a quantized target. Raises
        ConversionError naming the tensor for non-float or non-finite input, empty tensors with a
        quantized target, values a float target cannot hold (except DIRECT), results failing
        `validate_results`, and GPTQ without a Hessian, to I1 or of a tensor that is not a matrix;
        ConfigError for a layout the target cannot take.
        """
        return self._run(array, DType.parse(dtype), name, layout, per_token=False, hessian=hessian)

    def convert_activations(
        self, array: np.ndarray, dtype: DType | str, *, name: str | None = None
    ) -> QuantizedTensor:
        """Convert activations [..., K] the way the ops take them: a float type (as `convert_tensor`),
        or I8 per token with the README formula (`quantization.quantize_tokens`; the strategy does
        not apply, the ops compute exactly this at run time). The result is an I8 tensor with one
        group per row: u = xq + 128, scale = s / 127.0f. Other integer types raise ConversionError.
        """
        return self._run(array, DType.parse(dtype), name, None, per_token=True)

    def convert_batch(
        self, tensors: Mapping[str, np.ndarray], dtype: DType | str
    ) -> dict[str, QuantizedTensor]:
        """Convert every named tensor to `dtype`; if any fail, raise one ConversionError listing all."""
        target = DType.parse(dtype)
        results: dict[str, QuantizedTensor] = {}
        failures: list[str] = []
        for name, array in tensors.items():
            try:
                results[name] = self.convert_tensor(array, target, name=name)
            except ConversionError as err:
                failures.append(err.reason)
        if failures:
            body = "\n".join(f"  - {reason}" for reason in failures)
            raise ConversionError(
                "float", target, f"{len(failures)} of {len(tensors)} tensors failed:\n{body}"
            )
        return results

    def _run(
        self,
        array: np.ndarray,
        target: DType,
        name: str | None,
        layout: WeightLayout | None,
        per_token: bool,
        hessian: np.ndarray | None = None,
    ) -> QuantizedTensor:
        config = self.config if layout is None else self.config.with_layout(layout)
        source = np.asarray(array)
        try:
            result, saturated, measured = self._convert(
                config, source, target, _label(name), per_token, hessian
            )
        except ConversionError:
            self._stats = replace(self._stats, failures=self._stats.failures + 1)
            raise
        self._record(source, result, saturated, measured)
        if saturated:
            logger.warning(
                "%s: DIRECT conversion to %s saturated %d values", _label(name), target.name, saturated
            )
        if not config.preserve_metadata:
            return result
        per_token = per_token and target is DType.I8
        strategy = "per_token" if per_token else config.strategy.value
        meta = {"source_dtype": _source_name(source.dtype), "strategy": strategy}
        if name is not None:
            meta["name"] = name
        if config.strategy is ConversionStrategy.STOCHASTIC_ROUNDING and not per_token:
            meta["seed"] = str(config.seed)
        if config.strategy is ConversionStrategy.DIRECT and not per_token:
            meta["saturated"] = str(saturated)
        if measured is not None:
            meta["max_abs_error"] = repr(measured.abs_error)
            meta["relative_rms_error"] = repr(measured.relative_error)
        return replace(result, metadata=MappingProxyType(meta))

    # --- conversion ------------------------------------------------------------------------------

    def _convert(
        self,
        config: ConversionConfig,
        source: np.ndarray,
        target: DType,
        label: str,
        per_token: bool,
        hessian: np.ndarray | None,
    ) -> tuple[QuantizedTensor, int, _Measured | None]:
        src = _source_dtype(source.dtype)
        if not _is_float(source.dtype):
            raise ConversionError(
                src,
                target,
                f"{label} has dtype {source.dtype}; only float tensors convert, cast it to float32",
            )
        bad = ~np.isfinite(source)
        if bad.any():
            nan = int(np.count_nonzero(np.isnan(source)))
            raise ConversionError(
                src,
                target,
                f"{label} holds {nan} NaN and {int(np.count_nonzero(bad)) - nan} infinite values; "
                "fix the tensor (or the model producing it) before converting",
            )
        if target.is_float:
            result, saturated = self._to_float(config, source, target, label)
        elif source.size == 0:
            raise ConversionError(
                src, target, f"{label} has shape {source.shape}: nothing to quantize; keep it in a float type"
            )
        elif not per_token:
            if config.strategy is ConversionStrategy.GPTQ:
                _check_gptq(source, target, label, hessian)
            result, saturated = self._to_quantized(config, source, target, hessian)
        elif target is DType.I8:
            result, saturated = _per_token_int8(source), 0
        else:
            raise ConversionError(
                src, target, f"{label}: activations quantize to I8 (per token) or a float type only"
            )
        measured = self._validate(config, source, result, label) if config.validate_results else None
        return result, saturated, measured

    def _to_float(
        self, config: ConversionConfig, source: np.ndarray, target: DType, label: str
    ) -> tuple[QuantizedTensor, int]:
        top = target.value_range[1]
        with np.errstate(over="ignore"):
            overflow = ~np.isfinite(source.astype(target.numpy_type))
        count = int(np.count_nonzero(overflow))
        strategy = config.strategy
        if count and strategy is not ConversionStrategy.DIRECT:
            biggest = float(np.max(np.abs(source.astype(np.float64))))
            raise ConversionError(
                _source_dtype(source.dtype),
                target,
                f"{label} has {count} values beyond the {target.name} range ±{top:g} "
                f"(max |x| = {biggest:g}); convert to a wider type (BF16 or F32), rescale the tensor, "
                "or use strategy DIRECT to saturate",
            )
        values = np.clip(source, -top, top) if count else source
        if strategy is ConversionStrategy.STOCHASTIC_ROUNDING:
            data = _stochastic_float_cast(values, target.numpy_type, self._rng)
        else:
            data = values.astype(target.numpy_type)
        return QuantizedTensor(target, source.shape, WeightLayout(), data), count

    def _to_quantized(
        self, config: ConversionConfig, source: np.ndarray, target: DType, hessian: np.ndarray | None
    ) -> tuple[QuantizedTensor, int]:
        shape = source.shape
        w = np.asarray(source, dtype=np.float32).reshape(shape or (1,))
        if target is DType.BITNET158:
            ternary, saturated = self._ternary(config, w, hessian)
            layout = WeightLayout(
                per_channel=config.per_channel,
                packing=config.ternary_packing,
                ternary_scale=config.ternary_scale,
            )
            data = pack_ternary(ternary.values, layout.packing)
            return QuantizedTensor(target, shape, layout, data, ternary.scale), saturated
        groups, saturated = self._groups(config, w, target.bits, hessian)
        layout = WeightLayout(group_size=groups.group_size, asymmetric=groups.zero_points is not None)
        data = pack_int(groups.codes, groups.bits, groups.group_size, groups.zero_points)
        return QuantizedTensor(target, shape, layout, data, groups.scales, groups.zero_points), saturated

    def _ternary(
        self, config: ConversionConfig, w: np.ndarray, hessian: np.ndarray | None
    ) -> tuple[TernaryWeights, int]:
        strategy, per_channel = config.strategy, config.per_channel
        rows = w.reshape(-1, w.shape[-1])
        scale_shape = (rows.shape[0],) if per_channel else (1,)
        if strategy is ConversionStrategy.DIRECT:
            values = np.clip(np.rint(w), -1, 1).astype(np.int8)
            saturated = int(np.count_nonzero(np.abs(np.rint(w)) > 1))
            return TernaryWeights(values, np.ones(scale_shape, np.float32)), saturated
        if strategy is ConversionStrategy.SCALED:
            return ternarize(w, per_channel, config.ternary_scale), 0
        if strategy is ConversionStrategy.QUANTIZATION_AWARE:
            return _ternary_threshold_search(rows, per_channel, w.shape), 0
        if strategy is ConversionStrategy.GPTQ:
            return gptq_ternary(w, hessian, per_channel, config.ternary_scale), 0
        # STOCHASTIC_ROUNDING: α = max|W|, P(T = sign w) = |w| / α
        a = np.abs(rows)
        alpha = a.max(axis=-1, keepdims=True) if per_channel else np.full((1, 1), a.max(), np.float32)
        p = np.divide(a, alpha, out=np.zeros_like(a), where=alpha > 0)
        values = (np.sign(rows) * (self._rng.random(rows.shape, dtype=np.float32) < p)).astype(np.int8)
        return TernaryWeights(values.reshape(w.shape), alpha.reshape(scale_shape)), 0

    def _groups(
        self, config: ConversionConfig, w: np.ndarray, bits: int, hessian: np.ndarray | None
    ) -> tuple[GroupWeights, int]:
        group_size = resolve_group_size(w.shape[-1], bits, config.group_size)
        strategy = config.strategy
        if strategy is ConversionStrategy.DIRECT:
            lo, hi = (-1, 1) if bits == 1 else (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
            rounded = np.rint(w)
            saturated = int(np.count_nonzero((rounded < lo) | (rounded > hi))) if bits > 1 else 0
            if bits == 1:
                codes = (w >= 0).astype(np.uint8)
            else:
                codes = (np.clip(rounded, lo, hi) + symmetric_zero_point(bits)).astype(np.uint8)
            scales = np.ones((*w.shape[:-1], -(-w.shape[-1] // group_size)), np.float32)
            return GroupWeights(codes, scales, None, bits, group_size), saturated
        if strategy is ConversionStrategy.SCALED or (
            strategy is ConversionStrategy.QUANTIZATION_AWARE and bits == 1
        ):
            return quantize_groups(w, bits, group_size, config.asymmetric), 0
        if strategy is ConversionStrategy.QUANTIZATION_AWARE:
            return clipped_groups(w, bits, group_size, config.asymmetric), 0
        if strategy is ConversionStrategy.GPTQ:
            return gptq_groups(w, hessian, bits, group_size, config.asymmetric), 0
        return _stochastic_groups(w, bits, group_size, config.asymmetric, self._rng), 0

    # --- validation and stats --------------------------------------------------------------------

    def _validate(
        self, config: ConversionConfig, source: np.ndarray, result: QuantizedTensor, label: str
    ) -> _Measured:
        exact = source.astype(np.float64)
        diff = result.dequantize().astype(np.float64) - exact
        abs_error = float(np.max(np.abs(diff))) if diff.size else 0.0
        norm = float(np.sqrt(np.sum(exact * exact)))
        err_norm = float(np.sqrt(np.sum(diff * diff)))
        relative = err_norm / norm if norm else (0.0 if err_norm == 0 else math.inf)
        tolerance = config.tolerance(result.dtype)
        if relative > tolerance:
            raise ConversionError(
                _source_dtype(source.dtype),
                result.dtype,
                f"{label}: relative RMS error {relative:.4g} exceeds the tolerance {tolerance:g} "
                f"(max abs error {abs_error:.4g}, strategy {config.strategy.value}); use SCALED or "
                "QUANTIZATION_AWARE, a smaller group_size, a wider precision, or raise validation_tolerance",
            )
        return _Measured(abs_error, relative)

    def _record(
        self, source: np.ndarray, result: QuantizedTensor, saturated: int, measured: _Measured | None
    ) -> None:
        s = self._stats
        by_dtype = dict(s.by_dtype)
        by_dtype[result.dtype] = by_dtype.get(result.dtype, 0) + 1
        self._stats = replace(
            s,
            conversions=s.conversions + 1,
            by_dtype=MappingProxyType(by_dtype),
            bytes_in=s.bytes_in + source.nbytes,
            bytes_out=s.bytes_out + result.nbytes,
            saturated_values=s.saturated_values + saturated,
            max_abs_error=_max(s.max_abs_error, measured and measured.abs_error),
            max_relative_error=_max(s.max_relative_error, measured and measured.relative_error),
        )


def _per_token_int8(source: np.ndarray) -> QuantizedTensor:
    """README per-token int8 as an I8 tensor with one group per row (u = xq + 128, s = absmax/127)."""
    x = np.asarray(source, dtype=np.float32).reshape(source.shape or (1,))
    tokens = quantize_tokens(x)
    codes = (tokens.values.astype(np.int16) + symmetric_zero_point(8)).astype(np.uint8)
    layout = WeightLayout(group_size=x.shape[-1])
    return QuantizedTensor(DType.I8, source.shape, layout, codes, tokens.factor[..., None])


# --- strategies ----------------------------------------------------------------------------------


def _check_gptq(source: np.ndarray, target: DType, label: str, hessian: np.ndarray | None) -> None:
    """GPTQ quantizes a weight matrix to I8/I4/I2/BITNET158 given its layer's Hessian."""
    src = _source_dtype(source.dtype)
    if target is DType.I1:
        raise ConversionError(
            src,
            target,
            f"{label}: GPTQ applies to I8, I4, I2 and BITNET158; use SCALED or QUANTIZATION_AWARE for I1",
        )
    if source.ndim != 2:
        raise ConversionError(
            src, target, f"{label} has shape {list(source.shape)}; GPTQ quantizes a weight matrix W [N, K]"
        )
    if hessian is None:
        raise ConversionError(
            src,
            target,
            f"{label}: GPTQ needs the layer's calibration activations as hessian=H [K, K] (gptq.Hessian); "
            "pass them, or use another strategy",
        )


def _ternary_threshold_search(rows: np.ndarray, per_channel: bool, shape: tuple[int, ...]) -> TernaryWeights:
    """QUANTIZATION_AWARE ternary: the threshold ratio whose least-squares α gives the least error.

    With T = sign(w)·[|w| kept] and α = S/c (S = Σ|w| over the c kept), the squared error is
    Σw² − S²/c, so the best ratio maximises S²/c (per row, or over the tensor).
    """
    a = np.abs(rows)
    axis = -1 if per_channel else None
    gamma = np.asarray(np.sum(a, axis=axis, dtype=np.float64) / (a.shape[-1] if per_channel else a.size))
    gamma = gamma.astype(np.float32)
    best_score = np.full(gamma.shape, -1.0)
    best_ratio = np.ones(gamma.shape, np.float32)
    scaled, kept_abs = np.empty_like(a), np.empty_like(a)
    for ratio in _THRESHOLD_RATIOS:
        denom = np.float32(ratio) * gamma + TERNARY_EPS
        np.divide(a, denom[:, None] if per_channel else denom, out=scaled)
        kept = scaled > 0.5  # rint(v) ≠ 0 for v ≥ 0 exactly when v > 0.5 (0.5 rounds to 0)
        np.multiply(a, kept, out=kept_abs)
        total = np.sum(kept_abs, axis=axis, dtype=np.float64)
        count = np.count_nonzero(kept, axis=axis)
        score = np.divide(total * total, count, out=np.zeros(np.shape(total)), where=count > 0)
        better = score > best_score
        best_score = np.where(better, score, best_score)
        best_ratio = np.where(better, np.float32(ratio), best_ratio)
    denom = best_ratio * gamma + TERNARY_EPS
    values = np.clip(np.rint(rows / (denom[:, None] if per_channel else denom)), -1, 1).astype(np.int8)
    kept = values != 0
    np.multiply(a, kept, out=kept_abs)
    total = np.sum(kept_abs, axis=axis, dtype=np.float64)
    count = np.count_nonzero(kept, axis=axis)
    alpha = np.divide(total, count, out=np.zeros(np.shape(total)), where=count > 0).astype(np.float32)
    return TernaryWeights(values.reshape(shape), np.atleast_1d(alpha))


def _stochastic_groups(
    w: np.ndarray, bits: int, group_size: int, asymmetric: bool, rng: np.random.Generator
) -> GroupWeights:
    """STOCHASTIC_ROUNDING integers (module docstring, case 4): unbiased, nothing clipped."""
    k = w.shape[-1]
    g = grouped(w, group_size)
    if bits == 1:
        scales = np.max(np.abs(g), axis=-1)
        p = (_safe_ratio(g, scales[..., None]) + np.float32(1)) / np.float32(2)
        codes = (rng.random(g.shape, dtype=np.float32) < p) | (scales[..., None] == 0)
        return GroupWeights(ungrouped(codes.astype(np.uint8), k), scales, None, bits, group_size)

    def stochastic(v: np.ndarray) -> np.ndarray:
        low = np.floor(v)
        return low + (rng.random(v.shape, dtype=np.float32) < v - low)

    if not asymmetric:
        scales, _ = group_scales(w, bits, group_size, asymmetric=False)
        return GroupWeights(
            encode_groups(w, scales, None, bits, group_size, stochastic), scales, None, bits, group_size
        )
    lo = np.minimum(np.min(g, axis=-1), np.float32(0))
    hi = np.maximum(np.max(g, axis=-1), np.float32(0))
    scales = (hi - lo) / np.float32((1 << bits) - 2)
    zero_points = np.clip(np.ceil(_safe_ratio(-lo, scales)), 0, (1 << bits) - 1).astype(np.uint8)
    codes = encode_groups(w, scales, zero_points, bits, group_size, stochastic)
    return GroupWeights(codes, scales, zero_points, bits, group_size)


def _stochastic_float_cast(x: np.ndarray, target: type, rng: np.random.Generator) -> np.ndarray:
    """Round each value to one of its two neighbours in `target`, unbiased.

    y = nearest; the other neighbour is one step further from zero when |y| < |x|, one step
    closer when |y| > |x| (a ±1 on the sign-magnitude bit pattern); it is chosen with probability
    (|x| − |y|) / (|other| − |y|), so E = x.
    """
    y = x.astype(target)
    if x.dtype == np.dtype(target):
        return y
    wide = x.astype(np.float64)
    near = np.abs(y.astype(np.float64))
    inexact = near != np.abs(wide)
    if not inexact.any():
        return y
    uint = {2: np.uint16, 4: np.uint32}[np.dtype(target).itemsize]
    bits = y.view(uint)
    up = near < np.abs(wide)
    other = np.where(up, bits + uint(1), bits - uint(1)).view(target)
    far = np.abs(other.astype(np.float64))
    p = np.divide(np.abs(wide) - near, far - near, out=np.zeros_like(wide), where=inexact)
    take = inexact & (rng.random(x.shape) < p)
    return np.where(take, other, y)


# --- helpers -------------------------------------------------------------------------------------


def _safe_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape, np.float32), where=b != 0)


def _is_float(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.floating) or dtype == np.dtype(ml_dtypes.bfloat16)


def _source_dtype(dtype: np.dtype) -> DType | str:
    """The DType a source array holds (F32, F16, BF16), else its numpy name (float64, int32)."""
    for d in (DType.F32, DType.F16, DType.BF16):
        if dtype == np.dtype(d.numpy_type):
            return d
    return str(dtype)


def _source_name(dtype: np.dtype) -> str:
    source = _source_dtype(dtype)
    return source.name if isinstance(source, DType) else source


def _label(name: str | None) -> str:
    return f"tensor {name!r}" if name is not None else "the tensor"


def _max(current: float | None, new: float | None) -> float | None:
    if new is None:
        return current
    return new if current is None else max(current, new)
