"""_graph: loading (bad files, external data and where it may live), lazy import, export, annotations."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from bitnet_onnx.core.errors import UnsupportedModelError
from bitnet_onnx.passes._graph import (
    SMALL_CONSTANT,
    export_model,
    import_graph,
    is_lazy,
    load_model,
    stamp_annotations,
    weightless_model,
)
from models import llama

FIXTURES = Path(__file__).resolve().parents[2] / "models" / "fixtures"


def _linear_model(rows: int = 64, cols: int = 48) -> onnx.ModelProto:
    """y = relu(x · W + b) with a [rows, cols] weight big enough to be saved externally."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((rows, cols)).astype(np.float32), "dense.weight")
    bias = numpy_helper.from_array(rng.standard_normal(cols).astype(np.float32), "dense.bias")
    nodes = [
        helper.make_node("MatMul", ["x", "dense.weight"], ["h"], name="/dense/MatMul"),
        helper.make_node("Add", ["h", "dense.bias"], ["a"], name="/dense/Add"),
        helper.make_node("Relu", ["a"], ["y"], name="/act/Relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", cols])],
        [weight, bias],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _save_external(model: onnx.ModelProto, folder: Path, name: str = "m.onnx") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    onnx.save_model(model, path, save_as_external_data=True, location=f"{name}.data", size_threshold=0)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


# -- loading ---------------------------------------------------------------------------------------


def test_load_path_references_big_initializers_in_the_file_and_records_the_folder() -> None:
    path = FIXTURES / "llama_tiny.onnx"
    loaded = load_model(path)
    assert loaded.base_dir == path.parent and loaded.origin == str(path)
    whole = onnx.load(path)
    big = {t.name for t in whole.graph.initializer if np.prod(t.dims) > SMALL_CONSTANT}
    referenced = [t for t in loaded.proto.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    assert big and {t.name for t in referenced} == big
    assert all({e.key: e.value for e in t.external_data}["location"] == path.name for t in referenced)
    graph = import_graph(loaded)
    for tensor in whole.graph.initializer:
        constant = graph.tensors()[tensor.name]
        np.testing.assert_array_equal(constant.values, numpy_helper.to_array(tensor))
    assert not any(t.HasField("raw_data") for t in referenced)  # reading left the protos as they were


def test_load_model_proto_copies_and_never_touches_the_callers_object() -> None:
    source = llama.build(llama.LlamaConfig())
    before = source.SerializeToString()
    loaded = load_model(source)
    assert loaded.proto is not source and loaded.origin == "<ModelProto>" and loaded.base_dir is None
    graph = import_graph(loaded)
    graph.nodes[0].name = "renamed"
    graph.tensors()["model.embed_tokens.weight"].name = "renamed.weight"
    exported = export_model(graph, loaded.info)
    stamp_annotations(exported, {"renamed": {"bitnet.layer": "x"}})
    assert source.SerializeToString() == before


def test_input_file_is_not_modified(tmp_path: Path) -> None:
    path = _save_external(_linear_model(), tmp_path / "model")
    data = path.parent / "m.onnx.data"
    hashes = (_sha(path), _sha(data))
    loaded = load_model(path)
    graph = import_graph(loaded)
    graph.tensors()["dense.weight"].values *= 2  # a pass rewriting the weight works on its own copy
    export_model(graph, loaded.info)
    assert (_sha(path), _sha(data)) == hashes


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "no such file"),
        (b"", "the file is empty"),
        (b"hello, I am a text file\n", "cannot be parsed as an ONNX ModelProto"),
        ("truncated", "truncated or corrupted"),
        ("folder", "is a folder"),
    ],
)
def test_load_refuses_what_is_not_an_onnx_file(
    tmp_path: Path, content: bytes | str | None, words: str
) -> None:
    path = tmp_path / "bad.onnx"
    if content == "truncated":
        data = (FIXTURES / "llama_tiny.onnx").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(UnsupportedModelError) as info:
        load_model(path)
    assert words in str(info.value)
    assert str(path) in str(info.value)


