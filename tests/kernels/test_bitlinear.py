"""BitLinear through onnxruntime against bitnet_onnx.numerics.quantization.bitlinear_reference.

The kernels evaluate the README's formulas in the reference's order (exact int32 accumulation,
the same float32 roundings, no FMA contraction), so outputs are compared for exact equality, on
every ISA path, with 1 and 2 threads.
"""

from __future__ import annotations

import numpy as np
import pytest
from bitlinear_graphs import BitLinearOperands, bitlinear_operands, ternary_values
from hypothesis import given, settings
from hypothesis import strategies as st
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from bitnet_onnx import runtime
from bitnet_onnx.core.dtypes import TernaryPacking, TernaryScale
from bitnet_onnx.core.errors import UnsupportedModelError
from bitnet_onnx.numerics.packing import pack_ternary
from bitnet_onnx.numerics.quantization import bitlinear_reference, ternarize

pytestmark = pytest.mark.kernels

DTYPES = [np.float32, np.float16]

# (M, K, N, format, per-row scale, bias): every M in {0, 1, 3, 17, 128}, K in {32, 100, 4096} and
# N in {1, 7, 4096}, both formats, both scale kinds, with and without bias; M ≤ 4 takes the
# streaming path, larger M the GEMM path. 1 × 1024 × 1024 (256 KB of weights, a decoder layer) is
# spread over 4 streaming tasks.
CASES = [
    (0, 32, 7, "2bit", False, True),
    (1, 32, 1, "base3", True, False),
    (1, 100, 7, "2bit", True, True),
    (1, 4096, 4096, "2bit", True, True),
    (1, 1024, 1024, "2bit", False, True),
    (3, 100, 4096, "base3", False, True),
    (3, 4096, 7, "2bit", False, False),
    (17, 32, 4096, "2bit", True, False),
    (17, 4096, 1, "base3", True, True),
    (17, 100, 7, "base3", False, False),
    (128, 100, 7, "2bit", False, True),
    (128, 4096, 7, "base3", True, True),
    (128, 32, 1, "2bit", True, False),
]


def run(operands: BitLinearOperands, x: np.ndarray, threads: int = 1, **model_args: object) -> np.ndarray:
    constant = model_args.get("constant", ("W", "scale", "bias"))
    session = runtime.session(operands.model(x.dtype, **model_args), threads=threads)
    return session.run(None, operands.feeds(x, constant))[0]


def reference(operands: BitLinearOperands, x: np.ndarray) -> np.ndarray:
    return bitlinear_reference(
        x, operands.packed_w, operands.scale, operands.bias, operands.k, operands.format
    )


def activations(rng: np.random.Generator, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    return (rng.standard_normal(shape) * 3).astype(dtype)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("m", "k", "n", "format", "per_row", "bias"), CASES)
def test_matches_reference(
    isa: str, threads: int, dtype: type, m: int, k: int, n: int, format: str, per_row: bool, bias: bool
) -> None:
    operands = bitlinear_operands(n, k, format, per_row=per_row, bias=bias)
    x = activations(np.random.default_rng(m * 7 + k), (m, k), dtype)
    y = run(operands, x, threads)
    assert y.dtype == dtype and y.shape == (m, n)
    np.testing.assert_array_equal(y, reference(operands, x))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("format", ["2bit", "base3"])
def test_formats_scales_and_bias(
    isa: str, format: str, per_row: bool, bias: bool, rng: np.random.Generator
) -> None:
    operands = bitlinear_operands(33, 100, format, per_row=per_row, bias=bias)
    for m in (2, 9):  # one streaming, one GEMM call
        x = activations(rng, (m, 100), np.float32)
        np.testing.assert_array_equal(run(operands, x), reference(operands, x))


@pytest.mark.parametrize("scale", list(TernaryScale))
@pytest.mark.parametrize("per_channel", [False, True])
def test_either_scale_rule_is_data_to_the_op(
    isa: str, per_channel: bool, scale: TernaryScale, rng: np.random.Generator
) -> None:
    # The op reads whatever scale the converter stored: γ (absmean) or α (least squares).
    w = rng.standard_normal((33, 100)).astype(np.float32)
    tw = ternarize(w, per_channel, scale)
    operands = BitLinearOperands(pack_ternary(tw.values, TernaryPacking.TWO_BIT), tw.scale, None, 100, "2bit")
    for m in (2, 9):  # one streaming, one GEMM call
        x = activations(rng, (m, 100), np.float32)
        np.testing.assert_array_equal(run(operands, x), reference(operands, x))


@pytest.mark.parametrize("m", [1, 17])
def test_integer_accumulation_is_exact(isa: str, m: int, rng: np.random.Generator) -> None:
    # Integer X with max|x| = 127 per row quantizes to itself with factor 127/127 = 1, so with
    # scale 1 the output is the exact integer product; row 0 hits the largest |Σ w·x| = 127·nnz.
    k, n = 4096, 48
    t = ternary_values(n, k)
    x = rng.integers(-127, 128, size=(m, k)).astype(np.float32)
    x[:, 0] = 127.0
    x[0] = 127.0 * np.where(t[0] == 0, 1, t[0])
    operands = BitLinearOperands(bitlinear_operands(n, k).packed_w, np.ones(1, np.float32), None, k, "2bit")
    exact = x.astype(np.int64) @ t.astype(np.int64).T
    assert exact[0, 0] == 127 * np.count_nonzero(t[0])
    np.testing.assert_array_equal(run(operands, x, threads=2), exact.astype(np.float32))


@pytest.mark.parametrize("dtype", DTYPES)
def test_nonfinite_rows_give_nan_rows(isa: str, dtype: type, rng: np.random.Generator) -> None:
    operands = bitlinear_operands(7, 100, per_row=True, bias=True)
    for m in (6, 12):  # streaming and GEMM paths
        x = activations(rng, (m, 100), dtype)
        x[1, 5], x[3, 99], x[4, 0] = np.nan, np.inf, -np.inf
        y = run(operands, x)
        assert np.isnan(y[[1, 3, 4]]).all()
        assert np.isfinite(np.delete(y, [1, 3, 4], axis=0)).all()
        np.testing.assert_array_equal(y, reference(operands, x))


def test_zero_row_gives_bias(isa: str, rng: np.random.Generator) -> None:
    operands = bitlinear_operands(7, 100, per_row=True, bias=True)
    x = activations(rng, (3, 100), np.float32)
    x[1] = 0.0
    y = run(operands, x)
    np.testing.assert_array_equal(y[1], operands.bias)


def test_empty_trailing_bias_means_no_bias(rng: np.random.Generator) -> None:
    operands = bitlinear_operands(7, 32)
    model = operands.model(np.float32)
    model.graph.node[0].input.append("")
    x = activations(rng, (2, 32), np.float32)
    y = runtime.session(model).run(None, {"X": x})[0]
    np.testing.assert_array_equal(y, reference(operands, x))


