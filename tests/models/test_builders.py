"""The model builders: valid ONNX that onnxruntime runs, the documented graph, numerics against numpy
references, determinism, exact ternary weights, tied embeddings, config errors, external data."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from bitnet_onnx.core.errors import ConfigError
from models import bert, convnet, llama
from models._onnx import save_model
from models.inputs import sample_inputs
from models.weights import WeightInit, ternary_scale

LLAMA_CONFIGS = {
    "tiny": llama.LlamaConfig(),
    "mha_tied_matmul": llama.LlamaConfig(num_kv_heads=4, tie_embeddings=True),
    "tied_gemm_ternary": llama.LlamaConfig(
        tie_embeddings=True, head=llama.HeadStyle.GEMM, weights=WeightInit.TERNARY
    ),
    "gemm_trained_like_opset18": llama.LlamaConfig(
        head=llama.HeadStyle.GEMM, weights=WeightInit.TRAINED_LIKE, opset=18
    ),
    "rms_normalization_opset23": llama.LlamaConfig(
        norm=llama.RMSNormStyle.RMS_NORMALIZATION, opset=23, num_kv_heads=1
    ),
    "opset13": llama.LlamaConfig(opset=13, num_layers=3),
}
BERT_CONFIGS = {
    "tiny": bert.BertConfig(),
    "decomposed_tanh_gemm_opset13": bert.BertConfig(
        norm=bert.LayerNormStyle.DECOMPOSED, gelu=bert.GeluStyle.TANH, linear=bert.LinearStyle.GEMM, opset=13
    ),
    "decomposed_ternary_opset18": bert.BertConfig(
        norm=bert.LayerNormStyle.DECOMPOSED, weights=WeightInit.TERNARY, opset=18
    ),
    "mean_pooling_gemm_opset13": bert.BertConfig(
        head=bert.BertHead.MEAN_POOLING,
        norm=bert.LayerNormStyle.DECOMPOSED,
        linear=bert.LinearStyle.GEMM,
        opset=13,
    ),
}
CONVNET_CONFIGS = {
    "tiny": convnet.ConvNetConfig(),
    "unfolded_trained_like": convnet.ConvNetConfig(fold_batchnorm=False, weights=WeightInit.TRAINED_LIKE),
    "ternary_two_stages": convnet.ConvNetConfig(channels=(8, 16), image_size=16, weights=WeightInit.TERNARY),
}
ALL = (
    [(llama, c) for c in LLAMA_CONFIGS.values()]
    + [(bert, c) for c in BERT_CONFIGS.values()]
    + [(convnet, c) for c in CONVNET_CONFIGS.values()]
)
ALL_IDS = (
    [f"llama-{k}" for k in LLAMA_CONFIGS]
    + [f"bert-{k}" for k in BERT_CONFIGS]
    + [f"convnet-{k}" for k in CONVNET_CONFIGS]
)


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def expected_shapes(config: object, batch: int, seq: int) -> list[tuple[int, ...]]:
    if isinstance(config, llama.LlamaConfig):
        return [(batch, seq, config.vocab_size)]
    if isinstance(config, bert.BertConfig) and config.head is bert.BertHead.MEAN_POOLING:
        return [(batch, config.hidden_size)]
    if isinstance(config, bert.BertConfig):
        return [(batch, seq, config.hidden_size), (batch, config.num_labels)]
    assert isinstance(config, convnet.ConvNetConfig)
    return [(batch, config.num_classes)]


# -- validity, shapes, determinism ---------------------------------------------------------------
@pytest.mark.parametrize(("module", "config"), ALL, ids=ALL_IDS)
@pytest.mark.parametrize(("batch", "seq"), [(1, 1), (2, 7)])
def test_model_is_valid_and_runs_with_the_documented_output_shapes(module, config, batch, seq):
    model = module.build(config)
    onnx.checker.check_model(model, full_check=True)
    outputs = run(model, sample_inputs(model, dims={"batch": batch, "seq": seq}))
    assert [o.shape for o in outputs] == expected_shapes(config, batch, seq)
    assert all(np.isfinite(o).all() for o in outputs)


@pytest.mark.parametrize(("module", "config"), ALL, ids=ALL_IDS)
def test_same_seed_gives_byte_identical_models_and_another_seed_other_weights(module, config):
    first = module.build(config).SerializeToString()
    assert module.build(config).SerializeToString() == first
    other = module.build(replace(config, seed=config.seed + 1)).SerializeToString()
    assert other != first and len(other) == len(first)


def test_node_and_initializer_names_follow_torch_onnx():
    model = llama.build(llama.LlamaConfig())
    nodes = {n.name: n for n in model.graph.node}
    q_proj = nodes["/model/layers.0/self_attn/q_proj/MatMul"]
    assert q_proj.input[1] == "model.layers.0.self_attn.q_proj.weight"
    assert q_proj.output[0] == "/model/layers.0/self_attn/q_proj/MatMul_output_0"
    assert nodes["/model/embed_tokens/Gather"].input[0] == "model.embed_tokens.weight"
    norm_ops = [n.op_type for n in model.graph.node if n.name.startswith("/model/layers.1/input_layernorm/")]
    assert [op for op in norm_ops if op != "Constant"] == [
        "Pow",
        "ReduceMean",
        "Add",
        "Sqrt",
        "Reciprocal",
        "Mul",
        "Mul",
    ]
    mlp_ops = [n.op_type for n in model.graph.node if n.name.startswith("/model/layers.0/mlp/act_fn/")]
    assert mlp_ops == ["Sigmoid", "Mul"]
    assert len(nodes) == len(model.graph.node)  # unique node names


def test_simplified_layer_normalization_runs_in_onnxruntime_but_the_checker_rejects_it():
    config = llama.LlamaConfig(norm=llama.RMSNormStyle.SIMPLIFIED_LAYER_NORMALIZATION)
    model = llama.build(config)
    assert (
        sum(n.op_type == "SimplifiedLayerNormalization" for n in model.graph.node)
        == 2 * config.num_layers + 1
    )
    with pytest.raises(
        onnx.checker.ValidationError, match="No Op registered for SimplifiedLayerNormalization"
    ):
        onnx.checker.check_model(model)
    feeds = sample_inputs(model, dims={"batch": 2, "seq": 5})
    reference = run(llama.build(llama.LlamaConfig()), feeds)[0]
    np.testing.assert_allclose(run(model, feeds)[0], reference, atol=1e-5)


# -- numerics ------------------------------------------------------------------------------------
def _rms_norm(x: np.ndarray, gain: np.ndarray, eps: float) -> np.ndarray:
    return gain * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def _rope(x: np.ndarray, positions: int, head_dim: int, theta: float) -> np.ndarray:
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim)
    angles = np.outer(np.arange(positions), inv_freq)
    angles = np.concatenate([angles, angles], axis=-1)
    half = head_dim // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * np.cos(angles) + rotated * np.sin(angles)


def llama_reference(config: llama.LlamaConfig, w: dict[str, np.ndarray], ids: np.ndarray) -> np.ndarray:
    """LLaMA forward in float64 numpy, written from the architecture, not from the graph."""
    c = config
    w = {k: v.astype(np.float64) for k, v in w.items()}
    batch, seq = ids.shape
    d, n_rep = c.head_dim, c.num_heads // c.num_kv_heads
    causal = np.triu(np.full((seq, seq), -np.inf), k=1)
    x = w["model.embed_tokens.weight"][ids]
    for i in range(c.num_layers):
        p = f"model.layers.{i}"
        h = _rms_norm(x, w[f"{p}.input_layernorm.weight"], c.rms_eps)

        def heads(name: str, n: int, h: np.ndarray = h, p: str = p) -> np.ndarray:
            return (h @ w[f"{p}.self_attn.{name}.weight"]).reshape(batch, seq, n, d).transpose(0, 2, 1, 3)

        q = _rope(heads("q_proj", c.num_heads), seq, d, c.rope_theta)
        k = np.repeat(_rope(heads("k_proj", c.num_kv_heads), seq, d, c.rope_theta), n_rep, axis=1)
        v = np.repeat(heads("v_proj", c.num_kv_heads), n_rep, axis=1)
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + causal
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, c.hidden_size)
        x = x + context @ w[f"{p}.self_attn.o_proj.weight"]
        h = _rms_norm(x, w[f"{p}.post_attention_layernorm.weight"], c.rms_eps)
        gate, up = h @ w[f"{p}.mlp.gate_proj.weight"], h @ w[f"{p}.mlp.up_proj.weight"]
        x = x + (gate / (1.0 + np.exp(-gate)) * up) @ w[f"{p}.mlp.down_proj.weight"]
    x = _rms_norm(x, w["model.norm.weight"], c.rms_eps)
    if c.tie_embeddings:
        head = w["model.embed_tokens.weight"].T
    else:
        head = w["lm_head.weight"] if c.head is llama.HeadStyle.MATMUL else w["lm_head.weight"].T
    return x @ head


@pytest.mark.parametrize("config", LLAMA_CONFIGS.values(), ids=LLAMA_CONFIGS.keys())
def test_llama_matches_numpy_reference(config):
    model = llama.build(config)
    feeds = sample_inputs(model, dims={"batch": 2, "seq": 9}, seed=3)
    got = run(model, feeds)[0]
    want = llama_reference(config, weights(model), feeds["input_ids"])
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "style",
    [
        {"head": llama.HeadStyle.GEMM},
        {"norm": llama.RMSNormStyle.RMS_NORMALIZATION, "opset": 23},
        {"opset": 21},
    ],
    ids=["gemm_head", "rms_normalization", "opset21"],
)
def test_llama_graph_styles_compute_the_same_function(style):
    base = llama.LlamaConfig(weights=WeightInit.TRAINED_LIKE)
    feeds = sample_inputs(llama.build(base), dims={"batch": 2, "seq": 6})
    np.testing.assert_allclose(
        run(llama.build(replace(base, **style)), feeds)[0], run(llama.build(base), feeds)[0], atol=1e-5
    )


_erf = np.vectorize(math.erf)


def _layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    return gamma * (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps) + beta


def bert_reference(
    c: bert.BertConfig, w: dict[str, np.ndarray], ids: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """BERT (MATMUL_ADD weights [K, N], Erf GELU) forward in float64 numpy: the last hidden state
    and the classifier's logits (None for a MEAN_POOLING head)."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    batch, seq = ids.shape
    e = "bert.embeddings"
    x = (
        w[f"{e}.word_embeddings.weight"][ids]
        + w[f"{e}.token_type_embeddings.weight"][0]
        + w[f"{e}.position_embeddings.weight"][:seq]
    )
    x = _layer_norm(x, w[f"{e}.LayerNorm.weight"], w[f"{e}.LayerNorm.bias"], c.layer_norm_eps)
    additive = (1.0 - mask[:, None, None, :]) * np.finfo(np.float32).min

    def dense(h: np.ndarray, p: str) -> np.ndarray:
        return h @ w[f"{p}.weight"] + w[f"{p}.bias"]

    for i in range(c.num_layers):
        p = f"bert.encoder.layer.{i}"

        def heads(kind: str, x: np.ndarray = x, p: str = p) -> np.ndarray:
            return (
                dense(x, f"{p}.attention.self.{kind}")
                .reshape(batch, seq, c.num_heads, c.head_dim)
                .transpose(0, 2, 1, 3)
            )

        scores = heads("query") @ heads("key").transpose(0, 1, 3, 2) / math.sqrt(c.head_dim) + additive
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = (probs @ heads("value")).transpose(0, 2, 1, 3).reshape(batch, seq, c.hidden_size)
        h = _layer_norm(
            dense(context, f"{p}.attention.output.dense") + x,
            w[f"{p}.attention.output.LayerNorm.weight"],
            w[f"{p}.attention.output.LayerNorm.bias"],
            c.layer_norm_eps,
        )
        inner = dense(h, f"{p}.intermediate.dense")
        inner = 0.5 * inner * (1.0 + _erf(inner / math.sqrt(2.0)))
        x = _layer_norm(
            dense(inner, f"{p}.output.dense") + h,
            w[f"{p}.output.LayerNorm.weight"],
            w[f"{p}.output.LayerNorm.bias"],
            c.layer_norm_eps,
        )
    if c.head is bert.BertHead.MEAN_POOLING:
        return x, None
    pooled = np.tanh(dense(x[:, 0], "bert.pooler.dense"))
    return x, dense(pooled, "classifier")


