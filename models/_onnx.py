"""Writing ONNX graphs the way exporters name them, and saving them.

`GraphBuilder` appends nodes and initializers straight into one `ModelProto` (never into lists that
are copied later), so a model's weights are held once while it is built. Names follow torch.onnx:
a node in scope `/model/layers.0/self_attn/q_proj` of type MatMul is called
`/model/layers.0/self_attn/q_proj/MatMul` (`..._1`, `..._2` for the next ones in the same scope) and
its output `/model/layers.0/self_attn/q_proj/MatMul_output_0`; weights are initializers under the
framework's parameter names (`model.layers.0.self_attn.q_proj.weight`); small constants (shapes,
axes, scalars) are `Constant` nodes, as the TorchScript exporter writes them.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from bitnet_onnx.core.errors import ConfigError

__all__ = ["MAX_OPSET", "MIN_OPSET", "GraphBuilder", "check_opset", "require", "save_model"]

MIN_OPSET = 13  # Unsqueeze/Squeeze axes as inputs and Softmax over one axis start here
MAX_OPSET = 25  # the newest opset onnxruntime 1.32 runs

_Attr = int | float | str | Sequence[int] | Sequence[float]


def check_opset(opset: int, least: int, feature: str) -> list[str]:
    """Problems with `opset` for a model that uses `feature` (which needs opset >= `least`)."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        return [f"opset {opset} is outside the supported range {MIN_OPSET}..{MAX_OPSET}"]
    if opset < least:
        return [f"{feature} needs opset >= {least}, got opset {opset}; raise `opset` or pick another style"]
    return []


class GraphBuilder:
    """One model under construction at one opset of the default ONNX domain."""

    def __init__(self, name: str, opset: int) -> None:
        self.opset = opset
        self.model = onnx.ModelProto()
        self.graph = self.model.graph
        self.graph.name = name
        self.model.opset_import.append(helper.make_opsetid("", opset))
        self.model.ir_version = helper.find_min_ir_version_for(self.model.opset_import)
        self.model.producer_name = "bitnet-onnx models"
        self._counts: collections.Counter[str] = collections.Counter()

    # -- graph boundary ------------------------------------------------------------------------
    def input(self, name: str, elem_type: int, shape: Sequence[int | str]) -> str:
        self.graph.input.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, name: str, elem_type: int, shape: Sequence[int | str]) -> None:
        self.graph.output.append(helper.make_tensor_value_info(name, elem_type, shape))

    # -- tensors ------------------------------------------------------------------------------
    def initializer(self, name: str, array: np.ndarray) -> str:
        """Adds `array` as an initializer called `name` (its bytes are copied into the model)."""
        tensor = self.graph.initializer.add()
        tensor.name = name
        tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        tensor.dims.extend(array.shape)
        tensor.raw_data = array.astype(
            array.dtype.newbyteorder("<"), copy=False
        ).tobytes()  # ONNX is little-endian
        return name

    def constant(self, scope: str, value: np.ndarray | float | int | Sequence[int]) -> str:
        """A `Constant` node: scalars as Python numbers become float32/int64 arrays, lists int64."""
        array = _as_array(value)
        return self.node("Constant", [], scope, value=onnx.numpy_helper.from_array(array))

    def ints(self, scope: str, values: Sequence[int]) -> str:
        """A 1-D int64 `Constant` (shapes, axes, slice bounds)."""
        return self.constant(scope, np.asarray(values, dtype=np.int64))

    # -- nodes --------------------------------------------------------------------------------
    def node(
        self,
        op_type: str,
        inputs: Sequence[str],
        scope: str,
        *,
        output: str | None = None,
        **attrs: _Attr | TensorProto,
    ) -> str:
        """Appends one single-output node; returns its output name (`output` names a graph output)."""
        base = f"{scope}/{op_type}"
        seen = self._counts[base]
        self._counts[base] += 1
        name = base if seen == 0 else f"{base}_{seen}"
        out = output or f"{name}_output_0"
        self.graph.node.append(helper.make_node(op_type, list(inputs), [out], name=name, **attrs))
        return out

    def seq_len(self, ids: str, scope: str) -> str:
        """The length of axis 1 of `ids` as a 1-D int64 tensor [seq] (Shape → Gather → Unsqueeze)."""
        length = self.node(
            "Gather",
            [self.node("Shape", [ids], scope), self.constant(scope, np.asarray(1, np.int64))],
            scope,
            axis=0,
        )
        return self.node("Unsqueeze", [length, self.ints(scope, [0])], scope)

    def reduce_mean(self, x: str, scope: str) -> str:
        """Mean over the last axis, keeping it (axes moved from attribute to input at opset 18)."""
        if self.opset >= 18:
            return self.node("ReduceMean", [x, self.ints(scope, [-1])], scope, keepdims=1)
        return self.node("ReduceMean", [x], scope, axes=[-1], keepdims=1)

    def finish(self, doc: str) -> onnx.ModelProto:
        self.graph.doc_string = doc
        return self.model


def _as_array(value: np.ndarray | float | int | Sequence[int]) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, float):
        return np.asarray(value, dtype=np.float32)
    return np.asarray(value, dtype=np.int64)


def save_model(model: onnx.ModelProto, path: str | Path, *, external_data: bool = False) -> Path:
    """Writes `model` to `path`; with `external_data`, its weights go to `<name>.data` beside it.

    With external data the weights are streamed out one tensor at a time and removed from `model`
    (which then refers to the data file), so saving never holds a second copy of them. A stale data
    file is replaced, not appended to.
    """
    path = Path(path)
    if not external_data:
        onnx.save_model(model, path)
        return path
    location = f"{path.name}.data"
    (path.parent / location).unlink(missing_ok=True)
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=location)
    return path


def require(problems: list[str], source: str) -> None:
    """Raises ConfigError listing every problem, if any."""
    if problems:
        raise ConfigError(problems, source=source)
