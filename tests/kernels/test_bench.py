"""The kernel benchmark command runs end to end (tiny shapes; no timing is asserted)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import kernels
from bitnet_onnx.core.errors import ConfigError

pytestmark = pytest.mark.kernels


def test_benchmark_prints_every_contender(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    argv = ["--shapes", "1x64x32,5x100x7", "--threads", "1,2", "--runs", "2", "--warmup", "0"]
    assert kernels.main([*argv, "--cold-mb", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = [
        line.split("  ")[1] for line in printed.splitlines() if line.startswith("  ") and "  " in line[2:]
    ]
    for contender in kernels.CONTENDERS:
        assert rows.count(contender.label) == 4  # 2 shapes × 2 thread counts
    assert "1x64x32  T2  (cold weights)" in printed and "DRAM floor" in printed
    assert "fastest weight stream here" in printed
    records = json.loads(out.read_text())["results"]
    assert len(records) == 4 * len(kernels.CONTENDERS)
    cold = [r for r in records if r["shape"] == "1x64x32" and r["op"] == "bitlinear"]
    assert all(r["copies"] == min(256, math.ceil((1 << 20) / r["weight_bytes"])) for r in cold)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shapes", "1x4096"], "is not MxKxN"),
        (["--ops", "bitlinear,gemm9"], "unknown contenders gemm9"),
        (["--threads", "0"], "must be positive"),
    ],
)
def test_benchmark_rejects_bad_options(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        kernels.main(argv)
