"""Packing: hand-computed bytes for small rows, padding codes, invalid bytes, and round trips."""

from __future__ import annotations

import numpy as np
import pytest

from bitnet_onnx.core.dtypes import TernaryPacking
from bitnet_onnx.core.errors import ConfigError, ConversionError
from bitnet_onnx.numerics.packing import (
    int_row_bytes,
    pack_int,
    pack_ternary,
    resolve_group_size,
    symmetric_zero_point,
    ternary_row_bytes,
    unpack_int,
    unpack_ternary,
)

SHAPES = [(1, 1), (3, 7), (2, 3, 130), (4, 64), (5, 0)]


def test_two_bit_bytes_by_hand() -> None:
    # codes w+1 = [0, 1, 2, 2 | 1, pad 1, 1, 1]; element i at bits 2i..2i+1
    packed = pack_ternary(np.array([[-1, 0, 1, 1, 0]], dtype=np.int8), TernaryPacking.TWO_BIT)
    assert packed.dtype == np.uint8
    assert packed.tolist() == [[0 | 1 << 2 | 2 << 4 | 2 << 6, 0b01010101]]


def test_base3_bytes_by_hand() -> None:
    # [0, 1, 2, 2, 1] -> 0 + 3 + 18 + 54 + 81; [2, pad 1, 1, 1, 1] -> 2 + 3 + 9 + 27 + 81
    packed = pack_ternary(np.array([[-1, 0, 1, 1, 0, 1]], dtype=np.int8), TernaryPacking.BASE3)
    assert packed.tolist() == [[156, 122]]


@pytest.mark.parametrize(
    ("packing", "zero_byte"), [(TernaryPacking.TWO_BIT, 85), (TernaryPacking.BASE3, 121)]
)
def test_ternary_zero_rows_are_all_padding_code(packing: TernaryPacking, zero_byte: int) -> None:
    packed = pack_ternary(np.zeros((2, 11), dtype=np.int8), packing)
    assert packed.shape == (2, ternary_row_bytes(11, packing))
    assert (packed == zero_byte).all()


def test_int4_symmetric_padding_is_zero_point() -> None:
    # G=4, K=3: pad with 2^(4-1) = 8; low nibble first
    packed = pack_int(np.array([[1, 2, 15]], dtype=np.uint8), bits=4, group_size=4)
    assert packed.tolist() == [[1 | 2 << 4, 15 | 8 << 4]]


def test_int4_asymmetric_padding_is_last_group_zero_point() -> None:
    packed = pack_int(np.array([[1, 2, 3]]), bits=4, group_size=2, zero_points=np.array([[5, 9]], np.uint8))
    assert packed.tolist() == [[1 | 2 << 4, 3 | 9 << 4]]


def test_int2_bytes_by_hand() -> None:
    # [3, 0, 1, 2 | 1, pad 2, 2, 2]
    packed = pack_int(np.array([[3, 0, 1, 2, 1]], dtype=np.uint8), bits=2, group_size=8)
    assert packed.tolist() == [[3 | 1 << 4 | 2 << 6, 1 | 2 << 2 | 2 << 4 | 2 << 6]]


def test_int1_bytes_by_hand_pad_with_one() -> None:
    packed = pack_int(np.array([[1, 0, 1, 1, 0, 0, 0, 1, 1]], dtype=np.uint8), bits=1, group_size=16)
    assert packed.tolist() == [[1 + 4 + 8 + 128, 255]]


def test_int8_pads_with_128() -> None:
    packed = pack_int(np.array([[10, 20, 30]], dtype=np.uint8), bits=8, group_size=4)
    assert packed.tolist() == [[10, 20, 30, 128]]


@pytest.mark.parametrize(("bits", "zp"), [(8, 128), (4, 8), (2, 2), (1, 1)])
def test_symmetric_zero_point(bits: int, zp: int) -> None:
    assert symmetric_zero_point(bits) == zp


@pytest.mark.parametrize(
    ("k", "bits", "group_size", "expected"),
    [
        (10, 4, None, 10),
        (11, 4, None, 12),
        (5, 1, None, 8),
        (3, 8, None, 3),
        (0, 2, None, 4),
        (100, 4, 32, 32),
    ],
)
def test_resolve_group_size(k: int, bits: int, group_size: int | None, expected: int) -> None:
    assert resolve_group_size(k, bits, group_size) == expected


