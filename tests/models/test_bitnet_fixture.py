"""models.bitnet_fixture: the committed QAT fixture's provenance, its exact-semantics graph and twin,
and the measures, against hand computations and numpy."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from bitnet_onnx.numerics.quantization import quantize_tokens, ternarize
from models import bitnet_fixture
from models.bitnet_fixture import QAT_LINEAR, exact_semantics, exact_ternary_twin, mean_abs_diff, perplexity

README = bitnet_fixture.MODEL.parents[2] / "README.md"


@pytest.mark.parametrize("path", [bitnet_fixture.MODEL, bitnet_fixture.REFERENCE])
def test_committed_files_match_the_sha256_in_models_readme(path):
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() in README.read_text()
    assert len(data) < 2 << 20


def test_reference_is_a_held_out_byte_window_with_its_logits():
    model, ref = bitnet_fixture.load()
    assert ref.input_ids.dtype == np.int64 and ref.input_ids.shape == (1, 512)
    assert ref.input_ids.min() >= 0 and ref.input_ids.max() < 256
    assert ref.logits.dtype == np.float32 and ref.logits.shape == (1, 512, 256)
    assert bytes(ref.input_ids[0].astype(np.uint8)).startswith(b"Text wrapping and filling.")
    linears = [n.name for n in model.graph.node if QAT_LINEAR.fullmatch(n.name)]
    assert len(linears) == 4 * 7  # q, k, v, o, gate, up, down in each of 4 layers; lm_head excluded
    assert not any("quantize" in n.op_type.lower() for n in model.graph.node)  # exported in float mode


def test_perplexity_and_mean_abs_diff_by_hand():
    ids = np.array([[3, 1, 2]])
    assert perplexity(np.zeros((1, 3, 5), np.float32), ids) == pytest.approx(5.0)  # uniform over 5
    logits = np.zeros((1, 3, 4), np.float32)
    logits[0, 0, 1] = logits[0, 1, 2] = np.log(3.0)  # p(next) = 3/6 = 1/2 for both predictions
    assert perplexity(logits, ids) == pytest.approx(2.0)
    assert mean_abs_diff(np.array([1.0, -1.0]), np.array([0.5, 0.0])) == pytest.approx(0.75)


def _one_linear(w_kn: np.ndarray) -> onnx.ModelProto:
    """x [M, K] → /model/layers.0/mlp/up_proj/MatMul(x, W[K, N]) → y."""
    k, n = w_kn.shape
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="/model/layers.0/mlp/up_proj/MatMul")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
        [numpy_helper.from_array(w_kn, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(("k", "n"), [(16, 3), (100, 7)])
def test_exact_semantics_is_the_bitlinear_formula(k, n):
    rng = np.random.default_rng(k)
    w = rng.standard_normal((n, k)).astype(np.float32)  # rows W[N, K]
    x = rng.standard_normal((5, k)).astype(np.float32)
    graph = exact_semantics(_one_linear(w.T.copy())).SerializeToString()
    got = ort.InferenceSession(graph, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    tw, act = ternarize(w), quantize_tokens(x)
    acc = act.values.astype(np.float32) @ tw.values.T.astype(np.float32)  # exact: small integers
    np.testing.assert_array_equal(got, (acc * act.factor[:, None]) * tw.scale[0])


def test_exact_ternary_twin_holds_t_times_gamma():
    w = np.random.default_rng(1).standard_normal((12, 5)).astype(np.float32)  # MatMul B [K, N]
    twin = numpy_helper.to_array(exact_ternary_twin(_one_linear(w)).graph.initializer[0])
    tw = ternarize(w.T)
    np.testing.assert_array_equal(twin, tw.dequantize().T)
    again = ternarize(twin.T)  # exactly ternary × γ: the compiler recovers T and γ
    np.testing.assert_array_equal(again.values, tw.values)
    assert again.scale[0] == tw.scale[0] == np.float32(np.abs(w.astype(np.float64)).mean())


def test_a_model_without_qat_linears_is_refused():
    model = _one_linear(np.ones((4, 2), np.float32))
    model.graph.node[0].name = "/lm_head/MatMul"
    with pytest.raises(ValueError, match="no QAT linear"):
        exact_semantics(model)
