"""bitnet_onnx.runtime: finding and loading the op library, sessions, and the ISA dispatch."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from bitlinear_graphs import bitlinear_operands

from bitnet_onnx import runtime
from bitnet_onnx.core.errors import ConfigError, KernelLibraryError, UnsupportedModelError

pytestmark = pytest.mark.kernels

OPS_HEADER = Path(__file__).parents[2] / "kernels" / "include" / "bitnet" / "ops.h"


def test_domain_and_op_names_match_the_header() -> None:
    text = OPS_HEADER.read_text()
    domain = re.search(r'kDomain\[\]\s*=\s*"([^"]+)"', text)
    version = re.search(r"kOpsetVersion\s*=\s*(\d+)", text)
    ops = re.findall(r'k\w+Op\[\]\s*=\s*"([^"]+)"', text)
    assert domain is not None and domain.group(1) == runtime.DOMAIN
    assert version is not None and int(version.group(1)) == runtime.OPSET_VERSION
    assert sorted(ops) == sorted(runtime.OP_NAMES)


def test_library_is_installed_in_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(runtime.LIBRARY_ENV, raising=False)
    path = runtime.library_path()
    assert path.name == "libbitnet_ops.so" and path.parent.name == "lib" and path.is_file()


def test_library_env_names_another_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    installed = runtime.library_path()
    monkeypatch.setenv(runtime.LIBRARY_ENV, str(installed))
    assert runtime.library_path() == installed
    monkeypatch.setenv(runtime.LIBRARY_ENV, str(tmp_path / "nowhere.so"))
    with pytest.raises(KernelLibraryError, match=r"BITNET_OPS_LIBRARY=.*nowhere\.so does not name a file"):
        runtime.library_path()


def test_missing_library_says_how_to_rebuild(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(runtime.LIBRARY_ENV, raising=False)
    monkeypatch.setattr(runtime, "_LIBRARY_NAME", "libmissing_ops.so")
    with pytest.raises(
        KernelLibraryError, match=r"libmissing_ops\.so is missing: rebuild it with `pip install"
    ):
        runtime.library_path()


def test_broken_library_says_how_to_rebuild(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    broken = tmp_path / "libbitnet_ops.so"
    broken.write_bytes(b"not an ELF file")
    monkeypatch.setenv(runtime.LIBRARY_ENV, str(broken))
    with pytest.raises(KernelLibraryError, match=r"could not load the bitnet op library .*rebuild it"):
        runtime.session_options()


@pytest.mark.parametrize("kind", ["path", "bytes", "proto"])
def test_session_accepts_paths_bytes_and_protos(kind: str, tmp_path: Path) -> None:
    operands = bitlinear_operands(7, 32)
    model = operands.model(np.float32)
    source: object = model
    if kind == "path":
        source = tmp_path / "bitlinear.onnx"
        onnx.save(model, source)
    elif kind == "bytes":
        source = model.SerializeToString()
    session = runtime.session(source, threads=1)
    x = np.ones((2, 32), np.float32)
    assert session.run(None, {"X": x})[0].shape == (2, 7)


def test_session_uses_given_options() -> None:
    options = runtime.session_options(threads=2)
    options.log_severity_level = 3
    session = runtime.session(bitlinear_operands(7, 32).model(np.float32), options=options)
    assert session.get_session_options().intra_op_num_threads == 2


def test_invalid_thread_count_is_rejected() -> None:
    with pytest.raises(ConfigError, match="threads=0 must be at least 1"):
        runtime.session_options(threads=0)


def test_supported_isas_follow_cpu_flags() -> None:
    supported = runtime.supported_isas()
    assert supported[0] is runtime.Isa.REF
    for isa in runtime.Isa:
        assert (isa in supported) == (isa.required_flags <= runtime.cpu_flags())


def test_dispatch_isa_defaults_to_the_fastest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(runtime.ISA_ENV, raising=False)
    assert runtime.dispatch_isa() is runtime.supported_isas()[-1]


def dispatch_log(capfd: pytest.CaptureFixture[str]) -> str:
    """The path the library reports (verbose log, on stderr) for a BitLinear kernel created now."""
    options = runtime.session_options()
    options.log_severity_level = 0
    capfd.readouterr()
    runtime.session(bitlinear_operands(7, 32).model(np.float32), options=options)
    found = re.search(r"\[BitLinear\] node 'bitlinear': .*, path (\w+)", capfd.readouterr().err)
    assert found is not None
    return found.group(1)


def test_library_and_python_agree_on_the_default_path(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(runtime.ISA_ENV, raising=False)
    assert dispatch_log(capfd) == runtime.dispatch_isa().value


@pytest.mark.parametrize("isa", list(runtime.Isa), ids=lambda isa: isa.value)
def test_library_and_python_agree_on_forced_paths(
    isa: runtime.Isa, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(runtime.ISA_ENV, isa.value)
    if isa in runtime.supported_isas():
        assert runtime.dispatch_isa() is isa
        assert dispatch_log(capfd) == isa.value
    else:
        with pytest.raises(KernelLibraryError, match=f"BITNET_ISA={isa.value} needs CPU flags"):
            runtime.dispatch_isa()
        with pytest.raises(
            UnsupportedModelError, match=rf"\[BitLinear\] BITNET_ISA={isa.value} is not available"
        ):
            runtime.session(bitlinear_operands(7, 32).model(np.float32))


def test_unknown_isa_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(runtime.ISA_ENV, "sse9")
    with pytest.raises(KernelLibraryError, match="BITNET_ISA=sse9 is not one of ref, avx2, avx512"):
        runtime.dispatch_isa()
    with pytest.raises(
        UnsupportedModelError, match=r"\[BitLinear\] BITNET_ISA=sse9 is not one of ref, avx2, avx512"
    ):
        runtime.session(bitlinear_operands(7, 32).model(np.float32))
