"""Fuzzing model files: a fixture's bytes (models/fixtures) with bits flipped, truncated, or with
slices spliced in from itself or another fixture, written to a file and compiled from there.

Property: `bitnet_onnx.compile` either succeeds or raises a MixedPrecisionError (a file that is no
longer a model is UnsupportedModelError), never another exception and never a crash; a PassError
(a pass crashed) fails the test; the input file is left byte for byte as it was, and nothing but
a complete output appears next to it.
"""

from __future__ import annotations

import tempfile
from functools import cache
from pathlib import Path

import pytest
from fuzz_budget import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from bitnet_onnx import runtime
from bitnet_onnx.compiler.compile import compile
from bitnet_onnx.core.errors import KernelLibraryError, MixedPrecisionError
from bitnet_onnx.passes.base import PassError

pytestmark = pytest.mark.fuzz

FIXTURES = Path(__file__).resolve().parents[2] / "models" / "fixtures"
NAMES = ("convnet_tiny", "bert_tiny", "llama_tiny")
_EDGE = 4096  # a model's graph structure sits in its first and last bytes, around the weights


@pytest.fixture(scope="module", autouse=True)
def _ops_lib() -> None:
    try:
        runtime.library_path()
    except KernelLibraryError as exc:
        pytest.skip(str(exc))


@cache
def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / f"{name}.onnx").read_bytes()


@st.composite
def positions(draw: st.DrawFn, size: int) -> int:
    """A byte offset, most often in the structure at either end of the file."""
    where = draw(st.sampled_from(["start", "end", "anywhere"]))
    if where == "start":
        return draw(st.integers(0, min(_EDGE, size) - 1))
    if where == "end":
        return draw(st.integers(max(0, size - _EDGE), size - 1))
    return draw(st.integers(0, size - 1))


@st.composite
def mutated_models(draw: st.DrawFn) -> tuple[str, bytes]:
    name = draw(st.sampled_from(NAMES))
    data = bytearray(fixture_bytes(name))
    steps = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "flip", "byte", "truncate", "splice", "delete", "insert"]))
        if not data:
            break
        at = draw(positions(len(data)))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x01]))
        elif kind == "truncate":
            del data[at:]
        else:
            donor = fixture_bytes(draw(st.sampled_from(NAMES)))
            start = draw(positions(len(donor)))
            piece = donor[start : start + draw(st.integers(1, 64))]
            length = draw(st.integers(1, 64))
            if kind == "splice":
                data[at : at + length] = piece
            elif kind == "delete":
                del data[at : at + length]
            else:
                data[at:at] = piece
        steps.append(f"{kind}@{at}")
    return f"{name}: {', '.join(steps)}", bytes(data)


@settings(max_examples=examples(300))
@given(mutated_models())
def test_mutated_model_files_compile_or_raise_mixed_precision_errors(case: tuple[str, bytes]) -> None:
    _, data = case
    with tempfile.TemporaryDirectory() as folder:
        source, output = Path(folder) / "model.onnx", Path(folder) / "out.onnx"
        source.write_bytes(data)
        try:
            compile(source, "balanced", output=output, strict=False, measure_kernels=False)
        except PassError:
            raise
        except MixedPrecisionError:
            assert not output.exists()
        else:
            assert output.stat().st_size > 0
        assert source.read_bytes() == data
        assert {p.name for p in Path(folder).iterdir()} <= {"model.onnx", "out.onnx"}


@pytest.mark.parametrize(
    ("name", "offset", "bit", "words"),
    [
        ("llama_tiny", 518622, 1, "graph input 'attention_mask' is not declared as a tensor"),
        ("llama_tiny", 518622, 6, "its type is optional_type"),
        ("convnet_tiny", 902, 0, "attribute 'kernel_shape' of node '/layer1/conv2/Conv' is declared FLOATS"),
        ("llama_tiny", 898, 3, "Invalid tensor data type"),  # Cast's `to` flipped to no data type
    ],
)
def test_bit_flips_the_long_runs_found_are_clear_errors(name: str, offset: int, bit: int, words: str) -> None:
    """The long fuzz runs' findings (each crashed with another exception type before its fix)."""
    data = bytearray(fixture_bytes(name))
    data[offset] ^= 1 << bit
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "model.onnx"
        source.write_bytes(bytes(data))
        with pytest.raises(MixedPrecisionError, match=words) as caught:
            compile(source, "balanced", output=Path(folder) / "out.onnx", strict=False, measure_kernels=False)
    assert not isinstance(caught.value, PassError)  # a PassError is a bug report, not a clear error
