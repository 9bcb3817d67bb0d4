"""The catalogue of bad and unusual inputs: what each one gets, through `compile()` and the command line.

`CATALOGUE` is the table README.md shows under "Bad inputs" (a test keeps the two equal). An entry
whose outcome is an error type is refused: `compile()` raises exactly that type with the entry's
key words, nothing is written, and `bitnet-onnx compile` exits 2 with the message on stderr and no
traceback (`test_refused`, `test_refused_on_the_command_line`; the inputs are made by `REFUSED`).
An entry that compiles has its own test, named after its key, checking the documented behaviour
and the compiled model's numbers.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from bitnet_onnx import runtime
from bitnet_onnx.cli import EXIT_OK, EXIT_USER_ERROR, main
from bitnet_onnx.compiler.compile import CompileResult, compile
from bitnet_onnx.config.config import MixedPrecisionConfig, MixedPrecisionStrategy
from bitnet_onnx.config.policy import (
    ConditionOperator,
    ConditionType,
    PolicyAction,
    PolicyCondition,
    PolicyRule,
    PrecisionPolicy,
)
from bitnet_onnx.config.report import THRESHOLDS, compare_outputs
from bitnet_onnx.core.dtypes import DType, TernaryScale, WeightLayout
from bitnet_onnx.core.errors import (
    ConversionError,
    KernelLibraryError,
    MixedPrecisionError,
    UnsupportedModelError,
)
from bitnet_onnx.core.layers import LayerType
from bitnet_onnx.runtime import model_file
from models import llama

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
README = REPO / "README.md"
BALANCED = THRESHOLDS[MixedPrecisionConfig.balanced().strategy]


pytestmark = pytest.mark.usefixtures("ops_lib")


# -- the catalogue ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One row of the README table. `outcome` is the error type, or None when the input compiles;
    `words` is the regular expression the error message must match."""

    case: str
    outcome: type[MixedPrecisionError] | None
    gist: str
    words: str = ""

    def row(self) -> str:
        outcome = f"`{self.outcome.__name__}`" if self.outcome else "compiles"
        return f"| {self.case} | {outcome} | {self.gist} |"


_NOT_PARSED = r"cannot be parsed as an ONNX ModelProto .*; the file is not an ONNX model, or it is truncated"
_REBUILD = r"rebuild it with `pip install --no-build-isolation -e \.`"

