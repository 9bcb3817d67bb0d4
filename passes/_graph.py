"""Models in and out: the one place that turns files and ModelProtos into onnx-graphsurgeon graphs and back.

- `load_model(source)` reads a path (opened read-only) or copies a ModelProto (the caller's object is
  never touched), refuses what is not a usable ONNX model (not protobuf, truncated, no ir_version,
  an ir_version or default-domain opset newer than the installed onnx knows, empty graph, names
  that are not UTF-8, graph inputs or outputs that are not tensors, values declared optional or
  map, node attributes whose value does not match their type or that are empty lists, sparse
  initializers) and validates external data without reading it: every
  `location` must be relative, stay inside the model's folder (no `..`, no symlink leading out) and
  name a file holding the bytes the tensor claims. All external-data problems are reported at once.
  A file's initializers of more than SMALL_CONSTANT elements are not read at all: `passes._inplace`
  turns them into external-data references to their bytes in the file itself, so from here on they
  are external data like any other (a compile reads each weight when it needs it, never the whole model).
- `import_graph(loaded)` gives the gs.Graph. Every initializer stays lazy (gs `LazyValues`); those
  with external data read from the model's folder when, and only when, a pass reads `.values`.
  `constant_values(constant)` reads a constant without keeping the values in the graph (a weight
  read to be converted is garbage once converted).
- `export_model(graph, info)` gives a ModelProto. Lazy initializers are copied proto to proto
  (gs's own export routes them through `RepeatedField.extend`, about 6x slower), and external ones
  stay references relative to the input model's folder (`LoadedModel.base_dir`, `ctx.model_dir`): a
  writer must resolve them against it. What gs drops is restored from `info`: the model's
  doc_string, domain, model_version and metadata_props, and each node's doc_string and
  metadata_props (matched by node name). Opset imports, custom domains, producer and ir_version
  come from the graph, which gs keeps (and extends with every domain a node uses).
  With `info`, the value_info the passes inferred is dropped again for tensors onnxruntime types
  itself (outputs of ONNX and com.microsoft nodes); the model's own entries and those of other
  domains' outputs (our ops, whose output type an attribute sets) stay. The inferred shapes would
  change what onnxruntime's optimizer fuses: with them it folds the residual Add into
  SkipLayerNormalization, which it cannot on the original, and on all-MiniLM-L6-v2 at batch 16
  (ORT 1.32, 1 thread, Zen 5) that made the original graph 1.10x slower. Without them a float
  layer's graph optimizes exactly as the original's (tests/e2e/test_ort_fusions.py).
- `stamp_annotations(model, annotations)` writes `PassContext.annotations` (node name →
  {key: value}) into the exported nodes' metadata_props, since gs cannot carry them.
- `weightless_model(graph)` is the graph's structure for onnx's checker, shape inference and
  version converter: big or external initializers become typed graph inputs, so those tools never
  copy or read weight bytes (and models over 2 GB stay under protobuf's limit). What they produce
  comes back through `apply_value_info` (inferred types and shapes onto the graph's tensors) or
  `adopt_structure` (a rewritten structure, e.g. opset-converted, with the original initializers
  re-attached).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from types import MappingProxyType

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_graphsurgeon as gs
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from onnx import external_data_helper
from onnx_graphsurgeon.ir.tensor import LazyValues

from bitnet_onnx.core.errors import UnsupportedModelError
from bitnet_onnx.core.graphs import all_graph_protos
from bitnet_onnx.passes._inplace import DIRECT_TYPES, InPlaceError, read_in_place

__all__ = [
    "SMALL_CONSTANT",
    "LoadedModel",
    "ModelInfo",
    "adopt_structure",
    "apply_value_info",
    "constant_values",
    "export_model",
    "import_graph",
    "is_lazy",
    "load_model",
    "stamp_annotations",
    "weightless_model",
]

# Initializers up to this many elements stay in `weightless_model` (shape inference reads small
# int64 tensors such as Reshape targets); anything bigger becomes a typed graph input.
SMALL_CONSTANT = 1024

_PROTOBUF_LIMIT = 2**31
_DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})


@dataclass(frozen=True)
class ModelInfo:
    """What onnx-graphsurgeon drops on import, kept to put back on export."""

    doc_string: str = ""
    domain: str = ""
    model_version: int = 0
    metadata_props: tuple[tuple[str, str], ...] = ()
    node_doc_strings: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    node_metadata: Mapping[str, tuple[tuple[str, str], ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    value_info: frozenset[str] = frozenset()  # the tensors the model itself declared in value_info

    @classmethod
    def of(cls, model: onnx.ModelProto) -> ModelInfo:
        docs: dict[str, str] = {}
        metadata: dict[str, tuple[tuple[str, str], ...]] = {}
        for graph in all_graph_protos(model.graph):
            for node in graph.node:
                if node.name and node.doc_string:
                    docs[node.name] = node.doc_string
                if node.name and node.metadata_props:
                    metadata[node.name] = tuple((p.key, p.value) for p in node.metadata_props)
        return cls(
            doc_string=model.doc_string,
            domain=model.domain,
            model_version=model.model_version,
            metadata_props=tuple((p.key, p.value) for p in model.metadata_props),
            node_doc_strings=MappingProxyType(docs),
            node_metadata=MappingProxyType(metadata),
            value_info=frozenset(v.name for graph in all_graph_protos(model.graph) for v in graph.value_info),
        )


@dataclass(frozen=True)
class LoadedModel:
    """A model read for compilation: our own copy of the proto, where its external data lives, and
    the metadata gs would lose. `origin` names the model in messages (its path, or `<ModelProto>`)."""

    proto: onnx.ModelProto
    origin: str
    base_dir: Path | None
    info: ModelInfo


def load_model(
    source: str | os.PathLike[str] | onnx.ModelProto, *, base_dir: str | Path | None = None
) -> LoadedModel:
    """Read `source` (a path, opened read-only, or a ModelProto, copied) and check it can be compiled.

    External data is resolved against the model file's folder, or `base_dir` for a ModelProto.
    Raises UnsupportedModelError naming the file and what is wrong with it.
    """
    if isinstance(source, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(source)
        origin = "<ModelProto>"
        folder = Path(base_dir) if base_dir is not None else None
    else:
        path = Path(source)
        origin = str(path)
        proto = _read_file(path) if base_dir is None else _read_proto(path)
        folder = Path(base_dir) if base_dir is not None else path.parent
    _check_structure(proto, origin)
    problems = _external_data_problems(proto, folder)
    if problems:
        where = f" (the model's folder is {folder})" if folder is not None else ""
        raise UnsupportedModelError(
            f"{origin}: external data cannot be used{where}:\n"
            + "\n".join(f"  - {p}" for p in problems)
            + "\nKeep external data files inside the model's folder and reference them by relative location."
        )
    return LoadedModel(proto=proto, origin=origin, base_dir=folder, info=ModelInfo.of(proto))


def _read_file(path: Path) -> onnx.ModelProto:
    """The model in `path`, big initializers referenced in place when the file lies in its folder
    (not reached through a symlink from elsewhere, which the references could not name)."""
    try:
        own_folder = path.is_file() and path.resolve().parent == path.parent.resolve()
    except OSError:
        own_folder = False
    if own_folder and "\\" not in path.name:
        try:
            return read_in_place(path, SMALL_CONSTANT)
        except (InPlaceError, OSError):
            pass  # the ordinary read says what is wrong with the file
    return _read_proto(path)


def _read_proto(path: Path) -> onnx.ModelProto:
    try:
        with path.open("rb") as stream:
            data = stream.read()
    except FileNotFoundError:
        raise UnsupportedModelError(f"{path}: no such file; pass the path of an .onnx model") from None
    except IsADirectoryError:
        raise UnsupportedModelError(f"{path}: is a folder; pass the path of an .onnx model file") from None
    except OSError as exc:
        raise UnsupportedModelError(f"{path}: cannot be read ({exc.strerror})") from exc
    if not data:
        raise UnsupportedModelError(f"{path}: the file is empty; it is not an ONNX model")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except DecodeError as exc:
        hint = (
            "models over 2 GB must keep their weights as external data"
            if len(data) >= _PROTOBUF_LIMIT
            else "the file is not an ONNX model, or it is truncated or corrupted"
        )
        raise UnsupportedModelError(
            f"{path}: cannot be parsed as an ONNX ModelProto ({exc}); {hint}"
        ) from None
    return proto


# TypeProto kinds onnx-graphsurgeon cannot carry through an export (it keeps the TypeProto as a
# dtype and fails on it).
_UNSUPPORTED_VALUE_TYPES = frozenset({"optional_type", "map_type", "opaque_type"})


def _check_structure(proto: onnx.ModelProto, origin: str) -> None:
    if proto.ir_version <= 0:
        raise UnsupportedModelError(
            f"{origin}: has no ir_version, so it is not an ONNX model (or it is truncated); "
            "re-export it with an ONNX exporter"
        )
    if proto.ir_version > onnx.IR_VERSION:
        raise UnsupportedModelError(
            f"{origin}: ir_version {proto.ir_version} is newer than onnx {onnx.__version__} reads (up to "
            f"{onnx.IR_VERSION}); upgrade onnx, or re-export the model for an older ONNX"
        )
    newest = onnx.defs.onnx_opset_version()
    for opset in proto.opset_import:
        if opset.domain in _DEFAULT_DOMAINS and opset.version > newest:
            raise UnsupportedModelError(
                f"{origin}: imports opset {opset.version} of the default domain, newer than onnx "
                f"{onnx.__version__} knows (up to {newest}); re-export the model at opset {newest} or older"
            )
    if not proto.graph.node:
        raise UnsupportedModelError(f"{origin}: the graph is empty (no nodes); there is nothing to compile")
    garbled = list(_garbled_text(proto, "model"))
    if garbled:
        shown = ", ".join(garbled[:5]) + (f" and {len(garbled) - 5} more" if len(garbled) > 5 else "")
        verb = "is" if len(garbled) == 1 else "are"
        raise UnsupportedModelError(
            f"{origin}: {shown} {verb} not valid UTF-8 text: the file is corrupted (or its exporter is "
            "broken); re-export the model"
        )
    for kind, values in (("input", proto.graph.input), ("output", proto.graph.output)):
        for value in values:
            declared = value.type.WhichOneof("value")
            if declared != "tensor_type":
                raise UnsupportedModelError(
                    f"{origin}: graph {kind} {value.name!r} is not declared as a tensor (its type is "
                    f"{declared or 'empty'}); bitnet-onnx compiles models whose graph inputs and outputs "
                    "are dense tensors: declare a tensor type and re-export"
                )
    for graph in all_graph_protos(proto.graph):
        for value in graph.value_info:
            declared = value.type.WhichOneof("value")
            if declared in _UNSUPPORTED_VALUE_TYPES:
                raise UnsupportedModelError(
                    f"{origin}: value {value.name!r} of graph {graph.name!r} is declared with the type "
                    f"{declared}, which bitnet-onnx does not compile (values must be tensors or "
                    "sequences of tensors); re-export the model without it"
                )
    bad = [problem for graph in all_graph_protos(proto.graph) for problem in _attribute_problems(graph)]
    if bad:
        shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise UnsupportedModelError(
            f"{origin}: {shown}. The file is corrupted or its exporter is broken: re-export the model "
            "(an empty list attribute can be left out instead)"
        )
    sparse = [t.values.name for g in all_graph_protos(proto.graph) for t in g.sparse_initializer]
    if sparse:
        what = "is a sparse initializer" if len(sparse) == 1 else "are sparse initializers"
        raise UnsupportedModelError(
            f"{origin}: {', '.join(map(repr, sparse))} {what}, which bitnet-onnx does not compile; store "
            "dense tensors instead (numpy_helper.from_array, in graph.initializer) and re-export"
        )


_A = onnx.AttributeProto
# The field that holds an attribute's value, by its declared type.
_ATTRIBUTE_FIELDS = {
    _A.FLOAT: "f", _A.INT: "i", _A.STRING: "s", _A.TENSOR: "t", _A.GRAPH: "g",
    _A.SPARSE_TENSOR: "sparse_tensor", _A.TYPE_PROTO: "tp", _A.FLOATS: "floats", _A.INTS: "ints",
    _A.STRINGS: "strings", _A.TENSORS: "tensors", _A.GRAPHS: "graphs",
    _A.SPARSE_TENSORS: "sparse_tensors", _A.TYPE_PROTOS: "type_protos",
}  # fmt: skip
_SINGULAR_FIELDS = frozenset({"f", "i", "s", "t", "g", "sparse_tensor", "tp"})


def _attribute_problems(graph: onnx.GraphProto) -> Iterator[str]:
    """Node attributes whose declared type is unknown, whose value sits in another type's field, or
    that are empty lists: onnx-graphsurgeon reads a value by the declared type and cannot write back
    an empty list (it infers the type from the elements)."""
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.ref_attr_name:  # a function's reference to its caller's attribute
                continue
            where = f"attribute {attribute.name!r} of node {node.name or node.op_type!r}"
            declared = _ATTRIBUTE_FIELDS.get(attribute.type)
            held = [
                name
                for name in _ATTRIBUTE_FIELDS.values()
                if (attribute.HasField(name) if name in _SINGULAR_FIELDS else len(getattr(attribute, name)))
            ]
            if declared is None:
                yield f"{where} has no valid type (type={attribute.type})"
            elif any(name != declared for name in held):
                kind = onnx.AttributeProto.AttributeType.Name(attribute.type)
                yield f"{where} is declared {kind} but holds {', '.join(held)}"
            elif declared not in _SINGULAR_FIELDS and not held:
                kind = onnx.AttributeProto.AttributeType.Name(attribute.type)
                yield f"{where} is an empty {kind} list"


_TEXT_OR_MESSAGE = (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE)


def _garbled_text(message: Message, path: str) -> Iterator[str]:
    """The paths of string fields (names, op types, domains) that hold invalid UTF-8: protobuf
    parses them, then hands them over as bytes instead of str. Tensor data is never read."""
    for descriptor in message.DESCRIPTOR.fields:
        if descriptor.type not in _TEXT_OR_MESSAGE:
            continue
        name = descriptor.name
        value = getattr(message, name)
        single = isinstance(value, (str, bytes, Message))
        if single and not message.HasField(name):
            continue
        for i, item in enumerate([value] if single else value):
            where = f"{path}.{name}" if single else f"{path}.{name}[{i}]"
            if isinstance(item, Message):
                yield from _garbled_text(item, where)
            elif isinstance(item, bytes):
                yield where


# -- external data -----------------------------------------------------------------------------


def _all_tensor_protos(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    nodes: list[onnx.NodeProto] = []
    for graph in all_graph_protos(model.graph):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        nodes.extend(graph.node)
    for function in model.functions:
        nodes.extend(function.node)
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors


def _external_data_problems(model: onnx.ModelProto, folder: Path | None) -> list[str]:
    problems: list[str] = []
    sizes: dict[Path, int] = {}
    for tensor in _all_tensor_protos(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        if folder is None:
            problems.append(
                f"tensor {tensor.name!r} keeps its data in an external file, but the model was given as a "
                "ModelProto without base_dir; pass base_dir=<folder of the model file>"
            )
            continue
        problem = _location_problem(tensor, folder, sizes)
        if problem:
            problems.append(problem)
    return problems


def _location_problem(tensor: onnx.TensorProto, folder: Path, sizes: dict[Path, int]) -> str | None:
    entries = {e.key: e.value for e in tensor.external_data}
    location = entries.get("location", "")
    name = repr(tensor.name)
    if not location:
        return f"tensor {name} is marked external but has no location"
    posix = PurePosixPath(location.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(location).is_absolute() or PureWindowsPath(location).drive:
        return f"tensor {name}: location {location!r} is an absolute path"
    if ".." in posix.parts:
        return f"tensor {name}: location {location!r} leaves the model's folder through '..'"
    root = folder.resolve()
    target = (root / posix).resolve()
    if not target.is_relative_to(root):
        return (
            f"tensor {name}: location {location!r} resolves to {target}, "
            "outside the model's folder (a symlink)"
        )
    if target not in sizes:
        if not target.is_file():
            return f"tensor {name}: external data file {location!r} does not exist in {root}"
        sizes[target] = target.stat().st_size
    try:
        offset = int(entries.get("offset", "0"))
        length = int(entries["length"]) if "length" in entries else None
    except ValueError:
        offsets = f"{entries.get('offset')!r}/{entries.get('length')!r}"
        return f"tensor {name}: offset/length {offsets} are not integers"
    expected = math.prod(tensor.dims) * _itemsize(tensor.data_type)
    needed = offset + (length if length is not None else expected)
    if offset < 0 or (length is not None and length < 0) or needed > sizes[target]:
        return (
            f"tensor {name}: needs bytes {offset}..{needed} of {location!r}, which has {sizes[target]} bytes "
            "(the data file is truncated or belongs to another model)"
        )
    return None


def _itemsize(data_type: int) -> int:
    # Sub-byte types (INT4, UINT4, FLOAT4E2M1) round up: this only bounds what a file must hold.
    try:
        return max(1, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize)
    except (KeyError, TypeError, ValueError):
        return 1


class _ExternalValues(LazyValues):
    """LazyValues that reads external data relative to the model's folder (gs's own reads relative
    to the working directory), without storing the bytes in the tensor proto as onnx's reader does."""

    def __init__(self, tensor: onnx.TensorProto, base_dir: Path) -> None:
        super().__init__(tensor)
        self.base_dir = base_dir

    def load(self) -> np.ndarray:
        try:
            return _read_external(self.tensor, self.base_dir)
        except (OSError, ValueError, onnx.checker.ValidationError) as exc:
            raise UnsupportedModelError(
                f"cannot read the external data of tensor {self.tensor.name!r} from {self.base_dir}: {exc}; "
                "was the data file moved or changed during the compile?"
            ) from exc


