"""A float compile keeps the graph onnxruntime optimizes: conservative (F16 stored, F32 compute) and an
all-F32 plan of BERT encoders come out of onnxruntime's optimizer (ORT_ENABLE_ALL, what a default
session runs) with the same nodes as the original, so every fusion onnxruntime applies to the
original (LayerNormalization, SkipLayerNormalization, BiasGelu/FastGelu, FusedMatMul, Gemm…) also
applies to the compiled model, and the compile adds no node that runs per inference.

The normalize pass infers every tensor's shape (p10 case 6); written out, those shapes let
onnxruntime fold the residual Add into SkipLayerNormalization where it cannot on the original, and
the graphs differ (`passes/_graph.export_model` drops them). Structure only: timings belong in
`bench peers`, never in a test.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from bitnet_onnx import runtime
from bitnet_onnx.compiler.compile import compile
from bitnet_onnx.config.config import MixedPrecisionConfig
from bitnet_onnx.config.presets import MixedPrecisionStrategy
from bitnet_onnx.core.dtypes import DType
from bitnet_onnx.runtime.sample_inputs import sample_inputs
from models import bert
from models._onnx import save_model

pytestmark = pytest.mark.usefixtures("ops_lib")

ENCODERS = {
    "fused_ln_erf_matmul": bert.BertConfig(),
    "decomposed_ln_tanh_gemm": bert.BertConfig(
        norm=bert.LayerNormStyle.DECOMPOSED, gelu=bert.GeluStyle.TANH, linear=bert.LinearStyle.GEMM
    ),
    "mean_pooling_three_layers": bert.BertConfig(num_layers=3, head=bert.BertHead.MEAN_POOLING),
}
CONFIGS = {
    "conservative": MixedPrecisionStrategy.CONSERVATIVE,
    "all_f32": MixedPrecisionConfig(MixedPrecisionStrategy.CUSTOM, DType.F32),
}


def _optimized_ops(model: Path, folder: Path) -> collections.Counter[str]:
    """Op types (domain-qualified) of onnxruntime's optimized graph of `model`, 1 thread."""
    options = runtime.session_options(threads=1)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    optimized = folder / f"{model.stem}.optimized.onnx"
    options.optimized_model_filepath = str(optimized)
    ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    graph = onnx.load(optimized, load_external_data=False).graph
    return collections.Counter(f"{node.domain or 'ai.onnx'}:{node.op_type}" for node in graph.node)


def _embedding_tables(model: onnx.ModelProto) -> int:
    initializers = {i.name for i in model.graph.initializer}
    return sum(1 for node in model.graph.node if node.op_type == "Gather" and node.input[0] in initializers)


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("encoders")
    paths = {}
    for name, config in ENCODERS.items():
        paths[name] = folder / f"{name}.onnx"
        save_model(bert.build(config), paths[name])
    return paths


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_float_compile_keeps_onnxruntime_fusions(encoders, tmp_path, encoder, config_name):
    source = encoders[encoder]
    output = tmp_path / f"{encoder}.{config_name}.onnx"
    feeds = sample_inputs(onnx.load(source), dims={"batch": 4, "seq": 8}, seed=1)
    compile(source, CONFIGS[config_name], output=output, inputs=feeds, measure_kernels=False)

    original, compiled = _optimized_ops(source, tmp_path), _optimized_ops(output, tmp_path)
    fused = {op for op in original if op.startswith("com.microsoft:")}
    assert fused, f"onnxruntime fused nothing in {encoder}: the test would not see a lost fusion"
    # An F16-stored embedding table is read by Gather in float16 and its rows cast to float32 (half
    # the table's memory); every other Cast of a stored F16 constant folds at session creation.
    extra_casts = _embedding_tables(onnx.load(source)) if config_name == "conservative" else 0
    assert compiled == original + collections.Counter({"ai.onnx:Cast": extra_casts})

    expected = runtime.session(source, threads=1).run(None, feeds)
    ours = runtime.session(output, threads=1).run(None, feeds)
    atol = 1e-5 if config_name == "all_f32" else 2e-2
    for want, got in zip(expected, ours, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=atol * max(1.0, float(np.abs(want).max())))