CATALOGUE: dict[str, Entry] = {
    "text_file": Entry(
        "a text file",
        UnsupportedModelError,
        "cannot be parsed as an ONNX ModelProto; not an ONNX model, or truncated or corrupted",
        _NOT_PARSED,
    ),
    "png_file": Entry("PNG bytes", UnsupportedModelError, "as a text file", _NOT_PARSED),
    "empty_file": Entry(
        "an empty file",
        UnsupportedModelError,
        "the file is empty",
        r"m\.onnx: the file is empty; it is not an ONNX model",
    ),
    "truncated": Entry("the first half of a model", UnsupportedModelError, "as a text file", _NOT_PARSED),
    "corrupted": Entry(
        "a model with every 97th byte flipped", UnsupportedModelError, "as a text file", _NOT_PARSED
    ),
    "graph_proto": Entry(
        "a GraphProto saved instead of a ModelProto",
        UnsupportedModelError,
        "has no ir_version, so it is not an ONNX model",
        r"has no ir_version, so it is not an ONNX model .*re-export it",
    ),
    "directory": Entry(
        "a folder",
        UnsupportedModelError,
        "is a folder; pass the path of an .onnx model file",
        r"is a folder; pass the path of an \.onnx model file",
    ),
    "missing_file": Entry(
        "a path that does not exist",
        UnsupportedModelError,
        "no such file",
        r"nope\.onnx: no such file; pass the path of an \.onnx model",
    ),
    "empty_graph": Entry(
        "a graph without nodes",
        UnsupportedModelError,
        "the graph is empty; there is nothing to compile",
        r"the graph is empty \(no nodes\); there is nothing to compile",
    ),
    "newer_ir_version": Entry(
        "an ir_version newer than onnx reads",
        UnsupportedModelError,
        "names both versions; upgrade onnx or re-export",
        r"ir_version 99 is newer than onnx .* reads \(up to \d+\); upgrade onnx",
    ),
    "newer_opset": Entry(
        "a default-domain opset newer than onnx knows",
        UnsupportedModelError,
        "names both opsets; re-export at the newest or older",
        r"imports opset 99 of the default domain, newer than onnx .*; re-export the model at opset \d+ "
        r"or older",
    ),
    "old_opset": Entry(
        "opset 9 or 11", None, "upgraded to opset 17; the normalize record has the `upgrade_opset` change"
    ),
    "ir_version_3": Entry(
        "ir_version 3 (initializers listed as graph inputs)",
        None,
        "raised to 4; the normalize record has the `upgrade_ir_version` change",
    ),
    "unconvertible_opset": Entry(
        "an old opset onnx's converter cannot upgrade (GRU at opset 6)",
        UnsupportedModelError,
        "the converter's reason; re-export at opset 17 or newer",
        r"uses opset 6, below the 17 bitnet-onnx needs, and onnx's version converter cannot upgrade it: "
        r".*GRU.*Re-export the model at opset 17",
    ),
    "invalid_graph": Entry(
        "a node reading a tensor nothing produces",
        UnsupportedModelError,
        "onnx.checker's message naming the node; fix it and re-export",
        r"is not a valid ONNX model: .*'nothing'.*\nFix what onnx.checker names",
    ),
    "cycle": Entry(
        "a cycle",
        UnsupportedModelError,
        "names the nodes on it",
        r"has a cycle: 4 nodes wait on each other \('/fc1/MatMul'",
    ),
    "unknown_op": Entry(
        "a default-domain op neither ONNX nor onnxruntime defines",
        UnsupportedModelError,
        "lists each node and op",
        r"uses ops that neither ONNX nor onnxruntime define at opset 17:\n  - node '/act/Relu': op 'Rleu'",
    ),
    "output_without_shape": Entry(
        "a graph output declared without a shape", None, "gets the shape inference gives it"
    ),
    "input_without_shape": Entry(
        "a graph input declared without a shape (not even a rank)",
        UnsupportedModelError,
        "names the input; declare a shape (symbolic dims are fine)",
        r"input 'x' has no shape, not even a rank, which ONNX requires .*; declare it",
    ),
    "symbolic_dims": Entry(
        "symbolic dims everywhere",
        None,
        "compiles with their values (`dims=`, `--dim NAME=N`) or `--inputs`",
    ),
    "symbolic_dim_without_value": Entry(
        "a symbolic dim no default covers, without `--dim` or `--inputs`",
        UnsupportedModelError,
        "names input, axis and dim; `--dim NAME=N` or `--inputs`",
        r"input 'x' axis 1 has 'width' symbolic size that no default covers; give its value with "
        r"dims=\{'width': 8\} \(CLI: --dim width=8\)",
    ),
    "unnamed_dim_without_inputs": Entry(
        "an unknown, unnamed dim without `--inputs`",
        UnsupportedModelError,
        "names input and axis; `--inputs`",
        r"input 'x' axis 0 has an unknown size without a name, so no dim can set it; pass the inputs as an "
        r"\.npz \(CLI: --inputs\)",
    ),
    "negative_dim_without_inputs": Entry(
        "a fixed dim of -1 (some exporters' dynamic dim) without `--inputs`",
        UnsupportedModelError,
        "as an unnamed dim",
        r"input 'x' axis 0 has an unknown size without a name, so no dim can set it; pass the inputs",
    ),
    "control_flow": Entry(
        "If / Loop / Scan subgraphs",
        None,
        "layers inside are left as they are, with a warning naming the control-flow node and the nodes "
        "inside; the rest compiles",
    ),
    "custom_op": Entry(
        "an op of an unknown custom domain",
        None,
        "passed through with a warning; validation registers its library (`custom_op_libraries=`, "
        "`--custom-ops LIB`)",
    ),
    "custom_op_without_library": Entry(
        "... without its library",
        KernelLibraryError,
        "names the op and domain; pass the library",
        r"op 'Double' of the custom domain 'acme\.ops' is not registered\. Pass the shared library that "
        r"implements the 'acme\.ops' ops: compile\(\.\.\., custom_op_libraries=.*--custom-ops lib\.so",
    ),
    "custom_op_library_missing": Entry(
        "a custom-op library path that does not exist",
        KernelLibraryError,
        "names it",
        r"custom-op library .*nope\.so does not exist; pass the path of the shared library",
    ),
    "custom_op_library_broken": Entry(
        "a custom-op library without RegisterCustomOps",
        KernelLibraryError,
        "onnxruntime's reason; build it for this onnxruntime",
        r"could not load the custom-op library .*libm.*RegisterCustomOps.*; pass a shared library built for "
        r"onnxruntime",
    ),
    "float64_model": Entry("a float64 model", None, "compiles like a float32 one"),
    "bfloat16_weights": Entry("bfloat16 weights (read through a Cast)", None, "compiles like float32 ones"),
    "non_tensor_input": Entry(
        "a graph input or output that is not a tensor (no type, optional, sequence, map)",
        UnsupportedModelError,
        "names it and its type; declare a tensor type",
        r"graph input 'x' is not declared as a tensor \(its type is optional_type\); bitnet-onnx compiles",
    ),
    "non_tensor_value": Entry(
        "a value declared optional or map (value_info)",
        UnsupportedModelError,
        "names it and its type",
        r"value 'h' of graph 'mlp' is declared with the type map_type, which bitnet-onnx does not compile",
    ),
    "attribute_type_mismatch": Entry(
        "a node attribute whose value does not match its declared type, or an empty list attribute",
        UnsupportedModelError,
        "names the attribute, the node and what it holds",
        r"attribute 'alpha' of node '/act/LeakyRelu' is declared INT but holds f\. The file is corrupted",
    ),
    "sparse_initializer": Entry(
        "a sparse initializer",
        UnsupportedModelError,
        "names it; store it dense",
        r"'fc2\.weight' is a sparse initializer, which bitnet-onnx does not compile; store dense tensors",
    ),
    "graph_input_weight": Entry(
        "a weight fed as a graph input", None, "warning naming the node and the input; the node stays float"
    ),
    "tied_weights": Entry(
        "an embedding table tied to the head",
        None,
        "both layers compile, `tied_with` set; one copy when both store it alike",
    ),
    "nan_weight": Entry(
        "NaN in a weight",
        ConversionError,
        "names the layer, the tensor and the count",
        r"cannot convert F32 to BITNET158: layer 'fc1': tensor 'fc1\.weight' holds 1 NaN and 0 infinite "
        "values; fix the tensor",
    ),
    "inf_weight": Entry(
        "Inf in a weight",
        ConversionError,
        "as NaN",
        r"layer 'fc1': tensor 'fc1\.weight' holds 0 NaN and 1 infinite values",
    ),
    "zero_weights": Entry("an all-zero weight", None, "ternary scale 0: the layer outputs its bias"),
    "constant_weights": Entry("a constant weight", None, "ternary is exact: +1 times one scale"),
    "empty_weight": Entry(
        "a weight with a zero-size dim", None, "warning naming the node; no layer, left as it is"
    ),
    "empty_batch": Entry("a zero-size input dim", None, "compiles; outputs are empty"),
    "unknown_layer_in_config": Entry(
        "a config `layers:` entry naming no layer", None, "warning with the closest layer names"
    ),
    "conflicting_policies": Entry(
        "policies that disagree", None, "higher priority wins, then the earlier policy; warning naming both"
    ),
    "library_env_missing": Entry(
        "`BITNET_OPS_LIBRARY` naming nothing",
        KernelLibraryError,
        "names it; point it at a build or unset it",
        r"BITNET_OPS_LIBRARY=.*nope\.so does not name a file; point it at a built libbitnet_ops\.so",
    ),
    "library_env_not_a_library": Entry(
        "`BITNET_OPS_LIBRARY` naming a text file",
        KernelLibraryError,
        "onnxruntime's reason; the rebuild command",
        r"could not load the bitnet op library .*notes\.so: .*file too short; " + _REBUILD,
    ),
    "library_not_installed": Entry(
        "the installed op library missing",
        KernelLibraryError,
        "the rebuild command",
        r"the bitnet op library bitnet_onnx/lib/libmissing\.so is missing: " + _REBUILD,
    ),
    "library_abi_mismatch": Entry(
        "an op library without `RegisterCustomOps` (another ABI)",
        KernelLibraryError,
        "onnxruntime's reason; the rebuild command",
        r"could not load the bitnet op library .*undefined symbol: RegisterCustomOps; " + _REBUILD,
    ),
    "external_data": Entry(
        "weights in external data",
        None,
        "read from the model's folder; the output keeps external data next to it (`<output>.data`) when "
        "its tensors reach 1 GiB",
    ),
    "external_absolute": Entry(
        "external data `location` an absolute path",
        UnsupportedModelError,
        "names the tensor and the location",
        r"tensor 'fc1\.weight': location '/etc/passwd' is an absolute path\nKeep external data files inside "
        r"the model's folder",
    ),
    "external_dotdot": Entry(
        "external data `location` with `..`",
        UnsupportedModelError,
        "as absolute",
        r"tensor 'fc1\.weight': location '\.\./m\.onnx\.data' leaves the model's folder through '\.\.'",
    ),
    "external_symlink": Entry(
        "external data `location` a symlink out of the folder",
        UnsupportedModelError,
        "as absolute",
        r"tensor 'fc1\.weight': location 'link\.data' resolves to .*, outside the model's folder "
        r"\(a symlink\)",
    ),
    "external_missing": Entry(
        "external data file missing or too short",
        UnsupportedModelError,
        "names the tensor, the file and the bytes",
        r"tensor 'fc1\.weight': external data file 'gone\.data' does not exist",
    ),
}


