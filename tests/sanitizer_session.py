"""pytest plugin of the sanitizer run (kernels/run_sanitized_tests.sh, `-p tests.sanitizer_session`).

Sessions are made without onnxruntime's CPU memory arena, so every tensor (outputs and
initializers included) is a heap allocation of its own and AddressSanitizer reports a kernel that
reads or writes past one; inside the arena's large blocks such an access goes unnoticed.
"""

from __future__ import annotations

import onnxruntime as ort
import pytest

from bitnet_onnx import runtime

__all__ = ["pytest_configure"]


def pytest_configure(config: pytest.Config) -> None:
    with_arena = runtime.session_options

    def session_options(*args: object, **kwargs: object) -> ort.SessionOptions:
        options = with_arena(*args, **kwargs)
        options.enable_cpu_mem_arena = False
        return options

    runtime.session_options = session_options
