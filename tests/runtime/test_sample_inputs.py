"""Sample inputs made from graph input specs (bitnet_onnx.runtime.sample_inputs)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bitnet_onnx.core.errors import UnsupportedModelError
from bitnet_onnx.runtime.sample_inputs import DEFAULT_DIMS, sample_inputs


def _model(inputs, nodes=(), initializers=()) -> onnx.ModelProto:
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(list(nodes), "g", list(inputs), [out], initializer=list(initializers))
    return helper.make_model(graph)


def _ids_model(vocab: int, via: str | None = None, dims=("batch", "seq")) -> onnx.ModelProto:
    table = numpy_helper.from_array(np.zeros((vocab, 4), np.float32), "table")
    nodes = []
    ids = "input_ids"
    if via is not None:
        nodes.append(helper.make_node(via, ["input_ids"], ["ids2"]))
        ids = "ids2"
    nodes.append(helper.make_node("Gather", ["table", ids], ["y"]))
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, list(dims)),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, list(dims)),
    ]
    return _model(inputs, nodes, [table])


def test_defaults_are_batch_1_seq_8():
    assert dict(DEFAULT_DIMS) == {"batch": 1, "seq": 8}
    feeds = sample_inputs(_ids_model(50))
    assert feeds["input_ids"].shape == (1, 8) and feeds["input_ids"].dtype == np.int64


@pytest.mark.parametrize("via", [None, "Identity", "Cast"])
def test_token_ids_lie_in_the_gathered_table(via):
    feeds = sample_inputs(_ids_model(7, via), dims={"batch": 4, "seq": 64}, seed=3)
    ids = feeds["input_ids"]
    assert ids.min() >= 0 and ids.max() < 7
    assert len(np.unique(ids)) == 7  # 256 draws cover all 7 rows


def test_table_from_a_constant_node():
    table = helper.make_node(
        "Constant", [], ["table"], value=numpy_helper.from_array(np.zeros((5, 2), np.float32))
    )
    gather = helper.make_node("Gather", ["table", "ids"], ["y"])
    ids_input = helper.make_tensor_value_info("ids", TensorProto.INT32, ["batch", "seq"])
    model = _model([ids_input], [table, gather])
    ids = sample_inputs(model, dims={"seq": 100})["ids"]
    assert ids.dtype == np.int32 and ids.max() < 5


def test_masks_are_ones_and_type_ids_zeros_and_positions_count():
    inputs = [
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("keep", TensorProto.BOOL, [3]),
    ]
    feeds = sample_inputs(_model(inputs), dims={"batch": 2, "seq": 3})
    np.testing.assert_array_equal(feeds["attention_mask"], np.ones((2, 3)))
    np.testing.assert_array_equal(feeds["token_type_ids"], np.zeros((2, 3)))
    np.testing.assert_array_equal(feeds["position_ids"], [[0, 1, 2], [0, 1, 2]])
    np.testing.assert_array_equal(feeds["keep"], [True, True, True])


@pytest.mark.parametrize("elem, dtype", [(TensorProto.FLOAT, np.float32), (TensorProto.FLOAT16, np.float16)])
def test_float_inputs_are_standard_normal_in_their_type(elem, dtype):
    model = _model([helper.make_tensor_value_info("x", elem, ["batch", 3, 32, 32])])
    x = sample_inputs(model, dims={"batch": 8})["x"]
    assert x.dtype == dtype and x.shape == (8, 3, 32, 32)
    assert abs(float(x.mean())) < 0.03 and abs(float(x.std()) - 1.0) < 0.03


@pytest.mark.parametrize(
    "name, role, expected",
    [
        ("batch_size", "batch", 5),
        ("sequence_length", "seq", 6),
        ("total_len", "seq", 6),
        ("n_tokens", "seq", 6),
    ],
)
def test_symbolic_dims_resolve_by_role(name, role, expected):
    model = _model([helper.make_tensor_value_info("x", TensorProto.FLOAT, [name])])
    assert sample_inputs(model, dims={"batch": 5, "seq": 6})["x"].shape == (expected,)


def test_exact_dim_name_beats_role():
    model = _model([helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch_size", "seq"])])
    assert sample_inputs(model, dims={"batch_size": 3})["x"].shape == (3, 8)


def test_deterministic_by_seed():
    model = _ids_model(1000)
    first = sample_inputs(model, seed=1)["input_ids"]
    np.testing.assert_array_equal(sample_inputs(model, seed=1)["input_ids"], first)
    assert not np.array_equal(sample_inputs(model, seed=2)["input_ids"], first)


def test_initializers_listed_as_inputs_are_skipped():
    model = _ids_model(5)
    model.graph.input.append(helper.make_tensor_value_info("table", TensorProto.FLOAT, [5, 4]))
    assert set(sample_inputs(model)) == {"input_ids", "attention_mask"}


def test_unknown_symbolic_dim_is_an_error_naming_it_and_the_fix():
    model = _model([helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "heads"])])
    with pytest.raises(UnsupportedModelError, match=r"input 'x' axis 1 has 'heads'.*--dim heads=8"):
        sample_inputs(model)


def test_integer_input_without_a_table_is_an_error():
    model = _model([helper.make_tensor_value_info("n", TensorProto.INT64, [2])])
    with pytest.raises(UnsupportedModelError, match=r"'n' is an integer input that feeds no Gather.*npz"):
        sample_inputs(model)


def test_string_input_is_an_error():
    model = _model([helper.make_tensor_value_info("s", TensorProto.STRING, [2])])
    with pytest.raises(UnsupportedModelError, match="input 's' has type object"):
        sample_inputs(model)


@pytest.mark.parametrize("bad", [0, -1, True, 2.5])
def test_bad_dim_value_is_an_error(bad):
    with pytest.raises(UnsupportedModelError, match=r"dim seq=.* must be a positive integer"):
        sample_inputs(_ids_model(3), dims={"seq": bad})
