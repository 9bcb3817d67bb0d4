"""normalize: one test per case of its docstring (names, order, ops, checker, opset, shapes, original)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from bitnet_onnx.config.config import MixedPrecisionConfig
from bitnet_onnx.core.errors import UnsupportedModelError
from bitnet_onnx.core.log import PassRecord
from bitnet_onnx.passes._graph import SMALL_CONSTANT, import_graph, is_lazy, load_model
from bitnet_onnx.passes.base import PassContext, PassResult, Pipeline
from bitnet_onnx.passes.p10_normalize import MIN_OPSET, NormalizePass
from bitnet_onnx.passes.p20_annotate_layers import AnnotateLayersPass
from bitnet_onnx.passes.p30_assign_precision import AssignPrecisionPass
from bitnet_onnx.passes.p50_rewrite import RewritePass
from bitnet_onnx.runtime.model_file import session_for
from models import llama

FIXTURES = Path(__file__).resolve().parents[2] / "models" / "fixtures"


def _normalize(
    model: onnx.ModelProto | Path, base_dir: Path | None = None
) -> tuple[gs.Graph, PassContext, PassResult]:
    loaded = load_model(model, base_dir=base_dir)
    graph = import_graph(loaded)
    ctx = PassContext(config=None, model_dir=loaded.base_dir)
    return graph, ctx, NormalizePass().run(graph, ctx)


def _model(
    nodes: list[onnx.NodeProto],
    *,
    opset: int = 17,
    inits: tuple[onnx.TensorProto, ...] = (),
    domains: tuple[tuple[str, int], ...] = (),
    inputs: tuple[str, ...] = ("x",),
    output: str = "y",
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 4]) for name in inputs],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", 4])],
        list(inits),
    )
    imports = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, v) for d, v in domains)]
    return helper.make_model(graph, opset_imports=imports)


def _weight(name: str = "w", shape: tuple[int, ...] = (4, 4)) -> onnx.TensorProto:
    return numpy_helper.from_array(np.random.default_rng(1).standard_normal(shape).astype(np.float32), name)


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _chain(names: list[str]) -> list[onnx.NodeProto]:
    """x → MatMul(w) → Relu → Neg → y, with the given node names."""
    return [
        helper.make_node("MatMul", ["x", "w"], ["h"], name=names[0]),
        helper.make_node("Relu", ["h"], ["r"], name=names[1]),
        helper.make_node("Neg", ["r"], ["y"], name=names[2]),
    ]


# -- 1. names ------------------------------------------------------------------------------------------


def test_unnamed_nodes_get_op_type_names() -> None:
    nodes = _chain(["", "", "/MatMul_0"])  # the last already holds the first generated MatMul name
    nodes[2].op_type = "MatMul"
    nodes[2].input[:] = ["r", "w"]
    graph, _, result = _normalize(_model(nodes, inits=(_weight(),)))
    assert [n.name for n in graph.nodes] == ["/MatMul_1", "/Relu_0", "/MatMul_0"]
    assert [(c.action, c.node, c.detail) for c in result.changes] == [
        ("rename", "/MatMul_1", "was unnamed"),
        ("rename", "/Relu_0", "was unnamed"),
    ]
    assert result.stats["renamed"] == 2 and result.modified


def test_duplicate_names_keep_the_first_and_suffix_the_rest() -> None:
    graph, _, result = _normalize(_model(_chain(["/dense", "/dense", "/dense_1"]), inits=(_weight(),)))
    assert [n.name for n in graph.nodes] == ["/dense", "/dense_2", "/dense_1"]
    assert [c.detail for c in result.changes] == ["was '/dense' (a duplicate)"]


def test_names_are_unique_across_subgraphs() -> None:
    then = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["t"], name="/node")],
        "then",
        [],
        [helper.make_tensor_value_info("t", 1, ["batch", 4])],
    )
    other = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["e"], name="")],
        "else",
        [],
        [helper.make_tensor_value_info("e", 1, ["batch", 4])],
    )
    nodes = [
        helper.make_node("Relu", ["x"], ["c0"], name="/node"),
        helper.make_node("ReduceMax", ["c0"], ["c1"], name="/max", keepdims=0),
        helper.make_node("Cast", ["c1"], ["c"], name="/cast", to=TensorProto.BOOL),
        helper.make_node("If", ["c"], ["y"], name="/if", then_branch=then, else_branch=other),
    ]
    graph, _, _ = _normalize(_model(nodes))
    names = [n.name for n in graph.nodes] + [
        n.name for node in graph.nodes for g in node.subgraphs() for n in g.nodes
    ]
    assert len(set(names)) == len(names) and "/node_1" in names and "/Neg_0" in names


# -- 2. order ------------------------------------------------------------------------------------------


def test_nodes_are_put_in_topological_order() -> None:
    model = _model(list(reversed(_chain(["/mm", "/relu", "/neg"]))), inits=(_weight(),))
    graph, ctx, result = _normalize(model)
    assert [n.name for n in graph.nodes] == ["/mm", "/relu", "/neg"]
    assert [c.action for c in result.changes] == ["reorder"] and result.stats["reordered"] == 2
    feeds = {"x": np.ones((2, 4), np.float32)}
    np.testing.assert_array_equal(
        _run(ctx.original, feeds)[0], -np.maximum(feeds["x"] @ numpy_helper.to_array(_weight()), 0)
    )


def test_a_sorted_model_keeps_its_order() -> None:
    graph, _, result = _normalize(FIXTURES / "llama_tiny.onnx")
    assert [n.name for n in graph.nodes] == [
        n.name for n in onnx.load(FIXTURES / "llama_tiny.onnx").graph.node
    ]
    assert result.stats["reordered"] == 0 and not [c for c in result.changes if c.action == "reorder"]


def test_a_cycle_is_refused_naming_its_nodes() -> None:
    nodes = [
        helper.make_node("Add", ["x", "b"], ["a"], name="/first"),
        helper.make_node("Relu", ["a"], ["b"], name="/second"),
        helper.make_node("Neg", ["a"], ["y"], name="/out"),
    ]
    with pytest.raises(
        UnsupportedModelError, match=r"has a cycle: 3 nodes wait on each other \('/first', '/second'"
    ):
        _normalize(_model(nodes))


def test_omitted_optional_inputs_do_not_order_nodes() -> None:
    nodes = [
        helper.make_node("Clip", ["x", "", "hi"], ["y"], name="/clip"),  # min omitted
        helper.make_node("Dropout", ["x"], ["hi_full", ""], name="/drop"),  # mask omitted
        helper.make_node("ReduceMax", ["hi_full"], ["hi"], name="/max", keepdims=0),
    ]
    graph, _, result = _normalize(_model(nodes))
    assert [n.name for n in graph.nodes] == ["/drop", "/max", "/clip"]
    assert result.stats["reordered"] == 3


# -- 3./4. ops and the checker -----------------------------------------------------------------------------


def test_onnxruntime_default_domain_op_passes_with_a_warning() -> None:
    config = llama.LlamaConfig(norm=llama.RMSNormStyle.SIMPLIFIED_LAYER_NORMALIZATION)
    source = llama.build(config)
    graph, ctx, result = _normalize(source)
    assert result.warnings == (
        "5 SimplifiedLayerNormalization nodes: defined by onnxruntime in the default domain but unknown to "
        "onnx.checker; not checked",
    )
    assert result.stats["unchecked_ops"] == 5
    assert all(n.domain in (None, "") for n in graph.nodes if n.op == "SimplifiedLayerNormalization")
    feeds = {"input_ids": np.arange(8, dtype=np.int64).reshape(1, 8)}
    np.testing.assert_allclose(_run(ctx.original, feeds)[0], _run(source, feeds)[0], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("domain", "op", "words"),
    [
        ("com.microsoft", "FastGelu", "1 FastGelu node: an onnxruntime contrib op (com.microsoft)"),
        ("com.microsoft", "NoSuchOp", "1 NoSuchOp node: not a com.microsoft op this onnxruntime defines"),
        (
            "my.ops",
            "Frobnicate",
            "1 Frobnicate node: from custom domain 'my.ops', which bitnet-onnx does not know",
        ),
    ],
)
def test_custom_domain_ops_pass_through_with_a_warning(domain: str, op: str, words: str) -> None:
    nodes = [helper.make_node(op, ["x"], ["y"], name="/custom", domain=domain)]
    graph, _, result = _normalize(_model(nodes, domains=((domain, 1),)))
    assert [(n.op, n.domain) for n in graph.nodes] == [(op, domain)]
    assert len(result.warnings) == 1 and result.warnings[0].startswith(words)


def test_undefined_default_domain_ops_are_all_listed() -> None:
    nodes = [
        helper.make_node("Matmul", ["x", "x"], ["h"], name="/typo"),
        helper.make_node("Frob", ["h"], ["y"], name="/frob"),
    ]
    with pytest.raises(UnsupportedModelError) as info:
        _normalize(_model(nodes))
    message = str(info.value)
    assert "neither ONNX nor onnxruntime define at opset 17" in message
    assert "node '/typo': op 'Matmul'" in message and "node '/frob': op 'Frob'" in message


def test_an_op_newer_than_the_models_opset_is_refused() -> None:
    nodes = [helper.make_node("RMSNormalization", ["x", "g"], ["y"], name="/norm")]
    with pytest.raises(UnsupportedModelError, match="op 'RMSNormalization'"):
        _normalize(_model(nodes, inits=(_weight("g", (4,)),)))


def test_an_invalid_model_fails_the_checker() -> None:
    nodes = [helper.make_node("Add", ["x", "ghost"], ["y"], name="/add")]
    with pytest.raises(UnsupportedModelError, match=r"graph 'g' is not a valid ONNX model: .*ghost"):
        _normalize(_model(nodes))


# -- 5. opset -------------------------------------------------------------------------------------------


def test_an_old_opset_is_upgraded_and_computes_the_same() -> None:
    source = llama.build(llama.LlamaConfig(opset=13))
    graph, ctx, result = _normalize(source)
    assert graph.opset == MIN_OPSET == 17
    assert [(c.action, c.detail) for c in result.changes] == [("upgrade_opset", "opset 13 → 17")]
    assert (result.stats["opset_before"], result.stats["opset_after"]) == (13, 17)
    assert {(o.domain, o.version) for o in ctx.original.opset_import} == {("", 17)}
    assert all(isinstance(graph.tensors()[t.name], gs.Constant) for t in source.graph.initializer)
    feeds = {"input_ids": np.arange(16, dtype=np.int64).reshape(2, 8)}
    np.testing.assert_allclose(_run(ctx.original, feeds)[0], _run(source, feeds)[0], rtol=1e-6, atol=1e-6)
    AnnotateLayersPass().run(graph, ctx)
    reference = PassContext(config=None)
    modern = import_graph(load_model(llama.build(llama.LlamaConfig())))
    NormalizePass().run(modern, reference)
    AnnotateLayersPass().run(modern, reference)
    assert list(ctx.layers) == list(reference.layers)


def test_an_opset_the_converter_cannot_upgrade_is_refused_with_its_reason() -> None:
    gru = helper.make_node("GRU", ["x", "w", "r"], ["y"], name="/gru", hidden_size=2)
    graph = helper.make_graph(
        [gru],
        "rnn",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "batch", 4]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 6, 4]),
            helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 6, 2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, "batch", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)])
    with pytest.raises(UnsupportedModelError) as info:
        _normalize(model)
    message = str(info.value)
    assert "graph 'rnn' uses opset 6, below the 17 bitnet-onnx needs" in message
    assert "No Adapter From Version $6 for GRU" in message
    assert "Re-export the model at opset 17 or newer" in message


def test_a_model_without_default_domain_nodes_is_not_upgraded() -> None:
    nodes = [helper.make_node("Frobnicate", ["x"], ["y"], name="/custom", domain="my.ops")]
    graph, _, result = _normalize(_model(nodes, opset=13, domains=(("my.ops", 1),)))
    assert graph.opset == 13 and not [c for c in result.changes if c.action == "upgrade_opset"]


# -- 6. shapes ----------------------------------------------------------------------------------------


def test_shapes_are_inferred_and_symbolic_dims_kept() -> None:
    nodes = _chain(["/mm", "/relu", "/neg"])
    graph, _, result = _normalize(_model(nodes, inits=(_weight(),)))
    tensors = graph.tensors()
    for name in ("h", "r", "y"):
        assert tensors[name].dtype == np.float32 and list(tensors[name].shape) == ["batch", 4]
    assert result.stats["value_info_inferred"] == 2  # h and r; y is a graph output
    assert result.modified


def _contrib_model(dtype: int) -> onnx.ModelProto:
    """x → SimplifiedLayerNormalization → FastGelu → SkipLayerNormalization(·, x) → Add(output, sum)."""
    kind = helper.tensor_dtype_to_np_dtype(dtype)
    gain = numpy_helper.from_array(np.linspace(0.5, 1.5, 8).astype(kind), "gain")
    shift = numpy_helper.from_array(np.linspace(-0.1, 0.1, 8).astype(kind), "shift")
    nodes = [
        helper.make_node("SimplifiedLayerNormalization", ["x", "gain"], ["n"], name="/norm", epsilon=1e-6),
        helper.make_node("FastGelu", ["n", "shift"], ["f"], name="/gelu", domain="com.microsoft"),
        helper.make_node("SkipLayerNormalization", ["f", "x", "gain", "shift"], ["s", "", "", "sum"],
                         name="/skip", domain="com.microsoft", epsilon=1e-5),
        helper.make_node("Add", ["s", "sum"], ["y"], name="/add"),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", dtype, ["batch", "seq", 8])],
        [helper.make_tensor_value_info("y", dtype, ["batch", "seq", 8])],
        [gain, shift],
    )
    imports = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=imports)


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.FLOAT16])
def test_tensors_after_onnxruntime_ops_are_typed(dtype: int) -> None:
    source = _contrib_model(dtype)
    graph, ctx, result = _normalize(source)
    kind = helper.tensor_dtype_to_np_dtype(dtype)
    for name in ("n", "f", "s", "sum", "y"):
        tensor = graph.tensors()[name]
        assert (tensor.dtype, list(tensor.shape)) == (kind, ["batch", "seq", 8]), name
    assert result.stats["untyped_tensors"] == 0 and result.stats["value_info_inferred"] == 4
    assert [(n.op, n.domain or "") for n in graph.nodes] == [
        ("SimplifiedLayerNormalization", ""),
        ("FastGelu", "com.microsoft"),
        ("SkipLayerNormalization", "com.microsoft"),
        ("Add", ""),
    ]
    assert {o.domain for o in ctx.original.opset_import} == {"", "com.microsoft"}
    # onnxruntime checks the inferred value_info against its own inference when it loads the model.
    assert {v.name for v in ctx.original.graph.value_info} == {"n", "f", "s", "sum"}
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 8)).astype(kind)}
    np.testing.assert_array_equal(_run(ctx.original, feeds)[0], _run(source, feeds)[0])


def test_an_old_opset_model_with_onnxruntime_ops_is_upgraded_and_typed() -> None:
    source = llama.build(llama.LlamaConfig(norm=llama.RMSNormStyle.SIMPLIFIED_LAYER_NORMALIZATION, opset=13))
    graph, ctx, result = _normalize(source)
    assert graph.opset == MIN_OPSET and result.stats["untyped_tensors"] == 0
    assert all(t.dtype is not None for t in graph.tensors().values())
    norms = [n for n in graph.nodes if n.op == "SimplifiedLayerNormalization"]
    assert len(norms) == 5 and all((n.domain or "") == "" for n in norms)
    assert {(o.domain, o.version) for o in ctx.original.opset_import} == {("", MIN_OPSET)}
    feeds = {"input_ids": np.arange(16, dtype=np.int64).reshape(2, 8)}
    np.testing.assert_allclose(_run(ctx.original, feeds)[0], _run(source, feeds)[0], rtol=1e-6, atol=1e-6)


def _custom_op_model(declare: bool) -> onnx.ModelProto:
    """x → my.ops Frobnicate → t → MatMul(w) → MatMul(head) → y; `declare` gives t's type in value_info."""
    nodes = [
        helper.make_node("Frobnicate", ["x"], ["t"], name="/custom", domain="my.ops"),
        helper.make_node("MatMul", ["t", "w"], ["h"], name="/proj/MatMul"),
        helper.make_node("MatMul", ["h", "head"], ["y"], name="/head/MatMul"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])],
        [_weight("w", (64, 64)), _weight("head", (64, 64))],
        value_info=[helper.make_tensor_value_info("t", TensorProto.FLOAT, ["batch", 64])] if declare else [],
    )
    imports = [helper.make_opsetid("", 17), helper.make_opsetid("my.ops", 1)]
    return helper.make_model(graph, opset_imports=imports)


