from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from bitnet_onnx.core.errors import ConfigError
from bitnet_onnx.core.interface import Interface, speaking_to
from bitnet_onnx.optimize.calibration import Calibration, input_specs
from bitnet_onnx.runtime.sample_inputs import sample_inputs
from models import bert, convnet, llama


@pytest.fixture(scope="module")
def llama_model() -> onnx.ModelProto:
    return llama.build(llama.LlamaConfig.preset("tiny"))


@pytest.fixture(scope="module")
def conv_model() -> onnx.ModelProto:
    return convnet.build(convnet.ConvNetConfig())


def _ids(rows: int, seq: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(rows, seq)).astype(np.int64)


def test_input_specs_name_type_and_dims(llama_model: onnx.ModelProto, conv_model: onnx.ModelProto) -> None:
    ids = input_specs(llama_model)["input_ids"]
    assert (ids.dtype, ids.dims, str(ids)) == (np.dtype(np.int64), ("batch", "seq"), "int64 [batch, seq]")
    image = input_specs(conv_model)["input"]
    assert str(image) == "float32 [batch, 3, 32, 32]"


# -- generated ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3])
def test_generated_batches_come_from_sample_inputs_with_consecutive_seeds(
    llama_model: onnx.ModelProto, n: int
) -> None:
    cal = Calibration.generated(llama_model, n=n, seed=5, dims={"batch": 2, "seq": 12})
    assert len(cal) == n
    for i, batch in enumerate(cal.batches):
        want = sample_inputs(llama_model, dims={"batch": 2, "seq": 12}, seed=5 + i)
        assert batch.keys() == want.keys()
        np.testing.assert_array_equal(batch["input_ids"], want["input_ids"])
        assert batch["input_ids"].shape == (2, 12)


def test_generated_from_a_path_reads_no_weights(tmp_path: Path, llama_model: onnx.ModelProto) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(llama_model, path)
    assert Calibration.generated(path, n=2).sha256 == Calibration.generated(llama_model, n=2).sha256


@pytest.mark.parametrize("n", [0, -1, 1.5, True])
def test_generated_needs_a_positive_count(llama_model: onnx.ModelProto, n: object) -> None:
    with pytest.raises(ConfigError, match="must be a positive number of batches"):
        Calibration.generated(llama_model, n=n)  # type: ignore[arg-type]


def test_arrays_are_read_only_copies() -> None:
    source = {"x": np.zeros((2, 3), np.float32)}
    cal = Calibration((source,))
    source["x"][0, 0] = 7.0
    assert cal.batches[0]["x"][0, 0] == 0.0
    with pytest.raises(ValueError, match="read-only"):
        cal.batches[0]["x"][0, 0] = 1.0


def test_a_calibration_needs_a_batch() -> None:
    with pytest.raises(ConfigError, match="at least one batch"):
        Calibration(())


# -- sha256 ------------------------------------------------------------------------------------


def test_sha256_depends_on_names_dtypes_shapes_bytes_and_order_of_batches() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    y = np.ones(4, np.int64)
    variants = {
        "base": ({"x": x, "y": y},),
        "name": ({"x2": x, "y": y},),
        "dtype": ({"x": x.astype(np.float64), "y": y},),
        "shape": ({"x": x.reshape(3, 2), "y": y},),
        "bytes": ({"x": x + 1, "y": y},),
        "two batches": ({"x": x, "y": y}, {"x": x + 1, "y": y}),
        "swapped batches": ({"x": x + 1, "y": y}, {"x": x, "y": y}),
    }
    hashes = {key: Calibration(batches).sha256 for key, batches in variants.items()}
    assert len(set(hashes.values())) == len(variants), hashes
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in hashes.values())


def test_sha256_ignores_key_order_and_memory_layout() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    a = Calibration(({"x": x, "y": np.ones(2)},))
    b = Calibration(({"y": np.ones(2), "x": np.asfortranarray(x)},))
    assert a.sha256 == b.sha256


# -- from_npz ----------------------------------------------------------------------------------


