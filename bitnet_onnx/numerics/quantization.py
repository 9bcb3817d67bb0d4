"""Reference numerics: the quantization formulas of kernels/README.md and numpy versions of its ops.

This module is the oracle the C++ kernels are tested against, so every formula is spelled out in the
order it is evaluated. Conventions, shared by every function:

1. Inputs are widened (float16, bfloat16) or rounded (float64) to float32 first; all arithmetic of a
   formula is float32, one correctly rounded operation at a time, in the order written. `rint` is
   round-half-to-even (`np.rint`).
2. Means (ternary γ and α, the 1-bit group scale) are sums accumulated in float64, divided by the
   count in float64 and rounded once to float32. (The order of a float64 sum of float32 values almost
   never changes the float32 result, so C++ may sum in any order.)
3. Integer accumulations are exact: they run as float64 matrix products of small integers, exact
   because every partial sum stays far below 2^53, and are returned as int64.
4. Tensors are rows along the last axis (K elements); leading axes are kept.
5. A row that contains NaN or ±Inf is flagged: its activations quantize to zero, an op's output row
   for it is all NaN, and a weight row of it gets a NaN scale and the codes of w = 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from bitnet_onnx.core.dtypes import TernaryPacking, TernaryScale
from bitnet_onnx.core.errors import ConfigError
from bitnet_onnx.numerics.packing import (
    INTEGER_BITS,
    pack_int,
    pack_ternary,
    resolve_group_size,
    symmetric_zero_point,
    unpack_int,
    unpack_ternary,
)

__all__ = [
    "CLIP_RATIOS",
    "TERNARY_EPS",
    "GroupWeights",
    "TernaryWeights",
    "TokenActivations",
    "bitlinear_reference",
    "clipped_groups",
    "dequantize_lowbit_reference",
    "encode_groups",
    "group_scales",
    "grouped",
    "lowbit_matmul_reference",
    "quantize_groups",
    "quantize_lowbit_reference",
    "quantize_tokens",
    "ternarize",
    "ungrouped",
]

TERNARY_EPS = np.float32(1e-6)
"""ε of the absmean rule T = clip(rint(W / (γ + ε)), −1, 1)."""

_Q127 = np.float32(127.0)

CLIP_RATIOS = tuple(round(1.0 - 0.05 * i, 2) for i in range(11))
"""Fractions of the README range `clipped_groups` tries: 1.0, 0.95, ..., 0.5."""

Rounding = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class TernaryWeights:
    """Ternary values T ∈ {−1, 0, 1} (int8 [..., K]) and their float32 scale α ([1] or [rows])."""

    values: np.ndarray
    scale: np.ndarray

    def dequantize(self) -> np.ndarray:
        """w = float32(T) · α, float32 [..., K]."""
        rows = (
            self.values.reshape(-1, self.values.shape[-1]) if self.values.ndim else self.values.reshape(1, 1)
        )
        out = rows.astype(np.float32) * self.scale.reshape(-1, 1)
        return out.reshape(self.values.shape)


@dataclass(frozen=True)
class GroupWeights:
    """Group-wise integer codes u (uint8 [..., K], unpadded), float32 scales [..., groups], uint8 zero
    points [..., groups] (None when symmetric), the bit width and the group size G."""

    codes: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    bits: int
    group_size: int

    def dequantize(self) -> np.ndarray:
        """README decode, float32 [..., K].

        bits ≥ 2: w = float32(u − zp) · s; bits = 1: w = float32(2u − 1) · s.
        """
        k = self.codes.shape[-1]
        u = grouped(self.codes.astype(np.int16), self.group_size)
        if self.bits == 1:
            q = 2 * u - 1
        elif self.zero_points is None:
            q = u - symmetric_zero_point(self.bits)
        else:
            q = u - self.zero_points[..., None].astype(np.int16)
        w = q.astype(np.float32) * self.scales[..., None]
        return w.reshape(*w.shape[:-2], w.shape[-2] * w.shape[-1])[..., :k]


@dataclass(frozen=True)
class TokenActivations:
    """Per-token int8 activations: values int8 [..., K], absmax s float32 [...] (NaN where the row is
    not finite) and the finite flag per row. The row's dequantization factor is s / 127.0f."""

    values: np.ndarray
    absmax: np.ndarray
    finite: np.ndarray

    @property
    def factor(self) -> np.ndarray:
        """s / 127.0f, float32 [...]."""
        return self.absmax / _Q127

    def dequantize(self) -> np.ndarray:
        """x = float32(xq) · (s / 127.0f), float32 [..., K]."""
        return self.values.astype(np.float32) * self.factor[..., None]


