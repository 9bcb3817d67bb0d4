"""Concurrency: one session shared by threads, and compiles racing in separate processes.

1. One session of a compiled model (BitLinear and LowBitMatMul layers), or of one bitnet op with
   constant weights (repacked once, at session creation: state the kernels share between calls) or
   with weights fed per call, is run from 4 Python threads at once, right after it is created (so a
   lazy first-run initialization would race too), each call with other inputs. Every result equals
   the serial run of the same input, bit for bit; on every ISA path, with 1 and 2 intra-op threads.
2. Two processes compile into the same folder at the same time: to different outputs, both are
   complete and valid; to the same output, it ends as one complete valid model (the bytes one of
   the two compiles writes alone), also when the output has an external data file. No temporary
   file is left behind either way.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bitnet_onnx import runtime
from bitnet_onnx.compiler.compile import compile
from bitnet_onnx.config.config import LayerPrecisionConfig, MixedPrecisionConfig
from bitnet_onnx.core.dtypes import DType, TernaryPacking, WeightLayout
from bitnet_onnx.core.errors import KernelLibraryError
from bitnet_onnx.core.layers import LayerType
from bitnet_onnx.numerics.packing import pack_int, pack_ternary
from bitnet_onnx.runtime.sample_inputs import sample_inputs

FIXTURES = Path(__file__).resolve().parents[2] / "models" / "fixtures"
LLAMA = FIXTURES / "llama_tiny.onnx"
THREADS = 4
CALLS = 48
OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid(runtime.DOMAIN, runtime.OPSET_VERSION)]

Feeds = dict[str, np.ndarray]


@pytest.fixture(scope="module", autouse=True)
def _ops_lib() -> None:
    try:
        runtime.library_path()
    except KernelLibraryError as exc:
        pytest.skip(str(exc))


@pytest.fixture(params=[isa.value for isa in runtime.supported_isas()])
def isa(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(runtime.ISA_ENV, request.param)
    return request.param


# -- one session, many threads ----------------------------------------------------------------------


def _i4_linear() -> MixedPrecisionConfig:
    """Balanced with I4 linear layers (LowBitMatMul, int8 activations)."""
    entry = LayerPrecisionConfig(LayerType.LINEAR, DType.I4, WeightLayout(group_size=32))
    return MixedPrecisionConfig.balanced().with_layer_type_config(entry)


@pytest.fixture(scope="module")
def compiled_llama(tmp_path_factory: pytest.TempPathFactory) -> dict[str, onnx.ModelProto]:
    """llama_tiny compiled to BitLinear (balanced), to LowBitMatMul (I4) and aggressive."""
    folder = tmp_path_factory.mktemp("compiled")
    configs = {"balanced": "balanced", "i4": _i4_linear(), "aggressive": "aggressive"}
    out = {}
    for name, config in configs.items():
        result = compile(LLAMA, config, output=folder / f"{name}.onnx", strict=False, measure_kernels=False)
        ops = {r.op for r in result.layers}
        assert {"BitLinear", "LowBitMatMul"} & ops, ops
        out[name] = onnx.load(folder / f"{name}.onnx")
    return out


def _llama_feeds(model: onnx.ModelProto) -> list[Feeds]:
    """CALLS different inputs: batch 1-3, sequence 1-9, other token ids each time."""
    return [
        sample_inputs(model, dims={"batch": 1 + i % 3, "seq": 1 + (i * 5) % 9}, seed=i) for i in range(CALLS)
    ]


def _op_model(op: str, k: int, n: int, constant: bool, **attributes: object) -> tuple[onnx.ModelProto, Feeds]:
    """One bitnet op X[M, K] → Y[M, N] with random weights: initializers, or graph inputs fed per call."""
    rng = np.random.default_rng(k * n)
    if op == runtime.BITLINEAR:
        w = pack_ternary(
            rng.integers(-1, 2, size=(n, k)).astype(np.int8), TernaryPacking(attributes["format"])
        )
        operands = {"W": w, "scale": (rng.random(n) + 0.5).astype(np.float32)}
    else:
        bits, group_size = int(attributes["bits"]), int(attributes["group_size"])
        codes = rng.integers(0, 1 << bits, size=(n, k)).astype(np.uint8)
        groups = -(-k // group_size)
        operands = {
            "W": pack_int(codes, bits, group_size),
            "scales": (rng.random((n, groups)) * 0.1).astype(np.float32),
        }
    operands["bias"] = rng.standard_normal(n).astype(np.float32)
    if op == runtime.LOWBIT_MATMUL:
        operands = {
            "W": operands["W"],
            "scales": operands["scales"],
            "zero_points": np.zeros(0, np.uint8),
            "bias": operands["bias"],
        }
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["M", k])]
    initializers = []
    for name, value in operands.items():
        if constant:
            initializers.append(numpy_helper.from_array(value, name))
        else:
            dims = [f"{name}_{d}" for d in range(value.ndim)]
            inputs.append(
                helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), dims)
            )
    node = helper.make_node(op, ["X", *operands], ["Y"], domain=runtime.DOMAIN, K=k, **attributes)
    graph = helper.make_graph(
        [node], op, inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])], initializers
    )
    return helper.make_model(graph, opset_imports=OPSETS), ({} if constant else operands)


def _op_feeds(k: int, weights: Feeds) -> list[Feeds]:
    """CALLS different inputs; M from 1 to 40 (streaming and tiled paths)."""
    rng = np.random.default_rng(k)
    return [
        {"X": (rng.standard_normal((1 + (i * 7) % 40, k)) * 3).astype(np.float32), **weights}
        for i in range(CALLS)
    ]


def _assert_threads_agree_with_serial(model: onnx.ModelProto, feeds: list[Feeds], threads: int) -> None:
    session = runtime.session(model, threads=threads)
    with ThreadPoolExecutor(THREADS) as pool:  # first calls race each other on a fresh session
        concurrent = list(pool.map(lambda f: session.run(None, f), feeds))
    serial = [session.run(None, f) for f in feeds]
    fresh = runtime.session(model, threads=threads)
    for i, (got, want) in enumerate(zip(concurrent, serial, strict=True)):
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"call {i}")
    for got, f in zip(serial[:4], feeds[:4], strict=True):
        for a, b in zip(got, fresh.run(None, f), strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("config", ["balanced", "i4", "aggressive"])
def test_a_compiled_model_shared_by_threads_gives_the_serial_results(
    compiled_llama: dict[str, onnx.ModelProto], config: str, threads: int, isa: str
) -> None:
    model = compiled_llama[config]
    _assert_threads_agree_with_serial(model, _llama_feeds(model), threads)


OP_CASES: dict[str, tuple[str, int, int, dict[str, object]]] = {
    "bitlinear-2bit": (runtime.BITLINEAR, 300, 33, {"format": "2bit"}),
    "bitlinear-base3": (runtime.BITLINEAR, 517, 20, {"format": "base3"}),
    "lowbit-i4-int8": (runtime.LOWBIT_MATMUL, 256, 40, {"bits": 4, "group_size": 32, "act_quant": 1}),
    "lowbit-i2-float": (runtime.LOWBIT_MATMUL, 300, 24, {"bits": 2, "group_size": 100, "act_quant": 0}),
    "lowbit-i8-int8": (runtime.LOWBIT_MATMUL, 129, 17, {"bits": 8, "group_size": 129, "act_quant": 1}),
}


@pytest.mark.parametrize("constant", [True, False], ids=["repacked-once", "per-call"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", OP_CASES)
def test_one_op_session_shared_by_threads_gives_the_serial_results(
    case: str, threads: int, constant: bool, isa: str
) -> None:
    op, k, n, attributes = OP_CASES[case]
    model, weights = _op_model(op, k, n, constant, **attributes)
    _assert_threads_agree_with_serial(model, _op_feeds(k, weights), threads)


# -- two processes, one folder ------------------------------------------------------------------------

# A compile in its own process. When it starts writing its output it waits at a file barrier for
# the others (`parties` in all), so all write at once; `external` saves the output with an external
# data file (threshold 0). Around the data file's rename the workers take turns in the worst order:
# worker 0 renames its data file first and its model last, worker 1 its data file second and its
# model first, so a writer that renames data and model independently ends with worker 0's model
# reading worker 1's data.
_WORKER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from bitnet_onnx.compiler import compile as compile_module
    from bitnet_onnx.runtime import model_file

    source, config, output, barrier, me, parties, external = sys.argv[1:8]
    if external == "1":
        model_file.EXTERNAL_DATA_THRESHOLD = 0
    write_model, replace = model_file.write_model, os.replace

    def write_together(model, path, base_dir=None):
        Path(barrier, me).touch()
        deadline = time.monotonic() + 60
        while len(os.listdir(barrier)) < int(parties) and time.monotonic() < deadline:
            time.sleep(0.005)
        return write_model(model, path, base_dir)

    def replace_in_turn(src, dst):
        data = Path(dst).parent == Path(output).parent and str(dst).endswith(".data")
        if data and me == "1":
            time.sleep(0.1)
        replace(src, dst)
        if data:
            time.sleep(0.1 if me == "1" else 0.5)

    compile_module.write_model, model_file.os.replace = write_together, replace_in_turn
    compile_module.compile(source, config, output=output, measure_kernels=False, strict=False)
    """
)


