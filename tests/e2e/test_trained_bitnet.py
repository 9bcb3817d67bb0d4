"""A model trained with BitNet b1.58 QAT (models/fixtures/qat, made by models.train_bitnet) compiles to
what it was trained to compute: perplexity on held-out text within 0.1 % of the QAT forward's, and
logits as close to it as the exact semantics get in onnxruntime (models.bitnet_fixture)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from bitnet_onnx import runtime
from bitnet_onnx.compiler.compile import compile
from bitnet_onnx.config.config import LayerPrecisionConfig, MixedPrecisionConfig, MixedPrecisionStrategy
from bitnet_onnx.core.dtypes import DType, TernaryScale, WeightLayout
from bitnet_onnx.core.layers import ComponentType, LayerType
from models import bitnet_fixture
from models.bitnet_fixture import Reference, mean_abs_diff, perplexity

pytestmark = pytest.mark.usefixtures("ops_lib")


def _ternary_linears(scale: TernaryScale) -> LayerPrecisionConfig:
    """BITNET158 weights with the scale rule `scale`, int8 activations (balanced's linear entry)."""
    return LayerPrecisionConfig(
        LayerType.LINEAR, DType.BITNET158, WeightLayout(ternary_scale=scale)
    ).with_component_override(ComponentType.ACTIVATIONS, DType.I8)


def _linears_only(scale: TernaryScale = TernaryScale.ABSMEAN) -> MixedPrecisionConfig:
    """Ternary linear layers, everything else F32."""
    return MixedPrecisionConfig(MixedPrecisionStrategy.CUSTOM, DType.F32).with_layer_type_config(
        _ternary_linears(scale)
    )


def _balanced(scale: TernaryScale) -> MixedPrecisionConfig:
    return MixedPrecisionConfig.balanced().with_layer_type_config(_ternary_linears(scale))


CONFIGS = {"balanced": MixedPrecisionConfig.balanced, "linears_only": _linears_only}


@pytest.fixture(scope="module")
def fixture() -> tuple[onnx.ModelProto, Reference]:
    return bitnet_fixture.load()


def _logits(model: onnx.ModelProto | Path, ids: np.ndarray) -> np.ndarray:
    return runtime.session(model, threads=2).run(["logits"], {"input_ids": ids})[0]


def _compiled_logits(
    model: onnx.ModelProto, config: MixedPrecisionConfig, ids: np.ndarray, folder: Path
) -> np.ndarray:
    # strict=False: validation compares with the float latent model, which is not what a QAT model
    # was trained to compute (its perplexity here is twice the trained one).
    out = folder / "compiled.onnx"
    compile(model, config, output=out, strict=False, measure_kernels=False)
    return _logits(out, ids)


def test_the_exact_semantics_reproduce_the_qat_forward(fixture):
    model, ref = fixture
    exact = _logits(bitnet_fixture.exact_semantics(model), ref.input_ids)
    trained = perplexity(ref.logits, ref.input_ids)
    assert abs(perplexity(exact, ref.input_ids) / trained - 1) < 1e-4
    assert mean_abs_diff(exact, ref.logits) < 1e-3
    # the float latent weights are not the trained model: that is why the scale rule matters
    assert perplexity(_logits(model, ref.input_ids), ref.input_ids) > 1.5 * trained


@pytest.mark.parametrize("name", CONFIGS)
def test_compiled_qat_model_computes_what_was_trained(fixture, tmp_path, name):
    model, ref = fixture
    config = CONFIGS[name]()
    compiled = _compiled_logits(model, config, ref.input_ids, tmp_path)
    trained = perplexity(ref.logits, ref.input_ids)
    assert abs(perplexity(compiled, ref.input_ids) / trained - 1) < 1e-3
    # The exact semantics of the ternary layers under this config's other precisions: the exactly
    # ternary twin (weights T·γ) compiled alike; for linears only, also the float32 reference graph.
    twin = _compiled_logits(bitnet_fixture.exact_ternary_twin(model), config, ref.input_ids, tmp_path)
    np.testing.assert_array_equal(compiled, twin)  # same T and γ from latent and from T·γ weights
    floors = [mean_abs_diff(twin, ref.logits)]
    if name == "linears_only":
        floors.append(
            mean_abs_diff(_logits(bitnet_fixture.exact_semantics(model), ref.input_ids), ref.logits)
        )
    assert mean_abs_diff(compiled, ref.logits) <= 2 * max(floors)


@pytest.mark.parametrize("make", [_linears_only, _balanced], ids=["linears_only", "balanced"])
def test_least_squares_scale_misses_the_trained_model(fixture, tmp_path, make):
    # α/γ ≈ 1.4 scales every ternary layer's output: the compile is measurably not the trained model
    model, ref = fixture
    absmean = _compiled_logits(model, make(TernaryScale.ABSMEAN), ref.input_ids, tmp_path)
    least_squares = _compiled_logits(model, make(TernaryScale.LEAST_SQUARES), ref.input_ids, tmp_path)
    trained = perplexity(ref.logits, ref.input_ids)
    assert perplexity(least_squares, ref.input_ids) > 1.01 * trained
    assert mean_abs_diff(least_squares, ref.logits) > 10 * mean_abs_diff(absmean, ref.logits)
