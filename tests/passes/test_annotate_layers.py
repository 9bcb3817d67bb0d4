"""annotate_layers on every builder style and every fixture (exact layer lists), plus naming, ties,
control flow, warnings, records and explain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from bitnet_onnx.core.errors import UnsupportedModelError
from bitnet_onnx.core.layers import Layer, LayerType
from bitnet_onnx.core.metadata import LAYER_KEY, LAYER_TYPE_KEY, RULE_KEY
from bitnet_onnx.passes._graph import import_graph, load_model
from bitnet_onnx.passes._match import GraphView
from bitnet_onnx.passes.base import PassContext, PassError, PassResult, Pipeline
from bitnet_onnx.passes.p10_normalize import NormalizePass
from bitnet_onnx.passes.p20_annotate_layers import AnnotateLayersPass, explain, module_scope, scope_name
from models import bert, convnet, llama

FIXTURES = Path(__file__).resolve().parents[2] / "models" / "fixtures"
DECODERS = FIXTURES / "decoders"
L, A, N, E, OUT, C, ACT = (
    LayerType.LINEAR,
    LayerType.ATTENTION,
    LayerType.NORMALIZATION,
    LayerType.EMBEDDING,
    LayerType.OUTPUT,
    LayerType.CONVOLUTION,
    LayerType.ACTIVATION,
)
Row = tuple[str, LayerType, str | None]


def _annotate(model: onnx.ModelProto | Path) -> tuple[gs.Graph, PassContext, PassResult]:
    loaded = load_model(model)
    graph = import_graph(loaded)
    ctx = PassContext(config=None, model_dir=loaded.base_dir, node_metadata=loaded.info.node_metadata)
    NormalizePass().run(graph, ctx)
    ctx.passes_run.append("normalize")
    return graph, ctx, AnnotateLayersPass().run(graph, ctx)


def _rows(ctx: PassContext) -> list[Row]:
    return [(layer.name, layer.layer_type, layer.block) for layer in ctx.layers.values()]


# -- expected layer lists ------------------------------------------------------------------------------


def _llama_rows(layers: int, *, act_before_up: bool) -> list[Row]:
    rows: list[Row] = [("model.embed_tokens", E, None)]
    for i in range(layers):
        p = f"model.layers.{i}"
        attn = f"{p}.self_attn"
        mlp = [(f"{p}.mlp.gate_proj", L, None), (f"{p}.mlp.up_proj", L, None), (f"{p}.mlp.act_fn", ACT, None)]
        if act_before_up:  # torch places the SiLU right after gate_proj
            mlp[1], mlp[2] = mlp[2], mlp[1]
        rows += [
            (f"{p}.input_layernorm", N, None),
            (f"{attn}.q_proj", L, attn),
            (f"{attn}.k_proj", L, attn),
            (f"{attn}.v_proj", L, attn),
            (attn, A, attn),
            (f"{attn}.o_proj", L, attn),
            (f"{p}.post_attention_layernorm", N, None),
            *mlp,
            (f"{p}.mlp.down_proj", L, None),
        ]
    return [*rows, ("model.norm", N, None), ("lm_head", OUT, None)]


def _bert_rows(layers: int) -> list[Row]:
    e = "bert.embeddings"
    rows: list[Row] = [
        (f"{e}.word_embeddings", E, None),
        (f"{e}.token_type_embeddings", E, None),
        (f"{e}.position_embeddings", E, None),
        (f"{e}.LayerNorm", N, None),
    ]
    for i in range(layers):
        p = f"bert.encoder.layer.{i}"
        attn = f"{p}.attention.self"
        rows += [
            (f"{attn}.query", L, attn),
            (f"{attn}.key", L, attn),
            (f"{attn}.value", L, attn),
            (attn, A, attn),
            (f"{p}.attention.output.dense", L, attn),
            (f"{p}.attention.output.LayerNorm", N, None),
            (f"{p}.intermediate.dense", L, None),
            (f"{p}.intermediate.intermediate_act_fn", ACT, None),
            (f"{p}.output.dense", L, None),
            (f"{p}.output.LayerNorm", N, None),
        ]
    return [
        *rows,
        ("bert.pooler.dense", L, None),
        ("bert.pooler.activation", ACT, None),
        ("classifier", OUT, None),
    ]


def _gpt2_rows(layers: int) -> list[Row]:
    rows: list[Row] = [("transformer.wte", E, None), ("transformer.wpe", E, None)]
    for i in range(layers):
        p = f"transformer.h.{i}"
        rows += [
            (f"{p}.ln_1", N, None),
            (f"{p}.attn.c_attn", L, f"{p}.attn"),
            (f"{p}.attn", A, f"{p}.attn"),
            (f"{p}.attn.c_proj", L, f"{p}.attn"),
            (f"{p}.ln_2", N, None),
            (f"{p}.mlp.c_fc", L, None),
            (f"{p}.mlp.act", ACT, None),
            (f"{p}.mlp.c_proj", L, None),
        ]
    return [*rows, ("transformer.ln_f", N, None), ("lm_head", OUT, None)]


_RESNET_ROWS: list[Row] = [
    ("conv1", C, None),
    ("relu", ACT, None),
    ("layer1.conv1", C, None),
    ("layer1.relu", ACT, None),
    ("layer1.conv2", C, None),
    ("layer1.relu_1", ACT, None),
    ("layer2.downsample.0", C, None),
    ("layer2.conv1", C, None),
    ("layer2.relu", ACT, None),
    ("layer2.conv2", C, None),
    ("layer2.relu_1", ACT, None),
    ("fc", OUT, None),
]


def _convnet_rows(fold: bool) -> list[Row]:
    rows: list[Row] = []
    for j in range(3):
        rows += [(f"features.{4 * j}", C, None)]
        rows += [] if fold else [(f"features.{4 * j + 1}", N, None)]
        rows += [(f"features.{4 * j + 2}", ACT, None)]
    return [*rows, ("classifier", OUT, None)]


# -- builders ------------------------------------------------------------------------------------------


_LLAMA_STYLES = [
    (norm, head, tie) for norm in llama.RMSNormStyle for head in llama.HeadStyle for tie in (False, True)
]


@pytest.mark.parametrize(("norm", "head", "tie"), _LLAMA_STYLES, ids=lambda v: getattr(v, "value", str(v)))
def test_llama_builder_every_style(norm: llama.RMSNormStyle, head: llama.HeadStyle, tie: bool) -> None:
    opset = 23 if norm is llama.RMSNormStyle.RMS_NORMALIZATION else 17
    config = llama.LlamaConfig(norm=norm, head=head, tie_embeddings=tie, opset=opset)
    _, ctx, result = _annotate(llama.build(config))
    assert _rows(ctx) == _llama_rows(2, act_before_up=False)
    norm_rule = "rms_norm" if norm is llama.RMSNormStyle.DECOMPOSED else "fused_norm"
    assert {layer.rule for layer in ctx.layers.values() if layer.layer_type is N} == {norm_rule}
    head_layer, table = ctx.layers["lm_head"], ctx.layers["model.embed_tokens"]
    if tie:
        assert (head_layer.tied_with, table.tied_with) == ("model.embed_tokens", "lm_head")
        assert head_layer.weight == table.weight == "model.embed_tokens.weight"
        assert head_layer.weight_nk is True  # the table is [vocab, hidden] = [N, K]
        assert result.stats["tied"] == 1
    else:
        assert head_layer.tied_with is None and head_layer.weight == "lm_head.weight"
        assert head_layer.weight_nk is (head is llama.HeadStyle.GEMM)
    assert result.warnings == ()


@pytest.mark.parametrize("norm", list(bert.LayerNormStyle), ids=lambda v: v.value)
@pytest.mark.parametrize("gelu", list(bert.GeluStyle), ids=lambda v: v.value)
@pytest.mark.parametrize("linear", list(bert.LinearStyle), ids=lambda v: v.value)
def test_bert_builder_every_style(
    norm: bert.LayerNormStyle, gelu: bert.GeluStyle, linear: bert.LinearStyle
) -> None:
    _, ctx, _ = _annotate(bert.build(bert.BertConfig(norm=norm, gelu=gelu, linear=linear)))
    assert _rows(ctx) == _bert_rows(2)
    rules = {layer.name.rsplit(".", 1)[-1]: layer.rule for layer in ctx.layers.values()}
    assert rules["intermediate_act_fn"] == f"gelu_{gelu.value}"
    assert rules["LayerNorm"] == (
        "fused_norm" if norm is bert.LayerNormStyle.LAYER_NORMALIZATION else "layer_norm"
    )
    for layer in ctx.layers.values():
        if layer.layer_type in (L, OUT):
            assert layer.bias == f"{layer.name}.bias" and layer.weight == f"{layer.name}.weight"
            assert layer.weight_nk is (linear is bert.LinearStyle.GEMM)


@pytest.mark.parametrize("fold", [True, False])
def test_convnet_builder(fold: bool) -> None:
    _, ctx, _ = _annotate(convnet.build(convnet.ConvNetConfig(fold_batchnorm=fold)))
    assert _rows(ctx) == _convnet_rows(fold)
    conv = ctx.layers["features.4"]
    assert (conv.weight, conv.weight_shape, conv.bias) == (
        "features.4.weight",
        (32, 16, 3, 3),
        "features.4.bias",
    )


# -- fixtures ------------------------------------------------------------------------------------------


_FIXTURE_ROWS = {
    "llama_tiny": _llama_rows(2, act_before_up=True),
    "bert_tiny": _bert_rows(2),
    "gpt2_tiny": _gpt2_rows(2),
    "gpt2_tiny_unfolded": _gpt2_rows(2),
    "convnet_tiny": _RESNET_ROWS,
}
# Ops that are always part of a layer in these models, unless they only compute a constant (GPT-2's
# √scale is Sqrt(Constant)).
_LAYER_OPS = {
    "MatMul",
    "Gemm",
    "Conv",
    "Softmax",
    "LayerNormalization",
    "Sqrt",
    "Erf",
    "Tanh",
    "Relu",
    "Sigmoid",
}


@pytest.mark.parametrize("name", list(_FIXTURE_ROWS))
def test_fixture_layers(name: str) -> None:
    graph, ctx, result = _annotate(FIXTURES / f"{name}.onnx")
    assert _rows(ctx) == _FIXTURE_ROWS[name]
    view = GraphView(graph)
    missed = [
        n.name
        for n in graph.nodes
        if n.op in _LAYER_OPS and n.name not in ctx.annotations and not view.is_constant(n.outputs[0])
    ]
    missed += [
        n.name
        for n in graph.nodes
        if n.op == "Gather" and isinstance(n.inputs[0], gs.Constant) and n.name not in ctx.annotations
    ]
    assert missed == []
    assert result.stats["layers"] == len(_FIXTURE_ROWS[name]) and result.stats["conflicts"] == 0


def test_llama_fixture_linear_layer_record() -> None:
    _, ctx, _ = _annotate(FIXTURES / "llama_tiny.onnx")
    q = ctx.layers["model.layers.0.self_attn.q_proj"]
    assert q == Layer(
        name="model.layers.0.self_attn.q_proj",
        layer_type=L,
        index=2,
        nodes=("/model/layers.0/self_attn/q_proj/MatMul",),
        rule="linear",
        weight="onnx::MatMul_702",
        weight_shape=(64, 64),
        bias=None,
        block="model.layers.0.self_attn",
        tied_with=None,
        weight_nodes=(),
        weight_nk=False,
    )
    norm = ctx.layers["model.layers.1.input_layernorm"]
    # the exporter deduplicated the all-ones gains: the norm reads layer 0's through an Identity
    assert norm.weight == "model.layers.0.input_layernorm.weight"
    assert norm.nodes[0] == "/model/layers.1/input_layernorm/Sqrt"
    assert "Identity_216" in norm.nodes and norm.weight_nodes == ("Identity_216",)
    assert {n.rsplit("/", 1)[-1].split("_")[0] for n in norm.nodes} == {
        "Sqrt",
        "Cast",
        "Pow",
        "ReduceMean",
        "Add",
        "Div",
        "Mul",
        "Identity",
    }


def test_bert_fixture_bias_through_identity() -> None:
    _, ctx, _ = _annotate(FIXTURES / "bert_tiny.onnx")
    query = ctx.layers["bert.encoder.layer.0.attention.self.query"]
    assert query.nodes[0] == "/bert/encoder/layer.0/attention/self/query/MatMul"
    assert set(query.nodes[1:]) == {"/bert/encoder/layer.0/attention/self/query/Add", "Identity_127"}
    # zero biases were deduplicated by the exporter: the Add reads an alias of another initializer
    assert query.bias == "bert.embeddings.LayerNorm.bias"
    classifier = ctx.layers["classifier"]
    assert (classifier.weight, classifier.bias, classifier.weight_nk) == (
        "classifier.weight",
        "classifier.bias",
        True,
    )


def test_tied_head_reads_the_table_once() -> None:
    graph, ctx, result = _annotate(FIXTURES / "gpt2_tiny_unfolded.onnx")
    wte, head = ctx.layers["transformer.wte"], ctx.layers["lm_head"]
    assert (wte.tied_with, head.tied_with) == ("lm_head", "transformer.wte")
    assert wte.weight == head.weight == "transformer.wte.weight"
    assert head.nodes == ("/lm_head/MatMul", "/lm_head/Transpose") and head.weight_nodes == (
        "/lm_head/Transpose",
    )
    assert head.weight_nk is True and head.weight_shape == (256, 64)
    constants = [t for t in graph.tensors().values() if isinstance(t, gs.Constant) and t.name == wte.weight]
    assert len(constants) == 1
    assert result.stats["tied"] == 1
    assert any(
        c.layer == "lm_head" and c.detail == "output, tied_with=transformer.wte" for c in result.changes
    )


def test_folded_gpt2_has_no_tie() -> None:
    _, ctx, result = _annotate(FIXTURES / "gpt2_tiny.onnx")
    assert ctx.layers["lm_head"].tied_with is None and result.stats["tied"] == 0


# -- annotations and the pass record ------------------------------------------------------------------


def test_every_node_of_every_layer_is_annotated_once() -> None:
    graph, ctx, result = _annotate(FIXTURES / "llama_tiny.onnx")
    seen: dict[str, str] = {}
    for layer in ctx.layers.values():
        for node in layer.nodes:
            assert node not in seen, (node, seen.get(node), layer.name)
            seen[node] = layer.name
            assert ctx.annotations[node] == {
                LAYER_KEY: layer.name,
                LAYER_TYPE_KEY: layer.layer_type.value,
                RULE_KEY: layer.rule,
            }
    assert set(ctx.annotations) == set(seen)
    unassigned = sum(1 for n in graph.nodes if n.name not in seen)
    assert result.stats["unassigned"] == unassigned
    assert sum(v for k, v in result.stats.items() if k.startswith("unassigned.")) == unassigned
    assert [c.layer for c in result.changes] == list(ctx.layers)
    assert all(c.action == "annotate" for c in result.changes)
    first = result.changes[1]
    assert (first.node, first.source, first.detail) == (
        "/model/layers.0/input_layernorm/Sqrt",
        "rms_norm",
        "normalization",
    )
    assert [layer.index for layer in ctx.layers.values()] == list(range(len(ctx.layers)))


def test_unassigned_nodes_are_counted_by_op_type() -> None:
    _, _, result = _annotate(FIXTURES / "convnet_tiny.onnx")
    counts = {k: v for k, v in result.stats.items() if k.startswith("unassigned")}
    assert counts == {
        "unassigned": 5,
        "unassigned.Add": 2,
        "unassigned.Flatten": 1,
        "unassigned.GlobalAveragePool": 1,
        "unassigned.MaxPool": 1,
    }


def test_the_pass_requires_normalize() -> None:
    graph = import_graph(load_model(FIXTURES / "convnet_tiny.onnx"))
    with pytest.raises(PassError, match="requires \\['normalize'\\]"):
        Pipeline([AnnotateLayersPass()]).run(graph, PassContext(config=None))


# -- names -----------------------------------------------------------------------------------------------


# -- dynamo exports and BitNet ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("torchscript", "dynamo"),
    [
        ("llama_tiny.onnx", "decoders/llama_tiny_kv_dynamo.onnx"),
        ("bert_tiny.onnx", "decoders/bert_tiny_dynamo.onnx"),
    ],
)
def test_both_exporters_of_a_model_give_the_same_layers(torchscript: str, dynamo: str) -> None:
    """The dynamo export names nodes `node_linear_3` and weights `val_83`; its metadata's module
    scopes give the names TorchScript's node scopes give."""
    _, ts_ctx, _ = _annotate(FIXTURES / torchscript)
    graph, dynamo_ctx, result = _annotate(FIXTURES / dynamo)
    assert _rows(dynamo_ctx) == _rows(ts_ctx)
    assert [layer.rule for layer in dynamo_ctx.layers.values()] == [
        layer.rule for layer in ts_ctx.layers.values()
    ]
    assert result.stats["conflicts"] == 0
    assert any(n.name.startswith("node_") for n in graph.nodes)  # the names come from the metadata


