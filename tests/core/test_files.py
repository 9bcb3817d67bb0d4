"""atomic_file: the new bytes whole on success; the old file untouched and no temporary left on failure."""

from __future__ import annotations

import pytest

from bitnet_onnx.core.files import atomic_file


@pytest.mark.parametrize(("mode", "data"), [("w", "new text\n"), ("wb", b"\x00\x01new")])
def test_replaces_the_file_with_what_the_block_wrote(tmp_path, mode, data):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with atomic_file(path, mode) as handle:
        handle.write(data)
        assert path.read_bytes() == b"old"  # not visible before the block ends
    assert path.read_bytes() == (data.encode() if isinstance(data, str) else data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_a_failing_block_leaves_the_old_file_and_no_temporary(tmp_path, error):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(error), atomic_file(path) as handle:
        handle.write("half")
        raise error
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_a_new_file_is_not_created_when_the_block_fails(tmp_path):
    with pytest.raises(RuntimeError), atomic_file(tmp_path / "new.txt") as handle:
        handle.write("x")
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []
