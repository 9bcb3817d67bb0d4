"""Model files: atomic, deterministic writes (external data for large models), and onnxruntime
sessions for in-memory models whose weights may live in external files.

`write_model(model, path, base_dir)`:
1. Tensors that still reference external data (untouched weights of an input model with external
   data) are read from `base_dir`, the input model's folder, so the output never points into it.
2. A model whose tensors hold `EXTERNAL_DATA_THRESHOLD` bytes or more is saved with external data:
   every tensor of 1 KiB or more goes to `<file name>.data` next to the model (protobuf cannot hold
   2 GB in one message, and such files load lazily); with no tensor that large, the model file is all.
3. Everything is written into a fresh temporary folder inside the target folder and fsync'ed, then
   renamed into place with `os.replace`: the data file first, the model last. A reader never sees
   half a file, and an existing output stays as it was until the new one is complete; when anything
   fails (Ctrl-C included) the temporary folder is removed and the target is untouched (a previous
   data file is kept aside until the new model is in place, and put back if that fails). The two
   renames hold an exclusive lock on the target folder (flock on the folder itself, no lock file), so
   compiles racing to one output leave one writer's model with that writer's data file.
The bytes depend only on the model: protobuf serialization is deterministic for a given proto, and
external data is laid out in the model's tensor order.

`session_for(model, base_dir)` gives a session with the bitnet ops registered, for a model in
memory. External tensors are resolved against `base_dir` by onnxruntime itself (no copy); a model
too big to serialize in one message is written to a temporary folder with external data first.
With `prepack=False` onnxruntime leaves the weights where they lie instead of copying them into
its own matmul layouts: external ones stay memory-mapped, so a session run once or twice (the
original model validate compares against) costs no more memory than the weights it touches.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import onnx
import onnxruntime as ort
from onnx import external_data_helper

from bitnet_onnx import runtime
from bitnet_onnx.core.errors import UnsupportedModelError
from bitnet_onnx.core.graphs import tensor_protos

__all__ = ["EXTERNAL_DATA_THRESHOLD", "session_for", "tensor_bytes", "write_model"]

logger = logging.getLogger(__name__)

EXTERNAL_DATA_THRESHOLD = 1 << 30
"""Tensor bytes from which a model is saved with external data (1 GiB, half protobuf's limit)."""
_EXTERNAL_TENSOR_MIN = 1024  # smaller tensors stay inside the model file
_FATAL_ONLY = 4
_EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"
_DISABLE_PREPACKING_KEY = "session.disable_prepacking"


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes the model's tensors hold inline (external ones not counted)."""
    return sum(t.ByteSize() for t in tensor_protos(model) if t.data_location != onnx.TensorProto.EXTERNAL)


def _has_external(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in tensor_protos(model))


def _load_external(model: onnx.ModelProto, base_dir: Path | None) -> None:
    if not _has_external(model):
        return
    if base_dir is None:
        raise UnsupportedModelError(
            "the model references external data but no folder to read it from was given; "
            "compile the model from its file path"
        )
    external_data_helper.load_external_data_for_model(model, str(base_dir))


def _fsync(path: Path) -> None:
    with path.open("rb") as stream:
        os.fsync(stream.fileno())


def _replace_with_data(staged: Path, path: Path, staged_data: Path, data: Path) -> None:
    """Moves a staged model and its data file into place, data first. Should the model's move fail
    (Ctrl-C included), the previous data file, kept aside in the staging folder, is put back, so the
    previous model still finds its own data. The folder stays locked meanwhile (module docstring)."""
    previous = staged_data.with_name(f"previous.{data.name}")
    with _locked(path.parent):
        try:
            if data.exists():
                os.replace(data, previous)
            os.replace(staged_data, data)
            os.replace(staged, path)
        except BaseException:
            if previous.exists():
                os.replace(previous, data)
            elif not staged_data.exists():
                data.unlink(missing_ok=True)
            raise


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive flock on `folder` itself, released when the descriptor closes."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_model(model: onnx.ModelProto, path: str | os.PathLike[str], base_dir: Path | None = None) -> Path:
    """Write `model` to `path` atomically (see the module docstring); `model` gets its external
    tensors loaded. Returns the path written."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise UnsupportedModelError(
            f"cannot write {path}: the folder {folder} does not exist; create it first"
        )
    _load_external(model, base_dir)
    external = tensor_bytes(model) >= EXTERNAL_DATA_THRESHOLD
    data_name = f"{path.name}.data"
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder))
    try:
        staged = staging / path.name
        if external:
            onnx.save_model(
                model,
                staged,
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=_EXTERNAL_TENSOR_MIN,
            )
            external = (staging / data_name).exists()  # not when no tensor reaches _EXTERNAL_TENSOR_MIN
        if external:
            # onnx creates the data file private (0600); it gets the model file's mode (the umask's).
            os.chmod(staging / data_name, stat.S_IMODE(staged.stat().st_mode))
            _fsync(staging / data_name)
            _fsync(staged)
            _replace_with_data(staged, path, staging / data_name, folder / data_name)
        elif staged.exists():  # saved by onnx above, every tensor inside the model
            _fsync(staged)
            os.replace(staged, path)
        else:
            staged.write_bytes(model.SerializeToString())
            _fsync(staged)
            os.replace(staged, path)
    except OSError as exc:
        raise UnsupportedModelError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("wrote %s%s", path, f" (+ {data_name})" if external else "")
    return path


@contextlib.contextmanager
def _serialized(model: onnx.ModelProto, base_dir: Path | None) -> Iterator[tuple[bytes | str, Path | None]]:
    """(the model as bytes or as a path, the folder its external data lives in)."""
    if tensor_bytes(model) < EXTERNAL_DATA_THRESHOLD:
        if _has_external(model) and base_dir is None:
            raise UnsupportedModelError(
                "the model references external data but no folder to read it from was given"
            )
        yield model.SerializeToString(), base_dir if _has_external(model) else None
        return
    with tempfile.TemporaryDirectory(prefix="bitnet-onnx-session-") as tmp:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        write_model(copy, Path(tmp) / "model.onnx", base_dir)
        del copy  # its bytes are in the file now: freed before onnxruntime reads them again
        yield str(Path(tmp) / "model.onnx"), None


def session_for(
    model: onnx.ModelProto,
    base_dir: Path | None = None,
    threads: int | None = None,
    custom_op_libraries: Sequence[str | os.PathLike[str]] = (),
    *,
    prepack: bool = True,
) -> ort.InferenceSession:
    """A CPU session with the bitnet ops (and the user's `custom_op_libraries`) for an in-memory
    model (external data read from `base_dir`)."""
    with _serialized(model, base_dir) as (source, folder):
        options = runtime.session_options(threads, custom_op_libraries)
        options.log_severity_level = _FATAL_ONLY  # a failure comes back as an error; no stderr echo
        if not prepack:
            options.add_session_config_entry(_DISABLE_PREPACKING_KEY, "1")
        if folder is not None:
            options.add_session_config_entry(_EXTERNAL_FOLDER_KEY, str(Path(folder).resolve()))
        return runtime.session(source, options=options)
