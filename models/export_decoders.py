"""Exports the decoder fixtures in models/fixtures/decoders/: KV-cache decoders and dynamo exports of
tiny random-weight transformers models, as today's exporters write them, and records their provenance.

Run from the repository root in the project's environment with torch==2.13.0, transformers,
onnxscript and onnxruntime-genai added (CI never runs this):
    HF_HUB_OFFLINE=1 python -m models.export_decoders

Fixtures (configs as in models/export_fixtures.py, random initialization, nothing downloaded):
- `llama_tiny_kv_dynamo`: LlamaForCausalLM decode step by torch's default (dynamo) exporter:
  input_ids, attention_mask, position_ids, past_key_values.N.key/value → logits, present.N.key/value.
- `bert_tiny_dynamo`: BertForSequenceClassification by the dynamo exporter (the TorchScript export
  of the same model is models/fixtures/bert_tiny.onnx).
- `bitnet_tiny_dynamo`: BitNetForCausalLM (RMSNorm before o_proj and before down_proj, squared ReLU)
  by the dynamo exporter, prefill (input_ids, attention_mask → logits); the decoder layers' linear
  weights are exactly ternary (absmean, as BitNet b1.58 trains them).
- `genai_llama_fp32`, `genai_llama_int4`: the LLaMA written by onnxruntime-genai's model builder
  (`python -m onnxruntime_genai.models.builder -i CHECKPOINT -p fp32|int4 -e cpu`) from a local
  checkpoint of the same random model and a word-level tokenizer made here: fused
  GroupQueryAttention (rotary inside), SkipSimplifiedLayerNormalization, and for int4 MatMulNBits.
  The builder writes external data; the fixture is the same model in one file.

Each `<name>.onnx` comes with `<name>.inputs.npz` (batch 1; decoders: 3 new tokens after 5 cached)
and `<name>.outputs.npz` (torch's outputs; for the builder's models onnxruntime's, which the builder's
own tests check against torch). `manifest.json` and the table in models/README.md are written here.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random init from configs only, never a download

import numpy as np
import onnx
import onnxruntime as ort
import torch
import transformers
from torch import nn
from torch.export import Dim

from models.export_fixtures import _BERT, _LLAMA, record

__all__ = ["DECODERS", "main"]

FIXTURE_DIR = Path(__file__).parent / "fixtures" / "decoders"
OPSET = 18
SEED = 0
BATCH, SEQ, PAST = 1, 3, 5
_BEGIN, _END = "<!-- decoders:begin -->", "<!-- decoders:end -->"
_BITNET = {**_LLAMA, "bos_token_id": 1, "eos_token_id": 2}  # inside the tiny vocabulary


@dataclass(frozen=True)
class Export:
    """What one export produced: the model file's bytes, the feeds and the reference outputs."""

    model: onnx.ModelProto
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    exporter: str


@dataclass(frozen=True)
class Decoder:
    name: str
    description: str
    source: str
    config: dict[str, Any]
    export: Callable[[dict[str, Any], Path], Export]