def test_without_its_metadata_a_dynamo_export_has_no_module_names() -> None:
    loaded = load_model(DECODERS / "llama_tiny_kv_dynamo.onnx")
    graph = import_graph(loaded)
    ctx = PassContext(config=None)
    NormalizePass().run(graph, ctx)
    ctx.passes_run.append("normalize")
    AnnotateLayersPass().run(graph, ctx)
    names = list(ctx.layers)
    assert "model.layers.0.self_attn.q_proj" not in names and any(n.startswith("val_") for n in names)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "['', 'model', 'model.layers.0', 'model.layers.0.mlp.up_proj', 'linear_5']",
            "model.layers.0.mlp.up_proj",
        ),
        ("['', 'lm_head', 'linear_14']", "lm_head"),
        ("['', 'linear']", ""),  # a node of the root module: no module name
        ("['linear']", ""),
        ("not a list", ""),
        ("{'a': 1}", ""),
        (None, ""),
    ],
)
def test_module_scope(value: str | None, expected: str) -> None:
    metadata = () if value is None else (("pkg.torch.onnx.name_scopes", value), ("other", "x"))
    assert module_scope(metadata) == expected


def _bitnet_rows(layers: int) -> list[Row]:
    """LLaMA's layers plus BitNet's sub-norms: after the attention (its o_proj stays the block's
    projection: the norm between the heads and o_proj is crossed) and before down_proj."""
    rows: list[Row] = []
    for row in _llama_rows(layers, act_before_up=True):
        name, layer_type, _ = row
        if name.endswith(".mlp.down_proj"):
            rows.append((name.replace("down_proj", "ffn_sub_norm"), N, None))
        rows.append(row)
        if layer_type is A:
            rows.append((f"{name}.attn_sub_norm", N, None))
    return rows


