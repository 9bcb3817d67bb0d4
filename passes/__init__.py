"""The compiler's passes. `compile_passes()` is the pipeline, in order: normalize, annotate_layers,
assign_precision, rewrite, fold_converts, fuse_siblings, validate (ARCHITECTURE.md's data flow).
`annotate()` runs its first two passes alone: what analysis, the precision manager and sensitivity
start from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from bitnet_onnx.config.config import MixedPrecisionConfig, MixedPrecisionStrategy
from bitnet_onnx.passes._graph import import_graph
from bitnet_onnx.passes.base import PassContext, Pipeline
from bitnet_onnx.passes.instruments import LogRecords
from bitnet_onnx.passes.p10_normalize import NormalizePass
from bitnet_onnx.passes.p20_annotate_layers import AnnotateLayersPass
from bitnet_onnx.passes.p30_assign_precision import AssignPrecisionPass
from bitnet_onnx.passes.p50_rewrite import RewritePass
from bitnet_onnx.passes.p60_fold_converts import FoldConvertsPass
from bitnet_onnx.passes.p65_fuse_siblings import FuseSiblingsPass
from bitnet_onnx.passes.p70_validate import ValidatePass

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

    from bitnet_onnx.config.report import Thresholds
    from bitnet_onnx.passes._graph import LoadedModel
    from bitnet_onnx.passes.base import Pass

__all__ = ["annotate", "compile_passes"]


def annotate(loaded: LoadedModel, ctx: PassContext | None = None) -> tuple[gs.Graph, PassContext]:
    """The normalized graph of `loaded` and the context normalize and annotate_layers leave (its
    `layers`, `annotations` and `original` set). `ctx` defaults to a custom-strategy config."""
    if ctx is None:
        ctx = PassContext(config=MixedPrecisionConfig.new(MixedPrecisionStrategy.CUSTOM))
    ctx.node_metadata = loaded.info.node_metadata
    graph = import_graph(loaded)
    Pipeline((NormalizePass(), AnnotateLayersPass()), (LogRecords(),)).run(graph, ctx)
    return graph, ctx


def compile_passes(
    *,
    memory_budget: int | None = None,
    strict: bool = True,
    dims: Mapping[str, int] | None = None,
    thresholds: tuple[str, Thresholds] | None = None,
) -> tuple[Pass, ...]:
    """The compile pipeline. `memory_budget` (bytes) goes to assign_precision; `strict`, `dims`
    (symbolic dims of generated sample inputs) and `thresholds` (what sets them, and their values;
    default: the strategy's) to validate."""

    return (
        NormalizePass(),
        AnnotateLayersPass(),
        AssignPrecisionPass(memory_budget=memory_budget),
        RewritePass(),
        FoldConvertsPass(),
        FuseSiblingsPass(),
        ValidatePass(strict=strict, dims=dims, thresholds=thresholds),
    )
