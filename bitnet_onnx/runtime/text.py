"""Text in and out of `generate`: a Hugging Face `tokenizer.json` read by the `tokenizers` package,
an optional dependency (the `text` extra) that only text prompts need."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bitnet_onnx.core.errors import ConfigError

__all__ = ["TextCodec"]


@dataclass(frozen=True)
class TextCodec:
    """Token ids ↔ text by a tokenizer file."""

    path: Path
    _tokenizer: Any  # tokenizers.Tokenizer; the package is imported only when a file is loaded

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TextCodec:
        """The tokenizer of `path` (a tokenizer.json). ConfigError when the package is missing or the
        file cannot be read."""
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ConfigError(
                "text prompts need the tokenizers package: install the text extra, "
                "`pip install 'bitnet-onnx[text]'` (or give token ids with --prompt-ids)"
            ) from None
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"tokenizer file {path} does not exist; give the model's tokenizer.json")
        try:
            return cls(path, Tokenizer.from_file(str(path)))
        except Exception as exc:  # tokenizers raises its own (Rust) exception type
            raise ConfigError(f"{path} is not a tokenizer file the tokenizers package reads: {exc}") from exc

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(ids)))