def test_bitnet_b158_layers_sub_norms_and_squared_relu() -> None:
    graph, ctx, result = _annotate(DECODERS / "bitnet_tiny_dynamo.onnx")
    assert _rows(ctx) == _bitnet_rows(2)
    act = ctx.layers["model.layers.0.mlp.act_fn"]
    assert act.rule == "squared_relu" and [graph_op(graph, n) for n in act.nodes] == ["Relu", "Pow"]
    assert all(
        ctx.layers[f"model.layers.{i}.{n}"].rule == "rms_norm"
        for i in (0, 1)
        for n in ("self_attn.attn_sub_norm", "mlp.ffn_sub_norm")
    )
    assert "unassigned.Pow" not in result.stats and "unassigned.Relu" not in result.stats


def graph_op(graph: gs.Graph, name: str) -> str:
    return next(n.op for n in graph.nodes if n.name == name)


@pytest.mark.parametrize(
    ("node", "scope"),
    [
        ("/model/layers.0/self_attn/q_proj/MatMul", "model.layers.0.self_attn.q_proj"),
        ("/layer2/downsample/downsample.0/Conv", "layer2.downsample.0"),
        ("/lm_head/MatMul", "lm_head"),
        ("/MatMul_3", ""),
        ("MatMul_3", ""),
    ],
)
def test_scope_name(node: str, scope: str) -> None:
    assert scope_name(node) == scope


