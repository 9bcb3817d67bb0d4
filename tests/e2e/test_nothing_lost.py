"""Nothing lost: the input model and its external data are only read, and the output appears only
complete and validated. A failure in any pass (an exception or Ctrl-C), a failed validation or an
interrupted write leaves no output and no temporary files, and an existing output stays byte for
byte (and mtime for mtime) as it was; `bitnet-onnx compile` interrupted by SIGINT exits 130."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bitnet_onnx.cli import main
from bitnet_onnx.compiler.compile import compile
from bitnet_onnx.config.config import LayerPrecisionConfig, MixedPrecisionConfig
from bitnet_onnx.config.report import CompileValidationError
from bitnet_onnx.core.dtypes import DType
from bitnet_onnx.core.layers import LayerType
from bitnet_onnx.passes import compile_passes
from bitnet_onnx.passes.base import PassError
from bitnet_onnx.runtime import model_file
from models import llama
from models._onnx import save_model
from models.weights import WeightInit

REPO = Path(__file__).resolve().parents[2]
PASSES = [type(p) for p in compile_passes()]
EXIT_INTERRUPTED = 130


pytestmark = pytest.mark.usefixtures("ops_lib")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A LLaMA-style model whose weights live in external data: in/m.onnx + in/m.onnx.data."""
    folder = tmp_path_factory.mktemp("in")
    save_model(llama.build(llama.LlamaConfig()), folder / "m.onnx", external_data=True)
    assert sorted(p.name for p in folder.iterdir()) == ["m.onnx", "m.onnx.data"]
    return folder / "m.onnx"


def _snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file of `folder` (subfolders included): its sha256 and mtime."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: Path) -> Path:
    """out/m.bitnet.onnx (+ .data) from an earlier compile, written with external data."""
    monkeypatch.setattr(model_file, "EXTERNAL_DATA_THRESHOLD", 1024)
    out = tmp_path / "out" / "m.bitnet.onnx"
    out.parent.mkdir()
    compile(source, "conservative", output=out, measure_kernels=False)
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.bitnet.onnx", "m.bitnet.onnx.data"]
    return out


def test_the_input_and_its_external_data_are_only_read(source: Path, tmp_path: Path) -> None:
    before = _snapshot(source.parent)
    compile(source, "balanced", output=tmp_path / "a.onnx", measure_kernels=False)
    with pytest.raises(CompileValidationError):
        compile(source, _ternary_under_conservative(), output=tmp_path / "b.onnx", measure_kernels=False)
    assert _snapshot(source.parent) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx"]


@pytest.mark.parametrize(
    "failure", [RuntimeError("injected"), KeyboardInterrupt()], ids=["exception", "ctrl-c"]
)
@pytest.mark.parametrize("target", PASSES, ids=[p.name for p in PASSES])
def test_a_failure_in_any_pass_leaves_no_output_and_the_previous_one_intact(
    target: type, failure: BaseException, source: Path, previous: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self, graph, ctx):
        raise failure

    monkeypatch.setattr(target, "run", broken)
    inputs, outputs = _snapshot(source.parent), _snapshot(previous.parent)
    expected = PassError if isinstance(failure, Exception) else KeyboardInterrupt
    with pytest.raises(expected):
        compile(source, "balanced", output=previous, measure_kernels=False)
    assert _snapshot(previous.parent) == outputs  # no new file, no temporary folder, old files as they were
    assert _snapshot(source.parent) == inputs


def test_an_interrupted_write_keeps_the_previous_output(
    source: Path, previous: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C between putting the new data file in place and the new model: the old pair comes back."""
    outputs = _snapshot(previous.parent)
    moves = []
    replace = os.replace

    def interrupted_after_the_data(src, dst):
        moves.append(Path(dst).name)
        if Path(dst).name == previous.name:
            raise KeyboardInterrupt
        replace(src, dst)

    monkeypatch.setattr(model_file.os, "replace", interrupted_after_the_data)
    with pytest.raises(KeyboardInterrupt):
        compile(source, "balanced", output=previous, measure_kernels=False)
    assert "m.bitnet.onnx.data" in moves  # the data file had been replaced before the interrupt
    monkeypatch.setattr(model_file.os, "replace", replace)
    assert _snapshot(previous.parent) == outputs


def _ternary_under_conservative() -> MixedPrecisionConfig:
    """Conservative thresholds (cosine ≥ 0.999) with ternary linear layers: a float model misses them."""
    linear = LayerPrecisionConfig(LayerType.LINEAR, DType.BITNET158).with_component_override(
        "activations", "I8"
    )
    return MixedPrecisionConfig.conservative().with_layer_type_config(linear)


def test_a_failed_validation_leaves_the_previous_output_intact(source: Path, previous: Path) -> None:
    outputs = _snapshot(previous.parent)
    with pytest.raises(CompileValidationError, match=r"\[numerics\] output logits: cosine"):
        compile(source, _ternary_under_conservative(), output=previous, measure_kernels=False)
    assert _snapshot(previous.parent) == outputs


def test_ctrl_c_on_the_command_line_exits_130_and_writes_nothing(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(self, graph, ctx):
        raise KeyboardInterrupt

    monkeypatch.setattr(PASSES[3], "run", interrupted)
    out = tmp_path / "out"
    out.mkdir()
    code = main(["compile", str(source), "-o", str(out / "m.onnx"), "--no-kernel-timing"])
    assert code == EXIT_INTERRUPTED
    stderr = capsys.readouterr().err
    assert "bitnet-onnx compile: interrupted; no output was written" in stderr and "Traceback" not in stderr
    assert list(out.iterdir()) == []


def test_sigint_to_a_compiling_process_exits_130_and_writes_nothing(tmp_path: Path) -> None:
    config = llama.LlamaConfig(
        vocab_size=8192, hidden_size=512, num_layers=4, intermediate_size=1536, weights=WeightInit.TERNARY
    )
    model = tmp_path / "in" / "big.onnx"
    model.parent.mkdir()
    save_model(llama.build(config), model)
    out, ready = tmp_path / "out", tmp_path / "rewrite-started"
    out.mkdir()
    # The child holds the rewrite pass open once it has started, so the signal lands mid-compile
    # however fast the machine is (a timed signal raced a compile that finished first).
    child = f"""
import sys, time
from bitnet_onnx.passes.p50_rewrite import RewritePass
from bitnet_onnx.cli import main
run = RewritePass.run
def held(self, graph, ctx):
    result = run(self, graph, ctx)
    open({str(ready)!r}, "w").close()
    time.sleep(120)
    return result
RewritePass.run = held
sys.exit(main(sys.argv[1:]))
"""
    argv = ["compile", str(model), "-o", str(out / "big.bitnet.onnx"), "--no-kernel-timing"]
    # A shell running the tests in the background hands its children SIGINT ignored, and Python then
    # never turns SIGINT into KeyboardInterrupt: restore the default so the child sees Ctrl-C.
    process = subprocess.Popen(
        [sys.executable, "-c", child, *argv],
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ready.exists(), "the compile never reached the rewrite pass"
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == EXIT_INTERRUPTED, (stdout, stderr)
    assert "bitnet-onnx compile: interrupted; no output was written" in stderr and "Traceback" not in stderr
    assert list(out.iterdir()) == []