def test_every_entry_has_a_test():
    refused = {key for key, entry in CATALOGUE.items() if entry.outcome is not None}
    assert refused == set(REFUSED)
    tests = {name for name in globals() if name.startswith("test_")}
    compiling = {key for key, entry in CATALOGUE.items() if entry.outcome is None}
    assert {key for key in compiling if not any(t.startswith(f"test_{key}") for t in tests)} == set()


def test_readme_lists_the_catalogue():
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- bad-inputs:begin -->\n(.*?)<!-- bad-inputs:end -->", text, re.DOTALL)
    assert block is not None, "README.md has no bad-inputs table"
    rows = [line for line in block.group(1).splitlines() if line.startswith("| ") and "---" not in line][1:]
    expected = [entry.row() for entry in CATALOGUE.values()]
    assert rows == expected, "README table out of date; it should read:\n" + "\n".join(expected)


# -- models ------------------------------------------------------------------------------------------


def _weights(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * 0.1).astype(np.float32)


def _mlp(
    *,
    fc1: np.ndarray | None = None,
    opset: int = 17,
    x_shape: list | None = ("batch", 64),
    y_shape: list | None = ("batch", 16),
) -> onnx.ModelProto:
    """y = relu(x · fc1 + 0.5) · fc2: layers 'fc1' (linear, bias 0.5), 'act', 'fc2' (output)."""
    fc1 = _weights(1, (64, 32)) if fc1 is None else fc1
    nodes = [
        helper.make_node("MatMul", ["x", "fc1.weight"], ["h"], name="/fc1/MatMul"),
        helper.make_node("Add", ["h", "fc1.bias"], ["a"], name="/fc1/Add"),
        helper.make_node("Relu", ["a"], ["r"], name="/act/Relu"),
        helper.make_node("MatMul", ["r", "fc2.weight"], ["y"], name="/fc2/MatMul"),
    ]
    initializers = [
        numpy_helper.from_array(fc1, "fc1.weight"),
        numpy_helper.from_array(np.full(fc1.shape[1], 0.5, np.float32), "fc1.bias"),
        numpy_helper.from_array(_weights(2, (fc1.shape[1], 16)), "fc2.weight"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None if x_shape is None else list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None if y_shape is None else list(y_shape))],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _save(model: onnx.ModelProto, folder: Path, name: str = "m.onnx") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, folder / name)
    return folder / name


def _save_external(model: onnx.ModelProto, folder: Path) -> Path:
    """`folder/m.onnx` with every initializer in `folder/m.onnx.data`."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(
        model, folder / "m.onnx", save_as_external_data=True, location="m.onnx.data", size_threshold=0
    )
    return folder / "m.onnx"


def _relocate(path: Path, location: str) -> None:
    """Points fc1.weight's external data at `location`."""
    model = onnx.load(path, load_external_data=False)
    weight = next(t for t in model.graph.initializer if t.name == "fc1.weight")
    next(e for e in weight.external_data if e.key == "location").value = location
    onnx.save_model(model, path)


def _feeds(batch: int = 4) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(7).standard_normal((batch, 64)).astype(np.float32)}


def _run(model: Path | onnx.ModelProto, feeds: Mapping[str, np.ndarray], libraries=()) -> list[np.ndarray]:
    options = runtime.session_options(custom_op_libraries=libraries)
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"]).run(None, dict(feeds))


def _compile(model: Path | onnx.ModelProto, folder: Path, **kwargs: Any) -> CompileResult:
    out = folder / "out"
    out.mkdir(parents=True, exist_ok=True)
    return compile(model, output=out / "m.bitnet.onnx", measure_kernels=False, **kwargs)


def _warnings(result: CompileResult, pass_name: str) -> list[str]:
    return [w for r in result.records if r.pass_name == pass_name for w in r.warnings]


def _assert_matches(result: CompileResult, source: Path | onnx.ModelProto, feeds, libraries=()) -> None:
    """The compile met its thresholds, and the written model agrees with the source on `feeds`."""
    assert result.report.ok and result.report.goal_met
    for want, got in zip(
        _run(source, feeds, libraries), _run(result.output_path, feeds, libraries), strict=True
    ):
        metrics = compare_outputs("y", want, got)
        assert not metrics.misses(BALANCED), metrics


# -- library helpers -----------------------------------------------------------------------------------


def _c_compiler() -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    return cc


def _ort_include() -> Path:
    given = os.environ.get("ORT_INCLUDE_DIR")
    candidates = (
        [Path(given)] if given else sorted(REPO.glob("build/*/ort_headers/root/usr/include/onnxruntime"))
    )
    found = next((c for c in candidates if (c / "onnxruntime_c_api.h").is_file()), None)
    if found is None:
        pytest.skip("no onnxruntime headers (set ORT_INCLUDE_DIR, or build the package once)")
    return found


@pytest.fixture(scope="module")
def acme_library(tmp_path_factory) -> Path:
    """tests/e2e/acme_ops.c built: the user library of the custom op acme.ops.Double."""
    out = tmp_path_factory.mktemp("acme") / "libacme_ops.so"
    source = HERE / "acme_ops.c"
    subprocess.run(
        [_c_compiler(), "-shared", "-fPIC", "-O1", f"-I{_ort_include()}", "-o", str(out), str(source)],
        check=True,
    )
    return out


def _library_without_register(folder: Path) -> Path:
    """A valid shared library that does not export RegisterCustomOps: what a build for another ABI is."""
    source, out = folder / "other.c", folder / "libother.so"
    source.write_text("int other_abi(void) { return 1; }\n")
    subprocess.run([_c_compiler(), "-shared", "-fPIC", "-o", str(out), str(source)], check=True)
    return out


def _libm() -> Path:
    """The C math library this process has loaded: a real shared library unrelated to onnxruntime."""
    maps = Path("/proc/self/maps")
    lines = maps.read_text().splitlines() if maps.exists() else []
    found = next((line.split()[-1] for line in lines if re.search(r"/libm[.-][^/]*so", line)), None)
    if found is None:
        pytest.skip("no loaded libm to stand in for a library without RegisterCustomOps")
    return Path(found)


# -- refused inputs --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refused:
    """A refused input: the model path, and the compile() keywords / CLI arguments / environment /
    attribute patches (`module:attribute` → value) that go with it."""

    model: Path
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    argv: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    patch: Mapping[str, Any] = field(default_factory=dict)


def _file(data: bytes) -> Callable[[Path], Refused]:
    def make(folder: Path) -> Refused:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "m.onnx").write_bytes(data)
        return Refused(folder / "m.onnx")

    return make


