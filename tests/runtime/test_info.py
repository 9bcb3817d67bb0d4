from __future__ import annotations

import pytest

from bitnet_onnx import runtime
from bitnet_onnx.cli import main
from bitnet_onnx.runtime.info import describe, gather


def test_info_reports_library_ops_and_dispatch(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert str(runtime.library_path()) in out and "(loads)" in out
    for op in runtime.OP_NAMES:
        assert f"bitnet.{op}" in out
    assert runtime.dispatch_isa().value in out


@pytest.mark.parametrize("isa", [i.value for i in runtime.supported_isas()])
def test_forced_path_is_reported(monkeypatch, isa):
    monkeypatch.setenv(runtime.ISA_ENV, isa)
    info = gather()
    assert info.dispatch == isa
    assert all(line.rstrip().endswith(isa) for line in describe(info).splitlines() if "bitnet." in line)


def test_missing_library_exits_nonzero_with_fix(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(runtime.LIBRARY_ENV, str(tmp_path / "missing.so"))
    assert main(["info"]) == 2
    out = capsys.readouterr().out
    assert "DOES NOT LOAD" in out and "unset it to use the installed library" in out
