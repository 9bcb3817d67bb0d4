"""README.md's promises run as tests: the main-job command (minus its install step, which .ci/run
has just done) and the Python example, so the documentation cannot rot."""

from __future__ import annotations

import ast
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx

import bitnet_onnx

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


# bitnet_onnx.__all__ before the package was split into subpackages (issue 14): none may disappear.
_PUBLIC_NAMES = [
    "Accuracy",
    "Balanced",
    "CompileReport",
    "CompileResult",
    "CompileValidationError",
    "ComponentPrecisionConfig",
    "ComponentType",
    "ConditionOperator",
    "ConditionType",
    "ConfigError",
    "ConversionConfig",
    "ConversionError",
    "ConversionStats",
    "ConversionStrategy",
    "DType",
    "Decision",
    "Finding",
    "KernelLibraryError",
    "LayerFacts",
    "LayerPrecisionConfig",
    "LayerPrecisionManager",
    "LayerPrecisionSpec",
    "LayerType",
    "Memory",
    "MemoryOptimization",
    "MemoryOptimizationResult",
    "MixedPrecisionConfig",
    "MixedPrecisionError",
    "MixedPrecisionQuantizationConfig",
    "MixedPrecisionQuantizer",
    "MixedPrecisionStrategy",
    "OptimizationObjective",
    "PolicyAction",
    "PolicyCondition",
    "PolicyEngine",
    "PolicyRule",
    "PrecisionChoice",
    "PrecisionConverter",
    "PrecisionManager",
    "PrecisionPolicy",
    "PrecisionValidator",
    "QuantizedTensor",
    "Resolution",
    "Severity",
    "Speed",
    "SupportMatrix",
    "UnsupportedModelError",
    "ValidationError",
    "ValidationReport",
    "ValidationRule",
    "compile",
    "default_rules",
    "load_config",
    "save_config",
    "weight_statistics",
]


def _readme_names() -> set[str]:
    """Every name README's Python section takes from `bitnet_onnx`: `from bitnet_onnx import X` and
    `bitnet_onnx.X`."""
    names: set[str] = set()
    for block in _code_blocks("python"):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and node.module == "bitnet_onnx":
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.Attribute) and getattr(node.value, "id", None) == "bitnet_onnx":
                names.add(node.attr)
    return names


def test_every_public_name_is_importable_from_the_package():
    readme = _readme_names()
    assert {"compile", "DType", "runtime"} <= readme  # the parser reads README's example
    for name in sorted(readme | set(_PUBLIC_NAMES)):
        namespace: dict = {}
        exec(f"from bitnet_onnx import {name}", namespace)  # what a user's import does
        assert namespace[name] is getattr(bitnet_onnx, name)
    assert set(_PUBLIC_NAMES) <= set(bitnet_onnx.__all__)
    assert callable(bitnet_onnx.compile) and callable(bitnet_onnx.runtime.session)