def _model(build: Callable[[], onnx.ModelProto], **kwargs: Any) -> Callable[[Path], Refused]:
    return lambda folder: Refused(_save(build(), folder), **kwargs)


def _folder(folder: Path) -> Refused:
    (folder / "model.onnx").mkdir(parents=True)
    return Refused(folder / "model.onnx")


def _truncated() -> bytes:
    data = _mlp().SerializeToString()
    return data[: len(data) // 2]


def _corrupted() -> bytes:
    data = bytearray(_mlp().SerializeToString())
    for i in range(10, len(data), 97):
        data[i] ^= 0xFF
    return bytes(data)


def _with(model: onnx.ModelProto, edit: Callable[[onnx.ModelProto], Any]) -> onnx.ModelProto:
    edit(model)
    return model


def _empty_graph() -> onnx.ModelProto:
    return _with(_mlp(), lambda m: m.graph.ClearField("node"))


def _gru_opset_6() -> onnx.ModelProto:
    gru = helper.make_node("GRU", ["x", "w", "r"], ["y"], name="/gru", hidden_size=2)
    graph = helper.make_graph(
        [gru],
        "rnn",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "batch", 4]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 6, 4]),
            helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 6, 2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, "batch", 2])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)])


def _set_input(node: int, index: int, name: str) -> Callable[[onnx.ModelProto], None]:
    return lambda m: m.graph.node[node].input.__setitem__(index, name)


def _custom_op_model() -> onnx.ModelProto:
    """_mlp with its Relu replaced by acme.ops.Double (y = 2x; tests/e2e/acme_ops.c)."""
    model = _mlp()
    node = model.graph.node[2]
    # Exporters declare the types of a custom op's outputs (onnx cannot infer them); so does this one.
    typed = onnx.shape_inference.infer_shapes(model).graph.value_info
    model.graph.value_info.extend(v for v in typed if v.name == node.output[0])
    node.op_type, node.domain, node.name = "Double", "acme.ops", "/act/Double"
    model.opset_import.append(helper.make_opsetid("acme.ops", 1))
    return model


def _optional_input() -> onnx.ModelProto:
    model = _mlp()
    x = model.graph.input[0]
    element = onnx.TypeProto()
    element.CopyFrom(x.type)
    x.type.optional_type.elem_type.CopyFrom(element)
    return model


def _map_value() -> onnx.ModelProto:
    model = _mlp()
    h = model.graph.value_info.add(name="h")
    h.type.map_type.key_type = TensorProto.INT64
    h.type.map_type.value_type.tensor_type.elem_type = TensorProto.FLOAT
    return model


def _mistyped_attribute() -> onnx.ModelProto:
    model = _mlp()
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    relu.op_type, relu.name = "LeakyRelu", "/act/LeakyRelu"
    alpha = helper.make_attribute("alpha", 0.1)
    alpha.type = onnx.AttributeProto.INT  # as a corrupted file has it: the value stays in `f`
    relu.attribute.append(alpha)
    return model


def _sparse_fc2() -> onnx.ModelProto:
    model = _mlp()
    dense = numpy_helper.to_array(model.graph.initializer[2])
    flat = np.where(np.abs(dense) > 0.05, dense, 0).ravel()
    kept = np.flatnonzero(flat)
    values = numpy_helper.from_array(flat[kept], "fc2.weight")
    indices = numpy_helper.from_array(kept.astype(np.int64), "fc2.weight.indices")
    del model.graph.initializer[2]
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, list(dense.shape)))
    return model


def _nan(value: float) -> onnx.ModelProto:
    weight = _weights(1, (64, 32))
    weight[3, 4] = value
    return _mlp(fc1=weight)


def _env(name: str, value: Callable[[Path], Path]) -> Callable[[Path], Refused]:
    def make(folder: Path) -> Refused:
        return Refused(_save(_mlp(), folder / "model"), env={name: str(value(folder))})

    return make


