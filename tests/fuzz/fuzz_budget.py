"""How many examples each fuzz test runs under the loaded hypothesis profile (see conftest.py)."""

from __future__ import annotations

from hypothesis import settings

__all__ = ["CI_EXAMPLES", "LONG_EXAMPLES", "examples"]

CI_EXAMPLES = 100
LONG_EXAMPLES = 5000


def examples(ci: int) -> int:
    """`ci` examples under the ci profile; under another, `ci` scaled by its max_examples."""
    return max(1, round(ci * settings.default.max_examples / CI_EXAMPLES))