def ternarize(
    w: np.ndarray, per_channel: bool = False, scale: TernaryScale = TernaryScale.ABSMEAN
) -> TernaryWeights:
    """BitNet b1.58 ternarization (README "Ternary (BITNET158) weights").

    γ = mean|W| (over the tensor, or over each row when `per_channel`),
    T = clip(rint(W / (γ + 1e-6f)), −1, 1)  (float32 add, then float32 divide),
    α = mean of |W| over the non-zero T, the least-squares scale of the pattern (0 when T is all 0).
    The stored scale is γ (`TernaryScale.ABSMEAN`, what the model was trained with) or α
    (`LEAST_SQUARES`), except where the weights (the tensor, or the row when `per_channel`) are
    exactly ternary × s: every |W| is 0 where T = 0 and α where T ≠ 0. There the scale is α = s under
    both rules (γ would be s times the non-zero fraction), so the pattern and s come back unchanged.
    A non-finite row gets T = 0 and scale NaN (the whole tensor's scale when not `per_channel`).
    """
    w32 = _rows(w)
    finite = np.isfinite(w32).all(axis=-1)
    if not finite.all():
        w32 = np.where(finite[:, None], w32, np.float32(0))
    a = np.abs(w32)
    axis = -1 if per_channel else None
    count = a.shape[-1] if per_channel else a.size
    gamma = _mean32(np.sum(a, axis=axis, dtype=np.float64), count)
    denom = gamma + TERNARY_EPS
    ratio = w32 / (denom[:, None] if per_channel else denom)
    np.rint(ratio, out=ratio)
    t = np.clip(ratio, -1, 1, out=ratio).astype(np.int8)
    del ratio  # large: keep the peak memory of big tensors low
    nonzero = t != 0
    np.multiply(a, nonzero, out=a)  # |W| where T ≠ 0, else 0 (faster than a masked sum)
    alpha = _mean32(np.sum(a, axis=axis, dtype=np.float64), np.count_nonzero(nonzero, axis=axis))
    if scale is TernaryScale.LEAST_SQUARES:
        chosen = alpha
    else:
        # Exactly ternary × α: W is 0 wherever T is (T ≠ 0 implies W ≠ 0, so equal non-zero counts
        # say it) and every kept |W| is α.
        kept = np.multiply(nonzero, alpha[:, None] if per_channel else alpha, dtype=np.float32)
        exact = (np.count_nonzero(w32, axis=axis) == np.count_nonzero(nonzero, axis=axis)) & np.all(
            a == kept, axis=axis
        )
        chosen = np.where(exact, alpha, gamma)
    out = np.atleast_1d(chosen).astype(np.float32)
    if not finite.all():
        if per_channel:
            out[~finite] = np.nan
        else:
            out[:] = np.nan
    return TernaryWeights(values=t.reshape(np.shape(w)), scale=out)