def _text(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("not a library\n")
    return folder / name


def _custom_library(path: Callable[[Path], Path]) -> Callable[[Path], Refused]:
    def make(folder: Path) -> Refused:
        library = path(folder)
        return Refused(
            _save(_mlp(), folder / "model"),
            kwargs={"custom_op_libraries": [library]},
            argv=("--custom-ops", str(library)),
        )

    return make


def _external(location: str) -> Callable[[Path], Refused]:
    def make(folder: Path) -> Refused:
        path = _save_external(_mlp(), folder / "model")
        (folder / "outside.data").write_bytes((path.parent / "m.onnx.data").read_bytes())
        os.symlink(folder / "outside.data", path.parent / "link.data")
        _relocate(path, location)
        return Refused(path)

    return make


REFUSED: dict[str, Callable[[Path], Refused]] = {
    "text_file": _file(b"ir_version: 8\ngraph { node { op_type: 'Relu' } }\n"),
    "png_file": _file(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4),
    "empty_file": _file(b""),
    "truncated": _file(_truncated()),
    "corrupted": _file(_corrupted()),
    "graph_proto": _file(_mlp().graph.SerializeToString()),
    "directory": _folder,
    "missing_file": lambda folder: Refused(folder / "nope.onnx"),
    "empty_graph": _model(_empty_graph),
    "newer_ir_version": _model(lambda: _with(_mlp(), lambda m: setattr(m, "ir_version", 99))),
    "newer_opset": _model(lambda: _mlp(opset=99)),
    "unconvertible_opset": _model(_gru_opset_6),
    "invalid_graph": _model(lambda: _with(_mlp(), _set_input(1, 0, "nothing"))),
    "cycle": _model(lambda: _with(_mlp(), _set_input(0, 0, "r"))),
    "unknown_op": _model(lambda: _with(_mlp(), lambda m: setattr(m.graph.node[2], "op_type", "Rleu"))),
    "input_without_shape": _model(lambda: _mlp(x_shape=None)),
    "symbolic_dim_without_value": _model(lambda: _mlp(x_shape=("batch", "width"))),
    "unnamed_dim_without_inputs": _model(lambda: _mlp(x_shape=(None, 64))),
    "negative_dim_without_inputs": _model(lambda: _mlp(x_shape=(-1, 64), y_shape=(-1, 16))),
    "custom_op_without_library": _model(_custom_op_model),
    "custom_op_library_missing": _custom_library(lambda folder: folder / "nope.so"),
    "custom_op_library_broken": _custom_library(lambda folder: _libm()),
    "non_tensor_input": _model(_optional_input),
    "non_tensor_value": _model(_map_value),
    "attribute_type_mismatch": _model(_mistyped_attribute),
    "sparse_initializer": _model(_sparse_fc2),
    "nan_weight": _model(lambda: _nan(np.nan)),
    "inf_weight": _model(lambda: _nan(np.inf)),
    "library_env_missing": _env(runtime.LIBRARY_ENV, lambda folder: folder / "nope.so"),
    "library_env_not_a_library": _env(runtime.LIBRARY_ENV, lambda folder: _text(folder, "notes.so")),
    "library_not_installed": lambda folder: Refused(
        _save(_mlp(), folder), patch={"bitnet_onnx.runtime:_LIBRARY_NAME": "libmissing.so"}
    ),
    "library_abi_mismatch": _env(runtime.LIBRARY_ENV, _library_without_register),
    "external_absolute": _external("/etc/passwd"),
    "external_dotdot": _external("../m.onnx.data"),
    "external_symlink": _external("link.data"),
    "external_missing": _external("gone.data"),
}


def _prepare(key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Refused:
    refused = REFUSED[key](tmp_path)
    monkeypatch.delenv(runtime.LIBRARY_ENV, raising=False)
    for name, value in refused.env.items():
        monkeypatch.setenv(name, value)
    for target, value in refused.patch.items():
        module, attribute = target.split(":")
        monkeypatch.setattr(f"{module}.{attribute}", value)
    (tmp_path / "out").mkdir(exist_ok=True)
    return refused


REFUSED_KEYS = [key for key, entry in CATALOGUE.items() if entry.outcome is not None]


@pytest.mark.parametrize("key", REFUSED_KEYS)
def test_refused(key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    refused = _prepare(key, tmp_path, monkeypatch)
    entry = CATALOGUE[key]
    with pytest.raises(MixedPrecisionError) as info:
        compile(refused.model, output=tmp_path / "out" / "o.onnx", measure_kernels=False, **refused.kwargs)
    assert type(info.value) is entry.outcome, info.value
    assert re.search(entry.words, str(info.value), re.DOTALL), str(info.value)
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("key", REFUSED_KEYS)
def test_refused_on_the_command_line(
    key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    refused = _prepare(key, tmp_path, monkeypatch)
    argv = ["compile", str(refused.model), "-o", str(tmp_path / "out" / "o.onnx"), "--no-kernel-timing"]
    code = main([*argv, *refused.argv])
    stderr = capsys.readouterr().err
    assert code == EXIT_USER_ERROR
    assert stderr.startswith("bitnet-onnx compile: error: ") and re.search(
        CATALOGUE[key].words, stderr, re.DOTALL
    ), stderr
    assert "Traceback" not in stderr
    assert list((tmp_path / "out").iterdir()) == []


# -- inputs that compile ----------------------------------------------------------------------------------


@pytest.mark.parametrize("opset", [9, 11])
def test_old_opset_is_upgraded_and_computes_the_same(opset: int, tmp_path: Path) -> None:
    source = _mlp(opset=opset)
    result = _compile(source, tmp_path)
    normalize = result.records[0]
    assert [(c.action, c.detail) for c in normalize.changes if c.layer is None] == [
        ("upgrade_opset", f"opset {opset} → 17")
    ]
    assert (normalize.stats["opset_before"], normalize.stats["opset_after"]) == (opset, 17)
    assert {(o.domain, o.version) for o in onnx.load(result.output_path).opset_import} >= {("", 17)}
    _assert_matches(result, source, _feeds())


def test_ir_version_3_is_raised_to_4(tmp_path: Path) -> None:
    source = _mlp()
    source.ir_version = 3
    source.graph.input.extend(
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in source.graph.initializer
    )
    onnx.checker.check_model(source)
    result = _compile(source, tmp_path)
    assert [(c.action, c.detail) for c in result.records[0].changes if c.layer is None] == [
        ("upgrade_ir_version", "ir_version 3 → 4")
    ]
    assert onnx.load(result.output_path).ir_version >= 4
    _assert_matches(result, source, _feeds())


def test_float64_model_compiles_like_float32(tmp_path: Path) -> None:
    source = _mlp()
    for tensor in source.graph.initializer:
        tensor.CopyFrom(
            numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name)
        )
    for value in (*source.graph.input, *source.graph.output):
        value.type.tensor_type.elem_type = TensorProto.DOUBLE
    result = _compile(source, tmp_path)
    assert {r.name: r.precisions.get("weights") for r in result.layers} == {
        "fc1": "BITNET158",
        "act": None,
        "fc2": "I8",
    }
    _assert_matches(result, source, {"x": _feeds()["x"].astype(np.float64)})


def test_bfloat16_weights_compile_like_float32(tmp_path: Path) -> None:
    source = _mlp()
    weight = numpy_helper.to_array(source.graph.initializer[0])
    stored = helper.make_tensor("fc1.weight", TensorProto.BFLOAT16, weight.shape, weight.ravel().tolist())
    source.graph.initializer[0].CopyFrom(stored)
    source.graph.node.insert(0, helper.make_node("Cast", ["fc1.weight"], ["w"], name="/fc1/Cast", to=1))
    source.graph.node[1].input[1] = "w"
    result = _compile(source, tmp_path)
    assert {r.name: r.precisions.get("weights") for r in result.layers}["fc1"] == "BITNET158"
    _assert_matches(result, source, _feeds())


def test_output_without_shape_gets_the_inferred_one(tmp_path: Path) -> None:
    source = _mlp(y_shape=None)
    result = _compile(source, tmp_path)
    (output,) = onnx.load(result.output_path).graph.output
    dims = output.type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 16]
    _assert_matches(result, source, _feeds())


def test_symbolic_dims_compile_with_their_values_or_inputs(tmp_path: Path) -> None:
    source = _mlp(x_shape=("rows", "width"), y_shape=("rows", "outputs"))
    result = _compile(source, tmp_path, dims={"rows": 3, "width": 64})
    assert result.report.inputs.startswith("generated inputs (batch=1, seq=8, rows=3, width=64")
    assert result.report.outputs[0].shape == (3, 16)
    _assert_matches(result, source, _feeds())
    for unknown in (None, -1):
        unnamed = _mlp(x_shape=(unknown, 64), y_shape=(unknown, 16))
        result = _compile(unnamed, tmp_path / f"unknown{unknown}", inputs=_feeds(5))
        assert result.report.outputs[0].shape == (5, 16)
        _assert_matches(result, unnamed, _feeds())


def _if_model() -> onnx.ModelProto:
    """fc1, then an If on sum(x) > 0 whose branches each multiply by their own weight, then fc2."""

    def branch(name: str, seed: int) -> onnx.GraphProto:
        matmul = helper.make_node("MatMul", ["h", f"{name}.weight"], [f"{name}_y"], name=f"/{name}/MatMul")
        out = helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, ["batch", 16])
        return helper.make_graph(
            [matmul], name, [], [out], [numpy_helper.from_array(_weights(seed, (16, 16)), f"{name}.weight")]
        )

    nodes = [
        helper.make_node("MatMul", ["x", "fc1.weight"], ["h"], name="/fc1/MatMul"),
        helper.make_node("ReduceSum", ["x"], ["total"], name="/sum/ReduceSum", keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["positive"], name="/sum/Greater"),
        helper.make_node(
            "If",
            ["positive"],
            ["b"],
            name="/branch/If",
            then_branch=branch("then", 3),
            else_branch=branch("else", 4),
        ),
        helper.make_node("MatMul", ["b", "fc2.weight"], ["y"], name="/fc2/MatMul"),
    ]
    return _control_flow_model(nodes, [numpy_helper.from_array(np.zeros((), np.float32), "zero")])


def _loop_model() -> onnx.ModelProto:
    """fc1, then a Loop applying tanh(h · shared) twice, then fc2 = h · shared: the body reads the
    weight of a main-graph layer."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["keep_in"], ["keep_out"], name="/loop/Identity"),
            helper.make_node("MatMul", ["h_in", "shared.weight"], ["t"], name="/loop/MatMul"),
            helper.make_node("Tanh", ["t"], ["h_out"], name="/loop/Tanh"),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("keep_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_in", TensorProto.FLOAT, ["batch", 16]),
        ],
        [
            helper.make_tensor_value_info("keep_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["batch", 16]),
        ],
    )
    nodes = [
        helper.make_node("MatMul", ["x", "fc1.weight"], ["h"], name="/fc1/MatMul"),
        helper.make_node("Loop", ["trips", "keep", "h"], ["b"], name="/repeat/Loop", body=body),
        helper.make_node("MatMul", ["b", "shared.weight"], ["y"], name="/fc2/MatMul"),
    ]
    extra = [
        numpy_helper.from_array(np.array(2, np.int64), "trips"),
        numpy_helper.from_array(np.array(True), "keep"),
    ]
    return _control_flow_model(nodes, extra, head="shared.weight")


def _scan_model() -> onnx.ModelProto:
    """fc1, then a Scan over 4 slices of 4 features each multiplied by its own weight, then fc2."""
    body = helper.make_graph(
        [helper.make_node("MatMul", ["slice", "scan.weight"], ["slice_out"], name="/scan/MatMul")],
        "body",
        [helper.make_tensor_value_info("slice", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("slice_out", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(_weights(5, (4, 4)), "scan.weight")],
    )
    nodes = [
        helper.make_node("MatMul", ["x", "fc1.weight"], ["h"], name="/fc1/MatMul"),
        helper.make_node("Reshape", ["h", "slices"], ["s"], name="/scan/Reshape"),
        helper.make_node(
            "Scan",
            ["s"],
            ["t"],
            name="/scan/Scan",
            body=body,
            num_scan_inputs=1,
            scan_input_axes=[1],
            scan_output_axes=[1],
        ),
        helper.make_node("Reshape", ["t", "flat"], ["b"], name="/scan/Reshape_1"),
        helper.make_node("MatMul", ["b", "fc2.weight"], ["y"], name="/fc2/MatMul"),
    ]
    extra = [
        numpy_helper.from_array(np.array([0, 4, 4], np.int64), "slices"),
        numpy_helper.from_array(np.array([0, 16], np.int64), "flat"),
    ]
    return _control_flow_model(nodes, extra)


def _control_flow_model(
    nodes: list[onnx.NodeProto], extra: list[onnx.TensorProto], head: str = "fc2.weight"
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "flow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [
            numpy_helper.from_array(_weights(1, (64, 16)), "fc1.weight"),
            numpy_helper.from_array(_weights(2, (16, 8 if head == "fc2.weight" else 16)), head),
            *extra,
        ],
    )
    if head != "fc2.weight":  # the Loop's weight is square: y has 16 features
        graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16]))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _subgraph_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers the subgraph MatMuls read (their own, or the main graph's), by MatMul name."""
    outer = {t.name: t for t in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else []:
                inner = {t.name: t for t in sub.initializer}
                for n in sub.node:
                    if n.op_type == "MatMul":
                        found[n.name] = numpy_helper.to_array({**outer, **inner}[n.input[1]])
    return found


@pytest.mark.parametrize(
    "build, node, inside",
    [
        (_if_model, "If '/branch/If'", "2 MatMul: '/else/MatMul', '/then/MatMul'"),
        (_loop_model, "Loop '/repeat/Loop'", "1 MatMul: '/loop/MatMul'"),
        (_scan_model, "Scan '/scan/Scan'", "1 MatMul: '/scan/MatMul'"),
    ],
    ids=["If", "Loop", "Scan"],
)
def test_control_flow_leaves_layers_inside_as_they_are(build, node: str, inside: str, tmp_path: Path) -> None:
    source = build()
    result = _compile(source, tmp_path)
    warnings = _warnings(result, "annotate_layers")
    assert any(w.startswith(f"{node} holds") and f"({inside});" in w for w in warnings), warnings
    assert {r.name: r.precisions["weights"] for r in result.layers if "weights" in r.precisions} == {
        "fc1": "BITNET158",
        "fc2": "I8",
    }
    before, after = _subgraph_weights(source), _subgraph_weights(onnx.load(result.output_path))
    assert before.keys() == after.keys() and before
    for name, weight in before.items():
        assert after[name].dtype == np.float32 and np.array_equal(after[name], weight), name
    for batch in (1, 4):
        _assert_matches(result, source, _feeds(batch))


def test_custom_op_is_passed_through_and_validated_with_its_library(
    acme_library: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _custom_op_model()
    result = _compile(source, tmp_path, custom_op_libraries=[acme_library])
    assert any(
        "1 Double node: from custom domain 'acme.ops'" in w and "--custom-ops" in w
        for w in _warnings(result, "normalize")
    )
    compiled = onnx.load(result.output_path)
    assert [(n.domain, n.op_type) for n in compiled.graph.node if n.domain == "acme.ops"] == [
        ("acme.ops", "Double")
    ]
    assert ("acme.ops", 1) in {(o.domain, o.version) for o in compiled.opset_import}
    _assert_matches(result, source, _feeds(), [acme_library])
    with pytest.raises(
        KernelLibraryError, match=r"op 'Double' of the custom domain 'acme\.ops' is not registered"
    ):
        runtime.session(result.output_path)
    out = tmp_path / "cli.onnx"
    model = _save(source, tmp_path / "model")
    compile_argv = [
        "compile",
        str(model),
        "-o",
        str(out),
        "--no-kernel-timing",
        "--custom-ops",
        str(acme_library),
    ]
    assert main(compile_argv) == EXIT_OK
    assert main(["run", str(out), "--custom-ops", str(acme_library)]) == EXIT_OK
    assert "y: float32 [1, 16]" in capsys.readouterr().out


def test_graph_input_weight_stays_float_with_a_warning(tmp_path: Path) -> None:
    source = _mlp()
    weight = source.graph.initializer[0]
    source.graph.input.append(helper.make_tensor_value_info(weight.name, TensorProto.FLOAT, [64, 32]))
    source.graph.initializer.remove(weight)
    result = _compile(source, tmp_path)
    assert _warnings(result, "annotate_layers") == [
        "MatMul '/fc1/MatMul' reads its weight 'fc1.weight' from a graph input, so it is not compiled as a "
        "layer; store the weight as an initializer to compile it"
    ]
    assert "fc1" not in {r.name for r in result.layers}
    compiled = onnx.load(result.output_path)
    matmul = next(n for n in compiled.graph.node if n.name == "/fc1/MatMul")
    assert list(matmul.input) == ["x", "fc1.weight"] and not matmul.metadata_props
    feeds = {**_feeds(), "fc1.weight": _weights(1, (64, 32))}
    _assert_matches(result, source, feeds)


def test_tied_weights_are_linked_and_stored_once(tmp_path: Path) -> None:
    config = llama.LlamaConfig(tie_embeddings=True)
    source = llama.build(config)
    result = _compile(source, tmp_path, config="conservative")
    annotate = {c.layer: c.detail for c in result.records[1].changes}
    assert annotate["model.embed_tokens"].endswith("tied_with=lm_head")
    assert annotate["lm_head"].endswith("tied_with=model.embed_tokens")
    layers = {r.name: r.precisions["weights"] for r in result.layers if "weights" in r.precisions}
    assert layers["model.embed_tokens"] == layers["lm_head"] == "F16"
    assert _warnings(result, "rewrite") == []
    table = config.vocab_size * config.hidden_size
    tables = [t.name for t in onnx.load(result.output_path).graph.initializer if np.prod(t.dims) == table]
    assert len(tables) == 1  # one float16 table read by the Gather and the head
    feeds = {"input_ids": np.arange(16, dtype=np.int64).reshape(2, 8) % config.vocab_size}
    want, got = _run(source, feeds)[0], _run(result.output_path, feeds)[0]
    assert not compare_outputs("logits", want, got).misses(THRESHOLDS[MixedPrecisionStrategy.CONSERVATIVE])


def test_tied_weights_of_different_precisions_are_stored_twice_with_a_warning(tmp_path: Path) -> None:
    config = llama.LlamaConfig(tie_embeddings=True)
    source = llama.build(config)
    result = _compile(source, tmp_path)  # balanced: embedding F16, output layer I8
    layers = {r.name: r.precisions["weights"] for r in result.layers if "weights" in r.precisions}
    assert (layers["model.embed_tokens"], layers["lm_head"]) == ("F16", "I8")
    # the int8 copy: one byte per weight plus one float32 scale per row
    second = config.vocab_size * config.hidden_size + 4 * config.vocab_size
    assert _warnings(result, "rewrite") == [
        "layers 'model.embed_tokens' and 'lm_head' share the weight 'model.embed_tokens.weight' in the model "
        f"but not in the compiled file (F16 vs I8): the second copy costs {second} bytes; give both the same "
        "weights precision and layout to store it once"
    ]
    table = config.vocab_size * config.hidden_size
    compiled = onnx.load(result.output_path)
    tables = {t.data_type for t in compiled.graph.initializer if np.prod(t.dims) == table}
    assert tables == {TensorProto.FLOAT16, TensorProto.UINT8}  # the Gather's table and the head's int8 rows
    feeds = {"input_ids": np.arange(16, dtype=np.int64).reshape(2, 8) % config.vocab_size}
    want, got = _run(source, feeds)[0], _run(result.output_path, feeds)[0]
    assert not compare_outputs("logits", want, got).misses(BALANCED)


def _bitlinear_scale(path: Path) -> np.ndarray:
    model = onnx.load(path)
    node = next(n for n in model.graph.node if n.op_type == runtime.BITLINEAR)
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == node.input[2]))


def _scale_rule(scale: TernaryScale, per_channel: bool = False) -> MixedPrecisionConfig:
    """balanced with the linear layers' ternary scale rule (and granularity) set."""
    linear = MixedPrecisionConfig.balanced().layer_types[LayerType.LINEAR]
    layout = WeightLayout(per_channel=per_channel, ternary_scale=scale)
    return MixedPrecisionConfig.balanced().with_layer_type_config(replace(linear, layout=layout))


@pytest.mark.parametrize("scale", list(TernaryScale))
def test_zero_weights_give_scale_zero_and_the_bias(scale: TernaryScale, tmp_path: Path) -> None:
    source = _mlp(fc1=np.zeros((64, 32), np.float32))
    result = _compile(source, tmp_path, config=_scale_rule(scale))
    assert _bitlinear_scale(result.output_path).tolist() == [0.0]
    # relu(0 + bias) · fc2, fc2 the I8 head: rows of fc2ᵀ in int8 with s = max|row| / 127; the
    # activations (all 0.5) quantize exactly to 127 with factor 0.5 / 127 (kernels/README.md order)
    rows = _weights(2, (32, 16)).T
    scale = np.max(np.abs(rows), axis=1) / np.float32(127)
    q = np.clip(np.rint(rows / scale[:, None]), -127, 127)
    acc = (127 * q).sum(axis=1).astype(np.float32)
    expected = np.broadcast_to((acc * scale) * (np.float32(0.5) / np.float32(127)), (4, 16))
    (got,) = _run(result.output_path, _feeds())
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    assert result.report.goal_met


@pytest.mark.parametrize("scale", list(TernaryScale))
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_weights_are_refused_under_both_scale_rules(
    scale: TernaryScale, value: float, tmp_path: Path
) -> None:
    words = "1 NaN and 0 infinite" if np.isnan(value) else "0 NaN and 1 infinite"
    with pytest.raises(ConversionError, match=rf"layer 'fc1': tensor 'fc1\.weight' holds {words} values"):
        _compile(_nan(value), tmp_path, config=_scale_rule(scale))
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("scale", list(TernaryScale))
def test_per_channel_zero_rows_get_scale_zero(scale: TernaryScale, tmp_path: Path) -> None:
    fc1 = _weights(1, (64, 32))
    fc1[:, [0, 5]] = 0.0  # output rows 0 and 5 of W[N, K] = fc1ᵀ are all zero
    result = _compile(_mlp(fc1=fc1), tmp_path, config=_scale_rule(scale, per_channel=True))
    scales = _bitlinear_scale(result.output_path)
    assert scales.shape == (32,) and scales[[0, 5]].tolist() == [0.0, 0.0]
    assert (np.delete(scales, [0, 5]) > 0).all() and result.report.ok


@pytest.mark.parametrize("scale", list(TernaryScale))
def test_constant_weights_are_exactly_ternary(scale: TernaryScale, tmp_path: Path) -> None:
    source = _mlp(fc1=np.full((64, 32), 0.3, np.float32))
    result = _compile(source, tmp_path, config=_scale_rule(scale))
    np.testing.assert_allclose(_bitlinear_scale(result.output_path), [0.3], rtol=1e-6)
    feeds = _feeds()
    (want,), (got,) = _run(source, feeds), _run(result.output_path, feeds)
    assert compare_outputs("y", want, got).cosine > 0.9999  # only int8 activations and float16 round


def test_empty_weight_is_no_layer_and_stays(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("MatMul", ["x", "empty.weight"], ["h"], name="/empty/MatMul"),
        helper.make_node("MatMul", ["h", "back.weight"], ["z"], name="/back/MatMul"),
        helper.make_node("Add", ["x", "z"], ["s"], name="/skip/Add"),
        helper.make_node("MatMul", ["s", "fc.weight"], ["y"], name="/fc/MatMul"),
    ]
    graph = helper.make_graph(
        nodes,
        "empty",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])],
        [
            numpy_helper.from_array(np.zeros((64, 0), np.float32), "empty.weight"),
            numpy_helper.from_array(np.zeros((0, 64), np.float32), "back.weight"),
            numpy_helper.from_array(_weights(3, (64, 16)), "fc.weight"),
        ],
    )
    source = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = _compile(source, tmp_path)
    assert _warnings(result, "annotate_layers") == [
        f"MatMul '/{name}/MatMul' has an empty weight '{name}.weight' (shape {shape}): there is nothing to "
        "convert, so it is not compiled as a layer and stays as it is"
        for name, shape in (("empty", [64, 0]), ("back", [0, 64]))
    ]
    assert [r.name for r in result.layers] == ["fc"]
    _assert_matches(result, source, _feeds())