def test_npz_with_plain_keys_is_one_batch(tmp_path: Path, llama_model: onnx.ModelProto) -> None:
    path = tmp_path / "in.npz"
    ids = _ids(2, 8)
    np.savez(path, input_ids=ids)
    cal = Calibration.from_npz(path, llama_model)
    assert len(cal) == 1
    np.testing.assert_array_equal(cal.batches[0]["input_ids"], ids)


def test_npz_with_indexed_keys_holds_batches_of_different_lengths(
    tmp_path: Path, llama_model: onnx.ModelProto
) -> None:
    path = tmp_path / "in.npz"
    arrays = {"input_ids__0": _ids(1, 8, 0), "input_ids__1": _ids(1, 16, 1), "input_ids__2": _ids(2, 4, 2)}
    np.savez(path, **arrays)
    cal = Calibration.from_npz(path, llama_model)
    assert [b["input_ids"].shape for b in cal.batches] == [(1, 8), (1, 16), (2, 4)]
    for i, batch in enumerate(cal.batches):
        np.testing.assert_array_equal(batch["input_ids"], arrays[f"input_ids__{i}"])


def _npz_error(tmp_path: Path, model: onnx.ModelProto, **arrays: np.ndarray) -> ConfigError:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ConfigError) as info:
        Calibration.from_npz(path, model)
    assert str(path) in str(info.value)
    return info.value


def test_npz_missing_input_names_it_and_its_spec(tmp_path: Path, llama_model: onnx.ModelProto) -> None:
    error = _npz_error(tmp_path, llama_model, ids=_ids(1, 8))
    assert error.problems == [
        "'ids' is not an input of the model (its inputs: input_ids int64 [batch, seq])",
        "no array for model input 'input_ids' (int64 [batch, seq])",
    ]


def test_npz_wrong_dtype_says_the_expected_type_and_the_fix(
    tmp_path: Path, llama_model: onnx.ModelProto
) -> None:
    error = _npz_error(tmp_path, llama_model, input_ids=_ids(1, 8).astype(np.int32))
    assert error.problems == [
        "'input_ids' is int32 [1, 8]; the model's input 'input_ids' takes int64 [batch, seq]: "
        "convert it with .astype(np.int64)"
    ]


def test_npz_wrong_rank_and_fixed_dims(tmp_path: Path, conv_model: onnx.ModelProto) -> None:
    error = _npz_error(tmp_path, conv_model, input=np.zeros((1, 3, 16, 32), np.float32))
    assert error.problems == [
        "'input' is float32 [1, 3, 16, 32]; the model's input 'input' takes float32 [batch, 3, 32, 32]: "
        "axis 2 is 16, not 32"
    ]
    error = _npz_error(tmp_path, conv_model, input=np.zeros((3, 32, 32), np.float32))
    assert "3 axes instead of 4" in error.problems[0]


def test_npz_reports_every_problem_at_once(tmp_path: Path, llama_model: onnx.ModelProto) -> None:
    error = _npz_error(
        tmp_path,
        llama_model,
        input_ids__0=_ids(1, 8).astype(np.float32),
        input_ids__2=_ids(1, 8),
        attention_mask=np.ones((1, 8), np.int64),
    )
    text = "\n".join(error.problems)
    assert len(error.problems) == 3, text
    assert "'input_ids__0' is float32 [1, 8]" in text
    assert "'attention_mask' is not an input of the model" in text
    assert (
        "no array input_ids__1 for model input 'input_ids' (int64 [batch, seq]): every batch needs one"
        in text
    )


def test_npz_may_not_mix_plain_and_indexed_keys(tmp_path: Path, llama_model: onnx.ModelProto) -> None:
    error = _npz_error(tmp_path, llama_model, input_ids=_ids(1, 8), input_ids__0=_ids(1, 8))
    assert any("mixes plain keys (input_ids) and batch keys (input_ids__<i>)" in p for p in error.problems)


def test_npz_that_cannot_be_read(tmp_path: Path, llama_model: onnx.ModelProto) -> None:
    path = tmp_path / "broken.npz"
    path.write_bytes(b"not a zip file")
    with pytest.raises(ConfigError, match=r"cannot read calibration inputs .*broken\.npz.*numpy\.savez"):
        Calibration.from_npz(path, llama_model)
    with pytest.raises(ConfigError, match="cannot read calibration inputs"):
        Calibration.from_npz(tmp_path / "missing.npz", llama_model)


