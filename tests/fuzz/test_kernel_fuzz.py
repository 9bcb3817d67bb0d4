"""Fuzzing the kernels through onnxruntime against the numpy reference (bitnet_onnx.numerics.quantization).

Shapes: M from 0 (leading dims of rank 0 to 3), K from 1 (odd, not a multiple of the pack or
group size, past the vector widths), N from 1. Values, row by row: normal at scales from 1e-3 to
near the type's maximum, subnormal, all zero, constant, one spike, NaN, +Inf, -Inf. Weights: every
code of each format (not only those quantization produces), scales that are 0, subnormal, huge or
NaN, asymmetric zero points. Every ISA path this CPU has, 1 and 2 threads, operands constant (packed
once at session creation) or fed at run time.

Exactness as tests/kernels defines it: BitLinear, LowBitMatMul with int8 activations,
DequantizeLowBit and QuantizeLowBit equal the reference bit for bit (NaN where it has NaN);
LowBitMatMul with float activations is within float32 accumulation error of the reference's
float64 product, wherever that product cannot overflow float32.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from fuzz_budget import examples
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from bitnet_onnx import runtime
from bitnet_onnx.core.dtypes import TernaryPacking
from bitnet_onnx.core.errors import KernelLibraryError
from bitnet_onnx.numerics.packing import pack_int, pack_ternary
from bitnet_onnx.numerics.quantization import (
    bitlinear_reference,
    dequantize_lowbit_reference,
    lowbit_matmul_reference,
    quantize_lowbit_reference,
)

pytestmark = [
    pytest.mark.fuzz,
    pytest.mark.kernels,
    # The reference overflows to ±Inf on purpose with values near the type's maximum.
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]

OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid(runtime.DOMAIN, runtime.OPSET_VERSION)]
ISAS = [isa.value for isa in runtime.supported_isas()]
ROW_KINDS = ("normal", "normal", "normal", "tiny", "huge", "subnormal", "zeros", "constant", "spike")
NONFINITE = ("nan", "inf", "-inf")


@pytest.fixture(scope="module", autouse=True)
def _ops_lib() -> None:
    try:
        runtime.library_path()
    except KernelLibraryError as exc:
        pytest.skip(str(exc))


# -- inputs ---------------------------------------------------------------------------------------

leading_dims = st.one_of(
    st.lists(st.integers(0, 6), min_size=1, max_size=1),
    st.lists(st.integers(0, 4), min_size=0, max_size=3),
    st.just([0]),
    st.sampled_from([[1], [5], [17], [40]]),
)
widths = st.one_of(st.integers(1, 300), st.sampled_from([1, 2, 3, 5, 31, 33, 63, 65, 127, 129, 1023, 1025]))


def _row(rng: np.random.Generator, kind: str, k: int, dtype: type) -> np.ndarray:
    top = float(np.finfo(dtype).max)
    normal = rng.standard_normal(k)
    if kind == "tiny":
        return normal * 1e-3
    if kind == "huge":
        return normal / max(np.abs(normal).max(), 1e-30) * top * 0.99
    if kind == "subnormal":
        return normal * float(np.finfo(dtype).smallest_subnormal) * 4
    if kind == "zeros":
        return np.zeros(k)
    if kind == "constant":
        return np.full(k, -2.5)
    if kind == "spike":
        row = normal * 1e-2
        row[rng.integers(k)] = 1e3
        return row
    if kind in NONFINITE:
        row = normal * 3
        row[rng.integers(k)] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[kind]
        return row
    return normal * 3


@st.composite
def activations(draw: st.DrawFn, k: int, dtype: type) -> np.ndarray:
    leading = draw(leading_dims)
    rows = math.prod(leading)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kinds = draw(st.lists(st.sampled_from(ROW_KINDS + NONFINITE), min_size=rows, max_size=rows))
    x = np.stack([_row(rng, kind, k, dtype) for kind in kinds]) if rows else np.zeros((0, k))
    with np.errstate(over="ignore"):
        return x.reshape(*leading, k).astype(dtype)


@st.composite
def scales(draw: st.DrawFn, shape: tuple[int, ...]) -> np.ndarray:
    """Positive scales, with some 0, subnormal, huge or NaN entries."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = (rng.random(shape) + 0.05).astype(np.float32)
    special = draw(st.sampled_from(["none", "none", "zero", "subnormal", "huge", "nan"]))
    if special != "none" and values.size:
        flat = values.reshape(-1)
        pick = rng.integers(0, flat.size, size=max(1, flat.size // 4))
        flat[pick] = {"zero": 0.0, "subnormal": 1e-42, "huge": 3e38, "nan": np.nan}[special]
    return values


def model(
    op: str,
    operands: dict[str, np.ndarray | None],
    attributes: dict[str, object],
    constant: bool,
    outputs: dict[str, int],
) -> onnx.ModelProto:
    """One node of our domain: the first operand is a graph input, the others initializers when
    `constant`, else graph inputs too (None: an empty optional input)."""
    names = list(operands)
    inputs, initializers = [], []
    for i, (name, value) in enumerate(operands.items()):
        if value is None:
            names[i] = ""
        elif i == 0 or not constant:
            dims = [f"{name}_{d}" for d in range(value.ndim)]
            inputs.append(
                helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), dims)
            )
        else:
            initializers.append(numpy_helper.from_array(value, name))
    while names and not names[-1]:
        names.pop()
    node = helper.make_node(op, names, list(outputs), domain=runtime.DOMAIN, **attributes)
    declared = [helper.make_tensor_value_info(n, t, None) for n, t in outputs.items()]
    return helper.make_model(
        helper.make_graph([node], op, inputs, declared, initializers), opset_imports=OPSETS
    )


