"""Config files: YAML and JSON round trips, errors with file, line and choices, safe loading, atomic save."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
import yaml

from bitnet_onnx.config import config_file
from bitnet_onnx.config.config import (
    ComponentPrecisionConfig,
    LayerPrecisionConfig,
    MixedPrecisionConfig,
    MixedPrecisionStrategy,
)
from bitnet_onnx.config.config_file import (
    SCHEMA_VERSION,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from bitnet_onnx.config.policy import (
    ConditionOperator,
    ConditionType,
    PolicyAction,
    PolicyCondition,
    PolicyRule,
    PrecisionPolicy,
)
from bitnet_onnx.core.dtypes import ConversionStrategy, DType, TernaryPacking, TernaryScale, WeightLayout
from bitnet_onnx.core.errors import ConfigError
from bitnet_onnx.core.layers import ComponentType, LayerType, SupportMatrix
from bitnet_onnx.core.plan import Resolution

L, C, D = LayerType, ComponentType, DType
FORMATS = ["yaml", "yml", "json"]


def rich_config() -> MixedPrecisionConfig:
    """A config that uses every part of the schema."""
    memory = (
        PrecisionPolicy("memory", "Memory critical", "4 bits when over budget", priority=10)
        .add_rule(
            PolicyRule("over_budget", PolicyAction.set_precision(D.I4))
            .add_condition(PolicyCondition(ConditionType.MEMORY_USAGE, ConditionOperator.GREATER_THAN, 80.5))
            .add_condition(PolicyCondition(ConditionType.LAYER_INDEX, ConditionOperator.IN, ["first", -1, 3]))
            .add_condition(
                PolicyCondition(ConditionType.WEIGHT_STATISTIC, ConditionOperator.LESS_THAN, 10, "kurtosis")
            )
        )
        .add_rule(PolicyRule("bias", PolicyAction.set_component_precision(C.BIAS, D.F32)))
    )
    sensitive = (
        PrecisionPolicy("sensitive", enabled=False)
        .add_rule(
            PolicyRule("up", PolicyAction.raise_precision(2)).add_condition(
                PolicyCondition(ConditionType.SENSITIVITY, ConditionOperator.GREATER_THAN, 0.01, D.I4)
            )
        )
        .add_rule(
            PolicyRule(
                "regex", PolicyAction.set_conversion_strategy(ConversionStrategy.STOCHASTIC_ROUNDING)
            ).add_condition(
                PolicyCondition(
                    ConditionType.LAYER_NAME, ConditionOperator.MATCHES_REGEX, r"layers\.(0|1)\..*"
                )
            )
        )
        .add_rule(PolicyRule("keep", PolicyAction.keep_original()))
        .add_rule(PolicyRule("down", PolicyAction.lower_precision()))
    )
    return (
        MixedPrecisionConfig.balanced()
        .with_default_precision(D.F16)
        .with_layer_type_config(
            LayerPrecisionConfig(
                L.LINEAR,
                D.BITNET158,
                WeightLayout(
                    per_channel=True, packing=TernaryPacking.BASE3, ternary_scale=TernaryScale.LEAST_SQUARES
                ),
            )
            .with_component_override(C.ACTIVATIONS, D.F16)
            .with_component_override(C.BIAS, D.F32, conversion_strategy=ConversionStrategy.DIRECT)
        )
        .with_component_config(
            C.WEIGHTS, ComponentPrecisionConfig(D.I4, WeightLayout(group_size=64, asymmetric=True))
        )
        .with_layer_config(
            "layers.*.mlp.*",
            LayerPrecisionConfig(
                L.LINEAR, D.I4, WeightLayout(group_size=32), ConversionStrategy.QUANTIZATION_AWARE
            ),
        )
        .with_layer_config("lm_head", LayerPrecisionConfig(None, D.F16))
        .with_layer_config("yes", LayerPrecisionConfig(None, D.I8))  # a YAML 1.1 boolean word as a name
        .with_layer_config("0", LayerPrecisionConfig(None, D.BF16))  # a name that looks like a number
        .with_support(SupportMatrix().with_layer(L.ATTENTION, [D.F32, D.F16, D.I8, D.I4]))
        .with_policy(memory)
        .with_policy(sensitive)
    )


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)
    assert str(path) in str(info.value)
    return info.value.problems


# -- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize(
    "make",
    [rich_config, *(lambda s=s: MixedPrecisionConfig.new(s) for s in MixedPrecisionStrategy)],
    ids=["rich", *(s.value for s in MixedPrecisionStrategy)],
)
def test_round_trip_is_lossless(tmp_path, suffix, make):
    config = make()
    first = tmp_path / f"a.{suffix}"
    save_config(config, first)
    loaded = load_config(first)
    assert loaded == config
    assert list(loaded.layers) == list(config.layers)
    second = tmp_path / f"b.{suffix}"
    save_config(loaded, second)
    assert second.read_text() == first.read_text()


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_yaml_and_json_hold_the_same_data(tmp_path, suffix):
    path = tmp_path / f"c.{suffix}"
    save_config(rich_config(), path)
    data = yaml.safe_load(path.read_text()) if suffix == "yaml" else json.loads(path.read_text())
    assert data == config_to_dict(rich_config())


def test_a_preset_saves_as_two_lines():
    assert config_to_dict(MixedPrecisionConfig.aggressive()) == {
        "version": SCHEMA_VERSION,
        "strategy": "aggressive",
    }


def test_saved_form_is_the_difference_from_the_preset():
    config = MixedPrecisionConfig.conservative().with_layer_type_config(
        LayerPrecisionConfig(L.ATTENTION, D.BF16)
    )
    without_activation = MixedPrecisionConfig(
        config.strategy,
        config.default_precision,
        {t: e for t, e in config.layer_types.items() if t is not L.ACTIVATION},
        config.components,
    )
    assert config_to_dict(without_activation) == {
        "version": 1,
        "strategy": "conservative",
        "layer_types": {"attention": "BF16", "activation": None},
    }


def test_removed_preset_entries_round_trip(tmp_path):
    config = MixedPrecisionConfig.conservative()
    config = MixedPrecisionConfig(
        config.strategy,
        config.default_precision,
        {t: e for t, e in config.layer_types.items() if t is not L.ACTIVATION},
        {c: e for c, e in config.components.items() if c is not C.GRADIENTS},
    )
    path = tmp_path / "c.yaml"
    save_config(config, path)
    assert "activation: null" in path.read_text() and "gradients: null" in path.read_text()
    loaded = load_config(path)
    assert L.ACTIVATION not in loaded.layer_types and loaded == config
    assert loaded.resolve("act", L.ACTIVATION, C.ACTIVATIONS) == Resolution(D.F32, "component:activations")


def test_hand_written_file_with_short_forms_and_aliases(tmp_path):
    path = write(
        tmp_path,
        "c.yml",
        """
        version: 1
        strategy: BALANCED
        layer_types:
          attention: int8
          other: null
        components:
          weights: ternary
        layers:
          "layers.*.self_attn.*": {precision: fp16}
          lm_head:
            layer_type: output
            precision: I8
            group_size: 128
            components:
              bias: {precision: float32}
        policies:
        """,
    )
    with pytest.raises(ConfigError, match="other layers get no allowed precision for weights"):
        load_config(path)
    path.write_text(path.read_text().replace("  other: null\n", ""))
    config = load_config(path)
    assert config.resolve("layers.1.self_attn.q_proj", L.LINEAR, C.WEIGHTS) == Resolution(
        D.F16, "glob:layers.*.self_attn.*"
    )
    assert config.resolve("lm_head", L.OUTPUT, C.WEIGHTS) == Resolution(
        D.I8, "layer:lm_head", WeightLayout(group_size=128)
    )
    assert config.resolve("lm_head", L.OUTPUT, C.BIAS) == Resolution(D.F32, "layer:lm_head/bias")
    assert config.resolve("attn", L.ATTENTION, C.ACTIVATIONS) == Resolution(D.I8, "layer_type:attention")
    assert config.policies == ()


def test_policy_rules_remember_their_file_and_line(tmp_path):
    path = write(
        tmp_path,
        "p.yaml",
        """
        version: 1
        strategy: custom
        policies:
          - id: p
            rules:
              - id: first
                action: {type: keep_original}
              - id: second
                action: {type: set_precision, precision: F16}
        """,
    )
    rules = load_config(path).policies[0].rules
    assert [r.origin for r in rules] == ["p.yaml:6", "p.yaml:8"]


# -- errors: file, line, choices -----------------------------------------------------------------


BAD_YAML = """
version: 1
strategy: balanced
layer_types:
  linaer: F16
  attention:
    precision: I4
    presicion: F16
