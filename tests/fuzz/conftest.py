"""Hypothesis profiles of the fuzz tests, chosen by the environment variable HYPOTHESIS_PROFILE.

- `ci` (default): derandomized (the examples are a function of each test, so a run is repeatable)
  and bounded, so the whole folder runs in about two minutes on two cores.
- `long`: many times the examples, random seeds and the example database (`.hypothesis/`), for a
  local run of an hour or more: `HYPOTHESIS_PROFILE=long python -m pytest tests/fuzz -q`.

Each test asks for its number of examples with `fuzz_budget.examples(n)`: n under `ci`, scaled by
the loaded profile otherwise, so cheap properties get many examples and whole compiles few.
"""

from __future__ import annotations

import os

from fuzz_budget import CI_EXAMPLES, LONG_EXAMPLES
from hypothesis import HealthCheck, settings

_SLOW_INPUTS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile(
    "ci",
    max_examples=CI_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=_SLOW_INPUTS,
)
settings.register_profile(
    "long",
    max_examples=LONG_EXAMPLES,
    deadline=None,
    print_blob=True,
    suppress_health_check=_SLOW_INPUTS,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