# -- check ---------------------------------------------------------------------------------------


def test_check_names_the_batch_of_each_problem(llama_model: onnx.ModelProto) -> None:
    cal = Calibration(
        ({"input_ids": _ids(1, 8)}, {"input_ids": _ids(1, 8).astype(np.float32), "x": _ids(1, 8)})
    )
    with pytest.raises(ConfigError) as info:
        cal.check(llama_model)
    assert info.value.problems == [
        "batch 1: 'input_ids' is float32 [1, 8]; the model's input 'input_ids' takes int64 [batch, seq]: "
        "convert it with .astype(np.int64)",
        "batch 1: 'x' is not an input of the model (its inputs: input_ids int64 [batch, seq])",
    ]
    Calibration(({"input_ids": _ids(3, 5)},)).check(llama_model)  # fits: no error


# -- split -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "fraction", "kept", "held"),
    [(2, 0.5, 1, 1), (4, 0.25, 3, 1), (10, 0.3, 7, 3), (3, 0.01, 2, 1), (3, 0.99, 1, 2)],
)
def test_split_holds_the_last_batches_apart(n: int, fraction: float, kept: int, held: int) -> None:
    cal = Calibration(tuple({"x": np.full(2, i, np.float32)} for i in range(n)))
    first, second = cal.split(fraction)
    assert (len(first), len(second)) == (kept, held)
    assert [int(b["x"][0]) for b in (*first.batches, *second.batches)] == list(range(n))


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.2, 1.5])
def test_split_fraction_must_be_a_proper_fraction(fraction: float) -> None:
    cal = Calibration(({"x": np.zeros(1)}, {"x": np.ones(1)}))
    with pytest.raises(ConfigError, match="strictly between 0 and 1"):
        cal.split(fraction)


def test_split_needs_two_samples() -> None:
    with pytest.raises(ConfigError, match=r"\(x \[1\]\): 1 sample; .*at least 2.*Calibration\.generated"):
        Calibration(({"x": np.zeros(1)},)).split(0.5)


@pytest.mark.parametrize(("holdout", "kept"), [(0.25, 6), (3, 5), (0.01, 7), (7, 1)])
def test_split_of_one_batch_cuts_the_rows_of_the_leading_axis(holdout: float, kept: int) -> None:
    rows = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    cal = Calibration(({"x": rows, "scale": np.float32(2.0)},), source="in.npz")
    first, second = cal.split(holdout)
    assert first.samples == kept and second.samples == 8 - kept
    np.testing.assert_array_equal(np.concatenate([first.batches[0]["x"], second.batches[0]["x"]]), rows)
    assert first.batches[0]["scale"] == second.batches[0]["scale"] == 2.0  # a scalar goes to both
    assert first.source == f"{kept} sample{'s' * (kept > 1)} of in.npz to calibrate on"
    assert second.source == f"{8 - kept} held-out sample{'s' * (8 - kept > 1)} of in.npz"


@pytest.mark.parametrize(
    ("holdout", "words"),
    [
        (0, "at least one sample"),
        (1.5, "strictly between 0 and 1"),
        ("2", "must be a number"),
        (True, "must be a number"),
    ],
)
def test_split_holdout_must_be_a_count_or_a_fraction(holdout: object, words: str) -> None:
    cal = Calibration(({"x": np.zeros((4, 2))},))
    with pytest.raises(ConfigError, match=words + r".*e\.g\. holdout=0\.25"):
        cal.split(holdout)  # type: ignore[arg-type]


def test_split_holding_out_every_sample_says_how_many_to_keep() -> None:
    cal = Calibration(({"x": np.zeros((8, 2))},))
    with pytest.raises(ConfigError, match=r"holding out 8 of its 8 samples leaves none.*holdout=2"):
        cal.split(8)


