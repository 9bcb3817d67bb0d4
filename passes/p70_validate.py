"""validate: is the compiled model valid, what the plan says, and close enough to the original?

It exports the graph as it stands (annotations stamped), checks it and leaves a `CompileReport` in
`ctx.report`; `compile()` decides from the report whether to write the model. Checks, each
finding naming its rule:

1. `checker`: onnx.checker with full shape/type inference over the model's structure (weights
   left out, so any size works). An error, unless the input model fails the checker too (then a
   warning: e.g. onnxruntime's SimplifiedLayerNormalization is registered in the default domain
   but unknown to onnx).
2. `session`: onnxruntime builds a session with the bitnet ops and the user's custom-op libraries
   (`ctx.custom_op_libraries`). An error when it cannot, and then no numbers are compared; an op of
   a custom domain whose library is missing stops the compile (KernelLibraryError). The session
   loads the compiled model from a temporary file (external data when large), written and its
   proto dropped first, so peak memory is the graph's weights plus the session's.
3. `readback`: every layer of `ctx.plan` is found in the compiled model by its `bitnet.layer`
   metadata, and each component's `bitnet.dtype.<component>` equals the plan. The weights are
   checked in the graph itself, by the planned precision (N output rows, K the reduction length):
   - BITNET158: a `bitnet.BitLinear` or `bitnet.DequantizeLowBit(bits=0)` of the layer reads a
     uint8 initializer of N × ceil(K / ppb) bytes (ppb = 4 for 2bit, 5 for base3) with the
     planned `format`, and a scale of 1 or N elements (N with per_channel);
   - I8, I4, I2, I1: a `bitnet.LowBitMatMul` or `bitnet.DequantizeLowBit` with the planned `bits`
     reads a uint8 initializer of N × ceil(K/G)·G·bits/8 bytes (G its `group_size`, which must be
     the planned one when the plan sets one), with zero points exactly when asymmetric (an empty
     [0] zero-point tensor, which a symmetric op passes before its bias, is none); for I8
     also `com.microsoft.DynamicQuantizeMatMul` reading N·K int8 (or uint8) codes; for a layer
     kept as the model quantized it, a `com.microsoft.MatMulNBits` with those bits and
     block_size the planned group size, or a DequantizeLinear of the layer reading N·K integer
     codes of that width (QDQ);
   - F16, BF16, F32: the layer reads an initializer of that type holding N·K values.
   Initializers are followed back through Identity, Transpose, Reshape, Flatten, Squeeze,
   Unsqueeze and the data input of Gather (an embedding gathers rows of its packed table).
   I8 activations need a node of the layer that quantizes its input at run time (BitLinear,
   LowBitMatMul with act_quant=1, DynamicQuantizeMatMul, DynamicQuantizeLinear, or MatMulNBits
   with accuracy_level=4).
   Any mismatch is an error.
4. `numerics`: the compiled model and the original (`ctx.original`) run on the sample inputs
   (every batch of `ctx.calibration`, else `sample_inputs` from the input specs with `dims` and
   `ctx.seed`); every output, over all batches (stacked along the leading axis, or flattened when
   the batches differ in shape), is compared (`report.compare_outputs`: max abs error, max and
   99.9th-percentile relative error, cosine) against `thresholds` (default: the strategy's,
   `report.THRESHOLDS`; `compile(thresholds=...)` passes an objective's). A miss is an error with
   `strict`, a warning without. An output the compiled model lacks, or with another shape, is an
   error. Sample inputs that do not fit the model (a missing or unknown name, another element type) are
   the user's to fix: ConfigError.

The record carries the findings (errors and warnings as its warnings) and, per output, its
metrics in the stats (`<output>.cosine`, `<output>.max_abs_error`, `<output>.max_rel_error`,
`<output>.rel_error_q999`).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper

from bitnet_onnx.config.config import MixedPrecisionConfig
from bitnet_onnx.config.report import CompileReport, OutputMetrics, Thresholds, compare_outputs
from bitnet_onnx.config.validation import Finding, Severity
from bitnet_onnx.core.dtypes import DType
from bitnet_onnx.core.errors import ConfigError, KernelLibraryError, MixedPrecisionError
from bitnet_onnx.core.inspection import LayerRecord, read_layers
from bitnet_onnx.core.layers import ComponentType, Layer
from bitnet_onnx.core.plan import LayerPlan
from bitnet_onnx.numerics.packing import int_row_bytes, ternary_row_bytes
from bitnet_onnx.passes._graph import export_model, stamp_annotations, weightless_model
from bitnet_onnx.passes.base import Condition, PassContext, PassResult, context_set
from bitnet_onnx.runtime import BITLINEAR, DOMAIN, check_feeds
from bitnet_onnx.runtime.kv_cache import cache_pairs
from bitnet_onnx.runtime.model_file import session_for, write_model
from bitnet_onnx.runtime.sample_inputs import DEFAULT_DIMS, sample_inputs

__all__ = ["ValidatePass"]

LOWBIT_MATMUL = "LowBitMatMul"
DEQUANTIZE_LOWBIT = "DequantizeLowBit"
_MS_DOMAIN = "com.microsoft"
_CHAIN_OPS = frozenset({"Identity", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Gather"})
_FLOAT_TYPES = {
    DType.F32: onnx.TensorProto.FLOAT,
    DType.F16: onnx.TensorProto.FLOAT16,
    DType.BF16: onnx.TensorProto.BFLOAT16,
}
_INT8_CODES = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
_CODE_BITS = {
    onnx.TensorProto.INT8: 8,
    onnx.TensorProto.UINT8: 8,
    onnx.TensorProto.INT4: 4,
    onnx.TensorProto.UINT4: 4,
}  # integer codes a kept QDQ weight holds
_INT8_ACCURACY = 4  # MatMulNBits computes with int8 activations (quantized per block at run time)
_QUANTIZING = ((DOMAIN, BITLINEAR), (_MS_DOMAIN, "DynamicQuantizeMatMul"), ("", "DynamicQuantizeLinear"))


class _Model:
    """Lookups over the compiled ModelProto's main graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.nodes = {node.name: node for node in graph.node}
        self.producers = {out: node for node in graph.node for out in node.output}
        self.initializers = {t.name: t for t in graph.initializer}

    def initializer_behind(self, name: str) -> onnx.TensorProto | None:
        """The initializer `name` is, or reaches through chain ops (data inputs only)."""
        seen = 0
        while name not in self.initializers:
            node = self.producers.get(name)
            if node is None or node.domain not in ("", "ai.onnx") or node.op_type not in _CHAIN_OPS:
                return None
            name = node.input[0]
            seen += 1
            if seen > len(self.nodes):  # a cyclic graph (the checker reports it) must not hang this
                return None
        return self.initializers[name]

    def as_member(self, node: onnx.NodeProto, member: int) -> onnx.NodeProto:
        """`node` as the `member`-th layer of its fused call (fuse_siblings) computed it alone:
        each input stacked by a Concat read back to that member's own tensor (through the Expand
        of a per-tensor scale); a node that stacks nothing comes back as it is."""
        view = onnx.NodeProto()
        view.CopyFrom(node)
        for i, name in enumerate(node.input):
            stack = self.producers.get(name)
            if stack is None or not _is(stack, "", "Concat") or member >= len(stack.input):
                continue
            own = stack.input[member]
            expand = self.producers.get(own)
            view.input[i] = expand.input[0] if expand is not None and _is(expand, "", "Expand") else own
        return view


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _is(node: onnx.NodeProto, domain: str, op: str) -> bool:
    return node.op_type == op and (node.domain or "") == domain


