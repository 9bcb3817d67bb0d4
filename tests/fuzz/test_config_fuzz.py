"""Fuzzing configs and policies: data shaped like the config file schema (bitnet_onnx.config.config_file),
valid and invalid keys, types, precisions, globs, knobs, policy conditions and actions.

Properties: `config_from_dict` (and `load_config` of the same data as YAML or JSON) either returns
a config that `validate()`s or raises ConfigError / ValidationError, never another exception; the
dict and file readers agree; a valid config survives config_to_dict → config_from_dict and
save_config → load_config unchanged; and the policy engine decides every component of any layer
of a valid config with only MixedPrecisionError subclasses as failures.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from fuzz_budget import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from bitnet_onnx.config.config import MixedPrecisionConfig
from bitnet_onnx.config.config_file import config_from_dict, config_to_dict, load_config, save_config
from bitnet_onnx.config.policy import (
    WEIGHT_STATISTICS,
    ActionKind,
    ConditionOperator,
    ConditionType,
    LayerFacts,
    PolicyEngine,
)
from bitnet_onnx.core.dtypes import ConversionStrategy, DType
from bitnet_onnx.core.errors import ConfigError, MixedPrecisionError, ValidationError
from bitnet_onnx.core.layers import ComponentType, LayerType

pytestmark = pytest.mark.fuzz

CONFIG_ERRORS = (ConfigError, ValidationError)

# -- values: mostly what the schema expects, sometimes anything a YAML file can hold ------------

scalar_junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
junk = st.one_of(
    scalar_junk,
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(0, 3), max_size=2),
)


def usually(valid: st.SearchStrategy[Any], weight: int = 6) -> st.SearchStrategy[Any]:
    """`valid` most of the time, `junk` otherwise."""
    return st.one_of(*([valid] * weight), junk)


def usually_key(valid: st.SearchStrategy[Any], weight: int = 8) -> st.SearchStrategy[Any]:
    """A mapping key: `valid` most of the time, a scalar YAML can hold as a key otherwise."""
    return st.one_of(*([valid] * weight), scalar_junk)


precision_names = st.sampled_from(
    [d.name for d in DType]
    + [
        "fp16",
        "float32",
        "int4",
        "int8",
        "ternary",
        "bitnet1.58",
        "bf16",
        "f16",
        "i2",
        "b158",
        "I3",
        "F64",
        "",
    ]
)
precision = usually(precision_names)
layer_type_keys = usually_key(st.sampled_from([t.value for t in LayerType] + ["Linear", "attn", "mlp"]))
component_keys = usually_key(st.sampled_from([c.value for c in ComponentType] + ["weight", "bias "]))
group_size = st.one_of(
    st.sampled_from([None, 1, 2, 3, 4, 8, 16, 24, 32, 64, 100, 128, 4096]),
    st.integers(-4, 2**40),
    junk,
)
packing = usually(st.sampled_from(["2bit", "base3", "TWO_BIT", "Base3", "1.6bit"]))
conversion_strategy = usually(
    st.sampled_from([s.value for s in ConversionStrategy] + ["Stochastic-Rounding", "round"])
)
layer_keys = st.one_of(
    st.sampled_from(
        [
            "lm_head",
            "layers.*",
            "layers.*.mlp.*",
            "*.self_attn.*",
            "layers.?.mlp.up_proj",
            "layers.[0-3].*",
            "*",
            "[",
            "a[b",
            "layers.[!0].*",
            "",
            " ",
            "layers.0.mlp.down_proj",
        ]
    ),
    st.text(max_size=10),
    scalar_junk,
)


@st.composite
def entry(draw: st.DrawFn, *, components: bool, typed: bool) -> Any:
    """A precision name, or a mapping with precision, knobs and (optionally) component overrides."""
    if draw(st.booleans()):
        return draw(precision)
    body: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        body["precision"] = draw(precision)
    for knob, values in (
        ("group_size", group_size),
        ("asymmetric", usually(st.booleans())),
        ("per_channel", usually(st.booleans())),
        ("packing", packing),
        ("conversion_strategy", conversion_strategy),
    ):
        if draw(st.integers(0, 3)) == 0:
            body[knob] = draw(values)
    if typed and draw(st.integers(0, 3)) == 0:
        body["layer_type"] = draw(layer_type_keys)
    if components and draw(st.integers(0, 3)) == 0:
        body["components"] = draw(
            usually(st.dictionaries(component_keys, entry(components=False, typed=False), max_size=3))
        )
    if draw(st.integers(0, 12)) == 0:
        body[draw(st.sampled_from(["precison", "group", "knobs", "type"]))] = draw(junk)
    return body


def condition_value(ctype: Any) -> st.SearchStrategy[Any]:
    scalars = {
        "layer_type": st.sampled_from([t.value for t in LayerType] + ["LINEAR", "mlp"]),
        "component": st.sampled_from([c.value for c in ComponentType] + ["weight"]),
        "layer_name": st.sampled_from(["layers.*", "lm_head", "(", "layers\\.[0-9]+\\..*", "[", "*mlp*"]),
        "layer_index": st.one_of(st.integers(-5, 5), st.sampled_from(["first", "last", "LAST", "middle"])),
    }.get(
        ctype if isinstance(ctype, str) else "",
        st.one_of(st.integers(-10, 10**12), st.floats(allow_nan=True, allow_infinity=True)),
    )
    return st.one_of(scalars, scalars, st.lists(scalars, max_size=3), junk)


@st.composite
def condition(draw: st.DrawFn) -> Any:
    ctype = draw(usually(st.sampled_from([t.value for t in ConditionType] + ["layer"])))
    body: dict[str, Any] = {}
    if draw(st.integers(0, 12)):
        body["type"] = ctype
    if draw(st.integers(0, 12)):
        body["operator"] = draw(usually(st.sampled_from([o.value for o in ConditionOperator] + ["gt", "=="])))
    if draw(st.integers(0, 12)):
        body["value"] = draw(condition_value(ctype))
    if ctype in ("weight_statistic", "sensitivity") or draw(st.integers(0, 6)) == 0:
        body["key"] = draw(usually(st.sampled_from([*WEIGHT_STATISTICS, "I4", "BITNET158", "kurt"])))
    return draw(usually(st.just(body), 12))


@st.composite
def action(draw: st.DrawFn) -> Any:
    kind = draw(usually(st.sampled_from([k.value for k in ActionKind] + ["set"])))
    body: dict[str, Any] = {"type": kind} if draw(st.integers(0, 12)) else {}
    fields = {
        "precision": precision,
        "component": component_keys,
        "steps": st.one_of(st.integers(-2, 12), junk),
        "strategy": conversion_strategy,
    }
    for name, values in fields.items():
        if draw(st.integers(0, 2)) == 0:
            body[name] = draw(values)
    return draw(usually(st.just(body), 12))


@st.composite
def policy(draw: st.DrawFn) -> Any:
    body: dict[str, Any] = {}
    if draw(st.integers(0, 12)):
        body["id"] = draw(usually(st.sampled_from(["p", "q", "memory", "sensitive"]), 10))
    for key, values in (
        ("name", usually(st.text(max_size=8))),
        ("description", usually(st.text(max_size=8))),
        ("priority", usually(st.integers(-5, 5))),
        ("enabled", usually(st.booleans())),
    ):
        if draw(st.booleans()):
            body[key] = draw(values)
    rule = st.fixed_dictionaries(
        {"id": usually(st.sampled_from(["r", "s", "t"]), 10), "action": action()},
        optional={"conditions": usually(st.lists(condition(), max_size=3), 10)},
    )
    body["rules"] = draw(usually(st.lists(rule, max_size=3), 12))
    return draw(usually(st.just(body), 12))


@st.composite
def config_data(draw: st.DrawFn) -> Any:
    """A top-level config mapping (sometimes not a mapping at all)."""
    data: dict[str, Any] = {}
    if draw(st.integers(0, 12)):
        data["version"] = draw(usually(st.just(1), 12))
    if draw(st.integers(0, 12)):
        data["strategy"] = draw(
            usually(st.sampled_from(["conservative", "balanced", "aggressive", "custom", "Balanced", "fast"]))
        )
    if draw(st.booleans()):
        data["default_precision"] = draw(precision)
    if draw(st.booleans()):
        data["layer_types"] = draw(
            usually(
                st.dictionaries(
                    layer_type_keys,
                    st.one_of(st.none(), entry(components=True, typed=False)),
                    max_size=4,
                ),
                10,
            )
        )
    if draw(st.booleans()):
        data["components"] = draw(
            usually(
                st.dictionaries(
                    component_keys, st.one_of(st.none(), entry(components=False, typed=False)), max_size=3
                ),
                10,
            )
        )
    if draw(st.booleans()):
        data["layers"] = draw(
            usually(st.dictionaries(layer_keys, entry(components=True, typed=True), max_size=4), 10)
        )
    if draw(st.integers(0, 3)) == 0:
        row = usually(st.lists(precision, max_size=4), 8)
        data["support"] = draw(
            usually(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "layers": st.dictionaries(layer_type_keys, row, max_size=2),
                        "components": st.dictionaries(component_keys, row, max_size=2),
                    },
                ),
                10,
            )
        )
    if draw(st.booleans()):
        data["policies"] = draw(usually(st.lists(policy(), max_size=3), 12))
    if draw(st.integers(0, 15)) == 0:
        data[draw(st.sampled_from(["layer", "polices", "precision", "Version"]))] = draw(junk)
    return draw(usually(st.just(data), 30))


# -- properties -------------------------------------------------------------------------------


def read(data: Any) -> MixedPrecisionConfig | ConfigError | ValidationError:
    """config_from_dict's result, or the config error it raised (any other exception propagates)."""
    try:
        config = config_from_dict(data)
    except CONFIG_ERRORS as exc:
        return exc
    config.validate()
    return config


