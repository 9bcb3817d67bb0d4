"""End to end: conversion strategy gptq through compile() and `bitnet-onnx compile --inputs`.

The model is two linear layers and a head, X → MatMul(B1) → Relu → MatMul(B2) → MatMul(I), so
each layer's calibration activations are known in numpy (X, and relu(X·B1)) and the weights the
compile stores can be checked against the converter fed those activations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bitnet_onnx.cli import EXIT_OK, EXIT_USER_ERROR, main
from bitnet_onnx.compiler.compile import compile
from bitnet_onnx.config.config import LayerPrecisionConfig, MixedPrecisionConfig
from bitnet_onnx.core.dtypes import ConversionStrategy, DType, WeightLayout
from bitnet_onnx.core.errors import ConfigError
from bitnet_onnx.core.inspection import read_layers
from bitnet_onnx.core.layers import LayerType
from bitnet_onnx.numerics.converter import ConversionConfig, PrecisionConverter
from bitnet_onnx.numerics.gptq import Hessian
from bitnet_onnx.optimize.calibration import Calibration

K, HIDDEN, N = 64, 96, 32
F32 = np.float32


def _weights(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(K, HIDDEN)).astype(F32), rng.normal(size=(HIDDEN, N)).astype(F32) / 8


def _model(b1: np.ndarray, b2: np.ndarray) -> onnx.ModelProto:
    """fc1 and fc2 are linear layers; the head (the output layer, kept F32) follows them."""
    head = np.eye(N, dtype=F32)
    nodes = [
        helper.make_node("MatMul", ["x", "b1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="act"),
        helper.make_node("MatMul", ["r", "b2"], ["h2"], name="fc2"),
        helper.make_node("MatMul", ["h2", "head"], ["y"], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "two_linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", N])],
        [
            numpy_helper.from_array(b1, "b1"),
            numpy_helper.from_array(b2, "b2"),
            numpy_helper.from_array(head, "head"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


_MIXING = np.random.default_rng(99).normal(size=(6, K))  # one input distribution for every sample


def _samples(n: int, seed: int) -> np.ndarray:
    """n inputs with strongly correlated features (rank 6 plus noise), as a trained layer sees."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 6)) @ _MIXING + 0.1 * rng.normal(size=(n, K))).astype(F32)


def _config(dtype: DType, strategy: ConversionStrategy) -> MixedPrecisionConfig:
    layout = WeightLayout() if dtype is DType.BITNET158 else WeightLayout(group_size=32)
    entry = LayerPrecisionConfig(LayerType.LINEAR, dtype, layout, conversion_strategy=strategy)
    return MixedPrecisionConfig.new("custom").with_layer_type_config(entry)


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.mark.parametrize("dtype", [DType.I4, DType.I2, DType.BITNET158], ids=lambda d: d.name)
def test_compile_stores_the_weights_gptq_gives_on_each_layers_activations(
    tmp_path: Path, dtype: DType
) -> None:
    b1, b2 = _weights(0)
    model = _model(b1, b2)
    x = _samples(48, seed=1)
    calibration = Calibration(({"x": x},))
    outputs = [tmp_path / "m.onnx", tmp_path / "again.onnx"]
    results = [
        compile(
            model,
            _config(dtype, ConversionStrategy.GPTQ),
            output=out,
            calibration=calibration,
            inputs=calibration,
            strict=False,  # the plan's accuracy is not what this test checks
            measure_kernels=False,
        )
        for out in outputs
    ]
    linear = [r for r in results[0].layers if r.layer_type == "linear"]
    assert [r.components["weights"]["conversion_strategy"] for r in linear] == ["gptq", "gptq"]
    stored = _initializers(onnx.load(outputs[0]))
    converter = PrecisionConverter(ConversionConfig(strategy=ConversionStrategy.GPTQ))
    layout = WeightLayout() if dtype is DType.BITNET158 else WeightLayout(group_size=32)
    for w, acts in ((b1, x), (b2, np.maximum(x @ b1, 0))):
        hessian = Hessian(acts.shape[-1])
        hessian.add(acts)
        expected = converter.convert_tensor(w.T, dtype, layout=layout, hessian=hessian.matrix)
        assert any(
            a.shape == expected.data.shape and np.array_equal(a, expected.data) for a in stored.values()
        ), "no initializer holds the layer's GPTQ codes"
    assert outputs[0].read_bytes() == outputs[1].read_bytes()  # deterministic


def test_gptq_compile_is_closer_than_round_to_nearest_on_unseen_samples(tmp_path: Path) -> None:
    b1, b2 = _weights(2)
    model = _model(b1, b2)
    calibration, held_out = (
        Calibration(({"x": _samples(64, seed=3)},)),
        Calibration(({"x": _samples(32, seed=4)},)),
    )
    cosines = {}
    for strategy in (ConversionStrategy.SCALED, ConversionStrategy.GPTQ):
        result = compile(
            model,
            _config(DType.I2, strategy),
            inputs=held_out,
            calibration=calibration,
            strict=False,
            measure_kernels=False,
        )
        cosines[strategy] = result.report.outputs[0].cosine
    assert 1 - cosines[ConversionStrategy.GPTQ] < 0.8 * (1 - cosines[ConversionStrategy.SCALED])


def test_gptq_without_calibration_inputs_names_the_fix() -> None:
    model = _model(*_weights(5))
    with pytest.raises(ConfigError, match=r"calibration=Calibration\.from_npz"):
        compile(model, _config(DType.I4, ConversionStrategy.GPTQ), measure_kernels=False)


def test_cli_compile_with_inputs_uses_gptq(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "two.onnx"
    onnx.save(_model(*_weights(6)), path)
    config = tmp_path / "gptq.yaml"
    config.write_text(
        "version: 1\nstrategy: custom\nlayer_types:\n"
        "  linear: {precision: I4, group_size: 32, conversion_strategy: gptq}\n"
    )
    npz = tmp_path / "calib.npz"
    np.savez(npz, x=_samples(16, seed=7))
    out = tmp_path / "out.onnx"
    base = ["compile", str(path), "-o", str(out), "--config", str(config), "--no-kernel-timing"]
    assert main(base) == EXIT_USER_ERROR
    assert "--inputs NPZ" in capsys.readouterr().err
    assert main([*base, "--inputs", str(npz)]) == EXIT_OK
    layers = read_layers(onnx.load(out))
    assert [r.components["weights"]["conversion_strategy"] for r in layers if r.layer_type == "linear"] == [
        "gptq",
        "gptq",
    ]


def test_gptq_on_a_layer_without_an_input_to_calibrate_on_names_the_layers() -> None:
    fixtures = Path(__file__).resolve().parents[2] / "models" / "fixtures"
    model = fixtures / "bert_tiny.onnx"
    entry = LayerPrecisionConfig(LayerType.EMBEDDING, DType.I8, conversion_strategy=ConversionStrategy.GPTQ)
    config = MixedPrecisionConfig.new("custom").with_layer_type_config(entry)
    calibration = Calibration.from_npz(fixtures / "bert_tiny.inputs.npz", model)
    with pytest.raises(ConfigError, match=r"applies to linear and output layers.*\(embedding\)"):
        compile(model, config, calibration=calibration, measure_kernels=False)
