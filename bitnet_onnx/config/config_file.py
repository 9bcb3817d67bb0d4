"""Read and write a `MixedPrecisionConfig` (policies included) as YAML or JSON, one schema for both.

The format follows the file name: `.yaml` / `.yml` or `.json`. A file starts from the preset of
its `strategy` and changes it; saving writes only what differs from that preset, so
load → save → load gives an equal config. Schema, version 1 (every key but `version` and `strategy`
is optional):

```yaml
version: 1
strategy: balanced             # conservative | balanced | aggressive | custom: the preset to start from
default_precision: I8          # the strategy default, used when nothing else applies

layer_types:                   # layer-type defaults; each entry replaces the preset's
  linear:
    precision: BITNET158
    per_channel: true          # knobs, see "entry" below
    components:                # per-component overrides
      activations: I8
      bias: {precision: F16}
  attention: F16               # short form: only a precision
  embedding: null              # null removes the preset's entry

components:                    # component defaults (weights, bias, activations, outputs, gradients)
  weights: {precision: I4, group_size: 64}
  bias: F16

layers:                        # exact layer names and globs, in order
  "layers.*.mlp.*":
    layer_type: linear         # optional: the entry applies to layers of this type only
    precision: I4
    group_size: 64
  lm_head: F16

support:                       # replaces rows of the support matrix
  layers:
    attention: [F32, F16, BF16, I8, I4]
  components:
    bias: [F32, F16]

policies:                      # see bitnet_onnx.config.policy for the evaluation order
  - id: memory_critical
    name: Memory critical
    description: Use 4 bits when the model is over budget
    priority: 10               # higher is tried first; default 0
    enabled: true              # default true
    rules:
      - id: over_budget
        conditions:            # all must hold; none: always
          - {type: memory_usage, operator: greater_than, value: 80}
          - {type: layer_name, operator: matches, value: "layers.*"}
          - {type: weight_statistic, key: kurtosis, operator: less_than, value: 10}
        action: {type: set_precision, precision: I4}
```

An entry (a value under `layer_types`, `layers`, or `components`) is a precision name, or a mapping
with `precision` and the knobs `group_size` (integer precisions; elements per scale, whole bytes),
`asymmetric` (zero points; I8, I4, I2), `per_channel` and `packing` (`2bit` | `base3`; BITNET158),
`ternary_scale` (`absmean` | `least_squares`; BITNET158: the stored scale is γ = mean|W| as BitNet
b1.58 trains, the default and the right one for a QAT-trained model, or the least-squares scale of
the pattern, better for ternarizing a float model after training),
`conversion_strategy` (direct | scaled | quantization_aware | stochastic_rounding | gptq: needs
calibration samples, see numerics/gptq.py and compile's `calibration`); entries under
`layer_types` and `layers` also take `components` (component → entry without `components`),
and those under `layers` take `layer_type`. Precisions are F32, F16, BF16, I8, I4, I2, I1,
BITNET158 (aliases such as fp16, int4, ternary are accepted and saved canonical).

Condition types: layer_type, component, layer_name, layer_index (an integer, negative from the
end, `first` or `last`), parameter_count, memory_usage (percent of the budget), weight_statistic
(`key`: absmax, absmean, mean, std, kurtosis, outlier_ratio, zero_fraction), sensitivity (`key`:
a precision, default the one being decided; compile measures it, see passes/p30_assign_precision).
Operators: equal, not_equal, greater_than,
greater_equal, less_than, less_equal, in, not_in (value is a list), matches (glob), matches_regex,
contains, starts_with, ends_with. Actions: `{type: set_precision, precision: P}`,
`{type: set_component_precision, component: C, precision: P}`, `{type: keep_original}`,
`{type: raise_precision, steps: N}` and `{type: lower_precision, steps: N}` (steps default 1),
`{type: set_conversion_strategy, strategy: S}`, `{type: set_ternary_scale, scale: absmean | least_squares}`.

Errors: everything wrong in a file is reported at once in one ConfigError whose `source` is the
file, each problem with its line, the key path, and the valid choices (unknown keys get a "did you
mean"). YAML is read with `yaml.safe_load` only, so tags such as `!!python/object` are refused;
lines come from `yaml.compose`. Saving writes a temporary file in the same folder and renames it
over the target, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import logging
import os
import re
from bisect import bisect_right
from collections.abc import Callable, Mapping
from json.decoder import scanstring
from pathlib import Path
from typing import Any

import yaml

from bitnet_onnx.config.config import (
    ComponentPrecisionConfig,
    LayerPrecisionConfig,
    MixedPrecisionConfig,
    MixedPrecisionStrategy,
)
from bitnet_onnx.config.policy import read_policy
from bitnet_onnx.core._schema import Problems, SchemaPath, describe_value
from bitnet_onnx.core.dtypes import ConversionStrategy, DType, TernaryPacking, TernaryScale, WeightLayout
from bitnet_onnx.core.errors import ConfigError
from bitnet_onnx.core.files import atomic_file
from bitnet_onnx.core.layers import ComponentType, LayerType, SupportMatrix

__all__ = ["SCHEMA_VERSION", "config_from_dict", "config_to_dict", "load_config", "save_config"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_TOP_KEYS = (
    "version",
    "strategy",
    "default_precision",
    "layer_types",
    "components",
    "layers",
    "support",
    "policies",
)
_KNOBS = ("group_size", "asymmetric", "per_channel", "packing", "ternary_scale", "conversion_strategy")
_YAML_SUFFIXES = (".yaml", ".yml")
_JSON_SUFFIXES = (".json",)


# -- public API --------------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str]) -> MixedPrecisionConfig:
    """Read, check and return the config in `path`; a ConfigError lists every problem with its line."""
    path = Path(path)
    source = str(path)
    kind = _file_format(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the config file: {exc}", source=source) from exc
    data, lines, duplicates = _parse_yaml(text, source) if kind == "yaml" else _parse_json(text, source)
    problems = Problems(source, lines)
    for dup_path, message in duplicates:
        problems.add(dup_path, message)
    config = _read_config(data, problems, origin=path.name)
    problems.raise_if_any()
    logger.debug("loaded config %s (strategy %s)", source, config.strategy.value)
    return config


def save_config(config: MixedPrecisionConfig, path: str | os.PathLike[str]) -> None:
    """Write `config` to `path` (YAML or JSON by suffix) atomically, after validating it."""
    path = Path(path)
    kind = _file_format(path)
    data = config_to_dict(config)
    if kind == "yaml":
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)
    else:
        text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    with atomic_file(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def config_to_dict(config: MixedPrecisionConfig) -> dict[str, Any]:
    """The file form of `config`: what differs from its strategy's preset (after `validate()`)."""
    config.validate()
    base = MixedPrecisionConfig.new(config.strategy)
    out: dict[str, Any] = {"version": SCHEMA_VERSION, "strategy": config.strategy.value}
    if config.default_precision is not base.default_precision:
        out["default_precision"] = config.default_precision.name
    layer_types = {
        t.value: _layer_entry(config.layer_types[t], typed=False) if t in config.layer_types else None
        for t in LayerType
        if config.layer_types.get(t) != base.layer_types.get(t)
    }
    if layer_types:
        out["layer_types"] = layer_types
    components = {
        c.value: _setting(config.components[c]) if c in config.components else None
        for c in ComponentType
        if config.components.get(c) != base.components.get(c)
    }
    if components:
        out["components"] = components
    if config.layers:
        out["layers"] = {key: _layer_entry(entry, typed=True) for key, entry in config.layers.items()}
    default = SupportMatrix()
    support = {
        "layers": {
            t.value: _dtype_list(row)
            for t, row in config.support.layers.items()
            if row != default.layers.get(t)
        },
        "components": {
            c.value: _dtype_list(row)
            for c, row in config.support.components.items()
            if row != default.components.get(c)
        },
    }
    support = {k: v for k, v in support.items() if v}
    if support:
        out["support"] = support
    if config.policies:
        out["policies"] = [p.to_dict() for p in config.policies]
    return out