def _rewrite(model: onnx.ModelProto) -> tuple[gs.Graph, list[PassRecord]]:
    """The graph after normalize → annotate_layers → assign_precision → rewrite (balanced); the records."""
    graph = import_graph(load_model(model))
    ctx = PassContext(config=MixedPrecisionConfig.new("balanced"), measure_kernels=False)
    passes = [NormalizePass(), AnnotateLayersPass(), AssignPrecisionPass(), RewritePass()]
    return graph, Pipeline(passes).run(graph, ctx)


def test_an_unknown_custom_op_leaves_what_follows_untyped_and_the_rewrite_refuses_it() -> None:
    graph, _, result = _normalize(_custom_op_model(declare=False))
    assert [graph.tensors()[name].dtype for name in ("t", "h")] == [None, None]
    assert result.stats["untyped_tensors"] == 2
    assert result.warnings[-1].startswith(
        "2 tensors stay untyped from node '/custom' (my.ops Frobnicate) on: onnx shape inference cannot "
        "type its outputs. The rewrite refuses to convert a layer that needs one of these types; declare"
    )
    # The ternary projection's int8 kernel takes its input in the type it has, which nobody knows.
    with pytest.raises(UnsupportedModelError) as info:
        _rewrite(_custom_op_model(declare=False))
    message = str(info.value)
    assert "tensor 't', the output of node '/custom' (my.ops Frobnicate), has no type" in message
    assert "does not guess" in message and "value_info" in message


