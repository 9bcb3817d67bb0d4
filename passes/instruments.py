"""Instruments: what watches the pipeline without being a pass (TVM's PassInstrument).

Each gets every `PassRecord` and the graph as it stands after that pass:
- `LogRecords` logs one line per pass (time, nodes, changes, warnings, then its stats at DEBUG) and
  each of its warnings, cut to 300 characters (the record keeps all of it), at WARNING level so a
  user sees them without reading the log (a sweep over candidates lowers both levels);
- `JsonlLog` writes the record as one JSON line to a stream (flushed, so a failed compile leaves
  the records of the passes that ran);
- `DumpAfter` writes the model after each named pass to `<folder>/NNN_<pass>.onnx`, NNN its
  position in the pipeline, with the annotations stamped into node metadata_props (so Netron
  shows what the compile knew at that point);
- `ProgressBar` shows a tqdm bar over the passes on stderr, named after the pass that runs next.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import IO

import onnx_graphsurgeon as gs
from tqdm import tqdm

from bitnet_onnx.core.log import PassRecord, write_record
from bitnet_onnx.passes._graph import ModelInfo, export_model, stamp_annotations
from bitnet_onnx.passes.base import PassContext
from bitnet_onnx.runtime.model_file import write_model

__all__ = ["DumpAfter", "JsonlLog", "LogRecords", "ProgressBar"]

logger = logging.getLogger(__name__)

_WARNING_CHARS = 300  # a warning logged longer than this is cut; the pass record keeps all of it


class LogRecords:
    """Logs each pass's record: its summary at `level`, its stats at DEBUG, its warnings at
    `warning_level`."""

    def __init__(self, level: int = logging.INFO, warning_level: int = logging.WARNING) -> None:
        self.level = level
        self.warning_level = warning_level

    def after_pass(self, record: PassRecord, graph: gs.Graph, ctx: PassContext) -> None:
        logger.log(
            self.level,
            "%s: %.3fs, nodes %d→%d, %d changes, %d warnings",
            record.pass_name,
            record.seconds,
            record.nodes_before,
            record.nodes_after,
            len(record.changes),
            len(record.warnings),
        )
        if record.stats:
            stats = ", ".join(f"{key}={value}" for key, value in record.stats.items())
            logger.debug("%s stats: %s", record.pass_name, stats)
        for warning in record.warnings:
            logger.log(self.warning_level, "%s: %s", record.pass_name, _shortened(warning))


def _shortened(warning: str) -> str:
    if len(warning) <= _WARNING_CHARS:
        return warning
    return f"{warning[:_WARNING_CHARS]}... (the pass log holds the full text)"


class JsonlLog:
    """Writes each pass record to `stream` as a JSON line."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def after_pass(self, record: PassRecord, graph: gs.Graph, ctx: PassContext) -> None:
        write_record(self.stream, record)


class DumpAfter:
    """Writes the model after each pass in `passes` into `folder` (created when first needed)."""

    def __init__(self, passes: Collection[str], folder: Path, info: ModelInfo | None = None) -> None:
        self.passes = frozenset(passes)
        self.folder = folder
        self.info = info
        self.written: list[Path] = []

    def after_pass(self, record: PassRecord, graph: gs.Graph, ctx: PassContext) -> None:
        if record.pass_name not in self.passes:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        model = export_model(graph, self.info)
        stamp_annotations(model, ctx.annotations)
        path = write_model(model, self.folder / f"{record.seq:03d}_{record.pass_name}.onnx", ctx.model_dir)
        self.written.append(path)
        logger.info("dumped the model after %s to %s", record.pass_name, path)


class ProgressBar:
    """One tick per pass on stderr; disabled unless `enabled`."""

    def __init__(self, pass_names: Sequence[str], enabled: bool) -> None:
        self.names = tuple(pass_names)
        self.bar = tqdm(
            total=len(self.names),
            desc=self.names[0] if self.names else "",
            unit="pass",
            file=sys.stderr,
            disable=not enabled,
            leave=False,
        )

    def after_pass(self, record: PassRecord, graph: gs.Graph, ctx: PassContext) -> None:
        self.bar.update(1)
        following = record.seq + 1
        if following < len(self.names):
            self.bar.set_description(self.names[following])

    def close(self) -> None:
        self.bar.close()
