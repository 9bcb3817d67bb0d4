"""analysis_report.write_report: the page's numbers equal the Analysis's, names are escaped, the
charts are real PNGs, output is deterministic and written without touching other files."""

from __future__ import annotations

import dataclasses
import math
import shutil
import struct
import subprocess
import warnings
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from bitnet_onnx.config.report import OutputMetrics
from bitnet_onnx.core.dtypes import DType
from bitnet_onnx.core.errors import ConfigError
from bitnet_onnx.core.layers import ComponentType, LayerType
from bitnet_onnx.optimize.analysis import NO_LAYER, Analysis, LayerAnalysis, Timing
from bitnet_onnx.optimize.analysis_report import CHART_FILES, DTYPE_COLORS, write_report

W, B, A, OUT = ComponentType.WEIGHTS, ComponentType.BIAS, ComponentType.ACTIVATIONS, ComponentType.OUTPUTS
F32, I8, T = DType.F32, DType.I8, DType.BITNET158
EVIL = '<script>alert("x")</script> & "q"'


def _analysis(**changes) -> Analysis:
    def layer(name, kind, precisions, choice, before, after, op, cosine):
        return LayerAnalysis(name, LayerType(kind), precisions, before, after, op, cosine, choice)

    f16, i4, i2 = DType.F16, DType.I4, DType.I2
    layers = (
        layer(
            "model.embed_tokens", "embedding", {W: I8, OUT: F32}, "I8/F32", 65536, 16640, "Gather", 0.99871
        ),
        layer(
            EVIL, "linear", {W: T, B: F32, A: I8, OUT: F32}, "BITNET158/I8", 16384, 1028, "BitLinear", 0.91
        ),
        layer("blocks.0.attn", "attention", {A: f16, OUT: f16}, "F16", 0, 0, "MatMul+Softmax", None),
        layer(
            "blocks.0.mlp",
            "linear",
            {W: i4, A: F32, OUT: F32},
            "I4g128/F32",
            32768,
            4352,
            "LowBitMatMul",
            1.0,
        ),
        layer(
            "lm_head", "output", {W: i2, A: F32, OUT: F32}, "I2g64/F32", 65536, 5120, "LowBitMatMul", 0.9731
        ),
    )
    base = Analysis(
        model="models/tiny <llama>.onnx",
        config="balanced",
        bytes_before=65536 + 16384 + 32768 + 65536 + 24576,
        bytes_after=16640 + 1028 + 4352 + 5120 + 24576,
        layers=layers,
        memory_by_type_before={
            "embedding": 65536,
            "linear": 49152,
            "attention": 0,
            "output": 65536,
            NO_LAYER: 24576,
        },
        memory_by_type_after={
            "embedding": 16640,
            "linear": 5380,
            "attention": 0,
            "output": 5120,
            NO_LAYER: 24576,
        },
        accuracy=(
            OutputMetrics("logits", (1, 8, 256), 0.4375, 0.0812, 0.987654321),
            OutputMetrics("hidden & <state>", (1, 8, 64), 0.01, 0.00123, 0.99999),
        ),
        accuracy_inputs="generated inputs (batch=1, seq=8, seed 0)",
        estimated_speedup=2.345678,
        timing=Timing(1234.5, 617.25, 15, 1),
        objective="memory:0.9",
        feasible=False,
        objective_message=f"best plan saves 0.81 of the bytes; {EVIL} stays F32",
        limiting_layers=(EVIL, "lm_head"),
        notes=("a note with <b>markup</b>",),
    )
    return dataclasses.replace(base, **changes)