def config_from_dict(data: Any, *, source: str | None = None) -> MixedPrecisionConfig:
    """Read a config from its file form (already parsed); a ConfigError lists every problem."""
    problems = Problems(source)
    config = _read_config(data, problems, origin=source)
    problems.raise_if_any()
    return config


# -- writing -----------------------------------------------------------------------------------


def _setting(setting: ComponentPrecisionConfig) -> str | dict[str, Any]:
    knobs = _knobs(setting.layout, setting.conversion_strategy)
    return {"precision": setting.precision.name, **knobs} if knobs else setting.precision.name


def _layer_entry(entry: LayerPrecisionConfig, *, typed: bool) -> str | dict[str, Any]:
    body: dict[str, Any] = {}
    if typed and entry.layer_type is not None:
        body["layer_type"] = entry.layer_type.value
    body["precision"] = entry.precision.name
    body.update(_knobs(entry.layout, entry.conversion_strategy))
    if entry.component_overrides:
        body["components"] = {
            c.value: _setting(entry.component_overrides[c])
            for c in ComponentType
            if c in entry.component_overrides
        }
    return body if len(body) > 1 else entry.precision.name


def _knobs(layout: WeightLayout, strategy: ConversionStrategy | None) -> dict[str, Any]:
    default = WeightLayout()
    out: dict[str, Any] = {}
    if layout.group_size != default.group_size:
        out["group_size"] = layout.group_size
    if layout.asymmetric != default.asymmetric:
        out["asymmetric"] = layout.asymmetric
    if layout.per_channel != default.per_channel:
        out["per_channel"] = layout.per_channel
    if layout.packing != default.packing:
        out["packing"] = layout.packing.value
    if layout.ternary_scale != default.ternary_scale:
        out["ternary_scale"] = layout.ternary_scale.value
    if strategy is not None:
        out["conversion_strategy"] = strategy.value
    return out


