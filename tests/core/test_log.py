from __future__ import annotations

import io
import json

import pytest

from bitnet_onnx.core.errors import UnsupportedModelError
from bitnet_onnx.core.log import Change, PassRecord, read_log, render_table, write_record


def _record(seq: int = 0) -> PassRecord:
    return PassRecord(
        pass_name="assign_precision",
        seq=seq,
        run="abc",
        seconds=0.0123456789,
        modified=True,
        nodes_before=10,
        nodes_after=12,
        bytes_before=4096,
        bytes_after=1024 * 1024 * 3,
        changes=(
            Change(
                "layers.0.mlp.up_proj",
                "assign",
                component="weights",
                dtype="BITNET158",
                source="strategy:balanced",
                overrode=None,
            ),
        ),
        warnings=("layer 'x' not found; did you mean 'y'?",),
        stats={"layers": 1},
    )


def test_record_json_round_trip(tmp_path):
    path = tmp_path / "passes.jsonl"
    with path.open("w") as f:
        write_record(f, _record(0))
        write_record(f, _record(1))
    records = list(read_log(path))
    assert [r.seq for r in records] == [0, 1]
    assert records[0] == PassRecord.from_json(_record(0).to_json())
    line = json.loads(path.read_text().splitlines()[0])
    assert line["v"] == 1 and line["pass"] == "assign_precision" and line["seconds"] == 0.012346
    assert line["changes"] == [
        {
            "layer": "layers.0.mlp.up_proj",
            "action": "assign",
            "component": "weights",
            "dtype": "BITNET158",
            "source": "strategy:balanced",
        }
    ]


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    buf = io.StringIO()
    write_record(buf, _record())
    path.write_text(buf.getvalue() + "{not json}\n")
    with pytest.raises(UnsupportedModelError, match=r"bad\.jsonl:2: not a bitnet-onnx pass record"):
        list(read_log(path))


def test_missing_log_file(tmp_path):
    with pytest.raises(UnsupportedModelError, match="cannot read pass log"):
        list(read_log(tmp_path / "nope.jsonl"))


def test_render_table_shows_summary_changes_and_warnings():
    text = render_table([_record()])
    lines = text.splitlines()
    assert lines[0].split() == ["#", "pass", "seconds", "nodes", "bytes", "changes", "warnings"]
    assert "10 → 12" in lines[2] and "4.00 KiB → 3.00 MiB" in lines[2]
    assert any(
        "layers.0.mlp.up_proj" in ln and "BITNET158" in ln and "strategy:balanced" in ln for ln in lines
    )
    assert lines[-1] == "  warning: layer 'x' not found; did you mean 'y'?"