@pytest.mark.parametrize("leading", [(), (2, 3), (1, 1, 5)])
def test_leading_shapes(leading: tuple[int, ...], rng: np.random.Generator) -> None:
    operands = bitlinear_operands(7, 32, bias=True)
    x = activations(rng, (*leading, 32), np.float16)
    y = run(operands, x, leading=[f"d{i}" for i in range(len(leading))])
    assert y.shape == (*leading, 7)
    np.testing.assert_array_equal(y, reference(operands, x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_output_type_and_shape_are_inferred(dtype: type) -> None:
    operands = bitlinear_operands(7, 32)
    session = runtime.session(operands.model(dtype, leading=["batch", "seq"]))
    (output,) = session.get_outputs()
    assert output.shape == ["batch", "seq", 7]
    assert output.type == ("tensor(float)" if dtype is np.float32 else "tensor(float16)")


def test_runtime_operands_are_repacked_per_call(isa: str, rng: np.random.Generator) -> None:
    first = bitlinear_operands(7, 100, "base3", per_row=True, bias=True, seed=1)
    second = bitlinear_operands(7, 100, "base3", per_row=True, bias=True, seed=2)
    session = runtime.session(first.model(np.float32, constant=()))
    x = activations(rng, (5, 100), np.float32)
    for operands in (first, second, first):
        y = session.run(None, operands.feeds(x, constant=()))[0]
        np.testing.assert_array_equal(y, reference(operands, x))


@settings(max_examples=30, deadline=None)
@given(
    leading=st.lists(st.integers(0, 9), min_size=1, max_size=2),
    k=st.integers(1, 300),
    n=st.integers(1, 70),
    dtype=st.sampled_from(DTYPES),
    format=st.sampled_from(["2bit", "base3"]),
    per_row=st.booleans(),
    bias=st.booleans(),
    isa=st.sampled_from([isa.value for isa in runtime.supported_isas()]),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_match_reference(
    leading: list[int],
    k: int,
    n: int,
    dtype: type,
    format: str,
    per_row: bool,
    bias: bool,
    isa: str,
    seed: int,
) -> None:
    operands = bitlinear_operands(n, k, format, per_row=per_row, bias=bias, seed=seed)
    x = activations(np.random.default_rng(seed), (*leading, k), dtype)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(runtime.ISA_ENV, isa)
        y = run(operands, x, leading=[f"d{i}" for i in range(len(leading))])
    np.testing.assert_array_equal(y, reference(operands, x))


# --- errors: at session creation for attributes and constant operands, at run time otherwise ---


def creation_error(model_args: dict[str, object], operands: BitLinearOperands | None = None) -> str:
    operands = operands or bitlinear_operands(7, 100)
    with pytest.raises(UnsupportedModelError) as info:
        runtime.session(operands.model(np.float32, **model_args))
    return str(info.value)


def test_w_shape_must_match_k_and_format() -> None:
    message = creation_error({"attributes": {"K": 101, "format": "2bit"}})
    assert "[BitLinear] K=101 format=2bit needs W of shape [N, 26]" in message and "[7, 25]" in message


def test_unknown_format_is_rejected() -> None:
    assert "[BitLinear] format='3bit' is not a ternary format" in creation_error(
        {"attributes": {"K": 100, "format": "3bit"}}
    )


def test_missing_k_is_rejected() -> None:
    assert "[BitLinear] attribute 'K' (int) is missing" in creation_error({"attributes": {"format": "2bit"}})


def test_nonpositive_k_is_rejected() -> None:
    assert "[BitLinear] K=0 must be positive" in creation_error({"attributes": {"K": 0, "format": "2bit"}})


def test_k_beyond_exact_accumulation_is_rejected() -> None:
    message = creation_error({"attributes": {"K": (1 << 20) + 1, "format": "2bit"}})
    assert "[BitLinear] K=1048577 exceeds 1048576" in message


def test_constant_scale_shape_is_checked() -> None:
    base = bitlinear_operands(7, 100)
    operands = BitLinearOperands(base.packed_w, np.ones(8, np.float32), None, 100, "2bit")
    assert "[BitLinear] scale has shape [8]; it must be [1] (per tensor) or [N] = [7]" in creation_error(
        {}, operands
    )


def test_constant_bias_shape_is_checked() -> None:
    base = bitlinear_operands(7, 100)
    operands = BitLinearOperands(base.packed_w, base.scale, np.ones(6, np.float32), 100, "2bit")
    assert "[BitLinear] bias has shape [6]; it must be [N] = [7]" in creation_error({}, operands)


def test_invalid_2bit_code_is_rejected() -> None:
    base = bitlinear_operands(7, 100)
    packed = base.packed_w.copy()
    packed[2, 3] = 0xFF
    operands = BitLinearOperands(packed, base.scale, None, 100, "2bit")
    assert "[BitLinear] W[2, 3] = 255 holds the 2-bit code 3" in creation_error({}, operands)


def test_invalid_base3_byte_is_rejected() -> None:
    base = bitlinear_operands(7, 100, "base3")
    packed = base.packed_w.copy()
    packed[6, 0] = 243
    operands = BitLinearOperands(packed, base.scale, None, 100, "base3")
    assert "[BitLinear] W[6, 0] = 243 exceeds 242" in creation_error({}, operands)


def test_missing_scale_input_is_rejected() -> None:
    operands = bitlinear_operands(7, 100)
    model = operands.model(np.float32)
    del model.graph.node[0].input[2:]
    with pytest.raises(UnsupportedModelError, match=r"\[BitLinear\] needs inputs X, W, scale"):
        runtime.session(model)


def test_empty_scale_slot_is_rejected() -> None:
    operands = bitlinear_operands(7, 100, bias=True)
    model = operands.model(np.float32)
    model.graph.node[0].input[2] = ""
    with pytest.raises(
        UnsupportedModelError, match=r"\[BitLinear\] input 2 \(scale\) is required but its name is empty"
    ):
        runtime.session(model)


def test_x_last_axis_must_be_k(rng: np.random.Generator) -> None:
    operands = bitlinear_operands(7, 100)
    model = operands.model(np.float32)
    model.graph.input[0].type.tensor_type.shape.dim[-1].dim_param = "k"
    session = runtime.session(model)
    with pytest.raises(
        InvalidArgument, match=r"\[BitLinear\] X has shape \[2, 99\] but its last axis must be K=100"
    ):
        session.run(None, {"X": activations(rng, (2, 99), np.float32)})


def test_runtime_operand_shapes_are_checked(rng: np.random.Generator) -> None:
    operands = bitlinear_operands(7, 100, per_row=True, bias=True)
    session = runtime.session(operands.model(np.float32, constant=()))
    x = activations(rng, (2, 100), np.float32)
    bad = {
        "W": (operands.packed_w[:, :-1], r"needs W of shape \[N, 25\] .*got \[7, 24\]"),
        "scale": (operands.scale[:3], r"scale has shape \[3\]"),
        "bias": (operands.bias[:3], r"bias has shape \[3\]"),
    }
    for name, (value, pattern) in bad.items():
        feeds = operands.feeds(x, constant=())
        feeds[name] = value
        with pytest.raises(InvalidArgument, match=r"\[BitLinear\] .*" + pattern):
            session.run(None, feeds)