def test_empty_batch_compiles_and_gives_empty_outputs(tmp_path: Path) -> None:
    source = _mlp(x_shape=(0, 64), y_shape=(0, 16))
    result = _compile(source, tmp_path)
    assert result.report.outputs[0].shape == (0, 16)
    (got,) = _run(result.output_path, {"x": np.zeros((0, 64), np.float32)})
    assert got.shape == (0, 16)


def test_unknown_layer_in_config_warns_with_the_closest_names(tmp_path: Path) -> None:
    config_file = tmp_path / "c.yaml"
    config_file.write_text("version: 1\nstrategy: balanced\nlayers:\n  fc_1: F16\n  decoder.*: I8\n")
    model = _save(_mlp(), tmp_path / "model")
    result = _compile(model, tmp_path, config=config_file)
    assert _warnings(result, "assign_precision")[:2] == [
        "config layers['fc_1'] names no layer of this model (closest: 'fc1')",
        "config layers['decoder.*'] is a glob that matches no layer of this model",
    ]
    cli = subprocess.run(
        [sys.executable, "-m", "bitnet_onnx.cli", "compile", str(model), "-o", str(tmp_path / "cli.onnx"),
         "--config", str(config_file), "--no-kernel-timing"],
        capture_output=True, text=True, check=False, cwd=REPO,
    )  # fmt: skip
    assert cli.returncode == EXIT_OK, cli.stderr
    assert (
        "WARNING bitnet_onnx.passes.instruments: assign_precision: config layers['fc_1'] names no layer"
        in cli.stderr
    )