def test_load_refuses_a_proto_without_ir_version() -> None:
    model = _linear_model()
    model.ir_version = 0
    with pytest.raises(UnsupportedModelError, match="no ir_version"):
        load_model(model)


def test_load_refuses_an_empty_graph(tmp_path: Path) -> None:
    model = _linear_model()
    del model.graph.node[:]
    path = tmp_path / "empty.onnx"
    onnx.save_model(model, path)
    with pytest.raises(UnsupportedModelError, match=r"empty\.onnx: the graph is empty \(no nodes\)"):
        load_model(path)


def test_load_refuses_names_that_are_not_utf8(tmp_path: Path) -> None:
    # Found by tests/fuzz: one flipped bit in a name parses, then crashed the normalize pass.
    data = _linear_model().SerializeToString()
    path = tmp_path / "garbled.onnx"
    path.write_bytes(data.replace(b"/dense/Add", b"/dense/\xedAd", 1))  # same length: still parses
    with pytest.raises(UnsupportedModelError) as info:
        load_model(path)
    assert str(info.value) == (
        f"{path}: model.graph.node[1].name is not valid UTF-8 text: the file is corrupted (or its "
        "exporter is broken); re-export the model"
    )


# -- external data ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attribute", "words"),
    [
        (helper.make_attribute("perm", [1, 0]), None),
        (
            onnx.AttributeProto(name="perm", type=onnx.AttributeProto.FLOATS, ints=[1, 0]),
            "is declared FLOATS but holds ints",
        ),
        (onnx.AttributeProto(name="perm", type=onnx.AttributeProto.INTS), "is an empty INTS list"),
        (onnx.AttributeProto(name="perm", ints=[1, 0]), "has no valid type"),
    ],
)
def test_load_refuses_attributes_whose_value_does_not_match_their_type(attribute, words) -> None:
    model = _linear_model()
    transpose = helper.make_node("Transpose", ["y"], ["t"], name="/t/Transpose")
    transpose.attribute.append(attribute)
    model.graph.node.append(transpose)
    if words is None:
        load_model(model)
        return
    with pytest.raises(UnsupportedModelError, match=f"attribute 'perm' of node '/t/Transpose' {words}"):
        load_model(model)


def test_external_data_stays_unread_until_values_are_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _linear_model()
    expected = numpy_helper.to_array(model.graph.initializer[0])
    path = _save_external(model, tmp_path / "model")
    monkeypatch.chdir(tmp_path)  # the data must be found next to the model, not in the working directory
    loaded = load_model(path)
    graph = import_graph(loaded)
    weight = graph.tensors()["dense.weight"]
    assert is_lazy(weight) and tuple(weight.shape) == (64, 48)
    exported = export_model(graph, loaded.info)
    assert is_lazy(weight)  # exporting copies protos, it does not read bytes
    tensor = next(t for t in exported.graph.initializer if t.name == "dense.weight")
    assert tensor.data_location == TensorProto.EXTERNAL and not tensor.raw_data
    np.testing.assert_array_equal(weight.values, expected)


def _set_location(path: Path, location: str, tensor: str = "dense.weight") -> None:
    model = onnx.load(path, load_external_data=False)
    for init in model.graph.initializer:
        if init.name == tensor:
            for entry in init.external_data:
                if entry.key == "location":
                    entry.value = location
    onnx.save_model(model, path)


@pytest.mark.parametrize(
    ("location", "words"),
    [
        ("/etc/passwd", "is an absolute path"),
        ("../outside.data", "leaves the model's folder through '..'"),
        ("sub/../../outside.data", "leaves the model's folder through '..'"),
        ("missing.data", "does not exist"),
        ("link.data", "outside the model's folder (a symlink)"),
        ("short.data", "the data file is truncated"),
    ],
)
def test_external_data_location_must_stay_inside_the_folder(
    tmp_path: Path, location: str, words: str
) -> None:
    path = _save_external(_linear_model(), tmp_path / "model")
    outside = tmp_path / "outside.data"
    outside.write_bytes((path.parent / "m.onnx.data").read_bytes())
    os.symlink(outside, path.parent / "link.data")
    (path.parent / "short.data").write_bytes(b"\0" * 16)
    _set_location(path, location)
    with pytest.raises(UnsupportedModelError) as info:
        load_model(path)
    message = str(info.value)
    assert words in message and "'dense.weight'" in message and str(path) in message