def _read_external(tensor: onnx.TensorProto, base_dir: Path) -> np.ndarray:
    dtype = DIRECT_TYPES.get(tensor.data_type)
    if dtype is None:  # onnx's reader stores what it reads in the proto: give it a copy
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        return np.array(onnx.numpy_helper.to_array(copy, base_dir=str(base_dir)))
    info = external_data_helper.ExternalDataInfo(tensor)
    count = math.prod(tensor.dims)
    if info.length is not None and info.length != count * dtype.itemsize:
        raise ValueError(f"{info.length} bytes stored for {count} {dtype.name} values")
    values = np.fromfile(base_dir / info.location, dtype=dtype, count=count, offset=info.offset or 0)
    if values.size != count:
        raise ValueError(f"{info.location} ends {count - values.size} values early")
    return values.astype(dtype.newbyteorder("="), copy=False).reshape(tuple(tensor.dims))


# -- gs import / export ------------------------------------------------------------------------


def _values_of(constant: gs.Constant) -> np.ndarray | LazyValues:
    # gs has no public way to reach a Constant's values without loading them (`.values` does).
    return constant._values


def constant_values(constant: gs.Constant) -> np.ndarray:
    """The values of `constant`. A lazy one is read without keeping the values in it (every call
    reads again), so a pass that converts a weight holds it only while it converts it."""
    values = _values_of(constant)
    return values.load() if isinstance(values, LazyValues) else values


