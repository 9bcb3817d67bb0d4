"""Fixtures shared by every test folder.

`ops_lib`: the built op library; a test that asks for it (or a module marked
`pytest.mark.usefixtures("ops_lib")`) is skipped, with the message saying how to build it, where
the library is missing. tests/kernels/conftest.py overrides it with an autouse one.
"""

from __future__ import annotations

import pytest

from bitnet_onnx import runtime
from bitnet_onnx.core.errors import KernelLibraryError


@pytest.fixture(scope="session")
def ops_lib() -> None:
    try:
        runtime.library_path()
    except KernelLibraryError as exc:
        pytest.skip(str(exc))