def test_external_data_problems_are_all_reported(tmp_path: Path) -> None:
    path = _save_external(_linear_model(), tmp_path / "model")
    _set_location(path, "/abs/w.data", "dense.weight")
    _set_location(path, "../b.data", "dense.bias")
    with pytest.raises(UnsupportedModelError) as info:
        load_model(path)
    assert "'dense.weight'" in str(info.value) and "'dense.bias'" in str(info.value)


def test_model_proto_with_external_data_needs_base_dir(tmp_path: Path) -> None:
    path = _save_external(_linear_model(), tmp_path / "model")
    proto = onnx.load(path, load_external_data=False)
    with pytest.raises(UnsupportedModelError, match="pass base_dir"):
        load_model(proto)
    graph = import_graph(load_model(proto, base_dir=path.parent))
    assert graph.tensors()["dense.weight"].values.shape == (64, 48)


# -- export ------------------------------------------------------------------------------------------


def test_export_keeps_opsets_producer_and_metadata() -> None:
    model = _linear_model()
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    model.producer_name, model.producer_version = "exporter", "9.9"
    model.doc_string, model.domain, model.model_version = "a model", "org.example", 7
    helper.set_model_props(model, {"author": "me", "license": "MIT"})
    node = model.graph.node[0]
    node.doc_string = "the dense layer"
    node.metadata_props.add(key="source", value="layer.py:12")
    loaded = load_model(model)
    exported = export_model(import_graph(loaded), loaded.info)
    assert {(o.domain, o.version) for o in exported.opset_import} == {("", 17), ("com.microsoft", 1)}
    assert (exported.producer_name, exported.producer_version) == ("exporter", "9.9")
    assert (exported.doc_string, exported.domain, exported.model_version) == ("a model", "org.example", 7)
    assert {(p.key, p.value) for p in exported.metadata_props} == {("author", "me"), ("license", "MIT")}
    dense = next(n for n in exported.graph.node if n.name == "/dense/MatMul")
    assert dense.doc_string == "the dense layer"
    assert [(p.key, p.value) for p in dense.metadata_props] == [("source", "layer.py:12")]


def test_export_adds_domains_a_later_pass_uses() -> None:
    loaded = load_model(_linear_model())
    graph = import_graph(loaded)
    relu = next(n for n in graph.nodes if n.op == "Relu")
    relu.op, relu.domain = "BitLinearAct", "bitnet"
    exported = export_model(graph, loaded.info)
    assert ("bitnet", 1) in {(o.domain, o.version) for o in exported.opset_import}


@pytest.mark.parametrize("declared", [(), ("h",), ("h", "a")])
def test_export_drops_inferred_value_info_onnxruntime_types_itself(declared) -> None:
    model = _linear_model()
    shapes = {"h": ["batch", 48], "a": ["batch", 48]}
    model.graph.value_info.extend(
        helper.make_tensor_value_info(n, TensorProto.FLOAT, shapes[n]) for n in declared
    )
    loaded = load_model(model)
    graph = import_graph(loaded)
    for name in ("h", "a"):  # what shape inference gives every tensor in the normalize pass
        graph.tensors()[name].to_variable(np.float32, shapes[name])
    add = next(n for n in graph.nodes if n.op == "Add")
    add.op, add.domain = "BiasAdd", "acme"  # no onnxruntime inference for a custom domain's output
    exported = export_model(graph, loaded.info)
    assert sorted(v.name for v in exported.graph.value_info) == sorted({*declared, "a"})
    assert sorted(v.name for v in export_model(graph).graph.value_info) == ["a", "h"]