def grouped(a: np.ndarray, group_size: int) -> np.ndarray:
    """View [..., K] as [..., ceil(K/G), G], zero-padding the last group (a copy only when K % G ≠ 0)."""
    k = a.shape[-1]
    groups = -(-k // group_size)
    if groups * group_size != k:
        padded = np.zeros((*a.shape[:-1], groups * group_size), dtype=a.dtype)
        padded[..., :k] = a
        a = padded
    return a.reshape(*a.shape[:-1], groups, group_size)


def group_scales(
    w: np.ndarray, bits: int, group_size: int | None, asymmetric: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """README scales and zero points of each group, float32 [..., groups] and uint8 [..., groups].

    symmetric, bits ≥ 2: s = max|w| / (2^(bits−1) − 1) (one float32 division), no zero points.
    symmetric, bits = 1: s = mean|w| over the group's real (unpadded) elements.
    asymmetric (bits ≥ 2): lo = min(min w, 0), hi = max(max w, 0), s = (hi − lo) / (2^bits − 1),
    zp = clip(rint(−lo / s), 0, 2^bits − 1); an all-zero group has s = 0 and zp = 0.
    """
    w32 = _float32(w)
    _check_layout(bits, asymmetric)
    g = grouped(w32, resolve_group_size(w32.shape[-1], bits, group_size))
    if not asymmetric:
        if bits == 1:
            counts = _group_counts(w32.shape[-1], g.shape[-1])
            return _mean32(np.sum(np.abs(g), axis=-1, dtype=np.float64), counts), None
        qmax = np.float32((1 << (bits - 1)) - 1)
        return np.max(np.abs(g), axis=-1) / qmax, None
    levels = np.float32((1 << bits) - 1)
    lo = np.minimum(np.min(g, axis=-1), np.float32(0))
    hi = np.maximum(np.max(g, axis=-1), np.float32(0))
    s = (hi - lo) / levels
    zp = np.clip(np.rint(_safe_divide(-lo, s)), 0, levels).astype(np.uint8)
    return s, zp


def encode_groups(
    w: np.ndarray,
    scales: np.ndarray,
    zero_points: np.ndarray | None,
    bits: int,
    group_size: int | None,
    rounding: Rounding = np.rint,
) -> np.ndarray:
    """Codes u (uint8 [..., K]) of `w` for given scales and zero points (README formulas).

    symmetric, bits ≥ 2: q = clip(rounding(w / s), −(2^(bits−1) − 1), 2^(bits−1) − 1), u = q + 2^(bits−1).
    symmetric, bits = 1: u = (w ≥ 0).
    asymmetric: u = clip(rounding(w / s) + zp, 0, 2^bits − 1).
    A group with s = 0 gets u = zp (w = 0 exactly). `rounding` is rint unless a caller (stochastic
    rounding) supplies another map of float32 to integer-valued float32.
    """
    w32 = _float32(w)
    k = w32.shape[-1]
    _check_layout(bits, zero_points is not None)
    g = grouped(w32, resolve_group_size(k, bits, group_size))
    if bits == 1:
        u = (g >= 0).astype(np.uint8)
    else:
        # w / s is taken as 0 where s = 0, so those groups land on the zero point.
        ratio = rounding(_safe_divide(g, scales[..., None]))
        if zero_points is None:
            qmax = np.float32((1 << (bits - 1)) - 1)
            np.clip(ratio, -qmax, qmax, out=ratio)
            ratio += np.float32(symmetric_zero_point(bits))
        else:
            ratio += zero_points[..., None].astype(np.float32)
            np.clip(ratio, 0, np.float32((1 << bits) - 1), out=ratio)
        u = ratio.astype(np.uint8)
    return u.reshape(*u.shape[:-2], u.shape[-2] * u.shape[-1])[..., :k]


def quantize_groups(
    w: np.ndarray, bits: int, group_size: int | None = None, asymmetric: bool = False
) -> GroupWeights:
    """README group-wise integer quantization: `group_scales`, then `encode_groups` with rint.

    `group_size` None means one group per row. A non-finite row gets NaN scales and the codes of
    w = 0 (the zero point; u = 1 for bits = 1) in every group.
    """
    w32 = _float32(w)
    group_size = resolve_group_size(w32.shape[-1], bits, group_size)
    finite = np.isfinite(w32).all(axis=-1)
    clean = w32 if finite.all() else np.where(finite[..., None], w32, np.float32(0))
    scales, zero_points = group_scales(clean, bits, group_size, asymmetric)
    codes = encode_groups(clean, scales, zero_points, bits, group_size)
    if not finite.all():
        scales = np.where(finite[..., None], scales, np.float32(np.nan))
    return GroupWeights(codes, scales, zero_points, bits, group_size)


def clipped_groups(w: np.ndarray, bits: int, group_size: int | None, asymmetric: bool) -> GroupWeights:
    """Group-wise codes with, per group, the clipping ratio of `CLIP_RATIOS` whose README scale
    (`group_scales` of the group times the ratio) gives the least squared error (the first ratio on
    ties, so 1.0, the plain README range, wins them). `group_size` None is one group per row."""
    group_size = resolve_group_size(w.shape[-1], bits, group_size)
    k = w.shape[-1]
    wg = grouped(w, group_size)

    def candidate(ratio: float) -> tuple[GroupWeights, np.ndarray]:
        scales, zero_points = group_scales(w * np.float32(ratio), bits, group_size, asymmetric)
        codes = encode_groups(w, scales, zero_points, bits, group_size)
        weights = GroupWeights(codes, scales, zero_points, bits, group_size)
        diff = (grouped(weights.dequantize(), group_size) - wg).astype(np.float64)
        return weights, np.sum(diff * diff, axis=-1)

    best, best_error = candidate(CLIP_RATIOS[0])
    for ratio in CLIP_RATIOS[1:]:
        new, error = candidate(ratio)
        better = error < best_error
        best_error = np.where(better, error, best_error)
        codes = np.where(better[..., None], grouped(new.codes, group_size), grouped(best.codes, group_size))
        zero_points = None if new.zero_points is None else np.where(better, new.zero_points, best.zero_points)
        best = GroupWeights(
            ungrouped(codes, k), np.where(better, new.scales, best.scales), zero_points, bits, group_size
        )
    return best


def ungrouped(g: np.ndarray, k: int) -> np.ndarray:
    """`grouped` undone: [..., groups, G] back to [..., K] (the padding dropped)."""
    return g.reshape(*g.shape[:-2], -1)[..., :k]


def quantize_tokens(x: np.ndarray) -> TokenActivations:
    """Per-token int8 activation quantization (README "Activation quantization inside the ops").

    Per row, in float32: s = max|x|; s = 0 → xq = 0; otherwise inv = 127.0f / s (one division) and
    xq = clip(rint(x · inv), −127, 127). A non-finite row gets xq = 0, s = NaN, finite = False.
    """
    x32 = _float32(x)
    finite = np.isfinite(x32).all(axis=-1)
    if not finite.all():
        x32 = np.where(finite[..., None], x32, np.float32(0))
    s = np.max(np.abs(x32), axis=-1) if x32.shape[-1] else np.zeros(x32.shape[:-1], np.float32)
    inv = _safe_divide(np.broadcast_to(_Q127, s.shape), s)
    xq = np.clip(np.rint(x32 * inv[..., None]), -127, 127).astype(np.int8)
    s = np.where(finite, s, np.float32(np.nan))
    return TokenActivations(values=xq, absmax=s, finite=finite)


def bitlinear_reference(
    x: np.ndarray,
    packed_w: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray | None,
    k: int,
    format: str,
) -> np.ndarray:
    """The BitLinear op: Y = (Xq · Tᵀ) · (s_x / 127) · α + bias.

    Xq is `quantize_tokens(X)`, T the unpacked ternary W[N, K]; the accumulation is exact (int64);
    the epilogue is float32 in README order: ((float32(acc) · (s/127.0f)) · α) + bias.
    Output: X's dtype, [..., N]; a non-finite row of X gives a NaN row.
    """
    x32 = _op_input(x, k, "BitLinear")
    t = unpack_ternary(packed_w, k, _ternary_format(format))
    n = t.shape[0]
    alpha = _scale_per_row(scale, n)
    act = quantize_tokens(x32.reshape(-1, k))
    acc = _int_matmul(act.values, t)
    y = (acc.astype(np.float32) * act.factor[:, None]) * alpha[None, :]
    y = _epilogue(y, bias, n, act.finite, "BitLinear")
    return y.reshape(*x32.shape[:-1], n).astype(np.asarray(x).dtype)


def lowbit_matmul_reference(
    x: np.ndarray,
    packed_w: np.ndarray,
    scales: np.ndarray,
    zero_points: np.ndarray | None,
    bias: np.ndarray | None,
    k: int,
    bits: int,
    group_size: int,
    act_quant: int,
) -> np.ndarray:
    """The LowBitMatMul op: Y = X · Wᵀ with group-wise integer weights W[N, K].

    act_quant = 0: W is dequantized (`GroupWeights.dequantize`) and Y = X · Wᵀ is computed in float64
      and rounded once to float32 (kernels accumulating in float32 match to rounding error), + bias.
    act_quant = 1: Xq = `quantize_tokens(X)`; per group g the integer sum acc_g = Σ_{k∈g} xq · q_w,
      with q_w = u − zp (bits ≥ 2) or 2u − 1 (bits = 1), is exact; then, in float32 and group order,
      y = y + float32(acc_g) · s_w[n, g] starting from y = 0, and Y = (y · (s_x / 127.0f)) + bias.
    Output: X's dtype, [..., N]; a non-finite row of X gives a NaN row.
    """
    x32 = _op_input(x, k, "LowBitMatMul")
    weights = _unpacked_groups(packed_w, scales, zero_points, k, bits, group_size, "LowBitMatMul")
    n = weights.codes.shape[0]
    rows = x32.reshape(-1, k)
    if act_quant == 0:
        finite = np.isfinite(rows).all(axis=-1)
        rows = np.where(finite[:, None], rows, np.float32(0))  # their output is NaN regardless
        y = (rows.astype(np.float64) @ weights.dequantize().astype(np.float64).T).astype(np.float32)
    elif act_quant == 1:
        act = quantize_tokens(rows)
        finite = act.finite
        xg = grouped(act.values, weights.group_size).astype(np.float64)  # [M, G, gs]
        wg = grouped(_integer_weights(weights), weights.group_size).astype(np.float64)  # [N, G, gs]
        acc = np.matmul(xg.transpose(1, 0, 2), wg.transpose(1, 2, 0))  # [G, M, N], exact
        y = np.zeros((rows.shape[0], n), dtype=np.float32)
        for g in range(acc.shape[0]):
            y = y + acc[g].astype(np.float32) * weights.scales[None, :, g]
        y = y * act.factor[:, None]
    else:
        raise ConfigError(f"[LowBitMatMul] act_quant={act_quant} is invalid; use 0 (float) or 1 (int8)")
    y = _epilogue(y, bias, n, finite, "LowBitMatMul")
    return y.reshape(*x32.shape[:-1], n).astype(np.asarray(x).dtype)


def dequantize_lowbit_reference(
    q: np.ndarray,
    scales: np.ndarray,
    zero_points: np.ndarray | None,
    k: int,
    bits: int,
    format: str = "2bit",
    group_size: int = 0,
    to: int = TensorProto.FLOAT,
) -> np.ndarray:
    """The DequantizeLowBit op: packed [..., row_bytes] → float [..., K] (`to` FLOAT or FLOAT16).

    bits = 0: ternary in `format`, w = float32(T) · α with `scales` [1] or [rows] (leading dims
    flattened); bits ∈ {8, 4, 2, 1}: `GroupWeights.dequantize` with `scales` [..., groups]
    (`group_size` is then required; it is ignored for ternary).
    """
    out_type = _float_output(to, "DequantizeLowBit")
    q = np.asarray(q)
    if bits == 0:
        t = unpack_ternary(q, k, _ternary_format(format))
        rows = int(np.prod(t.shape[:-1]))
        alpha = np.asarray(scales, dtype=np.float32).reshape(-1)
        if alpha.size not in (1, rows):
            raise ConfigError(
                f"[DequantizeLowBit] ternary scales hold {alpha.size} values; need 1 or one per row ({rows})"
            )
        w = TernaryWeights(t, alpha).dequantize()
    else:
        w = _unpacked_groups(q, scales, zero_points, k, bits, group_size, "DequantizeLowBit").dequantize()
    return w.astype(out_type)


def quantize_lowbit_reference(
    x: np.ndarray,
    bits: int,
    group_size: int = 0,
    asymmetric: bool = False,
    format: str = "2bit",
    per_channel: bool = False,
    ternary_scale: TernaryScale | str = TernaryScale.ABSMEAN,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The QuantizeLowBit op: float [..., K] → (Q packed uint8, scales float32, zero_points uint8).

    bits = 0: `ternarize` (per tensor, or per row with `per_channel`) with the scale rule
    `ternary_scale` (the op's attribute of that name), packed in `format`, scales [1] or [rows].
    bits ∈ {8, 4, 2, 1}: `quantize_groups` packed with `pack_int`, scales [..., groups]
    (`group_size` is then required; it is ignored for ternary).
    zero_points is uint8 [..., groups] when `asymmetric`, else the empty uint8 [0].
    """
    x32 = _float32(x)
    empty = np.zeros((0,), dtype=np.uint8)
    if bits == 0:
        tw = ternarize(x32, per_channel, TernaryScale.parse(ternary_scale))
        return pack_ternary(tw.values, _ternary_format(format)), tw.scale, empty
    gw = quantize_groups(x32, bits, group_size, asymmetric)
    packed = pack_int(gw.codes, bits, gw.group_size, gw.zero_points)
    return packed, gw.scales, (gw.zero_points if gw.zero_points is not None else empty)


# --- helpers -------------------------------------------------------------------------------------


def _float32(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def _rows(w: np.ndarray) -> np.ndarray:
    w32 = _float32(w)
    return w32.reshape(1, 1) if w32.ndim == 0 else w32.reshape(-1, w32.shape[-1])


def _mean32(total: np.ndarray | float, count: np.ndarray | int) -> np.ndarray:
    """float32(total / count) from a float64 sum; 0 where count is 0."""
    total = np.asarray(total, dtype=np.float64)
    count = np.asarray(count, dtype=np.float64)
    return np.divide(total, count, out=np.zeros(np.broadcast(total, count).shape), where=count > 0).astype(
        np.float32
    )


def _safe_divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b in float32, 0 where b is 0."""
    return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape, dtype=np.float32), where=b != 0)


def _group_counts(k: int, group_size: int) -> np.ndarray:
    """Number of real (unpadded) elements in each group of a row of k."""
    groups = -(-k // group_size)
    counts = np.full(groups, group_size, dtype=np.int64)
    counts[-1] = k - (groups - 1) * group_size
    return counts


def _check_layout(bits: int, asymmetric: bool) -> None:
    if bits not in INTEGER_BITS:
        raise ConfigError(f"bits={bits} is not an integer encoding; choose one of {INTEGER_BITS}")
    if asymmetric and bits == 1:
        raise ConfigError("1-bit codes are symmetric only (w = s · (2u − 1)); set asymmetric to false")


def _ternary_format(format: str) -> TernaryPacking:
    try:
        return TernaryPacking(format)
    except ValueError:
        choices = ", ".join(p.value for p in TernaryPacking)
        raise ConfigError(f"unknown ternary format {format!r}; choose one of {choices}") from None


def _float_output(to: int, op: str) -> type:
    if to == TensorProto.FLOAT:
        return np.float32
    if to == TensorProto.FLOAT16:
        return np.float16
    raise ConfigError(f"[{op}] to={to} is invalid; use TensorProto.FLOAT (1) or FLOAT16 (10)")


def _op_input(x: np.ndarray, k: int, op: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float16):
        raise ConfigError(f"[{op}] X must be float32 or float16, got {x.dtype}")
    if x.ndim == 0 or x.shape[-1] != k:
        raise ConfigError(f"[{op}] X has shape {x.shape} but the last axis must be K={k}")
    return x.astype(np.float32)


def _scale_per_row(scale: np.ndarray, n: int) -> np.ndarray:
    v = np.asarray(scale, dtype=np.float32).reshape(-1)
    if v.size == 1:
        return np.broadcast_to(v, (n,))
    if v.size != n:
        raise ConfigError(f"[BitLinear] scale holds {v.size} values; need 1 or N={n}")
    return v


def _unpacked_groups(
    packed: np.ndarray,
    scales: np.ndarray,
    zero_points: np.ndarray | None,
    k: int,
    bits: int,
    group_size: int,
    op: str,
) -> GroupWeights:
    if zero_points is not None and np.asarray(zero_points).size == 0:
        zero_points = None
    _check_layout(bits, zero_points is not None)
    group_size = resolve_group_size(k, bits, group_size)
    codes = unpack_int(np.asarray(packed), k, bits, group_size)
    groups = -(-k // group_size)
    expected = (*codes.shape[:-1], groups)
    scales = np.asarray(scales, dtype=np.float32)
    if scales.shape != expected:
        raise ConfigError(f"[{op}] scales have shape {scales.shape}; need {expected} (rows × ceil(K/G))")
    if zero_points is not None:
        zero_points = np.asarray(zero_points)
        if zero_points.shape != expected or zero_points.dtype != np.uint8:
            raise ConfigError(
                f"[{op}] zero_points are {zero_points.dtype}{zero_points.shape}; need uint8{expected}"
            )
    return GroupWeights(codes, scales, zero_points, bits, group_size)


def _integer_weights(weights: GroupWeights) -> np.ndarray:
    """q_w per element: u − zp (bits ≥ 2) or 2u − 1 (bits = 1), int16 [..., K]."""
    u = weights.codes.astype(np.int16)
    if weights.bits == 1:
        return 2 * u - 1
    if weights.zero_points is None:
        return u - symmetric_zero_point(weights.bits)
    zp = np.repeat(weights.zero_points.astype(np.int16), weights.group_size, axis=-1)[..., : u.shape[-1]]
    return u - zp


def _int_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a [M, K] · b[N, K]ᵀ for small integers, exact: float64 products and sums stay below 2^53."""
    return (a.astype(np.float64) @ b.astype(np.float64).T).astype(np.int64)


def _epilogue(y: np.ndarray, bias: np.ndarray | None, n: int, finite: np.ndarray, op: str) -> np.ndarray:
    y = y.astype(np.float32, copy=False)
    if bias is not None:
        b = np.asarray(bias, dtype=np.float32)
        if b.shape != (n,):
            raise ConfigError(f"[{op}] bias has shape {b.shape}; need [N] = ({n},)")
        y = y + b[None, :]
    if not finite.all():
        y[~finite] = np.nan
    return y
