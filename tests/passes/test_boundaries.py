"""The conversions left between layers, counted along the graph's edges (passes/_boundaries.py), and
the one warning fold_converts makes of the round trips: on graphs built in code and on a compile of
the bundled LLaMA fixture, whose warning's own fix is applied and checked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

import bitnet_onnx
from bitnet_onnx.config.config_file import config_from_dict
from bitnet_onnx.core.layers import ComponentType, LayerType
from bitnet_onnx.passes._boundaries import INPUT, boundary_conversions
from bitnet_onnx.passes.base import PassContext
from bitnet_onnx.passes.p60_fold_converts import CONVERSION_OPS, FoldConvertsPass

F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16
FIXTURES = Path(__file__).resolve().parents[2] / "models" / "fixtures"


def _graph(nodes, initializers=()) -> gs.Graph:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", F32, ["batch", 4])],
        [helper.make_tensor_value_info("y", F32, ["batch", 4])],
        initializer=list(initializers),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    return gs.import_onnx(onnx.shape_inference.infer_shapes(model, strict_mode=True))


def _layers(**names: str) -> dict[str, dict[str, str]]:
    return {node: {"bitnet.layer": layer} for node, layer in names.items()}


@pytest.mark.parametrize(
    ("middle", "round_trip"),
    [
        ([("Cast", F16), ("Cast", F32)], True),  # rounded to f16 and back: the readers never see f16
        ([("Cast", F16)], False),  # the reader computes in f16: a real conversion
    ],
)
def test_an_edge_between_two_layers_counts_its_conversions(middle, round_trip):
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="a_relu")]
    value = "a"
    for i, (op, to) in enumerate(middle):
        nodes.append(helper.make_node(op, [value], [f"c{i}"], name=f"cast{i}", to=to))
        value = f"c{i}"
    nodes.append(helper.make_node("Neg", [value], ["n"], name="b_neg"))
    nodes.append(helper.make_node("Cast", ["n"], ["y"], name="exit", to=F32))
    graph = _graph(nodes)
    annotations = _layers(a_relu="A", cast0="A", cast1="A", b_neg="B", exit="B")
    edges = boundary_conversions(graph, annotations, {"a_relu", "b_neg"}, set(CONVERSION_OPS))
    first = edges[0]
    assert (first.source, first.targets, first.count, first.round_trip) == (
        "A",
        ("B",),
        len(middle),
        round_trip,
    )
    assert first.shapes == ("[batch, 4]",) * len(middle) and first.inserted_by == "A"
    assert first.start == "float32"


def test_constants_shape_readers_and_the_models_own_casts_are_not_boundaries():
    table = numpy_helper.from_array(np.ones(4, np.float32), "w")
    nodes = [
        helper.make_node("Cast", ["w"], ["w16"], name="const_cast", to=F16),  # folded at session creation
        helper.make_node("Cast", ["w16"], ["w32"], name="const_back", to=F32),
        helper.make_node("Cast", ["x"], ["own"], name="own_cast", to=F16),  # the model's own
        helper.make_node("Cast", ["own"], ["own32"], name="own_back", to=F32),
        helper.make_node("Add", ["own32", "w32"], ["s"], name="b_add"),
        helper.make_node("Cast", ["s"], ["s16"], name="inserted", to=F16),
        helper.make_node("Shape", ["s16"], ["shape"], name="shape"),  # reads no values
        helper.make_node("Cast", ["s16"], ["y"], name="c_exit", to=F32),
    ]
    graph = _graph(nodes, [table])
    original = {"own_cast", "own_back", "b_add", "shape"}
    edges = boundary_conversions(graph, _layers(b_add="B"), original, set(CONVERSION_OPS))
    assert [(e.source, e.targets, e.ops) for e in edges] == [
        ("B", ("<graph output>",), ("Cast→float16", "Cast→float"))
    ]
    assert edges[0].round_trip


def test_a_graph_input_starts_an_edge():
    nodes = [
        helper.make_node("Cast", ["x"], ["h"], name="entry", to=F16),
        helper.make_node("Neg", ["h"], ["n"], name="b_neg"),
        helper.make_node("Cast", ["n"], ["y"], name="exit", to=F32),
    ]
    edges = boundary_conversions(_graph(nodes), _layers(b_neg="B"), {"b_neg"}, set(CONVERSION_OPS))
    assert [(e.source, e.targets) for e in edges] == [(INPUT, ("B",)), ("B", ("<graph output>",))]


def _fold_warning(graph: gs.Graph, annotations) -> tuple[str, ...]:
    return FoldConvertsPass().run(graph, PassContext(config=None, annotations=annotations)).warnings


def test_fold_converts_warns_once_about_round_trips_with_a_policy_that_parses():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="a_relu"),
        helper.make_node("Cast", ["a"], ["h"], name="a_out", to=F16),
        helper.make_node("Transpose", ["h"], ["r"], name="between", perm=[0, 1]),  # moves values
        helper.make_node("Cast", ["r"], ["y"], name="back", to=F32),
    ]
    annotations = {name: {"bitnet.layer": "A", "bitnet.layer_type": "linear"} for name in ("a_relu", "a_out")}
    (warning,) = _fold_warning(_graph(nodes), annotations)
    assert warning.startswith("1 edges between layers convert a value and convert it back (2 conversion")
    assert warning.index("Fix, in the config: policies:") < warning.index("The edges: A →")
    policy = yaml.safe_load(warning.split("in the config: ", 1)[1].split(". The edges: ")[0])
    config = config_from_dict({"version": 1, "strategy": "balanced", **policy})
    (rule,) = config.policies[0].rules
    assert rule.id == "outputs_f32" and [c.value for c in rule.conditions] == [
        (LayerType.LINEAR,),
        ComponentType.OUTPUTS,
    ]


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("llama")
    for suffix in (".onnx", ".inputs.npz"):
        shutil.copy(FIXTURES / f"llama_tiny{suffix}", folder / f"llama_tiny{suffix}")
    return folder


def _compile(folder: Path, config, name: str):
    return bitnet_onnx.compile(
        folder / "llama_tiny.onnx",
        config,
        output=folder / f"{name}.onnx",
        inputs=folder / "llama_tiny.inputs.npz",
        measure_kernels=False,
    )


# balanced as it was before its float layers stored F16 and computed in F32: F16 compute asked for
# explicitly, which the compiler honours, round trips included.
F16_COMPUTE = {
    "version": 1,
    "strategy": "balanced",
    "layer_types": {"attention": "F16", "normalization": "F16", "activation": "F16", "embedding": "F16"},
    "components": {"outputs": "F16"},
}


def test_the_presets_make_no_round_trips(llama):
    for preset in ("conservative", "balanced", "aggressive"):
        records = {r.pass_name: r for r in _compile(llama, preset, preset).records}
        assert records["fold_converts"].warnings == ()
        assert records["fold_converts"].stats["round_trips"] == 0


def test_the_warnings_fix_removes_the_round_trips_it_names(llama):
    (llama / "f16.yaml").write_text(json.dumps(F16_COMPUTE))
    first = _compile(llama, llama / "f16.yaml", "default")
    records = {r.pass_name: r for r in first.records}
    assert not any("precision conversions" in w for w in records["assign_precision"].warnings)
    (warning,) = records["fold_converts"].warnings
    trips = records["fold_converts"].stats["round_trips"]
    assert warning.startswith(f"{trips} edges between layers") and "self_attn.q_proj →" in warning
    policy = yaml.safe_load(warning.split("in the config: ", 1)[1].split(". The edges: ")[0])
    (llama / "fix.yaml").write_text(json.dumps({**F16_COMPUTE, **policy}))
    fixed = {r.pass_name: r for r in _compile(llama, llama / "fix.yaml", "fixed").records}
    assert fixed["fold_converts"].warnings == ()
    assert fixed["fold_converts"].stats["round_trips"] == 0
    after = fixed["fold_converts"].stats["boundary_conversions"]
    assert after < records["fold_converts"].stats["boundary_conversions"]
