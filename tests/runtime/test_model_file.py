"""Atomic, deterministic model writes and sessions for in-memory models (bitnet_onnx.runtime.model_file)."""

from __future__ import annotations

import os
import stat

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bitnet_onnx.core.errors import UnsupportedModelError
from bitnet_onnx.runtime import model_file
from bitnet_onnx.runtime.model_file import session_for, write_model


def _model(values: np.ndarray | None = None) -> onnx.ModelProto:
    w = values if values is not None else np.arange(64 * 64, dtype=np.float32).reshape(64, 64) / 4096
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_writes_the_serialized_model_and_leaves_nothing_else(tmp_path):
    model = _model()
    path = write_model(model, tmp_path / "m.onnx")
    assert path.read_bytes() == model.SerializeToString()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_replaces_an_existing_file(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"old")
    write_model(_model(), tmp_path / "m.onnx")
    assert onnx.load(tmp_path / "m.onnx").graph.node[0].op_type == "MatMul"


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_existing_file_and_removes_the_temporary(tmp_path, monkeypatch, failure):
    (tmp_path / "m.onnx").write_bytes(b"old")

    def broken_replace(src, dst):
        raise failure

    monkeypatch.setattr(model_file.os, "replace", broken_replace)
    expected = UnsupportedModelError if isinstance(failure, OSError) else KeyboardInterrupt
    with pytest.raises(expected):
        write_model(_model(), tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_missing_folder_is_an_error_naming_it(tmp_path):
    with pytest.raises(UnsupportedModelError, match=r"folder .*nowhere does not exist"):
        write_model(_model(), tmp_path / "nowhere" / "m.onnx")


def test_a_large_model_of_small_tensors_is_one_file(tmp_path, monkeypatch):
    # over the threshold, but no tensor reaches 1 KiB: nothing goes to a data file (none is written)
    monkeypatch.setattr(model_file, "EXTERNAL_DATA_THRESHOLD", 1)
    model = _model(np.arange(64 * 2, dtype=np.float32).reshape(64, 2) / 128)  # 512 bytes
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 2
    write_model(model, tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    (w,) = onnx.load(tmp_path / "m.onnx", load_external_data=False).graph.initializer
    assert w.data_location != TensorProto.EXTERNAL
    np.testing.assert_array_equal(numpy_helper.to_array(w), numpy_helper.to_array(model.graph.initializer[0]))


def test_large_models_get_external_data_next_to_them_deterministically(tmp_path, monkeypatch, ops_lib):
    monkeypatch.setattr(model_file, "EXTERNAL_DATA_THRESHOLD", 1)
    write_model(_model(), tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    loaded = onnx.load(tmp_path / "m.onnx", load_external_data=False)
    (w,) = loaded.graph.initializer
    assert w.data_location == TensorProto.EXTERNAL
    assert {e.key: e.value for e in w.external_data}["location"] == "m.onnx.data"
    first = (tmp_path / "m.onnx").read_bytes(), (tmp_path / "m.onnx.data").read_bytes()
    write_model(_model(), tmp_path / "m.onnx")
    assert ((tmp_path / "m.onnx").read_bytes(), (tmp_path / "m.onnx.data").read_bytes()) == first
    x = np.ones((1, 64), np.float32)
    from bitnet_onnx import runtime

    y = runtime.session(tmp_path / "m.onnx").run(None, {"x": x})[0]
    np.testing.assert_allclose(y, x @ numpy_helper.to_array(_model().graph.initializer[0]), rtol=1e-6)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_the_data_file_gets_the_model_files_permissions(tmp_path, monkeypatch, umask):
    monkeypatch.setattr(model_file, "EXTERNAL_DATA_THRESHOLD", 1)
    previous = os.umask(umask)
    try:
        write_model(_model(), tmp_path / "m.onnx")
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"m.onnx": 0o666 & ~umask, "m.onnx.data": 0o666 & ~umask}


def _external_input(folder) -> onnx.ModelProto:
    """A model saved with external data in `folder`, loaded back with references only."""
    folder.mkdir()
    onnx.save_model(
        _model(), folder / "in.onnx", save_as_external_data=True, location="in.data", size_threshold=0
    )
    return onnx.load(folder / "in.onnx", load_external_data=False)


def test_external_references_are_resolved_against_the_input_folder(tmp_path):
    model = _external_input(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    write_model(model, out / "m.onnx", base_dir=tmp_path / "in")
    (w,) = onnx.load(out / "m.onnx").graph.initializer
    assert w.data_location == TensorProto.DEFAULT
    np.testing.assert_array_equal(
        numpy_helper.to_array(w), numpy_helper.to_array(_model().graph.initializer[0])
    )


def test_external_references_without_a_folder_are_an_error(tmp_path):
    model = _external_input(tmp_path / "in")
    with pytest.raises(UnsupportedModelError, match="references external data"):
        write_model(model, tmp_path / "m.onnx")


def test_session_for_in_memory_model_with_external_data(tmp_path, monkeypatch, ops_lib):
    model = _external_input(tmp_path / "in")
    monkeypatch.chdir(tmp_path)  # onnxruntime must not resolve the data against the working directory
    session = session_for(model, tmp_path / "in")
    x = np.full((1, 64), 0.5, np.float32)
    expected = x @ numpy_helper.to_array(_model().graph.initializer[0])
    np.testing.assert_allclose(session.run(None, {"x": x})[0], expected, rtol=1e-6)


def test_session_for_a_model_too_big_for_one_message(tmp_path, monkeypatch, ops_lib):
    monkeypatch.setattr(model_file, "EXTERNAL_DATA_THRESHOLD", 1)
    session = session_for(_model())
    x = np.ones((1, 64), np.float32)
    np.testing.assert_allclose(
        session.run(None, {"x": x})[0], x @ numpy_helper.to_array(_model().graph.initializer[0]), rtol=1e-6
    )