def _dtype_list(row: frozenset[DType]) -> list[str]:
    return [d.name for d in sorted(row, key=DType.rank, reverse=True)]


# -- reading -----------------------------------------------------------------------------------


def _read_config(data: Any, problems: Problems, origin: str | None) -> MixedPrecisionConfig:
    """Build the config, recording problems; parts that cannot be read keep the preset's value
    so that the remaining checks do not report consequences of an earlier problem."""
    if data is None:
        problems.add(
            (), f"the file is empty; start it with `version: {SCHEMA_VERSION}` and `strategy: balanced`"
        )
        data = {}
    top = problems.mapping(data, (), "the top level") or {}
    problems.keys(top, (), _TOP_KEYS, required=("version", "strategy"))
    if "version" in top and top["version"] != SCHEMA_VERSION:
        problems.add(
            ("version",),
            f"unsupported version {top['version']!r}; this bitnet-onnx reads version {SCHEMA_VERSION}",
        )
    strategy = (
        _choice(problems, top, ("strategy",), MixedPrecisionStrategy.parse) or MixedPrecisionStrategy.CUSTOM
    )
    base = MixedPrecisionConfig.new(strategy)
    default_precision = _choice(problems, top, ("default_precision",), DType.parse)

    layer_types = dict(base.layer_types)
    for key, value in _section(problems, top, "layer_types"):
        layer_type = _enum_key(problems, key, ("layer_types", key), LayerType)
        if layer_type is None:
            continue
        if value is None:
            layer_types.pop(layer_type, None)
            continue
        entry = _read_layer_entry(problems, value, ("layer_types", key), layer_type=layer_type)
        if entry is not None:
            layer_types[layer_type] = entry

    components = dict(base.components)
    for key, value in _section(problems, top, "components"):
        component = _enum_key(problems, key, ("components", key), ComponentType)
        if component is None:
            continue
        if value is None:
            components.pop(component, None)
            continue
        setting = _read_setting(problems, value, ("components", key))
        if setting is not None:
            components[component] = setting

    layers: dict[str, LayerPrecisionConfig] = {}
    for key, value in _section(problems, top, "layers"):
        entry = _read_layer_entry(problems, value, ("layers", key), layer_type=None)
        if entry is not None:
            layers[key] = entry

    support = _read_support(problems, top.get("support"))
    policies = []
    policies_data = top.get("policies")
    policies_data = [] if policies_data is None else policies_data
    if not isinstance(policies_data, list):
        problems.add(("policies",), f"must be a list of policies, not {describe_value(policies_data)}")
        policies_data = []
    for i, item in enumerate(policies_data):
        policy = read_policy(item, problems=problems, path=("policies", i), origin=origin)
        if policy is not None:
            policies.append(policy)

    config = MixedPrecisionConfig(
        strategy,
        default_precision or base.default_precision,
        layer_types,
        components,
        layers,
        support,
        tuple(policies),
    )
    config.collect_problems(problems)
    return config