def _two_dense(names: tuple[str, str], weights: tuple[str, str]) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), w) for w in weights]
    nodes = [
        helper.make_node("MatMul", ["x", weights[0]], ["h"], name=names[0]),
        helper.make_node("Relu", ["h"], ["r"], name="/act/Relu"),
        helper.make_node("MatMul", ["r", weights[1]], ["m"], name=names[1]),
        helper.make_node("Relu", ["m"], ["y"], name="/act2/Relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(
    ("names", "weights", "expected"),
    [
        (("/dense/MatMul", "/dense/MatMul_1"), ("onnx::MatMul_1", "onnx::MatMul_2"), ["dense", "dense_1"]),
        (("/a/MatMul", "/b/MatMul"), ("enc.fc1.weight", "enc.fc2.weight"), ["enc.fc1", "enc.fc2"]),
        (("", ""), ("onnx::MatMul_1", "onnx::MatMul_2"), ["MatMul_0", "MatMul_1"]),
        (("", ""), ("w1", "w2"), ["w1", "w2"]),
    ],
    ids=["scope_collision", "parameter_names", "unnamed", "plain_weight_names"],
)
def test_layer_names(names: tuple[str, str], weights: tuple[str, str], expected: list[str]) -> None:
    _, ctx, _ = _annotate(_two_dense(names, weights))
    assert [n for n, layer in ctx.layers.items() if layer.layer_type is L] == expected


# -- control flow and odd inputs -----------------------------------------------------------------------


def _if_with_layers() -> onnx.ModelProto:
    """A main-graph MatMul on `shared.weight`, and an If whose branch multiplies by the same weight."""
    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32), "shared.weight")
    branch = helper.make_graph(
        [helper.make_node("MatMul", ["h", "shared.weight"], ["t"], name="/then/MatMul")],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["b", 4])],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["h"], ["e"], name="/else/Identity")],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["b", 4])],
    )
    nodes = [
        helper.make_node("MatMul", ["x", "shared.weight"], ["h"], name="/dense/MatMul"),
        helper.make_node("If", ["c"], ["y"], name="/branch/If", then_branch=branch, else_branch=other),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4]),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_layers_inside_control_flow_are_left_with_a_warning() -> None:
    _, ctx, result = _annotate(_if_with_layers())
    assert list(ctx.layers) == ["dense"]  # 'shared.weight' has two readers, so the scope names the layer
    assert "/then/MatMul" not in ctx.annotations
    assert result.warnings == (
        "If '/branch/If' holds 2 nodes in subgraphs (1 MatMul: '/then/MatMul'); layers inside control flow "
        "are not annotated "
        "and keep their original precision",
        "initializer 'shared.weight', the weight of layer 'dense', is also read inside If '/branch/If'; "
        "later passes must not replace or repack it in place",
    )


