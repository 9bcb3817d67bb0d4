"""The validation report of a compile: the compiled model's outputs against the original's on sample
inputs, with the thresholds of the strategy, plus every finding of the structural checks.

Metrics, per graph output, computed in float64 over all elements:
- `max_abs_error` = max |y − r|;
- `max_rel_error` = max |y − r| / max |r|: relative to the output's range, not element-wise (an
  element-wise ratio explodes wherever r is near 0, as logits and activations often are);
- `rel_error_q999` = the 99.9th percentile of |y − r| / max |r| (numpy's linear interpolation):
  the same error without its worst 0.1 % of elements, so no single element decides (on an output of
  fewer than 1000 elements it lies between the two largest errors);
- `cosine` = ⟨y, r⟩ / (‖y‖ ‖r‖), 1.0 when both are all zero, 0.0 when only one is.
A non-finite value where the original is finite (or the reverse) makes `max_abs_error` infinite and
`cosine` NaN, so it fails every threshold.

Thresholds (`THRESHOLDS`): a compile meets them when every output has cosine ≥ `min_cosine` and
rel_error_q999 ≤ `max_rel_error` (the maximum is reported beside it, never judged: one element
0.02036 off against 0.02 refused a conservative compile of an OCR detector whose other elements
were well within). They detect a compile that went wrong, with room for the error the
strategy itself costs on a float-trained model. Ternary weights lose information that a model not
trained for them cannot get back (ANCHORS (c)10), so the balanced and aggressive bounds are loose on
purpose, and the report always gives the measured figures. Measured on the tiny fixtures of
models/ (random init, their sample inputs and batch 4 × seq 32): balanced and aggressive reach
cosine 0.83-0.97 and max rel. error 0.20-0.57; conservative cosine > 0.99999, max rel. < 0.002.

| strategy     | min cosine | max rel. error | what it allows                                          |
|--------------|------------|----------------|---------------------------------------------------------|
| conservative | 0.999      | 0.02           | F16 rounding only                                       |
| balanced     | 0.75       | 1.0            | ternary weights, int8 activations, F16 elsewhere         |
| aggressive   | 0.65       | 1.5            | ternary base-3, int8 attention/embedding/head, I4        |
| custom       | 0.65       | 1.5            | as aggressive: a custom plan may go as low              |

A model whose weights are exactly ternary (BitNet-trained) loses only the int8 activation rounding
in `balanced` (cosine ≥ 0.999 on logits; the end-to-end tests check this). A layer computed wrongly
can still leave the cosine of a residual network high, which is why `validate` also reads every
layer back from the graph; these thresholds are the last line, not the only one. An output of few
values (a 3-label classifier's logits at batch 1) makes a noisy cosine: a BERT builder's logits
range 0.55-0.96 over input draws at batch 2 and 0.82-0.94 at batch 8 in `balanced`, so validate such
models on more rows (`--dim batch=8`, or `--inputs`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from bitnet_onnx.config.config import MixedPrecisionStrategy
from bitnet_onnx.config.validation import ValidationReport
from bitnet_onnx.core.errors import ValidationError

__all__ = [
    "THRESHOLDS",
    "CompileReport",
    "CompileValidationError",
    "OutputMetrics",
    "Thresholds",
    "compare_outputs",
]


@dataclass(frozen=True)
class Thresholds:
    """What the outputs of a compiled model must reach against the original."""

    min_cosine: float
    max_rel_error: float

    @classmethod
    def for_strategy(cls, strategy: MixedPrecisionStrategy | str) -> Thresholds:
        return THRESHOLDS[MixedPrecisionStrategy.parse(strategy)]


_S = MixedPrecisionStrategy
THRESHOLDS: Mapping[MixedPrecisionStrategy, Thresholds] = MappingProxyType(
    {
        _S.CONSERVATIVE: Thresholds(min_cosine=0.999, max_rel_error=0.02),
        _S.BALANCED: Thresholds(min_cosine=0.75, max_rel_error=1.0),
        _S.AGGRESSIVE: Thresholds(min_cosine=0.65, max_rel_error=1.5),
        _S.CUSTOM: Thresholds(min_cosine=0.65, max_rel_error=1.5),
    }
)


_QUANTILE = 0.999


@dataclass(frozen=True)
class OutputMetrics:
    """How far one output of the compiled model is from the original's (see the module docstring)."""

    name: str
    shape: tuple[int, ...]
    max_abs_error: float
    max_rel_error: float
    cosine: float
    rel_error_q999: float

    def misses(self, thresholds: Thresholds) -> list[str]:
        """What this output misses, e.g. `cosine 0.712 < 0.8`; empty when it meets the thresholds."""
        missed = []
        if not self.cosine >= thresholds.min_cosine:  # NaN misses too
            missed.append(f"cosine {self.cosine:.6g} < {thresholds.min_cosine:g}")
        if not self.rel_error_q999 <= thresholds.max_rel_error:
            missed.append(
                f"99.9th-percentile relative error {self.rel_error_q999:.4g} > {thresholds.max_rel_error:g} "
                f"(max {self.max_rel_error:.4g})"
            )
        return missed

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "max_abs_error": _json_float(self.max_abs_error),
            "max_rel_error": _json_float(self.max_rel_error),
            "rel_error_q999": _json_float(self.rel_error_q999),
            "cosine": _json_float(self.cosine),
        }


