"""fuse_siblings: sibling BitLinear / LowBitMatMul calls become one call and a Split, computing bit
for bit what the separate calls computed, equal to the numpy reference of each layer; what may not
be fused stays; the layers read back from the compiled model are the original ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from bitnet_onnx import runtime
from bitnet_onnx.compiler import compile as compile_module
from bitnet_onnx.core.inspection import layers_table, read_layers
from bitnet_onnx.core.metadata import FUSED_KEY, LAYER_KEY, OP_KEY, fused_members
from bitnet_onnx.numerics.quantization import bitlinear_reference
from bitnet_onnx.passes._graph import stamp_annotations
from bitnet_onnx.passes.base import PassContext
from bitnet_onnx.passes.p65_fuse_siblings import FuseSiblingsPass
from bitnet_onnx.runtime.profiling import layer_times
from bitnet_onnx.runtime.sample_inputs import sample_inputs
from models.llama import LlamaConfig, build
from models.weights import WeightInit
from tests.kernels.bitlinear_graphs import BitLinearOperands, bitlinear_operands
from tests.kernels.lowbit_graphs import LowBitOperands, lowbit_operands

K = 80
ROWS = (48, 16, 32)  # q, k, v of a grouped-query layer: different N


def _bitlinear_node(i: int, x: gs.Variable, ops: BitLinearOperands, y: gs.Variable) -> gs.Node:
    inputs = [x, gs.Constant(f"w{i}", ops.packed_w.copy()), gs.Constant(f"s{i}", ops.scale)]
    if ops.bias is not None:
        inputs.append(gs.Constant(f"b{i}", ops.bias))
    attrs = {"K": ops.k, "format": ops.format}
    return gs.Node("BitLinear", f"layer{i}/BitLinear", attrs, inputs, [y], domain=runtime.DOMAIN)


def _lowbit_node(i: int, x: gs.Variable, ops: LowBitOperands, y: gs.Variable, act_quant: int) -> gs.Node:
    inputs = [x, gs.Constant(f"w{i}", ops.packed_w), gs.Constant(f"s{i}", ops.scales)]
    if ops.zero_points is not None:
        inputs.append(gs.Constant(f"z{i}", ops.zero_points))
    elif ops.bias is not None:
        inputs.append(gs.Constant(f"z{i}", np.zeros(0, np.uint8)))
    if ops.bias is not None:
        inputs.append(gs.Constant(f"b{i}", ops.bias))
    return gs.Node(
        "LowBitMatMul",
        f"layer{i}/LowBitMatMul",
        ops.attributes(act_quant),
        inputs,
        [y],
        domain=runtime.DOMAIN,
    )


def _graph(dtype: np.dtype, make_node, rows=ROWS) -> tuple[gs.Graph, dict[str, dict[str, str]]]:
    x = gs.Variable("X", dtype=dtype, shape=["M", K])
    ys = [gs.Variable(f"Y{i}", dtype=dtype, shape=["M", n]) for i, n in enumerate(rows)]
    nodes = [make_node(i, x, y) for i, y in enumerate(ys)]
    graph = gs.Graph(nodes=nodes, inputs=[x], outputs=ys, opset=17)
    graph.import_domains = [
        onnx.helper.make_opsetid("", 17),
        onnx.helper.make_opsetid(runtime.DOMAIN, runtime.OPSET_VERSION),
    ]
    annotations = {n.name: {LAYER_KEY: f"layer{i}", OP_KEY: n.op} for i, n in enumerate(nodes)}
    return graph, annotations


def _model(graph: gs.Graph, annotations=None) -> onnx.ModelProto:
    model = gs.export_onnx(graph.copy())
    if annotations:
        stamp_annotations(model, annotations)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    return runtime.session(model).run(None, {"X": x})


def _fuse(graph: gs.Graph, annotations: dict[str, dict[str, str]]):
    ctx = PassContext(config=None, annotations={k: dict(v) for k, v in annotations.items()})
    result = FuseSiblingsPass().run(graph, ctx)
    return result, ctx


def _x(dtype: np.dtype, m: int = 3) -> np.ndarray:
    return np.random.default_rng(7).standard_normal((m, K)).astype(dtype)


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _stored(model: onnx.ModelProto) -> dict[str, bytes]:
    """Initializer name → bytes, empty ones (a symmetric op's zero points `[0]`) left out."""
    arrays = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    return {name: a.tobytes() for name, a in arrays.items() if a.size}


def _assert_one_call_at_run_time(
    fused: onnx.ModelProto, unfused: onnx.ModelProto, op: str, tmp: Path
) -> None:
    """The fused file stores exactly the unfused one's constants, and what onnxruntime runs after
    folding the stacking ops is one `op` call and a Split."""
    assert _stored(fused) == _stored(unfused)
    options = runtime.session_options(1)
    options.optimized_model_filepath = str(tmp / "optimized.onnx")
    runtime.session(fused, options=options)
    assert sorted(_ops(onnx.load(tmp / "optimized.onnx"))) == sorted([op, "Split"])


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("format", ["2bit", "base3"])
@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_bitlinear_siblings_fuse_into_one_call_equal_to_the_reference(tmp_path, dtype, format, per_row, bias):
    dtype = np.dtype(dtype)
    operands = [bitlinear_operands(n, K, format, per_row, bias, seed=i) for i, n in enumerate(ROWS)]
    graph, annotations = _graph(dtype, lambda i, x, y: _bitlinear_node(i, x, operands[i], y))
    unfused = _model(graph)
    result, ctx = _fuse(graph, annotations)
    fused = _model(graph, ctx.annotations)
    onnx.checker.check_model(fused)
    _assert_one_call_at_run_time(fused, unfused, "BitLinear", tmp_path)
    assert (
        result.stats["groups"] == 1 and result.stats["calls_before"] == 3 and result.stats["calls_after"] == 1
    )
    x = _x(dtype)
    for got, before, ops in zip(_run(fused, x), _run(unfused, x), operands, strict=True):
        np.testing.assert_array_equal(got, before)
        np.testing.assert_array_equal(
            got, bitlinear_reference(x, ops.packed_w, ops.scale, ops.bias, K, format)
        )


_LAYOUTS = [(False, False), (False, True), (True, True)]  # (asymmetric, bias)


@pytest.mark.parametrize(
    "bits,group_size,asymmetric,bias",
    [
        (b, g, a, bias)
        for b, g in [(8, 16), (4, 32), (2, 16), (1, 80)]
        for a, bias in _LAYOUTS
        if b > 1 or not a
    ],
)
@pytest.mark.parametrize("act_quant", [0, 1])
def test_lowbit_matmul_siblings_fuse_into_one_call_equal_to_the_reference(
    tmp_path, bits, group_size, act_quant, asymmetric, bias
):
    operands = [lowbit_operands(n, K, bits, group_size, asymmetric, bias, seed=i) for i, n in enumerate(ROWS)]
    graph, annotations = _graph(
        np.dtype(np.float32), lambda i, x, y: _lowbit_node(i, x, operands[i], y, act_quant)
    )
    unfused = _model(graph)
    _, ctx = _fuse(graph, annotations)
    fused = _model(graph, ctx.annotations)
    _assert_one_call_at_run_time(fused, unfused, "LowBitMatMul", tmp_path)
    x = _x(np.float32, m=5)
    for got, before, ops in zip(_run(fused, x), _run(unfused, x), operands, strict=True):
        np.testing.assert_array_equal(got, before)
        reference = ops.reference(x, act_quant)
        if act_quant == 1:
            np.testing.assert_array_equal(got, reference)
        else:  # float accumulation: the kernels' README order against the reference's float64
            np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5)