def _kv_names(layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return past, present


def _llama_kv(config: dict[str, Any], tmp: Path) -> Export:
    """The decode step: the cache enters as flat tensors, leaves as flat tensors (Optimum's names)."""
    hf_config = transformers.LlamaConfig(**config)
    model = transformers.LlamaForCausalLM(hf_config).eval()
    layers = hf_config.num_hidden_layers
    full = model.forward

    # Bound on the instance (not a wrapper module) so the module scopes stay `model.layers.0...`.
    def forward(input_ids, attention_mask, position_ids, *past):
        cache = transformers.DynamicCache(config=hf_config)
        for i in range(layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = full(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            return_dict=True,
        )
        flat = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
        return (out.logits, *flat)

    model.forward = forward
    heads, head_dim = hf_config.num_key_value_heads, hf_config.hidden_size // hf_config.num_attention_heads
    ids = torch.randint(0, hf_config.vocab_size, (BATCH, SEQ))
    mask = torch.ones(BATCH, PAST + SEQ, dtype=torch.int64)
    positions = torch.arange(PAST, PAST + SEQ)[None].expand(BATCH, SEQ).contiguous()
    past = tuple(torch.randn(BATCH, heads, PAST, head_dim) for _ in range(2 * layers))
    past_names, present_names = _kv_names(layers)
    batch, seq, past_len = Dim("batch"), Dim("sequence_length"), Dim("past_sequence_length")
    dynamic = {
        "input_ids": {0: batch, 1: seq},
        "attention_mask": {0: batch, 1: Dim("total_sequence_length")},
        "position_ids": {0: batch, 1: seq},
        "past": tuple({0: batch, 2: past_len} for _ in past),
    }
    args = (ids, mask, positions, *past)
    return _dynamo(
        model,
        args,
        ["input_ids", "attention_mask", "position_ids", *past_names],
        ["logits", *present_names],
        dynamic,
        tmp,
    )


def _ternarize(model: nn.Module) -> nn.Module:
    """Every linear layer of the decoder layers as BitNet b1.58 trains it: W = round(clip(W / γ,
    −1, 1)) · γ with γ = mean |W| per matrix (absmean), so ternary compilation is exact."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and ".layers." in f".{name}":
                gamma = module.weight.abs().mean()
                module.weight.copy_(torch.round(torch.clamp(module.weight / gamma, -1, 1)) * gamma)
    return model


def _text_dynamo(
    cls: type, config_cls: type, prepare: Callable[[nn.Module], nn.Module] = lambda m: m
) -> Callable[[dict[str, Any], Path], Export]:
    def export(config: dict[str, Any], tmp: Path) -> Export:
        model = prepare(cls(config_cls(**config)).eval())
        full = model.forward

        def forward(input_ids, attention_mask):
            return full(
                input_ids=input_ids, attention_mask=attention_mask, use_cache=False, return_dict=False
            )[0]

        model.forward = forward
        ids = torch.randint(0, config["vocab_size"], (BATCH, 8))
        batch, seq = Dim("batch"), Dim("seq")
        dynamic = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
        return _dynamo(
            model, (ids, torch.ones_like(ids)), ["input_ids", "attention_mask"], ["logits"], dynamic, tmp
        )

    return export


def _dynamo(
    model: nn.Module,
    args: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    dynamic: dict[str, Any],
    tmp: Path,
) -> Export:
    staged = tmp / "model.onnx"
    torch.onnx.export(
        model,
        args,
        staged,
        dynamo=True,
        input_names=input_names,
        output_names=output_names,
        dynamic_shapes=dynamic,
        opset_version=OPSET,
        external_data=False,
    )
    with torch.no_grad():
        want = model(*args)
    want = want if isinstance(want, tuple) else (want,)
    inputs = {name: t.numpy() for name, t in zip(input_names, args, strict=True)}
    outputs = {name: t.numpy() for name, t in zip(output_names, want, strict=True)}
    exporter = f"torch.onnx.export(dynamo=True, opset_version={OPSET})"
    return Export(onnx.load(staged), inputs, outputs, exporter)


def _genai(precision: str) -> Callable[[dict[str, Any], Path], Export]:
    def export(config: dict[str, Any], tmp: Path) -> Export:
        checkpoint = tmp / "checkpoint"
        transformers.LlamaForCausalLM(transformers.LlamaConfig(**config)).eval().save_pretrained(checkpoint)
        _word_tokenizer(config["vocab_size"]).save_pretrained(checkpoint)
        out = tmp / "built"
        command = [
            sys.executable,
            "-m",
            "onnxruntime_genai.models.builder",
            "-i",
            str(checkpoint),
            "-o",
            str(out),
            "-p",
            precision,
            "-e",
            "cpu",
            "-c",
            str(tmp / "cache"),
        ]
        subprocess.run(command, check=True, capture_output=True)
        model = onnx.load(out / "model.onnx")  # loads the external data into the proto
        inputs = _decode_step_inputs(model, config)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        names = [o.name for o in model.graph.output]
        outputs = dict(zip(names, session.run(names, inputs), strict=True))
        import onnxruntime_genai

        return Export(
            model,
            inputs,
            outputs,
            f"onnxruntime_genai {onnxruntime_genai.__version__} builder -p {precision}",
        )

    return export


def _word_tokenizer(vocab_size: int) -> transformers.PreTrainedTokenizerFast:
    """The builder copies a tokenizer into its output: one made here, since nothing is downloaded."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="t0", bos_token="t1", eos_token="t2"
    )


def _decode_step_inputs(model: onnx.ModelProto, config: dict[str, Any]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    feeds = {}
    for value in model.graph.input:
        if value.name == "input_ids":
            feeds[value.name] = rng.integers(0, config["vocab_size"], (BATCH, SEQ))
        elif value.name == "attention_mask":
            feeds[value.name] = np.ones((BATCH, PAST + SEQ), np.int64)
        else:
            shape = (BATCH, config["num_key_value_heads"], PAST, head_dim)
            feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


DECODERS: tuple[Decoder, ...] = (
    Decoder(
        "llama_tiny_kv_dynamo",
        "LLaMA decode step with KV cache (past_key_values.N.key/value → present.N.key/value), dynamo export",
        "transformers.LlamaForCausalLM",
        _LLAMA,
        _llama_kv,
    ),
    Decoder(
        "bert_tiny_dynamo",
        "BERT encoder with classification head, dynamo export (bert_tiny.onnx is its TorchScript twin)",
        "transformers.BertForSequenceClassification",
        _BERT,
        _text_dynamo(transformers.BertForSequenceClassification, transformers.BertConfig),
    ),
    Decoder(
        "bitnet_tiny_dynamo",
        "BitNet b1.58 decoder (sub-norms before o_proj and down_proj, squared ReLU), ternary weights",
        "transformers.BitNetForCausalLM",
        _BITNET,
        _text_dynamo(transformers.BitNetForCausalLM, transformers.BitNetConfig, _ternarize),
    ),
    Decoder(
        "genai_llama_fp32",
        "LLaMA by onnxruntime-genai's builder, fp32: GroupQueryAttention, SkipSimplifiedLayerNormalization",
        "transformers.LlamaForCausalLM → onnxruntime_genai.models.builder",
        _LLAMA,
        _genai("fp32"),
    ),
    Decoder(
        "genai_llama_int4",
        "the same LLaMA by onnxruntime-genai's builder, int4: every linear layer a MatMulNBits",
        "transformers.LlamaForCausalLM → onnxruntime_genai.models.builder",
        _LLAMA,
        _genai("int4"),
    ),
)


def write(decoder: Decoder, directory: Path) -> dict[str, Any]:
    torch.manual_seed(SEED)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        made = decoder.export(decoder.config, Path(tmp))
    model = made.model
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(list(made.outputs), made.inputs)
    error = max(float(np.abs(g - w).max()) for g, w in zip(got, made.outputs.values(), strict=True))
    if error > 1e-4:
        raise RuntimeError(f"{decoder.name}: onnxruntime differs from the reference by {error:g}")
    path = directory / f"{decoder.name}.onnx"
    data = model.SerializeToString()
    path.write_bytes(data)
    for suffix, arrays in (("inputs", made.inputs), ("outputs", made.outputs)):
        with (directory / f"{decoder.name}.{suffix}.npz").open("wb") as f:
            np.savez(f, **arrays)
    return {
        "name": decoder.name,
        "file": path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "description": decoder.description,
        "source": decoder.source,
        "config": decoder.config,
        "exporter": made.exporter,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnx": onnx.__version__,
        },
        "inputs": f"{decoder.name}.inputs.npz",
        "outputs": f"{decoder.name}.outputs.npz",
        "max_abs_error_vs_reference": error,
    }


def _readme_table(entries: Sequence[dict[str, Any]]) -> str:
    rows = ["| fixture | what it is | exporter | size | sha256 |", "|---|---|---|---|---|"]
    for e in entries:
        rows.append(
            f"| `decoders/{e['file']}` | {e['description']} (`{e['source']}`) | `{e['exporter']}` "
            f"| {e['bytes'] / 1024:.0f} KiB | `{e['sha256']}` |"
        )
    return "\n".join(rows)


def main() -> None:
    FIXTURE_DIR.mkdir(parents=True, exist_ok=True)
    entries = [write(d, FIXTURE_DIR) for d in DECODERS]
    record(FIXTURE_DIR, entries, (_BEGIN, _END), _readme_table(entries), "max_abs_error_vs_reference")


if __name__ == "__main__":
    main()
