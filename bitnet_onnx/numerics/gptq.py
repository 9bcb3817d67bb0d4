"""GPTQ: quantization of a linear layer's weights that compensates each column's rounding error on
the columns not quantized yet, weighted by the layer's calibration activations (Frantar et al.,
"GPTQ: accurate post-training quantization for generative pre-trained transformers", 2023).

For a layer Y = X·Wᵀ with W [N, K] and calibration activations X [n, K]:

1. H = 2·XᵀX / n, accumulated in float64 batch by batch (`Hessian`); rows of X holding NaN or ±Inf
   are left out. H is the curvature of the output error ‖XWᵀ − XŴᵀ‖² of every row of W.
2. Damping: a column no sample activates (H_jj = 0) gets H_jj = 1 and weight 0 (it never reaches
   the output); then H += `damping` · mean(diag H) · I, so H is positive definite.
3. U is the upper Cholesky factor of H⁻¹ (H⁻¹ = UᵀU).
4. Columns j = 0 … K−1 in order: column j is rounded on its grid (5.) to q_j, and its error
   e = (w_j − q_j) / U_jj is spread over the later columns, w_l −= e · U_jl for l > j. Updates are
   applied in blocks of `block_size` columns (inside a block column by column; to the columns after
   the block once, when it ends), which gives the result of updating every column at once up to
   float64 rounding.
5. Grids. Integer groups (I8, I4, I2 with the layout's group size G, symmetric or asymmetric): a
   group's scale and zero point are those of QUANTIZATION_AWARE (`quantization.clipped_groups`:
   the README range clipped by the ratio of 1.0 … 0.5 with the least squared error, per row) over
   the group's weights as they stand when its first column is reached (earlier columns' errors
   included), and each column's codes are `quantization.encode_groups` of it. The clipping matters
   at 2 bits: the plain absmax range leaves most weights of a group at 0, and the errors spread
   from them grow the later columns instead of compensating them. BITNET158: the scale
   s of the layout's rule (`quantization.ternarize`: per tensor or per row, absmean γ or least
   squares α) over the original weights, and T = clip(rint(w / (s + ε)), −1, 1) per column, the
   grid {−s, 0, s} the stored scale decodes to.

Rounding is float32 as the README formulas are; the error propagation is float64. There are no
random numbers: the same W and H give the same codes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from bitnet_onnx.core.dtypes import TernaryScale
from bitnet_onnx.core.errors import ConfigError
from bitnet_onnx.numerics.quantization import (
    TERNARY_EPS,
    GroupWeights,
    TernaryWeights,
    clipped_groups,
    encode_groups,
    ternarize,
)

__all__ = ["BLOCK_SIZE", "DAMPING", "Hessian", "gptq_groups", "gptq_ternary"]

BLOCK_SIZE = 128
"""Columns per lazy-update block (case 4)."""

DAMPING = 0.01
"""λ of case 2, relative to the mean of diag H."""

# (current weights of a group [N, g], its index) -> the group's grid; (column [N], grid) -> (codes, values)
_Start = Callable[[np.ndarray, int], object]
_Round = Callable[[np.ndarray, object], tuple[np.ndarray, np.ndarray]]


@dataclass
class Hessian:
    """The running H = 2·XᵀX / n of a layer's activations X [..., K] (case 1)."""

    k: int
    samples: int = 0
    _sum: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._sum = np.zeros((self.k, self.k), np.float64)

    def add(self, x: np.ndarray) -> None:
        """Add the rows of `x` (its last axis is K); rows with NaN or ±Inf are left out."""
        x = np.asarray(x)
        if x.shape[-1:] != (self.k,):
            raise ConfigError(f"activations of shape {list(x.shape)} do not end in K={self.k}")
        rows = x.reshape(-1, self.k).astype(np.float64)
        rows = rows[np.isfinite(rows).all(axis=-1)]
        self._sum += rows.T @ rows
        self.samples += rows.shape[0]

    @property
    def matrix(self) -> np.ndarray:
        """H [K, K] float64; ConfigError before any row was added."""
        if not self.samples:
            raise ConfigError("no finite activation rows were seen; GPTQ needs calibration samples")
        return self._sum * (2.0 / self.samples)


