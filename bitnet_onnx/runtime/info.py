"""`bitnet-onnx info`: what this installation runs on — the op library, onnxruntime, the CPU
features the kernels look for, and the inner-loop path each op takes here."""

from __future__ import annotations

import platform
from dataclasses import dataclass

import onnxruntime as ort

from bitnet_onnx import runtime
from bitnet_onnx.core.errors import KernelLibraryError

__all__ = ["InstallInfo", "describe", "gather"]

_FEATURES = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
)


@dataclass(frozen=True)
class InstallInfo:
    library: str  # path, or the reason it cannot be used
    library_loads: bool
    onnxruntime: str
    cpu: str
    features: tuple[tuple[str, bool], ...]
    supported_paths: tuple[str, ...]
    dispatch: str  # the path kernels created now take, or why none can be chosen
    ops: tuple[str, ...]


def gather() -> InstallInfo:
    try:
        library = str(runtime.library_path())
        runtime.session_options()  # registers the library: proves it loads in this onnxruntime
        loads = True
    except KernelLibraryError as exc:
        library, loads = str(exc), False
    try:
        dispatch = runtime.dispatch_isa().value
    except KernelLibraryError as exc:
        dispatch = f"none: {exc}"
    flags = runtime.cpu_flags()
    return InstallInfo(
        library=library,
        library_loads=loads,
        onnxruntime=ort.__version__,
        cpu=runtime.cpu_model() or platform.processor() or platform.machine(),
        features=tuple((f, f in flags) for f in _FEATURES),
        supported_paths=tuple(isa.value for isa in runtime.supported_isas()),
        dispatch=dispatch,
        ops=runtime.OP_NAMES,
    )


def describe(info: InstallInfo | None = None) -> str:
    info = info or gather()
    status = "loads" if info.library_loads else "DOES NOT LOAD"
    lines = [
        f"op library:   {info.library} ({status})",
        f"domain:       {runtime.DOMAIN} (opset {runtime.OPSET_VERSION})",
        f"onnxruntime:  {info.onnxruntime}",
        f"cpu:          {info.cpu}",
        "features:     " + " ".join(f"{name}{'+' if on else '-'}" for name, on in info.features),
        f"paths here:   {', '.join(info.supported_paths)} (set {runtime.ISA_ENV} to force one)",
        "ops:",
    ]
    lines += [f"  {runtime.DOMAIN}.{op:<18} {info.dispatch}" for op in info.ops]
    return "\n".join(lines)
