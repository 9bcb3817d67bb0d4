"""KV-cache decoders from today's exporters compile under every preset and compute one decode step
close to the original (models/fixtures/decoders/: torch's dynamo export, onnxruntime-genai's
builder with GroupQueryAttention and SkipSimplifiedLayerNormalization)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from bitnet_onnx import runtime
from bitnet_onnx.compiler.compile import compile
from bitnet_onnx.config.config import MixedPrecisionStrategy
from bitnet_onnx.config.report import THRESHOLDS
from bitnet_onnx.runtime.kv_cache import cache_pairs

DECODERS = Path(__file__).resolve().parents[2] / "models" / "fixtures" / "decoders"
PRESETS = ("conservative", "balanced", "aggressive")


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _decode_step(path: Path, name: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The compiled model's outputs on the fixture's step (3 new tokens after 5 cached), and the
    original's as recorded."""
    with np.load(DECODERS / f"{name}.inputs.npz") as feeds, np.load(DECODERS / f"{name}.outputs.npz") as want:
        session = runtime.session(str(path))
        names = list(want.keys())
        got = dict(zip(names, session.run(names, dict(feeds)), strict=True))
        return got, dict(want)


@pytest.mark.kernels
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("name", ["llama_tiny_kv_dynamo", "genai_llama_fp32", "genai_llama_int4"])
def test_kv_cache_decoder_compiles_under_every_preset_and_decodes_a_step(tmp_path, name, preset):
    out = tmp_path / f"{name}.{preset}.onnx"
    result = compile(DECODERS / f"{name}.onnx", preset, output=out, measure_kernels=False)
    assert result.report.ok
    got, want = _decode_step(out, name)
    floor = THRESHOLDS[MixedPrecisionStrategy(preset)].min_cosine
    assert _cosine(got["logits"], want["logits"]) >= floor
    for pair in cache_pairs(onnx.load(DECODERS / f"{name}.onnx")):
        assert got[pair.present].shape == want[pair.present].shape
        assert _cosine(got[pair.present], want[pair.present]) >= floor


@pytest.mark.kernels
@pytest.mark.parametrize(
    ("preset", "linear_op", "output_op"),
    [("conservative", "MatMulNBits", "MatMulNBits"), ("balanced", "BitLinear", "MatMulNBits")],
)
def test_int4_layers_are_kept_or_re_quantized_by_the_bits_the_plan_asks(
    tmp_path, preset, linear_op, output_op
):
    """conservative asks F16 (more bits than 4: kept); balanced asks ternary for linear layers
    (fewer: re-quantized from the dequantized weights) and I8 for the head (kept)."""
    result = compile(
        DECODERS / "genai_llama_int4.onnx", preset, output=tmp_path / "out.onnx", measure_kernels=False
    )
    linear = [r for r in result.layers if r.layer_type in ("linear", "output")]
    assert len(linear) == 11  # q/k/v packed, o, gate, up, down per layer; the head
    for record in linear:
        assert record.op == (output_op if record.layer_type == "output" else linear_op), record
        if record.op == "MatMulNBits":
            assert record.precisions["weights"] == "I4" and record.rule == "model:MatMulNBits"