def is_lazy(constant: gs.Constant) -> bool:
    """True while a Constant's bytes have not been read (no pass has touched `.values`)."""
    return isinstance(_values_of(constant), LazyValues)


def _graph_constants(graph: gs.Graph) -> Iterator[gs.Constant]:
    """Every Constant of `graph` and its subgraphs, including Constant-node attribute values."""
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant):
            yield tensor
    for node in graph.nodes:
        for value in node.attrs.values():
            if isinstance(value, gs.Constant):
                yield value
        for sub in node.subgraphs():
            yield from _graph_constants(sub)


def import_graph(loaded: LoadedModel) -> gs.Graph:
    """The gs.Graph of a loaded model; initializers stay unread until a pass reads `.values`."""
    try:
        graph = gs.import_onnx(loaded.proto)
    except Exception as exc:  # gs raises its own exception type or plain errors on malformed input
        raise UnsupportedModelError(f"{loaded.origin}: onnx-graphsurgeon cannot import it: {exc}") from exc
    if loaded.base_dir is not None:
        for constant in _graph_constants(graph):
            values = _values_of(constant)
            if isinstance(values, LazyValues) and values.tensor.data_location == onnx.TensorProto.EXTERNAL:
                constant.values = _ExternalValues(values.tensor, loaded.base_dir)
    return graph