def run(m: onnx.ModelProto, feeds: dict[str, np.ndarray | None], isa: str, threads: int) -> list[np.ndarray]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(runtime.ISA_ENV, isa)
        session = runtime.session(m, threads=threads)
    wanted = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in wanted and v is not None})


float_types = st.sampled_from([np.float32, np.float16])
paths = st.tuples(st.sampled_from(ISAS), st.sampled_from([1, 2]), st.booleans())


# -- BitLinear ------------------------------------------------------------------------------------


@settings(max_examples=examples(800))
@given(st.data(), widths, st.integers(1, 70), float_types, st.sampled_from(["2bit", "base3"]), paths)
def test_bitlinear_equals_the_reference(
    data: st.DataObject, k: int, n: int, dtype: type, format: str, path: tuple[str, int, bool]
) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    packed = pack_ternary(rng.integers(-1, 2, size=(n, k)).astype(np.int8), TernaryPacking(format))
    scale = data.draw(scales((n,) if data.draw(st.booleans()) else (1,)))
    bias = data.draw(st.one_of(st.none(), scales((n,))))
    x = data.draw(activations(k, dtype))
    operands = {"X": x, "W": packed, "scale": scale, "bias": bias}
    m = model("BitLinear", operands, {"K": k, "format": format}, path[2], {"Y": _float_type(dtype)})
    (y,) = run(m, operands, *path[:2])
    np.testing.assert_array_equal(y, bitlinear_reference(x, packed, scale, bias, k, format))


# -- LowBitMatMul ---------------------------------------------------------------------------------