def test_bert_matches_numpy_reference():
    config = bert.BertConfig(weights=WeightInit.TRAINED_LIKE)
    model = bert.build(config)
    feeds = sample_inputs(model, dims={"batch": 3, "seq": 6}, seed=1)
    assert feeds["attention_mask"][1:].min() == 0  # padded rows are exercised
    hidden, logits = run(model, feeds)
    want_hidden, want_logits = bert_reference(
        config, weights(model), feeds["input_ids"], feeds["attention_mask"]
    )
    np.testing.assert_allclose(hidden, want_hidden, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(logits, want_logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "style",
    [{}, {"opset": 18}, {"norm": bert.LayerNormStyle.DECOMPOSED, "opset": 13}],
    ids=["opset17", "opset18", "decomposed_opset13"],
)
def test_bert_mean_pooling_head_is_the_normalized_mean_of_the_unmasked_tokens(style):
    config = bert.BertConfig(weights=WeightInit.TRAINED_LIKE, head=bert.BertHead.MEAN_POOLING, **style)
    model = bert.build(config)
    feeds = sample_inputs(model, dims={"batch": 3, "seq": 6}, seed=2)
    (embedding,) = run(model, feeds)
    hidden, _ = bert_reference(config, weights(model), feeds["input_ids"], feeds["attention_mask"])
    mask = feeds["attention_mask"][..., None].astype(np.float64)
    mean = (hidden * mask).sum(1) / mask.sum(1)
    np.testing.assert_allclose(embedding, mean / np.linalg.norm(mean, axis=-1, keepdims=True), atol=1e-5)
    assert [o.name for o in model.graph.output] == ["sentence_embedding"]
    assert not any(t.name.startswith(("bert.pooler", "classifier")) for t in model.graph.initializer)


@pytest.mark.parametrize(
    "style",
    [
        {"norm": bert.LayerNormStyle.DECOMPOSED},
        {"linear": bert.LinearStyle.GEMM},
        {"norm": bert.LayerNormStyle.DECOMPOSED, "linear": bert.LinearStyle.GEMM, "opset": 18},
    ],
    ids=["decomposed_norm", "gemm", "decomposed_gemm_opset18"],
)
def test_bert_graph_styles_compute_the_same_function(style):
    base = bert.BertConfig(weights=WeightInit.TRAINED_LIKE)
    feeds = sample_inputs(bert.build(base), dims={"batch": 2, "seq": 6})
    for got, want in zip(
        run(bert.build(replace(base, **style)), feeds), run(bert.build(base), feeds), strict=True
    ):
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_bert_tanh_gelu_is_close_to_erf_gelu():
    base = bert.BertConfig()
    feeds = sample_inputs(bert.build(base), dims={"batch": 2, "seq": 6})
    tanh_logits = run(bert.build(replace(base, gelu=bert.GeluStyle.TANH)), feeds)[1]
    erf_logits = run(bert.build(base), feeds)[1]
    np.testing.assert_allclose(tanh_logits, erf_logits, atol=1e-3)
    assert not np.array_equal(tanh_logits, erf_logits)


def convnet_reference(c: convnet.ConvNetConfig, w: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The folded CNN in float64 numpy (3x3 convolution, pad 1, as a sum of shifted products)."""
    x = x.astype(np.float64)
    for j in range(len(c.channels)):
        kernel, bias = w[f"features.{4 * j}.weight"].astype(np.float64), w[f"features.{4 * j}.bias"]
        padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        size = x.shape[-1]
        y = sum(
            np.einsum("bchw,oc->bohw", padded[:, :, dy : dy + size, dx : dx + size], kernel[:, :, dy, dx])
            for dy in range(3)
            for dx in range(3)
        )
        x = np.maximum(y + bias[None, :, None, None], 0.0)
        if j < len(c.channels) - 1:
            x = x.reshape(*x.shape[:2], size // 2, 2, size // 2, 2).max(axis=(3, 5))
    return x.mean(axis=(2, 3)) @ w["classifier.weight"].T + w["classifier.bias"]


@pytest.mark.parametrize("weights_init", list(WeightInit), ids=[w.value for w in WeightInit])
def test_convnet_matches_numpy_reference_and_folding_preserves_the_function(weights_init):
    config = convnet.ConvNetConfig(weights=weights_init)
    folded = convnet.build(config)
    feeds = sample_inputs(folded, dims={"batch": 2}, seed=2)
    got = run(folded, feeds)[0]
    np.testing.assert_allclose(
        got, convnet_reference(config, weights(folded), feeds["input"]), atol=1e-4, rtol=1e-4
    )
    unfolded = convnet.build(replace(config, fold_batchnorm=False))
    assert sum(n.op_type == "BatchNormalization" for n in unfolded.graph.node) == len(config.channels)
    np.testing.assert_allclose(run(unfolded, feeds)[0], got, atol=1e-5, rtol=1e-4)


# -- weights -------------------------------------------------------------------------------------
def _matrices(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every weight matrix / kernel (the tensors a compiler would quantize), not buffers."""
    return {k: v for k, v in weights(model).items() if k.endswith(".weight") and v.ndim >= 2}


@pytest.mark.parametrize(
    ("module", "config", "fan_in_axes"),
    [
        (llama, llama.LlamaConfig(weights=WeightInit.TERNARY), {"model.embed_tokens.weight": (1,)}),
        (
            llama,
            llama.LlamaConfig(weights=WeightInit.TERNARY, head=llama.HeadStyle.GEMM),
            {"model.embed_tokens.weight": (1,), "lm_head.weight": (1,)},
        ),
        (bert, bert.BertConfig(weights=WeightInit.TERNARY, linear=bert.LinearStyle.GEMM), {}),
        (convnet, convnet.ConvNetConfig(weights=WeightInit.TERNARY), {}),
    ],
    ids=["llama", "llama-gemm-head", "bert-gemm", "convnet-folded"],
)
def test_ternary_weights_are_exactly_ternary_times_one_scale(module, config, fan_in_axes):
    matrices = _matrices(module.build(config))
    assert len(matrices) >= 4
    for name, w in matrices.items():
        if name in fan_in_axes:
            axes = fan_in_axes[name]
        elif module is llama:
            axes = (0,)
        elif name.startswith("bert.embeddings"):
            axes = (1,)
        else:  # Gemm [N, K] and conv [C_out, C_in, kh, kw]: everything but axis 0 is reduced
            axes = tuple(range(1, w.ndim))
        fan_in = math.prod(w.shape[a] for a in axes)
        magnitudes = np.unique(np.abs(w))
        assert magnitudes[0] == 0 and len(magnitudes) == 2, name
        expected = ternary_scale(fan_in)
        if name.startswith("features."):  # folding multiplies every channel by the same 1/sqrt(1 + eps)
            expected = np.float32(expected * np.float32(1 / np.sqrt(np.float32(1 + 1e-5))))
        np.testing.assert_allclose(magnitudes[1], expected, rtol=1e-6, err_msg=name)
        assert 0.55 < np.count_nonzero(w) / w.size < 0.78, name


def test_ternary_decoder_keeps_activations_order_one():
    model = llama.build(llama.LlamaConfig.preset("tiny", weights=WeightInit.TERNARY, num_layers=4))
    logits = run(model, sample_inputs(model, dims={"batch": 2, "seq": 16}))[0]
    assert 0.3 < logits.std() < 3.0


@pytest.mark.parametrize("head", list(llama.HeadStyle), ids=[h.value for h in llama.HeadStyle])
def test_tied_embeddings_share_one_initializer(head):
    config = llama.LlamaConfig(tie_embeddings=True, head=head)
    model = llama.build(config)
    tables = [
        t.name for t in model.graph.initializer if tuple(t.dims) == (config.vocab_size, config.hidden_size)
    ]
    assert tables == ["model.embed_tokens.weight"]
    users = [n for n in model.graph.node if "model.embed_tokens.weight" in n.input]
    assert sorted(n.op_type for n in users) == sorted(
        ["Gather", "Transpose" if head is llama.HeadStyle.MATMUL else "Gemm"]
    )
    if head is llama.HeadStyle.GEMM:
        assert next(a.i for a in users[-1].attribute if a.name == "transB") == 1


def test_num_parameters_counts_the_initializers_that_are_parameters():
    for config in (llama.LlamaConfig(), llama.LlamaConfig(tie_embeddings=True, num_kv_heads=1)):
        buffers = {"model.rotary_emb.cos_cached", "model.rotary_emb.sin_cached", "model.causal_mask"}
        counted = sum(v.size for k, v in weights(llama.build(config)).items() if k not in buffers)
        assert counted == config.num_parameters


def test_presets_have_the_documented_sizes():
    assert llama.LlamaConfig.preset("tiny") == llama.LlamaConfig()
    assert len(llama.build(llama.LlamaConfig.preset("tiny")).SerializeToString()) < 1 << 20
    assert 95e6 < llama.LlamaConfig.preset("small").num_parameters < 105e6
    assert 1.0e9 < llama.LlamaConfig.preset("1b").num_parameters < 1.2e9
    assert llama.LlamaConfig.preset("small", weights=WeightInit.TERNARY).weights is WeightInit.TERNARY


# -- configuration errors ------------------------------------------------------------------------
def test_bad_llama_config_lists_every_problem():
    with pytest.raises(ConfigError) as caught:
        llama.LlamaConfig(hidden_size=66, num_heads=4, num_kv_heads=3, opset=12)
    message = str(caught.value)
    assert "3 problems" in message and "LlamaConfig" in message
    assert "hidden_size 66 is not a multiple of num_heads 4" in message
    assert "num_heads 4 is not a multiple of num_kv_heads 3" in message
    assert "opset 12 is outside the supported range 13..25" in message


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (
            lambda: llama.LlamaConfig(norm=llama.RMSNormStyle.RMS_NORMALIZATION),
            ["needs opset >= 23", "opset 17"],
        ),
        (lambda: llama.LlamaConfig(vocab_size=0), ["vocab_size must be positive"]),
        (lambda: llama.LlamaConfig.preset("7b"), ["unknown preset '7b'", "tiny, small, 1b"]),
        (lambda: bert.BertConfig(opset=16), ["norm=layer_normalization needs opset >= 17"]),
        (lambda: bert.BertConfig(hidden_size=30, num_heads=4), ["not a multiple of num_heads"]),
        (lambda: convnet.ConvNetConfig(image_size=30), ["image_size 30 must be divisible by 2^2"]),
        (lambda: convnet.ConvNetConfig(channels=()), ["channels must be a non-empty tuple"]),
    ],
    ids=[
        "fused_norm_opset",
        "zero_vocab",
        "unknown_preset",
        "bert_layernorm_opset",
        "bert_heads",
        "convnet_size",
        "convnet_channels",
    ],
)
def test_bad_config_raises_config_error_naming_the_problem(make, words):
    with pytest.raises(ConfigError) as caught:
        make()
    for word in words:
        assert word in str(caught.value)


