"""The compiler benchmark command runs end to end on the tiny decoder (no timing is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import compiler
from bitnet_onnx import cli as cli_module
from bitnet_onnx.cli import main as cli_main
from bitnet_onnx.core.errors import ConfigError

pytestmark = pytest.mark.kernels


def test_benchmark_measures_every_target_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    argv = [
        "--sizes",
        "tiny",
        "--quick",
        "--profile",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--json",
        str(out),
    ]
    assert compiler.main(argv) == 0
    printed = capsys.readouterr().out
    records = json.loads(out.read_text())
    record = records["tiny"]
    compiled = {(c["model"], c["config"]): c for c in record["compiled"]}
    assert set(compiled) == {("fp32", "balanced"), ("ternary", "balanced")}
    for c in compiled.values():
        assert c["identical"] and len(c["seconds"]) == 2 and min(c["peak_rss"]) > 0
        assert (
            c["output_bytes"] < c["input_bytes"] and c["compression"] == c["input_bytes"] / c["output_bytes"]
        )
    ((latency),) = record["latency"]
    assert (latency["seq"], latency["threads"], set(latency["median_ms"])) == (1, 1, {"fp32", "balanced"})
    cosine = {(a["model"], a["output"]): a["cosine"] for a in record["accuracy"]}
    assert cosine[("ternary", "logits")] >= 0.999  # exactly ternary: int8 activation error only
    assert any(p["layer_type"] == "linear" and p["op"] == "BitLinear" for p in record["profile"])
    for row in (
        "compile time, fp32 balanced",
        "peak RSS / fp32 file, ternary balanced",
        "compiling twice, fp32 balanced",
        "balanced file size vs fp32",
        "balanced latency vs fp32, T1, seq 1",
        "ternary balanced cosine, logits",
    ):
        assert row in printed
    ((qat),) = records["bitnet_qat"]  # the trained BitNet fixture, perplexity trained-as vs compiled
    assert qat["config"] == "balanced" and qat["relative"] == qat["compiled"] / qat["trained"] - 1
    assert abs(qat["relative"]) < 1e-3 and abs(qat["exact"] / qat["trained"] - 1) < 1e-4
    assert 0 < qat["exact_mean_abs_diff"] < qat["mean_abs_diff"] < 0.1
    assert "trained BitNet b1.58 LM" in printed
    built = sorted((tmp_path / "cache").glob("*/model.onnx"))
    assert [p.parent.name.split("_")[:3] for p in built] == [
        ["llama", "tiny", "fp32"],
        ["llama", "tiny", "ternary"],
    ]


def test_built_models_are_reused(tmp_path: Path) -> None:
    first = compiler._model("tiny", "ternary", tmp_path)
    stamp = first.stat().st_mtime_ns
    assert compiler._model("tiny", "ternary", tmp_path) == first and first.stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--seqs", "1,x"], "--seqs '1,x' is not a comma-separated list"),
        (["--threads", "0"], "give positive integers"),
        (["--configs", "balancd"], "'balancd' is neither a strategy"),
    ],
)
def test_bad_options_are_config_errors(tmp_path: Path, argv: list[str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        compiler.main([*argv, "--cache-dir", str(tmp_path)])


def test_cli_runs_the_compiler_suite(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["bench", "compiler", "--help"])
    assert exit_info.value.code == 0 and "bitnet-onnx bench compiler" in capsys.readouterr().out


@pytest.mark.parametrize("suite", ["kernels", "compiler"])
def test_cli_bench_outside_a_checkout_names_what_is_missing(
    suite: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # An installed (not editable) package: no bench/ or models/ next to it.
    monkeypatch.setattr(cli_module, "__file__", str(tmp_path / "bitnet_onnx" / "cli.py"))
    assert cli_main(["bench", suite, "--help"]) == cli_module.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert f"bitnet-onnx bench runs from a repository checkout (bench/ and models/ next to {tmp_path})" in err
    assert "python -m bench.<suite>" in err