def _structure(graph: gs.Graph) -> gs.Graph:
    """A copy to export from (nodes and tensors copied, values shared; gs's copy drops the producer)."""
    structure = graph.copy()
    structure.producer_name, structure.producer_version = graph.producer_name, graph.producer_version
    return structure


def _strip_constants(structure: gs.Graph, keep: int | None) -> list[tuple[str, onnx.TensorProto | None]]:
    """Turns the main-graph Constants of a *copy* into typed Variables: the lazy ones (all of them when
    `keep` is None), or every one above `keep` elements or stored externally. Returns (name, the
    lazy source proto or None) per stripped tensor, in graph order."""
    stripped: list[tuple[str, onnx.TensorProto | None]] = []
    for tensor in list(structure.tensors().values()):
        if not isinstance(tensor, gs.Constant):
            continue
        values = _values_of(tensor)
        source = values.tensor if isinstance(values, LazyValues) else None
        if keep is None:
            strip = source is not None
        else:
            external = source is not None and source.data_location == onnx.TensorProto.EXTERNAL
            strip = external or math.prod(tensor.shape) > keep
        if strip:
            dtype, shape = tensor.export_dtype, list(tensor.shape)
            tensor.to_variable(dtype=dtype, shape=shape)
            tensor.type = "tensor_type"
            stripped.append((tensor.name, source))
    return stripped