def test_a_custom_op_with_declared_output_types_is_rewritten() -> None:
    graph, (normalized, *_) = _rewrite(_custom_op_model(declare=True))
    assert normalized.stats["untyped_tensors"] == 0 and len(normalized.warnings) == 1  # the unchecked op
    assert [n.op for n in graph.nodes][:2] == ["Frobnicate", "BitLinear"]


# -- 7. the original --------------------------------------------------------------------------------------


def test_original_is_the_normalized_model_and_runs_like_the_input() -> None:
    path = FIXTURES / "bert_tiny.onnx"
    graph, ctx, _ = _normalize(path)
    original: onnx.ModelProto = ctx.original
    assert [n.name for n in original.graph.node] == [n.name for n in graph.nodes]
    big = [t for t in original.graph.initializer if math.prod(t.dims) > SMALL_CONSTANT]
    assert big and all(t.data_location == TensorProto.EXTERNAL for t in big)  # referenced, not copied
    inputs = dict(np.load(FIXTURES / "bert_tiny.inputs.npz"))
    expected = dict(np.load(FIXTURES / "bert_tiny.outputs.npz"))
    (logits,) = session_for(original, ctx.model_dir).run(None, inputs)
    np.testing.assert_allclose(logits, expected["logits"], rtol=1e-5, atol=1e-5)
    graph.nodes.clear()  # later passes edit the graph, never the original
    assert len(original.graph.node) > 0


def test_normalizing_twice_changes_nothing() -> None:
    _, ctx, _ = _normalize(FIXTURES / "gpt2_tiny.onnx")
    graph, again, result = _normalize(ctx.original, ctx.model_dir)
    assert not result.modified and result.changes == () and result.stats["value_info_inferred"] == 0
    assert [n.name for n in again.original.graph.node] == [n.name for n in graph.nodes]


def test_external_weights_are_not_read(tmp_path: Path) -> None:
    path = tmp_path / "llama.onnx"
    onnx.save_model(
        llama.build(llama.LlamaConfig()),
        path,
        save_as_external_data=True,
        location="llama.onnx.data",
        size_threshold=0,
    )
    graph, ctx, _ = _normalize(path)
    AnnotateLayersPass().run(graph, ctx)
    constants = [t for t in graph.tensors().values() if isinstance(t, gs.Constant)]
    assert constants and all(is_lazy(t) for t in constants)
    assert all(t.data_location == TensorProto.EXTERNAL for t in ctx.original.graph.initializer)
