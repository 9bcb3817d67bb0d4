"""Weights of weight-bearing layers: where they come from, how they are converted, stored once.

1. Resolution. A layer's weight initializer reaches its anchor directly or through a chain of
   Identity, Transpose, Cast, DequantizeLinear and Reshape nodes (what exporters write; the chain
   is found by `passes._match.resolve_constant`). `resolve_operand` splits it: the *value steps*
   (Cast, DequantizeLinear) are evaluated in the initializer's own orientation, and 2-D transposes
   only flip the orientation (`WeightOperand.transposed`: the anchor reads the initializer's values
   transposed), so the values never depend on how many Transpose nodes said so.
2. Row matrix W[N, K]: one row per output feature, K along the reduction axis (kernels/README.md):
   MatMul's B[K, N] transposed, Gemm's B as it is with transB=1, a Gather table's rows, a Conv
   weight [Cout, Cin/g, kh, kw] flattened per output channel.
3. Conversion goes through `PrecisionConverter` with the decision's conversion strategy (the
   converter's default when None) and layout. STOCHASTIC_ROUNDING draws from a generator seeded by
   `ctx.seed` and the layer's name (crc32), so a layer's draw does not depend on which layers were
   converted before it. GPTQ reads the layer's Hessian from `hessians` (`passes._hessians`).
   NaN/Inf (and any other conversion failure) is a ConversionError naming the tensor and the layer.
4. Sharing. A stored encoding is keyed by (initializer, value steps, orientation, dtype, layout,
   strategy); a second layer asking for the same key reads the same initializers. This is how a
   tied embedding table and lm_head in the same format are stored once: both read W[V, H] =
   the table's rows. Float encodings are kept in the initializer's orientation, and a consumer
   that reads them transposed gets a Transpose node, so they share across orientations too.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs
from onnx import helper

from bitnet_onnx.core.dtypes import ConversionStrategy, DType, WeightLayout
from bitnet_onnx.core.errors import ConfigError, ConversionError, UnsupportedModelError
from bitnet_onnx.core.layers import Layer
from bitnet_onnx.core.plan import Decision
from bitnet_onnx.numerics.converter import ConversionConfig, PrecisionConverter, QuantizedTensor
from bitnet_onnx.numerics.packing import resolve_group_size
from bitnet_onnx.passes._match import ConstantChain, GraphView, resolve_constant

from ._edit import LayerEditor

__all__ = [
    "StoredFloat",
    "StoredQuantized",
    "WeightOperand",
    "WeightStore",
    "bias_values",
    "resolve_operand",
    "resolved_layout",
]


@dataclass(frozen=True)
class WeightOperand:
    """A constant weight as an anchor reads it (case 1).

    `value_chain` holds the chain's value steps (everything but Identity and Transpose) and
    `transposed` whether the anchor reads the initializer's values transposed. A chain that
    reshapes, or dequantizes after a transpose, is kept as it is (`value_chain` is then the whole
    chain and `transposed` False): it shares with nothing else.
    """

    view: GraphView
    chain: ConstantChain
    value_chain: ConstantChain
    transposed: bool

    @property
    def initializer(self) -> gs.Constant:
        return self.chain.constant

    @property
    def key(self) -> tuple[Any, ...]:
        steps = tuple(
            (n.op, int(n.attrs["to"])) if n.op == "Cast" else (n.op, n.name) for n in self.value_chain.nodes
        )
        return (self.initializer.name, steps)

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape the anchor sees."""
        return tuple(int(d) for d in self.chain.shape)

    @property
    def dtype(self) -> np.dtype:
        """The type the anchor sees."""
        for node in self.chain.nodes:  # nearest the anchor first
            if node.op == "Cast":
                return np.dtype(helper.tensor_dtype_to_np_dtype(int(node.attrs["to"])))
            if node.op == "DequantizeLinear":
                return np.dtype(np.float32)
        return np.dtype(self.initializer.dtype)

    def base_values(self) -> np.ndarray:
        """The values in the initializer's orientation (value steps applied); reads the weight."""
        return self.value_chain.evaluate(self.view)