def test_export_round_trip_computes_the_same() -> None:
    source = llama.build(llama.LlamaConfig())
    loaded = load_model(source)
    exported = export_model(import_graph(loaded), loaded.info)
    onnx.checker.check_model(exported)
    assert {t.name for t in exported.graph.initializer} == {t.name for t in source.graph.initializer}
    feeds = {"input_ids": np.arange(12, dtype=np.int64).reshape(2, 6)}
    np.testing.assert_array_equal(_run(exported, feeds)[0], _run(source, feeds)[0])


def test_export_uses_values_a_pass_wrote() -> None:
    loaded = load_model(_linear_model())
    graph = import_graph(loaded)
    graph.tensors()["dense.bias"].values = np.full(48, 100.0, np.float32)
    exported = export_model(graph, loaded.info)
    (y,) = _run(exported, {"x": np.zeros((1, 64), np.float32)})
    np.testing.assert_array_equal(y, np.full((1, 48), 100.0, np.float32))


# -- annotations --------------------------------------------------------------------------------------


def _if_model() -> onnx.ModelProto:
    then = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["t"], name="/then/Relu")],
        "then",
        [],
        [helper.make_tensor_value_info("t", 1, [2])],
    )
    other = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["e"], name="/else/Neg")],
        "else",
        [],
        [helper.make_tensor_value_info("e", 1, [2])],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], name="/If", then_branch=then, else_branch=other)],
        "if",
        [
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", 1, [2]),
        ],
        [helper.make_tensor_value_info("y", 1, [2])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_stamp_annotations_writes_overwrites_and_reports_missing_nodes() -> None:
    model = _linear_model()
    model.graph.node[0].metadata_props.add(key="bitnet.layer", value="stale")
    model.graph.node[0].metadata_props.add(key="source", value="keep me")
    missing = stamp_annotations(
        model,
        {
            "/dense/MatMul": {"bitnet.layer": "dense", "bitnet.layer_type": "linear"},
            "/gone/MatMul": {"bitnet.layer": "gone"},
        },
    )
    assert missing == ("/gone/MatMul",)
    props = {(p.key, p.value) for p in model.graph.node[0].metadata_props}
    assert props == {("bitnet.layer", "dense"), ("bitnet.layer_type", "linear"), ("source", "keep me")}
    assert not model.graph.node[1].metadata_props


def test_stamp_annotations_reaches_subgraph_nodes() -> None:
    model = _if_model()
    assert stamp_annotations(model, {"/then/Relu": {"bitnet.layer": "inner"}}) == ()
    then = next(a.g for a in model.graph.node[0].attribute if a.name == "then_branch")
    inner = then.node[0]
    assert [(p.key, p.value) for p in inner.metadata_props] == [("bitnet.layer", "inner")]


# -- the weightless structure ---------------------------------------------------------------------------


def test_weightless_model_turns_big_initializers_into_typed_inputs(tmp_path: Path) -> None:
    path = _save_external(_linear_model(), tmp_path / "model")
    graph = import_graph(load_model(path))
    structure, stripped = weightless_model(graph)
    assert stripped == {"dense.weight", "dense.bias"}  # external data is stripped whatever its size
    inputs = {i.name: i for i in structure.graph.input}
    weight = inputs["dense.weight"].type.tensor_type
    assert weight.elem_type == TensorProto.FLOAT and [d.dim_value for d in weight.shape.dim] == [64, 48]
    assert not structure.graph.initializer
    assert all(is_lazy(t) for t in graph.tensors().values() if isinstance(t, gs.Constant))
    onnx.checker.check_model(structure)


def test_weightless_model_keeps_small_embedded_initializers() -> None:
    graph = import_graph(load_model(_linear_model(rows=64, cols=32)))
    structure, stripped = weightless_model(graph)
    assert 32 <= SMALL_CONSTANT < 64 * 32
    assert stripped == {"dense.weight"}
    assert [t.name for t in structure.graph.initializer] == ["dense.bias"]