@st.composite
def low_bit_weights(
    draw: st.DrawFn, n: int, k: int, bits: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """Packed codes (every code of the width), scales, zero points (or None) and the group size."""
    per_byte = 8 // bits
    group_size = draw(st.one_of(st.integers(1, 40).map(lambda g: g * per_byte), st.just(k * per_byte)))
    groups = -(-k // group_size)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    codes = rng.integers(0, 1 << bits, size=(n, k)).astype(np.uint8)
    zero_points = None
    if bits > 1 and draw(st.booleans()):
        zero_points = rng.integers(0, 1 << bits, size=(n, groups)).astype(np.uint8)
    packed = pack_int(codes, bits, group_size, zero_points)
    return packed, draw(scales((n, groups))), zero_points, group_size


@settings(max_examples=examples(800))
@given(
    st.data(),
    widths,
    st.integers(1, 40),
    st.sampled_from([8, 4, 2, 1]),
    st.sampled_from([0, 1]),
    float_types,
    paths,
)
def test_lowbit_matmul_equals_the_reference(
    data: st.DataObject, k: int, n: int, bits: int, act_quant: int, dtype: type, path: tuple[str, int, bool]
) -> None:
    packed, scale, zero_points, group_size = data.draw(low_bit_weights(n, k, bits))
    bias = data.draw(st.one_of(st.none(), scales((n,))))
    x = data.draw(activations(k, dtype))
    zp_operand = (
        zero_points if zero_points is not None else (np.zeros(0, np.uint8) if bias is not None else None)
    )
    operands = {"X": x, "W": packed, "scales": scale, "zero_points": zp_operand, "bias": bias}
    attributes = {"K": k, "bits": bits, "group_size": group_size, "act_quant": act_quant}
    m = model("LowBitMatMul", operands, attributes, path[2], {"Y": _float_type(dtype)})
    (y,) = run(m, operands, *path[:2])
    expected = lowbit_matmul_reference(x, packed, scale, zero_points, bias, k, bits, group_size, act_quant)
    assert y.shape == expected.shape and y.dtype == expected.dtype
    if act_quant == 1:
        np.testing.assert_array_equal(y, expected)
    else:
        _assert_float_close(y, x, packed, scale, zero_points, bias, k, bits, group_size)


def _assert_float_close(
    y: np.ndarray,
    x: np.ndarray,
    packed: np.ndarray,
    scale: np.ndarray,
    zero_points: np.ndarray | None,
    bias: np.ndarray | None,
    k: int,
    bits: int,
    group_size: int,
) -> None:
    """Float activations: NaN rows where X has a non-finite value. Elsewhere within float32
    accumulation error (relative to Σ|x|·|w|, plus one rounding of the output type) of the float64
    product, where no float32 step of the kernels' order can overflow: Σ|x|·|q| over the integer
    codes q (the group sums, before the scale) and Σ|x|·|w| stay well inside float32, and the
    column's scales and bias are not NaN."""
    n = packed.shape[0]
    rows = x.astype(np.float32).reshape(-1, k)
    finite = np.isfinite(rows).all(axis=-1)
    y32 = y.astype(np.float32).reshape(-1, n)
    assert np.isnan(y32[~finite]).all()
    unit = np.ones_like(scale)
    q = dequantize_lowbit_reference(packed, unit, zero_points, k, bits, group_size=group_size)
    w = dequantize_lowbit_reference(packed, scale, zero_points, k, bits, group_size=group_size)
    xf = np.where(finite[:, None], rows, 0).astype(np.float64)
    w64 = np.nan_to_num(w.astype(np.float64), nan=0.0)
    b64 = bias.astype(np.float64) if bias is not None else np.zeros(n)
    exact = xf @ w64.T + b64
    magnitude = np.abs(xf) @ np.abs(w64).T
    code_sums = np.abs(xf) @ np.abs(q.astype(np.float64)).T
    nan_columns = np.isnan(scale).any(axis=-1) | np.isnan(b64)
    limit = 6e4 if y.dtype == np.float16 else 1e36
    safe = finite[:, None] & (code_sums < 1e36) & (magnitude < limit) & (np.abs(exact) < limit)
    safe &= ~nan_columns[None, :]
    tolerance = 2e-6 * magnitude + np.abs(b64) * 2.0**-23 + 1e-30
    if y.dtype == np.float16:
        tolerance += np.abs(exact) * 2.0**-10 + 2.0**-24
    bad = safe & ~(np.abs(y32 - exact) <= tolerance)
    assert not bad.any(), f"{np.count_nonzero(bad)} outputs outside the tolerance"


# -- DequantizeLowBit and QuantizeLowBit ----------------------------------------------------------


@settings(max_examples=examples(500))
@given(
    st.data(),
    widths,
    st.sampled_from([0, 8, 4, 2, 1]),
    st.sampled_from([TensorProto.FLOAT, TensorProto.FLOAT16]),
    paths,
)
def test_dequantize_lowbit_equals_the_reference(
    data: st.DataObject, k: int, bits: int, to: int, path: tuple[str, int, bool]
) -> None:
    leading = data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=2))
    rows = math.prod(leading)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    if bits == 0:
        format = data.draw(st.sampled_from(["2bit", "base3"]))
        q = pack_ternary(rng.integers(-1, 2, size=(*leading, k)).astype(np.int8), TernaryPacking(format))
        scale = data.draw(scales((rows,) if data.draw(st.booleans()) else (1,)))
        zero_points, attributes = None, {"K": k, "bits": 0, "format": format, "to": to}
        expected = dequantize_lowbit_reference(q, scale, None, k, 0, format=format, to=to)
    else:
        weights = data.draw(low_bit_weights(rows, k, bits))
        packed, scale, zero_points, group_size = weights
        q = packed.reshape(*leading, -1)
        scale = scale.reshape(*leading, -1)
        zero_points = zero_points.reshape(*leading, -1) if zero_points is not None else None
        attributes = {"K": k, "bits": bits, "group_size": group_size, "to": to}
        expected = dequantize_lowbit_reference(q, scale, zero_points, k, bits, group_size=group_size, to=to)
    operands = {"Q": q, "scales": scale, "zero_points": zero_points}
    (y,) = run(model("DequantizeLowBit", operands, attributes, path[2], {"Y": to}), operands, *path[:2])
    np.testing.assert_array_equal(y, expected)