@pytest.mark.parametrize(("bits", "group_size"), [(4, 3), (1, 4), (2, 0), (8, -8)])
def test_group_size_must_fill_whole_bytes(bits: int, group_size: int) -> None:
    with pytest.raises(ConfigError, match=f"group_size={group_size}"):
        resolve_group_size(64, bits, group_size)


@pytest.mark.parametrize("bits", [0, 3, 16])
def test_unknown_bits_rejected(bits: int) -> None:
    with pytest.raises(ConfigError, match="choose one of"):
        pack_int(np.zeros((1, 8), np.uint8), bits=bits, group_size=8)


@pytest.mark.parametrize(
    ("k", "bits", "group_size", "row_bytes"), [(100, 4, 32, 64), (7, 2, 4, 2), (9, 1, 8, 2)]
)
def test_int_row_bytes(k: int, bits: int, group_size: int, row_bytes: int) -> None:
    assert int_row_bytes(k, bits, group_size) == row_bytes


@pytest.mark.parametrize("packing", list(TernaryPacking))
@pytest.mark.parametrize("shape", SHAPES)
def test_ternary_round_trip(packing: TernaryPacking, shape: tuple[int, ...]) -> None:
    values = np.random.default_rng(1).integers(-1, 2, size=shape).astype(np.int8)
    packed = pack_ternary(values, packing)
    assert packed.shape == (*shape[:-1], ternary_row_bytes(shape[-1], packing))
    np.testing.assert_array_equal(unpack_ternary(packed, shape[-1], packing), values)


@pytest.mark.parametrize("bits", [8, 4, 2, 1])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("group_size", [None, 32])
def test_int_round_trip(bits: int, shape: tuple[int, ...], group_size: int | None) -> None:
    codes = np.random.default_rng(2).integers(0, 1 << bits, size=shape).astype(np.uint8)
    packed = pack_int(codes, bits, group_size)
    g = resolve_group_size(shape[-1], bits, group_size)
    assert packed.shape == (*shape[:-1], int_row_bytes(shape[-1], bits, g))
    np.testing.assert_array_equal(unpack_int(packed, shape[-1], bits, group_size), codes)


def test_two_bit_code_three_is_rejected() -> None:
    with pytest.raises(ConversionError, match="equals 3"):
        unpack_ternary(np.array([[0xFF]], dtype=np.uint8), 4, TernaryPacking.TWO_BIT)


def test_base3_byte_above_242_is_rejected() -> None:
    with pytest.raises(ConversionError, match="243 exceeds 242"):
        unpack_ternary(np.array([[243]], dtype=np.uint8), 5, TernaryPacking.BASE3)


def test_row_length_mismatch_names_expected_bytes() -> None:
    with pytest.raises(ConversionError, match=r"rows hold 3 bytes but .* needs 2"):
        unpack_ternary(np.zeros((1, 3), np.uint8), 8, TernaryPacking.TWO_BIT)
    with pytest.raises(ConversionError, match="needs 4"):
        unpack_int(np.zeros((1, 3), np.uint8), 8, 4, 8)


def test_out_of_range_values_rejected() -> None:
    with pytest.raises(ConversionError, match="ternary values"):
        pack_ternary(np.array([[2, 0]]), TernaryPacking.TWO_BIT)
    with pytest.raises(ConversionError, match=r"\[0, 15\]"):
        pack_int(np.array([[16]]), bits=4, group_size=2)


@pytest.mark.parametrize("leading", [(0,), (3, 0), (0, 2)])
@pytest.mark.parametrize("encoding", [*TernaryPacking, 8, 4, 2, 1])
def test_tensors_with_no_rows_round_trip(leading: tuple[int, ...], encoding: TernaryPacking | int) -> None:
    k = 10
    if isinstance(encoding, TernaryPacking):
        packed = pack_ternary(np.zeros((*leading, k), np.int8), encoding)
        assert packed.shape == (*leading, ternary_row_bytes(k, encoding))
        assert unpack_ternary(packed, k, encoding).shape == (*leading, k)
    else:
        packed = pack_int(np.zeros((*leading, k), np.uint8), encoding, None)
        assert packed.shape == (*leading, int_row_bytes(k, encoding, resolve_group_size(k, encoding, None)))
        assert unpack_int(packed, k, encoding, None).shape == (*leading, k)