def _set(policy: str, dtype: DType, priority: int) -> PrecisionPolicy:
    weights = PolicyCondition(ConditionType.COMPONENT, ConditionOperator.EQUAL, "weights")
    linear = PolicyCondition(ConditionType.LAYER_TYPE, ConditionOperator.EQUAL, "linear")
    rule = PolicyRule("set", PolicyAction.set_precision(dtype), (weights, linear))
    return PrecisionPolicy(policy, priority=priority, rules=(rule,))


@pytest.mark.parametrize(
    "policies, winner, loser",
    [
        ((_set("a", DType.I8, 0), _set("b", DType.I4, 5)), ("b", DType.I4), ("a", DType.I8)),
        ((_set("a", DType.I8, 0), _set("b", DType.I4, 0)), ("a", DType.I8), ("b", DType.I4)),
        ((_set("b", DType.I4, 0), _set("a", DType.I8, 0)), ("b", DType.I4), ("a", DType.I8)),
    ],
    ids=["priority", "equal-priority-first", "equal-priority-swapped"],
)
def test_conflicting_policies_resolve_deterministically_and_are_reported(
    policies, winner, loser, tmp_path: Path
) -> None:
    result = _compile(_mlp(), tmp_path, policies=policies)
    assert {r.name: r.precisions.get("weights") for r in result.layers}["fc1"] == winner[1].name
    (conflict,) = [w for w in _warnings(result, "assign_precision") if w.startswith("policy conflict")]
    assert conflict == (
        f"policy conflict on 1 component(s) (fc1/weights): policy:{winner[0]}/set chose {winner[1].name}; "
        f"policy:{loser[0]}/set (priority {dict((p.id, p.priority) for p in policies)[loser[0]]}) wanted "
        f"{loser[1].name}; the higher priority (then the earlier policy) wins"
    )
    again = _compile(_mlp(), tmp_path / "again", policies=policies)
    assert [r.to_json() | {"run": "", "seconds": 0} for r in again.records] == [
        r.to_json() | {"run": "", "seconds": 0} for r in result.records
    ]


