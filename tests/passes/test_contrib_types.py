"""_contrib_types: onnx shape inference types onnxruntime's ops in their typing domains (cases 1-5),
and the schemas leave onnx's registry when the last block using them ends."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import onnx
import onnx.defs
import pytest
from onnx import TensorProto, helper

from bitnet_onnx.passes import _contrib_types
from bitnet_onnx.passes._contrib_types import (
    SHAPES,
    TYPING_DOMAINS,
    typed_by_attribute,
    typing_schemas,
)

F32, F16, I32, I64, U8, I8 = (
    TensorProto.FLOAT,
    TensorProto.FLOAT16,
    TensorProto.INT32,
    TensorProto.INT64,
    TensorProto.UINT8,
    TensorProto.INT8,
)
MS = "com.microsoft"
ROOT = Path(__file__).resolve().parents[2]  # the checkout: models/ is importable from there
Shape = list[int | str | None] | None


def _infer(
    op: str,
    domain: str,
    inputs: list[tuple[str, int, Shape]],
    outputs: list[str],
    **attrs: object,
) -> dict[str, tuple[int, Shape]]:
    """name → (element type, shape; None: no shape, None dim: unknown) of each output `op` writes
    when its node sits in the typing domain, by onnx's shape inference in strict mode."""
    names = [name for name, _, _ in inputs]
    node = helper.make_node(op, names, outputs, name="/op", domain=TYPING_DOMAINS[domain], **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs if n],
        [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outputs if o],
    )
    imports = [helper.make_opsetid("", 17), *(helper.make_opsetid(d, 1) for d in TYPING_DOMAINS.values())]
    with typing_schemas():
        inferred = onnx.shape_inference.infer_shapes(
            helper.make_model(graph, opset_imports=imports), strict_mode=True
        )
    found = {}
    for value in [*inferred.graph.value_info, *inferred.graph.output]:
        tensor = value.type.tensor_type
        shape = [_dim(d) for d in tensor.shape.dim] if tensor.HasField("shape") else None
        found[value.name] = (tensor.elem_type, shape)
    return found


def _dim(dim: onnx.TensorShapeProto.Dimension) -> int | str | None:
    if dim.HasField("dim_value"):
        return dim.dim_value
    # onnx names the unknown dims of graph outputs unk__<n>.
    return None if not dim.dim_param or dim.dim_param.startswith("unk__") else dim.dim_param


@pytest.mark.parametrize("dtype", [F32, F16])
def test_a_norm_output_has_the_type_and_shape_of_its_input(dtype: int) -> None:
    found = _infer(
        "SimplifiedLayerNormalization",
        "",
        [("x", dtype, ["batch", "seq", 8]), ("gain", dtype, [8])],
        ["y"],
        axis=-1,
        epsilon=1e-6,
    )
    assert found == {"y": (dtype, ["batch", "seq", 8])}


def test_an_output_takes_the_type_of_the_input_bound_to_its_type_parameter() -> None:
    # onnxruntime's signature: X is T, scale is V, Y is V; inv_std_var is U (float or double: unknown).
    found = _infer(
        "SimplifiedLayerNormalization",
        "",
        [("x", F32, ["batch", 8]), ("gain", F16, [8])],
        ["y", "inv_std_var"],
    )
    assert found == {"y": (F16, ["batch", 8]), "inv_std_var": (TensorProto.UNDEFINED, None)}


def test_an_output_whose_parameter_allows_one_type_gets_it() -> None:
    # SkipLayerNormalization's mean and inv_std_var are U = float only; no shape rule for them.
    found = _infer(
        "SkipLayerNormalization",
        MS,
        [("x", F16, ["batch", "seq", 8]), ("skip", F16, ["batch", "seq", 8]), ("gamma", F16, [8])],
        ["y", "mean", "inv_std_var", "sum"],
    )
    assert found == {
        "y": (F16, ["batch", "seq", 8]),
        "mean": (F32, None),
        "inv_std_var": (F32, None),
        "sum": (F16, ["batch", "seq", 8]),
    }


