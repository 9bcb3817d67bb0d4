"""The analysis as one HTML page with charts, for a person to read at a glance.

`write_report(analysis, out_dir)` writes into `out_dir`:

- `index.html`: the headline numbers (stored bytes before → after, compression, estimated and
  measured speedup, the worst output's cosine and relative error, the objective met or not with the
  reason and the limiting layers), the four charts, the error per output, the memory per layer
  type and the per-layer table, then the notes (what was not measured and why);
- `precision_map.png` (layers × components, one colour per precision), `memory_by_type.png`
  (bytes per layer type before and after), `sensitivity.png` (1 − cosine of the outputs with one
  layer alone at its precision, log scale; only when the analysis has sensitivities) and
  `output_error.png` (1 − cosine and max relative error per output; only when outputs were compared).

The page references the PNGs as files next to it (`<img src="precision_map.png">`) rather than
inlining them: the PNGs are deliverables of their own (slides, issues), inlining would store each
twice, and the folder is the unit one moves or serves. Every name comes from the model and is
escaped. Each number the page shows carries its raw value in a `data-value` attribute (Python
`repr` of the float or int; empty when not measured), so a program reads back exactly the
Analysis's numbers; headline values have ids (`bytes-before`, `bytes-after`, `compression`,
`estimated-speedup`, `measured-speedup`, `min-cosine`, `max-rel-error`, `feasible`).

Charts come from matplotlib's Agg canvas (no pyplot, so no global backend is touched) at `DPI`,
without the Software stamp: the same analysis gives the same bytes.

Writing is atomic per file: everything is first written to a temporary folder inside `out_dir`
(created when missing), then each file is renamed into place, the PNGs first and `index.html` last,
and a chart this report does not have (left by an earlier report in the same folder) is removed. A
failure while rendering leaves the folder as it was; other files in it are never touched.
"""

from __future__ import annotations

import contextlib
import html
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from bitnet_onnx.core.dtypes import DType
from bitnet_onnx.core.errors import ConfigError
from bitnet_onnx.core.layers import ComponentType
from bitnet_onnx.optimize.analysis import NO_LAYER, Analysis, LayerAnalysis

__all__ = ["CHART_FILES", "DPI", "DTYPE_COLORS", "write_report"]

logger = logging.getLogger(__name__)

DPI = 100
PRECISION_MAP = "precision_map.png"
MEMORY_BY_TYPE = "memory_by_type.png"
SENSITIVITY = "sensitivity.png"
OUTPUT_ERROR = "output_error.png"
CHART_FILES = (PRECISION_MAP, MEMORY_BY_TYPE, SENSITIVITY, OUTPUT_ERROR)
INDEX = "index.html"

# Most precise first: blues for floats, green for int8, then warmer as fewer bits remain.
DTYPE_COLORS: dict[DType, str] = {
    DType.F32: "#1f4e79",
    DType.F16: "#4a90d9",
    DType.BF16: "#9cc7ef",
    DType.I8: "#2e9e5b",
    DType.I4: "#e8c31b",
    DType.I2: "#f08a24",
    DType.BITNET158: "#d64545",
    DType.I1: "#7b2d8e",
}
_ABSENT = "#eeeeee"
_BEFORE = "#b0b0b0"
_AFTER = "#1f4e79"
_COMPONENTS = (ComponentType.WEIGHTS, ComponentType.BIAS, ComponentType.ACTIVATIONS, ComponentType.OUTPUTS)
_LADDER = sorted(DType, key=lambda d: -d.rank())


# -- formatting ---------------------------------------------------------------------------------------


def _bytes_text(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _raw(value: float | int | None) -> str:
    return "" if value is None else repr(value)


def _ratio_text(value: float | None, missing: str = "not measured") -> str:
    return missing if value is None else f"{value:.2f}×"


def _speed_detail(value: float | None, how: str) -> str:
    """What a speedup card says under its number: slower or faster, and how it was obtained."""
    if value is None:
        return ""
    verdict = "slower than the original" if value < 1 else "faster than the original"
    return f"{verdict}; {how}"


def _cosine_text(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.6f}"


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _cell(text: str, value: float | int | None, *, cls: str = "num", style: str = "") -> str:
    extra = f' style="{style}"' if style else ""
    return f'<td class="{cls}" data-value="{_raw(value)}"{extra}>{_esc(text)}</td>'


def _text_color(background: str) -> str:
    r, g, b = (int(background[i : i + 2], 16) for i in (1, 3, 5))
    return "#000000" if 0.299 * r + 0.587 * g + 0.114 * b > 150 else "#ffffff"


def _layer_dtype(layer: LayerAnalysis) -> DType | None:
    """The precision that characterises a layer: its weights', else its activations'."""
    return layer.precisions.get(ComponentType.WEIGHTS, layer.precisions.get(ComponentType.ACTIVATIONS))


# -- charts -------------------------------------------------------------------------------------------


def _figure(width: float, height: float):  # -> matplotlib.figure.Figure
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, format="png", metadata={"Software": None})