def same_outcome(
    a: MixedPrecisionConfig | MixedPrecisionError, b: MixedPrecisionConfig | MixedPrecisionError
) -> None:
    if isinstance(a, MixedPrecisionConfig) or isinstance(b, MixedPrecisionConfig):
        assert a == b
    else:
        assert type(a) is type(b)


def read_file(text: str, suffix: str) -> MixedPrecisionConfig | ConfigError | ValidationError:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"config{suffix}"
        path.write_text(text, encoding="utf-8")
        try:
            config = load_config(path)
        except CONFIG_ERRORS as exc:
            assert exc.source == str(path) if isinstance(exc, ConfigError) else True
            return exc
    config.validate()
    return config


def round_trip(config: MixedPrecisionConfig) -> None:
    assert config_from_dict(config_to_dict(config)) == config
    with tempfile.TemporaryDirectory() as folder:
        for suffix in (".yaml", ".json"):
            path = Path(folder) / f"saved{suffix}"
            save_config(config, path)
            assert load_config(path) == config
        assert sorted(p.name for p in Path(folder).iterdir()) == ["saved.json", "saved.yaml"]


@settings(max_examples=examples(1000))
@given(config_data())
def test_dict_configs_validate_or_raise_config_errors(data: Any) -> None:
    result = read(data)
    if isinstance(result, MixedPrecisionConfig):
        round_trip(result)


