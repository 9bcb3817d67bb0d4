"""The one enum parser (core._schema.parse_enum) every user-facing enum goes through: members by value
or name in any case, typos answered with the closest choice and every choice."""

from __future__ import annotations

import enum

import pytest

from bitnet_onnx import ConditionOperator, ConditionType, ConversionStrategy, DType, MixedPrecisionStrategy
from bitnet_onnx.core._schema import parse_enum
from bitnet_onnx.core.dtypes import TernaryPacking
from bitnet_onnx.core.errors import ConfigError
from bitnet_onnx.core.layers import ComponentType, LayerType

# (enum, the noun its errors use)
ENUMS = [
    (DType, "precision"),
    (LayerType, "layer type"),
    (ComponentType, "component"),
    (ConversionStrategy, "conversion strategy"),
    (MixedPrecisionStrategy, "strategy"),
    (TernaryPacking, "packing"),
    (ConditionType, "condition type"),
    (ConditionOperator, "operator"),
]


@pytest.mark.parametrize(("cls", "noun"), ENUMS)
def test_every_member_parses_from_itself_its_value_and_its_name(cls: type[enum.Enum], noun: str) -> None:
    for member in cls:
        assert cls.parse(member) is member
        for text in (str(member.value), member.name, f"  {str(member.value).upper()} "):
            assert cls.parse(text) is member


@pytest.mark.parametrize(("cls", "noun"), ENUMS)
def test_a_typo_names_the_noun_the_closest_choice_and_every_choice(cls: type[enum.Enum], noun: str) -> None:
    member = list(cls)[-1]
    typo = str(member.value)[:-1] + "#"  # one character off the last member's value
    with pytest.raises(ConfigError) as info:
        cls.parse(typo)
    message = str(info.value)
    assert f"unknown {noun} {typo!r} (did you mean {str(member.value)!r}?); choose one of " in message
    assert message.endswith(", ".join(str(m.value) for m in cls))


def test_spellings_and_fold_decide_what_text_is_accepted() -> None:
    class Color(enum.Enum):
        RED = "red"
        DARK_BLUE = "dark_blue"

    def fold(text: str) -> str:
        return text.lower().replace("-", "_")

    assert parse_enum(Color, "Dark-Blue", "color", fold=fold) is Color.DARK_BLUE
    assert parse_enum(Color, "crimson", "color", spellings={"crimson": Color.RED}) is Color.RED
    with pytest.raises(ConfigError, match=r"unknown color 'Dark-Blue' \(did you mean 'dark_blue'\?\)"):
        parse_enum(Color, "Dark-Blue", "color")  # without the fold '-' is not '_': close, not equal
    assert DType.parse("int-4") is DType.I4 and DType.parse("ternary") is DType.BITNET158  # its aliases
