"""Sample inputs read from the graph's input specs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from bitnet_onnx.core.errors import UnsupportedModelError
from models import bert, convnet, llama
from models.inputs import main, sample_inputs, save_npz


def test_token_ids_are_in_the_embedding_table_and_masks_pad_later_rows():
    feeds = sample_inputs(bert.build(bert.BertConfig(vocab_size=50)), dims={"batch": 3, "seq": 5}, seed=4)
    assert set(feeds) == {"input_ids", "attention_mask"}
    ids, mask = feeds["input_ids"], feeds["attention_mask"]
    assert ids.dtype == np.int64 and ids.shape == (3, 5) and ids.min() >= 0 and ids.max() < 50
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])


def test_float_inputs_and_fixed_dims():
    feeds = sample_inputs(convnet.build(convnet.ConvNetConfig()), dims={"batch": 2})
    assert feeds["input"].shape == (2, 3, 32, 32) and feeds["input"].dtype == np.float32
    assert abs(feeds["input"].std() - 1.0) < 0.05


def test_inputs_are_deterministic_by_seed():
    model = llama.build(llama.LlamaConfig())
    first = sample_inputs(model, seed=1)["input_ids"]
    np.testing.assert_array_equal(sample_inputs(model, seed=1)["input_ids"], first)
    assert not np.array_equal(sample_inputs(model, seed=2)["input_ids"], first)


def test_unknown_symbolic_dim_is_an_error_naming_it():
    with pytest.raises(UnsupportedModelError, match=r"input 'input_ids' axis 1 has a 'seq' symbolic size"):
        sample_inputs(llama.build(llama.LlamaConfig()), dims={"batch": 1})


def test_integer_input_without_a_table_is_an_error():
    graph = helper.make_graph(
        [helper.make_node("Identity", ["n"], ["y"])],
        "g",
        [helper.make_tensor_value_info("n", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [2])],
    )
    with pytest.raises(UnsupportedModelError, match="'n' is an integer input that feeds no Gather"):
        sample_inputs(helper.make_model(graph))


def test_npz_writer_and_command_line_round_trip(tmp_path):
    model = llama.build(llama.LlamaConfig())
    onnx.save(model, tmp_path / "m.onnx")
    main(
        [
            str(tmp_path / "m.onnx"),
            "-o",
            str(tmp_path / "cli.npz"),
            "--batch",
            "2",
            "--seq",
            "3",
            "--seed",
            "5",
        ]
    )
    want = sample_inputs(model, dims={"batch": 2, "seq": 3}, seed=5)
    save_npz(want, tmp_path / "api.npz")
    for path in (tmp_path / "cli.npz", tmp_path / "api.npz"):
        with np.load(path) as got:
            assert set(got) == {"input_ids"}
            np.testing.assert_array_equal(got["input_ids"], want["input_ids"])
