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
    cache = kernels.last_level_cache()
    assert f"last-level cache {cache}" in printed
    # 1 MB graphs are under twice any last-level cache: every cold row says so.
    cold = printed.split("1x64x32  T1")[1].split("5x100x7")[0]
    cold_rows = [line for line in cold.splitlines() if "  " in line]
    assert sum(line.endswith("NOT cold") for line in cold_rows) == 2 * len(kernels.CONTENDERS)  # T1, T2
    assert "fastest weight stream here" in printed
    records = json.loads(out.read_text())["results"]
    assert len(records) == 4 * len(kernels.CONTENDERS)
    cold = [r for r in records if r["shape"] == "1x64x32" and r["op"] == "bitlinear"]
    assert all(r["copies"] == min(4096, math.ceil((1 << 20) / r["weight_bytes"])) for r in cold)
    assert all(r["working_set_bytes"] == r["copies"] * r["weight_bytes"] for r in records)


def _cache_dir(root: Path, caches: list[tuple[int, str, str]]) -> Path:
    for i, (level, kind, size) in enumerate(caches):
        index = root / f"index{i}"
        index.mkdir(parents=True)
        (index / "level").write_text(f"{level}\n")
        (index / "type").write_text(f"{kind}\n")
        (index / "size").write_text(f"{size}\n")
    return root


@pytest.mark.parametrize(
    ("caches", "size", "level"),
    [
        (
            [
                (1, "Data", "48K"),
                (1, "Instruction", "32K"),
                (2, "Unified", "1024K"),
                (3, "Unified", "32768K"),
            ],
            32 << 20,
            3,
        ),
        ([(1, "Data", "32K"), (2, "Unified", "2M")], 2 << 20, 2),  # no L3: the highest level listed
        ([(1, "Instruction", "64K"), (1, "Data", "48K")], 48 << 10, 1),  # instruction caches never count
    ],
)
def test_last_level_cache_reads_sysfs(tmp_path: Path, caches: list, size: int, level: int) -> None:
    cache = kernels.last_level_cache(_cache_dir(tmp_path, caches))
    assert cache.size_bytes == size
    assert cache.source.startswith(f"L{level}, ")


def test_last_level_cache_fallback_is_stated(tmp_path: Path) -> None:
    cache = kernels.last_level_cache(tmp_path / "missing")
    assert cache.size_bytes == 512 << 20
    assert "assumed" in str(cache)


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
