"""Fixtures of the op-library tests (model builders are in bitlinear_graphs.py).

Every test here needs the built library; without it they are skipped with the message saying how
to build it. `isa` runs a test once per ISA path this CPU supports (BITNET_ISA is read when
onnxruntime creates a kernel, so setting it before creating the session is enough).
"""

from __future__ import annotations

import numpy as np
import pytest

from bitnet_onnx import runtime
from bitnet_onnx.core.errors import KernelLibraryError


@pytest.fixture(autouse=True, scope="session")
def ops_lib() -> str:
    try:
        return str(runtime.library_path())
    except KernelLibraryError as exc:
        pytest.skip(str(exc))


@pytest.fixture(params=[isa.value for isa in runtime.supported_isas()])
def isa(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(runtime.ISA_ENV, request.param)
    return request.param


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)
