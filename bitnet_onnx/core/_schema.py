"""Shared plumbing for checking configuration data: where a value sits and what is wrong with it.

A value's place is a `SchemaPath`, the keys and list indices that lead to it from the top of a
config (`("layers", "lm_head", "precision")`). `Problems` collects every problem found, each tied to
a path; when it knows the file's line of each path (the config file reader fills that in) every
message starts with the line. `MixedPrecisionConfig.validate()` and the config file reader use the
same checks through it, so a problem reads the same whether it came from code or from a file.
"""

from __future__ import annotations

import difflib
import enum
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

from bitnet_onnx.core.errors import ConfigError

__all__ = ["Problems", "SchemaPath", "describe_value", "did_you_mean", "format_path", "parse_enum"]

SchemaPath = tuple[str | int, ...]
T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def format_path(path: SchemaPath) -> str:
    """`layers["layers.*.mlp.*"].components.bias`, `policies[0].rules[1]`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENTIFIER.match(part):
            out += f".{part}" if out else part
        else:
            out += f'["{part}"]'
    return out


class Problems:
    """Every problem found in one configuration, in the order found."""

    def __init__(self, source: str | None = None, lines: Mapping[SchemaPath, int] | None = None) -> None:
        self.source = source
        self._lines = dict(lines or {})
        self._found: list[tuple[int | None, str]] = []

    def __len__(self) -> int:
        return len(self._found)

    def line(self, path: SchemaPath) -> int | None:
        """The file line of `path`, or of its nearest ancestor that has one."""
        for end in range(len(path), -1, -1):
            found = self._lines.get(path[:end])
            if found is not None:
                return found
        return None

    def add(self, path: SchemaPath, message: str) -> None:
        where = format_path(path)
        text = f"{where}: {message}" if where else message
        line = self.line(path)
        self._found.append((line, f"line {line}: {text}" if line is not None else text))

    def raise_if_any(self) -> None:
        """Raise one ConfigError with every problem, in file order (those without a line last)."""
        if self._found:
            ordered = sorted(
                self._found, key=lambda found: found[0] if found[0] is not None else float("inf")
            )
            raise ConfigError([text for _, text in ordered], source=self.source)

    def parse(self, parse: Callable[[Any], T], value: Any, path: SchemaPath) -> T | None:
        """`parse(value)`, or None with the parser's complaint recorded at `path`."""
        try:
            return parse(value)
        except ConfigError as exc:
            for problem in exc.problems:
                self.add(path, problem)
            return None

    def mapping(self, value: Any, path: SchemaPath, what: str) -> Mapping[str, Any] | None:
        """`value` if it is a mapping with string keys; else None and a problem."""
        if not isinstance(value, Mapping):
            self.add(path, f"{what} must be a mapping, not {describe_value(value)}")
            return None
        bad = [k for k in value if not isinstance(k, str)]
        for key in bad:
            self.add(path, f"key {key!r} must be a string; quote it")
        return None if bad else value

    def keys(
        self,
        value: Mapping[str, Any],
        path: SchemaPath,
        allowed: Collection[str],
        required: Collection[str] = (),
    ) -> bool:
        """Record unknown keys (with a did-you-mean) and missing required ones; True if none."""
        ok = True
        valid = ", ".join(allowed)
        for key in value:
            if key not in allowed:
                ok = False
                self.add(
                    (*path, key), f"unknown key {key!r}{did_you_mean(key, allowed)}; valid keys: {valid}"
                )
        for key in required:
            if key not in value:
                ok = False
                self.add(path, f"missing required key {key!r}")
        return ok


def did_you_mean(word: str, choices: Collection[str]) -> str:
    """` (did you mean 'x'?)` for the closest choice, or for one that `word` abbreviates; else ""."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if not close and len(word) >= 3:
        close = [c for c in choices if c.lower().startswith(word.lower())][:1]
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_enum(
    cls: type[E],
    value: object,
    noun: str,
    *,
    spellings: Mapping[str, E] | None = None,
    fold: Callable[[str], str] = str.lower,
) -> E:
    """`value` as a member of `cls`: the member itself, or text that, stripped and folded by `fold`, is
    one of `spellings` (default: every member's value and name, folded). Anything else is a
    ConfigError naming the `noun`, the closest choice and every choice; every user-facing enum parses
    through here, so they all answer a typo the same way."""
    if isinstance(value, cls):
        return value
    table = spellings if spellings is not None else {fold(str(s)): m for m in cls for s in (m.value, m.name)}
    found = table.get(fold(str(value).strip()))
    if found is None:
        choices = [str(m.value) for m in cls]
        hint = did_you_mean(fold(str(value).strip()), [fold(c) for c in choices])
        raise ConfigError(f"unknown {noun} {value!r}{hint}; choose one of {', '.join(choices)}")
    return found


def describe_value(value: Any) -> str:
    """How a wrong value is named in a message: `null`, `a list`, `the string 'x'`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__