def _export(structure: gs.Graph) -> onnx.ModelProto:
    """gs.export_onnx with the opset imports in a fixed order (the ONNX domain first, then by name):
    gs appends the custom domains in set order, which changes with the process's string hashing, and
    compiling twice must give the same bytes."""
    model = gs.export_onnx(structure, do_type_check=False)
    opsets = sorted((o.domain not in ("", "ai.onnx"), o.domain, o.version) for o in model.opset_import)
    del model.opset_import[:]
    model.opset_import.extend(onnx.helper.make_opsetid(domain, version) for _, domain, version in opsets)
    return model


def export_model(graph: gs.Graph, info: ModelInfo | None = None) -> onnx.ModelProto:
    """The ModelProto of `graph` (see the module docstring for what is kept and restored)."""
    structure = _structure(graph)
    stripped = _strip_constants(structure, keep=None)
    model = _export(structure)
    names = {name for name, _ in stripped}
    kept_info = [v for v in model.graph.value_info if v.name not in names]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept_info)
    for name, source in stripped:
        tensor = model.graph.initializer.add()
        tensor.CopyFrom(source)
        tensor.name = name
    if info is not None:
        _restore(model, info)
        _drop_inferred_value_info(model, info.value_info)
    return model


_ONNXRUNTIME_TYPED = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})
"""Domains whose nodes onnxruntime types and shapes by its own inference when it loads a model."""


