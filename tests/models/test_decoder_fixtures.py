"""The committed decoder fixtures (models/fixtures/decoders/): provenance (sha256, size, README) and
that onnxruntime still computes the recorded outputs; the interface each one was made to show."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

DECODERS = Path(__file__).resolve().parents[2] / "models" / "fixtures" / "decoders"
MANIFEST = json.loads((DECODERS / "manifest.json").read_text())
ENTRIES = {e["name"]: e for e in MANIFEST}


def test_manifest_lists_every_decoder_fixture_and_the_readme_its_sha256():
    assert {p.stem for p in DECODERS.glob("*.onnx")} == set(ENTRIES)
    readme = (DECODERS.parents[1] / "README.md").read_text()
    for entry in MANIFEST:
        assert entry["sha256"] in readme, entry["name"]


@pytest.mark.parametrize("name", ENTRIES)
def test_decoder_fixture_matches_its_sha256_and_reproduces_its_outputs(name):
    entry = ENTRIES[name]
    data = (DECODERS / entry["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert len(data) == entry["bytes"] < 1 << 20
    with np.load(DECODERS / entry["inputs"]) as inputs, np.load(DECODERS / entry["outputs"]) as outputs:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        got = session.run(list(outputs.keys()), dict(inputs))
        for value, output in zip(got, outputs.keys(), strict=True):
            np.testing.assert_allclose(value, outputs[output], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("name", "linear_op"), [("genai_llama_fp32", "MatMul"), ("genai_llama_int4", "MatMulNBits")]
)
def test_builder_fixtures_hold_the_fused_ops_they_stand_for(name, linear_op):
    model = onnx.load(DECODERS / ENTRIES[name]["file"])
    ops = {n.op_type for n in model.graph.node}
    assert {"GroupQueryAttention", "SkipSimplifiedLayerNormalization", linear_op} <= ops
    assert {"MatMul", "MatMulNBits"} - {linear_op} - ops == {"MatMul", "MatMulNBits"} - {linear_op}


def test_dynamo_decoder_has_the_optimum_cache_interface():
    model = onnx.load(DECODERS / "llama_tiny_kv_dynamo.onnx")
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    assert inputs[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert inputs[3:] == [f"past_key_values.{i}.{kv}" for i in range(2) for kv in ("key", "value")]
    assert outputs == ["logits", *(f"present.{i}.{kv}" for i in range(2) for kv in ("key", "value"))]
