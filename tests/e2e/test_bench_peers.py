"""The peers benchmark on a tiny sentence encoder (structure, and numbers against each other; no timing
is asserted), its verdict rule, the held-out accuracy measures against numpy, and its command line."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from bench import peers
from bench.peers import Kind, Measured, Score
from bitnet_onnx.cli import main as cli_main
from bitnet_onnx.core.errors import ConfigError
from bitnet_onnx.optimize.calibration import Calibration
from models import bert, llama
from models.inputs import sample_inputs, save_npz
from models.weights import WeightInit

pytestmark = pytest.mark.kernels

HAVE_TORCH = importlib.util.find_spec("torch") is not None


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("peers")
    config = bert.BertConfig(head=bert.BertHead.MEAN_POOLING, weights=WeightInit.TRAINED_LIKE)
    model = bert.build(config)
    onnx.save(model, folder / "encoder.onnx")
    save_npz(sample_inputs(model, dims={"batch": 8, "seq": 6}, seed=3), folder / "samples.npz")
    return folder / "encoder.onnx", folder / "samples.npz"


@pytest.fixture(scope="module")
def run(encoder, tmp_path_factory) -> tuple[dict, str]:
    model, samples = encoder
    out = tmp_path_factory.mktemp("json") / "peers.json"
    argv = [str(model), "--inputs", str(samples), "--presets", "balanced", "--rounds", "1", "--runs", "1"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert peers.main([*argv, "--json", str(out)]) == 0
    return json.loads(out.read_text()), printed.getvalue()


def test_every_contender_is_made_measured_and_printed(run, encoder):
    record, printed = run
    by = {c["name"]: c for c in record["contenders"]}
    want = ["fp32", "ort-int8-tensor", "ort-int8-channel", "ort-4bit-rtn-b32", "ort-4bit-rtn-b128"]
    want += ["ort-4bit-hqq-b32", "ort-4bit-hqq-b128", "ours-balanced", "ours-accuracy:0.99"]
    assert list(by) == want
    assert record["held_out"].startswith("2 held-out samples") and record["threads"] == 1
    for name, c in by.items():
        if "hqq" in name and not HAVE_TORCH:
            assert c["skipped"].startswith("skipped: HQQ needs torch") and c["bytes"] == 0
            assert f"{c['label']}: {c['skipped']}" in printed
            continue
        assert c["skipped"] is None and c["bytes"] > 0 and c["mib"] == c["bytes"] / 2**20
        assert set(c["latency_ms"]) == {"1", "16"} and all(v > 0 for v in c["latency_ms"].values())
        score = c["scores"]["sentence_embedding"]
        assert -1.0 <= score["cosine_min"] <= score["cosine_mean"] <= 1.0 + 1e-9
        assert score["perplexity"] is None  # an encoder: no next-token logits
        assert c["label"] in printed
    assert by["fp32"]["bytes"] == encoder[0].stat().st_size
    assert by["fp32"]["scores"]["sentence_embedding"]["cosine_min"] == pytest.approx(1.0, abs=1e-6)
    for quantized in ("ort-int8-tensor", "ort-int8-channel", "ort-4bit-rtn-b32", "ours-accuracy:0.99"):
        assert by[quantized]["bytes"] < by["fp32"]["bytes"]
    assert by["ours-accuracy:0.99"]["note"] in ("objective met", "objective NOT met")


def test_each_verdict_follows_from_the_measured_numbers(run):
    record, printed = run
    made = [c for c in record["contenders"] if c["skipped"] is None]
    tools = [c for c in made if c["kind"] == "onnxruntime"]
    accuracy = {c["name"]: min(s["cosine_mean"] for s in c["scores"].values()) for c in made}
    verdicts = {v["contender"]: v for v in record["verdicts"]}
    assert set(verdicts) == {c["name"] for c in made if c["kind"] == "bitnet-onnx"}
    assert verdicts["ours-accuracy:0.99"]["floor"] == 0.99
    assert verdicts["ours-balanced"]["floor"] == accuracy["ours-balanced"]
    for name, v in verdicts.items():
        ours = next(c for c in made if c["name"] == name)
        eligible = [t for t in tools if accuracy[t["name"]] >= v["floor"]]
        if not eligible:
            assert v["reference"] is None and not v["dominates"]
            continue
        best = min(eligible, key=lambda t: (t["bytes"], t["latency_ms"]["1"]))
        assert v["reference"] == best["name"]
        assert v["size_ratio"] == pytest.approx(ours["bytes"] / best["bytes"])
        for b, ratio in v["latency_ratios"].items():
            assert ratio == pytest.approx(ours["latency_ms"][b] / best["latency_ms"][b])
        no_worse = accuracy[name] >= accuracy[best["name"]]
        faster = all(r <= 1.0 for r in v["latency_ratios"].values())
        assert v["dominates"] == (no_worse and v["size_ratio"] <= 1.0 and faster)
        assert v["floor_met"] == (accuracy[name] >= v["floor"])
        assert ("does NOT Pareto-dominate" in printed) or v["dominates"]


def _measured(name, kind, accuracy, mib, ms, floor=None) -> Measured:
    m = Measured(name, name, kind, bytes=int(mib * 2**20), floor=floor)
    m.scores = {"y": Score(accuracy, accuracy - 0.01)}
    m.latency_ms = {1: ms[0], 16: ms[1]}
    return m


@pytest.mark.parametrize(
    ("ours", "dominates", "goal"),
    [
        (dict(accuracy=0.992, mib=5.0, ms=(3.0, 30.0)), True, False),  # same size and speed: dominates
        (dict(accuracy=0.992, mib=3.0, ms=(2.0, 20.0)), True, True),  # 0.6× all round: the goal too
        (dict(accuracy=0.9915, mib=3.0, ms=(2.0, 20.0)), False, False),  # less accurate than the tool
        (dict(accuracy=0.995, mib=3.0, ms=(2.0, 31.0)), False, False),  # slower at batch 16
    ],
)
def test_the_reference_is_the_smallest_tool_that_reaches_the_floor(ours, dominates, goal):
    tools = [
        _measured("tensor", Kind.ORT, 0.980, 4.0, (2.0, 20.0)),  # smallest, but below the floor
        _measured("channel", Kind.ORT, 0.992, 5.0, (3.0, 30.0)),
        _measured("rtn", Kind.ORT, 0.995, 6.0, (4.0, 40.0)),
    ]
    (verdict,) = peers.verdicts([*tools, _measured("ours", Kind.OURS, floor=0.99, **ours)])
    assert verdict.reference == "channel" and verdict.floor == 0.99
    assert (verdict.dominates, verdict.goal) == (dominates, goal)
    assert verdict.size_ratio == pytest.approx(ours["mib"] / 5.0, rel=1e-6)


def test_without_a_floor_a_plan_is_held_to_its_own_accuracy_and_may_find_no_peer():
    tools = [_measured("channel", Kind.ORT, 0.95, 5.0, (3.0, 30.0))]
    (verdict,) = peers.verdicts([*tools, _measured("ours", Kind.OURS, 0.999, 6.0, (1.0, 1.0))])
    assert verdict.floor == 0.999 and verdict.reference is None and not verdict.dominates
    assert "no onnxruntime tool reaches accuracy 0.9990" in verdict.sentence({"ours": "ours"})


def test_cosines_are_per_sample_rows():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 4, 5)).astype(np.float32)
    b = a.copy()
    b[1] *= -2.0
    b[2] = rng.standard_normal((4, 5))
    got = peers._cosines([a], [b], [3])
    want = [1.0, -1.0, float(a[2].ravel() @ b[2].ravel() / np.linalg.norm(a[2]) / np.linalg.norm(b[2]))]
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("masked", [False, True])
def test_perplexity_is_the_exponent_of_the_mean_next_token_loss(masked):
    config = llama.LlamaConfig(weights=WeightInit.TRAINED_LIKE)
    model = llama.build(config)
    feeds = sample_inputs(model, dims={"batch": 2, "seq": 7}, seed=4)
    (logits,) = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    if masked:
        feeds = {**feeds, "attention_mask": np.array([[1] * 7, [1] * 4 + [0] * 3], np.int64)}
    ids = feeds["input_ids"]
    mask = feeds.get("attention_mask", np.ones_like(ids))
    losses = []
    for b in range(2):
        for t in range(6):
            if mask[b, t + 1]:
                row = logits[b, t].astype(np.float64)
                losses.append(math.log(np.exp(row - row.max()).sum()) + row.max() - row[ids[b, t + 1]])
    assert peers._perplexity([logits], [feeds]) == pytest.approx(math.exp(np.mean(losses)), rel=1e-9)
    uniform = np.zeros_like(logits)  # every token equally likely: the perplexity is the vocabulary
    assert peers._perplexity([uniform], [feeds]) == pytest.approx(config.vocab_size)
    assert peers._perplexity([logits[:, :, :4]], [feeds]) is None  # ids beyond its last axis: not logits


def test_the_command_line_runs_the_suite_and_refuses_bad_input(encoder, tmp_path, capsys):
    model, samples = encoder
    argv = ["bench", "peers", str(model), "--inputs", str(samples), "--contenders", "ort-int8-channel"]
    assert cli_main([*argv, "--rounds", "1", "--runs", "1", "--batches", "2"]) == 0
    printed = capsys.readouterr().out
    assert "ORT quantize_dynamic int8 per-channel" in printed and "b2 T1 ms" in printed
    assert "bitnet-onnx" not in printed.split("verdict")[0]
    with pytest.raises(ConfigError, match="--contenders 'ort-int4': choose among fp32"):
        peers.main([str(model), "--inputs", str(samples), "--contenders", "ort-int4"])
    one = tmp_path / "one.npz"
    save_npz({k: v[:1] for k, v in Calibration.from_npz(samples, model).batches[0].items()}, one)
    with pytest.raises(ConfigError, match="1 sample; holding some out"):
        peers.main([str(model), "--inputs", str(one)])