def _drop_inferred_value_info(model: onnx.ModelProto, declared: frozenset[str]) -> None:
    for graph in all_graph_protos(model.graph):
        typed = {name for node in graph.node if node.domain in _ONNXRUNTIME_TYPED for name in node.output}
        kept = [v for v in graph.value_info if v.name in declared or v.name not in typed]
        del graph.value_info[:]
        graph.value_info.extend(kept)


def _restore(model: onnx.ModelProto, info: ModelInfo) -> None:
    model.doc_string = info.doc_string
    model.domain = info.domain
    model.model_version = info.model_version
    for key, value in info.metadata_props:
        model.metadata_props.add(key=key, value=value)
    for graph in all_graph_protos(model.graph):
        for node in graph.node:
            if node.name in info.node_doc_strings:
                node.doc_string = info.node_doc_strings[node.name]
            for key, value in info.node_metadata.get(node.name, ()):
                node.metadata_props.add(key=key, value=value)


def stamp_annotations(
    model: onnx.ModelProto, annotations: Mapping[str, Mapping[str, str]]
) -> tuple[str, ...]:
    """Writes annotations into node metadata_props in place (a key already there gets the new value).

    Returns the annotated node names that `model` does not contain (nodes a later pass removed), in
    sorted order, so the caller can decide whether that matters.
    """
    found: set[str] = set()
    for graph in all_graph_protos(model.graph):
        for node in graph.node:
            props = annotations.get(node.name)
            if props is None:
                continue
            found.add(node.name)
            existing = {p.key: p for p in node.metadata_props}
            for key, value in props.items():
                if key in existing:
                    existing[key].value = str(value)
                else:
                    node.metadata_props.add(key=key, value=str(value))
    return tuple(sorted(set(annotations) - found))


