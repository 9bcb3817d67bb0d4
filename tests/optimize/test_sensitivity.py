from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

from bitnet_onnx.compiler.compile import compile as compile_model
from bitnet_onnx.config.config import MixedPrecisionConfig
from bitnet_onnx.core.errors import ConfigError, UnsupportedModelError
from bitnet_onnx.optimize import sensitivity
from bitnet_onnx.optimize.calibration import Calibration
from bitnet_onnx.optimize.objectives import PrecisionChoice, candidate_choices
from bitnet_onnx.optimize.sensitivity import (
    SensitivityEntry,
    SensitivityTable,
    default_cache_dir,
    measure_sensitivity,
)
from bitnet_onnx.passes._graph import import_graph, load_model
from bitnet_onnx.passes.base import PassContext, Pipeline
from bitnet_onnx.passes.p10_normalize import NormalizePass
from bitnet_onnx.passes.p20_annotate_layers import AnnotateLayersPass
from bitnet_onnx.runtime import session
from models import convnet, llama
from models.weights import WeightInit

pytestmark = pytest.mark.kernels

F32, F16 = PrecisionChoice.parse("F32"), PrecisionChoice.parse("F16")
TERNARY = PrecisionChoice.parse("BITNET158/I8")
I8 = PrecisionChoice.parse("I8/F32")
# The projections whose ternary error shows the trained-like ordering most clearly (measured over
# builder seeds 0-3: the middle block's mean loss is 4-12x below both ends'; q/k move little anywhere).
PROJECTIONS = ("self_attn.v_proj", "self_attn.o_proj", "mlp.down_proj")
NUM_BLOCKS = 3  # first, middle and last block: trained-like weights make the ends the sensitive ones


