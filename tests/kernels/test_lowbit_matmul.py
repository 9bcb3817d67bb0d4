"""LowBitMatMul through onnxruntime against bitnet_onnx.numerics.quantization.lowbit_matmul_reference.

act_quant = 1 (int8 activations, exact integer accumulation per group, float32 epilogue in the
README's order) is compared for exact equality; act_quant = 0 (float activations) with a tolerance
against the reference's float64 product, and for exact equality across the ISA paths (every path
follows the summation order of kernels/src/cpu/int.h). Every ISA path, 1 and 2 threads.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lowbit_graphs import LowBitOperands, lowbit_operands
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from bitnet_onnx import runtime
from bitnet_onnx.core.errors import UnsupportedModelError
from bitnet_onnx.numerics.quantization import dequantize_lowbit_reference

pytestmark = pytest.mark.kernels

DTYPES = [np.float32, np.float16]

# (M, K, N, bits, group size, asymmetric, act_quant, bias): every M in {0, 1, 3, 17, 128}, K in
# {32, 100, 4096}, N in {1, 7, 4096}, every bit width; groups that do not divide K (100 by 32, 24,
# 12, 8; 4096 by 100, 50), groups that are not whole packets (G = 50, 12, 24, 8 pad to 56, 16,
# 32, 32 slots), a group spanning the row; M ≤ 4 streams the weights, larger M runs tiles.
# 1 × 1024 × 1024 at 2 bits (~270 KB, a decoder layer) is spread over 4 streaming tasks.
CASES = [
    (0, 32, 7, 4, 32, False, 1, True),
    (1, 32, 1, 8, 32, True, 0, False),
    (1, 100, 7, 4, 32, True, 1, True),
    (1, 4096, 4096, 4, 128, False, 1, True),
    (1, 4096, 4096, 2, 64, True, 0, False),
    (1, 1024, 1024, 2, 128, False, 1, True),
    (3, 100, 4096, 1, 24, False, 1, False),
    (3, 4096, 7, 8, 100, True, 1, True),
    (17, 32, 4096, 2, 32, False, 0, True),
    (17, 4096, 1, 4, 50, True, 0, True),
    (17, 100, 7, 2, 12, True, 1, False),
    (128, 100, 7, 1, 8, False, 0, True),
    (128, 4096, 7, 8, 4096, False, 1, False),
    (128, 32, 1, 4, 32, True, 0, False),
    (5, 4096, 33, 1, 128, False, 0, True),
]


def activations(rng: np.random.Generator, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    return (rng.standard_normal(shape) * 3).astype(dtype)


def run(
    operands: LowBitOperands, x: np.ndarray, act_quant: int, threads: int = 1, **model_args: object
) -> np.ndarray:
    constant = model_args.get("constant", ("W", "scales", "zero_points", "bias"))
    session = runtime.session(operands.model(x.dtype, act_quant, **model_args), threads=threads)
    return session.run(None, operands.feeds(x, constant))[0]


def assert_float_close(y: np.ndarray, operands: LowBitOperands, x: np.ndarray) -> None:
    """act_quant = 0: within float32 accumulation error of the reference's float64 product
    (relative to Σ|x|·|w|), plus one float16 rounding step for float16 outputs."""
    reference = operands.reference(x, 0).astype(np.float32)
    w = dequantize_lowbit_reference(
        operands.packed_w,
        operands.scales,
        operands.zero_points,
        operands.k,
        operands.bits,
        group_size=operands.group_size,
    )
    x32 = x.astype(np.float32).reshape(-1, operands.k)
    finite = np.isfinite(x32).all(axis=-1)
    magnitude = np.abs(np.where(finite[:, None], x32, 0)).astype(np.float64) @ np.abs(w).astype(np.float64).T
    tolerance = 2e-6 * magnitude.reshape(reference.shape) + 1e-30
    if y.dtype == np.float16:
        tolerance += np.abs(reference) * 2.0**-10
    y32 = y.astype(np.float32)
    np.testing.assert_array_equal(np.isnan(y32), np.isnan(reference))
    ok = np.isnan(reference) | (np.abs(y32 - reference) <= tolerance)
    assert ok.all(), f"{np.count_nonzero(~ok)} outputs outside the tolerance"


def check(y: np.ndarray, operands: LowBitOperands, x: np.ndarray, act_quant: int) -> None:
    assert y.dtype == x.dtype and y.shape == (*x.shape[:-1], operands.scales.shape[0])
    if act_quant == 1:
        np.testing.assert_array_equal(y, operands.reference(x, 1))
    else:
        assert_float_close(y, operands, x)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("m", "k", "n", "bits", "group_size", "asymmetric", "act_quant", "bias"), CASES)
def test_matches_reference(
    isa: str,
    threads: int,
    dtype: type,
    m: int,
    k: int,
    n: int,
    bits: int,
    group_size: int,
    asymmetric: bool,
    act_quant: int,
    bias: bool,
) -> None:
    operands = lowbit_operands(n, k, bits, group_size, asymmetric, bias)
    x = activations(np.random.default_rng(m * 7 + k), (m, k), dtype)
    check(run(operands, x, act_quant, threads), operands, x, act_quant)


@pytest.mark.parametrize(("bits", "asymmetric"), [(8, False), (8, True), (4, True), (2, False), (1, False)])
def test_float_activations_are_identical_on_every_path(
    bits: int, asymmetric: bool, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    operands = lowbit_operands(40, 300, bits, 40, asymmetric, bias=True)
    x = activations(rng, (9, 300), np.float32)
    outputs = {}
    for isa in runtime.supported_isas():
        monkeypatch.setenv(runtime.ISA_ENV, isa.value)
        outputs[isa] = np.concatenate([run(operands, x[:2], 0), run(operands, x, 0, threads=2)])
    first = outputs[runtime.supported_isas()[0]]
    for y in outputs.values():
        np.testing.assert_array_equal(y, first)


def base_codes(operands: LowBitOperands) -> np.ndarray:
    """The integer weights q (u − zp, or 2u − 1) as int64 [N, K], from the reference dequantization
    with scales 1."""
    q = dequantize_lowbit_reference(
        operands.packed_w,
        np.ones_like(operands.scales),
        operands.zero_points,
        operands.k,
        operands.bits,
        group_size=operands.group_size,
    )
    return q.astype(np.int64)


@pytest.mark.parametrize("bits", [8, 4, 2, 1])
@pytest.mark.parametrize("m", [1, 6])
def test_integer_accumulation_is_exact(isa: str, bits: int, m: int, rng: np.random.Generator) -> None:
    # Integer X with max|x| = 127 per row quantizes to itself with factor 1; with scales 1 every
    # group's exact sum is added in float32, exact here because |Σ| < 2^24.
    k, n, group_size = 4096, 40, 128
    base = lowbit_operands(n, k, bits, group_size, asymmetric=bits > 1)
    operands = LowBitOperands(
        base.packed_w, np.ones_like(base.scales), base.zero_points, None, k, bits, group_size
    )
    x = rng.integers(-127, 128, size=(m, k)).astype(np.float32)
    x[:, 0] = 127.0
    codes = base_codes(operands)
    exact = x.astype(np.int64) @ codes.T
    assert np.abs(exact).max() < 2**24
    np.testing.assert_array_equal(run(operands, x, 1, threads=2), exact.astype(np.float32))


@pytest.mark.parametrize("extreme", ["max", "min"])
def test_int32_accumulation_at_the_group_size_limit(isa: str, extreme: str) -> None:
    # One 8-bit group of 65536 elements, x = 127 everywhere: |acc| = 255 · 127 · 65536 < 2^31.
    k = group_size = 65536
    u, zp = (255, 0) if extreme == "max" else (0, 255)
    operands = LowBitOperands(
        np.full((16, k), u, np.uint8),
        np.ones((16, 1), np.float32),
        np.full((16, 1), zp, np.uint8),
        None,
        k,
        8,
        group_size,
    )
    x = np.full((2, k), 127.0, np.float32)
    exact = (u - zp) * 127 * k
    y = run(operands, x, 1)
    np.testing.assert_array_equal(y, np.full((2, 16), np.float32(exact)))
    np.testing.assert_array_equal(y, operands.reference(x, 1))


@pytest.mark.parametrize("act_quant", [0, 1])
@pytest.mark.parametrize("dtype", DTYPES)
def test_nonfinite_rows_give_nan_rows(
    isa: str, act_quant: int, dtype: type, rng: np.random.Generator
) -> None:
    operands = lowbit_operands(21, 100, 4, 32, asymmetric=True, bias=True)
    for m in (3, 12):  # streaming and tiled paths
        x = activations(rng, (m, 100), dtype)
        x[0, 5], x[1, 99], x[2, 0] = np.nan, np.inf, -np.inf
        y = run(operands, x, act_quant)
        assert np.isnan(y[:3]).all()
        assert np.isfinite(y[3:]).all()
        check(y, operands, x, act_quant)


@pytest.mark.parametrize("act_quant", [0, 1])
def test_zero_row_gives_bias(isa: str, act_quant: int, rng: np.random.Generator) -> None:
    operands = lowbit_operands(7, 100, 2, 20, bias=True)
    x = activations(rng, (3, 100), np.float32)
    x[1] = 0.0
    np.testing.assert_array_equal(run(operands, x, act_quant)[1], operands.bias)


@pytest.mark.parametrize("leading", [(), (2, 3), (1, 1, 5)])
def test_leading_shapes(leading: tuple[int, ...], rng: np.random.Generator) -> None:
    operands = lowbit_operands(7, 64, 4, 32, bias=True)
    x = activations(rng, (*leading, 64), np.float16)
    y = run(operands, x, 1, leading=[f"d{i}" for i in range(len(leading))])
    assert y.shape == (*leading, 7)
    np.testing.assert_array_equal(y, operands.reference(x, 1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_output_type_and_shape_are_inferred(dtype: type) -> None:
    operands = lowbit_operands(7, 64, 4, 32)
    session = runtime.session(operands.model(dtype, 1, leading=["batch", "seq"]))
    (output,) = session.get_outputs()
    assert output.shape == ["batch", "seq", 7]
    assert output.type == ("tensor(float)" if dtype is np.float32 else "tensor(float16)")


@pytest.mark.parametrize("act_quant", [0, 1])
def test_runtime_operands_are_repacked_per_call(isa: str, act_quant: int, rng: np.random.Generator) -> None:
    first = lowbit_operands(9, 100, 4, 20, asymmetric=True, bias=True, seed=1)
    second = lowbit_operands(9, 100, 4, 20, asymmetric=True, bias=True, seed=2)
    session = runtime.session(first.model(np.float32, act_quant, constant=()))
    x = activations(rng, (5, 100), np.float32)
    for operands in (first, second, first):
        check(session.run(None, operands.feeds(x, constant=()))[0], operands, x, act_quant)


@settings(max_examples=30, deadline=None)
@given(
    leading=st.lists(st.integers(0, 9), min_size=1, max_size=2),
    k=st.integers(1, 300),
    n=st.integers(1, 40),
    bits=st.sampled_from([8, 4, 2, 1]),
    groups_of=st.integers(1, 40),
    asymmetric=st.booleans(),
    act_quant=st.sampled_from([0, 1]),
    dtype=st.sampled_from(DTYPES),
    bias=st.booleans(),
    isa=st.sampled_from([isa.value for isa in runtime.supported_isas()]),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_match_reference(
    leading: list[int],
    k: int,
    n: int,
    bits: int,
    groups_of: int,
    asymmetric: bool,
    act_quant: int,
    dtype: type,
    bias: bool,
    isa: str,
    seed: int,
) -> None:
    group_size = groups_of * (8 // bits)
    operands = lowbit_operands(n, k, bits, group_size, asymmetric and bits > 1, bias, seed)
    x = activations(np.random.default_rng(seed), (*leading, k), dtype)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(runtime.ISA_ENV, isa)
        y = run(operands, x, act_quant, leading=[f"d{i}" for i in range(len(leading))])
    check(y, operands, x, act_quant)


# --- errors: at session creation for attributes and constant operands, at run time otherwise ---


def creation_error(
    attributes: dict[str, object] | None = None, operands: LowBitOperands | None = None, act_quant: int = 1
) -> str:
    operands = operands or lowbit_operands(7, 100, 4, 20)
    with pytest.raises(UnsupportedModelError) as info:
        runtime.session(operands.model(np.float32, act_quant, attributes=attributes))
    return str(info.value)


def attributes(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {"K": 100, "bits": 4, "group_size": 20, "act_quant": 1}
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"bits": 3}, "[LowBitMatMul] bits=3 is not an integer encoding; use 8, 4, 2 or 1"),
        ({"group_size": 0}, "[LowBitMatMul] group_size=0 is invalid for 4-bit codes"),
        (
            {"group_size": 21},
            "[LowBitMatMul] group_size=21 is invalid for 4-bit codes: it must be a positive multiple of 2",
        ),
        ({"act_quant": 2}, "[LowBitMatMul] act_quant=2 is invalid; use 0"),
        ({"K": None}, "[LowBitMatMul] attribute 'K' (int) is missing"),
        ({"K": 0}, "[LowBitMatMul] K=0 must be positive"),
        ({"K": 101}, "[LowBitMatMul] K=101 bits=4 group_size=20 needs W of shape [N, 60]"),
        ({"group_size": 70000, "K": 70000}, "[LowBitMatMul] group_size=70000 is too large for act_quant=1"),
    ],
)
def test_bad_attributes_are_rejected(changes: dict[str, object], message: str) -> None:
    assert message in creation_error(attributes(**changes))


def test_constant_operand_shapes_are_checked() -> None:
    base = lowbit_operands(7, 100, 4, 20, asymmetric=True)
    cases = {
        "[LowBitMatMul] scales have shape [7, 4]; they must be [N, ceil(K/G)] = [7, 5]": LowBitOperands(
            base.packed_w, base.scales[:, :4], base.zero_points, None, 100, 4, 20
        ),
        "[LowBitMatMul] zero_points have shape [6, 5]; they must be [N, ceil(K/G)] = [7, 5]": LowBitOperands(
            base.packed_w, base.scales, base.zero_points[:6], None, 100, 4, 20
        ),
        "[LowBitMatMul] bias has shape [6]; it must be [N] = [7]": LowBitOperands(
            base.packed_w, base.scales, base.zero_points, np.ones(6, np.float32), 100, 4, 20
        ),
    }
    for message, operands in cases.items():
        assert message in creation_error(operands=operands)


def test_one_bit_codes_take_no_zero_points() -> None:
    base = lowbit_operands(7, 96, 1, 32)
    operands = LowBitOperands(base.packed_w, base.scales, np.ones((7, 3), np.uint8), None, 96, 1, 32)
    message = creation_error({"K": 96, "bits": 1, "group_size": 32, "act_quant": 0}, operands)
    assert "[LowBitMatMul] 1-bit codes are symmetric only" in message


def test_empty_zero_points_slot_before_a_bias_is_rejected() -> None:
    operands = lowbit_operands(7, 100, 4, 20, bias=True)
    model = operands.model(np.float32, 1)
    model.graph.node[0].input[3] = ""
    with pytest.raises(
        UnsupportedModelError,
        match=r"\[LowBitMatMul\] zero_points \(input 3\) has an empty name but a bias follows",
    ):
        runtime.session(model)


def test_trailing_empty_inputs_are_absent(rng: np.random.Generator) -> None:
    operands = lowbit_operands(7, 100, 4, 20)
    model = operands.model(np.float32, 1)
    model.graph.node[0].input.extend(["", ""])
    x = activations(rng, (2, 100), np.float32)
    np.testing.assert_array_equal(runtime.session(model).run(None, {"X": x})[0], operands.reference(x, 1))


def test_missing_scales_input_is_rejected() -> None:
    model = lowbit_operands(7, 100, 4, 20).model(np.float32, 1)
    del model.graph.node[0].input[2:]
    with pytest.raises(UnsupportedModelError, match=r"\[LowBitMatMul\] needs inputs X, W, scales"):
        runtime.session(model)


def test_x_last_axis_must_be_k(rng: np.random.Generator) -> None:
    model = lowbit_operands(7, 100, 4, 20).model(np.float32, 1)
    model.graph.input[0].type.tensor_type.shape.dim[-1].dim_param = "k"
    session = runtime.session(model)
    with pytest.raises(
        InvalidArgument, match=r"\[LowBitMatMul\] X has shape \[2, 99\] but its last axis must be K=100"
    ):
        session.run(None, {"X": activations(rng, (2, 99), np.float32)})


def test_runtime_operand_shapes_are_checked(rng: np.random.Generator) -> None:
    operands = lowbit_operands(7, 100, 4, 20, asymmetric=True, bias=True)
    session = runtime.session(operands.model(np.float32, 1, constant=()))
    x = activations(rng, (2, 100), np.float32)
    bad = {
        "W": (operands.packed_w[:, :-1], r"needs W of shape \[N, 50\] .*got \[7, 49\]"),
        "scales": (operands.scales[:3], r"scales have shape \[3, 5\]"),
        "zero_points": (operands.zero_points[:, :2], r"zero_points have shape \[7, 2\]"),
        "bias": (operands.bias[:3], r"bias has shape \[3\]"),
    }
    for name, (value, pattern) in bad.items():
        feeds = operands.feeds(x, constant=())
        feeds[name] = value
        with pytest.raises(InvalidArgument, match=r"\[LowBitMatMul\] .*" + pattern):
            session.run(None, feeds)
