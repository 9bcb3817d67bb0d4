"""Error types. Every failure a user can cause is a MixedPrecisionError subclass whose
message names the object at fault (file, layer, tensor, config key) and the fix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bitnet_onnx.core.dtypes import DType

__all__ = [
    "ConfigError",
    "ConversionError",
    "KernelLibraryError",
    "MixedPrecisionError",
    "UnsupportedModelError",
    "ValidationError",
]


class MixedPrecisionError(Exception):
    """Base of every error bitnet-onnx raises on purpose."""


class ConfigError(MixedPrecisionError, ValueError):
    """A configuration (object or file) is invalid. Carries every problem found, not just the first."""

    def __init__(self, problems: str | Sequence[str], *, source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        head = f"invalid configuration in {source}" if source else "invalid configuration"
        if len(self.problems) == 1:
            super().__init__(f"{head}: {self.problems[0]}")
        else:
            body = "\n".join(f"  - {p}" for p in self.problems)
            super().__init__(f"{head} ({len(self.problems)} problems):\n{body}")


class ConversionError(MixedPrecisionError, ValueError):
    """A tensor cannot be converted from one precision to another."""

    def __init__(self, from_dtype: DType | str, to_dtype: DType | str, reason: str) -> None:
        self.from_dtype = from_dtype
        self.to_dtype = to_dtype
        self.reason = reason
        src = getattr(from_dtype, "name", from_dtype)
        dst = getattr(to_dtype, "name", to_dtype)
        super().__init__(f"cannot convert {src} to {dst}: {reason}")


class ValidationError(MixedPrecisionError):
    """Validation found errors. `findings` holds every finding (errors, warnings and infos)."""

    def __init__(self, message: str, findings: Sequence[Any] = ()) -> None:
        self.findings = list(findings)
        super().__init__(message)


class UnsupportedModelError(MixedPrecisionError):
    """The model cannot be read or compiled (malformed file, unsupported construct)."""


class KernelLibraryError(MixedPrecisionError):
    """The custom-op library is missing, cannot be loaded, or does not match onnxruntime."""
