"""The pass protocol, the context passes share, and the pipeline runner.

Contract (after onnx_ir's passes): a pass is an object with a stable `name`, the names of the passes
it `requires`, the post-conditions it `ensures` and `run(graph, ctx) -> PassResult`. Passes edit the
onnx-graphsurgeon graph in place and *return* what they did, their numbers in the result's `stats`;
they never log. The pipeline checks each pass's requirements, times it, checks its post-conditions
(a broken one is a bug, reported as a PassError naming the pass), turns the result into a PassRecord
and hands the record to every instrument: the log lines and warnings (`instruments.LogRecords`), the
JSONL log, --dump-after, progress. Data flows one way: a pass reads what earlier passes left in the
context and writes only the fields it owns.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper

from bitnet_onnx.config.config import MixedPrecisionConfig
from bitnet_onnx.config.policy import PolicyEngine
from bitnet_onnx.config.report import CompileReport
from bitnet_onnx.core.dtypes import DType
from bitnet_onnx.core.errors import MixedPrecisionError
from bitnet_onnx.core.layers import Layer, SupportMatrix
from bitnet_onnx.core.log import Change, PassRecord
from bitnet_onnx.core.plan import LayerPlan

__all__ = [
    "Condition",
    "Instrument",
    "Pass",
    "PassContext",
    "PassError",
    "PassResult",
    "Pipeline",
    "SensitivityMeasure",
    "context_set",
    "graph_bytes",
]


_BUG = (
    "This is a bug in bitnet-onnx; rerun with --debug and report the traceback with the model's opset "
    "and producer."
)


class PassError(MixedPrecisionError):
    """A pass failed for a reason that is not the user's input: names the pass and those before it."""


@dataclass(frozen=True)
class PassResult:
    modified: bool
    changes: tuple[Change, ...] = ()
    warnings: tuple[str, ...] = ()
    stats: Mapping[str, int | float | str] = field(default_factory=dict)


SensitivityMeasure = Callable[
    [Sequence[Layer], Mapping[str, Collection[DType]], SupportMatrix], Mapping[str, Mapping[DType, float]]
]
"""(layers, layer name → the precisions wanted, support matrix) → layer name → precision → the
measured 1 − cosine of the outputs with that layer alone at that precision (a precision with no
candidate may be missing). `optimize.sensitivity.measurer` makes one."""


@dataclass
class PassContext:
    """What the passes share. Each field is written by one pass (named in its comment) and read by
    the passes after it."""

    config: MixedPrecisionConfig  # frozen; set by compile()
    policy: PolicyEngine | None = None  # set by compile()
    # (batches, what they are): the sample inputs validate runs on; set by compile()
    calibration: tuple[tuple[Mapping[str, np.ndarray], ...], str] | None = None
    # the batches GPTQ collects layer activations on (`_hessians`); set by compile()
    conversion_inputs: tuple[Mapping[str, np.ndarray], ...] | None = None
    model_dir: Path | None = None  # where external data of the input lives; set by compile()
    custom_op_libraries: tuple[Path, ...] = ()  # the user's libraries for other custom ops; compile()
    # The input's node metadata_props by node name (gs drops them on import), e.g. the dynamo
    # exporter's module scopes that name layers; compile() and passes.annotate() from the load.
    node_metadata: Mapping[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    # measures the sensitivity a policy's condition asks for (None: refused); compile()'s argument
    sensitivity: SensitivityMeasure | None = None
    seed: int = 0
    # compile(); False: no choice depends on timings taken on this machine (rewrite's I8 kernel
    # takes its fixed preference), so tests and reproducible builds do not depend on the CPU's load.
    measure_kernels: bool = True
    layers: dict[str, Layer] = field(default_factory=dict)  # annotate_layers
    plan: dict[str, LayerPlan] = field(default_factory=dict)  # assign_precision (optimize may rewrite it)
    annotations: dict[str, dict[str, str]] = field(default_factory=dict)  # node name → metadata_props
    original: onnx.ModelProto | None = None  # the normalized input, for numeric validation; normalize
    report: CompileReport | None = None  # validate
    passes_run: list[str] = field(default_factory=list)  # the pipeline


Condition = Callable[[gs.Graph, PassContext], "str | None"]
"""A post-condition of a pass: what is wrong after it ran (a sentence), or None."""


def context_set(name: str) -> Condition:
    """The post-condition that the pass set the context's field `name` (it is no longer None)."""

    def check(graph: gs.Graph, ctx: PassContext) -> str | None:
        return f"ctx.{name} is not set" if getattr(ctx, name) is None else None

    return check


class Pass(Protocol):
    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]]
    ensures: ClassVar[tuple[Condition, ...]]

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult: ...


class Instrument(Protocol):
    """Observes the pipeline; receives each pass's record and the graph as it stands after it."""

    def after_pass(self, record: PassRecord, graph: gs.Graph, ctx: PassContext) -> None: ...


def _all_nodes(graph: gs.Graph) -> int:
    count = 0
    for node in graph.nodes:
        count += 1
        for sub in node.subgraphs():
            count += _all_nodes(sub)
    return count


def graph_bytes(graph: gs.Graph) -> int:
    """Bytes of every constant tensor in the graph (initializers and Constant nodes' values)."""
    total = 0
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant):
            total += _itemsize(tensor.dtype) * math.prod(tensor.shape)
    return total


def _itemsize(dtype: np.dtype | int) -> int:
    # gs keeps the ONNX element type (an int) of a tensor it has no numpy type for, e.g. bfloat16.
    return np.dtype(helper.tensor_dtype_to_np_dtype(dtype) if isinstance(dtype, int) else dtype).itemsize


class Pipeline:
    def __init__(self, passes: Sequence[Pass], instruments: Sequence[Instrument] = ()) -> None:
        names = [p.name for p in passes]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate pass names in pipeline: {names}")
        self.passes = tuple(passes)
        self.instruments = tuple(instruments)

    def run(self, graph: gs.Graph, ctx: PassContext) -> list[PassRecord]:
        run_id = uuid.uuid4().hex[:12]
        records: list[PassRecord] = []
        for seq, p in enumerate(self.passes):
            missing = [r for r in p.requires if r not in ctx.passes_run]
            if missing:
                raise PassError(f"pass {p.name!r} requires {missing}, which did not run before it")
            nodes_before, bytes_before = _all_nodes(graph), graph_bytes(graph)
            start = time.perf_counter()
            try:
                result = p.run(graph, ctx)
            except MixedPrecisionError:
                raise
            except Exception as exc:
                raise PassError(
                    f"pass {p.name!r} failed (after {ctx.passes_run or 'no other passes'}): "
                    f"{type(exc).__name__}: {exc}. {_BUG}"
                ) from exc
            seconds = time.perf_counter() - start
            broken = [problem for condition in p.ensures if (problem := condition(graph, ctx)) is not None]
            if broken:
                raise PassError(f"pass {p.name!r} broke its post-conditions: {'; '.join(broken)}. {_BUG}")
            ctx.passes_run.append(p.name)
            record = PassRecord(
                pass_name=p.name,
                seq=seq,
                run=run_id,
                seconds=seconds,
                modified=result.modified,
                nodes_before=nodes_before,
                nodes_after=_all_nodes(graph),
                bytes_before=bytes_before,
                bytes_after=graph_bytes(graph),
                changes=result.changes,
                warnings=result.warnings,
                stats=result.stats,
            )
            for instrument in self.instruments:
                instrument.after_pass(record, graph, ctx)
            records.append(record)
        return records
