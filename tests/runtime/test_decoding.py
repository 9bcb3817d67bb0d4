"""generate (bitnet_onnx.runtime.decoding): KV-cache decoding against a reference that recomputes the
whole sequence without a cache at every step, sampling, and the errors naming what a model lacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from bitnet_onnx.core.errors import ConfigError, UnsupportedModelError
from bitnet_onnx.runtime.decoding import Generation, Sampling, decoder_interface, generate
from tests.runtime.decoding_reference import reference_greedy

FIXTURES = Path(__file__).resolve().parents[2] / "models" / "fixtures"
DECODERS = FIXTURES / "decoders"
KV_LLAMA = DECODERS / "llama_tiny_kv_dynamo.onnx"


def _session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def llama() -> tuple[ort.InferenceSession, onnx.ModelProto]:
    return _session(KV_LLAMA), onnx.load(KV_LLAMA)


@pytest.mark.parametrize(
    ("prompt", "n"), [([7], 1), ([7], 6), ([3, 141, 59, 26, 5], 8), (list(range(40)), 3)]
)
def test_greedy_generate_equals_recomputing_the_whole_sequence_without_cache(llama, prompt, n):
    session, model = llama
    result = generate(session, prompt, n, model=model, keep_logits=True)
    want_tokens, want_rows = reference_greedy(session, model, prompt, n)
    assert list(result.tokens) == want_tokens
    assert result.prompt == tuple(prompt)
    np.testing.assert_allclose(np.stack(result.logits), np.stack(want_rows), rtol=1e-4, atol=1e-4)
    assert len(result.step_ms) == n - 1 and result.prefill_ms > 0
    assert (result.decode_tokens_per_s is None) == (n == 1)


@pytest.mark.parametrize("name", ["genai_llama_fp32", "genai_llama_int4"])
def test_onnxruntime_genai_decoders_generate_as_recomputing_without_cache(name):
    """GroupQueryAttention with rotary inside, no position_ids input, the head axis symbolic
    (kv_cache_dim: read from the attention op), the positions bounded by its cos cache."""
    model = onnx.load(DECODERS / f"{name}.onnx")
    session = _session(DECODERS / f"{name}.onnx")
    result = generate(session, [5, 6, 7, 8], 6, model=model, keep_logits=True)
    want_tokens, want_rows = reference_greedy(session, model, [5, 6, 7, 8], 6)
    assert list(result.tokens) == want_tokens
    np.testing.assert_allclose(np.stack(result.logits), np.stack(want_rows), rtol=1e-3, atol=1e-3)
    assert decoder_interface(session, model).max_positions == 128
    with pytest.raises(UnsupportedModelError, match="'kv_cache_dim', so an empty cache cannot be made; pass"):
        decoder_interface(session)


def test_generate_works_without_the_model_when_the_cache_dims_are_declared(llama):
    session, model = llama
    assert generate(session, [1, 2, 3], 4).tokens == generate(session, [1, 2, 3], 4, model=model).tokens


def test_sampling_with_a_seed_is_reproducible_and_draws_from_the_top_k(llama):
    session, model = llama
    sampling = Sampling(temperature=1.5, top_k=5, seed=11)
    first = generate(session, [1, 2, 3], 12, sampling=sampling, model=model, keep_logits=True)
    again = generate(session, [1, 2, 3], 12, sampling=sampling, model=model)
    assert first.tokens == again.tokens
    for token, row in zip(first.tokens, first.logits, strict=True):
        assert token in np.argsort(row)[-5:]
    others = {generate(session, [1, 2, 3], 12, sampling=Sampling(1.5, 5, seed)).tokens for seed in range(4)}
    assert len(others) > 1  # the seed is what fixes the draw


@pytest.mark.parametrize("temperature", [0.3, 1.0, 4.0])
def test_top_k_1_equals_greedy(llama, temperature):
    session, model = llama
    greedy = generate(session, [9, 8, 7], 10, model=model)
    top1 = generate(session, [9, 8, 7], 10, sampling=Sampling(temperature, top_k=1, seed=0), model=model)
    assert top1.tokens == greedy.tokens


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"temperature": -1.0}, "temperature=-1.0 must be ≥ 0"),
        ({"temperature": float("nan")}, "must be ≥ 0"),
        ({"temperature": 1.0, "top_k": 0}, "top_k=0 must be at least 1"),
        ({"top_k": 3}, "set a temperature > 0"),
        ({"seed": 3}, "set a temperature > 0"),
    ],
)
def test_bad_sampling_is_refused(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        Sampling(**kwargs)


@pytest.mark.parametrize(
    ("prompt", "n", "words"),
    [
        ([], 3, "the prompt is empty"),
        ([1, 256], 3, r"ids \[256\] are out of range: ids must be ≥ 0 below 256"),
        ([-1], 3, r"ids \[-1\] are out of range"),
        ([1], 0, "n=0: generate at least one token"),
    ],
)
def test_bad_requests_are_refused_before_running(llama, prompt, n, words):
    session, model = llama
    with pytest.raises(ConfigError, match=words):
        generate(session, prompt, n, model=model)


def test_a_model_without_a_kv_cache_is_refused_naming_what_is_missing():
    session = _session(FIXTURES / "llama_tiny.onnx")
    with pytest.raises(UnsupportedModelError, match="no KV cache: no past input pairs with a present output"):
        decoder_interface(session)


# A hand-made decoder: logits = embedding(ids) @ W; present = Concat(past, embedding(ids) [, again]).
VOCAB, WIDTH = 11, 4


def _toy_decoder(
    *, repeat_new: bool = False, present_heads: int = 1, extra_input: bool = False, max_positions: int = 0
) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((VOCAB, WIDTH)).astype(np.float32), "embedding"),
        numpy_helper.from_array(rng.standard_normal((WIDTH, VOCAB)).astype(np.float32), "head"),
        numpy_helper.from_array(np.asarray([1], np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("Gather", ["embedding", "input_ids"], ["x"]),
        helper.make_node("MatMul", ["x", "head"], ["logits"]),
        helper.make_node("Unsqueeze", ["x", "axis1"], ["x4"]),
        helper.make_node("Concat", ["past_key_values.0.key", "x4", *(["x4"] if repeat_new else [])],
                         ["present.0.key"], axis=2),
    ]  # fmt: skip
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence_length"]),
        helper.make_tensor_value_info(
            "past_key_values.0.key", TensorProto.FLOAT, ["batch", 1, "past_sequence_length", WIDTH]
        ),
    ]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, ["batch", "seq"]))
        nodes.append(helper.make_node("Identity", ["token_type_ids"], ["types"]))
    if max_positions:
        inputs.append(helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"]))
        inits.append(numpy_helper.from_array(np.zeros((max_positions, WIDTH), np.float32), "rotary"))
        nodes.append(helper.make_node("Gather", ["rotary", "position_ids"], ["angles"]))
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence_length", VOCAB]),
        helper.make_tensor_value_info(
            "present.0.key", TensorProto.FLOAT, ["batch", present_heads, "total_sequence_length", WIDTH]
        ),
    ]
    if extra_input:
        outputs.append(helper.make_tensor_value_info("types", TensorProto.INT64, ["batch", "seq"]))
    if max_positions:
        outputs.append(helper.make_tensor_value_info("angles", TensorProto.FLOAT, ["batch", "seq", WIDTH]))
    graph = helper.make_graph(nodes, "toy", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_toy_decoder_generates_what_its_weights_say():
    model = _toy_decoder()
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    table = arrays["embedding"] @ arrays["head"]  # logits depend on the last token only
    result = generate(_session(model), [4], 5, model=model)
    want, token = [], 4
    for _ in range(5):
        token = int(np.argmax(table[token]))
        want.append(token)
    assert list(result.tokens) == want


def test_a_present_that_does_not_grow_by_the_tokens_fed_is_a_cache_shape_mismatch():
    model = _toy_decoder(repeat_new=True)
    with pytest.raises(
        UnsupportedModelError, match=r"mismatched cache shapes: 'present.0.key' came back \[1, 1, 6, 4\]"
    ):
        generate(_session(model), [1, 2, 3], 2, model=model)


def test_declared_past_and_present_dims_that_differ_are_a_cache_shape_mismatch():
    model = _toy_decoder(present_heads=2)
    with pytest.raises(UnsupportedModelError, match=r"mismatched cache shapes: .*axis 1: 1 vs 2"):
        decoder_interface(_session(model), model)


def test_an_input_generate_cannot_feed_is_named():
    model = _toy_decoder(extra_input=True)
    with pytest.raises(UnsupportedModelError, match=r"cannot feed the model's input\(s\) token_type_ids"):
        decoder_interface(_session(model), model)


def test_a_prompt_longer_than_the_declared_positions_is_refused():
    model = _toy_decoder(max_positions=6)
    session = _session(model)
    assert decoder_interface(session, model).max_positions == 6
    assert len(generate(session, [1, 2, 3], 4, model=model).tokens) == 4  # 6 positions fed
    with pytest.raises(ConfigError, match="needs 7 positions; the model has 6"):
        generate(session, [1, 2, 3], 5, model=model)


def test_generation_speed_is_steps_over_decode_time():
    result = Generation((1,), (2, 3, 4), 5.0, (10.0, 30.0))
    assert result.decode_tokens_per_s == pytest.approx(50.0)


def test_ids_of_a_type_generate_cannot_feed_are_refused_naming_the_type():
    model = _toy_decoder()
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT
    with pytest.raises(
        UnsupportedModelError, match="input 'input_ids' is float; generate feeds int64 or int32"
    ):
        decoder_interface(_session(_toy_decoder()), model)
