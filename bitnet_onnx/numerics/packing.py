"""Bit packing of quantized codes into the uint8 encodings of kernels/README.md.

Pure, vectorized functions; they know nothing about scales. Every function works on the last axis
(one row per leading index, K elements along the row) and keeps the leading shape:

1. Ternary `2bit`: code c = w + 1 ∈ {0, 1, 2}, 4 codes per byte, element i of a pack at bits
   2i..2i+1. A row of K values takes ceil(K/4) bytes, the tail padded with c = 1 (w = 0).
2. Ternary `base3`: byte = Σ_{i<5} c_i · 3^i ≤ 242, 5 codes per byte. A row takes ceil(K/5) bytes,
   the tail padded with c = 1.
3. Integer codes u ∈ [0, 2^bits − 1] for bits ∈ {8, 4, 2, 1}: 8/bits codes per byte, element i at
   bits i·bits.., least significant first. Rows are padded to ceil(K/G)·G codes (G = group size,
   G·bits a multiple of 8) with the code of w = 0: the group's zero point (asymmetric), 2^(bits−1)
   (symmetric; for bits = 1 that is u = 1, the code `u = (w ≥ 0)` gives to w = 0).
"""

from __future__ import annotations

import math

import numpy as np

from bitnet_onnx.core.dtypes import TernaryPacking
from bitnet_onnx.core.errors import ConfigError, ConversionError

__all__ = [
    "INTEGER_BITS",
    "int_row_bytes",
    "pack_int",
    "pack_ternary",
    "resolve_group_size",
    "symmetric_zero_point",
    "ternary_row_bytes",
    "unpack_int",
    "unpack_ternary",
]

INTEGER_BITS = (8, 4, 2, 1)
"""The bit widths of the integer encodings."""

