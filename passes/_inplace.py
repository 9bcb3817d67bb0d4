"""Reading a model file without reading its weights: big inline initializers referenced in place.

`read_in_place(path, min_elements)` returns the ModelProto of `path` in which every main-graph
initializer of more than `min_elements` elements whose bytes are stored inline (`raw_data`) is an
external-data reference to those very bytes of `path` (`location` = the file's name, `offset` and
`length` of the raw_data payload). The rest of the compiler already treats external data lazily:
a weight is read from the file when a pass needs it, and onnxruntime reads it for a session. So a
compile never holds the input's weights all at once, and a copy of the model (validate's original)
costs only its structure.

How: the file is walked at the protobuf wire level with positioned reads (ModelProto.graph → its
`initializer` entries → each TensorProto's fields). Every byte outside those initializers' raw_data
is copied as it is; each referenced initializer is re-serialized without raw_data, with
`data_location = EXTERNAL` and the reference. Parsing the result gives the same model as parsing
the file, except for the references. Left inline: initializers of other element types than the
byte-aligned ones `DIRECT_TYPES` lists, or whose raw_data length is not their element count times
the item size, or that already name a data location; subgraph initializers and Constant nodes.

A file the walk cannot follow (not protobuf, truncated) raises `InPlaceError`; the caller then reads
it the ordinary way, which reports what is wrong with it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

__all__ = ["DIRECT_TYPES", "InPlaceError", "read_in_place"]

DIRECT_TYPES: dict[int, np.dtype] = {
    t: np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t)).newbyteorder("<")
    for t in (
        TensorProto.FLOAT,
        TensorProto.FLOAT16,
        TensorProto.DOUBLE,
        TensorProto.INT8,
        TensorProto.UINT8,
        TensorProto.INT16,
        TensorProto.UINT16,
        TensorProto.INT32,
        TensorProto.UINT32,
        TensorProto.INT64,
        TensorProto.UINT64,
        TensorProto.BOOL,
    )
}
"""Element types whose raw_data is the little-endian numpy array itself (no packing, no bit tricks)."""

_LEN = 2  # wire type of length-delimited fields
_MODEL_GRAPH = 7  # ModelProto.graph
_GRAPH_INITIALIZER = 5  # GraphProto.initializer
_TENSOR_RAW_DATA = 9  # TensorProto.raw_data
_TENSOR_EXTERNAL_DATA = 13
_TENSOR_DATA_LOCATION = 14


class InPlaceError(Exception):
    """The file is not a protobuf message this walk can follow."""


class _File:
    """Positioned reads of a file. Not a memory map: touching one header of a mapped file maps
    whole (large) page-cache folios into the process, megabytes of weights per initializer."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def read(self, start: int, stop: int) -> bytes:
        data = os.pread(self.fd, stop - start, start)
        if len(data) != stop - start:
            raise InPlaceError("the file ends inside a field")
        return data

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        head = os.pread(self.fd, min(10, end - pos), pos)
        value = 0
        for i, byte in enumerate(head):
            value |= (byte & 0x7F) << (7 * i)
            if byte < 0x80:
                return value, pos + i + 1
        raise InPlaceError("truncated or overlong varint")


def _fields(file: _File, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, field start, payload start, field end) of each field in [start, end)."""
    pos = start
    while pos < end:
        key, payload = file.varint(pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, stop = file.varint(payload, end)
        elif wire == 1:
            stop = payload + 8
        elif wire == _LEN:
            length, payload = file.varint(payload, end)
            stop = payload + length
        elif wire == 5:
            stop = payload + 4
        else:  # groups (3, 4) are not used by onnx.proto
            raise InPlaceError(f"wire type {wire}")
        if number == 0 or stop > end:
            raise InPlaceError("field beyond its message")
        yield number, wire, pos, payload, stop
        pos = stop


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | _LEN) + _encode_varint(len(payload)) + payload


def _reference(file: _File, start: int, end: int, location: str, min_elements: int) -> bytes | None:
    """The initializer in [start, end) re-serialized as a reference to its raw_data, or None to keep it."""
    raw: tuple[int, int] | None = None
    rest = []
    for number, wire, field_start, payload, stop in _fields(file, start, end):
        if number in (_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION):
            return None
        if number == _TENSOR_RAW_DATA and wire == _LEN:
            if raw is not None:
                return None  # repeated raw_data: the last wins; not worth following
            raw = (payload, stop)
        else:
            rest.append(file.read(field_start, stop))
    if raw is None:
        return None
    tensor = TensorProto()
    tensor.ParseFromString(b"".join(rest))
    elements = math.prod(tensor.dims)
    dtype = DIRECT_TYPES.get(tensor.data_type)
    if dtype is None or elements <= min_elements or raw[1] - raw[0] != elements * dtype.itemsize:
        return None
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(raw[0])), ("length", str(raw[1] - raw[0]))):
        tensor.external_data.add(key=key, value=value)
    return tensor.SerializeToString()


def _graph(file: _File, start: int, end: int, location: str, min_elements: int) -> bytes:
    parts = []
    for number, wire, field_start, payload, stop in _fields(file, start, end):
        stub = None
        if number == _GRAPH_INITIALIZER and wire == _LEN:
            stub = _reference(file, payload, stop, location, min_elements)
        parts.append(file.read(field_start, stop) if stub is None else _length_delimited(number, stub))
    return b"".join(parts)


def read_in_place(path: Path, min_elements: int) -> onnx.ModelProto:
    """The model in `path` with its big inline initializers referenced in place (module docstring)."""
    with path.open("rb") as stream:
        file = _File(stream.fileno())
        size = os.fstat(stream.fileno()).st_size
        if size == 0:
            raise InPlaceError("the file is empty")
        parts = []
        for number, wire, field_start, payload, stop in _fields(file, 0, size):
            if number == _MODEL_GRAPH and wire == _LEN:
                parts.append(_length_delimited(number, _graph(file, payload, stop, path.name, min_elements)))
            else:
                parts.append(file.read(field_start, stop))
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(b"".join(parts))
    except Exception as exc:  # protobuf's DecodeError, or a RuntimeError from upb
        raise InPlaceError(str(exc)) from None
    return proto