def _elements(tensor: onnx.TensorProto) -> int:
    return math.prod(tensor.dims)


@dataclass(frozen=True)
class _Geometry:
    """A weight as rows of the reduction axis: N rows of K values (both orientations when unknown)."""

    shapes: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, layer: Layer) -> _Geometry | None:
        shape = layer.weight_shape
        if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
            return None
        if len(shape) == 2 and layer.weight_nk is not None:
            n, k = shape if layer.weight_nk else shape[::-1]
            return cls(((n, k),))
        rows, k = shape[0], math.prod(shape[1:])
        return cls(((rows, k), (k, rows)) if len(shape) == 2 else ((rows, k),))

    @property
    def elements(self) -> int:
        n, k = self.shapes[0]
        return n * k


def _weight_problem(
    plan: LayerPlan, geometry: _Geometry, nodes: list[onnx.NodeProto], model: _Model
) -> str | None:
    """Why the layer's nodes do not hold its weights in the planned precision (None: they do)."""
    decision = plan.decisions[ComponentType.WEIGHTS]
    dtype, layout = decision.dtype, decision.layout
    if dtype.is_float:
        want = _FLOAT_TYPES[dtype]
        for node in nodes:
            for name in node.input:
                tensor = model.initializer_behind(name) if name else None
                if tensor is not None and tensor.data_type == want and _elements(tensor) == geometry.elements:
                    return None
        kind = np.dtype(helper.tensor_dtype_to_np_dtype(want)).name
        return f"no node of the layer reads {geometry.elements} {kind} weights"
    if dtype is DType.BITNET158:
        candidates = [(n, 1) for n in nodes if _is(n, DOMAIN, BITLINEAR)] + [
            (n, 0) for n in nodes if _is(n, DOMAIN, DEQUANTIZE_LOWBIT) and _attr(n, "bits") == 0
        ]
        if not candidates:
            return "no BitLinear or DequantizeLowBit(bits=0) among the layer's nodes"
        problems = []
        for node, index in candidates:
            problem = _ternary_problem(node, index, layout, geometry, model)
            if problem is None:
                return None
            problems.append(problem)
        return "; ".join(problems)
    return _integer_problem(dtype, layout, geometry, nodes, model)