_BASE3_POWERS = np.array([1, 3, 9, 27, 81], dtype=np.uint8)
_BASE3_MAX = 242  # 2 · (1 + 3 + 9 + 27 + 81)
# Row b of this table holds the five base-3 digits of byte b (bytes above 242 are never written).
_BASE3_DIGITS = ((np.arange(256, dtype=np.int32)[:, None] // _BASE3_POWERS.astype(np.int32)) % 3).astype(
    np.uint8
)


def ternary_row_bytes(k: int, packing: TernaryPacking) -> int:
    """Bytes of one packed ternary row of `k` values."""
    return math.ceil(k / packing.weights_per_byte)


def resolve_group_size(k: int, bits: int, group_size: int | None) -> int:
    """The group size G actually used for rows of `k` values.

    `None` means one group per row: G = K rounded up to a whole byte of codes. An explicit G must be
    positive with G·bits a multiple of 8, so that every group starts on a byte.
    """
    _check_bits(bits)
    per_byte = 8 // bits
    if group_size is None:
        return max(per_byte, math.ceil(k / per_byte) * per_byte)
    if group_size <= 0 or (group_size * bits) % 8:
        raise ConfigError(
            f"group_size={group_size} is invalid for {bits}-bit codes: it must be a positive multiple of "
            f"{per_byte} (group_size · bits a multiple of 8, so every group starts on a byte)"
        )
    return group_size


def int_row_bytes(k: int, bits: int, group_size: int) -> int:
    """Bytes of one packed integer row of `k` codes: ceil(K/G) · G · bits / 8."""
    return math.ceil(k / group_size) * group_size * bits // 8


def symmetric_zero_point(bits: int) -> int:
    """The implicit zero point of the symmetric encodings, 2^(bits−1) (u = 1 for bits = 1)."""
    _check_bits(bits)
    return 1 << (bits - 1)


def pack_ternary(values: np.ndarray, packing: TernaryPacking) -> np.ndarray:
    """Pack ternary values (integers in {−1, 0, 1}, shape [..., K]) into uint8 [..., ceil(K/ppb)]."""
    values = np.asarray(values)
    if values.size and (values.min() < -1 or values.max() > 1):
        raise ConversionError("values", "BITNET158", "ternary values must lie in {-1, 0, +1}")
    per_byte = packing.weights_per_byte
    codes = _pad_last(np.asarray(values + 1, dtype=np.uint8), per_byte, 1)
    codes = codes.reshape(*codes.shape[:-1], codes.shape[-1] // per_byte, per_byte)  # -1 fails on 0 rows
    if packing is TernaryPacking.TWO_BIT:
        out = codes[..., 0].copy()
        for i in range(1, 4):
            out |= codes[..., i] << np.uint8(2 * i)
        return out
    out = codes[..., 0].copy()
    for i in range(1, 5):
        out += codes[..., i] * _BASE3_POWERS[i]
    return out


def unpack_ternary(packed: np.ndarray, k: int, packing: TernaryPacking) -> np.ndarray:
    """Inverse of `pack_ternary`: uint8 [..., ceil(K/ppb)] → int8 [..., K] in {−1, 0, 1}.

    Raises ConversionError when the row length does not match `k`, or when a byte is not a valid
    code (a 2bit pair equal to 3, a base3 byte above 242).
    """
    packed = _as_packed(packed, ternary_row_bytes(k, packing), f"ternary {packing.value} with K={k}")
    if packing is TernaryPacking.TWO_BIT:
        shifts = np.array([0, 2, 4, 6], dtype=np.uint8)
        codes = (packed[..., None] >> shifts) & np.uint8(3)
        if codes.size and codes.max() == 3:
            raise ConversionError(
                "ternary 2bit", "BITNET158", "a 2-bit code equals 3; valid codes are 0, 1, 2 (w + 1)"
            )
    else:
        if packed.size and packed.max() > _BASE3_MAX:
            raise ConversionError(
                "ternary base3",
                "BITNET158",
                f"byte value {int(packed.max())} exceeds {_BASE3_MAX}, the largest base-3 pack of 5 codes",
            )
        codes = _BASE3_DIGITS[packed]
    codes = codes.reshape(*packed.shape[:-1], packed.shape[-1] * packing.weights_per_byte)[..., :k]
    return codes.astype(np.int8) - np.int8(1)


def pack_int(
    codes: np.ndarray, bits: int, group_size: int | None, zero_points: np.ndarray | None = None
) -> np.ndarray:
    """Pack integer codes u (shape [..., K], values in [0, 2^bits − 1]) into uint8 [..., row_bytes].

    Rows are padded to ceil(K/G)·G codes with the last group's zero point (`zero_points` uint8
    [..., ceil(K/G)]) or, when it is None, with the symmetric zero point 2^(bits−1).
    """
    codes = np.asarray(codes)
    group_size = resolve_group_size(codes.shape[-1], bits, group_size)
    if codes.size and (codes.min() < 0 or codes.max() >= 1 << bits):
        raise ConversionError("codes", f"{bits}-bit", f"codes must lie in [0, {(1 << bits) - 1}]")
    codes = codes.astype(np.uint8, copy=False)
    k = codes.shape[-1]
    padded_k = math.ceil(k / group_size) * group_size
    if padded_k != k:
        pad_value = symmetric_zero_point(bits) if zero_points is None else zero_points[..., -1:]
        padded = np.empty((*codes.shape[:-1], padded_k), dtype=np.uint8)
        padded[..., :k] = codes
        padded[..., k:] = pad_value
        codes = padded
    if bits == 8:
        return np.ascontiguousarray(codes)
    if bits == 1:
        return np.packbits(codes, axis=-1, bitorder="little")
    per_byte = 8 // bits
    codes = codes.reshape(*codes.shape[:-1], padded_k // per_byte, per_byte)
    out = codes[..., 0].copy()
    for i in range(1, per_byte):
        out |= codes[..., i] << np.uint8(i * bits)
    return out


def unpack_int(packed: np.ndarray, k: int, bits: int, group_size: int | None) -> np.ndarray:
    """Inverse of `pack_int`: uint8 [..., row_bytes] → uint8 codes [..., K] (padding dropped)."""
    group_size = resolve_group_size(k, bits, group_size)
    packed = _as_packed(
        packed, int_row_bytes(k, bits, group_size), f"{bits}-bit codes with K={k}, group_size={group_size}"
    )
    if bits == 8:
        return packed[..., :k].copy()
    if bits == 1:
        return np.unpackbits(packed, axis=-1, count=k, bitorder="little")
    shifts = np.arange(0, 8, bits, dtype=np.uint8)
    codes = (packed[..., None] >> shifts) & np.uint8((1 << bits) - 1)
    return codes.reshape(*packed.shape[:-1], packed.shape[-1] * len(shifts))[..., :k]


def _check_bits(bits: int) -> None:
    if bits not in INTEGER_BITS:
        raise ConfigError(f"bits={bits} is not an integer encoding; choose one of {INTEGER_BITS}")


def _pad_last(a: np.ndarray, multiple: int, value: int) -> np.ndarray:
    k = a.shape[-1]
    padded_k = math.ceil(k / multiple) * multiple
    if padded_k == k:
        return a
    out = np.full((*a.shape[:-1], padded_k), value, dtype=a.dtype)
    out[..., :k] = a
    return out


def _as_packed(packed: np.ndarray, row_bytes: int, what: str) -> np.ndarray:
    packed = np.asarray(packed)
    if packed.dtype != np.uint8:
        raise ConversionError(str(packed.dtype), what, "packed data must be uint8")
    if packed.ndim == 0 or packed.shape[-1] != row_bytes:
        got = packed.shape[-1] if packed.ndim else "a scalar"
        raise ConversionError(
            "packed bytes",
            what,
            f"rows hold {got} bytes but {what} needs {row_bytes}; check K, bits, group_size and format",
        )
    return packed