def test_split_messages_name_cli_flags_under_the_cli() -> None:
    one = Calibration(({"x": np.zeros(1)},))
    with speaking_to(Interface.CLI):
        with pytest.raises(ConfigError) as info:
            one.split(0.25)
        assert "omit --inputs" in str(info.value) and "Calibration." not in str(info.value)
        with pytest.raises(ConfigError, match=r"e\.g\. --holdout 0\.25"):
            one.split(0)
    with pytest.raises(ConfigError, match=r"Calibration\.generated\(model, n=4\)"):
        one.split(0.25)  # the API's spelling again outside


def test_split_of_arrays_that_disagree_on_the_samples_names_them() -> None:
    cal = Calibration(({"a": np.zeros((4, 2)), "b": np.zeros((3, 2))},))
    assert cal.samples == 0
    with pytest.raises(ConfigError, match=r"disagree on the leading \(sample\) axis \(a 4, b 3\)"):
        cal.split(1)


# -- the leading (batch) axis of plain keys -------------------------------------------------------


@pytest.fixture(scope="module")
def bert_model() -> onnx.ModelProto:
    return bert.build(bert.BertConfig())


def test_npz_samples_along_the_leading_axis_split_into_calibration_and_held_out(
    tmp_path: Path, bert_model: onnx.ModelProto
) -> None:
    path = tmp_path / "calib.npz"
    ids, mask = _ids(48, 12), np.ones((48, 12), np.int64)
    np.savez(path, input_ids=ids, attention_mask=mask)
    cal = Calibration.from_npz(path, bert_model)
    assert (len(cal), cal.samples, cal.source) == (1, 48, str(path))
    fitted, held = cal.split(0.25)
    assert (fitted.samples, held.samples) == (36, 12)
    np.testing.assert_array_equal(held.batches[0]["input_ids"], ids[36:])
    assert held.describe() == f"12 held-out samples of {path} (input_ids [12, 12], attention_mask [12, 12])"


def test_npz_arrays_with_different_sample_counts_are_named(
    tmp_path: Path, bert_model: onnx.ModelProto
) -> None:
    error = _npz_error(
        tmp_path, bert_model, input_ids=_ids(48, 12), attention_mask=np.ones((47, 12), np.int64)
    )
    assert error.problems == [
        "the arrays hold different numbers of samples along their leading (batch) axis (input_ids [48, 12], "
        "attention_mask [47, 12]): stack the same samples in every array"
    ]


def _fixed_batch_model(rows: int) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "fixed", [x], [y])
    return helper.make_model(graph)


@pytest.mark.parametrize("rows", [1, 2])
def test_npz_samples_come_in_batches_of_a_fixed_batch_axis(tmp_path: Path, rows: int) -> None:
    path = tmp_path / "in.npz"
    x = np.arange(6 * 4, dtype=np.float32).reshape(6, 4)
    np.savez(path, x=x)
    cal = Calibration.from_npz(path, _fixed_batch_model(rows))
    assert [b["x"].shape for b in cal.batches] == [(rows, 4)] * (6 // rows)
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in cal.batches]), x)
    fitted, held = cal.split(1)
    assert (len(fitted), len(held)) == (6 // rows - 1, 1)


def test_npz_samples_not_a_multiple_of_a_fixed_batch_axis(tmp_path: Path) -> None:
    error = _npz_error(tmp_path, _fixed_batch_model(4), x=np.zeros((6, 4), np.float32))
    assert any("batch axis is fixed at 4" in p and "6 samples" in p for p in error.problems)


@pytest.mark.parametrize(
    ("batches", "rows"),
    [
        # token ids [batch, seq]: every position becomes a row of activations
        (({"ids": np.zeros((4, 9), np.int64), "mask": np.ones((4, 9), np.int64)},), 36),
        # features [batch, K]: one row per sample; batches add up
        (({"x": np.zeros((5, 16), np.float32)}, {"x": np.zeros((3, 16), np.float32)}), 8),
        # the largest input of a batch decides (a float [batch, seq, K] next to its ids)
        (({"ids": np.zeros((2, 3), np.int64), "h": np.zeros((2, 5, 7), np.float32)},), 10),
    ],
)
def test_positions_count_the_activation_rows_of_a_linear_layer(batches: tuple, rows: int) -> None:
    assert Calibration(batches).positions == rows
