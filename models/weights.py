"""Weight statistics for the reference models: random, trained-like, or exactly ternary.

Every tensor is drawn from its own generator seeded by (seed, crc32 of the tensor's name), so a
tensor's values depend only on the seed and its name: models are reproducible byte for byte, and
building a bigger model does not change the tensors it shares with a smaller one's names.

`WeightInit.RANDOM`: weights and embeddings ~ N(0, 0.02²) (the initializer range of BERT/LLaMA),
norm gains 1, biases ~ N(0, 0.02²).

`WeightInit.TRAINED_LIKE` mimics what trained transformers show and what makes some layers harder to
quantize than others. A layer's sensitivity s = (2·depth − 1)² is 1 at the first and the last layer
(depth 0 and 1) and 0 in the middle of the stack. For a weight with fan-in K:
  1. heavy tails: Student-t with ν = 5 + 10·(1 − s) degrees of freedom (excess kurtosis 6 at the
     ends, ≈ 0.5 in the middle), scaled to unit variance, then to std 0.02;
  2. per-output-channel spread: each output channel × exp(N(0, 0.3²));
  3. outlier input channels: max(1, round(K/100)) input channels × (4 + 12·s), the pattern that
     breaks per-tensor scales (and that BitNet's absmean rule clips).
Norm gains: 1 + N(0, 0.05²), with max(1, round(n/100)) channels × (2 + 6·s) (they create the
activation outlier channels seen in LLMs). Biases as RANDOM.

`WeightInit.TERNARY`: every weight is exactly t·α with t uniform on {−1, 0, +1} and one float32 scale
α = sqrt(1.5 / K) per tensor (E[t²] = 2/3, so α keeps activations' variance: y = x·W stays O(1)).
BitNet b1.58 ternarization (absmean pattern, least-squares scale) recovers t and α exactly, so it is
lossless. Norm gains 1; biases as RANDOM (biases stay float in BitLinear).
"""

from __future__ import annotations

import enum
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["WeightInit", "WeightSampler", "ternary_scale"]

_STD = 0.02


class WeightInit(enum.Enum):
    RANDOM = "random"
    TRAINED_LIKE = "trained_like"
    TERNARY = "ternary"


def ternary_scale(fan_in: int) -> np.float32:
    """The per-tensor scale α of a TERNARY weight with reduction length `fan_in`."""
    return np.float32(math.sqrt(1.5 / fan_in))


@dataclass(frozen=True)
class WeightSampler:
    """Draws the tensors of one model (see the module docstring for the recipes)."""

    init: WeightInit
    seed: int

    def _rng(self, name: str) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(name.encode())])

    def matrix(self, name: str, shape: Sequence[int], *, out_axis: int, depth: float) -> np.ndarray:
        """A weight whose output channels lie along `out_axis`; the input channels are the other
        axis of a matrix (or axis 1 of a conv kernel [C_out, C_in, kh, kw]); fan-in is the product
        of all axes but `out_axis`. `depth` in [0, 1] is the layer's position in the network."""
        rng = self._rng(name)
        shape = tuple(shape)
        fan_in = math.prod(shape) // shape[out_axis]
        if self.init is WeightInit.RANDOM:
            return rng.standard_normal(shape, dtype=np.float32) * np.float32(_STD)
        if self.init is WeightInit.TERNARY:
            trits = rng.integers(-1, 2, size=shape, dtype=np.int8)
            return trits.astype(np.float32) * ternary_scale(fan_in)
        s = _sensitivity(depth)
        nu = 5.0 + 10.0 * (1.0 - s)
        w = (rng.standard_t(nu, size=shape) * (_STD / math.sqrt(nu / (nu - 2.0)))).astype(np.float32)
        w *= _along(np.exp(rng.normal(0.0, 0.3, shape[out_axis])).astype(np.float32), out_axis, len(shape))
        in_axis = 1 if out_axis == 0 else 0
        w *= _along(_outlier_factors(rng, shape[in_axis], 4.0 + 12.0 * s), in_axis, len(shape))
        return w

    def gain(self, name: str, n: int, *, depth: float) -> np.ndarray:
        """A normalization scale (γ) of length n."""
        if self.init is not WeightInit.TRAINED_LIKE:
            return np.ones(n, dtype=np.float32)
        rng = self._rng(name)
        g = (1.0 + rng.normal(0.0, 0.05, n)).astype(np.float32)
        return g * _outlier_factors(rng, n, 2.0 + 6.0 * _sensitivity(depth))

    def bias(self, name: str, n: int) -> np.ndarray:
        """A bias (or normalization shift β) of length n."""
        return self._rng(name).standard_normal(n, dtype=np.float32) * np.float32(_STD)


def _sensitivity(depth: float) -> float:
    return (2.0 * depth - 1.0) ** 2


def _outlier_factors(rng: np.random.Generator, n: int, factor: float) -> np.ndarray:
    scale = np.ones(n, dtype=np.float32)
    picked = rng.choice(n, size=max(1, round(n / 100)), replace=False)
    scale[picked] = np.float32(factor)
    return scale


def _along(vector: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = vector.shape[0]
    return vector.reshape(shape)