def _json_text(data: Any) -> str | None:
    try:
        return json.dumps(data, allow_nan=True)
    except (TypeError, ValueError):  # keys json cannot write
        return None


@settings(max_examples=examples(300))
@given(config_data())
def test_files_read_like_dicts(data: Any) -> None:
    expected = read(data)
    same_outcome(read_file(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), ".yaml"), expected)
    text = _json_text(data)
    if text is not None:
        same_outcome(read_file(text, ".json"), expected)


yaml_fragments = st.sampled_from(
    [
        "version: 1\n",
        "strategy: balanced\n",
        "layers:\n",
        "  lm_head: F16\n",
        '  "layers.*": {precision: I4, group_size: 32}\n',
        "policies:\n",
        "  - id: p\n",
        "    rules: [{id: r, action: {type: lower_precision, steps: 2}}]\n",
        "!!python/object:os.system {}\n",
        "&a [*a]\n",
        "key: [unclosed\n",
        "\t- tab\n",
        "{",
        ": :\n",
        "? complex\n",
        "version: 1\nversion: 2\n",
        "\x00",
        "\ufeff",
        "--- \n",
        "...\n",
        "*undefined\n",
        "x: !!binary AAAA\n",
        "x: 2001-12-14\n",
        "1: 2\n",
    ]
)


@settings(max_examples=examples(400))
@given(
    st.lists(st.one_of(yaml_fragments, st.text(max_size=8)), max_size=10), st.sampled_from([".yaml", ".json"])
)
def test_arbitrary_text_is_read_or_refused(pieces: list[str], suffix: str) -> None:
    result = read_file("".join(pieces), suffix)
    if isinstance(result, MixedPrecisionConfig):
        round_trip(result)


layer_facts = st.builds(
    LayerFacts,
    name=st.sampled_from(["lm_head", "layers.0.mlp.up_proj", "layers.3.self_attn.q_proj", "embed", "x", ""]),
    layer_type=st.sampled_from(list(LayerType)),
    index=st.integers(0, 6),
    layer_count=st.just(7),
    parameter_count=st.integers(0, 10**9),
    memory_usage=st.one_of(st.none(), st.floats(0, 400)),
    weight_statistics=st.dictionaries(
        st.sampled_from(WEIGHT_STATISTICS), st.floats(allow_nan=True, allow_infinity=True), max_size=4
    ),
    sensitivity=st.dictionaries(st.sampled_from(list(DType)), st.floats(0, 1), max_size=3),
    original_dtype=st.sampled_from([DType.F32, DType.F16, DType.BF16]),
)


@settings(max_examples=examples(600))
@given(config_data(), st.lists(layer_facts, min_size=1, max_size=3))
def test_policies_decide_every_component(data: Any, facts: list[LayerFacts]) -> None:
    config = read(data)
    if not isinstance(config, MixedPrecisionConfig):
        return
    engine = PolicyEngine.from_config(config)
    for fact in facts:
        for component in ComponentType:
            try:
                current = config.resolve(fact.name, fact.layer_type, component)
            except ConfigError:  # an exact entry written for another layer type
                continue
            decision = engine.decide(fact, component, current)
            assert config.support.allows(fact.layer_type, component, decision.dtype) or (
                decision.dtype is current.dtype
            )
            assert decision.overrode is None or decision.source.startswith("policy:")
            assert math.isfinite(len(decision.explanation))