def _section(problems: Problems, top: Mapping[str, Any], name: str) -> list[tuple[str, Any]]:
    if name not in top or top[name] is None:
        return []
    body = problems.mapping(top[name], (name,), name)
    return list(body.items()) if body is not None else []


def _choice(
    problems: Problems, body: Mapping[str, Any], path: SchemaPath, parse: Callable[[Any], Any]
) -> Any:
    key = path[-1]
    if key not in body:
        return None
    return problems.parse(parse, body[key], path)


def _enum_key(
    problems: Problems, key: str, path: SchemaPath, enum_type: type[LayerType] | type[ComponentType]
) -> Any:
    try:
        return enum_type.parse(key)
    except ConfigError as exc:
        problems.add(path, exc.problems[0])
        return None


def _read_setting(problems: Problems, value: Any, path: SchemaPath) -> ComponentPrecisionConfig | None:
    if not isinstance(value, Mapping):
        precision = problems.parse(DType.parse, value, path)
        return ComponentPrecisionConfig(precision) if precision is not None else None
    body = problems.mapping(value, path, "an entry")
    if body is None:
        return None
    problems.keys(body, path, ("precision", *_KNOBS), required=("precision",))
    read = _read_precision_and_knobs(problems, body, path)
    return ComponentPrecisionConfig(*read) if read is not None else None


def _read_layer_entry(
    problems: Problems, value: Any, path: SchemaPath, *, layer_type: LayerType | None
) -> LayerPrecisionConfig | None:
    if not isinstance(value, Mapping):
        if value is None and layer_type is None:
            problems.add(path, "a layer entry needs a precision, not null")
            return None
        precision = problems.parse(DType.parse, value, path)
        return LayerPrecisionConfig(layer_type, precision) if precision is not None else None
    body = problems.mapping(value, path, "an entry")
    if body is None:
        return None
    allowed = ("precision", *_KNOBS, "components") + (("layer_type",) if layer_type is None else ())
    problems.keys(body, path, allowed, required=("precision",))
    type_ok = True
    if layer_type is None and "layer_type" in body:
        layer_type = problems.parse(LayerType.parse, body["layer_type"], (*path, "layer_type"))
        type_ok = layer_type is not None
    read = _read_precision_and_knobs(problems, body, path)
    overrides: dict[ComponentType, ComponentPrecisionConfig] = {}
    for key, item in _section(problems, body, "components"):
        component = _enum_key(problems, key, (*path, "components", key), ComponentType)
        setting = _read_setting(problems, item, (*path, "components", key))
        if component is not None and setting is not None:
            overrides[component] = setting
    # Unknown keys or a bad override alone do not stop the rest of the entry from being checked.
    if read is None or not type_ok:
        return None
    precision, layout, strategy = read
    return LayerPrecisionConfig(layer_type, precision, layout, strategy, overrides)


