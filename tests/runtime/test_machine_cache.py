"""MachineCache: where the file is, what reads as empty, atomic writes, a failed write only warns."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from bitnet_onnx.runtime.machine_cache import MachineCache

CACHE = MachineCache("numbers.json", version=2, what="the numbers")


@pytest.fixture(autouse=True)
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path


def test_path_is_under_the_cache_home(cache_home: Path) -> None:
    assert CACHE.path() == cache_home / "bitnet-onnx" / "numbers.json"


def test_stored_entries_are_loaded_and_nothing_else_is_left(cache_home: Path) -> None:
    CACHE.store({"machine-a": {"x": 1.5}})
    CACHE.store({**CACHE.load(), "machine-b": [1, 2]})
    assert CACHE.load() == {"machine-a": {"x": 1.5}, "machine-b": [1, 2]}
    assert json.loads(CACHE.path().read_text())["version"] == 2
    assert sorted(p.name for p in (cache_home / "bitnet-onnx").iterdir()) == ["numbers.json"]


@pytest.mark.parametrize(
    "text",
    [
        None,  # no file
        "{not json",
        "[1, 2]",
        json.dumps({"version": 1, "machines": {"m": 1}}),  # another version
        json.dumps({"version": 2, "machines": [1]}),
    ],
)
def test_what_cannot_be_used_reads_as_empty(text: str | None) -> None:
    if text is not None:
        CACHE.path().parent.mkdir(parents=True)
        CACHE.path().write_text(text)
    assert CACHE.load() == {}


def test_a_folder_that_cannot_be_written_costs_a_warning_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # a file where a folder must go
    with caplog.at_level(logging.WARNING):
        CACHE.store({"m": 1})
    assert "could not keep the numbers in" in caplog.text
    assert CACHE.load() == {}