def gptq_groups(
    w: np.ndarray,
    hessian: np.ndarray,
    bits: int,
    group_size: int,
    asymmetric: bool = False,
    *,
    block_size: int = BLOCK_SIZE,
    damping: float = DAMPING,
) -> GroupWeights:
    """Integer codes of W [N, K] in groups of `group_size` (resolved, not None), by GPTQ (case 5)."""
    w = _matrix(w)
    n, k = w.shape
    groups = -(-k // group_size)
    scales = np.zeros((n, groups), np.float32)
    zero_points = np.zeros((n, groups), np.uint8) if asymmetric else None

    def start(current: np.ndarray, index: int) -> object:
        grid = clipped_groups(current, bits, None, asymmetric)
        scales[:, index] = grid.scales[:, 0]
        if zero_points is not None and grid.zero_points is not None:
            zero_points[:, index] = grid.zero_points[:, 0]
        return grid.scales, grid.zero_points

    def round_column(column: np.ndarray, grid: object) -> tuple[np.ndarray, np.ndarray]:
        s, zp = grid  # type: ignore[misc]
        codes = encode_groups(column[:, None], s, zp, bits, None)
        per_byte = 8 // bits
        values = GroupWeights(codes, s, zp, bits, per_byte).dequantize()
        return codes[:, 0], values[:, 0]

    codes = _compensate(w, hessian, group_size, np.uint8, start, round_column, block_size, damping)
    return GroupWeights(codes, scales, zero_points, bits, group_size)


def gptq_ternary(
    w: np.ndarray,
    hessian: np.ndarray,
    per_channel: bool = False,
    scale: TernaryScale = TernaryScale.ABSMEAN,
    *,
    block_size: int = BLOCK_SIZE,
    damping: float = DAMPING,
) -> TernaryWeights:
    """Ternary values of W [N, K] with the scale of the layout's rule, by GPTQ (case 5)."""
    w = _matrix(w)
    s = ternarize(w, per_channel, scale).scale
    column_scale = np.broadcast_to(s, (w.shape[0],)).astype(np.float32)
    denom = column_scale + TERNARY_EPS

    def round_column(column: np.ndarray, grid: object) -> tuple[np.ndarray, np.ndarray]:
        t = np.clip(np.rint(column.astype(np.float32) / denom), -1, 1).astype(np.int8)
        return t, t.astype(np.float32) * column_scale

    one_group = w.shape[1]  # the scale is fixed: nothing to start per group
    values = _compensate(
        w, hessian, one_group, np.int8, lambda _w, _i: None, round_column, block_size, damping
    )
    return TernaryWeights(values, s)


def _matrix(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w)
    if w.ndim != 2:
        raise ConfigError(f"GPTQ quantizes a weight matrix W [N, K]; got shape {list(w.shape)}")
    return w


def _inverse_factor(hessian: np.ndarray, w: np.ndarray, damping: float) -> np.ndarray:
    """U of case 3 after the damping of case 2 (zeroing the dead columns of `w` in place)."""
    k = w.shape[1]
    h = np.array(hessian, dtype=np.float64)
    if h.shape != (k, k):
        raise ConfigError(f"the GPTQ Hessian has shape {list(h.shape)}; W [N, K] with K={k} needs [{k}, {k}]")
    if not np.isfinite(h).all():
        raise ConfigError("the GPTQ Hessian holds NaN or ±Inf; check the calibration activations")
    diagonal = np.einsum("ii->i", h)  # a view: writes go to h
    dead = diagonal == 0
    diagonal[dead] = 1.0
    w[:, dead] = 0.0
    diagonal += damping * float(np.mean(diagonal))
    try:
        inverse = np.linalg.inv(np.linalg.cholesky(h))  # L⁻¹ with H = LLᵀ, so H⁻¹ = L⁻ᵀL⁻¹
        return np.linalg.cholesky(inverse.T @ inverse).T
    except np.linalg.LinAlgError as exc:
        raise ConfigError(
            f"the GPTQ Hessian is not positive definite even with damping {damping} ({exc}); use more "
            "calibration samples or another conversion strategy"
        ) from exc


def _compensate(
    w: np.ndarray,
    hessian: np.ndarray,
    group_size: int,
    code_type: type,
    start: _Start,
    round_column: _Round,
    block_size: int,
    damping: float,
) -> np.ndarray:
    """Cases 2–4: the codes [N, K] of every column, each rounded after the earlier ones' errors."""
    weights = np.array(w, dtype=np.float64)
    u = _inverse_factor(hessian, weights, damping)
    n, k = weights.shape
    codes = np.empty((n, k), code_type)
    grid: object = None
    for b0 in range(0, k, block_size):
        b1 = min(b0 + block_size, k)
        block = weights[:, b0:b1].copy()
        errors = np.zeros((n, b1 - b0))
        for i in range(b1 - b0):
            j = b0 + i
            if j % group_size == 0:
                end = min(j + group_size, k)
                # The group as it stands now: in the block, updated; after it, the lazy update so far.
                later = weights[:, b1:end] - errors[:, :i] @ u[b0:j, b1:end]
                grid = start(np.concatenate([block[:, i : end - b0], later], axis=1), j // group_size)
            codes[:, j], q = round_column(block[:, i], grid)
            error = (block[:, i] - q) / u[j, j]
            block[:, i:] -= np.outer(error, u[j, j:b1])
            errors[:, i] = error
        weights[:, b1:] -= errors @ u[b0:b1, b1:]
    return codes