def resolve_operand(view: GraphView, tensor: gs.Tensor, layer: Layer) -> WeightOperand:
    """Case 1: the constant behind an anchor's weight input; UnsupportedModelError naming the layer."""
    found = resolve_constant(view, tensor)
    if not found:
        raise UnsupportedModelError(
            f"layer {layer.name!r}: its weight cannot be read as a constant ({found.reason}); fold the "
            "chain into an initializer (e.g. with onnxruntime's constant folding) or give the layer F32 "
            "precision"
        )
    chain: ConstantChain = found.bindings["chain"]
    outward = list(reversed(chain.nodes))  # from the initializer towards the anchor
    transposed = False
    literal = False
    for node in outward:
        if node.op == "Reshape" or (node.op == "DequantizeLinear" and transposed):
            literal = True
        elif node.op == "Transpose":
            perm = node.attrs.get("perm")
            if len(chain.constant.shape) != 2 or (perm is not None and list(perm) != [1, 0]):
                literal = True
            transposed = not transposed
    if literal:
        return WeightOperand(view, chain, chain, False)
    values = tuple(n for n in chain.nodes if n.op not in ("Identity", "Transpose"))
    value_chain = ConstantChain(chain.constant, values, tuple(int(d) for d in chain.constant.shape))
    return WeightOperand(view, chain, value_chain, transposed)


def resolved_layout(dtype: DType, layout: WeightLayout, k: int) -> WeightLayout:
    """`layout` with the group size integer formats actually use (None → whole row, as the converter)."""
    if dtype.is_float or dtype is DType.BITNET158:
        return layout
    return replace(layout, group_size=resolve_group_size(k, dtype.bits, layout.group_size))


@dataclass(frozen=True)
class StoredQuantized:
    """A packed encoding in the graph: its initializers and the layer that stored it first."""

    tensor: QuantizedTensor
    data: gs.Constant
    scales: gs.Constant
    zero_points: gs.Constant | None
    owner: str

    @property
    def nbytes(self) -> int:
        return self.tensor.nbytes


@dataclass(frozen=True)
class StoredFloat:
    """A float encoding in the graph, in the initializer's orientation."""

    constant: gs.Constant
    owner: str

    @property
    def nbytes(self) -> int:
        return self.constant.values.nbytes


