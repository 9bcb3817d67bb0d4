"""_contrib_types: onnx shape inference types onnxruntime's ops in their typing domains (cases 1-5)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import onnx
import onnx.defs
import pytest
from onnx import TensorProto, helper

from bitnet_onnx.passes import _contrib_types
from bitnet_onnx.passes._contrib_types import (
    SHAPES,
    TYPING_DOMAINS,
    register_typing_schemas,
    typed_by_attribute,
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
    register_typing_schemas()
    names = [name for name, _, _ in inputs]
    node = helper.make_node(op, names, outputs, name="/op", domain=TYPING_DOMAINS[domain], **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs if n],
        [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outputs if o],
    )
    imports = [helper.make_opsetid("", 17), *(helper.make_opsetid(d, 1) for d in TYPING_DOMAINS.values())]
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
    assert set(SHAPES) <= register_typing_schemas()


def test_the_schemas_live_in_private_domains_only() -> None:
    typed = register_typing_schemas()
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


def test_registering_again_and_from_many_threads_registers_nothing_twice(monkeypatch) -> None:
    first = register_typing_schemas()
    # A fresh cache (as after reloading the module) meets schemas already in the registry.
    monkeypatch.setattr(_contrib_types, "_registered", _contrib_types._registered.__wrapped__)
    results: list[frozenset[tuple[str, str]]] = []
    errors: list[BaseException] = []

    def register() -> None:
        try:
            results.append(register_typing_schemas())
        except BaseException as exc:  # the thread hands what it raised to the test
            errors.append(exc)

    threads = [threading.Thread(target=register) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and results == [first] * 4


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
    monkeypatch.setattr(_contrib_types, "_registered", _contrib_types._registered.__wrapped__)
    assert register_typing_schemas() == frozenset()
    assert not onnx.defs.has("FromTheFuture", TYPING_DOMAINS[MS])


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