def _packed(node: onnx.NodeProto, index: int, model: _Model) -> onnx.TensorProto | None:
    tensor = model.initializer_behind(node.input[index]) if len(node.input) > index else None
    return tensor if tensor is not None and tensor.data_type == onnx.TensorProto.UINT8 else None


def _ternary_problem(
    node: onnx.NodeProto, index: int, layout, geometry: _Geometry, model: _Model
) -> str | None:
    where = f"{node.op_type} {node.name!r}"
    packed = _packed(node, index, model)
    if packed is None:
        return f"{where} reads no packed uint8 initializer"
    fmt = _attr(node, "format", b"2bit")
    fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
    if fmt != layout.packing.value:
        return f"{where} has format {fmt!r}, the plan says {layout.packing.value!r}"
    sizes = {n * ternary_row_bytes(k, layout.packing) for n, k in geometry.shapes}
    if _elements(packed) not in sizes:
        return f"{where} reads {_elements(packed)} packed bytes, expected {min(sizes)}"
    scale = model.initializer_behind(node.input[index + 1]) if len(node.input) > index + 1 else None
    rows = {n for n, _ in geometry.shapes}
    expected = rows if layout.per_channel else {1}
    if scale is not None and node.op_type == BITLINEAR and _elements(scale) not in expected:
        return f"{where} has {_elements(scale)} scales, expected {min(expected)}"
    return None


