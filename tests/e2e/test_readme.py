"""Every fenced example of README.md, kernels/README.md and models/README.md runs, extracted from
the file itself, so an example cannot rot: Python blocks are executed, YAML/JSON config files are
loaded and compiled on the bundled LLaMA, and bash blocks run their `bitnet-onnx` commands on the
bundled fixtures in a temporary folder. A block that cannot be run says so in the document, on an
italic line right above it (`*Not run ...: why.*`); a block neither runnable nor marked fails."""

from __future__ import annotations

import ast
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest

import bitnet_onnx
from bitnet_onnx.config.config_file import load_config

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = ("README.md", "kernels/README.md", "models/README.md")
FIXTURES = REPO / "models" / "fixtures"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.DOTALL | re.MULTILINE)
_NOT_RUN = re.compile(r"\*Not run[^*]*: [^*]+\.\*\s*$")
_RUNNABLE = ("python", "yaml", "json", "bash")


@dataclass(frozen=True)
class Block:
    document: str
    line: int
    lang: str
    text: str
    marked: bool  # an italic "*Not run ...: why.*" line right above it

    @property
    def id(self) -> str:
        return f"{self.document}:{self.line}:{self.lang or 'plain'}"


def _blocks(document: str) -> list[Block]:
    text = (REPO / document).read_text(encoding="utf-8")
    blocks = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n\n", 1)[-1]
        line = text.count("\n", 0, match.start()) + 1
        marked = bool(_NOT_RUN.search(before.replace("\n", " ")))
        blocks.append(Block(document, line, match.group(1), match.group(2), marked))
    return blocks


BLOCKS = [block for document in DOCUMENTS for block in _blocks(document)]
RUN = [block for block in BLOCKS if not block.marked]


def test_every_block_is_run_or_says_why_not():
    assert len(BLOCKS) >= 6  # the extraction finds the documents' examples
    unmarked = [b.id for b in RUN if b.lang not in _RUNNABLE]
    assert unmarked == [], "fenced blocks neither runnable nor marked `*Not run: why.*` above them"


def test_the_test_command_not_run_here_is_what_ci_runs():
    (block,) = [b for b in BLOCKS if b.marked and "pytest" in b.text]
    (command,) = [ln for ln in block.text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert command in (REPO / ".ci" / "run").read_text()


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A folder holding a copy of models/ (the examples' relative paths) and the working directory."""
    shutil.copytree(REPO / "models", tmp_path / "models")
    shutil.copy(FIXTURES / "llama_tiny.onnx", tmp_path / "model.onnx")  # the Python example's model
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # `from models import ...`, as from the repo root
    return tmp_path


def _bash(block: Block, folder: Path) -> None:
    # The script installed beside this interpreter (not whichever `bitnet-onnx` PATH finds first).
    script = Path(sys.executable).with_name("bitnet-onnx")
    exe = [str(script)] if script.exists() else [sys.executable, "-m", "bitnet_onnx.cli"]
    for line in block.text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        for step in line.split("&&"):
            argv = shlex.split(step)
            if argv[:4] == ["python3", "-m", "pip", "install"]:
                continue  # the test runs in the installed package
            assert argv[0] == "bitnet-onnx", f"{block.id}: cannot run {step.strip()!r}; mark the block"
            proc = subprocess.run([*exe, *argv[1:]], cwd=folder, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, f"{block.id}: {step.strip()}\n{proc.stderr}"
            _check_bash_step(argv, folder, proc.stdout)


def _check_bash_step(argv: list[str], folder: Path, stdout: str) -> None:
    """What the set-up command (the compile with --log) promises: a compiled model with our ops and a
    log line per pass."""
    if argv[1] == "compile" and "--log" in argv:
        output = folder / argv[argv.index("-o") + 1]
        assert any(n.domain == "bitnet" and n.op_type == "BitLinear" for n in onnx.load(output).graph.node)
        log = folder / argv[argv.index("--log") + 1]
        assert log.read_text().count("\n") == 7  # one record per pass
    elif argv[1] == "run":
        assert "logits: float32 [2, 8, 256]" in stdout


def _config(block: Block, folder: Path) -> None:
    path = folder / f"example.{block.lang}"
    path.write_text(block.text, encoding="utf-8")
    config = load_config(path)
    result = bitnet_onnx.compile(
        FIXTURES / "llama_tiny.onnx",
        config,
        output=folder / "example.bitnet.onnx",
        inputs=FIXTURES / "llama_tiny.inputs.npz",
        measure_kernels=False,
    )
    assert result.report.goal_met
    layers = {r.name: r for r in result.layers}
    # The example's own entries are what the compiled model holds.
    assert layers["model.layers.0.mlp.up_proj"].precisions["weights"] == "I4"
    # lm_head: F16 by its entry, then raised two steps by the policy for the first and last layers.
    head = layers["lm_head"].components["weights"]
    assert (head["precision"], head["rule"]) == ("F32", "policy:keep_edges/first_and_last")
    assert layers["model.layers.0.self_attn.q_proj"].components["weights"]["per_channel"] is True


def _python(block: Block, folder: Path) -> dict:
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(block.text, block.id, "exec"), namespace)  # our own documentation
    return namespace


def _check_python(block: Block, namespace: dict) -> None:
    """Beyond running: what each Python example says it makes."""
    if "bitnet_onnx.compile" in block.text:
        result, session = namespace["result"], namespace["session"]
        assert result.compression > 3
        lm_head = next(r for r in result.layers if r.name == "lm_head")
        assert lm_head.precisions["weights"] == "I8" and lm_head.op == "LowBitMatMul"
        feeds = dict(np.load(FIXTURES / "llama_tiny.inputs.npz"))
        (logits,) = session.run(None, feeds)
        assert logits.shape == (2, 8, 256) and np.isfinite(logits).all()
    elif "llama.build" in block.text:
        assert onnx.load("llama_tiny.onnx").graph.node
        assert set(namespace["feeds"]) == {i.name for i in namespace["model"].graph.input}


@pytest.mark.usefixtures("ops_lib")
@pytest.mark.parametrize("block", RUN, ids=[b.id for b in RUN])
def test_example_runs(block: Block, workdir: Path) -> None:
    if block.lang == "bash":
        _bash(block, workdir)
    elif block.lang in ("yaml", "json"):
        _config(block, workdir)
    else:
        _check_python(block, _python(block, workdir))


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
    for block in (b for b in BLOCKS if b.document == "README.md" and b.lang == "python"):
        for node in ast.walk(ast.parse(block.text)):
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
