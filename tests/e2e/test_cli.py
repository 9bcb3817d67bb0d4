"""The command line: compile, run, inspect and log — output and exit codes, errors → exit 2 with a message."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from bitnet_onnx import runtime
from bitnet_onnx.cli import EXIT_GOAL_MISSED, EXIT_OK, EXIT_USER_ERROR, main
from bitnet_onnx.config.config import LayerPrecisionConfig, MixedPrecisionConfig
from bitnet_onnx.config.config_file import save_config
from bitnet_onnx.core.dtypes import DType
from bitnet_onnx.core.layers import LayerType

FIXTURES = Path(__file__).resolve().parents[2] / "models" / "fixtures"
LLAMA = FIXTURES / "llama_tiny.onnx"
CONVNET = FIXTURES / "convnet_tiny.onnx"


pytestmark = pytest.mark.usefixtures("ops_lib")


@pytest.fixture(scope="module")
def compiled_llama(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "llama.bitnet.onnx"
    assert main(["compile", str(LLAMA), "-o", str(out), "--no-kernel-timing"]) == EXIT_OK
    return out


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_compile_prints_layers_sizes_and_validation(capsys, tmp_path):
    out = tmp_path / "m.onnx"
    code, stdout, _ = _run(
        capsys,
        "compile",
        str(LLAMA),
        "-o",
        str(out),
        "--strategy",
        "balanced",
        "--log",
        str(tmp_path / "l.jsonl"),
        "--inputs",
        str(FIXTURES / "llama_tiny.inputs.npz"),
        "--no-kernel-timing",
    )
    assert code == EXIT_OK and out.exists() and (tmp_path / "l.jsonl").exists()
    assert "model.layers.0.self_attn.q_proj" in stdout
    assert "w:BITNET158 a:I8 o:F32  absmean  BitLinear" in stdout
    assert f"smaller) → {out}" in stdout
    assert (
        "validation vs original on " + str(FIXTURES / "llama_tiny.inputs.npz") in stdout
        and "logits [2, 8, 256]: cosine" in stdout
    )


def test_compile_with_dims_budget_and_dump(capsys, tmp_path):
    out = tmp_path / "m.onnx"
    code, stdout, _ = _run(
        capsys,
        "compile",
        str(CONVNET),
        "-o",
        str(out),
        "--dim",
        "batch=3",
        "--memory-budget",
        "1MiB",
        "--dump-after",
        "rewrite",
        "--no-kernel-timing",
    )
    assert code == EXIT_OK
    assert "generated inputs (batch=3, seq=8, seed 0)" in stdout
    assert (tmp_path / "m.dump" / "003_rewrite.onnx").exists()


def test_no_strict_writes_and_exits_3_when_the_goal_is_missed(capsys, tmp_path):
    conv = LayerPrecisionConfig(LayerType.CONVOLUTION, DType.BITNET158).with_component_override(
        "activations", "I8"
    )
    save_config(MixedPrecisionConfig.conservative().with_layer_type_config(conv), tmp_path / "c.yaml")
    out = tmp_path / "m.onnx"
    args = [
        "compile",
        str(CONVNET),
        "-o",
        str(out),
        "--config",
        str(tmp_path / "c.yaml"),
        "--no-kernel-timing",
    ]
    code, _, stderr = _run(capsys, *args)
    assert code == EXIT_USER_ERROR and not out.exists()
    assert "bitnet-onnx compile: error: validation of the compiled model found 1 error(s)" in stderr
    assert "MISSED" in stderr  # the report comes with the error
    code, stdout, stderr = _run(capsys, *args, "--no-strict")
    assert code == EXIT_GOAL_MISSED and out.exists()
    assert "MISSED" in stdout and "missed the validation thresholds (--no-strict)" in stderr


@pytest.mark.parametrize(
    "argv, words",
    [
        (["compile", "missing.onnx", "-o", "o.onnx"], "missing.onnx: no such file"),
        (["compile", str(CONVNET), "-o", "o.onnx", "--dump-after", "rewite"], "did you mean 'rewrite'"),
        (["compile", str(CONVNET), "-o", "o.onnx", "--config", "nope.yaml"], "nope.yaml"),
        (
            ["compile", str(CONVNET), "-o", "o.onnx", "--inputs", "nope.npz"],
            "cannot read calibration inputs nope.npz",
        ),
        (
            ["compile", str(CONVNET), "-o", "o.onnx", "--memory-budget", "1KiB"],
            "over the budget of 1024. Fix: lower precisions (CLI: --strategy aggressive, --objective",
        ),
        (["run", str(CONVNET), "--save", "out.txt"], "--save out.txt: the outputs are saved as .npz"),
        (["run", str(CONVNET), "--save", "no/out.npz"], "folder no does not exist"),
        (["run", "missing.onnx"], "missing.onnx: no such file"),
        (["inspect", str(CONVNET)], "has no bitnet.layer annotations: it was not compiled by bitnet-onnx"),
        (["log", "nope.jsonl"], "cannot read pass log nope.jsonl"),
    ],
)
def test_user_errors_exit_2_with_a_message(capsys, tmp_path, monkeypatch, argv, words):
    monkeypatch.chdir(tmp_path)
    code, _stdout, stderr = _run(capsys, *argv)
    assert code == EXIT_USER_ERROR
    assert stderr.startswith(f"bitnet-onnx {argv[0]}: error: ") and words in stderr
    assert "Traceback" not in stderr and not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["compile", str(CONVNET)],  # no -o
        ["compile", str(CONVNET), "-o", "o.onnx", "--strategy", "fast"],
        ["compile", str(CONVNET), "-o", "o.onnx", "--memory-budget", "lots"],
        ["compile", str(CONVNET), "-o", "o.onnx", "--dim", "seq"],
        ["compile", str(CONVNET), "-o", "o.onnx", "--strategy", "balanced", "--config", "c.yaml"],
    ],
)
def test_bad_arguments_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == EXIT_USER_ERROR
    assert "error:" in capsys.readouterr().err


def test_run_prints_output_shapes_and_statistics(capsys, compiled_llama):
    inputs = FIXTURES / "llama_tiny.inputs.npz"
    code, stdout, _ = _run(capsys, "run", str(compiled_llama), "--inputs", str(inputs), "--threads", "1")
    assert code == EXIT_OK
    (line,) = stdout.strip().splitlines()
    with np.load(inputs) as feeds:
        logits = runtime.session(compiled_llama).run(["logits"], dict(feeds))[0].astype(np.float64)
    assert line.startswith("logits: float32 [2, 8, 256]  min ")
    assert f"max {logits.max():.6g}" in line and f"mean {logits.mean():.6g}" in line


def test_run_save_writes_the_outputs_themselves(capsys, compiled_llama, tmp_path):
    inputs = FIXTURES / "llama_tiny.inputs.npz"
    out = tmp_path / "outputs.npz"
    code, stdout, _ = _run(capsys, "run", str(compiled_llama), "--inputs", str(inputs), "--save", str(out))
    assert code == EXIT_OK and stdout.splitlines()[-1] == f"outputs written to {out}"
    with np.load(inputs) as feeds:
        (logits,) = runtime.session(compiled_llama).run(["logits"], dict(feeds))
    with np.load(out) as saved:
        assert saved.files == ["logits"]
        np.testing.assert_array_equal(saved["logits"], logits)
    assert [p.name for p in tmp_path.iterdir()] == ["outputs.npz"]  # no temporary file left


def _commands(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def test_every_command_and_option_has_a_description():
    import argparse

    from bitnet_onnx.cli import _build_parser

    for name, command in _commands(_build_parser()):
        assert command.description, f"{name} has no description"
        for action in command._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"{name} {action.option_strings or action.dest} has no help"


def test_run_profile_groups_kernel_time_by_layer(capsys, compiled_llama):
    code, stdout, _ = _run(capsys, "run", str(compiled_llama), "--dim", "seq=4", "--profile")
    assert code == EXIT_OK
    lines = stdout.splitlines()
    assert lines[0].startswith("logits: float32 [1, 4, 256]")
    header = next(i for i, line in enumerate(lines) if line.startswith("layer"))
    assert lines[header].split() == ["layer", "type", "op", "kernels", "µs", "%"]
    rows = {line.split()[0]: line.split() for line in lines[header + 2 :]}
    assert rows["model.layers.0.mlp.down_proj"][1:3] == ["linear", "BitLinear"]
    assert rows["total"][-1] == "100.0"


@pytest.mark.parametrize("profile", [[], ["--profile"]])
def test_run_names_every_input_the_model_cannot_take(capsys, compiled_llama, tmp_path, profile):
    with np.load(FIXTURES / "llama_tiny.inputs.npz") as feeds:
        arrays = dict(feeds)
    arrays["position_ids"] = np.zeros((2, 8), np.int64)
    arrays["attention_mask"] = arrays["attention_mask"].astype(np.int32)
    del arrays["input_ids"]
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, **arrays)
    code, _, stderr = _run(capsys, "run", str(compiled_llama), "--inputs", str(wrong), *profile)
    assert code == EXIT_USER_ERROR and "Traceback" not in stderr
    assert "no array for model input 'input_ids'" in stderr
    assert "'position_ids' is not an input of the model (its inputs: input_ids, attention_mask)" in stderr
    assert "input 'attention_mask' is int32, the model takes int64" in stderr


def test_inspect_table_and_json(capsys, compiled_llama):
    code, stdout, _ = _run(capsys, "inspect", str(compiled_llama))
    assert code == EXIT_OK
    assert any(line.startswith("lm_head") and "output" in line for line in stdout.splitlines())
    code, stdout, _ = _run(capsys, "inspect", str(compiled_llama), "--json")
    records = {r["name"]: r for r in json.loads(stdout)}
    q = records["model.layers.1.self_attn.q_proj"]
    assert q["layer_type"] == "linear" and q["op"] == "BitLinear" and q["rule"]
    assert q["precisions"] == {"weights": "BITNET158", "activations": "I8", "outputs": "F32"}
    assert q["ternary_scale"] == "absmean" and records["lm_head"]["ternary_scale"] == ""
    assert len(records) == 25


def test_inspect_shows_every_components_settings_and_rule_in_compile_order(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        """version: 1
strategy: balanced
layer_types:
  linear: {precision: BITNET158, per_channel: true, packing: base3, components: {activations: I8}}
