"""Layers read back from node metadata_props (bitnet_onnx.core.inspection)."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from bitnet_onnx.core.inspection import LayerRecord, components_table, layers_table, read_layers


def _model(nodes) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    return helper.make_model(helper.make_graph(nodes, "g", [x], [x]))


def _annotated(name: str, props: dict[str, str]) -> onnx.NodeProto:
    node = helper.make_node("Relu", [f"{name}_in"], [f"{name}_out"], name=name)
    for key, value in props.items():
        node.metadata_props.add(key=key, value=value)
    return node


def test_layers_in_graph_order_with_first_value_winning():
    nodes = [
        _annotated(
            "b/Cast", {"bitnet.layer": "b", "bitnet.layer_type": "linear", "bitnet.dtype.outputs": "F16"}
        ),
        _annotated("a/MatMul", {"bitnet.layer": "a", "bitnet.layer_type": "output", "bitnet.op": "MatMul"}),
        _annotated(
            "b/BitLinear",
            {
                "bitnet.layer": "b",
                "bitnet.layer_type": "attention",
                "bitnet.op": "BitLinear",
                "bitnet.rule": "layer_type:linear",
                "bitnet.dtype.weights": "BITNET158",
                "bitnet.dtype.activations": "I8",
                "bitnet.dtype.outputs": "F32",
                "bitnet.ternary_scale": "least_squares",
            },
        ),
        _annotated("plain", {"other": "x"}),
    ]
    records = read_layers(_model(nodes))
    assert [r.name for r in records] == ["b", "a"]
    b = records[0]
    assert b.layer_type == "linear" and b.op == "BitLinear" and b.rule == "layer_type:linear"
    assert list(b.precisions.items()) == [("weights", "BITNET158"), ("activations", "I8"), ("outputs", "F16")]
    assert b.nodes == ("b/Cast", "b/BitLinear")
    assert b.ternary_scale == "least_squares"
    assert records[1] == LayerRecord("a", "output", {}, "MatMul", "", ("a/MatMul",))


def test_nodes_in_subgraphs_are_read():
    inner = helper.make_graph(
        [_annotated("inner", {"bitnet.layer": "deep", "bitnet.layer_type": "linear"})],
        "body",
        [],
        [helper.make_tensor_value_info("inner_out", TensorProto.FLOAT, [1])],
    )
    node = helper.make_node("If", ["c"], ["y"], then_branch=inner, else_branch=inner, name="if")
    assert [r.name for r in read_layers(_model([node]))] == ["deep"]


def test_model_without_annotations_has_no_layers():
    assert read_layers(_model([helper.make_node("Relu", ["x"], ["y"])])) == ()


def test_table_and_json():
    record = LayerRecord("l", "linear", {"outputs": "F16", "weights": "I4"}, "LowBitMatMul", "r", ("n",))
    assert record.to_json() == {
        "name": "l",
        "layer_type": "linear",
        "index": None,
        "precisions": {"weights": "I4", "outputs": "F16"},
        "components": {},
        "op": "LowBitMatMul",
        "rule": "r",
        "nodes": ["n"],
        "ternary_scale": "",
        "fused": [],
        "rows": None,
    }
    ternary = LayerRecord("t", "linear", {"weights": "BITNET158"}, "BitLinear", "r", ("m",), "absmean")
    assert ternary.to_json()["ternary_scale"] == "absmean"
    assert layers_table([record, LayerRecord("e", "embedding"), ternary]).splitlines() == [
        "layer  type       precision    scale    op            rule",
        "-----  ---------  -----------  -------  ------------  ----",
        "l      linear     w:I4 o:F16   -        LowBitMatMul  r",
        "e      embedding  -            -        -             -",
        "t      linear     w:BITNET158  absmean  BitLinear     r",
    ]


def test_layers_come_in_model_order_with_each_components_settings():
    import json

    settings = {"precision": "I4", "group_size": 64, "asymmetric": True, "rule": "layers:x"}
    nodes = [
        _annotated("late", {"bitnet.layer": "late", "bitnet.layer_index": "3"}),
        _annotated("old", {"bitnet.layer": "old"}),  # compiled before layer indices: last
        _annotated(
            "early",
            {
                "bitnet.layer": "early",
                "bitnet.layer_index": "1",
                "bitnet.component.outputs": json.dumps({"precision": "F16", "rule": "component:outputs"}),
                "bitnet.component.weights": json.dumps(settings),
                "bitnet.component.bias": "not json",
            },
        ),
    ]
    records = read_layers(_model(nodes))
    assert [(r.name, r.index) for r in records] == [("early", 1), ("late", 3), ("old", None)]
    early = records[0]
    assert list(early.components) == ["weights", "bias", "outputs"]  # ComponentType order
    assert dict(early.components["weights"]) == settings and dict(early.components["bias"]) == {}
    assert early.to_json()["components"]["outputs"] == {"precision": "F16", "rule": "component:outputs"}
    table = components_table(records).splitlines()
    row = [
        "early",
        "weights",
        "I4",
        "group_size=64",
        "asymmetric=true",
        "-",
        "layers:x",
        "-",
    ]  # no type, no op
    assert table[2].split() == row
