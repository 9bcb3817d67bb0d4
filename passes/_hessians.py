"""The calibration activations of the layers whose weights GPTQ converts (`numerics.gptq`).

A layer's WEIGHTS decision with conversion strategy GPTQ and a quantized precision asks for
H = 2·XᵀX/n of its input X. They are collected once per compile: the original (normalized) model
`ctx.original` runs on every batch of `ctx.conversion_inputs` with the X of every such layer
added as an output, and each X is accumulated into its layer's `Hessian` (layers reading the same
X share one). X is the anchor's first input (MatMul's A, Gemm's A transposed back when transA=1,
MatMulNBits' A), so only LINEAR and OUTPUT layers can ask; any other layer, or no calibration
inputs, is a ConfigError naming the layers and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from bitnet_onnx.core.dtypes import ConversionStrategy
from bitnet_onnx.core.errors import ConfigError
from bitnet_onnx.core.interface import knob
from bitnet_onnx.core.layers import ComponentType, LayerType
from bitnet_onnx.numerics.gptq import Hessian
from bitnet_onnx.passes.base import PassContext
from bitnet_onnx.runtime import check_feeds
from bitnet_onnx.runtime.model_file import session_for

__all__ = ["layer_hessians"]

_MATRIX_LAYERS = (LayerType.LINEAR, LayerType.OUTPUT)


def layer_hessians(graph: gs.Graph, ctx: PassContext) -> dict[str, np.ndarray]:
    """H [K, K] by layer name for every layer whose weights GPTQ converts (module docstring)."""
    wanted = [
        plan.layer
        for plan in ctx.plan.values()
        if (decision := plan.decisions.get(ComponentType.WEIGHTS)) is not None
        and decision.conversion_strategy is ConversionStrategy.GPTQ
        and not decision.dtype.is_float
    ]
    if not wanted:
        return {}
    others = [
        f"{layer.name!r} ({layer.layer_type.value})"
        for layer in wanted
        if layer.layer_type not in _MATRIX_LAYERS
    ]
    if others:
        raise ConfigError(
            f"conversion strategy gptq applies to linear and output layers (a MatMul or Gemm with an input "
            f"to calibrate on), not to {', '.join(others)}; give those layers another conversion_strategy"
        )
    if ctx.conversion_inputs is None or ctx.original is None:
        names = ", ".join(repr(layer.name) for layer in wanted[:3]) + (" ..." if len(wanted) > 3 else "")
        raise ConfigError(
            f"conversion strategy gptq (layers {names}) quantizes weights with the layers' calibration "
            "activations, and no calibration inputs were given: "
            + knob(
                "pass compile(..., calibration=Calibration.from_npz(path, model)) or a feed dict",
                "pass --inputs NPZ (samples stacked along the leading axis, as numpy.savez writes them)",
            )
            + ", or use another conversion_strategy"
        )
    nodes = {node.name: node for node in graph.nodes}
    inputs: dict[str, tuple[str, bool]] = {}  # layer → (X's name, read transposed)
    for layer in wanted:
        anchor = nodes[layer.nodes[0]]
        inputs[layer.name] = (
            anchor.inputs[0].name,
            anchor.op == "Gemm" and bool(anchor.attrs.get("transA", 0)),
        )
    hessians = _accumulate(ctx, inputs)
    return {layer: hessians[x].matrix for layer, x in inputs.items()}


def _accumulate(ctx: PassContext, inputs: Mapping[str, tuple[str, bool]]) -> dict[tuple[str, bool], Hessian]:
    assert ctx.original is not None and ctx.conversion_inputs is not None
    model = ctx.original
    graph_inputs = {value.name for value in model.graph.input}
    declared = {value.name for value in model.graph.output}
    added = sorted({name for name, _ in inputs.values()} - graph_inputs - declared)
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in added)
    try:
        session = session_for(
            model, ctx.model_dir, custom_op_libraries=ctx.custom_op_libraries, prepack=False
        )
    finally:
        del model.graph.output[len(model.graph.output) - len(added) :]
    names = [o.name for o in session.get_outputs()]
    hessians: dict[tuple[str, bool], Hessian] = {}
    for batch in ctx.conversion_inputs:
        check_feeds(session, batch)
        try:
            run = dict(zip(names, session.run(names, dict(batch)), strict=True))
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            raise ConfigError(f"the original model does not run on the calibration inputs: {exc}") from exc
        for key in set(inputs.values()):
            name, transposed = key
            x = np.asarray(batch[name] if name in graph_inputs else run[name])
            x = x.T if transposed else x
            hessian = hessians.setdefault(key, Hessian(x.shape[-1]))
            hessian.add(x)
    return hessians
