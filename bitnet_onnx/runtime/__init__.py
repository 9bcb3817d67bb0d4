"""Running bitnet-onnx models: the custom-op library, sessions that load it, and the CPU path.

The C++ op library (`libbitnet_ops.so`, built from `kernels/` by `pip install`) registers the ops of
kernels/README.md in the onnxruntime domain `DOMAIN`. `library_path()` finds it (or the build named
by the environment variable `BITNET_OPS_LIBRARY`, e.g. a sanitizer build), `session_options()` and
`session()` register it (once per SessionOptions), and any failure to find or load it raises
`KernelLibraryError` saying how to rebuild.

Models may carry ops of other custom domains (a user's own kernels), which bitnet-onnx passes
through. onnxruntime runs them only with the library that implements them: `session_options(...,
custom_op_libraries=[...])` registers such libraries after ours (a library that is missing or
cannot be loaded is a KernelLibraryError naming it), and a session that fails because an op of an
unknown domain is not registered raises KernelLibraryError naming the op, its domain and how to
pass its library.

The kernels pick an inner-loop implementation ("ISA path") when onnxruntime creates them: the
fastest one this CPU supports, or the one `BITNET_ISA` (ref | avx2 | avx512 | amx) forces. `dispatch_isa()`
answers, from the CPU flags the OS reports and that variable, which path kernels created now take;
the library computes the same from cpuid and xgetbv (the tests check that they agree).
`machine_key()` names what a timing taken here depends on (CPU model and flags, onnxruntime version,
the library's content hash, the ISA path): the key of the measured-latency caches.

`generate(session, ids, n)` decodes tokens with a decoder's KV cache (runtime/decoding.py).
"""

from __future__ import annotations

import enum
import hashlib
import importlib.resources
import logging
import os
import re
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from bitnet_onnx.core.errors import ConfigError, KernelLibraryError, UnsupportedModelError
from bitnet_onnx.runtime.decoding import Generation, Sampling, generate

__all__ = [
    "BITLINEAR",
    "DEQUANTIZE_LOWBIT",
    "DOMAIN",
    "ISA_ENV",
    "LIBRARY_ENV",
    "LOWBIT_MATMUL",
    "OPSET_VERSION",
    "OP_NAMES",
    "QUANTIZE_LOWBIT",
    "Generation",
    "Isa",
    "Sampling",
    "check_feeds",
    "cpu_flags",
    "cpu_model",
    "dispatch_isa",
    "generate",
    "library_path",
    "machine_key",
    "session",
    "session_options",
    "supported_isas",
]

logger = logging.getLogger(__name__)

DOMAIN = "bitnet"
"""The custom-op domain of every op in the library (kernels/include/bitnet/ops.h)."""
OPSET_VERSION = 1

BITLINEAR = "BitLinear"
LOWBIT_MATMUL = "LowBitMatMul"
DEQUANTIZE_LOWBIT = "DequantizeLowBit"
QUANTIZE_LOWBIT = "QuantizeLowBit"
OP_NAMES = (BITLINEAR, LOWBIT_MATMUL, DEQUANTIZE_LOWBIT, QUANTIZE_LOWBIT)
"""Every op the library registers, as named in kernels/include/bitnet/ops.h."""

LIBRARY_ENV = "BITNET_OPS_LIBRARY"
"""Environment variable: path of a library build to use instead of the installed one."""
ISA_ENV = "BITNET_ISA"
"""Environment variable: force an ISA path (ref, avx2, avx512 or amx) for kernels created afterwards."""

_LIBRARY_NAME = "libbitnet_ops.so"
_REBUILD = (
    "rebuild it with `pip install --no-build-isolation -e .` in the bitnet-onnx source tree, "
    f"or reinstall the bitnet-onnx wheel (or point {LIBRARY_ENV} at a build of kernels/)"
)


class Isa(enum.Enum):
    """An inner-loop implementation of the kernels, by the value `BITNET_ISA` accepts."""

    REF = "ref"  # portable C++
    AVX2 = "avx2"  # AVX2 + FMA + F16C
    AVX512 = "avx512"  # AVX-512 F/BW/VL + VNNI
    AMX = "amx"  # AVX-512 VNNI + AMX-INT8 tiles for BitLinear's many-row GEMM (other ops: avx512)

    @property
    def required_flags(self) -> frozenset[str]:
        """The /proc/cpuinfo flags the path needs."""
        return _REQUIRED_FLAGS[self]


