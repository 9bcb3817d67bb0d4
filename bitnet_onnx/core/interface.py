"""Which interface a message is for, so a fix names the knob the reader can turn.

The same check runs under the Python API and under the `bitnet-onnx` command line; its message
must say `holdout=0.25` to a Python caller and `--holdout 0.25` to a shell user, never the other's
spelling (a CLI user cannot call `Calibration.generated`). `knob(api, cli)` returns the spelling
of the interface in use: the API's by default, the CLI's inside `speaking_to(Interface.CLI)`, which
`bitnet-onnx`'s main enters. A context variable holds it, so threads and tasks keep their own.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator
from contextvars import ContextVar

__all__ = ["Interface", "knob", "speaking_to"]


class Interface(enum.Enum):
    API = "api"
    CLI = "cli"


_CURRENT: ContextVar[Interface] = ContextVar("bitnet_onnx_interface", default=Interface.API)


def knob(api: str, cli: str) -> str:
    """`api` under the Python API, `cli` under the command line (module docstring)."""
    return cli if _CURRENT.get() is Interface.CLI else api


@contextlib.contextmanager
def speaking_to(interface: Interface) -> Iterator[None]:
    """Messages raised inside name the knobs of `interface`."""
    token = _CURRENT.set(interface)
    try:
        yield
    finally:
        _CURRENT.reset(token)
