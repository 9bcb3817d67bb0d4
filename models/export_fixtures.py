"""Exports the committed fixtures in models/fixtures/ with torch.onnx from tiny configs of real
architectures (random initialization, nothing downloaded), and records their provenance.

Run from the repository root (needs torch==2.13.0 and transformers; CI never runs this):
    HF_HUB_OFFLINE=1 python -m models.export_fixtures

For each fixture it writes `<name>.onnx`, `<name>.inputs.npz` (sample inputs from models.inputs,
batch 2 with a padded row, seq 8) and `<name>.outputs.npz` (what torch computes for them), then
`manifest.json` (sha256, sizes, configs, versions) and the fixture table of models/README.md.
Exporter: the TorchScript exporter (`dynamo=False`), opset 17, constant folding on unless the
fixture says otherwise; every export is checked (onnx.checker full_check) and run in onnxruntime
against torch before it is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random init from configs only, never a download

import numpy as np
import onnx
import onnxruntime as ort
import torch
import transformers
from torch import nn

from models.inputs import sample_inputs, save_npz

__all__ = ["FIXTURES", "Fixture", "main", "record"]

FIXTURE_DIR = Path(__file__).parent / "fixtures"
README = Path(__file__).parent / "README.md"
OPSET = 17
SEED = 0
SAMPLE_DIMS = {"batch": 2, "seq": 8}
_BEGIN, _END = "<!-- fixtures:begin -->", "<!-- fixtures:end -->"


@dataclass(frozen=True)
class Fixture:
    """One exported model: what it is and how torch builds it."""

    name: str
    description: str
    source: str
    config: dict[str, Any]
    make: Callable[[dict[str, Any]], nn.Module]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    constant_folding: bool = True
    notes: tuple[str, ...] = field(default=())


def _text_model(cls: type, config_cls: type) -> Callable[[dict[str, Any]], nn.Module]:
    """A transformers model whose forward takes (input_ids, attention_mask) and returns logits."""

    def make(config: dict[str, Any]) -> nn.Module:
        model = cls(config_cls(**config)).eval()
        full = model.forward

        # Bound on the instance (not a wrapper module) so node scopes stay `/model/layers.0/...`.
        def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return full(
                input_ids=input_ids, attention_mask=attention_mask, use_cache=False, return_dict=False
            )[0]

        model.forward = forward
        return model

    return make


class TinyResNet(nn.Module):
    """torchvision's ResNet layout at toy width: stem conv-bn-relu-maxpool, two BasicBlocks (the
    second downsamples with a 1×1 conv shortcut), global average pool, fc."""

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = _BasicBlock(width, width, stride=1)
        self.layer2 = _BasicBlock(width, 2 * width, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.avgpool(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(x, 1))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


def _make_resnet(config: dict[str, Any]) -> nn.Module:
    model = TinyResNet(config["width"], config["num_classes"])
    for module in model.modules():  # trained-looking BatchNorm statistics, so folding them matters
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.weight.data = 1.0 + 0.1 * torch.randn(n)
            module.bias.data = 0.1 * torch.randn(n)
            module.running_mean = 0.1 * torch.randn(n)
            module.running_var = 0.5 + torch.rand(n)
    return model.eval()


_TEXT_AXES = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
_LM_AXES = {**_TEXT_AXES, "logits": {0: "batch", 1: "seq"}}
_LLAMA = {
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
}
_BERT = {
    "vocab_size": 256,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "max_position_embeddings": 128,
    "num_labels": 3,
}
_GPT2 = {
    "vocab_size": 256,
    "n_embd": 64,
    "n_layer": 2,
    "n_head": 4,
    "n_positions": 128,
    "bos_token_id": 0,
    "eos_token_id": 0,
}

FIXTURES: tuple[Fixture, ...] = (
    Fixture(
        name="llama_tiny",
        description="LLaMA decoder (RMSNorm, rotary, grouped-query attention 4q/2kv, SwiGLU), untied lm_head",
        source="transformers.LlamaForCausalLM",
        config=_LLAMA,
        make=_text_model(transformers.LlamaForCausalLM, transformers.LlamaConfig),
        input_names=("input_ids", "attention_mask"),
        output_names=("logits",),
        dynamic_axes=_LM_AXES,
    ),
    Fixture(
        name="bert_tiny",
        description="BERT encoder with sequence-classification head (3 labels)",
        source="transformers.BertForSequenceClassification",
        config=_BERT,
        make=_text_model(transformers.BertForSequenceClassification, transformers.BertConfig),
        input_names=("input_ids", "attention_mask"),
        output_names=("logits",),
        dynamic_axes={**_TEXT_AXES, "logits": {0: "batch"}},
    ),
    Fixture(
        name="gpt2_tiny",
        description="GPT-2 decoder (Conv1D layers exported as Gemm), lm_head tied to wte",
        source="transformers.GPT2LMHeadModel",
        config=_GPT2,
        make=_text_model(transformers.GPT2LMHeadModel, transformers.GPT2Config),
        input_names=("input_ids", "attention_mask"),
        output_names=("logits",),
        dynamic_axes=_LM_AXES,
        notes=("constant folding transposes the tied table into a second initializer: the tie is lost",),
    ),
    Fixture(
        name="gpt2_tiny_unfolded",
        description="the same GPT-2 exported without constant folding: the tie survives",
        source="transformers.GPT2LMHeadModel",
        config=_GPT2,
        make=_text_model(transformers.GPT2LMHeadModel, transformers.GPT2Config),
        input_names=("input_ids", "attention_mask"),
        output_names=("logits",),
        dynamic_axes=_LM_AXES,
        constant_folding=False,
        notes=("lm_head is MatMul(h, Transpose(transformer.wte.weight)), the table the Gather reads",),
    ),
    Fixture(
        name="convnet_tiny",
        description="ResNet-style CNN (BasicBlocks, 1×1 downsample shortcut); BatchNorm folded into Conv",
        source="models.export_fixtures.TinyResNet",
        config={"width": 16, "num_classes": 10, "image_size": 32},
        make=_make_resnet,
        input_names=("input",),
        output_names=("logits",),
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    ),
)


def _example_args(fixture: Fixture) -> tuple[torch.Tensor, ...]:
    if fixture.input_names == ("input",):
        size = fixture.config["image_size"]
        return (torch.randn(1, 3, size, size),)
    ids = torch.randint(0, fixture.config["vocab_size"], (1, 8))
    return ids, torch.ones_like(ids)


def export(fixture: Fixture, directory: Path) -> dict[str, Any]:
    """Exports, checks and writes one fixture; returns its manifest entry."""
    torch.manual_seed(SEED)
    model = fixture.make(fixture.config)
    path = directory / f"{fixture.name}.onnx"
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about data-dependent shapes are expected
        staged = Path(tmp) / path.name
        torch.onnx.export(
            model,
            _example_args(fixture),
            staged,
            input_names=list(fixture.input_names),
            output_names=list(fixture.output_names),
            dynamic_axes=fixture.dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=fixture.constant_folding,
            dynamo=False,
        )
        proto = onnx.load(staged)
        onnx.checker.check_model(proto, full_check=True)
        inputs = sample_inputs(proto, dims=SAMPLE_DIMS, seed=SEED)
        got = ort.InferenceSession(staged, providers=["CPUExecutionProvider"]).run(None, inputs)
        with torch.no_grad():
            want = model(*(torch.from_numpy(inputs[n]) for n in fixture.input_names))
        want = [t.numpy() for t in (want if isinstance(want, tuple) else (want,))]
        error = max(float(np.abs(g - w).max()) for g, w in zip(got, want, strict=True))
        if error > 1e-4:
            raise RuntimeError(f"{fixture.name}: onnxruntime differs from torch by {error:g}")
        path.write_bytes(staged.read_bytes())
    save_npz(inputs, directory / f"{fixture.name}.inputs.npz")
    save_npz(dict(zip(fixture.output_names, want, strict=True)), directory / f"{fixture.name}.outputs.npz")
    data = path.read_bytes()
    return {
        "name": fixture.name,
        "file": path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "description": fixture.description,
        "source": fixture.source,
        "config": fixture.config,
        "opset": OPSET,
        "exporter": f"torch.onnx.export(dynamo=False, do_constant_folding={fixture.constant_folding})",
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnx": onnx.__version__,
        },
        "inputs": f"{fixture.name}.inputs.npz",
        "outputs": f"{fixture.name}.outputs.npz",
        "max_abs_error_vs_torch": error,
        "notes": list(fixture.notes),
    }


def _readme_table(entries: Sequence[dict[str, Any]]) -> str:
    rows = [
        "| fixture | what it is | config | opset | exporter | size | sha256 |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        config = ", ".join(f"{k}={v}" for k, v in e["config"].items())
        notes = "".join(f" Note: {n}." for n in e["notes"])
        rows.append(
            f"| `{e['file']}` | {e['description']} (`{e['source']}`).{notes} | {config} | {e['opset']} "
            f"| `{e['exporter']}` | {e['bytes'] / 1024:.0f} KiB | `{e['sha256']}` |"
        )
    return "\n".join(rows)


def record(
    directory: Path, entries: Sequence[dict[str, Any]], markers: tuple[str, str], table: str, error_key: str
) -> None:
    """Writes `directory`/manifest.json, puts `table` and the versions between the `markers` in
    models/README.md, and prints one line per entry."""
    (directory / "manifest.json").write_text(json.dumps(list(entries), indent=2) + "\n")
    versions = entries[0]["versions"]
    footer = (
        f"Exported with torch {versions['torch']}, transformers {versions['transformers']}, "
        f"onnx {versions['onnx']}."
    )
    begin, end = markers
    head, rest = README.read_text().split(begin, 1)
    _, tail = rest.split(end, 1)
    README.write_text(f"{head}{begin}\n{table}\n\n{footer}\n{end}{tail}")
    for e in entries:
        print(f"{e['file']}: {e['bytes']} bytes, sha256 {e['sha256'][:16]}…, {error_key} {e[error_key]:.2g}")


def main() -> None:
    FIXTURE_DIR.mkdir(exist_ok=True)
    entries = [export(f, FIXTURE_DIR) for f in FIXTURES]
    record(FIXTURE_DIR, entries, (_BEGIN, _END), _readme_table(entries), "max_abs_error_vs_torch")


if __name__ == "__main__":
    main()