def weightless_model(graph: gs.Graph) -> tuple[onnx.ModelProto, frozenset[str]]:
    """The structure of `graph` with its big or external initializers as typed graph inputs.

    Returns the model and the names turned into inputs. Small embedded initializers stay, so shape
    inference can still read Reshape targets and the like.
    """
    structure = _structure(graph)
    stripped = _strip_constants(structure, keep=SMALL_CONSTANT)
    by_name = structure.tensors()
    structure.inputs.extend(by_name[name] for name, _ in stripped)
    return _export(structure), frozenset(name for name, _ in stripped)


def apply_value_info(graph: gs.Graph, model: onnx.ModelProto) -> int:
    """Copies dtype and shape from `model` (e.g. the shape-inferred weightless model of `graph`) onto
    the main-graph tensors of `graph` that lack them. Returns how many tensors gained information."""
    inferred = gs.import_onnx(model).tensors()
    gained = 0
    for name, tensor in graph.tensors().items():
        source = inferred.get(name)
        if not isinstance(tensor, gs.Variable) or not isinstance(source, gs.Variable):
            continue
        changed = False
        if tensor.dtype is None and source.dtype is not None:
            tensor.dtype, changed = source.dtype, True
        if tensor.shape is None and source.shape is not None:
            tensor.shape, changed = source.shape, True
        gained += changed
    return gained


def adopt_structure(graph: gs.Graph, model: onnx.ModelProto, stripped: frozenset[str]) -> None:
    """Replaces `graph`'s nodes, inputs, outputs, opsets and functions with those of `model`, a
    processed `weightless_model(graph)`; the inputs named in `stripped` become the original
    initializers again (their values are not read)."""
    originals = graph.tensors()
    new = gs.import_onnx(model)
    for tensor in new.inputs:
        if tensor.name in stripped:
            tensor.to_constant(_values_of(originals[tensor.name]))
    graph.nodes = new.nodes
    graph.inputs = [t for t in new.inputs if t.name not in stripped]
    graph.outputs = new.outputs
    graph.opset = new.opset
    graph.import_domains = new.import_domains
    graph.ir_version = new.ir_version
    graph.functions = new.functions