def test_weights_fed_as_graph_inputs_are_warned_about() -> None:
    model = _two_dense(("/a/MatMul", "/b/MatMul"), ("a.weight", "b.weight"))
    moved = model.graph.initializer.pop(1)
    model.graph.input.append(helper.make_tensor_value_info(moved.name, TensorProto.FLOAT, [4, 4]))
    _, ctx, result = _annotate(model)
    assert list(ctx.layers) == ["a", "act", "act2"]
    assert result.warnings == (
        "MatMul '/b/MatMul' reads its weight 'b.weight' from a graph input, so it is not compiled as a "
        "layer; store the weight as an initializer to compile it",
    )


# -- explain ---------------------------------------------------------------------------------------------


def test_explain_says_why_a_node_is_in_no_layer() -> None:
    model = _two_dense(("/a/MatMul", "/b/MatMul"), ("a.weight", "b.weight"))
    model.graph.initializer.pop(1)
    model.graph.input.append(helper.make_tensor_value_info("b.weight", TensorProto.FLOAT, [4, 4]))
    graph, _, _ = _annotate(model)
    results = explain(graph, "/b/MatMul")
    assert not results["linear"] and "'b.weight' is a graph input, not a constant" in results["linear"].reason
    assert not results["output_projection"] and "graph input" in results["output_projection"].reason
    assert "not one of this rule's anchors (Softmax)" in results["attention"].reason


