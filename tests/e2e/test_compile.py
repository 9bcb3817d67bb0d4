"""End to end: every fixture and builder model × every preset compiles, validates, runs in onnxruntime
within its strategy's error bound, and carries its plan in the graph; plus the compile guarantees
(byte-identical twice, input untouched, atomic output, strict/no-strict, log, dumps)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from bitnet_onnx import runtime
from bitnet_onnx.compiler.compile import CompileResult, compile
from bitnet_onnx.config.config import LayerPrecisionConfig, MixedPrecisionConfig
from bitnet_onnx.config.config_file import save_config
from bitnet_onnx.config.policy import (
    ConditionOperator,
    ConditionType,
    PolicyAction,
    PolicyCondition,
    PolicyRule,
    PrecisionPolicy,
)
from bitnet_onnx.config.report import THRESHOLDS, CompileValidationError, compare_outputs
from bitnet_onnx.core.dtypes import DType
from bitnet_onnx.core.errors import ConfigError, ValidationError
from bitnet_onnx.core.inspection import read_layers
from bitnet_onnx.core.layers import LayerType
from bitnet_onnx.core.log import read_log
from bitnet_onnx.passes.base import PassError
from bitnet_onnx.passes.p60_fold_converts import FoldConvertsPass
from bitnet_onnx.passes.p70_validate import ValidatePass
from models import bert, convnet, llama
from models._onnx import save_model
from models.weights import WeightInit

FIXTURES = Path(__file__).resolve().parents[2] / "models" / "fixtures"
PRESETS = ("conservative", "balanced", "aggressive")
BUILDERS: dict[str, Callable[[], onnx.ModelProto]] = {
    "llama_ternary": lambda: llama.build(llama.LlamaConfig.preset("tiny", weights=WeightInit.TERNARY)),
    "llama_gemm_tied": lambda: llama.build(
        llama.LlamaConfig(
            head=llama.HeadStyle.GEMM,
            tie_embeddings=True,
            norm=llama.RMSNormStyle.RMS_NORMALIZATION,
            opset=23,
        )
    ),
    # onnxruntime's fused SimplifiedLayerNormalization, which onnx.checker does not know.
    "llama_simplified_ln": lambda: llama.build(
        llama.LlamaConfig(norm=llama.RMSNormStyle.SIMPLIFIED_LAYER_NORMALIZATION)
    ),
    "bert_gemm_tanh": lambda: bert.build(
        bert.BertConfig(
            linear=bert.LinearStyle.GEMM, gelu=bert.GeluStyle.TANH, norm=bert.LayerNormStyle.DECOMPOSED
        )
    ),
    "convnet": lambda: convnet.build(convnet.ConvNetConfig()),
}
# Compression each preset must reach on these models (weights bytes before / after): F16 halves,
# ternary and int8 shrink more (embeddings and heads stay F16 in balanced).
MIN_COMPRESSION = {"conservative": 1.8, "balanced": 3.5, "aggressive": 4.0}


pytestmark = pytest.mark.usefixtures("ops_lib")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    for name, build in BUILDERS.items():
        save_model(build(), folder / f"{name}.onnx")
    return folder


def _source(name: str, models_dir: Path) -> Path:
    fixture = FIXTURES / f"{name}.onnx"
    return fixture if fixture.exists() else models_dir / f"{name}.onnx"


def _inputs(name: str, model: Path) -> dict[str, np.ndarray]:
    given = FIXTURES / f"{name}.inputs.npz"
    if given.exists():
        with np.load(given) as archive:
            return {k: archive[k] for k in archive.files}
    from bitnet_onnx.runtime.sample_inputs import sample_inputs

    # Batch 8: a classifier's few logits per row make the cosine of a small batch a noisy figure.
    return sample_inputs(onnx.load(model), dims={"batch": 8, "seq": 8}, seed=0)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


MODEL_NAMES = sorted(p.stem for p in FIXTURES.glob("*.onnx")) + sorted(BUILDERS)

CASES = [pytest.param(name, preset, id=f"{name}-{preset}") for name in MODEL_NAMES for preset in PRESETS]


@pytest.fixture(scope="module")
def compiled(models_dir, tmp_path_factory):
    """(model name, preset) → (source, output, result), compiled once per module on first use."""
    out_dir = tmp_path_factory.mktemp("compiled")
    cache: dict[tuple[str, str], tuple[Path, Path, CompileResult]] = {}

    def get(name: str, preset: str) -> tuple[Path, Path, CompileResult]:
        if (name, preset) not in cache:
            source = _source(name, models_dir)
            output = out_dir / f"{name}.{preset}.onnx"
            result = compile(
                source, preset, output=output, inputs=_inputs(name, source), measure_kernels=False
            )
            cache[name, preset] = (source, output, result)
        return cache[name, preset]

    return get


def _assigned(result: CompileResult) -> dict[str, dict[str, str]]:
    """layer → component → dtype, as assign_precision logged its plan."""
    record = next(r for r in result.records if r.pass_name == "assign_precision")
    plan: dict[str, dict[str, str]] = {}
    for change in record.changes:
        plan.setdefault(change.layer, {})[change.component] = change.dtype
    return plan


@pytest.mark.parametrize("name, preset", CASES)
def test_every_layer_gets_its_precision_in_the_compiled_graph(compiled, name, preset):
    _, output, result = compiled(name, preset)
    model = onnx.load(output)
    layers = {r.name: r for r in read_layers(model)}
    plan = _assigned(result)
    assert plan and set(layers) == set(plan)
    for layer, components in plan.items():
        assert dict(layers[layer].precisions) == components, layer
    assert [r.name for r in result.layers] == list(plan)  # model order
    bitnet_ops = {n.op_type for n in model.graph.node if n.domain == runtime.DOMAIN}
    ternary = [r for r in layers.values() if r.precisions.get("weights") == "BITNET158"]
    if preset == "conservative":
        assert not bitnet_ops and not ternary
    else:  # every linear and convolution layer is ternary in balanced and aggressive
        kinds = {"linear", "convolution"}
        assert {r.name for r in ternary} == {r.name for r in layers.values() if r.layer_type in kinds}
        assert ternary and bitnet_ops
    for record in ternary:
        # Linear layers with I8 activations run the integer kernel; convolutions store ternary
        # weights and unpack them for the float Conv (there is no integer convolution kernel).
        expected = "BitLinear" if record.layer_type == "linear" else "DequantizeLowBit"
        assert expected in {model.graph.node[i].op_type for i in _node_indices(model, record.nodes)}, (
            record.name
        )
    assert result.report.ok and result.report.goal_met


def _node_indices(model: onnx.ModelProto, names) -> list[int]:
    wanted = set(names)
    return [i for i, n in enumerate(model.graph.node) if n.name in wanted]


@pytest.mark.parametrize("name, preset", CASES)
def test_compiled_model_runs_in_onnxruntime_within_the_strategy_bound(compiled, name, preset):
    source, output, result = compiled(name, preset)
    feeds = _inputs(name, source)
    original = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    expected = dict(zip([o.name for o in original.get_outputs()], original.run(None, feeds), strict=True))
    session = runtime.session(output)
    actual = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
    assert set(actual) == set(expected)
    thresholds = THRESHOLDS[MixedPrecisionConfig.new(preset).strategy]
    for out_name, want in expected.items():
        got = actual[out_name]
        assert got.shape == want.shape and got.dtype == want.dtype
        ref, out = want.astype(np.float64).ravel(), got.astype(np.float64).ravel()
        cosine = ref @ out / (np.linalg.norm(ref) * np.linalg.norm(out))
        relative = np.quantile(np.abs(out - ref), 0.999) / np.abs(ref).max()
        assert cosine >= thresholds.min_cosine, (out_name, cosine)
        assert relative <= thresholds.max_rel_error, (out_name, relative)
    assert result.compression >= MIN_COMPRESSION[preset]
    initializers = onnx.load(output).graph.initializer
    assert result.bytes_after == sum(onnx.numpy_helper.to_array(t).nbytes for t in initializers)


def _optimized(model: Path, folder: Path) -> onnx.ModelProto:
    """The graph onnxruntime runs: `model` after its session-init optimizations."""
    options = runtime.session_options(threads=1)
    options.optimized_model_filepath = str(folder / f"{model.stem}.optimized.onnx")
    runtime.session(model, options=options)
    return onnx.load(options.optimized_model_filepath)


def _casts(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    return [n for n in graph.node if n.op_type in ("Cast", "CastLike")]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_conservative_runs_the_fp32_graph_on_weights_stored_in_f16(compiled, name, tmp_path):
    # F16 stored, F32 computed: onnxruntime folds the Cast of every stored constant at session init,
    # and the graph it runs has no conversion the fp32 model's lacks but one after each embedding
    # Gather (which reads the float16 table).
    source, output, result = compiled(name, "conservative")
    graph = _optimized(output, tmp_path).graph
    constants = {t.name for t in graph.initializer}
    assert [n.name for n in _casts(graph) if n.input[0] in constants] == []
    embeddings = sum(1 for layer in result.layers if layer.layer_type == LayerType.EMBEDDING.value)
    assert len(_casts(graph)) <= len(_casts(_optimized(source, tmp_path).graph)) + embeddings
    # Every weight and table is stored in float16 (a rotary cache or mask of an F32 layer stays float32).
    weights = [
        t for t in onnx.load(output).graph.initializer if t.data_type in (1, 10) and "weight" in t.name
    ]
    assert weights and {t.data_type for t in weights} == {onnx.TensorProto.FLOAT16}


def test_exactly_ternary_llama_balanced_matches_to_int8_activation_error(compiled):
    source, output, result = compiled("llama_ternary", "balanced")
    feeds = _inputs("llama_ternary", source)
    want = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]
    got = runtime.session(output).run(["logits"], feeds)[0]
    metrics = compare_outputs("logits", want, got)
    assert metrics.cosine >= 0.999
    (reported,) = result.report.outputs
    assert reported.name == "logits" and reported.cosine >= 0.999


def test_compiling_twice_gives_byte_identical_files(models_dir, tmp_path):
    source = _source("llama_tiny", models_dir)
    first = compile(source, "aggressive", output=tmp_path / "a.onnx", measure_kernels=False)
    second = compile(source, "aggressive", output=tmp_path / "b.onnx", measure_kernels=False)
    assert _sha256(tmp_path / "a.onnx") == _sha256(tmp_path / "b.onnx")
    assert [r.to_json() | {"run": "", "seconds": 0} for r in first.records] == [
        r.to_json() | {"run": "", "seconds": 0} for r in second.records
    ]


def test_the_input_file_is_never_modified(models_dir, tmp_path):
    source = tmp_path / "in.onnx"
    source.write_bytes(_source("gpt2_tiny_unfolded", models_dir).read_bytes())
    before, mtime = _sha256(source), source.stat().st_mtime_ns
    compile(source, "balanced", output=tmp_path / "out.onnx", measure_kernels=False)
    assert _sha256(source) == before and source.stat().st_mtime_ns == mtime


def test_a_model_proto_argument_is_not_mutated(tmp_path):
    model = BUILDERS["convnet"]()
    before = model.SerializeToString()
    result = compile(model, "balanced", output=tmp_path / "out.onnx", measure_kernels=False)
    assert model.SerializeToString() == before and result.output_path == tmp_path / "out.onnx"


def _folder_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(
    "target, failure, raised",
    [
        (FoldConvertsPass, RuntimeError("injected"), PassError),
        (ValidatePass, KeyboardInterrupt(), KeyboardInterrupt),
    ],
)
def test_a_failing_pass_leaves_no_output_and_an_existing_one_untouched(
    models_dir, tmp_path, monkeypatch, target, failure, raised
):
    def broken(self, graph, ctx):
        raise failure

    monkeypatch.setattr(target, "run", broken)
    source = _source("bert_tiny", models_dir)
    with pytest.raises(raised):
        compile(source, "balanced", output=tmp_path / "fresh.onnx", measure_kernels=False)
    assert _folder_files(tmp_path) == []
    (tmp_path / "old.onnx").write_bytes(b"previous model")
    with pytest.raises(raised):
        compile(source, "balanced", output=tmp_path / "old.onnx", measure_kernels=False)
    assert (tmp_path / "old.onnx").read_bytes() == b"previous model"
    assert _folder_files(tmp_path) == ["old.onnx"]


def _ternary_under_conservative() -> MixedPrecisionConfig:
    """Conservative thresholds (cosine ≥ 0.999) with ternary convolutions: a float model misses them."""
    conv = LayerPrecisionConfig(LayerType.CONVOLUTION, DType.BITNET158).with_component_override(
        "activations", "I8"
    )
    return MixedPrecisionConfig.conservative().with_layer_type_config(conv)


def test_strict_validation_failure_raises_with_the_report_and_writes_nothing(models_dir, tmp_path):
    (tmp_path / "out.onnx").write_bytes(b"previous model")
    with pytest.raises(CompileValidationError, match=r"\[numerics\] output logits: cosine") as info:
        compile(
            _source("convnet_tiny", models_dir),
            _ternary_under_conservative(),
            output=tmp_path / "out.onnx",
            measure_kernels=False,
        )
    report = info.value.report
    assert not report.goal_met and report.outputs[0].cosine < 0.999
    assert (tmp_path / "out.onnx").read_bytes() == b"previous model"


def test_no_strict_writes_the_model_and_the_report_when_the_goal_is_missed(models_dir, tmp_path):
    result = compile(
        _source("convnet_tiny", models_dir),
        _ternary_under_conservative(),
        output=tmp_path / "out.onnx",
        strict=False,
        measure_kernels=False,
    )
    assert result.output_path.exists() and not result.report.goal_met and result.report.ok
    assert [f.rule_id for f in result.report.warnings] == ["numerics"]
    assert "MISSED" in result.summary()


def test_log_has_one_record_per_pass_and_the_validation_figures(models_dir, tmp_path):
    result = compile(
        _source("convnet_tiny", models_dir),
        "balanced",
        output=tmp_path / "out.onnx",
        log=tmp_path / "log.jsonl",
        measure_kernels=False,
    )
    records = list(read_log(tmp_path / "log.jsonl"))
    assert [r.pass_name for r in records] == [
        "normalize",
        "annotate_layers",
        "assign_precision",
        "rewrite",
        "fold_converts",
        "validate",
    ]
    assert [r.to_json() for r in records] == [json.loads(json.dumps(r.to_json())) for r in result.records]
    validate = records[-1]
    assert validate.stats["logits.cosine"] == round(result.report.outputs[0].cosine, 6)
    fold = records[-2]
    assert fold.stats["conversions_after"] <= fold.stats["conversions_before"]


def test_log_keeps_the_records_up_to_a_failure(models_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(FoldConvertsPass, "run", lambda self, graph, ctx: 1 / 0)
    with pytest.raises(PassError, match="fold_converts"):
        compile(
            _source("convnet_tiny", models_dir),
            "balanced",
            output=tmp_path / "out.onnx",
            log=tmp_path / "log.jsonl",
            measure_kernels=False,
        )
    assert [r.pass_name for r in read_log(tmp_path / "log.jsonl")] == [
        "normalize",
        "annotate_layers",
        "assign_precision",
        "rewrite",
    ]


def test_dump_after_writes_the_model_after_that_pass(models_dir, tmp_path):
    compile(
        _source("convnet_tiny", models_dir),
        "balanced",
        output=tmp_path / "out.onnx",
        dump_after=["annotate_layers", "rewrite"],
        measure_kernels=False,
    )
    dumps = tmp_path / "out.dump"
    assert _folder_files(dumps) == ["001_annotate_layers.onnx", "003_rewrite.onnx"]
    annotated = onnx.load(dumps / "001_annotate_layers.onnx")
    assert read_layers(annotated) and not any(n.domain == runtime.DOMAIN for n in annotated.graph.node)
    rewritten = onnx.load(dumps / "003_rewrite.onnx")
    assert any(n.op_type == "DequantizeLowBit" for n in rewritten.graph.node)


def test_unknown_dump_pass_is_a_config_error_with_a_suggestion(models_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"dump after 'rewite': not a pass \(did you mean 'rewrite'\?\)"):
        compile(_source("convnet_tiny", models_dir), output=tmp_path / "o.onnx", dump_after=["rewite"])


def test_nodes_carry_the_annotations_netron_shows(compiled):
    _, output, _ = compiled("llama_tiny", "balanced")
    model = onnx.load(output)
    bitlinear = next(n for n in model.graph.node if n.op_type == "BitLinear")
    props = {p.key: p.value for p in bitlinear.metadata_props}
    assert props["bitnet.layer_type"] == "linear" and props["bitnet.dtype.weights"] == "BITNET158"
    assert props["bitnet.op"] == "BitLinear" and props["bitnet.rule"] and props["bitnet.layer"]
    assert model.producer_name == "bitnet-onnx"


def test_config_file_and_policies(models_dir, tmp_path):
    config = MixedPrecisionConfig.balanced().with_layer_config(
        "model.layers.0.mlp.*", LayerPrecisionConfig(LayerType.LINEAR, DType.F16)
    )
    save_config(config, tmp_path / "c.yaml")
    head_f32 = PrecisionPolicy(
        "head",
        rules=(
            PolicyRule(
                "f32",
                PolicyAction.set_precision(DType.F32),
                (PolicyCondition(ConditionType.LAYER_TYPE, ConditionOperator.EQUAL, "output"),),
            ),
        ),
    )
    result = compile(
        _source("llama_tiny", models_dir),
        tmp_path / "c.yaml",
        output=tmp_path / "o.onnx",
        policies=[head_f32],
        measure_kernels=False,
    )
    layers = {r.name: r for r in result.layers}
    assert layers["model.layers.0.mlp.up_proj"].precisions["weights"] == "F16"
    assert layers["model.layers.1.mlp.up_proj"].precisions["weights"] == "BITNET158"
    assert layers["lm_head"].precisions["weights"] == "F32"


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"config": "balancd"}, ConfigError, r"neither a strategy .*did you mean 'balanced'"),
        ({"output": "missing/dir/o.onnx"}, ConfigError, "output folder missing/dir does not exist"),
        ({"memory_budget": 1000}, ValidationError, r"memory-budget\] model: layers store .* over the budget"),
        ({"inputs": "nothing.npz"}, ConfigError, "cannot read sample inputs nothing.npz"),
        ({"log": "no/such/dir/log.jsonl"}, ConfigError, "cannot write the pass log no/such/dir/log.jsonl"),
    ],
)
def test_user_errors_name_the_thing_and_the_fix(models_dir, tmp_path, monkeypatch, kwargs, error, words):
    monkeypatch.chdir(tmp_path)
    kwargs = {"output": "o.onnx", **kwargs}
    with pytest.raises(error, match=words):
        compile(_source("llama_tiny", models_dir), measure_kernels=False, **kwargs)
    assert not (tmp_path / "o.onnx").exists()


def test_output_that_is_the_input_is_refused(models_dir, tmp_path):
    source = tmp_path / "m.onnx"
    source.write_bytes(_source("convnet_tiny", models_dir).read_bytes())
    with pytest.raises(ConfigError, match="is the input model; choose another path"):
        compile(source, output=source)


def _float16_model(kind: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """One float16 layer of `kind` (linear, embedding, convolution) with its input."""
    rng = np.random.default_rng(4)
    weight = rng.standard_normal({"linear": (8, 5), "embedding": (11, 8), "convolution": (3, 2, 3, 3)}[kind])
    weight = onnx.numpy_helper.from_array(weight.astype(np.float16), "layer.weight")
    f16, make = onnx.TensorProto.FLOAT16, onnx.helper.make_tensor_value_info
    if kind == "linear":
        node = onnx.helper.make_node("MatMul", ["x", "layer.weight"], ["y"])
        x, y, feeds = make("x", f16, [2, 8]), make("y", f16, [2, 5]), {"x": rng.standard_normal((2, 8))}
    elif kind == "embedding":
        node = onnx.helper.make_node("Gather", ["layer.weight", "ids"], ["y"])
        x, y = make("ids", onnx.TensorProto.INT64, [2, 3]), make("y", f16, [2, 3, 8])
        feeds = {"ids": rng.integers(0, 11, (2, 3))}
    else:
        node = onnx.helper.make_node("Conv", ["x", "layer.weight"], ["y"], pads=[1, 1, 1, 1])
        x, y = make("x", f16, [1, 2, 4, 4]), make("y", f16, [1, 3, 4, 4])
        feeds = {"x": rng.standard_normal((1, 2, 4, 4))}
    graph = onnx.helper.make_graph([node], kind, [x], [y], [weight])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    return model, {k: v.astype(np.float16) if v.dtype.kind == "f" else v for k, v in feeds.items()}


@pytest.mark.parametrize("kind", ["linear", "embedding", "convolution"])
def test_f32_weights_of_a_float16_model_are_stored_in_float32(kind):
    # Found by tests/fuzz: the rewriters left float16 weights as they were under an F32 plan, and
    # validation refused the model ("planned F32 but no node of the layer reads ... float32 weights").
    model, feeds = _float16_model(kind)
    result = compile(model, "custom", inputs=feeds, measure_kernels=False)
    assert [r.precisions["weights"] for r in result.layers] == ["F32"]
    assert result.bytes_after == 2 * result.bytes_before  # float32 holds what float16 did, twice the bytes
    assert result.report.goal_met


@pytest.mark.parametrize("preset", ["conservative", "balanced", "custom"])
def test_a_conv_bias_from_a_constant_node_is_computed_as_it_is(preset):
    # Found by tests/fuzz: the conv rewriter refused any such bias ("its weight cannot be read as a
    # constant"), even with F32, the fix its message suggested.
    rng = np.random.default_rng(6)
    weight = onnx.numpy_helper.from_array(rng.standard_normal((3, 2, 3, 3)).astype(np.float32), "conv.weight")
    bias = onnx.numpy_helper.from_array(np.array([1.0, -2.0, 0.5], np.float32), "bias_value")
    nodes = [
        onnx.helper.make_node("Constant", [], ["conv.bias"], value=bias),
        onnx.helper.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["y"], pads=[1, 1, 1, 1]),
    ]
    make, f32 = onnx.helper.make_tensor_value_info, onnx.TensorProto.FLOAT
    graph = onnx.helper.make_graph(
        nodes, "conv", [make("x", f32, [1, 2, 4, 4])], [make("y", f32, [1, 3, 4, 4])], [weight]
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    result = compile(model, preset, inputs={"x": x}, measure_kernels=False)
    assert [r.name for r in result.layers] == ["conv"]
    assert result.report.goal_met


def test_compiles_in_processes_with_different_string_hashing_give_the_same_bytes(tmp_path):
    """Set orders change with PYTHONHASHSEED; nothing that reaches the file may depend on them. The
    kernel timings are shared (the first run measures, the others read its cache), so the choices are
    the same; the last run's file has the custom domains in their fixed order."""
    source = FIXTURES / "llama_tiny.onnx"
    outputs = []
    for seed in ("1", "2", "3"):
        out = tmp_path / f"seed{seed}.onnx"
        env = {**os.environ, "PYTHONHASHSEED": seed, "XDG_CACHE_HOME": str(tmp_path / "cache")}
        argv = [sys.executable, "-m", "bitnet_onnx.cli", "compile", str(source), "-o", str(out)]
        subprocess.run(argv, env=env, check=True, capture_output=True)
        outputs.append(_sha256(out))
    assert len(set(outputs)) == 1
    domains = [o.domain for o in onnx.load(out).opset_import]
    assert domains == ["", *sorted(domains[1:])] and "bitnet" in domains