def _read_precision_and_knobs(
    problems: Problems, body: Mapping[str, Any], path: SchemaPath
) -> tuple[DType, WeightLayout, ConversionStrategy | None] | None:
    precision = _choice(problems, body, (*path, "precision"), DType.parse)
    packing = TernaryPacking.TWO_BIT
    if "packing" in body:
        packing = problems.parse(TernaryPacking.parse, body["packing"], (*path, "packing"))
    ternary_scale = TernaryScale.ABSMEAN
    if "ternary_scale" in body:
        ternary_scale = problems.parse(TernaryScale.parse, body["ternary_scale"], (*path, "ternary_scale"))
    strategy = _choice(problems, body, (*path, "conversion_strategy"), ConversionStrategy.parse)
    if (
        precision is None
        or packing is None
        or ternary_scale is None
        or ("conversion_strategy" in body and strategy is None)
    ):
        return None
    layout = WeightLayout(
        group_size=body.get("group_size"),
        asymmetric=body.get("asymmetric", False),
        per_channel=body.get("per_channel", False),
        packing=packing,
        ternary_scale=ternary_scale,
    )
    return precision, layout, strategy


def _read_support(problems: Problems, data: Any) -> SupportMatrix:
    support = SupportMatrix()
    if data is None:
        return support
    body = problems.mapping(data, ("support",), "support")
    if body is None:
        return support
    problems.keys(body, ("support",), ("layers", "components"))
    for what, enum_type in (("layers", LayerType), ("components", ComponentType)):
        for key, row in _section(problems, body, what) if what in body else []:
            path: SchemaPath = ("support", what, key)
            member = _enum_key(problems, key, path, enum_type)
            if not isinstance(row, list) or not row:
                problems.add(path, f"must be a non-empty list of precisions, not {describe_value(row)}")
                continue
            dtypes = [problems.parse(DType.parse, d, (*path, i)) for i, d in enumerate(row)]
            if member is None or any(d is None for d in dtypes):
                continue
            if isinstance(member, LayerType):
                support = support.with_layer(member, dtypes)
            else:
                support = support.with_component(member, dtypes)
    return support


# -- parsing with line numbers -----------------------------------------------------------------

_Lines = dict[SchemaPath, int]
_Duplicates = list[tuple[SchemaPath, str]]


def _record_key(
    lines: _Lines, duplicates: _Duplicates, seen: dict[str, int], path: SchemaPath, key: str, line: int
) -> None:
    """`key` of the mapping at `path` stands at `line`; a duplicate when the mapping had it already
    (`seen`: its keys so far and their lines). Shared by the YAML and the JSON locator."""
    if key in seen:
        message = f"duplicate key {key!r} (lines {seen[key]} and {line}); the last one counts"
        duplicates.append(((*path, key), message))
    seen[key] = line
    lines[(*path, key)] = line


def _file_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in _YAML_SUFFIXES:
        return "yaml"
    if suffix in _JSON_SUFFIXES:
        return "json"
    raise ConfigError(
        f"unknown config file type {suffix or '(no suffix)'!r}; name it .yaml, .yml or .json",
        source=str(path),
    )


def _parse_yaml(text: str, source: str) -> tuple[Any, _Lines, _Duplicates]:
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}: " if mark is not None else ""
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        raise ConfigError(f"{where}not valid YAML: {what}", source=source) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", source=source) from None
    except RecursionError:
        raise ConfigError(_TOO_DEEP, source=source) from None
    lines: _Lines = {}
    duplicates: _Duplicates = []
    if root is not None:
        try:
            _YamlLocator(source, lines, duplicates).walk(root, ())
        except RecursionError:
            raise ConfigError(_TOO_DEEP, source=source) from None
    return data, lines, duplicates


_TOO_DEEP = "the values nest too deeply to be a config (a config is a few levels deep)"
_MAX_VALUES = 100_000
"""Values a YAML config may expand to through aliases: far more than any config holds, far fewer
than an alias bomb (a few lines of aliases of aliases that expand to billions)."""


