"""KV-cache decoders from today's exporters compile under every preset and compute one decode step
close to the original (models/fixtures/decoders/: torch's dynamo export, onnxruntime-genai's
builder with GroupQueryAttention and SkipSimplifiedLayerNormalization)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from bitnet_onnx import runtime
from bitnet_onnx.compiler.compile import compile
from bitnet_onnx.config.config import MixedPrecisionStrategy
from bitnet_onnx.config.report import THRESHOLDS
from bitnet_onnx.passes import annotate
from bitnet_onnx.passes._graph import load_model
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


@pytest.mark.kernels
@pytest.mark.parametrize("preset", PRESETS)
def test_bitnet_b158_compiles_under_every_preset(tmp_path, preset):
    """transformers' BitNetForCausalLM with ternary weights (as trained): its linear layers, the
    sub-norms and the squared ReLU are layers like any others, and ternary plans lose nothing but
    the int8 activations."""
    name = "bitnet_tiny_dynamo"
    out = tmp_path / f"{name}.{preset}.onnx"
    result = compile(DECODERS / f"{name}.onnx", preset, output=out, measure_kernels=False)
    assert result.report.ok
    ops = {r.name: r.op for r in result.layers}
    decoder_linear = [n for n in ops if n.startswith("model.layers.") and n.endswith("_proj")]
    assert len(decoder_linear) == 14
    if preset != "conservative":
        assert {ops[n] for n in decoder_linear} == {"BitLinear"}
    with np.load(DECODERS / f"{name}.inputs.npz") as feeds, np.load(DECODERS / f"{name}.outputs.npz") as want:
        (logits,) = runtime.session(str(out)).run(["logits"], dict(feeds))
        assert _cosine(logits, want["logits"]) >= (0.999 if preset == "conservative" else 0.95)


def _rotary_mha_step(hidden: int = 64, heads: int = 4, max_positions: int = 64) -> onnx.ModelProto:
    """One decoder attention step as onnxruntime's transformer optimizer writes it: q/k/v
    projections, com.microsoft RotaryEmbedding on q and k, MultiHeadAttention over the KV cache
    (past_key_values.0.* in, present.0.* out), o_proj."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(4)
    head = hidden // heads
    angles = np.arange(max_positions)[:, None] / 10000 ** (np.arange(head // 2) / (head // 2))
    projections = ("q_proj", "k_proj", "v_proj", "o_proj")
    inits = [
        numpy_helper.from_array(
            (rng.standard_normal((hidden, hidden)) * 0.1).astype(np.float32), f"{p}.weight"
        )
        for p in projections
    ]
    inits += [
        numpy_helper.from_array(np.cos(angles).astype(np.float32), "cos_cache"),
        numpy_helper.from_array(np.sin(angles).astype(np.float32), "sin_cache"),
    ]
    ms = "com.microsoft"
    nodes = [
        helper.make_node("MatMul", ["x", f"{p}.weight"], [p], name=f"/{p}/MatMul") for p in projections[:3]
    ]
    nodes += [
        helper.make_node(
            "RotaryEmbedding", [p, "position_ids", "cos_cache", "sin_cache"], [f"{p}_rot"], domain=ms,
            name=f"/{p}/RotaryEmbedding", num_heads=heads,
        )
        for p in ("q_proj", "k_proj")
    ]  # fmt: skip
    cache_in = ["past_key_values.0.key", "past_key_values.0.value"]
    nodes.append(
        helper.make_node(
            "MultiHeadAttention", ["q_proj_rot", "k_proj_rot", "v_proj", "", "", "", *cache_in],
            ["context", "present.0.key", "present.0.value"], name="/attn/MultiHeadAttention", domain=ms,
            num_heads=heads, unidirectional=1,
        )
    )  # fmt: skip
    nodes.append(helper.make_node("MatMul", ["context", "o_proj.weight"], ["y"], name="/o_proj/MatMul"))
    cache = ["batch", heads, "past_sequence_length", head]
    present = ["batch", heads, "total_sequence_length", head]
    graph = helper.make_graph(
        nodes,
        "rotary_mha_step",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence_length", hidden]),
            helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "sequence_length"]),
            *(helper.make_tensor_value_info(name, TensorProto.FLOAT, cache) for name in cache_in),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence_length", hidden]),
            helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT, present),
            helper.make_tensor_value_info("present.0.value", TensorProto.FLOAT, present),
        ],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ms, 1)])


@pytest.mark.kernels
@pytest.mark.parametrize("preset", PRESETS)
def test_rotary_embedding_and_multi_head_attention_with_a_cache_compile_under_every_preset(tmp_path, preset):
    model = _rotary_mha_step()
    result = compile(
        model, preset, output=tmp_path / "out.onnx", measure_kernels=False, dims={"seq": 3, "past": 5}
    )
    assert result.report.ok
    assert {r.name: r.layer_type for r in result.layers} == {
        "attn": "attention",
        **{p: "linear" for p in ("q_proj", "k_proj", "v_proj", "o_proj")},
    }
    _, annotated = annotate(load_model(model))  # q and k reach the attention through their rotary
    assert {annotated.layers[p].block for p in ("q_proj", "k_proj", "v_proj", "o_proj")} == {"attn"}
    assert [p.present for p in cache_pairs(model)] == ["present.0.key", "present.0.value"]