def test_explain_shows_the_rule_that_covers_a_node() -> None:
    graph, _, _ = _annotate(FIXTURES / "gpt2_tiny.onnx")
    results = explain(graph, "/transformer/h.0/mlp/act/Pow")
    assert results["gelu_tanh"] and "/transformer/h.0/mlp/act/Pow" in {
        n.name for n in results["gelu_tanh"].matched
    }
    assert not results["rms_norm"]


def test_explain_unknown_node_suggests_close_names() -> None:
    graph, _, _ = _annotate(FIXTURES / "convnet_tiny.onnx")
    with pytest.raises(
        UnsupportedModelError, match=r"no node named '/conv1/Cnv'; did you mean '/conv1/Conv'"
    ):
        explain(graph, "/conv1/Cnv")


def test_a_match_over_another_layers_node_is_dropped_and_counted_per_rule() -> None:
    """Two GELUs read one x/√2: the first claims the Div, so the second match conflicts with it."""
    nodes = [helper.make_node("Div", ["x", "sqrt2"], ["d"], name="div")]
    for i in (1, 2):
        nodes += [
            helper.make_node("Erf", ["d"], [f"e{i}"], name=f"erf{i}"),
            helper.make_node("Add", [f"e{i}", "one"], [f"a{i}"], name=f"add{i}"),
            helper.make_node("Mul", ["x", f"a{i}"], [f"m{i}"], name=f"mul{i}"),
            helper.make_node("Mul", [f"m{i}", "half"], [f"y{i}"], name=f"half{i}"),
        ]
    scalars = {"sqrt2": np.sqrt(2.0), "one": 1.0, "half": 0.5}
    graph = helper.make_graph(
        nodes,
        "two_gelus",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [2, 4]) for i in (1, 2)],
        [numpy_helper.from_array(np.array(v, np.float32), name) for name, v in scalars.items()],
    )
    _, ctx, result = _annotate(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert [layer.rule for layer in ctx.layers.values()].count("gelu_erf") == 1
    assert result.stats["conflicts"] == result.stats["conflicts.gelu_erf"] == 1