def _integer_problem(
    dtype: DType, layout, geometry: _Geometry, nodes: list[onnx.NodeProto], model: _Model
) -> str | None:
    problems = []
    for node in nodes:
        if _is(node, "", "DequantizeLinear"):  # QDQ weights kept as the model quantized them
            codes = model.initializer_behind(node.input[0])
            if (
                codes is not None
                and _CODE_BITS.get(codes.data_type) == dtype.bits
                and _elements(codes) == geometry.elements
            ):
                return None
            continue
        if _is(node, _MS_DOMAIN, "MatMulNBits"):  # kept as onnxruntime quantized it
            bits, block = _attr(node, "bits"), _attr(node, "block_size")
            if bits == dtype.bits and block == layout.group_size:
                return None
            problems.append(f"MatMulNBits {node.name!r} has bits={bits} block_size={block}")
            continue
        if dtype is DType.I8 and _is(node, _MS_DOMAIN, "DynamicQuantizeMatMul"):
            b = model.initializer_behind(node.input[1])
            if b is not None and b.data_type in _INT8_CODES and _elements(b) == geometry.elements:
                return None
            problems.append(f"DynamicQuantizeMatMul {node.name!r} reads no {geometry.elements} int8 codes")
            continue
        index = 1 if _is(node, DOMAIN, LOWBIT_MATMUL) else 0 if _is(node, DOMAIN, DEQUANTIZE_LOWBIT) else None
        if index is None:
            continue
        where = f"{node.op_type} {node.name!r}"
        bits = _attr(node, "bits")
        if bits != dtype.bits:
            problems.append(f"{where} has bits={bits}, the plan says {dtype.bits}")
            continue
        group = _attr(node, "group_size")
        if not isinstance(group, int) or group <= 0:
            problems.append(f"{where} has no group_size")
            continue
        if layout.group_size is not None and group != layout.group_size:
            problems.append(f"{where} has group_size={group}, the plan says {layout.group_size}")
            continue
        packed = _packed(node, index, model)
        sizes = {n * int_row_bytes(k, dtype.bits, group) for n, k in geometry.shapes}
        if packed is None or _elements(packed) not in sizes:
            got = "no packed uint8 initializer" if packed is None else f"{_elements(packed)} packed bytes"
            problems.append(f"{where} reads {got}, expected {min(sizes)}")
            continue
        has_zero_points = _has_zero_points(node, index + 2, model)
        if has_zero_points != layout.asymmetric:
            problems.append(
                f"{where} {'has' if has_zero_points else 'lacks'} zero points; the plan says "
                f"{'asymmetric' if layout.asymmetric else 'symmetric'}"
            )
            continue
        return None
    return "; ".join(problems) or "no LowBitMatMul or DequantizeLowBit among the layer's nodes"


def _has_zero_points(node: onnx.NodeProto, index: int, model: _Model) -> bool:
    """An input at `index` that is given and not the empty [0] tensor a symmetric op passes when a
    bias follows (kernels/README.md)."""
    if len(node.input) <= index or not node.input[index]:
        return False
    tensor = model.initializer_behind(node.input[index])
    return tensor is None or _elements(tensor) > 0


def _quantizes_input(nodes: list[onnx.NodeProto]) -> bool:
    return any(any(_is(n, d, op) for d, op in _QUANTIZING) for n in nodes) or any(
        (_is(n, DOMAIN, LOWBIT_MATMUL) and _attr(n, "act_quant") == 1)
        or (_is(n, _MS_DOMAIN, "MatMulNBits") and _attr(n, "accuracy_level") == _INT8_ACCURACY)
        for n in nodes
    )


def _readback(plan: Mapping[str, LayerPlan], compiled: onnx.ModelProto) -> list[Finding]:
    records: dict[str, LayerRecord] = {r.name: r for r in read_layers(compiled)}
    model = _Model(compiled)
    findings = []
    for name, layer_plan in plan.items():
        record = records.get(name)
        if record is None:
            findings.append(
                _error(
                    "readback",
                    name,
                    "no node of the compiled model carries this layer's bitnet.layer annotation",
                    "report this as a bitnet-onnx bug",
                )
            )
            continue
        nodes = [model.nodes[n] for n in record.nodes if n in model.nodes]
        if record.rows is not None and name in record.fused:
            member = record.fused.index(name)
            nodes = [model.as_member(n, member) if n.domain == DOMAIN else n for n in nodes]
        for component, decision in layer_plan.decisions.items():
            subject = f"{name}/{component.value}"
            stamped = record.precisions.get(component.value)
            if stamped is not None and stamped != decision.dtype.name:
                findings.append(
                    _error(
                        "readback",
                        subject,
                        f"planned {decision.dtype.name}, the compiled model says {stamped}",
                    )
                )
        geometry = _Geometry.of(layer_plan.layer)
        if ComponentType.WEIGHTS in layer_plan.decisions and geometry is not None:
            problem = _weight_problem(layer_plan, geometry, nodes, model)
            if problem is not None:
                dtype = layer_plan.decisions[ComponentType.WEIGHTS].dtype.name
                findings.append(_error("readback", f"{name}/weights", f"planned {dtype} but {problem}"))
        activations = layer_plan.dtype(ComponentType.ACTIVATIONS)
        if activations is DType.I8 and not _quantizes_input(nodes):
            findings.append(
                _error(
                    "readback",
                    f"{name}/activations",
                    "planned I8 but no node of the layer quantizes its input",
                )
            )
    return findings


