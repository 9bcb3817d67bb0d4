"""The committed torch.onnx fixtures: provenance (sha256, size, README) and that onnxruntime still
computes what torch computed when they were exported."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

FIXTURES = Path(__file__).resolve().parents[2] / "models" / "fixtures"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
ENTRIES = {e["name"]: e for e in MANIFEST}


def test_manifest_lists_every_fixture_file_and_the_readme_its_sha256():
    on_disk = {p.stem for p in FIXTURES.glob("*.onnx")}
    assert on_disk == set(ENTRIES)
    assert {"llama_tiny", "bert_tiny", "gpt2_tiny", "convnet_tiny"} <= on_disk
    readme = (FIXTURES.parent / "README.md").read_text()
    for entry in MANIFEST:
        assert entry["sha256"] in readme, entry["name"]


@pytest.mark.parametrize("name", ENTRIES)
def test_fixture_matches_its_recorded_sha256_and_size(name):
    entry = ENTRIES[name]
    data = (FIXTURES / entry["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert len(data) == entry["bytes"] < 5 << 20


@pytest.mark.parametrize("name", ENTRIES)
def test_fixture_is_valid_and_reproduces_torch_outputs_in_onnxruntime(name):
    entry = ENTRIES[name]
    path = FIXTURES / entry["file"]
    onnx.checker.check_model(str(path), full_check=True)
    assert {o.domain or "ai.onnx": o.version for o in onnx.load(path).opset_import}["ai.onnx"] == entry[
        "opset"
    ]
    with np.load(FIXTURES / entry["inputs"]) as inputs, np.load(FIXTURES / entry["outputs"]) as outputs:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(list(outputs.keys()), dict(inputs))
        for value, name_ in zip(got, outputs.keys(), strict=True):
            np.testing.assert_allclose(value, outputs[name_], atol=1e-4, rtol=1e-4)


def test_untied_and_tied_gpt2_exports_differ_as_documented():
    folded = onnx.load(FIXTURES / "gpt2_tiny.onnx")
    unfolded = onnx.load(FIXTURES / "gpt2_tiny_unfolded.onnx")
    table = "transformer.wte.weight"
    folded_users = [n.op_type for n in folded.graph.node if table in n.input]
    unfolded_users = sorted(n.op_type for n in unfolded.graph.node if table in n.input)
    assert folded_users == ["Gather"]  # the lm_head reads a transposed copy
    assert unfolded_users == ["Gather", "Transpose"]
