"""README.md's promises run as tests: the main-job command (minus its install step, which .ci/run
has just done) and the Python example, so the documentation cannot rot."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def _code_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.DOTALL)


def _main_job() -> list[list[str]]:
    block = next(b for b in _code_blocks("bash") if "bitnet-onnx compile" in b)
    line = next(ln for ln in block.splitlines() if ln.strip() and not ln.startswith("#"))
    steps = [shlex.split(step) for step in line.split("&&")]
    assert steps[0][:4] == ["python3", "-m", "pip", "install"], "command 1 must start by installing"
    return steps[1:]


def test_readme_test_command_is_what_ci_runs():
    block = next(b for b in _code_blocks("bash") if "pytest" in b)
    command = next(ln for ln in block.splitlines() if ln.strip() and not ln.startswith("#"))
    assert command in (REPO / ".ci" / "run").read_text()


def test_main_job_compiles_and_runs_the_bundled_model(tmp_path):
    for rel in ("models",):
        shutil.copytree(REPO / rel, tmp_path / rel)
    exe = shutil.which("bitnet-onnx")
    for argv in _main_job():
        assert argv[0] == "bitnet-onnx"
        cmd = [exe, *argv[1:]] if exe else [sys.executable, "-m", "bitnet_onnx.cli", *argv[1:]]
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    compiled = onnx.load(tmp_path / "llama_tiny.bitnet.onnx")
    assert any(n.domain == "bitnet" and n.op_type == "BitLinear" for n in compiled.graph.node)
    assert (tmp_path / "llama_tiny.passes.jsonl").read_text().count("\n") == 6  # one per pass
    assert "logits: float32 [2, 8, 256]" in proc.stdout


def test_python_example(tmp_path, monkeypatch):
    block = next(b for b in _code_blocks("python") if "bitnet_onnx.compile" in b)
    shutil.copy(REPO / "models" / "fixtures" / "llama_tiny.onnx", tmp_path / "model.onnx")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # our own documentation
    result, session = namespace["result"], namespace["session"]
    assert result.compression > 3
    lm_head = next(r for r in result.layers if r.name == "lm_head")
    assert lm_head.precisions["weights"] == "I8" and lm_head.op == "LowBitMatMul"
    feeds = dict(np.load(REPO / "models" / "fixtures" / "llama_tiny.inputs.npz"))
    (logits,) = session.run(None, feeds)
    assert logits.shape == (2, 8, 256) and np.isfinite(logits).all()