_AVX512_FLAGS = frozenset({"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"})
_REQUIRED_FLAGS = {
    Isa.REF: frozenset(),
    Isa.AVX2: frozenset({"avx2", "fma", "f16c"}),
    Isa.AVX512: _AVX512_FLAGS,
    Isa.AMX: _AVX512_FLAGS | {"amx_tile", "amx_int8"},
}


def library_path() -> Path:
    """The op library: `$BITNET_OPS_LIBRARY` when set, else the one installed in the package."""
    override = os.environ.get(LIBRARY_ENV)
    if override:
        path = Path(override)
        if not path.is_file():
            raise KernelLibraryError(
                f"{LIBRARY_ENV}={override} does not name a file; point it at a built {_LIBRARY_NAME} "
                f"or unset it to use the installed library"
            )
        return path
    resource = importlib.resources.files("bitnet_onnx") / "lib" / _LIBRARY_NAME
    if not resource.is_file():
        raise KernelLibraryError(
            f"the bitnet op library bitnet_onnx/lib/{_LIBRARY_NAME} is missing: {_REBUILD}"
        )
    return Path(str(resource))


def _register_library(options: ort.SessionOptions) -> None:
    path = library_path()
    try:
        options.register_custom_ops_library(str(path))
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        raise KernelLibraryError(
            f"onnxruntime {ort.__version__} could not load the bitnet op library {path}: {exc}; {_REBUILD}"
        ) from exc


def _register_custom_op_library(options: ort.SessionOptions, library: str | os.PathLike[str]) -> None:
    path = Path(library)
    if not path.is_file():
        raise KernelLibraryError(
            f"custom-op library {path} does not exist; pass the path of the shared library (.so) that "
            "implements the model's custom ops"
        )
    try:
        options.register_custom_ops_library(str(path))
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        raise KernelLibraryError(
            f"onnxruntime {ort.__version__} could not load the custom-op library {path}: {exc}; pass a "
            f"shared library built for onnxruntime {ort.__version__} that exports RegisterCustomOps"
        ) from exc


def session_options(
    threads: int | None = None, custom_op_libraries: Sequence[str | os.PathLike[str]] = ()
) -> ort.SessionOptions:
    """Session options with the op library registered, then each of `custom_op_libraries` (the
    user's libraries for ops of other custom domains); `threads` sets intra_op_num_threads (None
    keeps onnxruntime's default, one per physical core)."""
    options = ort.SessionOptions()
    if threads is not None:
        _check_threads(threads)
        options.intra_op_num_threads = threads
    _register_library(options)
    for library in custom_op_libraries:
        _register_custom_op_library(options, library)
    return options


def session(
    model: str | os.PathLike[str] | bytes | onnx.ModelProto,
    threads: int | None = None,
    options: ort.SessionOptions | None = None,
) -> ort.InferenceSession:
    """An onnxruntime CPU session for `model` (a path, serialized bytes or a ModelProto) with the
    op library registered. `options`, to tune further settings, must come from `session_options()`
    (the library is registered once per SessionOptions); `threads` overrides their thread count.

    A model onnxruntime rejects (including a bitnet op whose attributes or constant inputs do not
    match kernels/README.md) raises UnsupportedModelError with onnxruntime's message; an op of a
    domain onnxruntime does not define, whose library was not registered, raises KernelLibraryError.
    """
    if options is None:
        options = session_options(threads)
    elif threads is not None:
        _check_threads(threads)
        options.intra_op_num_threads = threads
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    name = "<in-memory model>" if isinstance(source, bytes) else os.fspath(source)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        _raise_for_unregistered_op(name, exc)
        hint = ""
        if f"domain_version of {OPSET_VERSION}" in str(exc):
            hint = " (were the options made by bitnet_onnx.runtime.session_options()?)"
        raise UnsupportedModelError(
            f"onnxruntime could not create a session for {name}: {exc}{hint}"
        ) from exc


# onnxruntime's words for a node whose (domain, op) no registered schema or kernel provides.
_UNREGISTERED_OP = re.compile(r"(?P<domain>[\w.]+):(?P<op>\w+)\(-?\d+\) is not a registered function/op")