@settings(max_examples=examples(500))
@given(
    st.data(),
    widths,
    st.sampled_from([0, 8, 4, 2, 1]),
    float_types,
    st.sampled_from(ISAS),
    st.sampled_from([1, 2]),
)
def test_quantize_lowbit_equals_the_reference(
    data: st.DataObject, k: int, bits: int, dtype: type, isa: str, threads: int
) -> None:
    x = data.draw(activations(k, dtype))
    assume(x.size)  # the reference cannot pack zero rows; tests/kernels covers them
    if bits == 0:
        format, per_channel = data.draw(st.sampled_from(["2bit", "base3"])), data.draw(st.booleans())
        scale = data.draw(st.sampled_from(["absmean", "least_squares"]))
        attributes: dict[str, object] = {
            "bits": 0,
            "format": format,
            "per_channel": int(per_channel),
            "ternary_scale": scale,
        }
        expected = quantize_lowbit_reference(
            x, 0, format=format, per_channel=per_channel, ternary_scale=scale
        )
    else:
        per_byte = 8 // bits
        group_size = data.draw(st.integers(1, 40)) * per_byte
        asymmetric = bits > 1 and data.draw(st.booleans())
        attributes = {"bits": bits, "group_size": group_size, "asymmetric": int(asymmetric)}
        expected = quantize_lowbit_reference(x, bits, group_size, asymmetric)
    outputs = {"Q": TensorProto.UINT8, "scales": TensorProto.FLOAT, "zero_points": TensorProto.UINT8}
    got = run(model("QuantizeLowBit", {"X": x}, attributes, True, outputs), {"X": x}, isa, threads)
    for name, have, want in zip(outputs, got, expected, strict=True):
        np.testing.assert_array_equal(have, want, err_msg=name)


def _float_type(dtype: type) -> int:
    return TensorProto.FLOAT if dtype is np.float32 else TensorProto.FLOAT16