def _error(
    rule: str, subject: str, message: str, suggestion: str = "report this as a bitnet-onnx bug"
) -> Finding:
    return Finding(rule, Severity.ERROR, subject, message, suggestion)


class ValidatePass:
    """Checks the compiled graph against the plan and the original (see the module docstring).

    `strict`: a missed numeric threshold is an error (True) or a warning. `dims`: symbolic dims of
    generated sample inputs (default `sample_inputs.DEFAULT_DIMS`). `thresholds`: what the outputs
    must reach and what sets it (default: the config's strategy).
    """

    name: ClassVar[str] = "validate"
    requires: ClassVar[tuple[str, ...]] = ("assign_precision",)
    ensures: ClassVar[tuple[Condition, ...]] = (context_set("report"),)

    def __init__(
        self,
        *,
        strict: bool = True,
        dims: Mapping[str, int] | None = None,
        thresholds: tuple[str, Thresholds] | None = None,
    ) -> None:
        self.strict = strict
        self.dims = dict(dims or {})
        self.thresholds = thresholds

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        config: MixedPrecisionConfig = ctx.config
        feeds, described = self._feeds(ctx)
        # The original runs first and its session is gone before the compiled model is exported:
        # the two models' weights are never in memory at once. Its failure counts only when the
        # compiled model loads (else that is the finding).
        try:
            expected: dict[str, list[np.ndarray]] | MixedPrecisionError = _reference_outputs(ctx, feeds)
        except KernelLibraryError:
            raise
        except MixedPrecisionError as exc:
            expected = exc
        compiled = export_model(graph)
        stamp_annotations(compiled, ctx.annotations)
        findings = self._checker(graph, ctx)
        findings += _readback(ctx.plan, compiled)
        basis, thresholds = self.thresholds or (
            config.strategy.value,
            Thresholds.for_strategy(config.strategy),
        )
        metrics: tuple[OutputMetrics, ...] = ()
        with tempfile.TemporaryDirectory(prefix="bitnet-onnx-validate-") as tmp:
            # Written and dropped before onnxruntime loads it: the graph's converted weights, their
            # copy in the proto and the session's are never all in memory at once.
            written = write_model(compiled, Path(tmp) / "compiled.onnx", ctx.model_dir)
            del compiled
            try:
                session = session_for(
                    onnx.load(written, load_external_data=False),
                    written.parent,
                    custom_op_libraries=ctx.custom_op_libraries,
                )
            except KernelLibraryError:
                raise
            except MixedPrecisionError as exc:
                problem = f"onnxruntime cannot load the compiled model: {exc}"
                findings.append(_error("session", "model", problem))
            else:
                if isinstance(expected, MixedPrecisionError):
                    raise expected
                metrics, numeric = self._numerics(session, feeds, expected, basis, thresholds)
                findings += numeric
        report = CompileReport(
            findings=tuple(findings),
            strategy=basis,
            thresholds=thresholds,
            outputs=metrics,
            inputs=described,
        )
        ctx.report = report
        stats: dict[str, int | float | str] = {
            "layers_checked": len(ctx.plan),
            "errors": len(report.errors),
            "warnings": len(report.warnings),
            "goal_met": int(report.goal_met),
        }
        for m in metrics:
            stats[f"{m.name}.cosine"] = round(m.cosine, 6) if math.isfinite(m.cosine) else str(m.cosine)
            stats[f"{m.name}.max_abs_error"] = _stat(m.max_abs_error)
            stats[f"{m.name}.max_rel_error"] = _stat(m.max_rel_error)
            stats[f"{m.name}.rel_error_q999"] = _stat(m.rel_error_q999)
        messages = tuple(f"{f.severity.value}: {f}" for f in (*report.errors, *report.warnings))
        return PassResult(modified=False, warnings=messages, stats=stats)

    def _checker(self, graph: gs.Graph, ctx: PassContext) -> list[Finding]:
        structure, _ = weightless_model(graph)
        try:
            onnx.checker.check_model(structure, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as exc:
            # ValueError: e.g. "Invalid tensor data type 0." for a tensor whose data type is unset.
            message = " ".join(str(exc).split())
            if ctx.original is not None and _fails_checker(ctx.original):
                return [
                    Finding(
                        "checker",
                        Severity.WARNING,
                        "model",
                        f"onnx.checker: {message} (the input model fails the checker too)",
                    )
                ]
            return [_error("checker", "model", f"onnx.checker: {message}")]
        return []

    def _feeds(self, ctx: PassContext) -> tuple[list[dict[str, np.ndarray]], str]:
        if ctx.calibration is not None:
            batches, described = ctx.calibration
            return [dict(batch) for batch in batches], described
        dims = {**DEFAULT_DIMS, **self.dims}
        cached = bool(cache_pairs(ctx.original))  # the past length means something only then
        shown = ", ".join(f"{k}={v}" for k, v in dims.items() if cached or k != "past" or k in self.dims)
        return [
            sample_inputs(ctx.original, dims=dims, seed=ctx.seed)
        ], f"generated inputs ({shown}, seed {ctx.seed})"

    def _numerics(
        self,
        session,
        feeds: list[dict[str, np.ndarray]],
        expected: Mapping[str, list[np.ndarray]],
        basis: str,
        thresholds: Thresholds,
    ):
        names = list(expected)
        available = {o.name for o in session.get_outputs()}
        findings = [
            _error("numerics", f"output {n}", "the compiled model lacks this output")
            for n in names
            if n not in available
        ]
        present = [n for n in names if n in available]
        try:
            runs = [session.run(present, batch) for batch in feeds]
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            return (), [
                *findings,
                _error("session", "model", f"onnxruntime failed running the compiled model: {exc}"),
            ]
        actual = {name: [run[i] for run in runs] for i, name in enumerate(present)}
        metrics = []
        severity = Severity.ERROR if self.strict else Severity.WARNING
        for name, wants in expected.items():
            if name not in actual:
                continue
            gots = actual[name]
            wrong = [(got, want) for got, want in zip(gots, wants, strict=True) if got.shape != want.shape]
            if wrong:
                got, want = wrong[0]
                findings.append(
                    _error(
                        "numerics",
                        f"output {name}",
                        f"shape {list(got.shape)}, the original gives {list(want.shape)}",
                    )
                )
                continue
            m = compare_outputs(name, _stacked(wants), _stacked(gots))
            metrics.append(m)
            missed = m.misses(thresholds)
            if missed:
                findings.append(
                    Finding(
                        "numerics",
                        severity,
                        f"output {name}",
                        f"{', '.join(missed)} against the original ({basis} thresholds)",
                        "give the most sensitive layers a higher precision (a config `layers:` entry), or "
                        "compile with --no-strict to keep the model and this report",
                    )
                )
        return tuple(metrics), findings


def _reference_outputs(ctx: PassContext, feeds: list[dict[str, np.ndarray]]) -> dict[str, list[np.ndarray]]:
    """The original's outputs on each batch of `feeds`, by name. Its weights stay where they lie (no
    prepacking): external ones, and those `load_model` referenced in the input file, stay memory-mapped."""
    reference = session_for(
        ctx.original, ctx.model_dir, custom_op_libraries=ctx.custom_op_libraries, prepack=False
    )
    for batch in feeds:
        check_feeds(reference, batch)
    names = [o.name for o in reference.get_outputs()]
    try:
        runs = [reference.run(names, batch) for batch in feeds]
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        raise ConfigError(f"the original model does not run on the sample inputs: {exc}") from exc
    return {name: [run[i] for run in runs] for i, name in enumerate(names)}


def _stacked(arrays: list[np.ndarray]) -> np.ndarray:
    """One output over all batches: stacked along the leading axis when the batches agree on the
    others (the shape the report shows), else flattened."""
    if len(arrays) == 1:
        return arrays[0]
    if all(a.ndim and a.shape[1:] == arrays[0].shape[1:] for a in arrays):
        return np.concatenate(arrays, axis=0)
    return np.concatenate([a.reshape(-1) for a in arrays])


def _stat(value: float) -> float | str:
    return float(f"{value:.6g}") if math.isfinite(value) else str(value)


def _fails_checker(model: onnx.ModelProto) -> bool:
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError):
        return True
    return False