def test_fused_node_records_its_layers_and_read_layers_gives_them_back():
    operands = [bitlinear_operands(n, K, "2bit", seed=i) for i, n in enumerate(ROWS)]
    graph, annotations = _graph(np.dtype(np.float32), lambda i, x, y: _bitlinear_node(i, x, operands[i], y))
    _, ctx = _fuse(graph, annotations)
    model = _model(graph, ctx.annotations)
    records = read_layers(model)
    assert [r.name for r in records] == ["layer0", "layer1", "layer2"]
    assert [r.rows for r in records] == [(0, 48), (48, 64), (64, 96)]
    assert all(r.fused == ("layer0", "layer1", "layer2") and r.op == "BitLinear" for r in records)
    assert "BitLinear (2 of 3 fused)" in layers_table(records)
    fused_node = next(n for n in model.graph.node if n.op_type == "BitLinear")
    props = {p.key: p.value for p in fused_node.metadata_props}
    assert props[LAYER_KEY] == "layer0+layer1+layer2" and props[OP_KEY] == "BitLinear"
    assert [m.annotations[LAYER_KEY] for m in fused_members(props[FUSED_KEY])] == [
        "layer0",
        "layer1",
        "layer2",
    ]
    events = [
        {"cat": "Node", "name": f"{fused_node.name}_kernel_time", "dur": 7, "args": {"op_name": "BitLinear"}}
    ]
    (time,) = layer_times(events, model)
    assert time.layer == "layer0+layer1+layer2" and time.micros == 7


def _two_siblings_and(third) -> tuple[gs.Graph, dict[str, dict[str, str]]]:
    operands = [bitlinear_operands(n, K, "2bit", seed=i) for i, n in enumerate(ROWS)]
    graph, annotations = _graph(np.dtype(np.float32), lambda i, x, y: _bitlinear_node(i, x, operands[i], y))
    third(graph, graph.nodes[2], annotations)
    return graph, annotations


def _other_input(graph, node, annotations):
    other = gs.Variable("X2", dtype=np.float32, shape=["M", K])
    graph.inputs.append(other)
    node.inputs[0] = other


