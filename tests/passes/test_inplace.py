"""_inplace: big inline initializers become references to their bytes in the model file itself."""

from __future__ import annotations

import math
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bitnet_onnx.passes._graph import SMALL_CONSTANT, constant_values, import_graph, is_lazy, load_model
from bitnet_onnx.passes._inplace import InPlaceError, read_in_place

FIXTURES = Path(__file__).resolve().parents[2] / "models" / "fixtures"


def _resolved(model: onnx.ModelProto, folder: Path) -> onnx.ModelProto:
    """`model` with every reference replaced by the bytes it names (as the file stores them)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in copy.graph.initializer:
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        with (folder / entries["location"]).open("rb") as stream:
            stream.seek(int(entries["offset"]))
            tensor.raw_data = stream.read(int(entries["length"]))
        tensor.ClearField("data_location")
        del tensor.external_data[:]
    return copy


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.onnx")))
def test_fixture_read_in_place_is_the_file_with_big_initializers_referenced(name: str) -> None:
    path = FIXTURES / name
    model = read_in_place(path, SMALL_CONSTANT)
    whole = onnx.load(path)
    big = {t.name for t in whole.graph.initializer if math.prod(t.dims) > SMALL_CONSTANT}
    referenced = {t.name for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL}
    assert referenced == big
    assert _resolved(model, path.parent) == whole


def _model(
    initializers: list[onnx.TensorProto], nodes: list[onnx.NodeProto] | None = None
) -> onnx.ModelProto:
    names = [t.name for t in initializers]
    nodes = nodes or [helper.make_node("Concat", [f"{n}_flat" for n in names], ["y"], axis=0)]
    flatten = [helper.make_node("Reshape", [n, "minus_one"], [f"{n}_flat"]) for n in names]
    minus_one = numpy_helper.from_array(np.array([-1], np.int64), "minus_one")
    graph = helper.make_graph(
        flatten + nodes,
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [*initializers, minus_one],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_what_is_kept_inline(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    big = numpy_helper.from_array(rng.standard_normal(SMALL_CONSTANT + 1).astype(np.float32), "big")
    small = numpy_helper.from_array(rng.standard_normal(SMALL_CONSTANT).astype(np.float32), "small")
    typed = helper.make_tensor(
        "floats", TensorProto.FLOAT, [SMALL_CONSTANT + 1], [0.5] * (SMALL_CONSTANT + 1)
    )
    bf16 = numpy_helper.from_array(rng.standard_normal(SMALL_CONSTANT + 1).astype(ml_dtypes.bfloat16), "bf16")
    model = _model([big, small, typed, bf16])
    path = tmp_path / "m.onnx"
    onnx.save_model(model, path)
    loaded = read_in_place(path, SMALL_CONSTANT)
    location = {t.name: t.data_location for t in loaded.graph.initializer}
    # only raw float32 data past the limit; float_data, small and bfloat16 tensors stay as they are
    assert location == {
        "big": TensorProto.EXTERNAL,
        "small": TensorProto.DEFAULT,
        "floats": TensorProto.DEFAULT,
        "bf16": TensorProto.DEFAULT,
        "minus_one": TensorProto.DEFAULT,
    }
    assert _resolved(loaded, tmp_path) == onnx.load(path)


@pytest.mark.parametrize(
    ("data", "why"),
    [(b"", "empty"), (b"\x0b\x0c", "wire type"), (b"\x3a\xff\xff\x01", "beyond"), (b"\x08\xff", "varint")],
)
def test_a_file_the_walk_cannot_follow_is_an_in_place_error(tmp_path: Path, data: bytes, why: str) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(data)
    with pytest.raises(InPlaceError, match=why):
        read_in_place(path, SMALL_CONSTANT)


def test_truncated_model_falls_back_to_the_ordinary_error(tmp_path: Path) -> None:
    from bitnet_onnx.core.errors import UnsupportedModelError

    data = (FIXTURES / "llama_tiny.onnx").read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnsupportedModelError, match="cannot be parsed as an ONNX ModelProto"):
        load_model(path)


def test_model_reached_through_a_symlink_from_another_folder_is_read_whole(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    link = tmp_path / "elsewhere" / "llama.onnx"
    link.symlink_to(FIXTURES / "llama_tiny.onnx")
    loaded = load_model(link)
    assert all(t.data_location == TensorProto.DEFAULT for t in loaded.proto.graph.initializer)


def test_constant_values_reads_the_file_without_keeping_the_values(tmp_path: Path) -> None:
    path = FIXTURES / "llama_tiny.onnx"
    graph = import_graph(load_model(path))
    whole = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    name = max(whole, key=lambda n: whole[n].size)
    constant = graph.tensors()[name]
    values = constant_values(constant)
    np.testing.assert_array_equal(values, whole[name])
    assert values.dtype == whole[name].dtype and values.flags.writeable
    assert is_lazy(constant)  # read again on the next call; the graph holds no copy