# -- saving --------------------------------------------------------------------------------------
def test_external_data_save_writes_weights_beside_the_model_and_runs(tmp_path):
    config = llama.LlamaConfig(weights=WeightInit.TRAINED_LIKE)
    feeds = sample_inputs(llama.build(config), dims={"batch": 1, "seq": 4})
    want = run(llama.build(config), feeds)[0]
    path = tmp_path / "llama.onnx"
    for _ in range(2):  # saving again replaces the data file instead of appending to it
        save_model(llama.build(config), path, external_data=True)
    data = tmp_path / "llama.onnx.data"
    assert data.stat().st_size >= 4 * config.num_parameters
    assert data.stat().st_size < 4 * config.num_parameters * 1.2
    assert path.stat().st_size < 64 << 10
    onnx.checker.check_model(str(path), full_check=True)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("config", ["tiny", "mha_tied_matmul", "rms_normalization_opset23"])
def test_llama_kv_cache_style_computes_the_prefill_forward_and_decodes_as_recomputing(config):
    """The KV-cache graph on an empty cache computes the prefill graph's logits; decoding token by
    token through its presents picks what recomputing the whole sequence with the prefill graph picks."""
    from bitnet_onnx.runtime.decoding import generate

    plain = LLAMA_CONFIGS[config]
    prefill = ort.InferenceSession(llama.build(plain).SerializeToString(), providers=["CPUExecutionProvider"])
    model = llama.build(replace(plain, kv_cache=True))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = np.asarray([[5, 17, 200, 3, 9]], np.int64)
    empty = np.zeros((1, plain.num_kv_heads, 0, plain.head_dim), np.float32)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(5)[None]}
    feeds |= {i.name: empty for i in session.get_inputs() if i.name.startswith("past_key_values")}
    logits, *presents = session.run(None, feeds)
    (want,) = prefill.run(None, {"input_ids": ids})
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-5)
    assert len(presents) == 2 * plain.num_layers
    assert all(p.shape == (1, plain.num_kv_heads, 5, plain.head_dim) for p in presents)
    result = generate(session, [5, 17, 200], 8, model=model, keep_logits=True)
    sequence = [5, 17, 200]
    for token, row in zip(result.tokens, result.logits, strict=True):
        (full,) = prefill.run(None, {"input_ids": np.asarray([sequence], np.int64)})
        np.testing.assert_allclose(row, full[0, -1], rtol=1e-4, atol=1e-4)
        assert token == int(np.argmax(full[0, -1]))
        sequence.append(token)


def test_llama_kv_cache_attention_mask_zero_masks_that_key():
    """A 0 in attention_mask removes that position's key: the same logits as never having it."""
    model = llama.build(llama.LlamaConfig(kv_cache=True))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    c = llama.LlamaConfig()
    empty = {
        i.name: np.zeros((1, c.num_kv_heads, 0, c.head_dim), np.float32)
        for i in session.get_inputs()
        if i.name.startswith("past_key_values")
    }

    def last(ids, mask, positions):
        feeds = {"input_ids": np.asarray([ids]), "attention_mask": np.asarray([mask]), **empty}
        return session.run(["logits"], feeds | {"position_ids": np.asarray([positions])})[0][0, -1]

    masked = last([7, 99, 8], [1, 0, 1], [0, 1, 1])  # 8 at cache position 2, rotary position 1
    np.testing.assert_allclose(masked, last([7, 8], [1, 1], [0, 1]), rtol=1e-4, atol=1e-5)
