"""The decode benchmark runs end to end on the tiny KV-cache decoder (no timing is asserted), and
counts the weight bytes a decode step reads."""

from __future__ import annotations

import re
from pathlib import Path

import onnx
import pytest

from bench import decode
from bitnet_onnx.cli import main as cli_main
from bitnet_onnx.core.errors import ConfigError
from models import llama

pytestmark = pytest.mark.kernels


def test_benchmark_times_every_contender_and_prints_the_ratios(tmp_path: Path, capsys) -> None:
    argv = ["--sizes", "tiny", "--prefill", "8", "--steps", "4", "--repeats", "1", "--threads", "1"]
    assert decode.main([*argv, "--cache-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for contender in decode.CONTENDERS:
        for weights in ("random", "ternary"):
            assert re.search(
                rf"^{weights}\s+{re.escape(contender.label)}\s+1\s+[\d.]+\s+[\d.]+", printed, re.M
            )
    for name in ("fp32", "ORT MatMulNBits 4-bit b32 acc4", "ORT MatMulNBits 2-bit b32 acc4"):
        assert re.search(rf"ternary T1: ours vs {re.escape(name)}: [\d.]+×", printed)
    assert re.search(r"exactly-ternary: ours picks fp32's greedy tokens for \d+ of 56 steps", printed)


def test_weight_bytes_count_every_matmul_weight_and_no_table() -> None:
    config = llama.LlamaConfig(kv_cache=True)
    h, kv, inner = config.hidden_size, config.num_kv_heads * config.head_dim, config.intermediate_size
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * inner
    want = 4 * (config.num_layers * per_layer + h * config.vocab_size)  # float32; the embedding is a Gather
    assert decode.weight_bytes(llama.build(config)) == want


def test_the_command_line_runs_the_suite_and_refuses_bad_lists(tmp_path: Path, capsys) -> None:
    argv = ["bench", "decode", "--sizes", "tiny", "--contenders", "fp32", "--weights", "random"]
    argv += [
        "--prefill",
        "4",
        "--steps",
        "2",
        "--repeats",
        "1",
        "--threads",
        "1",
        "--cache-dir",
        str(tmp_path),
    ]
    assert cli_main(argv) == 0
    assert "bench decode: llama tiny with KV cache" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="--contenders 'fp64': choose among fp32"):
        decode.main(["--contenders", "fp64"])
    with pytest.raises(ConfigError, match="exceed the tiny preset's 64 positions"):
        decode.main(["--sizes", "tiny", "--prefill", "60", "--steps", "8", "--cache-dir", str(tmp_path)])


def test_models_are_built_once_per_builder_source(tmp_path: Path) -> None:
    path = decode._model("tiny", "ternary", tmp_path)
    stamp = path.stat().st_mtime_ns
    assert decode._model("tiny", "ternary", tmp_path) == path and path.stat().st_mtime_ns == stamp
    assert any(i.name == "past_key_values.0.key" for i in onnx.load(path).graph.input)