def test_external_data_compiles_and_large_outputs_keep_theirs(tmp_path: Path, monkeypatch) -> None:
    # fc1 [64, 128]: its 2-bit ternary rows and fc2's int8 ones hold 2 KiB each, so both go external
    source = _save_external(_mlp(fc1=_weights(1, (64, 128))), tmp_path / "model")
    monkeypatch.chdir(tmp_path)  # the data is found next to the model, not in the working directory
    small = _compile(source, tmp_path / "small")
    assert sorted(p.name for p in small.output_path.parent.iterdir()) == ["m.bitnet.onnx"]
    assert not [t for t in onnx.load(small.output_path, load_external_data=False).graph.initializer
                if t.data_location == TensorProto.EXTERNAL]  # fmt: skip
    _assert_matches(small, source, _feeds())
    monkeypatch.setattr(model_file, "EXTERNAL_DATA_THRESHOLD", 1024)
    large = _compile(source, tmp_path / "large")
    assert sorted(p.name for p in large.output_path.parent.iterdir()) == [
        "m.bitnet.onnx",
        "m.bitnet.onnx.data",
    ]
    external = [t for t in onnx.load(large.output_path, load_external_data=False).graph.initializer
                if t.data_location == TensorProto.EXTERNAL]  # fmt: skip
    assert external and all(
        next(e.value for e in t.external_data if e.key == "location") == "m.bitnet.onnx.data"
        for t in external
    )
    shutil.rmtree(tmp_path / "model")  # the output needs nothing from the input's folder
    (want,), (got,) = _run(small.output_path, _feeds()), _run(large.output_path, _feeds())
    np.testing.assert_array_equal(got, want)
