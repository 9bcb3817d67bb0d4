"""The compiler's passes. `compile_passes()` is the pipeline, in order: normalize, annotate_layers,
assign_precision, rewrite, fold_converts, validate (ARCHITECTURE.md's data flow).

The pass modules are imported when the pipeline is built, so importing `bitnet_onnx.passes.base`
(or one pass) does not load every pass and its dependencies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bitnet_onnx.passes.base import Pass

__all__ = ["compile_passes"]


def compile_passes(
    *, memory_budget: int | None = None, strict: bool = True, dims: Mapping[str, int] | None = None
) -> tuple[Pass, ...]:
    """The compile pipeline. `memory_budget` (bytes) goes to assign_precision; `strict` and `dims`
    (symbolic dims of generated sample inputs) to validate."""
    from bitnet_onnx.passes.p10_normalize import NormalizePass
    from bitnet_onnx.passes.p20_annotate_layers import AnnotateLayersPass
    from bitnet_onnx.passes.p30_assign_precision import AssignPrecisionPass
    from bitnet_onnx.passes.p50_rewrite import RewritePass
    from bitnet_onnx.passes.p60_fold_converts import FoldConvertsPass
    from bitnet_onnx.passes.p70_validate import ValidatePass

    return (
        NormalizePass(),
        AnnotateLayersPass(),
        AssignPrecisionPass(memory_budget=memory_budget),
        RewritePass(),
        FoldConvertsPass(),
        ValidatePass(strict=strict, dims=dims),
    )