def _other_format(graph, node, annotations):
    node.attrs["format"] = "base3"
    node.inputs[1] = gs.Constant("w2_base3", bitlinear_operands(ROWS[2], K, "base3").packed_w)


def _shared_weight(graph, node, annotations):
    reader = gs.Variable("W2_rows", dtype=np.uint8)
    graph.nodes.append(gs.Node("Identity", "reader", inputs=[node.inputs[1]], outputs=[reader]))
    graph.outputs.append(reader)


def _no_layer(graph, node, annotations):
    del annotations[node.name]


def _computed_weight(graph, node, annotations):
    w = gs.Variable("W2_in", dtype=np.uint8, shape=[ROWS[2], K // 4])
    graph.inputs.append(w)
    node.inputs[1] = w


@pytest.mark.parametrize(
    "third",
    [_other_input, _other_format, _shared_weight, _no_layer, _computed_weight],
    ids=lambda f: f.__name__,
)
def test_only_true_siblings_fuse(third):
    graph, annotations = _two_siblings_and(third)
    result, ctx = _fuse(graph, annotations)
    assert result.stats["groups"] == 1 and result.stats["layers_fused"] == 2
    assert "layer2/BitLinear" in {n.name for n in graph.nodes}
    assert ctx.annotations.get("layer2/BitLinear", {}).get(LAYER_KEY) in (None, "layer2")


def test_a_lone_layer_is_left_as_it_is():
    operands = bitlinear_operands(ROWS[0], K, "2bit")
    graph, annotations = _graph(
        np.dtype(np.float32), lambda i, x, y: _bitlinear_node(i, x, operands, y), rows=ROWS[:1]
    )
    result, ctx = _fuse(graph, annotations)
    assert not result.modified and result.stats["groups"] == 0 and ctx.annotations == annotations


DECODERS = Path(__file__).resolve().parents[2] / "models" / "fixtures" / "decoders"


def _compiled(model, preset: str, path: Path, fuse: bool, monkeypatch: pytest.MonkeyPatch):
    """`model` compiled under `preset` into `path`, with or without fuse_siblings in the pipeline."""
    with monkeypatch.context() as patch:
        if not fuse:
            passes = compile_module.compile_passes
            patch.setattr(
                compile_module,
                "compile_passes",
                lambda **kw: tuple(p for p in passes(**kw) if not isinstance(p, FuseSiblingsPass)),
            )
        return compile_module.compile(model, preset, output=path, measure_kernels=False)


def _decoder_cases():
    for weights in (WeightInit.TERNARY, WeightInit.RANDOM):
        yield pytest.param(
            lambda tmp, w=weights: _saved(build(LlamaConfig.preset("tiny", kv_cache=True, weights=w)), tmp),
            f"llama_tiny_kv_{weights.value}",
            id=f"models.llama-tiny-kv-{weights.value}",
        )
    for name in ("llama_tiny_kv_dynamo", "genai_llama_fp32", "bitnet_tiny_dynamo"):
        yield pytest.param(lambda tmp, n=name: DECODERS / f"{n}.onnx", name, id=name)


def _saved(model: onnx.ModelProto, folder: Path) -> Path:
    path = folder / "decoder.onnx"
    onnx.save(model, path)
    return path


def _feeds(path: Path, name: str) -> dict[str, np.ndarray]:
    fixture = DECODERS / f"{name}.inputs.npz"
    if fixture.exists():
        with np.load(fixture) as feeds:
            return dict(feeds)
    return sample_inputs(onnx.load(path), dims={"batch": 1, "seq": 1, "past_sequence_length": 6})


@pytest.mark.kernels
@pytest.mark.parametrize("preset", ["balanced", "aggressive"])
@pytest.mark.parametrize(("source", "name"), list(_decoder_cases()))
def test_fused_decoder_computes_what_the_unfused_one_does(tmp_path, monkeypatch, source, name, preset):
    path = source(tmp_path)
    fused = _compiled(path, preset, tmp_path / "fused.onnx", True, monkeypatch)
    unfused = _compiled(path, preset, tmp_path / "unfused.onnx", False, monkeypatch)
    fuse_record = next(r for r in fused.records if r.pass_name == "fuse_siblings")
    assert fuse_record.stats["groups"] >= 2  # q/k/v and gate/up of every decoder layer
    assert fuse_record.stats["calls_after"] < fuse_record.stats["calls_before"]
    assert [(r.name, r.layer_type, dict(r.precisions), r.op) for r in fused.layers] == [
        (r.name, r.layer_type, dict(r.precisions), r.op) for r in unfused.layers
    ]
    assert any(r.fused for r in fused.layers) and not any(r.fused for r in unfused.layers)
    feeds = _feeds(path, name)
    got = runtime.session(str(tmp_path / "fused.onnx")).run(None, feeds)
    want = runtime.session(str(tmp_path / "unfused.onnx")).run(None, feeds)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