@cache
def _onnxruntime_domains() -> frozenset[str]:
    """The op domains onnxruntime defines itself ('' is ONNX's default domain)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_c

    return frozenset(schema.domain for schema in ort_c.get_all_operator_schema())


def _raise_for_unregistered_op(model: str, exc: Exception) -> None:
    """KernelLibraryError when onnxruntime's `exc` says an op of a custom domain is not registered:
    its library is what is missing. Ops of onnxruntime's own domains and of ours are left to the caller."""
    match = _UNREGISTERED_OP.search(str(exc))
    if match is None or match["domain"] in {DOMAIN, "ai.onnx"} | _onnxruntime_domains():
        return
    raise KernelLibraryError(
        f"onnxruntime cannot run {model}: op {match['op']!r} of the custom domain {match['domain']!r} is "
        f"not registered. Pass the shared library that implements the {match['domain']!r} ops: "
        "compile(..., custom_op_libraries=['lib.so']), session_options(custom_op_libraries=['lib.so']), "
        "or on the command line --custom-ops lib.so"
    ) from exc


def _check_threads(threads: int) -> None:
    if threads < 1:
        raise ConfigError(f"threads={threads} must be at least 1 (or None for onnxruntime's default)")


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports in /proc/cpuinfo (empty where there is none).
    Linux lists AVX/AVX-512 flags only when it saves their registers, like the library's xgetbv check."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def supported_isas() -> tuple[Isa, ...]:
    """The ISA paths this CPU runs, slowest first."""
    flags = cpu_flags()
    return tuple(isa for isa in Isa if isa.required_flags <= flags)


def dispatch_isa() -> Isa:
    """The path kernels created now take: `$BITNET_ISA` when set, else the fastest supported one.

    Raises KernelLibraryError for a value the library would reject (unknown, or not supported here).
    """
    supported = supported_isas()
    requested = os.environ.get(ISA_ENV, "")
    if not requested:
        return supported[-1]
    choices = ", ".join(isa.value for isa in supported)
    known = ", ".join(isa.value for isa in Isa)
    try:
        isa = Isa(requested)
    except ValueError:
        raise KernelLibraryError(
            f"{ISA_ENV}={requested} is not one of {known} (supported here: {choices}); "
            f"unset it to use the fastest path"
        ) from None
    if isa not in supported:
        missing = ", ".join(sorted(isa.required_flags - cpu_flags()))
        raise KernelLibraryError(
            f"{ISA_ENV}={requested} needs CPU flags {missing} that this CPU lacks "
            f"(supported here: {choices}); unset it to use the fastest path"
        )
    return isa


def machine_key() -> str:
    """What a measured latency depends on: CPU model, CPU flags, onnxruntime version, the op
    library's content hash and the ISA path kernels created now take (`BITNET_ISA`)."""
    return _machine_for(str(library_path()), dispatch_isa().value)


@cache
def _machine_for(library: str, isa: str) -> str:
    flags = ",".join(sorted(cpu_flags()))
    return "|".join(
        [
            cpu_model() or "unknown-cpu",
            hashlib.sha256(flags.encode()).hexdigest()[:12],
            f"ort-{ort.__version__}",
            hashlib.sha256(Path(library).read_bytes()).hexdigest()[:16],
            isa,
        ]
    )


def cpu_model() -> str | None:
    """The CPU's model name in /proc/cpuinfo (None where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return None


def check_feeds(session: ort.InferenceSession, feeds: Mapping[str, np.ndarray]) -> None:
    """Raises ConfigError listing every feed `session` cannot take (missing, unknown, wrong dtype):
    onnxruntime's own error names only the first, without the inputs it has."""
    problems = []
    expected = {i.name: i for i in session.get_inputs()}
    for name in expected:
        if name not in feeds:
            problems.append(f"no array for model input {name!r}")
    for name, array in feeds.items():
        spec = expected.get(name)
        if spec is None:
            problems.append(f"{name!r} is not an input of the model (its inputs: {', '.join(expected)})")
            continue
        want = _NUMPY_TYPES.get(spec.type)
        if want is not None and np.asarray(array).dtype != want:
            problems.append(f"input {name!r} is {np.asarray(array).dtype}, the model takes {want}")
    if problems:
        raise ConfigError(problems, source="sample inputs")


_NUMPY_TYPES: Mapping[str, np.dtype] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(bool)": np.dtype(np.bool_),
}
