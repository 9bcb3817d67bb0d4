"""Pass log records: one JSON object per line, one line per pass, and a table renderer.

A record says what a pass changed (per-layer decisions with the rule that made each), node counts and
initializer bytes before and after, warnings, and pass-specific counters. `bitnet-onnx log FILE`
renders a file of them; tests compare them after dropping the volatile fields (`run`, `seconds`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from bitnet_onnx.core.errors import UnsupportedModelError

__all__ = [
    "LOG_VERSION",
    "VOLATILE_FIELDS",
    "Change",
    "PassRecord",
    "read_log",
    "render_table",
    "write_record",
]

LOG_VERSION = 1
VOLATILE_FIELDS = ("run", "seconds")


@dataclass(frozen=True)
class Change:
    """One thing a pass did to one layer (or node): a decision, a rewrite, a removal."""

    layer: str | None
    action: str  # "assign", "rewrite", "remove", "insert", "annotate", ...
    component: str | None = None
    node: str | None = None
    dtype: str | None = None
    source: str | None = None  # which config entry / policy rule / pattern decided
    overrode: str | None = None  # what that decision replaced, e.g. "layer_type:linear→I8"
    detail: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class PassRecord:
    pass_name: str
    seq: int
    run: str
    seconds: float
    modified: bool
    nodes_before: int
    nodes_after: int
    bytes_before: int
    bytes_after: int
    changes: tuple[Change, ...] = ()
    warnings: tuple[str, ...] = ()
    stats: Mapping[str, int | float | str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "v": LOG_VERSION,
            "run": self.run,
            "seq": self.seq,
            "pass": self.pass_name,
            "seconds": round(self.seconds, 6),
            "modified": self.modified,
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "stats": dict(self.stats),
            "changes": [c.to_json() for c in self.changes],
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PassRecord:
        return cls(
            pass_name=data["pass"],
            seq=int(data["seq"]),
            run=str(data.get("run", "")),
            seconds=float(data.get("seconds", 0.0)),
            modified=bool(data["modified"]),
            nodes_before=int(data["nodes_before"]),
            nodes_after=int(data["nodes_after"]),
            bytes_before=int(data["bytes_before"]),
            bytes_after=int(data["bytes_after"]),
            # to_json leaves out None fields, `layer` included
            changes=tuple(Change(**{"layer": None, **c}) for c in data.get("changes", ())),
            warnings=tuple(data.get("warnings", ())),
            stats=dict(data.get("stats", {})),
        )


def write_record(stream: IO[str], record: PassRecord) -> None:
    stream.write(json.dumps(record.to_json(), sort_keys=True) + "\n")
    stream.flush()


def read_log(path: str | Path) -> Iterator[PassRecord]:
    """Yield the records of a JSONL pass log; a malformed line is an error naming file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UnsupportedModelError(f"cannot read pass log {path}: {exc.strerror}") from exc
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield PassRecord.from_json(json.loads(line))
        except (ValueError, KeyError, TypeError) as exc:
            raise UnsupportedModelError(
                f"{path}:{lineno}: not a bitnet-onnx pass record ({exc}); "
                "pass a file written by `bitnet-onnx compile --log`"
            ) from exc


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _table(headers: list[str], rows: Iterable[list[str]]) -> list[str]:
    rows = list(rows)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*headers), fmt.format(*("-" * w for w in widths)), *(fmt.format(*r) for r in rows)]


def render_table(records: Iterable[PassRecord], *, changes: bool = True) -> str:
    """One summary row per pass, then (optionally) each pass's changes and warnings."""
    records = list(records)
    summary = _table(
        ["#", "pass", "seconds", "nodes", "bytes", "changes", "warnings"],
        (
            [
                str(r.seq),
                r.pass_name,
                f"{r.seconds:.3f}",
                f"{r.nodes_before} → {r.nodes_after}",
                f"{_human_bytes(r.bytes_before)} → {_human_bytes(r.bytes_after)}",
                str(len(r.changes)),
                str(len(r.warnings)),
            ]
            for r in records
        ),
    )
    out = summary
    if changes:
        for r in records:
            if not (r.changes or r.warnings):
                continue
            out += ["", f"[{r.seq}] {r.pass_name}"]
            if r.changes:
                out += [
                    "  " + line
                    for line in _table(
                        ["layer", "action", "component", "dtype", "source", "overrode", "detail"],
                        (
                            [
                                c.layer or "-",
                                c.action,
                                c.component or "-",
                                c.dtype or "-",
                                c.source or "-",
                                c.overrode or "-",
                                c.detail or "",
                            ]
                            for c in r.changes
                        ),
                    )
                ]
            out += [f"  warning: {w}" for w in r.warnings]
    return "\n".join(out)