@pytest.mark.parametrize(
    ("op", "inputs", "attrs", "expected"),
    [
        ("FastGelu", [("x", F16, ["batch", 16]), ("bias", F16, [16])], {}, (F16, ["batch", 16])),
        ("BiasGelu", [("x", F32, ["batch", 16]), ("bias", F32, [16])], {}, (F32, ["batch", 16])),
        ("Gelu", [("x", F16, [2, 3])], {}, (F16, [2, 3])),
        ("QuickGelu", [("x", F32, [2, 3])], {"alpha": 1.702}, (F32, [2, 3])),
        (
            "RotaryEmbedding",
            [
                ("x", F16, ["batch", "seq", 64]),
                ("positions", I64, ["batch", "seq"]),
                ("cos", F16, [128, 8]),
                ("sin", F16, [128, 8]),
            ],
            {"num_heads": 4},
            (F16, ["batch", "seq", 64]),
        ),
        (  # A[..., K] → Y[..., N]
            "MatMulNBits",
            [("a", F16, ["batch", "seq", 32]), ("b", U8, [48, 1, 16]), ("scales", F16, [48])],
            {"K": 32, "N": 48, "bits": 4, "block_size": 32},
            (F16, ["batch", "seq", 48]),
        ),
        (  # onnx's MatMul shape rule; the float output type is the scales' T3
            "MatMulIntegerToFloat",
            [("a", U8, ["batch", 32]), ("b", I8, [32, 48]), ("sa", F32, []), ("sb", F32, [48])],
            {},
            (F32, ["batch", 48]),
        ),
        (  # batch and sequence of the query, an unknown hidden size (the query may be packed)
            "GroupQueryAttention",
            [
                ("qkv", F16, ["batch", "seq", 96]),
                ("", F16, None),
                ("", F16, None),
                ("", F16, None),
                ("", F16, None),
                ("seqlens", I32, ["batch"]),
                ("total", I32, []),
            ],
            {"num_heads": 4, "kv_num_heads": 2},
            (F16, ["batch", "seq", None]),
        ),
        (  # an op without a shape rule gets its type only
            "FusedMatMul",
            [("a", F16, ["batch", 8, 16]), ("b", F16, ["batch", 32, 16])],
            {"transB": 1},
            (F16, None),
        ),
    ],
)
def test_contrib_op_outputs(op: str, inputs, attrs, expected) -> None:
    assert _infer(op, MS, inputs, ["y"], **attrs) == {"y": expected}


@pytest.mark.parametrize(
    ("op", "inputs", "attrs"),
    [
        ("MatMulNBits", [("a", F16, ["batch", 32]), ("b", U8, [48, 1, 16]), ("s", F16, [48])], {}),  # no N
        ("MatMulIntegerToFloat", [("a", U8, [4, 32]), ("b", I8, [16, 48]), ("sa", F32, []),
                                  ("sb", F32, [])], {}),  # K 32 against 16
        ("GroupQueryAttention", [("q", F16, None), ("", F16, None), ("", F16, None), ("", F16, None),
                                 ("", F16, None), ("l", I32, None), ("t", I32, None)], {}),
    ],
)  # fmt: skip
def test_a_shape_the_rule_cannot_give_leaves_the_output_typed_without_one(op: str, inputs, attrs) -> None:
    (elem_type, shape) = _infer(op, MS, inputs, ["y"], **attrs)["y"]
    assert elem_type in (F16, F32) and shape is None


def test_every_shape_rule_names_an_op_onnxruntime_defines() -> None:
    with typing_schemas() as typed:
        assert set(SHAPES) <= typed


def test_the_schemas_live_in_private_domains_only() -> None:
    with typing_schemas() as typed:
        assert ("", "SimplifiedLayerNormalization") in typed and (MS, "FastGelu") in typed
        assert ("", "LayerNormalization") not in typed  # ONNX's own op (opset 17) is never shadowed
        assert not onnx.defs.has("SimplifiedLayerNormalization", "")
        assert not onnx.defs.has("FastGelu", MS)
        assert onnx.defs.has("FastGelu", TYPING_DOMAINS[MS])
        with pytest.raises(
            onnx.checker.ValidationError, match="No Op registered for SimplifiedLayerNormalization"
        ):
            onnx.checker.check_node(
                helper.make_node("SimplifiedLayerNormalization", ["x", "g"], ["y"]),
                onnx.checker.DEFAULT_CONTEXT,
            )


def _registered() -> set[str]:
    private = set(TYPING_DOMAINS.values())
    return {f"{s.domain}.{s.name}" for s in onnx.defs.get_all_schemas_with_history() if s.domain in private}


def test_the_schemas_are_registered_while_a_block_is_open_and_gone_after_the_last() -> None:
    assert _registered() == set()
    with typing_schemas() as outer:
        count = len(_registered())
        assert count == len(outer) > 100
        with typing_schemas() as inner:  # nested: registered once, kept until the outer block ends
            assert inner == outer and len(_registered()) == count
        assert len(_registered()) == count
    assert _registered() == set()
    with typing_schemas() as again:  # and registered again by the next block
        assert again == outer and len(_registered()) == count
    assert _registered() == set()


