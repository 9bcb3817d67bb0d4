"""rewrite, the I8 kernel choice (passes/rewrite/int8_choice.py). No test asserts a timing: they check
the rule that turns timings into a choice, the caches, and what happens when a candidate cannot run."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from bitnet_onnx.core.errors import UnsupportedModelError
from bitnet_onnx.passes.rewrite import int8_choice
from bitnet_onnx.passes.rewrite.int8_choice import MARGIN, Int8Kernel, cache_path, choose_int8_kernel

OURS, THEIRS = Int8Kernel.LOWBIT_MATMUL.value, Int8Kernel.DYNAMIC_QUANTIZE_MATMUL.value


@pytest.fixture(autouse=True)
def fresh_caches(tmp_path, monkeypatch):
    """Each test starts with an empty process cache and its own cache folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(int8_choice, "_process_cache", {})


def test_without_measurement_the_choice_is_our_kernel_and_nothing_is_cached():
    choice = choose_int8_kernel(64, 32, np.dtype(np.float32), False, measure=False)
    assert choice.kernel is Int8Kernel.LOWBIT_MATMUL and choice.how == "fixed" and not choice.micros
    assert not cache_path().exists()


@pytest.mark.kernels
@pytest.mark.parametrize(("ours", "theirs", "expected"), [
    (100.0, 95.0, Int8Kernel.LOWBIT_MATMUL),  # a near-tie falls to the fixed preference
    (100.0, 100.0 * MARGIN, Int8Kernel.LOWBIT_MATMUL),  # at the margin exactly: still ours
    (100.0, 80.0, Int8Kernel.DYNAMIC_QUANTIZE_MATMUL),
    (50.0, 80.0, Int8Kernel.LOWBIT_MATMUL),
])  # fmt: skip
def test_onnxruntime_wins_only_when_faster_by_more_than_the_margin(
    ops_lib, monkeypatch, ours, theirs, expected
):
    costs = {OURS: ours, THEIRS: theirs}
    monkeypatch.setattr(int8_choice, "_cost", lambda kernel, *args: costs[kernel.value])
    choice = choose_int8_kernel(64, 32, np.dtype(np.float32), False, measure=True)
    assert choice.kernel is expected and choice.how == "measured"
    assert choice.micros == costs


@pytest.mark.kernels
def test_a_measured_choice_is_kept_in_the_process_and_on_disk(ops_lib):
    first = choose_int8_kernel(64, 32, np.dtype(np.float32), True, measure=True)
    assert first.how == "measured" and set(first.micros) == {OURS, THEIRS}
    assert choose_int8_kernel(64, 32, np.dtype(np.float32), True, measure=True) is first
    stored = json.loads(cache_path().read_text())
    (machine,) = stored["machines"].values()
    assert machine["K=64,N=32,x=float32,asymmetric"]["kernel"] == first.kernel.value
    int8_choice._process_cache.clear()
    again = choose_int8_kernel(64, 32, np.dtype(np.float32), True, measure=True)
    assert again.how == "cached" and again.kernel is first.kernel and dict(again.micros) == dict(first.micros)


@pytest.mark.kernels
def test_a_candidate_that_cannot_run_is_left_out_with_its_reason(ops_lib, monkeypatch):
    from bitnet_onnx import runtime

    real = runtime.session

    def session(model, threads=None, options=None):
        if any(n.domain == runtime.DOMAIN for n in model.graph.node):
            raise UnsupportedModelError("no LowBitMatMul in this build")
        return real(model, threads=threads)

    monkeypatch.setattr(runtime, "session", session)
    choice = choose_int8_kernel(48, 16, np.dtype(np.float32), False, measure=True)
    assert choice.kernel is Int8Kernel.DYNAMIC_QUANTIZE_MATMUL
    assert choice.excluded == {OURS: "no LowBitMatMul in this build"}
    assert "left out: LowBitMatMul: no LowBitMatMul in this build" in choice.describe()


@pytest.mark.kernels
def test_an_unreadable_cache_is_measured_again_and_replaced(ops_lib):
    cache_path().parent.mkdir(parents=True)
    cache_path().write_text("{not json")
    choice = choose_int8_kernel(32, 16, np.dtype(np.float16), False, measure=True)
    assert choice.how == "measured"
    assert json.loads(cache_path().read_text())["version"] == 1


@pytest.mark.kernels
def test_a_cache_that_cannot_be_written_costs_a_warning_only(ops_lib, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # a file where a folder must go
    with caplog.at_level(logging.WARNING):
        choice = choose_int8_kernel(32, 16, np.dtype(np.float32), False, measure=True)
    assert choice.how == "measured"
    assert "could not keep the I8 kernel choice" in caplog.text