@dataclass
class WeightStore:
    """Converts weights (case 3) and stores each distinct encoding once (case 4); one per pass run."""

    seed: int
    hessians: Mapping[str, np.ndarray] = field(default_factory=dict)  # by layer, for GPTQ (`_hessians`)
    _quantized: dict[tuple[Any, ...], StoredQuantized] = field(default_factory=dict)
    _floats: dict[tuple[Any, ...], StoredFloat] = field(default_factory=dict)

    def quantized(
        self, edit: LayerEditor, operand: WeightOperand, rows_transposed: bool, decision: Decision
    ) -> tuple[StoredQuantized, bool]:
        """W[N, K] of `operand` packed in the decision's format, and whether it was stored already.

        `rows_transposed` says whether W[N, K] is the initializer's orientation transposed. A weight
        of more than two dimensions (a Conv kernel) is flattened per output row.
        """
        key = self._quantized_key(operand, rows_transposed, decision)
        if key in self._quantized:
            return self._quantized[key], True
        qt = self.rows(edit, operand, rows_transposed, decision)
        zero_points = None if qt.zero_points is None else edit.constant("weight_zero_points", qt.zero_points)
        stored = StoredQuantized(
            qt,
            edit.constant("weight_packed", qt.data),
            edit.constant("weight_scales", qt.scales),
            zero_points,
            edit.layer.name,
        )
        self._quantized[key] = stored
        return stored, False

    @staticmethod
    def _quantized_key(operand: WeightOperand, rows_transposed: bool, decision: Decision) -> tuple[Any, ...]:
        k = _rows_shape(operand, rows_transposed)[1]
        layout = resolved_layout(decision.dtype, decision.layout, k)
        return (*operand.key, rows_transposed, decision.dtype, layout, decision.conversion_strategy)

    def stored_quantized(
        self, operand: WeightOperand, rows_transposed: bool, decision: Decision
    ) -> StoredQuantized | None:
        """The encoding `quantized` would return if another layer stored it already, else None."""
        return self._quantized.get(self._quantized_key(operand, rows_transposed, decision))

    def rows(
        self, edit: LayerEditor, operand: WeightOperand, rows_transposed: bool, decision: Decision
    ) -> QuantizedTensor:
        """W[N, K] converted to the decision's format without storing it (for layouts of other ops)."""
        k = _rows_shape(operand, rows_transposed)[1]
        base = operand.base_values()
        rows = _as_rows(base.T if rows_transposed else base)
        return self._convert(
            edit.layer,
            rows,
            decision,
            resolved_layout(decision.dtype, decision.layout, k),
            _weight_name(edit.layer, operand),
        )

    def floating(
        self, edit: LayerEditor, operand: WeightOperand, decision: Decision
    ) -> tuple[StoredFloat, bool]:
        """`operand`'s values in a float precision, in the initializer's orientation, stored once."""
        key = (*operand.key, decision.dtype, decision.conversion_strategy)
        if key in self._floats:
            return self._floats[key], True
        qt = self._convert(
            edit.layer, operand.base_values(), decision, decision.layout, _weight_name(edit.layer, operand)
        )
        stored = StoredFloat(edit.constant(f"weight_{decision.dtype.name.lower()}", qt.data), edit.layer.name)
        self._floats[key] = stored
        return stored, False

    def convert(self, layer: Layer, values: np.ndarray, decision: Decision, name: str) -> QuantizedTensor:
        """One tensor of `layer` (e.g. a bias) in the decision's precision, through the converter."""
        return self._convert(layer, values, decision, decision.layout, name)

    def _convert(
        self, layer: Layer, values: np.ndarray, decision: Decision, layout: WeightLayout, name: str
    ) -> QuantizedTensor:
        seed = (zlib.crc32(layer.name.encode()) + self.seed) % 2**32
        config = ConversionConfig(preserve_metadata=False, seed=seed)
        try:
            if decision.conversion_strategy is not None:
                config = replace(config, strategy=decision.conversion_strategy)
            hessian = self.hessians.get(layer.name) if config.strategy is ConversionStrategy.GPTQ else None
            return PrecisionConverter(config).convert_tensor(
                values, decision.dtype, name=name, layout=layout, hessian=hessian
            )
        except ConversionError as exc:
            raise ConversionError(
                exc.from_dtype, exc.to_dtype, f"layer {layer.name!r}: {exc.reason}"
            ) from exc
        except ConfigError as exc:
            raise ConfigError(exc.problems, source=f"layer {layer.name!r} ({decision.source})") from exc


def _rows_shape(operand: WeightOperand, rows_transposed: bool) -> tuple[int, int]:
    """(N, K) of the row matrix: rows are the first axis, everything else is K."""
    shape = tuple(int(d) for d in operand.value_chain.shape)
    if rows_transposed:
        shape = shape[::-1]
    return shape[0], math.prod(shape[1:])


def _as_rows(values: np.ndarray) -> np.ndarray:
    return values.reshape(values.shape[0], -1)


def _weight_name(layer: Layer, operand: WeightOperand) -> str:
    return operand.initializer.name if layer.weight is None else layer.weight


def bias_values(view: GraphView, tensor: gs.Tensor, layer: Layer, n: int) -> np.ndarray:
    """The bias a layer adds, read from the tensor its op reads, as a vector of N (a scalar or [1, N]
    bias broadcast); UnsupportedModelError naming the layer when it is not such a constant."""
    found = resolve_constant(view, tensor)
    if not found:
        raise UnsupportedModelError(
            f"layer {layer.name!r}: its bias {layer.bias!r} cannot be read as a constant ({found.reason}); "
            "fold it into an initializer or give the layer F32 precision"
        )
    values = found.bindings["chain"].evaluate(view)
    if values.size not in (1, n) or (values.size == n and max(values.shape, default=1) != n):
        raise UnsupportedModelError(
            f"layer {layer.name!r}: its bias {layer.bias!r} has shape {list(values.shape)}; a bias of the "
            f"layer's {n} outputs holds 1 or {n} values along the last axis"
        )
    return np.broadcast_to(values.reshape(-1), (n,)).copy()