class _YamlLocator:
    """Walks the node tree yaml.compose built and records the line of every key and list item.

    Aliases make the tree a graph, so it also refuses what only aliases can build, before anything
    reads the data: a value that contains itself, and a tree of more than `_MAX_VALUES` values.
    """

    def __init__(self, source: str, lines: _Lines, duplicates: _Duplicates) -> None:
        self.source = source
        self.lines = lines
        self.duplicates = duplicates
        self.visited = 0
        self.open: set[int] = set()  # the nodes on the path from the root

    def walk(self, node: yaml.Node, path: SchemaPath) -> None:
        line = node.start_mark.line + 1
        self.visited += 1
        if self.visited > _MAX_VALUES:
            raise ConfigError(
                f"line {line}: the file expands to more than {_MAX_VALUES} values through aliases; "
                "write the repeated parts out",
                source=self.source,
            )
        if id(node) in self.open:
            raise ConfigError(
                f"line {line}: an alias refers to a value that contains it (a recursive alias); "
                "a config is a tree, write the value out",
                source=self.source,
            )
        self.open.add(id(node))
        if isinstance(node, yaml.MappingNode):
            self.mapping(node, path)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.lines[(*path, i)] = item.start_mark.line + 1
                self.walk(item, (*path, i))
        self.open.discard(id(node))

    def mapping(self, node: yaml.MappingNode, path: SchemaPath) -> None:
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not (isinstance(key_node, yaml.ScalarNode) and key_node.tag == "tag:yaml.org,2002:str"):
                continue
            key, line = key_node.value, key_node.start_mark.line + 1
            _record_key(self.lines, self.duplicates, seen, path, key, line)
            self.walk(value_node, (*path, key))


_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_JSON_SCALAR = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?|true|false|null|NaN|-?Infinity")


def _parse_json(text: str, source: str) -> tuple[Any, _Lines, _Duplicates]:
    try:
        data = json.loads(text) if text.strip() else None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"line {exc.lineno}: not valid JSON: {exc.msg} (column {exc.colno})", source=source
        ) from None
    except RecursionError:
        raise ConfigError(_TOO_DEEP, source=source) from None
    lines: _Lines = {}
    duplicates: _Duplicates = []
    if data is not None:
        try:
            _JsonLocator(text, lines, duplicates).value(0, ())
        except RecursionError:
            raise ConfigError(_TOO_DEEP, source=source) from None
    return data, lines, duplicates


class _JsonLocator:
    """Walks text that json.loads accepted and records the line of every key and list item."""

    def __init__(self, text: str, lines: _Lines, duplicates: _Duplicates) -> None:
        self.text = text
        self.lines = lines
        self.duplicates = duplicates
        self.newlines = [i for i, ch in enumerate(text) if ch == "\n"]

    def line(self, pos: int) -> int:
        return bisect_right(self.newlines, pos - 1) + 1

    def skip(self, pos: int) -> int:
        match = _JSON_SPACE.match(self.text, pos)
        return match.end() if match else pos

    def value(self, pos: int, path: SchemaPath) -> int:
        pos = self.skip(pos)
        ch = self.text[pos]
        if ch == "{":
            return self.object(pos + 1, path)
        if ch == "[":
            return self.array(pos + 1, path)
        if ch == '"':
            return scanstring(self.text, pos + 1)[1]
        match = _JSON_SCALAR.match(self.text, pos)
        if match is None:  # json.loads accepted the text, so this cannot happen
            raise ConfigError(f"line {self.line(pos)}: unexpected character {ch!r}")
        return match.end()

    def object(self, pos: int, path: SchemaPath) -> int:
        seen: dict[str, int] = {}
        pos = self.skip(pos)
        if self.text[pos] == "}":
            return pos + 1
        while True:
            pos = self.skip(pos)
            line = self.line(pos)
            key, pos = scanstring(self.text, pos + 1)
            _record_key(self.lines, self.duplicates, seen, path, key, line)
            pos = self.skip(pos) + 1  # the colon
            pos = self.skip(self.value(pos, (*path, key)))
            if self.text[pos] == "}":
                return pos + 1
            pos += 1  # the comma

    def array(self, pos: int, path: SchemaPath) -> int:
        pos = self.skip(pos)
        if self.text[pos] == "]":
            return pos + 1
        index = 0
        while True:
            pos = self.skip(pos)
            self.lines[(*path, index)] = self.line(pos)
            pos = self.skip(self.value(pos, (*path, index)))
            if self.text[pos] == "]":
                return pos + 1
            pos += 1
            index += 1
