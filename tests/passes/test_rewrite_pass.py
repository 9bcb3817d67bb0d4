"""The rewrite pass (passes/p50_rewrite.py): order, cleanup, annotations, log records, determinism, and
whole models from models/ through normalize → annotate_layers → assign_precision → rewrite."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from bitnet_onnx.config.config import MixedPrecisionConfig
from bitnet_onnx.core.dtypes import DType
from bitnet_onnx.core.layers import ComponentType, LayerType
from bitnet_onnx.core.metadata import dtype_key
from bitnet_onnx.passes._graph import export_model, import_graph, load_model
from bitnet_onnx.passes.base import PassContext, PassError, Pipeline
from bitnet_onnx.passes.p10_normalize import NormalizePass
from bitnet_onnx.passes.p20_annotate_layers import AnnotateLayersPass
from bitnet_onnx.passes.p30_assign_precision import AssignPrecisionPass
from bitnet_onnx.passes.p50_rewrite import RewritePass
from models import inputs, llama
from models.weights import WeightInit
from tests.passes.rewrite_graphs import export, linear_case, make_plan, rewrite, run


def test_the_pass_needs_annotated_layers_and_a_plan():
    assert RewritePass.name == "rewrite" and RewritePass.requires == ("annotate_layers", "assign_precision")
    case = linear_case()
    with pytest.raises(PassError, match="requires"):
        Pipeline([RewritePass()]).run(case.graph, PassContext(config=None))


def test_replaced_nodes_and_dead_initializers_are_gone_and_their_annotations_too():
    case = linear_case()
    plan = make_plan(case.layer, weights="BITNET158", activations="I8")
    annotations = {name: {"bitnet.layer": "model.proj"} for name in case.layer.nodes}
    ctx = PassContext(
        config=None, measure_kernels=False, layers={"model.proj": case.layer}, plan={"model.proj": plan},
        annotations=annotations, passes_run=["annotate_layers", "assign_precision"],
    )  # fmt: skip
    RewritePass().run(case.graph, ctx)
    assert [n.op for n in case.graph.nodes] == ["BitLinear"]
    names = {t.name for t in case.graph.tensors().values()}
    assert "model.proj.weight" not in names
    assert set(ctx.annotations) == {"model.proj/BitLinear"}


def test_every_node_a_layer_gained_is_annotated_with_its_precisions_op_and_rule():
    case = linear_case()
    plan = make_plan(case.layer, weights="BITNET158", activations="I8", bias="F16", outputs="F16")
    result, ctx = rewrite(case.graph, [plan])
    assert sorted(ctx.annotations) == sorted(n.name for n in case.graph.nodes)  # Casts included
    for props in ctx.annotations.values():
        assert props == {
            "bitnet.layer": "model.proj",
            "bitnet.layer_type": "linear",
            dtype_key(ComponentType.WEIGHTS): "BITNET158",
            dtype_key(ComponentType.BIAS): "F16",
            dtype_key(ComponentType.ACTIVATIONS): "I8",
            dtype_key(ComponentType.OUTPUTS): "F16",
            "bitnet.op": "BitLinear",
            "bitnet.ternary_scale": "absmean",
            "bitnet.rule": "test:plan",
        }
    (change,) = result.changes
    assert (change.layer, change.action, change.node, change.dtype) == (
        "model.proj",
        "rewrite",
        "model.proj/BitLinear",
        "BITNET158",
    )
    assert result.stats["op.BitLinear"] == 1 and result.stats["layers"] == 1
    assert result.stats["bytes_before"] > 10 * result.stats["bytes_after"]


def test_rewriting_the_same_model_twice_gives_the_same_bytes():
    def compiled() -> bytes:
        case = linear_case(seed=4)
        rewrite(case.graph, [make_plan(case.layer, weights="I4", activations="I8", outputs="F16")])
        return export(case.graph).SerializeToString()

    assert compiled() == compiled()


# -- whole models ---------------------------------------------------------------------------------------


def _compile(model: onnx.ModelProto, strategy: str) -> tuple[onnx.ModelProto, PassContext, list]:
    loaded = load_model(model)
    graph = import_graph(loaded)
    ctx = PassContext(config=MixedPrecisionConfig.new(strategy), measure_kernels=False)
    passes = [NormalizePass(), AnnotateLayersPass(), AssignPrecisionPass(), RewritePass()]
    records = Pipeline(passes).run(graph, ctx)
    return export_model(graph, loaded.info), ctx, records


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def ternary_llama() -> onnx.ModelProto:
    return llama.build(llama.LlamaConfig(weights=WeightInit.TERNARY))


@pytest.mark.kernels
@pytest.mark.parametrize(("strategy", "cosine", "shrink"), [
    ("conservative", 0.99999, 1.95),  # F16 everywhere but the F32 norms
    ("balanced", 0.999, 4.8),  # ternary projections, F16 embedding and head (half the bytes here)
    ("aggressive", 0.999, 8.0),
])  # fmt: skip
def test_a_ternary_decoder_compiles_runs_and_matches_the_original(ternary_llama, strategy, cosine, shrink):
    compiled, ctx, records = _compile(ternary_llama, strategy)
    onnx.checker.check_model(compiled)
    feeds = inputs.sample_inputs(ternary_llama, dims={"batch": 2, "seq": 8}, seed=0)
    (expected,) = ort.InferenceSession(
        ternary_llama.SerializeToString(), providers=["CPUExecutionProvider"]
    ).run(None, feeds)
    (logits,) = run(compiled, feeds)
    assert _cosine(logits, expected) >= cosine
    stats = records[-1].stats  # the layers' own constants (the rotary tables are no layer's)
    assert stats["bytes_before"] / stats["bytes_after"] >= shrink
    # every planned layer is named on the nodes that compute it, with its precisions
    annotated = {props["bitnet.layer"]: props for props in ctx.annotations.values()}
    assert set(annotated) == set(ctx.plan)
    for name, plan in ctx.plan.items():
        for component, decision in plan.decisions.items():
            assert annotated[name][dtype_key(component)] == decision.dtype.name


@pytest.mark.kernels
def test_a_tied_ternary_decoder_stores_its_table_once():
    model = llama.build(llama.LlamaConfig(weights=WeightInit.TERNARY, tie_embeddings=True))
    compiled, ctx, records = _compile(model, "aggressive")  # embedding and head both I8
    head = next(p for p in ctx.plan.values() if p.layer.layer_type is LayerType.OUTPUT)
    assert head.dtype(ComponentType.WEIGHTS) is DType.I8
    lowbit = next(n for n in compiled.graph.node if n.op_type == "LowBitMatMul")
    gather = next(n for n in compiled.graph.node if n.op_type == "Gather" and n.input[0] == lowbit.input[1])
    assert gather is not None and records[-1].warnings == ()
    feeds = inputs.sample_inputs(model, dims={"batch": 1, "seq": 8}, seed=0)
    (expected,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, feeds
    )
    assert _cosine(run(compiled, feeds)[0], expected) >= 0.999


def test_compiling_a_decoder_twice_gives_byte_identical_models(ternary_llama):
    first, _, _ = _compile(ternary_llama, "aggressive")
    second, _, _ = _compile(ternary_llama, "aggressive")
    assert first.SerializeToString() == second.SerializeToString()