class _Page(HTMLParser):
    """Elements with an id, table rows per table id (row attributes and cells), images, and all text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: dict[str, dict[str, str]] = {}
        self.id_text: dict[str, str] = {}
        self.rows: dict[str, list[tuple[dict[str, str], list[tuple[dict[str, str], str]]]]] = {}
        self.images: list[str] = []
        self.text: list[str] = []
        self._open_ids: list[tuple[str, str]] = []
        self._table: str | None = None
        self._cell: tuple[dict[str, str], list[str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids[a["id"]] = a
            self._open_ids.append((tag, a["id"]))
            self.id_text[a["id"]] = ""
        if tag == "table":
            self._table = a.get("id", "")
            self.rows[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.rows[self._table].append((a, []))
        elif tag in ("td", "th") and self._table is not None:
            self._cell = (a, [])
        elif tag == "img":
            self.images.append(a["src"])

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.rows[self._table][-1][1].append((self._cell[0], "".join(self._cell[1])))
            self._cell = None
        elif tag == "table":
            self._table = None
        if self._open_ids and self._open_ids[-1][0] == tag:
            self._open_ids.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell[1].append(data)
        for _, key in self._open_ids:
            self.id_text[key] += data


def _parse(index: Path) -> _Page:
    page = _Page()
    page.feed(index.read_text(encoding="utf-8"))
    page.close()
    return page


def _value(attrs: dict[str, str]) -> float | None:
    raw = attrs["data-value"]
    return None if raw == "" else float(raw)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Analysis, Path]:
    analysis = _analysis()
    return analysis, write_report(analysis, tmp_path_factory.mktemp("report") / "out")


def test_headline_numbers_equal_the_analysis(written):
    analysis, index = written
    page = _parse(index)
    expected = {
        "bytes-before": analysis.bytes_before,
        "bytes-after": analysis.bytes_after,
        "compression": analysis.compression,
        "estimated-speedup": analysis.estimated_speedup,
        "measured-speedup": analysis.measured_speedup,
        "min-cosine": analysis.min_cosine,
        "max-rel-error": max(m.max_rel_error for m in analysis.accuracy),
    }
    for key, value in expected.items():
        assert _value(page.ids[key]) == value, key
    assert page.ids["feasible"]["data-value"] == "False"
    assert page.id_text["feasible"] == "NOT met"
    # what a person reads matches too
    assert page.id_text["compression"].startswith(f"{analysis.compression:.2f}×")
    assert page.id_text["measured-speedup"].startswith("2.00×faster than the original; median 1.234 ms")
    assert "1.234 ms → 0.617 ms, 15 runs" in page.id_text["measured-speedup"]
    assert page.id_text["min-cosine"] == "0.987654"


def test_every_layer_row_equals_the_analysis(written):
    analysis, index = written
    rows = _parse(index).rows["layers"]
    header, body = rows[0], rows[1:]
    columns = [text for _, text in header[1]]
    assert columns[:7] == ["#", "layer", "type", "weights", "bias", "activations", "outputs"]
    assert len(body) == len(analysis.layers)
    for (attrs, cells), layer in zip(body, analysis.layers, strict=True):
        by_column = dict(zip(columns, cells, strict=True))
        assert attrs["data-layer"] == layer.name
        assert by_column["layer"][1] == layer.name
        assert by_column["type"][1] == layer.layer_type.value
        for component in (W, B, A, OUT):
            dtype = layer.precisions.get(component)
            cell_attrs, text = by_column[component.value]
            assert cell_attrs["data-value"] == (dtype.name if dtype else "")
            assert cell_attrs["data-component"] == component.value
            if dtype:
                assert text == dtype.name and DTYPE_COLORS[dtype] in cell_attrs["style"]
        assert _value(by_column["bytes before"][0]) == layer.bytes_before
        assert _value(by_column["bytes after"][0]) == layer.bytes_after
        assert _value(by_column["smaller by"][0]) == layer.compression
        assert _value(by_column["sensitivity (cosine)"][0]) == layer.sensitivity
        assert by_column["op"][1] == layer.op
        assert by_column["choice"][1] == layer.choice
        assert ("limiting" in attrs.get("class", "")) == (layer.name in analysis.limiting_layers)


def test_outputs_and_memory_tables_equal_the_analysis(written):
    analysis, index = written
    page = _parse(index)
    outputs = page.rows["outputs"][1:]
    assert [attrs["data-output"] for attrs, _ in outputs] == [m.name for m in analysis.accuracy]
    for (_, cells), metrics in zip(outputs, analysis.accuracy, strict=True):
        values = [_value(a) for a, _ in cells[2:]]
        assert values == [metrics.cosine, 1.0 - metrics.cosine, metrics.max_rel_error, metrics.max_abs_error]
    memory = {attrs["data-type"]: cells for attrs, cells in page.rows["memory"][1:]}
    assert list(memory) == [*analysis.memory_by_type_before, "total"]
    for key, before in analysis.memory_by_type_before.items():
        assert _value(memory[key][1][0]) == before
        assert _value(memory[key][2][0]) == analysis.memory_by_type_after[key]
    assert [_value(memory["total"][i][0]) for i in (1, 2, 3)] == [
        analysis.bytes_before, analysis.bytes_after, analysis.compression,
    ]  # fmt: skip


def test_names_from_the_model_are_escaped(written):
    analysis, index = written
    raw = index.read_text(encoding="utf-8")
    assert "<script>" not in raw and "<b>markup</b>" not in raw and "<llama>" not in raw
    text = "".join(_parse(index).text)
    for shown in (EVIL, "models/tiny <llama>.onnx", "hidden & <state>", "a note with <b>markup</b>"):
        assert shown in text
    assert analysis.objective_message in text


def test_objective_verdict_names_the_reason_and_the_limiting_layers(written):
    _, index = written
    text = " ".join(_parse(index).text)
    assert "Objective" in text and "memory:0.9" in text
    assert "best plan saves 0.81 of the bytes" in text
    assert "Limiting layers:" in text and "lm_head" in text


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    assert zlib.crc32(data[12:29]) == struct.unpack(">I", data[29:33])[0]
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("name", CHART_FILES)
def test_charts_are_referenced_valid_pngs_with_content(written, name):
    from matplotlib.image import imread

    _, index = written
    assert name in _parse(index).images
    path = index.parent / name
    width, height = _png_size(path.read_bytes())
    assert width >= 400 and height >= 150
    pixels = imread(path)[..., :3]
    assert pixels.shape[:2] == (height, width)
    colours = np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 20  # text, bars and legend, not a blank canvas
    assert (pixels < 0.9).any(axis=-1).mean() > 0.02  # some of the canvas is drawn on


def test_the_same_analysis_gives_the_same_bytes(written, tmp_path):
    analysis, index = written
    again = write_report(analysis, tmp_path / "again")
    for name in (*CHART_FILES, "index.html"):
        assert (again.parent / name).read_bytes() == (index.parent / name).read_bytes(), name


def test_unmeasured_numbers_say_so_and_charts_are_left_out(tmp_path):
    layers = tuple(dataclasses.replace(layer, sensitivity=None) for layer in _analysis().layers)
    full = write_report(_analysis(), tmp_path / "r")
    assert (full.parent / "sensitivity.png").exists()
    bare = _analysis(
        layers=layers, estimated_speedup=None, timing=None, accuracy=(), objective=None, feasible=None
    )
    index = write_report(bare, tmp_path / "r")  # the same folder: the stale charts go
    assert not (index.parent / "sensitivity.png").exists()
    assert not (index.parent / "output_error.png").exists()
    page = _parse(index)
    for key in ("estimated-speedup", "measured-speedup", "min-cosine", "max-rel-error"):
        assert page.ids[key]["data-value"] == ""
    assert page.id_text["estimated-speedup"] == "not estimated"
    assert page.id_text["measured-speedup"] == "not measured"
    assert "feasible" not in page.ids
    assert "Sensitivity was not measured" in " ".join(page.text)
    assert set(page.images) == {"precision_map.png", "memory_by_type.png"}


def test_a_slower_compile_reads_as_slower(tmp_path):
    index = write_report(_analysis(timing=Timing(500.0, 1000.0, 15, 1)), tmp_path / "r")
    page = _parse(index)
    assert _value(page.ids["measured-speedup"]) == 0.5
    assert page.id_text["measured-speedup"].startswith("0.50×slower than the original; median 0.500 ms")


def test_other_files_in_the_folder_are_kept(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    index = write_report(_analysis(), tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*CHART_FILES, "index.html", "notes.txt"])
    assert index == tmp_path / "index.html"


@pytest.mark.parametrize("problem", ["file", "no parent"])
def test_unwritable_folders_are_config_errors_naming_them(tmp_path, problem):
    target = tmp_path / "report"
    if problem == "file":
        target.write_text("x")
        words = ["is a file"]
    else:
        target = tmp_path / "missing" / "report"
        words = ["does not exist", "create it first"]
    with pytest.raises(ConfigError) as err:
        write_report(_analysis(), target)
    assert str(target) in str(err.value)
    assert all(w in str(err.value) for w in words)


def test_headless_browser_renders_the_page(written, tmp_path):
    from matplotlib.image import imread

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium); the page is checked by parsing")
    _, index = written
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1280,2000",
            f"--screenshot={shot}",
            index.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1280)
    assert len(np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 50
    # the red of a missed objective and the ternary cells are on screen: the page and its images rendered
    red = np.array([0xD6, 0x45, 0x45]) / 255
    assert (np.abs(pixels - red).max(axis=-1) < 0.02).sum() > 500


def test_failed_measurements_render_as_failed(tmp_path):
    from matplotlib.image import imread

    layers = list(_analysis().layers)
    layers[1] = dataclasses.replace(layers[1], sensitivity=math.nan)
    broken = OutputMetrics("logits", (1, 8), math.inf, math.inf, math.nan)
    analysis = _analysis(layers=tuple(layers), accuracy=(*_analysis().accuracy, broken))
    assert math.isnan(analysis.min_cosine)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NaN reaches matplotlib's transforms
        index = write_report(analysis, tmp_path / "r")
    page = _parse(index)
    assert page.rows["layers"][2][1][-2][0]["data-value"] == "nan"  # the sensitivity column
    assert page.ids["min-cosine"]["data-value"] == "nan" and page.ids["max-rel-error"]["data-value"] == "inf"
    for name in ("sensitivity.png", "output_error.png"):
        assert imread(index.parent / name).shape[0] > 100
