"""`python -m models.build`: builds and saves a model, with or without external data."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from bitnet_onnx.core.errors import ConfigError
from models import bert, llama
from models.build import main
from models.weights import WeightInit

ROOT = Path(__file__).resolve().parents[2]


def test_builds_a_preset_with_external_data(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    main(
        [
            "llama",
            "--preset",
            "tiny",
            "--weights",
            "ternary",
            "--seed",
            "3",
            "-o",
            str(out),
            "--external-data",
        ]
    )
    assert (tmp_path / "m.onnx.data").stat().st_size > 4 * llama.LlamaConfig().num_parameters
    loaded = onnx.load(out)
    expected = llama.build(llama.LlamaConfig(weights=WeightInit.TERNARY, seed=3))
    got = {t.name: onnx.numpy_helper.to_array(t) for t in loaded.graph.initializer}
    for tensor in expected.graph.initializer:
        np.testing.assert_array_equal(got[tensor.name], onnx.numpy_helper.to_array(tensor))
    assert "parameters 106816" in capsys.readouterr().out


def test_builds_the_default_config_of_other_models(tmp_path):
    main(["bert", "--opset", "18", "-o", str(tmp_path / "b.onnx")])
    assert onnx.load(tmp_path / "b.onnx") == bert.build(bert.BertConfig(opset=18))


def test_preset_is_refused_for_models_without_presets(tmp_path):
    with pytest.raises(ConfigError, match="--preset is for llama only, not convnet"):
        main(["convnet", "--preset", "tiny", "-o", str(tmp_path / "c.onnx")])


@pytest.mark.slow
def test_building_the_small_preset_with_external_data_holds_the_weights_about_once(tmp_path):
    """Building adds about one copy of the weights to the process (+ one tensor in flight).

    Measured against what the same process held before building: the interpreter and its imports
    differ between environments by more than the tolerance.
    """
    out = tmp_path / "small.onnx"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "models.build",
            "llama",
            "--preset",
            "small",
            "-o",
            str(out),
            "--external-data",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    peak_mib, before_mib = map(
        float, re.search(r"peak RSS (\d+) MiB \((\d+) MiB before", done.stdout).groups()
    )
    config = llama.LlamaConfig.preset("small")
    weights_mib = 4 * config.num_parameters / 2**20
    largest_tensor_mib = 4 * config.vocab_size * config.hidden_size / 2**20  # the embedding
    assert peak_mib - before_mib < 1.25 * weights_mib + 3 * largest_tensor_mib