def _race(tmp_path: Path, jobs: list[tuple[str, Path]], external: bool) -> None:
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    processes = []
    for i, (config, output) in enumerate(jobs):
        args = [str(LLAMA), config, str(output), str(barrier), str(i), str(len(jobs)), str(int(external))]
        processes.append(
            subprocess.Popen(
                [sys.executable, "-c", _WORKER, *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]


def _alone(tmp_path: Path, config: str, external: bool) -> dict[str, bytes]:
    """The files one compile writes into an empty folder, by name."""
    folder = tmp_path / f"alone-{config}"
    folder.mkdir()
    _race(folder, [(config, folder / "out.onnx")], external=external)
    (folder / "barrier" / "0").unlink()
    (folder / "barrier").rmdir()
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _valid(path: Path) -> None:
    model = onnx.load(path)
    session = runtime.session(str(path))
    session.run(None, sample_inputs(model, seed=1))


@pytest.mark.parametrize("external", [False, True], ids=["one-file", "external-data"])
def test_two_compiles_into_one_folder_write_two_valid_models(tmp_path: Path, external: bool) -> None:
    out = tmp_path / "out"
    out.mkdir()
    _race(tmp_path, [("balanced", out / "a.onnx"), ("aggressive", out / "b.onnx")], external)
    expected = {"a.onnx", "b.onnx"} | ({"a.onnx.data", "b.onnx.data"} if external else set())
    assert {p.name for p in out.iterdir()} == expected  # nothing temporary left
    for name in ("a.onnx", "b.onnx"):
        _valid(out / name)


@pytest.mark.parametrize("external", [False, True], ids=["one-file", "external-data"])
def test_two_compiles_to_one_output_end_with_one_complete_model(tmp_path: Path, external: bool) -> None:
    out = tmp_path / "out"
    out.mkdir()
    _race(tmp_path, [("balanced", out / "out.onnx"), ("aggressive", out / "out.onnx")], external)
    written = {p.name: p.read_bytes() for p in out.iterdir()}
    assert written in (_alone(tmp_path, "balanced", external), _alone(tmp_path, "aggressive", external))
    _valid(out / "out.onnx")