def _logits_mse(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> float:
    """A user metric (module level, so worker processes can import it): an error, lower is better."""
    return float(np.mean((reference["logits"].astype(np.float64) - candidate["logits"]) ** 2))


@pytest.fixture(scope="module")
def trained_llama() -> onnx.ModelProto:
    return llama.build(
        llama.LlamaConfig.preset("tiny", weights=WeightInit.TRAINED_LIKE, num_layers=NUM_BLOCKS)
    )


@pytest.fixture(scope="module")
def llama_calibration(trained_llama: onnx.ModelProto) -> Calibration:
    return Calibration.generated(trained_llama, n=2, seed=0, dims={"batch": 1, "seq": 16})


@pytest.fixture(scope="module")
def llama_table(
    trained_llama: onnx.ModelProto, llama_calibration: Calibration, tmp_path_factory: pytest.TempPathFactory
) -> SensitivityTable:
    """Ternary for the sensitivity-ordering projections of every block; F32 and F16 (and a lower
    precision where the layer type has one) for one layer of each type."""
    choices: dict[str, list[PrecisionChoice]] = {
        f"model.layers.{i}.{p}": [TERNARY] for i in range(NUM_BLOCKS) for p in PROJECTIONS
    }
    choices["model.layers.1.mlp.down_proj"] = [F32, F16, TERNARY]
    for name in ("model.embed_tokens", "lm_head"):
        choices[name] = [F32, F16, I8]
    for name in ("model.layers.1.input_layernorm", "model.layers.1.self_attn", "model.layers.1.mlp.act_fn"):
        choices[name] = [F32, F16]
    return measure_sensitivity(
        trained_llama,
        llama_calibration,
        layers=list(choices),
        choices=choices,
        metric=_logits_mse,
        cache_dir=tmp_path_factory.mktemp("llama_cache"),
    )


@pytest.fixture(scope="module")
def conv_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[onnx.ModelProto, SensitivityTable]:
    model = convnet.build(convnet.ConvNetConfig(weights=WeightInit.TRAINED_LIKE))
    calibration = Calibration.generated(model, n=2, seed=0, dims={"batch": 4})
    convs = ("features.0", "features.4", "features.8")
    choices = {name: [F32, F16, PrecisionChoice.parse("BITNET158/F32")] for name in convs}
    choices["classifier"] = [F32, F16, I8]
    table = measure_sensitivity(
        model, calibration, layers=list(choices), choices=choices, cache_dir=tmp_path_factory.mktemp("conv")
    )
    return model, table


@pytest.fixture
def count_compiles(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts in-process candidate (and reference) compiles: the work a cache hit must skip."""
    calls: list[int] = []
    original = sensitivity._compile

    def counting(prepared: object, config: MixedPrecisionConfig, batches: object) -> onnx.ModelProto:
        calls.append(1)
        return original(prepared, config, batches)  # type: ignore[arg-type]

    monkeypatch.setattr(sensitivity, "_compile", counting)
    return calls


@pytest.fixture(scope="module")
def plain_llama() -> onnx.ModelProto:
    return llama.build(llama.LlamaConfig.preset("tiny"))


@pytest.fixture(scope="module")
def plain_calibration(plain_llama: onnx.ModelProto) -> Calibration:
    return Calibration.generated(plain_llama, n=2, seed=3)


# -- values ----------------------------------------------------------------------------------


def test_the_base_precision_is_exactly_the_base(llama_table: SensitivityTable, conv_setup) -> None:
    _, conv_table = conv_setup
    exact = [e for t in (llama_table, conv_table) for e in t.entries if e.choice == F32]
    assert len(exact) == 10
    for entry in exact:
        assert (entry.cosine, entry.rel_error) == (1.0, 0.0), entry
    assert all(e.metric == 0.0 for e in llama_table.entries if e.choice == F32)


def test_f16_is_close_and_ternary_is_further(llama_table: SensitivityTable, conv_setup) -> None:
    _, conv_table = conv_setup
    for table in (llama_table, conv_table):
        for layer in table.layers:
            f16 = table.get(layer, F16)
            if f16 is None:
                continue
            assert f16.cosine > 0.99999 and f16.rel_error < 5e-3, f16
            for lower in (TERNARY, I8, PrecisionChoice.parse("BITNET158/F32")):
                entry = table.get(layer, lower)
                if entry is not None:
                    assert entry.cosine < f16.cosine and entry.rel_error > f16.rel_error, (f16, entry)
    ternary = [e for e in llama_table.entries if e.choice == TERNARY]
    assert all(0.5 < e.cosine < 1.0 and e.metric is not None and e.metric > 0 for e in ternary)


def test_trained_like_first_and_last_blocks_are_more_sensitive(llama_table: SensitivityTable) -> None:
    """models/weights.py: sensitivity s = (2·depth − 1)² is 1 in the first and last block, 0 in the middle."""
    loss = [
        np.mean([1.0 - llama_table.get(f"model.layers.{i}.{p}", TERNARY).cosine for p in PROJECTIONS])
        for i in range(NUM_BLOCKS)
    ]
    assert loss[1] * 2 < loss[0] and loss[1] * 2 < loss[2], loss


def test_numbers_equal_a_compile_run_by_hand(
    trained_llama: onnx.ModelProto,
    llama_calibration: Calibration,
    llama_table: SensitivityTable,
    tmp_path: Path,
) -> None:
    """The entry is the compiled candidate's outputs against the compiled base's, over both batches."""
    layer = "model.layers.0.self_attn.o_proj"
    base = MixedPrecisionConfig.new("custom")
    candidate = base.with_layer_config(layer, TERNARY.to_layer_config("linear"))
    outputs = []
    for name, config in (("base", base), ("candidate", candidate)):
        path = tmp_path / f"{name}.onnx"
        compile_model(trained_llama, config, output=path, strict=False, measure_kernels=False)
        run = session(str(path), threads=1)
        outputs.append(
            [run.run(["logits"], dict(b))[0].astype(np.float64) for b in llama_calibration.batches]
        )
    ref = np.concatenate([o.reshape(-1) for o in outputs[0]])
    got = np.concatenate([o.reshape(-1) for o in outputs[1]])
    cosine = ref @ got / (np.linalg.norm(ref) * np.linalg.norm(got))
    rel_error = np.max(np.abs(got - ref)) / np.max(np.abs(ref))
    mse = np.mean([np.mean((r - g) ** 2) for r, g in zip(outputs[0], outputs[1], strict=True)])
    entry = llama_table.get(layer, TERNARY)
    assert entry is not None
    assert entry.cosine == pytest.approx(cosine, abs=1e-12)
    assert entry.rel_error == pytest.approx(rel_error, rel=1e-9)
    assert entry.metric == pytest.approx(mse, rel=1e-9)


def test_default_choices_are_the_candidates_in_ladder_order(
    plain_llama: onnx.ModelProto, plain_calibration: Calibration, tmp_path: Path
) -> None:
    loaded = load_model(plain_llama)
    ctx = PassContext(config=MixedPrecisionConfig.new("custom"))
    Pipeline((NormalizePass(), AnnotateLayersPass())).run(import_graph(loaded), ctx)
    norm = "model.layers.0.input_layernorm"
    table = measure_sensitivity(plain_llama, plain_calibration, layers=[norm], cache_dir=tmp_path)
    assert [e.choice for e in table.entries] == list(candidate_choices(ctx.layers[norm]))
    assert table.layers == (norm,)
    assert len(table.for_layer(norm)) == len(table.entries) == 2


def test_entries_follow_model_order_whatever_order_layers_are_given(
    plain_llama: onnx.ModelProto, plain_calibration: Calibration, tmp_path: Path
) -> None:
    names = ["lm_head", "model.layers.0.mlp.up_proj"]
    table = measure_sensitivity(
        plain_llama, plain_calibration, layers=names, choices={n: [F16] for n in names}, cache_dir=tmp_path
    )
    assert table.layers == ("model.layers.0.mlp.up_proj", "lm_head")


# -- cache -------------------------------------------------------------------------------------


def _measure_one_layer(
    model: onnx.ModelProto, calibration: Calibration, cache: Path, **kw
) -> SensitivityTable:
    layer = "model.layers.1.mlp.gate_proj"
    return measure_sensitivity(
        model, calibration, layers=[layer], choices={layer: [F16, TERNARY]}, cache_dir=cache, **kw
    )


def test_a_cache_hit_skips_the_work_and_gives_the_same_table(
    plain_llama: onnx.ModelProto, plain_calibration: Calibration, tmp_path: Path, count_compiles: list[int]
) -> None:
    first = _measure_one_layer(plain_llama, plain_calibration, tmp_path)
    assert len(count_compiles) == 3  # the base once, two candidates
    files = list(tmp_path.glob("*.json"))
    assert [f.name for f in files] == [f"{first.model_sha256}.json"]
    second = _measure_one_layer(plain_llama, plain_calibration, tmp_path)
    assert len(count_compiles) == 3
    assert second == first
    other = Calibration.generated(plain_llama, n=1, seed=9)
    _measure_one_layer(plain_llama, other, tmp_path)
    assert len(count_compiles) == 6  # another calibration set is another key


def test_the_cache_key_includes_the_base_config_and_the_metric(
    plain_llama: onnx.ModelProto, plain_calibration: Calibration, tmp_path: Path, count_compiles: list[int]
) -> None:
    _measure_one_layer(plain_llama, plain_calibration, tmp_path)
    _measure_one_layer(
        plain_llama, plain_calibration, tmp_path, base=MixedPrecisionConfig.new("conservative")
    )
    table = _measure_one_layer(plain_llama, plain_calibration, tmp_path, metric=_logits_mse)
    assert len(count_compiles) == 9
    assert all(e.metric is not None for e in table.entries)


def test_the_model_hash_names_the_content(plain_llama: onnx.ModelProto, tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(plain_llama, path)
    loaded = load_model(path)
    by_path = sensitivity._model_sha256(loaded.proto, loaded.base_dir)
    assert by_path == sensitivity._model_sha256(load_model(plain_llama).proto, None)
    other = llama.build(llama.LlamaConfig.preset("tiny", seed=1))
    assert sensitivity._model_sha256(other, None) != by_path


def test_external_data_is_part_of_the_model_hash(plain_llama: onnx.ModelProto, tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    copy = onnx.ModelProto()
    copy.CopyFrom(plain_llama)  # saving with external data moves the copy's weights out
    onnx.save(copy, path, save_as_external_data=True, location="m.data", size_threshold=1024)
    loaded = load_model(path)
    before = sensitivity._model_sha256(loaded.proto, loaded.base_dir)
    data = bytearray((tmp_path / "m.data").read_bytes())
    data[100] ^= 1
    (tmp_path / "m.data").write_bytes(bytes(data))
    assert sensitivity._model_sha256(loaded.proto, loaded.base_dir) != before


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        '{"format": 99, "model_sha256": "SHA", "contexts": {}}',
        '{"format": 1, "model_sha256": "SHA", "contexts": {"c": {"k": {"cosine": "high"}}}}',
    ],
    ids=["not-json", "list", "other-format", "bad-number"],
)
def test_a_corrupt_cache_is_ignored_with_a_warning_and_rewritten(
    plain_llama: onnx.ModelProto,
    plain_calibration: Calibration,
    tmp_path: Path,
    count_compiles: list[int],
    caplog: pytest.LogCaptureFixture,
    content: str,
) -> None:
    sha = sensitivity._model_sha256(load_model(plain_llama).proto, None)
    path = tmp_path / f"{sha}.json"
    path.write_text(content.replace("SHA", sha))
    with caplog.at_level(logging.WARNING, logger="bitnet_onnx.optimize.sensitivity"):
        table = _measure_one_layer(plain_llama, plain_calibration, tmp_path)
    assert table.model_sha256 == sha and len(count_compiles) == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0] and "it will be rewritten" in warnings[0]
    data = json.loads(path.read_text())
    assert data["format"] == 1 and data["model_sha256"] == sha
    assert _measure_one_layer(plain_llama, plain_calibration, tmp_path) == table
    assert len(count_compiles) == 3


def test_default_cache_dir_follows_xdg_cache_home(
    monkeypatch: pytest.MonkeyPatch, plain_llama: onnx.ModelProto, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "bitnet-onnx" / "sensitivity"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "bitnet-onnx" / "sensitivity"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    table = measure_sensitivity(
        plain_llama, Calibration.generated(plain_llama, n=1), layers=["lm_head"], choices={"lm_head": [F16]}
    )
    assert (tmp_path / "bitnet-onnx" / "sensitivity" / f"{table.model_sha256}.json").is_file()


# -- failures, parallelism, progress -------------------------------------------------------


def test_a_candidate_that_cannot_be_compiled_is_nan_and_not_cached(
    plain_llama: onnx.ModelProto,
    plain_calibration: Calibration,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    original = sensitivity._compile
    calls: list[int] = []

    def failing_for_ternary(prepared, config: MixedPrecisionConfig, batches) -> onnx.ModelProto:
        calls.append(1)
        if "BITNET158" in json.dumps(sensitivity.config_to_dict(config)):
            raise UnsupportedModelError("no kernel for this shape")
        return original(prepared, config, batches)

    monkeypatch.setattr(sensitivity, "_compile", failing_for_ternary)
    with caplog.at_level(logging.WARNING, logger="bitnet_onnx.optimize.sensitivity"):
        table = _measure_one_layer(plain_llama, plain_calibration, tmp_path)
    failed = table.get("model.layers.1.mlp.gate_proj", TERNARY)
    assert failed is not None and failed.failed and math.isnan(failed.cosine) and failed.rel_error == math.inf
    assert not table.get("model.layers.1.mlp.gate_proj", F16).failed  # type: ignore[union-attr]
    assert any(
        "BITNET158/I8: cannot be compiled: no kernel for this shape" in r.getMessage() for r in caplog.records
    )
    _measure_one_layer(plain_llama, plain_calibration, tmp_path)
    assert len(calls) == 3 + 2  # the failure is measured again; the F16 entry came from the cache


def test_workers_give_the_same_table_as_one_process(
    plain_llama: onnx.ModelProto, plain_calibration: Calibration, tmp_path: Path
) -> None:
    names = ["model.layers.0.self_attn.v_proj", "model.layers.1.mlp.down_proj"]
    choices = {name: [F16, TERNARY, PrecisionChoice.parse("I4g128/F32")] for name in names}
    tables = [
        measure_sensitivity(
            plain_llama,
            plain_calibration,
            layers=names,
            choices=choices,
            metric=_logits_mse,
            workers=workers,
            cache_dir=tmp_path / str(workers),
        )
        for workers in (1, 2)
    ]
    assert tables[0] == tables[1]
    assert len(tables[0].entries) == 6


def test_progress_bar_goes_to_stderr(
    plain_llama: onnx.ModelProto,
    plain_calibration: Calibration,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    measure_sensitivity(
        plain_llama, plain_calibration, layers=["lm_head"], choices={"lm_head": [F16]}, cache_dir=tmp_path,
        progress=True,
    )  # fmt: skip
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "sensitivity" in captured.err and "1/1" in captured.err and "candidate" in captured.err


# -- errors ------------------------------------------------------------------------------------


def _error(model: onnx.ModelProto, calibration: Calibration, tmp_path: Path, **kw) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        measure_sensitivity(model, calibration, cache_dir=tmp_path, **kw)
    return info.value


def test_unknown_layers_and_choices_are_all_reported(
    plain_llama: onnx.ModelProto, plain_calibration: Calibration, tmp_path: Path
) -> None:
    error = _error(
        plain_llama,
        plain_calibration,
        tmp_path,
        layers=["model.layers.0.mlp.up_prj", "lm_head"],
        choices={"lm_head": [TERNARY, "F16"], "model.norm": [F16]},
    )
    assert error.problems == [
        "layers: 'model.layers.0.mlp.up_prj' is not a layer of the model "
        "(did you mean 'model.layers.0.mlp.up_proj'?)",
        "choices: 'model.norm' is not among the layers measured",
        "choices['lm_head']: BITNET158/I8: BITNET158 is not allowed for the weights of this output layer "
        "(allowed: F32, F16, BF16, I8)",
        "choices['lm_head']: 'F16' is not a PrecisionChoice (e.g. PrecisionChoice.parse('I4g128/F32'))",
    ]


def test_a_choice_the_config_rejects_is_reported(
    plain_llama: onnx.ModelProto, plain_calibration: Calibration, tmp_path: Path
) -> None:
    bad = PrecisionChoice.parse("I4g3/F32")
    error = _error(plain_llama, plain_calibration, tmp_path, layers=["model.layers.0.mlp.up_proj"],
                   choices={"model.layers.0.mlp.up_proj": [bad]})  # fmt: skip
    assert "I4g3/F32" in str(error) and "group_size: 3 × 4 bits is not a whole number of bytes" in str(error)


def test_calibration_that_does_not_fit_the_model(
    plain_llama: onnx.ModelProto, tmp_path: Path, count_compiles: list[int]
) -> None:
    wrong = Calibration(({"input_ids": np.zeros((1, 8), np.int32)},))
    error = _error(plain_llama, wrong, tmp_path, layers=["lm_head"])
    assert "calibration inputs" in str(error) and "convert it with .astype(np.int64)" in str(error)
    assert count_compiles == []
    with pytest.raises(
        ConfigError, match=r"must be a bitnet_onnx\.optimize\.calibration\.Calibration, not dict"
    ):
        measure_sensitivity(plain_llama, {"input_ids": np.zeros((1, 8), np.int64)})  # type: ignore[arg-type]


@pytest.mark.parametrize("workers", [0, -2, 1.5, True])
def test_workers_must_be_a_positive_count(
    plain_llama: onnx.ModelProto, plain_calibration: Calibration, tmp_path: Path, workers: object
) -> None:
    error = _error(plain_llama, plain_calibration, tmp_path, workers=workers)
    assert "must be a positive number of processes" in str(error)


def test_a_metric_workers_cannot_import_is_refused(
    plain_llama: onnx.ModelProto, plain_calibration: Calibration, tmp_path: Path
) -> None:
    metric: Callable[[dict, dict], float] = lambda r, c: 0.0  # noqa: E731
    error = _error(plain_llama, plain_calibration, tmp_path, metric=metric, workers=2)
    assert "cannot be sent to worker processes" in str(error) and "module-level function" in str(error)


# -- the table ---------------------------------------------------------------------------------


def test_table_json_round_trip_keeps_every_value() -> None:
    entries = (
        SensitivityEntry("a", F16, 0.999, 0.01, None),
        SensitivityEntry("a", TERNARY, 0.8, 0.5, 0.25),
        SensitivityEntry("b", PrecisionChoice.parse("I4g128z/F32"), math.nan, math.inf, None),
    )
    table = SensitivityTable("abc", entries)
    text = json.dumps(table.to_json(), allow_nan=False)
    back = SensitivityTable.from_json(json.loads(text))
    assert back.model_sha256 == "abc" and back.entries[:2] == entries[:2]
    assert back.entries[2].choice == entries[2].choice and back.entries[2].failed
    assert back.entries[2].rel_error == math.inf
    assert back.get("a", TERNARY) == entries[1] and back.get("a", I8) is None
    assert back.layers == ("a", "b") and back.for_layer("a") == entries[:2]


def test_table_from_json_names_what_is_wrong() -> None:
    with pytest.raises(ConfigError, match=r"not a sensitivity table \(KeyError: 'entries'\)"):
        SensitivityTable.from_json({"model_sha256": "x"})


def test_a_gptq_candidate_is_measured_on_the_calibration_activations(
    plain_llama: onnx.ModelProto, plain_calibration: Calibration, tmp_path: Path
) -> None:
    layer = "model.layers.1.mlp.gate_proj"
    rtn, gptq = PrecisionChoice.parse("I2g64/F32"), PrecisionChoice.parse("I2g64+gptq/F32")
    table = measure_sensitivity(
        plain_llama, plain_calibration, layers=[layer], choices={layer: [rtn, gptq]}, cache_dir=tmp_path
    )
    measured = {choice: table.get(layer, choice) for choice in (rtn, gptq)}
    assert all(entry is not None and not entry.failed for entry in measured.values())
    # The same bits rounded differently: another output, as close to the base on the samples it fitted.
    assert measured[gptq].cosine != measured[rtn].cosine  # type: ignore[union-attr]
    assert measured[gptq].cosine >= measured[rtn].cosine  # type: ignore[union-attr]