components:
  bias: I8
layers:
  "layers.*.mlp.*":
    layer_type: linear
    precision: I4
    group_size: 3
  "bad[": F16
  lm_head: F12
policies:
  - id: p1
    rules:
      - id: r1
        conditions:
          - {type: memory_usage, operator: matches, value: 80}
        action: {type: set_precision, precision: I4}
"""


def test_bad_yaml_file_reports_every_problem_with_line_and_choices(tmp_path):
    problems = problems_of(write(tmp_path, "bad.yaml", BAD_YAML))
    assert problems == [
        "line 4: layer_types.linaer: unknown layer type 'linaer' (did you mean 'linear'?); choose one of "
        "linear, convolution, attention, embedding, normalization, activation, output, other",
        "line 6: layer_types.attention.precision: I4 is not allowed for attention layers "
        "(allowed: F32, F16, BF16, I8)",
        "line 7: layer_types.attention.presicion: unknown key 'presicion' (did you mean 'precision'?); "
        "valid keys: precision, group_size, asymmetric, per_channel, packing, ternary_scale, "
        "conversion_strategy, components",
        "line 9: components.bias.precision: I8 is not allowed for bias in any layer type "
        "(allowed: F32, F16, BF16)",
        'line 14: layers["layers.*.mlp.*"].group_size: 3 × 4 bits is not a whole number of bytes; '
        "with I4 use a multiple of 2 (e.g. 32, 64, 128)",
        "line 15: layers[\"bad[\"]: unclosed '[' at position 3 in glob 'bad['; "
        "close it or escape it as '[[]'",
        "line 16: layers.lm_head: unknown precision 'F12' (did you mean 'F32'?); choose one of "
        "F32, F16, BF16, I8, I4, I2, I1, BITNET158",
        "line 22: policies[0].rules[0].conditions[0].operator: matches does not apply to memory_usage; "
        "use one of equal, not_equal, in, not_in, greater_than, greater_equal, less_than, less_equal",
    ]


def test_bad_json_file_reports_lines_too(tmp_path):
    data = yaml.safe_load(BAD_YAML)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data, indent=2))
    problems = problems_of(path)
    lines = path.read_text().splitlines()

    def line_of(text: str) -> int:
        return next(i for i, line in enumerate(lines, 1) if text in line)

    assert len(problems) == 8
    assert problems[0].startswith(f"line {line_of('linaer')}: layer_types.linaer: unknown layer type")
    assert any(
        p.startswith(f"line {line_of('presicion')}: layer_types.attention.presicion: unknown key")
        for p in problems
    )
    assert any(p.startswith(f"line {line_of('group_size')}: ") and "group_size" in p for p in problems)
    assert any(
        p.startswith(f"line {line_of('F12')}: layers.lm_head: unknown precision 'F12'") for p in problems
    )
    assert any(
        p.startswith(f"line {line_of('matches')}: policies[0].rules[0].conditions[0].operator")
        for p in problems
    )


@pytest.mark.parametrize(
    "body, expected",
    [
        (
            "version: 1\nstrategy: balanced\nlayer: {}\n",
            "line 3: layer: unknown key 'layer' (did you mean 'layers'?); valid keys: version, strategy",
        ),
        (
            "version: 1\nstratgy: balanced\n",
            "line 2: stratgy: unknown key 'stratgy' (did you mean 'strategy'?)",
        ),
        (
            "version: 2\nstrategy: balanced\n",
            "line 1: version: unsupported version 2; this bitnet-onnx reads version 1",
        ),
        ("strategy: balanced\n", "missing required key 'version'"),
        (
            "version: 1\nstrategy: fast\n",
            "line 2: strategy: unknown strategy 'fast'; choose one of conservative, balanced, aggressive",
        ),
        (
            "version: 1\nstrategy: custom\ncomponents:\n  weight: F16\n",
            "line 4: components.weight: unknown component 'weight' (did you mean 'weights'?)",
        ),
        (
            "version: 1\nstrategy: custom\nlayers:\n  x:\n    precision: BITNET158\n    packing: base4\n",
            "line 6: layers.x.packing: unknown packing 'base4' (did you mean 'base3'?); "
            "choose one of 2bit, base3",
        ),
        (
            "version: 1\nstrategy: custom\nlayers:\n  x:\n    precision: BITNET158\n    ternary_scale: foo\n",
            "line 6: layers.x.ternary_scale: unknown ternary_scale 'foo'; "
            "choose one of absmean, least_squares",
        ),
        (
            "version: 1\nstrategy: custom\nlayers:\n  x:\n    precision: BITNET158\n"
            "    ternary_scale: absmaen\n",
            "line 6: layers.x.ternary_scale: unknown ternary_scale 'absmaen' (did you mean 'absmean'?)",
        ),
        (
            "version: 1\nstrategy: custom\nlayers:\n  x: {precision: F16, layer_type: linea}\n",
            "line 4: layers.x.layer_type: unknown layer type 'linea' (did you mean 'linear'?)",
        ),
        (
            "version: 1\nstrategy: custom\nlayers:\n  x: {precision: I8, conversion_strategy: fast}\n",
            "line 4: layers.x.conversion_strategy: unknown conversion strategy 'fast'; choose one of direct",
        ),
        (
            "version: 1\nstrategy: custom\nlayers:\n  x: {group_size: 4}\n",
            "line 4: layers.x: missing required key 'precision'",
        ),
        (
            "version: 1\nstrategy: custom\nlayers:\n  x: null\n",
            "line 4: layers.x: a layer entry needs a precision, not null",
        ),
        (
            "version: 1\nstrategy: custom\nlayers:\n  1: F16\n",
            "line 3: layers: key 1 must be a string; quote it",
        ),
        (
            "version: 1\nstrategy: custom\nlayers: [a]\n",
            "line 3: layers: layers must be a mapping, not a list",
        ),
        (
            "version: 1\nstrategy: custom\nsupport:\n  layers:\n    attention: []\n",
            "line 5: support.layers.attention: must be a non-empty list of precisions, not a list",
        ),
        (
            "version: 1\nstrategy: custom\nsupport:\n  layers:\n    attention: [F16, F8]\n",
            "line 5: support.layers.attention[1]: unknown precision 'F8'",
        ),
        (
            "version: 1\nstrategy: custom\npolicies: {}\n",
            "line 3: policies: must be a list of policies, not a mapping",
        ),
        (
            "version: 1\nstrategy: custom\nlayers:\n  x: F16\n  x: I8\n",
            "line 5: layers.x: duplicate key 'x' (lines 4 and 5); the last one counts",
        ),
        ("", "the file is empty; start it with `version: 1` and `strategy: balanced`"),
        ("- 1\n", "the top level must be a mapping, not a list"),
    ],
)
def test_yaml_errors(tmp_path, body, expected):
    problems = problems_of(write(tmp_path, "c.yaml", body))
    assert any(expected in p for p in problems), problems


def test_json_syntax_error_has_line(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{\n  "version": 1,\n  "strategy": "balanced",\n}\n')
    problems = problems_of(path)
    assert problems == [
        "line 4: not valid JSON: Expecting property name enclosed in double quotes (column 1)"
    ]


def test_json_duplicate_key_has_both_lines(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"version": 1,\n "strategy": "custom",\n "layers": {"x": "F16",\n   "x": "I8"}}\n')
    assert problems_of(path) == ["line 4: layers.x: duplicate key 'x' (lines 3 and 4); the last one counts"]


def test_yaml_syntax_error_has_line(tmp_path):
    problems = problems_of(write(tmp_path, "c.yaml", "version: 1\nstrategy: [balanced\nlayers: {}\n"))
    assert len(problems) == 1 and problems[0].startswith("line 3: not valid YAML:")


@pytest.mark.parametrize(
    "tag",
    [
        "!!python/object/apply:os.system ['echo pwned']",
        "!!python/object:collections.OrderedDict {}",
        "!!python/name:os.system",
    ],
)
def test_python_tags_are_refused(tmp_path, tag, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a))
    problems = problems_of(write(tmp_path, "evil.yaml", f"version: 1\nstrategy: {tag}\n"))
    assert len(problems) == 1
    assert (
        problems[0].startswith("line 2: not valid YAML:")
        and "could not determine a constructor" in problems[0]
    )
    assert calls == []


# Seven levels of ten aliases each: 10^7 values once expanded.
_ALIAS_BOMB = "version: 1\nstrategy: balanced\na: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{name}: &{name} [{', '.join([f'*{chr(ord(name) - 1)}'] * 10)}]\n" for name in "bcdefg"
)


@pytest.mark.parametrize(
    ("name", "body", "expected"),
    [
        (
            "c.yaml",
            "version: 1\nstrategy: balanced\npolicies: &p [*p]\n",
            "line 3: an alias refers to a value that contains it (a recursive alias)",
        ),
        ("c.yaml", _ALIAS_BOMB, "the file expands to more than 100000 values through aliases"),
        ("c.yaml", "[" * 5000, "the values nest too deeply to be a config"),
        ("c.json", "[" * 5000, "the values nest too deeply to be a config"),
        ("c.json", "[" * 700 + "]" * 700, "the values nest too deeply to be a config"),
    ],
)
def test_aliases_and_nesting_no_config_has_are_refused(tmp_path, name, body, expected):
    # Found by tests/fuzz: these raised RecursionError or ran for hours.
    problems = problems_of(write(tmp_path, name, body))
    assert len(problems) == 1 and expected in problems[0], problems


def test_aliases_are_read():
    body = "version: 1\nstrategy: balanced\nlayers:\n  a: &q {precision: I4, group_size: 32}\n  b: *q\n"
    config = config_from_dict(yaml.safe_load(body))
    assert config.layers["a"] == config.layers["b"]
    assert config.layers["b"].layout.group_size == 32


def test_a_policy_id_that_is_not_a_string_is_a_problem():
    # Found by tests/fuzz: a list as a policy id raised TypeError (unhashable) instead.
    data = {"version": 1, "strategy": "custom", "policies": [{"id": [], "rules": []}]}
    with pytest.raises(ConfigError, match=r"policies\[0\]\.id: a policy needs a non-empty id, not \[\]"):
        config_from_dict(data)


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config file type '.toml'; name it .yaml, .yml or .json"):
        load_config(tmp_path / "c.toml")
    with pytest.raises(ConfigError, match="cannot read the config file") as info:
        load_config(tmp_path / "missing.yaml")
    assert info.value.source == str(tmp_path / "missing.yaml")


def test_config_from_dict_without_a_file():
    config = config_from_dict({"version": 1, "strategy": "balanced", "layers": {"lm_head": "F32"}})
    assert config.resolve("lm_head", L.OUTPUT, C.WEIGHTS) == Resolution(D.F32, "layer:lm_head")
    with pytest.raises(ConfigError, match=r"^invalid configuration in mem: layers.x: unknown precision 'I3'"):
        config_from_dict({"version": 1, "strategy": "custom", "layers": {"x": "I3"}}, source="mem")


# -- saving ----------------------------------------------------------------------------------------


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("old\n")
    save_config(rich_config(), path)
    assert load_config(path) == rich_config()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "c.json"
    path.write_text("old\n")

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(config_file.os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        save_config(rich_config(), path)
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]


def test_saving_an_invalid_config_is_refused(tmp_path):
    config = MixedPrecisionConfig.balanced().with_layer_config("a", LayerPrecisionConfig(L.ATTENTION, D.I4))
    with pytest.raises(ConfigError, match="I4 is not allowed for attention layers"):
        save_config(config, tmp_path / "c.yaml")
    assert not list(tmp_path.iterdir())
