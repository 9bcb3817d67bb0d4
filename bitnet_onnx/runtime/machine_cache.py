"""Numbers measured on this machine, kept in a file between processes.

A `MachineCache` is one JSON file `$XDG_CACHE_HOME/bitnet-onnx/<name>` (default `~/.cache`) holding
`{"version": N, "machines": {machine key: entry}}`; `runtime.machine_key()` names the machine, the
owner of the file decides what an entry is. A file that is missing, unreadable, not of that shape or
of another version reads as empty, so what it held is measured again. A write goes to a temporary
file in the same folder and is renamed over the old one, so a reader never sees half a file; a
folder that cannot be written costs a warning and a measurement next time, never a failure.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bitnet_onnx.core.files import atomic_file

__all__ = ["MachineCache"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MachineCache:
    """One cache file (module docstring): `name` in the cache folder, `version` of its layout and
    `what` it keeps, as the warning of a failed write names it."""

    name: str
    version: int
    what: str

    def path(self) -> Path:
        root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(root) / "bitnet-onnx" / self.name

    def load(self) -> dict[str, Any]:
        """The entry of every machine in the file; empty when it cannot be used (module docstring)."""
        try:
            data = json.loads(self.path().read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("version") != self.version:
            return {}
        machines = data.get("machines")
        return machines if isinstance(machines, dict) else {}

    def store(self, machines: dict[str, Any]) -> None:
        """The file's entries replaced by `machines`."""
        path = self.path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(path) as handle:
                json.dump({"version": self.version, "machines": machines}, handle, indent=1, sort_keys=True)
        except OSError as exc:  # a read-only home only costs a measurement next time
            logger.warning("could not keep %s in %s: %s", self.what, path, exc)
