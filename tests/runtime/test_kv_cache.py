"""KV-cache recognition (bitnet_onnx.runtime.kv_cache) and the sample inputs of KV-cache decoders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from bitnet_onnx.runtime.kv_cache import CachePair, cache_pairs, head_size
from bitnet_onnx.runtime.sample_inputs import sample_inputs

DECODERS = Path(__file__).resolve().parents[2] / "models" / "fixtures" / "decoders"


def _cache_model(pairs, extra_inputs=(), dtype=TensorProto.FLOAT) -> onnx.ModelProto:
    """A graph whose outputs concatenate each past input with a new-token tensor along axis 2."""
    new = helper.make_tensor_value_info("new", dtype, ["batch", 2, "sequence_length", 4])
    inputs, outputs, nodes = [new, *extra_inputs], [], []
    for past, present in pairs:
        inputs.append(helper.make_tensor_value_info(past, dtype, ["batch", 2, "past_sequence_length", 4]))
        outputs.append(helper.make_tensor_value_info(present, dtype, ["batch", 2, "total", 4]))
        nodes.append(helper.make_node("Concat", [past, "new"], [present], axis=2))
    return helper.make_model(helper.make_graph(nodes, "g", inputs, outputs))


@pytest.mark.parametrize(
    "past, present",
    [
        ("past_key_values.0.key", "present.0.key"),
        ("past_key_values.3.value", "present.3.value"),
        ("past_key_0", "present_key_0"),
        ("past_value_1", "present_value_1"),
        ("past_0", "present_0"),
    ],
)
def test_pairs_are_found_by_optimum_and_genai_names(past, present):
    assert cache_pairs(_cache_model([(past, present)])) == (CachePair(past, present, 2),)


def test_unnamed_pairs_are_found_by_shape_in_input_order():
    model = _cache_model([("k_cache_in_b", "k_cache_out_a"), ("k_cache_in_a", "k_cache_out_b")])
    found = cache_pairs(model)
    assert [(p.past, p.present, p.axis) for p in found] == [
        ("k_cache_in_b", "k_cache_out_a", 2),
        ("k_cache_in_a", "k_cache_out_b", 2),
    ]


def test_a_model_without_cache_has_no_pairs():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq"])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]))
    assert cache_pairs(model) == ()


def test_fixtures_pairs_and_head_size():
    dynamo = onnx.load(DECODERS / "llama_tiny_kv_dynamo.onnx")
    assert [(p.past, p.present, p.axis) for p in cache_pairs(dynamo)] == [
        (f"past_key_values.{i}.{kv}", f"present.{i}.{kv}", 2) for i in range(2) for kv in ("key", "value")
    ]
    genai = onnx.load(DECODERS / "genai_llama_fp32.onnx")
    assert len(cache_pairs(genai)) == 4
    # hidden 64, 4 query heads: 16 per head, read from GroupQueryAttention's packed qkv (4 + 2·2 heads)
    assert all(head_size(genai, p.past) == 16 for p in cache_pairs(genai))
    assert head_size(dynamo, "past_key_values.0.key") is None  # no fused attention reads it


@pytest.mark.parametrize("seq, past", [(8, 8), (1, 5), (3, 0)])
def test_sample_inputs_keep_total_length_past_plus_new_tokens(seq, past):
    mask = helper.make_tensor_value_info(
        "attention_mask", TensorProto.INT64, ["batch", "total_sequence_length"]
    )
    positions = helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "sequence_length"])
    model = _cache_model([("past_key_values.0.key", "present.0.key")], [mask, positions])
    dims = {"seq": seq, "past_sequence_length": past}
    feeds = sample_inputs(model, dims=dims)
    assert feeds["past_key_values.0.key"].shape == (1, 2, past, 4)
    assert feeds["new"].shape == (1, 2, seq, 4)
    np.testing.assert_array_equal(feeds["attention_mask"], np.ones((1, past + seq), np.int64))
    np.testing.assert_array_equal(feeds["position_ids"], np.arange(past, past + seq)[None])


def test_a_sum_of_dims_is_the_sum_of_its_terms():
    mask = helper.make_tensor_value_info(
        "attention_mask", TensorProto.INT64, ["batch", "past_sequence_length + sequence_length"]
    )
    plus_one = helper.make_tensor_value_info("step", TensorProto.FLOAT, ["past_sequence_length + 1"])
    model = _cache_model([("past_key_values.0.key", "present.0.key")], [mask, plus_one])
    feeds = sample_inputs(model, dims={"past": 6, "seq": 2})
    assert feeds["attention_mask"].shape == (1, 8) and feeds["step"].shape == (7,)


@pytest.mark.parametrize("name", ["llama_tiny_kv_dynamo", "genai_llama_fp32", "genai_llama_int4"])
@pytest.mark.parametrize("dims", [None, {"past_sequence_length": 3, "seq": 1}])
def test_decoders_run_on_their_sample_inputs_and_grow_the_cache(name, dims):
    model = onnx.load(DECODERS / f"{name}.onnx")
    feeds = sample_inputs(model, dims=dims)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in model.graph.output]
    results = dict(zip(names, session.run(names, feeds), strict=True))
    past, seq = (8, 8) if dims is None else (3, 1)
    for pair in cache_pairs(model):
        assert feeds[pair.past].shape[2] == past
        assert results[pair.present].shape[2] == past + seq
        # the cache's old part comes back unchanged: the sample inputs describe one consistent step
        np.testing.assert_allclose(results[pair.present][:, :, :past], feeds[pair.past], rtol=0, atol=0)
    assert np.isfinite(results["logits"]).all() and results["logits"].shape[:2] == (1, seq)