@pytest.mark.kernels
@pytest.mark.parametrize(
    ("dims", "shown"), [((), "past=8"), (("past_sequence_length=3", "seq=1"), "past_sequence_length=3")]
)
def test_cli_compiles_a_decode_step_with_the_cache_length_given(tmp_path, capsys, dims, shown):
    from bitnet_onnx.cli import main

    argv = ["compile", str(DECODERS / "genai_llama_fp32.onnx"), "-o", str(tmp_path / "out.onnx")]
    argv += [a for d in dims for a in ("--dim", d)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert shown in out
    past, seq = (3, 1) if dims else (8, 8)
    assert f"present.0.key [1, 2, {past + seq}, 16]" in out and f"logits [1, {seq}, 256]" in out


_QDQ = """
import sys
import numpy as np
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

class Batches(CalibrationDataReader):
    def __init__(self):
        rng, ones = np.random.default_rng(0), np.ones((1, 8), np.int64)
        ids = [rng.integers(0, 256, (1, 8)) for _ in range(4)]
        self.batches = iter([{"input_ids": i, "attention_mask": ones} for i in ids])

    def get_next(self):
        return next(self.batches, None)

quantize_static(
    sys.argv[1], sys.argv[2], Batches(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
    per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
)
"""


@pytest.fixture(scope="module")
def qdq_llama(tmp_path_factory) -> Path:
    """The LLaMA fixture as onnxruntime's static quantizer writes it: QDQ, int8 per-channel weights.
    In a process of its own: the quantizer's onnx.reference refuses the typing schemas a compile
    registers in this one (one op name in two domains)."""
    out = tmp_path_factory.mktemp("qdq") / "llama_qdq.onnx"
    source = DECODERS.parent / "llama_tiny.onnx"
    subprocess.run([sys.executable, "-c", _QDQ, str(source), str(out)], check=True, capture_output=True)
    return out


@pytest.mark.kernels
@pytest.mark.parametrize(("preset", "kept"), [("conservative", True), ("aggressive", False)])
def test_qdq_weights_are_kept_or_re_quantized(tmp_path, qdq_llama, preset, kept):
    result = compile(qdq_llama, preset, output=tmp_path / "out.onnx", measure_kernels=False)
    assert result.report.ok
    decoder = [r for r in result.layers if r.name.startswith("model.layers.") and r.name.endswith("_proj")]
    assert len(decoder) == 14
    for record in decoder:
        if kept:  # F16 asked: more bits than the int8 codes hold
            assert (record.op, record.rule, record.precisions["weights"]) == (
                "MatMul",
                "model:DequantizeLinear",
                "I8",
            )
        else:
            assert record.op == "BitLinear"
    if kept:
        assert result.bytes_after < result.bytes_before


@pytest.mark.kernels
def test_a_matmul_nbits_with_reordered_blocks_is_kept_under_a_ternary_plan(tmp_path):
    """g_idx reorders the blocks: its weights are not read back, so even balanced's ternary plan
    keeps the layer (and the model compiles) instead of refusing it."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(6)
    k, n, block = 32, 16, 16
    packed = rng.integers(0, 256, (n, k // block, block // 2)).astype(np.uint8)
    inits = [
        numpy_helper.from_array(packed, "proj.B"),
        numpy_helper.from_array(rng.uniform(0.01, 0.05, n * k // block).astype(np.float32), "proj.scales"),
        numpy_helper.from_array((np.arange(k) // block).astype(np.int32), "proj.g_idx"),
        numpy_helper.from_array((rng.standard_normal((n, 4)) * 0.1).astype(np.float32), "head.weight"),
    ]
    nodes = [
        helper.make_node(
            "MatMulNBits", ["x", "proj.B", "proj.scales", "", "proj.g_idx"], ["h"], name="/proj/MatMulNBits",
            domain="com.microsoft", K=k, N=n, bits=4, block_size=block,
        ),
        helper.make_node("Relu", ["h"], ["r"], name="/act/Relu"),
        helper.make_node("MatMul", ["r", "head.weight"], ["y"], name="/head/MatMul"),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], initializer=inits,
    )  # fmt: skip
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    result = compile(model, "balanced", output=tmp_path / "out.onnx", measure_kernels=False)
    record = next(r for r in result.layers if r.name == "proj")
    assert (record.layer_type, record.op, record.rule) == ("linear", "MatMulNBits", "model:MatMulNBits")
    assert record.precisions["weights"] == "I4"