layers:
  "model.layers.*.mlp.*": {layer_type: linear, precision: I4, group_size: 32, asymmetric: true,
                           conversion_strategy: scaled}
policies:
  - id: act16
    rules:
      - id: o_proj_activations
        conditions:
          - {type: layer_name, operator: matches, value: "*.o_proj"}
          - {type: component, operator: equal, value: activations}
        action: {type: set_precision, precision: F16}
"""
    )
    out = tmp_path / "m.onnx"
    code, compiled_table, _ = _run(
        capsys, "compile", str(LLAMA), "-o", str(out), "--config", str(config), "--no-kernel-timing"
    )
    assert code == EXIT_OK
    code, stdout, _ = _run(capsys, "inspect", str(out), "--json")
    records = json.loads(stdout)
    compile_order = [
        line.split()[0] for line in compiled_table.splitlines()[2:] if line and not line.startswith(" ")
    ]
    assert [r["name"] for r in records] == compile_order[: len(records)]
    by_name = {r["name"]: r for r in records}
    q = by_name["model.layers.0.self_attn.q_proj"]["components"]["weights"]
    assert (q["precision"], q["per_channel"], q["packing"], q["rule"]) == (
        "BITNET158",
        True,
        "base3",
        "layer_type:linear",
    )
    up = by_name["model.layers.0.mlp.up_proj"]["components"]["weights"]
    assert (up["precision"], up["group_size"], up["asymmetric"], up["conversion_strategy"]) == (
        "I4",
        32,
        True,
        "scaled",
    )
    assert up["rule"] == "glob:model.layers.*.mlp.*"
    o_proj = by_name["model.layers.1.self_attn.o_proj"]["components"]
    assert o_proj["activations"]["rule"] == "policy:act16/o_proj_activations"
    assert o_proj["activations"]["precision"] == "F16" and o_proj["weights"]["rule"] == "layer_type:linear"
    code, table, _ = _run(capsys, "inspect", str(out))
    rows = table.splitlines()
    header = rows[0].split()
    assert header == ["layer", "type", "component", "precision", "knobs", "conversion", "rule", "op"]
    up_row = next(i for i, line in enumerate(rows) if line.startswith("model.layers.0.mlp.up_proj "))
    assert rows[up_row].split()[2:7] == ["weights", "I4", "group_size=32", "asymmetric=true", "scaled"]


def test_log_renders_the_pass_table(capsys, tmp_path):
    log = tmp_path / "l.jsonl"
    assert (
        main(["compile", str(LLAMA), "-o", str(tmp_path / "l.onnx"), "--log", str(log), "--no-kernel-timing"])
        == 0
    )
    capsys.readouterr()
    code, stdout, _ = _run(capsys, "log", str(log))  # fold_converts removes nodes of no layer
    assert code == EXIT_OK and "[4] fold_converts" in stdout
    assert (
        main(
            ["compile", str(CONVNET), "-o", str(tmp_path / "m.onnx"), "--log", str(log), "--no-kernel-timing"]
        )
        == 0
    )
    capsys.readouterr()
    code, stdout, _ = _run(capsys, "log", str(log))
    assert code == EXIT_OK
    lines = stdout.splitlines()
    assert lines[0].split()[:3] == ["#", "pass", "seconds"]
    assert [line.split()[1] for line in lines[2:8]] == [
        "normalize",
        "annotate_layers",
        "assign_precision",
        "rewrite",
        "fold_converts",
        "validate",
    ]
    assert "[2] assign_precision" in stdout and "BITNET158" in stdout
    code, summary, _ = _run(capsys, "log", str(log), "--summary")
    assert code == EXIT_OK and "[2] assign_precision" not in summary


@pytest.mark.skipif(shutil.which("bitnet-onnx") is None, reason="the bitnet-onnx script is not installed")
def test_installed_script_runs_from_any_folder(tmp_path):
    """The console script, outside the source tree: the README's main-job demo."""
    out = tmp_path / "llama.bitnet.onnx"
    compile_run = subprocess.run(
        ["bitnet-onnx", "compile", str(LLAMA), "-o", str(out), "--no-kernel-timing"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert compile_run.returncode == 0, compile_run.stderr
    run = subprocess.run(
        ["bitnet-onnx", "run", str(out), "--inputs", str(FIXTURES / "llama_tiny.inputs.npz")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("logits: float32 [2, 8, 256]")
    assert onnx.load(out).producer_name == "bitnet-onnx"
    assert sys.executable  # the script uses the interpreter it was installed for


def test_output_cut_short_by_the_reader_is_not_an_error(compiled_llama):
    # `bitnet-onnx inspect MODEL | head -0`: the reader is gone before the first write.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bitnet_onnx.cli", "inspect", str(compiled_llama)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == EXIT_OK
    assert b"Traceback" not in proc.stderr