def _label_inches(labels: Iterable[str]) -> float:
    return 0.075 * max((len(s) for s in labels), default=8)


def _precision_map(analysis: Analysis, path: Path) -> None:
    from matplotlib.colors import to_rgb
    from matplotlib.patches import Patch

    layers = analysis.layers
    rows = max(len(layers), 1)
    fig = _figure(_label_inches(layer.name for layer in layers) + 6.0, 1.6 + 0.24 * rows)
    ax = fig.add_subplot()
    image = [
        [to_rgb(DTYPE_COLORS[d]) if (d := layer.precisions.get(c)) else to_rgb(_ABSENT) for c in _COMPONENTS]
        for layer in layers
    ] or [[to_rgb(_ABSENT)] * len(_COMPONENTS)]
    ax.imshow(image, aspect="auto", interpolation="nearest")
    for y, layer in enumerate(layers):
        for x, component in enumerate(_COMPONENTS):
            dtype = layer.precisions.get(component)
            text = dtype.name if dtype else "–"
            color = _text_color(DTYPE_COLORS[dtype]) if dtype else "#888888"
            ax.text(x, y, text, ha="center", va="center", fontsize=7.5, color=color)
    ax.set_xticks(range(len(_COMPONENTS)), [c.value for c in _COMPONENTS])
    ax.xaxis.tick_top()
    ax.set_yticks(range(len(layers)), [layer.name for layer in layers], fontsize=8)
    ax.set_xticks([x + 0.5 for x in range(len(_COMPONENTS) - 1)], minor=True)
    ax.set_yticks([y + 0.5 for y in range(len(layers) - 1)], minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    present = {d for layer in layers for d in layer.precisions.values()}
    handles = [Patch(color=DTYPE_COLORS[d], label=d.name) for d in _LADDER if d in present]
    handles.append(Patch(color=_ABSENT, label="– (component absent)"))
    fig.legend(
        handles=handles, loc="outside lower center", ncols=min(len(handles), 5), fontsize=8, frameon=False
    )
    ax.set_title("Precision per layer and component", fontsize=11, pad=8)
    _save(fig, path)


def _memory_by_type(analysis: Analysis, path: Path) -> None:
    keys = [
        k
        for k in analysis.memory_by_type_before
        if analysis.memory_by_type_before.get(k, 0) or analysis.memory_by_type_after.get(k, 0)
    ] or list(analysis.memory_by_type_before)
    scale, unit = _unit(max([*analysis.memory_by_type_before.values(), 1]))
    fig = _figure(8.0, 1.4 + 0.55 * max(len(keys), 1))
    ax = fig.add_subplot()
    ys = range(len(keys))
    before = [analysis.memory_by_type_before.get(k, 0) for k in keys]
    after = [analysis.memory_by_type_after.get(k, 0) for k in keys]
    height = 0.38
    ax.barh([y - height / 2 for y in ys], [b / scale for b in before], height, color=_BEFORE, label="before")
    ax.barh([y + height / 2 for y in ys], [a / scale for a in after], height, color=_AFTER, label="after")
    right = max([*before, *after, 1]) / scale
    for y, b, a in zip(ys, before, after, strict=True):
        ax.text(b / scale + right * 0.01, y - height / 2, _bytes_text(b), va="center", fontsize=8)
        ratio = f"  ({b / a:.2f}× smaller)" if a and b != a else ""
        ax.text(a / scale + right * 0.01, y + height / 2, _bytes_text(a) + ratio, va="center", fontsize=8)
    ax.set_xlim(0, right * 1.45)
    ax.set_yticks(list(ys), keys)
    ax.invert_yaxis()
    ax.set_xlabel(f"stored bytes ({unit})")
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    ax.set_title(
        f"Memory by layer type: {_bytes_text(analysis.bytes_before)} → {_bytes_text(analysis.bytes_after)}",
        fontsize=11,
    )
    ax.spines[["top", "right"]].set_visible(False)
    _save(fig, path)


def _unit(largest: float) -> tuple[float, str]:
    for scale, unit in ((1024.0**3, "GiB"), (1024.0**2, "MiB"), (1024.0, "KiB")):
        if largest >= scale:
            return scale, unit
    return 1.0, "B"


def _log_bars(
    ax,
    labels: Sequence[str],
    values: Sequence[float | None],
    colors: Sequence[str],
    annotate: Callable[[float], str],
) -> None:
    """Horizontal bars of `values` (1 − cosine, at most 2) on a log axis, each labelled; 0 is
    drawn as 'exact', None as 'not measured', NaN (a failed measurement) as 'failed'."""
    from matplotlib.ticker import NullFormatter

    positive = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    low = 10 ** math.floor(math.log10(min(positive))) if positive else 1e-6
    high = min(10 ** math.ceil(math.log10(max(positive))), 2.0) if positive else 1.0
    low = min(low, high / 100)  # two decades at least, so the axis has major ticks to read
    ax.set_xscale("log")
    ax.set_xlim(low, high)
    ax.xaxis.set_minor_formatter(NullFormatter())
    for y, (value, color) in enumerate(zip(values, colors, strict=True)):
        if value is None:
            ax.text(low, y, "  not measured", va="center", fontsize=7.5, color="#888888")
        elif not math.isfinite(value):
            ax.text(low, y, "  failed: not a finite number", va="center", fontsize=7.5, color="#d64545")
        elif value <= 0:
            ax.text(low, y, "  exact (1 − cosine = 0)", va="center", fontsize=7.5, color="#888888")
        else:
            ax.barh(y, value - low, left=low, color=color, height=0.7)
            # The label goes right of the bar while a decade of room remains, else inside its end.
            inside = value * 10 > high
            ax.text(
                value / 1.15 if inside else value * 1.15,
                y,
                annotate(value),
                va="center",
                ha="right" if inside else "left",
                fontsize=7.5,
                color=_text_color(color) if inside else "#000000",
            )
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.grid(axis="x", which="major", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.spines[["top", "right"]].set_visible(False)


def _cosine_label(one_minus: float) -> str:
    """A bar's label: the cosine, or 1 − cosine where six decimals of the cosine would read 1."""
    return f"cos {1.0 - one_minus:.6f}" if one_minus >= 5e-6 else f"1 − cos = {one_minus:.1e}"


def _sensitivity(analysis: Analysis, path: Path) -> None:
    from matplotlib.patches import Patch

    layers = analysis.layers
    fig = _figure(_label_inches(layer.name for layer in layers) + 6.5, 1.8 + 0.24 * max(len(layers), 1))
    ax = fig.add_subplot()
    values = [None if layer.sensitivity is None else 1.0 - layer.sensitivity for layer in layers]
    colors = [DTYPE_COLORS.get(_layer_dtype(layer), _ABSENT) for layer in layers]  # type: ignore[arg-type]
    _log_bars(ax, [layer.name for layer in layers], values, colors, _cosine_label)
    ax.set_xlabel(
        "1 − cosine of the outputs with only this layer at its precision (log scale; longer = more sensitive)"
    )
    ax.set_title("Per-layer sensitivity", fontsize=11)
    present = {_layer_dtype(layer) for layer in layers} - {None}
    handles = [Patch(color=DTYPE_COLORS[d], label=d.name) for d in _LADDER if d in present]
    fig.legend(
        handles=handles, loc="outside lower center", ncols=min(len(handles), 6), fontsize=8, frameon=False
    )
    _save(fig, path)


def _output_error(analysis: Analysis, path: Path) -> None:
    outputs = analysis.accuracy
    names = [m.name for m in outputs]
    fig = _figure(_label_inches(names) + 8.0, 1.6 + 0.35 * len(outputs))
    left, right = fig.subplots(1, 2, sharey=True)
    _log_bars(
        left,
        names,
        [1.0 - m.cosine for m in outputs],
        [_AFTER] * len(outputs),
        _cosine_label,
    )
    left.set_xlabel("1 − cosine (log scale)")
    finite = [m.max_rel_error for m in outputs if math.isfinite(m.max_rel_error)]
    top = max([*finite, 1e-12])
    # A non-finite error is drawn as a full-width bar labelled with its value.
    shown = [m.max_rel_error if math.isfinite(m.max_rel_error) else top * 1.25 for m in outputs]
    right.barh(range(len(outputs)), shown, color="#d64545", height=0.7)
    for y, (m, width) in enumerate(zip(outputs, shown, strict=True)):
        right.text(width + top * 0.02, y, f"{m.max_rel_error:.4g}", va="center", fontsize=8)
    right.set_xlim(0, top * 1.45)
    right.set_xlabel("max |compiled − original| / max |original|")
    right.spines[["top", "right"]].set_visible(False)
    fig.suptitle(f"Error per output, against the original on {analysis.accuracy_inputs}", fontsize=11)
    _save(fig, path)


# -- HTML ---------------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 2em; }
.sub { color: #555; margin-top: 0; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(155px, 1fr)); gap: 0.6em;
         margin: 1em 0; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 0.6em 0.8em; }
.card dt { font-size: 0.8em; color: #555; }
.card dd { margin: 0.2em 0 0; font-size: 1.35em; font-weight: 600; }
.card dd small { font-size: 0.6em; font-weight: normal; color: #555; display: block; }
.verdict { border-radius: 6px; padding: 0.7em 1em; margin: 1em 0; }
.verdict.met { background: #e6f4ea; border: 1px solid #2e9e5b; }
.verdict.missed { background: #fdecea; border: 1px solid #d64545; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border-bottom: 1px solid #e5e5e5; padding: 0.25em 0.6em; text-align: left; white-space: nowrap; }
th { background: #f5f5f5; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.dtype { text-align: center; font-size: 0.9em; }
td.op { white-space: normal; min-width: 14em; color: #555; font-size: 0.9em; }
.scroll { overflow-x: auto; }
.card dd.na { font-size: 1em; font-weight: normal; color: #888; }
tr.limiting td:first-child { border-left: 4px solid #d64545; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.85em; max-width: 60em; }
.missing { color: #888; font-style: italic; }
"""


def _card(key: str, title: str, text: str, value: float | int | bool | None, detail: str = "") -> str:
    small = f"<small>{_esc(detail)}</small>" if detail else ""
    na = ' class="na"' if value is None else ""
    return (
        f'<div class="card"><dt>{_esc(title)}</dt>'
        f'<dd id="{key}"{na} data-value="{_raw(value)}">{_esc(text)}{small}</dd></div>'
    )


def _headline(a: Analysis) -> str:
    worst_rel = max((m.max_rel_error for m in a.accuracy), default=None)
    timing = a.timing
    measured_how = (
        f"median {timing.original_us / 1000:.3f} ms → {timing.compiled_us / 1000:.3f} ms, "
        f"{timing.runs} runs, {timing.threads} thread(s), batch 1"
        if timing is not None
        else ""
    )
    cards = [
        _card("bytes-before", "stored bytes before", _bytes_text(a.bytes_before), a.bytes_before),
        _card("bytes-after", "stored bytes after", _bytes_text(a.bytes_after), a.bytes_after),
        _card(
            "compression",
            "compression",
            f"{a.compression:.2f}×",
            a.compression,
            f"{100 * (1 - a.bytes_after / a.bytes_before):.1f}% saved" if a.bytes_before else "",
        ),
        _card(
            "estimated-speedup",
            "estimated speedup (matmuls, 1 token)",
            _ratio_text(a.estimated_speedup, missing="not estimated"),
            a.estimated_speedup,
            _speed_detail(a.estimated_speedup, "latency table measured on this CPU"),
        ),
        _card(
            "measured-speedup",
            "measured speedup (whole model)",
            _ratio_text(a.measured_speedup),
            a.measured_speedup,
            _speed_detail(a.measured_speedup, measured_how),
        ),
        _card("min-cosine", "output cosine (worst output)", _cosine_text(a.min_cosine), a.min_cosine),
        _card(
            "max-rel-error",
            "max relative error (worst output)",
            "not measured" if worst_rel is None else f"{worst_rel:.4g}",
            worst_rel,
        ),
    ]
    return f'<dl class="cards">{"".join(cards)}</dl>'


def _verdict(a: Analysis) -> str:
    if a.objective is None:
        return ""
    met = bool(a.feasible)
    status = "met" if met else "NOT met"
    limiting = ""
    if a.limiting_layers:
        names = ", ".join(f"<code>{_esc(n)}</code>" for n in a.limiting_layers)
        limiting = f"<p>Limiting layers: {names}</p>"
    message = f"<p>{_esc(a.objective_message)}</p>" if a.objective_message else ""
    return (
        f'<section class="verdict {"met" if met else "missed"}">'
        f"<strong>Objective <code>{_esc(a.objective)}</code>: "
        f'<span id="feasible" data-value="{_raw(a.feasible)}">{status}</span></strong>'
        f"{message}{limiting}</section>"
    )


def _figure_html(file: str | None, alt: str, caption: str, missing: str) -> str:
    if file is None:
        return f'<p class="missing">{_esc(missing)}</p>'
    return (
        f'<figure><img src="{_esc(file)}" alt="{_esc(alt)}"><figcaption>{_esc(caption)}</figcaption></figure>'
    )


def _dtype_cell(dtype: DType | None, component: ComponentType) -> str:
    if dtype is None:
        return f'<td class="dtype" data-component="{component.value}" data-value="">–</td>'
    color = DTYPE_COLORS[dtype]
    return (
        f'<td class="dtype" data-component="{component.value}" data-value="{dtype.name}" '
        f'style="background:{color};color:{_text_color(color)}">{dtype.name}</td>'
    )


def _layers_table(a: Analysis) -> str:
    limiting = set(a.limiting_layers)
    head = "".join(
        f"<th>{_esc(h)}</th>"
        for h in (
            "#", "layer", "type", *(c.value for c in _COMPONENTS), "choice",
            "bytes before", "bytes after", "smaller by", "sensitivity (cosine)", "op",
        )
    )  # fmt: skip
    rows = []
    for i, layer in enumerate(a.layers):
        cls = ' class="limiting"' if layer.name in limiting else ""
        cells = [
            _cell(str(i), i),
            f"<td><code>{_esc(layer.name)}</code></td>",
            f"<td>{_esc(layer.layer_type.value)}</td>",
            *(_dtype_cell(layer.precisions.get(c), c) for c in _COMPONENTS),
            f"<td><code>{_esc(layer.choice or '–')}</code></td>",
            _cell(_bytes_text(layer.bytes_before), layer.bytes_before),
            _cell(_bytes_text(layer.bytes_after), layer.bytes_after),
            _cell(f"{layer.compression:.2f}×" if layer.bytes_after else "–", layer.compression),
            _cell(_cosine_text(layer.sensitivity), layer.sensitivity),
            f'<td class="op">{_esc(layer.op or "–")}</td>',
        ]
        rows.append(f'<tr data-layer="{_esc(layer.name)}"{cls}>{"".join(cells)}</tr>')
    caption = (
        '<p class="sub">A red mark left of a row: a layer that limits the objective.</p>' if limiting else ""
    )
    return (
        f'{caption}<div class="scroll"><table id="layers"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _outputs_table(a: Analysis) -> str:
    if not a.accuracy:
        return '<p class="missing">No output was compared.</p>'
    head = "".join(
        f"<th>{h}</th>"
        for h in ("output", "shape", "cosine", "1 − cosine", "max rel. error", "max abs. error")
    )
    rows = [
        f'<tr data-output="{_esc(m.name)}">'
        f"<td><code>{_esc(m.name)}</code></td><td>{_esc(list(m.shape))}</td>"
        + _cell(f"{m.cosine:.6f}", m.cosine)
        + _cell(f"{1.0 - m.cosine:.3g}", 1.0 - m.cosine)
        + _cell(f"{m.max_rel_error:.4g}", m.max_rel_error)
        + _cell(f"{m.max_abs_error:.4g}", m.max_abs_error)
        + "</tr>"
        for m in a.accuracy
    ]
    return f'<table id="outputs"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _memory_table(a: Analysis) -> str:
    rows = []
    for key, before in a.memory_by_type_before.items():
        after = a.memory_by_type_after.get(key, 0)
        ratio = before / after if after else None
        rows.append(
            f'<tr data-type="{_esc(key)}"><td>{_esc(key)}</td>'
            + _cell(_bytes_text(before), before)
            + _cell(_bytes_text(after), after)
            + _cell(f"{ratio:.2f}×" if ratio is not None else "–", ratio)
            + "</tr>"
        )
    total = (
        '<tr data-type="total"><th>total</th>'
        + _cell(_bytes_text(a.bytes_before), a.bytes_before)
        + _cell(_bytes_text(a.bytes_after), a.bytes_after)
        + _cell(f"{a.compression:.2f}×", a.compression)
        + "</tr>"
    )
    head = "<th>layer type</th><th>bytes before</th><th>bytes after</th><th>smaller by</th>"
    return f'<table id="memory"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}{total}</tbody></table>'


def _page(a: Analysis, charts: dict[str, str | None]) -> str:
    notes = "".join(f"<li>{_esc(n)}</li>" for n in a.notes)
    sensitivity_missing = "Sensitivity was not measured (analyze with a sensitivity table to see it)."
    body = [
        f"<h1>Mixed-precision analysis of <code>{_esc(a.model)}</code></h1>",
        f'<p class="sub">config: <code>{_esc(a.config)}</code> · '
        f"outputs compared on {_esc(a.accuracy_inputs)}</p>",
        _verdict(a),
        _headline(a),
        "<h2>Precision per layer</h2>",
        _figure_html(
            charts[PRECISION_MAP],
            "precision map: one row per layer, one column per component",
            "One row per layer in model order, one column per component; the colour is the precision "
            "the compiled model stores or computes that component in (– : the layer has no such "
            "component, e.g. an attention block has no weights).",
            "No layers.",
        ),
        "<h2>Memory by layer type</h2>",
        _figure_html(
            charts[MEMORY_BY_TYPE],
            "stored bytes per layer type, before and after",
            f"Stored bytes of the constant tensors (weights, tables, scales) per layer type. "
            f"'{NO_LAYER}' holds constants no layer reads (rotary tables, masks, shape constants).",
            "No constants.",
        ),
        _memory_table(a),
        "<h2>Per-layer sensitivity</h2>",
        _figure_html(
            charts[SENSITIVITY],
            "per-layer sensitivity, 1 - cosine on a log scale",
            "For each layer alone at its chosen precision (every other layer at F32): how far the "
            "outputs move, as 1 − cosine against the original. Longer bars are the layers to keep "
            "more precise; the colour is the layer's precision.",
            sensitivity_missing,
        ),
        "<h2>Error per output</h2>",
        _figure_html(
            charts[OUTPUT_ERROR],
            "error per output",
            "The compiled model against the original, every output over all its elements.",
            "No output was compared.",
        ),
        _outputs_table(a),
        "<h2>Layers</h2>",
        _layers_table(a),
        f'<h2>Notes</h2><ul id="notes">{notes}</ul>' if notes else "",
    ]
    title = f"bitnet-onnx analysis: {a.model}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(part for part in body if part)
        + "\n</body></html>\n"
    )


# -- writing ------------------------------------------------------------------------------------------


def _render(analysis: Analysis, folder: Path) -> None:
    import matplotlib

    charts: dict[str, str | None] = dict.fromkeys(CHART_FILES)
    with matplotlib.rc_context({"font.family": "DejaVu Sans", "font.size": 9, "svg.hashsalt": "bitnet-onnx"}):
        if analysis.layers:
            _precision_map(analysis, folder / PRECISION_MAP)
            charts[PRECISION_MAP] = PRECISION_MAP
        if analysis.memory_by_type_before:
            _memory_by_type(analysis, folder / MEMORY_BY_TYPE)
            charts[MEMORY_BY_TYPE] = MEMORY_BY_TYPE
        if any(layer.sensitivity is not None for layer in analysis.layers):
            _sensitivity(analysis, folder / SENSITIVITY)
            charts[SENSITIVITY] = SENSITIVITY
        if analysis.accuracy:
            _output_error(analysis, folder / OUTPUT_ERROR)
            charts[OUTPUT_ERROR] = OUTPUT_ERROR
    (folder / INDEX).write_text(_page(analysis, charts), encoding="utf-8")


def write_report(analysis: Analysis, out_dir: str | os.PathLike[str]) -> Path:
    """Write the report into `out_dir` (created when missing; see the module docstring) and return
    the path of its index.html."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"report folder {out} is a file; give a folder path (it is created when missing)")
    parent = out.parent
    if not parent.is_dir():
        raise ConfigError(
            f"cannot write the report into {out}: the folder {parent} does not exist; create it first"
        )
    try:
        out.mkdir(exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".report.", suffix=".tmp", dir=out))
        try:
            _render(analysis, staging)
            for name in CHART_FILES:
                if (staging / name).exists():
                    os.replace(staging / name, out / name)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        (out / name).unlink()
            os.replace(staging / INDEX, out / INDEX)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the report into {out}: {exc.strerror or exc}; check the path"
        ) from exc
    logger.info("wrote the analysis report %s", out / INDEX)
    return out / INDEX