def compare_outputs(name: str, reference: np.ndarray, actual: np.ndarray) -> OutputMetrics:
    """Metrics of `actual` against `reference` (same shape; any numeric or bool type)."""
    ref = np.asarray(reference).astype(np.float64).reshape(-1)
    out = np.asarray(actual).astype(np.float64).reshape(-1)
    shape = tuple(int(d) for d in np.shape(reference))
    finite_ref, finite_out = np.isfinite(ref), np.isfinite(out)
    if not np.array_equal(finite_ref, finite_out):
        return OutputMetrics(name, shape, math.inf, math.inf, math.nan, math.inf)
    # Non-finite values in the same places must be the same values (inf vs -inf, NaN vs NaN).
    same_nonfinite = np.array_equal(ref[~finite_ref], out[~finite_out], equal_nan=True)
    if not same_nonfinite:
        return OutputMetrics(name, shape, math.inf, math.inf, math.nan, math.inf)
    ref, out = ref[finite_ref], out[finite_out]
    if ref.size == 0:
        return OutputMetrics(name, shape, 0.0, 0.0, 1.0, 0.0)
    errors = np.abs(out - ref)
    max_abs = float(np.max(errors))
    q999_abs = float(np.quantile(errors, _QUANTILE))
    scale = float(np.max(np.abs(ref)))
    max_rel, q999_rel = (
        (max_abs / scale, q999_abs / scale)
        if scale > 0
        else tuple(0.0 if e == 0 else math.inf for e in (max_abs, q999_abs))
    )
    norms = float(np.linalg.norm(ref)) * float(np.linalg.norm(out))
    both_zero = not ref.any() and not out.any()
    cosine = float(np.dot(ref, out)) / norms if norms > 0 else float(both_zero)
    return OutputMetrics(name, shape, max_abs, max_rel, cosine, q999_rel)


@dataclass(frozen=True)
class CompileReport(ValidationReport):
    """A `ValidationReport` (every finding of the validate pass) plus the
    numeric comparison: the strategy's thresholds, one `OutputMetrics` per output, and where the
    sample inputs came from. `ok` (no error findings) decides whether the compile is written;
    `goal_met` says whether the numbers reached the thresholds (with `strict=False` a miss is a
    warning, and the model is written anyway)."""

    strategy: str = ""
    thresholds: Thresholds | None = None
    outputs: tuple[OutputMetrics, ...] = ()
    inputs: str = ""

    @property
    def goal_met(self) -> bool:
        """Every output was compared and meets the thresholds."""
        if not self.outputs or self.thresholds is None:
            return False
        return all(not m.misses(self.thresholds) for m in self.outputs)

    def to_json(self) -> dict[str, Any]:
        thresholds = self.thresholds
        return {
            "strategy": self.strategy,
            "thresholds": None
            if thresholds is None
            else {"min_cosine": thresholds.min_cosine, "max_rel_error": thresholds.max_rel_error},
            "inputs": self.inputs,
            "goal_met": self.goal_met,
            "ok": self.ok,
            "outputs": [m.to_json() for m in self.outputs],
            "findings": [
                {
                    "rule": f.rule_id,
                    "severity": f.severity.value,
                    "subject": f.subject,
                    "message": f.message,
                    "suggestion": f.suggestion,
                }
                for f in self.findings
            ],
        }

    def summary(self) -> str:
        """A few lines for a terminal: one per output, then the findings that matter."""
        lines = []
        t = self.thresholds
        bound = (
            f" (thresholds for {self.strategy}: cosine ≥ {t.min_cosine:g}, rel p99.9 ≤ {t.max_rel_error:g})"
            if t
            else ""
        )
        lines.append(f"validation vs original on {self.inputs}{bound}:")
        for m in self.outputs:
            verdict = "ok" if t is not None and not m.misses(t) else "MISSED"
            lines.append(
                f"  {m.name} {list(m.shape)}: cosine {m.cosine:.6f}, max abs {m.max_abs_error:.4g}, "
                f"rel p99.9 {m.rel_error_q999:.4g} (max {m.max_rel_error:.4g})  {verdict}"
            )
        if not self.outputs:
            lines.append("  outputs not compared (see the errors below)")
        lines += [f"  {f.severity.value}: {f}" for f in (*self.errors, *self.warnings)]
        return "\n".join(lines)

    def raise_if_errors(self) -> None:
        """Raise CompileValidationError (carrying this report) listing every error."""
        errors = self.errors
        if errors:
            body = "\n".join(f"  - {f}" for f in errors)
            raise CompileValidationError(
                f"validation of the compiled model found {len(errors)} error(s):\n{body}", self
            )


class CompileValidationError(ValidationError):
    """The compiled model failed validation; nothing was written. `report` is the full report."""

    def __init__(self, message: str, report: CompileReport) -> None:
        super().__init__(message, report.findings)
        self.report = report


def _json_float(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)