def test_blocks_open_in_many_threads_share_one_registration() -> None:
    inside = threading.Barrier(4)
    results: list[tuple[frozenset[tuple[str, str]], int]] = []
    errors: list[BaseException] = []

    def use() -> None:
        try:
            with typing_schemas() as typed:
                inside.wait(timeout=30)  # all four blocks open at once
                results.append((typed, len(_registered())))
                inside.wait(timeout=30)
        except BaseException as exc:  # the thread hands what it raised to the test
            errors.append(exc)

    threads = [threading.Thread(target=use) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 4
    assert len({typed for typed, _ in results}) == 1 and {n for _, n in results} == {len(results[0][0])}
    assert _registered() == set()


def test_a_schema_already_in_a_typing_domain_is_used_and_left_alone() -> None:
    mine = onnx.defs.OpSchema("FastGelu", TYPING_DOMAINS[MS], 1, "another copy's schema")
    onnx.defs.register_schema(mine)
    try:
        with typing_schemas() as typed:
            assert (MS, "FastGelu") in typed
        assert _registered() == {f"{TYPING_DOMAINS[MS]}.FastGelu"}
        assert onnx.defs.get_schema("FastGelu", 1, TYPING_DOMAINS[MS]).doc == "another copy's schema"
    finally:
        onnx.defs.deregister_schema("FastGelu", 1, TYPING_DOMAINS[MS])


def test_an_op_whose_signature_onnx_cannot_hold_gets_no_schema(monkeypatch) -> None:
    def param(type_str: str) -> SimpleNamespace:
        return SimpleNamespace(
            name="X", typeStr=type_str, option=SimpleNamespace(name="Single"), isHomogeneous=True
        )

    newer = SimpleNamespace(  # a type this onnx does not know
        inputs=[param("T")],
        outputs=[param("T")],
        type_constraints=[SimpleNamespace(type_param_str="T", allowed_type_strs=["tensor(float3e1m1)"])],
    )
    monkeypatch.setattr(_contrib_types, "_onnxruntime_ops", lambda: {(MS, "FromTheFuture"): newer})
    with typing_schemas() as typed:
        assert typed == frozenset()
        assert not onnx.defs.has("FromTheFuture", TYPING_DOMAINS[MS])


_AFTER_A_COMPILE = """
import tempfile
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from bitnet_onnx.compiler.compile import compile
from models import bert

folder = Path(tempfile.mkdtemp())
onnx.save(bert.build(bert.BertConfig()), folder / "m.onnx")
compile(folder / "m.onnx", "balanced", output=folder / "ours.onnx", strict=False)
quantize_dynamic(folder / "m.onnx", folder / "int8.onnx", weight_type=QuantType.QInt8, per_channel=True)
import onnx.reference  # builds its op table from the whole registry

print(sum(n.op_type == "DynamicQuantizeLinear" for n in onnx.load(folder / "int8.onnx").graph.node))
"""


def test_onnxruntime_quantizer_and_onnx_reference_work_after_a_compile_in_the_same_process() -> None:
    # A fresh process: onnx.reference must not have been imported before the compile.
    done = subprocess.run(
        [sys.executable, "-c", _AFTER_A_COMPILE], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) > 0


@pytest.mark.parametrize(
    ("domain", "op", "index", "expected"),
    [
        ("com.microsoft", "SkipSimplifiedLayerNormalization", 0, False),
        ("com.microsoft", "SkipSimplifiedLayerNormalization", 1, True),  # mean: stash type U
        ("com.microsoft", "SkipSimplifiedLayerNormalization", 2, True),
        ("com.microsoft", "SkipSimplifiedLayerNormalization", 3, False),  # x + skip: T, like x
        ("com.microsoft", "GroupQueryAttention", 1, False),  # present_key: T_CACHE, like past_key
        ("", "LayerNormalization", 1, True),
        ("", "SimplifiedLayerNormalization", 0, False),  # Y: V, like the scale
        ("", "SimplifiedLayerNormalization", 1, True),
        ("", "Relu", 0, False),
        ("acme", "Unknown", 0, False),
    ],
)
def test_typed_by_attribute_reads_the_signature(domain, op, index, expected):
    assert typed_by_attribute(domain, op, index) is expected
