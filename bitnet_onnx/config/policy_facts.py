"""What a policy may know about a layer (`LayerFacts`) and the weight statistics it may test."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from bitnet_onnx.core.dtypes import DType
from bitnet_onnx.core.layers import LayerType

__all__ = ["WEIGHT_STATISTICS", "LayerFacts", "weight_statistics"]

WEIGHT_STATISTICS = ("absmax", "absmean", "mean", "std", "kurtosis", "outlier_ratio", "zero_fraction")
_OUTLIER_SIGMAS = 3.0
_CHUNK = 1 << 20  # elements per float64 chunk, so statistics of a big table stay cheap in memory


def weight_statistics(weights: Any) -> dict[str, float]:
    """Statistics of a weight tensor, over all its elements, computed in float64:

    absmax max|w|; absmean mean|w| (the BitNet ternary scale); mean; std (population);
    kurtosis, the excess kurtosis m4/m2² − 3 (0 for a Gaussian, large for heavy tails);
    outlier_ratio, the fraction of elements farther than 3 std from the mean (0.0027 for a
    Gaussian); zero_fraction, the fraction of exact zeros. An empty tensor gives NaN everywhere,
    a constant one NaN kurtosis; NaN makes every comparison but NOT_EQUAL false.
    """
    flat = np.asarray(weights).reshape(-1)
    n = flat.size
    if n == 0:
        return dict.fromkeys(WEIGHT_STATISTICS, math.nan)
    total = abs_total = absmax = zeros = 0.0
    for chunk in _chunks(flat):
        total += chunk.sum()
        magnitude = np.abs(chunk)
        abs_total += magnitude.sum()
        absmax = max(absmax, float(magnitude.max()))
        zeros += np.count_nonzero(chunk == 0)
    mean = total / n
    m2 = m4 = 0.0
    for chunk in _chunks(flat):
        square = (chunk - mean) ** 2
        m2 += square.sum()
        m4 += (square**2).sum()
    m2, m4 = m2 / n, m4 / n
    std = math.sqrt(m2)
    outliers = 0
    if std > 0:
        for chunk in _chunks(flat):
            outliers += np.count_nonzero(np.abs(chunk - mean) > _OUTLIER_SIGMAS * std)
    return {
        "absmax": absmax,
        "absmean": float(abs_total / n),
        "mean": float(mean),
        "std": std,
        "kurtosis": float(m4 / (m2 * m2) - 3.0) if m2 > 0 else math.nan,
        "outlier_ratio": outliers / n,
        "zero_fraction": float(zeros / n),
    }


def _chunks(flat: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, flat.size, _CHUNK):
        yield flat[start : start + _CHUNK].astype(np.float64)


@dataclass(frozen=True)
class LayerFacts:
    """What the policies may look at for one layer; the compiler fills it in.

    `index` is the layer's 0-based position among the model's `layer_count` layers;
    `memory_usage` is the percent of the memory budget the model uses (None: no budget given);
    `weight_statistics` comes from `weight_statistics(...)`; `sensitivity` maps a precision to the
    model's output error measured with this layer alone in that precision; `original_dtype` is the
    precision the layer has in the input model (what KEEP_ORIGINAL restores).
    """

    name: str
    layer_type: LayerType
    index: int
    layer_count: int
    parameter_count: int = 0
    memory_usage: float | None = None
    weight_statistics: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    sensitivity: Mapping[DType, float] = field(default_factory=lambda: MappingProxyType({}))
    original_dtype: DType = DType.F32

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer_type", LayerType.parse(self.layer_type))
        object.__setattr__(self, "original_dtype", DType.parse(self.original_dtype))
        object.__setattr__(self, "weight_statistics", MappingProxyType(dict(self.weight_statistics)))
        sensitivity = {DType.parse(k): v for k, v in self.sensitivity.items()}
        object.__setattr__(self, "sensitivity", MappingProxyType(sensitivity))
