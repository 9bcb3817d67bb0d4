from __future__ import annotations

import logging
from dataclasses import replace
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from bitnet_onnx.core.errors import ConfigError
from bitnet_onnx.core.log import Change
from bitnet_onnx.passes.base import (
    Condition,
    PassContext,
    PassError,
    PassResult,
    Pipeline,
    context_set,
    graph_bytes,
)
from bitnet_onnx.passes.instruments import LogRecords


def _graph() -> gs.Graph:
    x = gs.Variable("x", dtype=np.float32, shape=(1, 4))
    w = gs.Constant("w", np.ones((4, 3), dtype=np.float32))
    y = gs.Variable("y", dtype=np.float32, shape=(1, 3))
    return gs.Graph(nodes=[gs.Node("MatMul", "mm", inputs=[x, w], outputs=[y])], inputs=[x], outputs=[y])


class _HalveWeights:
    name: ClassVar[str] = "halve"
    requires: ClassVar[tuple[str, ...]] = ()
    ensures: ClassVar[tuple[Condition, ...]] = ()

    def run(self, graph, ctx):
        w = graph.tensors()["w"]
        w.values = w.values.astype(np.float16)
        return PassResult(True, changes=(Change("mm", "rewrite", dtype="F16"),), stats={"tensors": 1})


class _NeedsHalve:
    name: ClassVar[str] = "after"
    requires: ClassVar[tuple[str, ...]] = ("halve",)
    ensures: ClassVar[tuple[Condition, ...]] = ()

    def run(self, graph, ctx):
        return PassResult(False, warnings=("nothing to do",))


class _Crash:
    name: ClassVar[str] = "crash"
    requires: ClassVar[tuple[str, ...]] = ()
    ensures: ClassVar[tuple[Condition, ...]] = ()

    def run(self, graph, ctx):
        raise KeyError("boom")


class _UserError:
    name: ClassVar[str] = "user"
    requires: ClassVar[tuple[str, ...]] = ()
    ensures: ClassVar[tuple[Condition, ...]] = ()

    def run(self, graph, ctx):
        raise ConfigError("layer 'q' has no weights")


class _Collect:
    def __init__(self):
        self.seen = []

    def after_pass(self, record, graph, ctx):
        self.seen.append((record.pass_name, graph_bytes(graph)))


def test_records_sizes_changes_and_order():
    graph, ctx, inst = _graph(), PassContext(config=None), _Collect()
    records = Pipeline([_HalveWeights(), _NeedsHalve()], [inst]).run(graph, ctx)
    assert [r.pass_name for r in records] == ["halve", "after"]
    assert records[0].bytes_before == 48 and records[0].bytes_after == 24
    assert records[0].nodes_before == records[0].nodes_after == 1
    assert records[0].changes[0].dtype == "F16" and records[0].stats == {"tensors": 1}
    assert records[1].warnings == ("nothing to do",) and not records[1].modified
    assert inst.seen == [("halve", 24), ("after", 24)]
    assert ctx.passes_run == ["halve", "after"]
    assert len({r.run for r in records}) == 1


def test_missing_requirement_is_reported():
    with pytest.raises(PassError, match=r"'after' requires \['halve'\]"):
        Pipeline([_NeedsHalve()]).run(_graph(), PassContext(config=None))


def test_unexpected_exception_becomes_pass_error_naming_the_passes_before():
    with pytest.raises(PassError, match=r"'crash' failed \(after \['halve'\]\): KeyError") as info:
        Pipeline([_HalveWeights(), _Crash()]).run(_graph(), PassContext(config=None))
    assert isinstance(info.value.__cause__, KeyError)


def test_user_errors_pass_through_unchanged():
    with pytest.raises(ConfigError, match="layer 'q' has no weights"):
        Pipeline([_UserError()]).run(_graph(), PassContext(config=None))


def test_duplicate_pass_names_rejected():
    with pytest.raises(ValueError, match="duplicate pass names"):
        Pipeline([_HalveWeights(), _HalveWeights()])


class _Promises:
    """Sets ctx.report when `keep` is True; ensures it (and that the weights stay F32)."""

    name: ClassVar[str] = "promise"
    requires: ClassVar[tuple[str, ...]] = ()
    ensures: ClassVar[tuple[Condition, ...]] = (
        context_set("report"),
        lambda graph, ctx: None if graph.tensors()["w"].values.dtype == np.float32 else "weights not F32",
    )

    def __init__(self, keep: bool) -> None:
        self.keep = keep

    def run(self, graph, ctx):
        if self.keep:
            ctx.report = "done"
        return PassResult(False)


@pytest.mark.parametrize(
    ("passes", "broken"),
    [
        ([_Promises(keep=False)], r"ctx\.report is not set"),
        ([_HalveWeights(), _Promises(keep=True)], r"weights not F32"),
        ([_HalveWeights(), _Promises(keep=False)], r"ctx\.report is not set; weights not F32"),
    ],
)
def test_a_broken_post_condition_is_a_pass_error_naming_the_pass(passes, broken):
    ctx = PassContext(config=None)
    with pytest.raises(
        PassError, match=rf"pass 'promise' broke its post-conditions: {broken}\. This is a bug"
    ):
        Pipeline(passes).run(_graph(), ctx)
    assert "promise" not in ctx.passes_run


def test_kept_post_conditions_let_the_pipeline_go_on():
    ctx = PassContext(config=None)
    records = Pipeline([_Promises(keep=True), _HalveWeights()]).run(_graph(), ctx)
    assert [r.pass_name for r in records] == ["promise", "halve"] and ctx.report == "done"


@pytest.mark.parametrize(
    ("level", "warning_level"), [(logging.INFO, logging.WARNING), (logging.DEBUG, logging.DEBUG)]
)
def test_log_records_logs_the_summary_the_stats_and_every_warning_at_its_levels(caplog, level, warning_level):
    long = "x" * 400
    records = Pipeline([_HalveWeights(), _NeedsHalve()]).run(_graph(), PassContext(config=None))
    records[1] = replace(records[1], warnings=("nothing to do", long))
    instrument = LogRecords(level=level, warning_level=warning_level)
    with caplog.at_level(logging.DEBUG, logger="bitnet_onnx.passes.instruments"):
        for record in records:
            instrument.after_pass(record, _graph(), PassContext(config=None))
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    seconds = [f"{r.seconds:.3f}" for r in records]
    assert lines == [
        (level, f"halve: {seconds[0]}s, nodes 1→1, 1 changes, 0 warnings"),
        (logging.DEBUG, "halve stats: tensors=1"),
        (level, f"after: {seconds[1]}s, nodes 1→1, 0 changes, 2 warnings"),
        (warning_level, "after: nothing to do"),
        (warning_level, f"after: {'x' * 300}... (the pass log holds the full text)"),
    ]
