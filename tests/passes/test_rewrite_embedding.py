"""rewrite, EMBEDDING layers (passes/rewrite/embedding.py) and tied tables (p50_rewrite case 1)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from bitnet_onnx.core.dtypes import DType, TernaryPacking, WeightLayout, storage_bytes
from bitnet_onnx.core.errors import UnsupportedModelError
from bitnet_onnx.core.layers import Layer, LayerType
from bitnet_onnx.numerics.converter import PrecisionConverter
from bitnet_onnx.numerics.quantization import bitlinear_reference
from bitnet_onnx.passes.rewrite import linear
from tests.passes.rewrite_graphs import (
    decision,
    export,
    initializers,
    make_plan,
    needs_op,
    ops,
    relative_error,
    rewrite,
    round_to,
    run,
)

F32 = np.float32
V, H = 50, 24
IDS = np.array([[0, 7, 49, 7], [3, 3, 12, 1]], dtype=np.int64)


def _table(seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((V, H)) * 0.5).astype(F32)


def _embedding(table: np.ndarray, tied_head: bool = False) -> tuple[gs.Graph, list[Layer]]:
    """ids → Gather(table) → rows; with `tied_head` also rows → MatMul(·, Transpose(table)) → logits."""
    ids = gs.Variable("input_ids", dtype=np.int64, shape=["batch", "seq"])
    rows = gs.Variable("/model/embed_tokens/Gather_output_0", dtype=F32, shape=["batch", "seq", H])
    weight = gs.Constant("model.embed_tokens.weight", table)
    nodes = [gs.Node("Gather", "/model/embed_tokens/Gather", {"axis": 0}, [weight, ids], [rows])]
    embed = Layer(
        "model.embed_tokens", LayerType.EMBEDDING, 0, ("/model/embed_tokens/Gather",), "test",
        weight=weight.name, weight_shape=(V, H), tied_with="lm_head" if tied_head else None,
    )  # fmt: skip
    if not tied_head:
        return gs.Graph(nodes=nodes, inputs=[ids], outputs=[rows], opset=17), [embed]
    transposed = gs.Variable("/lm_head/Transpose_output_0", dtype=F32, shape=[H, V])
    logits = gs.Variable("logits", dtype=F32, shape=["batch", "seq", V])
    nodes += [
        gs.Node("Transpose", "/lm_head/Transpose", {"perm": [1, 0]}, [weight], [transposed]),
        gs.Node("MatMul", "/lm_head/MatMul", {}, [rows, transposed], [logits]),
    ]
    head = Layer(
        "lm_head", LayerType.OUTPUT, 1, ("/lm_head/MatMul",), "test",
        weight=weight.name, weight_shape=(V, H), tied_with="model.embed_tokens",
    )  # fmt: skip
    return gs.Graph(nodes=nodes, inputs=[ids], outputs=[rows, logits], opset=17), [embed, head]


@pytest.mark.kernels
@pytest.mark.parametrize("weights", [DType.F16, DType.BF16])
def test_case_2_float_tables_are_stored_in_their_type_and_rows_cast_back(weights):
    table = _table()
    graph, (embed,) = _embedding(table)
    result, _ = rewrite(graph, [make_plan(embed, weights=weights)])
    model = export(graph)
    assert ops(model) == {"Gather": 1, "Cast": 1}
    (stored,) = initializers(model).values()
    assert stored.dtype == np.dtype(weights.numpy_type) and stored.shape == (V, H)
    assert result.changes[0].detail.startswith(f"Gather; constants {V * H * 4} → {V * H * 2} bytes")
    (rows,) = run(model, {"input_ids": IDS})
    np.testing.assert_array_equal(rows, round_to(table, weights)[IDS])


_QUANTIZED = [
    (DType.I8, WeightLayout()),
    (DType.I8, WeightLayout(group_size=8, asymmetric=True)),
    (DType.I4, WeightLayout(group_size=8)),
    (DType.I4, WeightLayout(asymmetric=True)),
    (DType.I2, WeightLayout(group_size=12)),
    (DType.I1, WeightLayout(group_size=8)),
    (DType.BITNET158, WeightLayout()),
    (DType.BITNET158, WeightLayout(per_channel=True)),
    (DType.BITNET158, WeightLayout(per_channel=True, packing=TernaryPacking.BASE3)),
]


@pytest.mark.kernels
@pytest.mark.parametrize(("weights", "layout"), _QUANTIZED)
@pytest.mark.parametrize("outputs", [DType.F32, DType.F16])
def test_case_3_quantized_tables_are_gathered_packed_and_dequantized(weights, layout, outputs):
    needs_op("DequantizeLowBit")
    table = _table()
    graph, (embed,) = _embedding(table)
    rewrite(graph, [make_plan(embed, weights=decision(weights, layout), outputs=outputs)])
    model = export(graph)
    per_row = weights is not DType.BITNET158 or layout.per_channel
    gathers = 1 + per_row + layout.asymmetric
    expected_ops = {"Gather": gathers, "DequantizeLowBit": 1} | ({"Cast": 1} if outputs is DType.F16 else {})
    assert ops(model) == expected_ops
    converted = PrecisionConverter().convert_tensor(table, weights, layout=layout)
    assert sum(a.nbytes for a in initializers(model).values()) == storage_bytes(
        weights, (V, H), converted.layout
    )
    assert converted.nbytes == storage_bytes(weights, (V, H), converted.layout)

    (rows,) = run(model, {"input_ids": IDS})
    expected = converted.dequantize()[IDS]
    np.testing.assert_array_equal(rows, round_to(expected, outputs))
    bound = {DType.I8: 0.02, DType.I4: 0.25, DType.I2: 0.8, DType.I1: 0.9, DType.BITNET158: 0.7}[weights]
    assert relative_error(rows, table[IDS]) < bound


def test_gather_along_another_axis_is_refused():
    graph, (embed,) = _embedding(_table())
    graph.nodes[0].attrs["axis"] = 1
    with pytest.raises(UnsupportedModelError, match=r"model\.embed_tokens.*axis 0"):
        rewrite(graph, [make_plan(embed, weights="I8")])


# -- tied tables ---------------------------------------------------------------------------------------


def _rows_of(table: np.ndarray) -> np.ndarray:
    """A table that ternarizes losslessly."""
    return np.sign(np.round(table)).astype(F32) * F32(0.5)


@pytest.mark.kernels
def test_a_tied_ternary_table_is_stored_once_for_the_gather_and_the_bitlinear_head():
    needs_op("DequantizeLowBit")
    table = _rows_of(_table())
    graph, (embed, head) = _embedding(table, tied_head=True)
    plans = [
        make_plan(embed, weights="BITNET158"),
        make_plan(head, weights="BITNET158", activations="I8"),
    ]
    result, _ = rewrite(graph, plans)
    model = export(graph)
    assert ops(model) == {"Gather": 1, "DequantizeLowBit": 1, "BitLinear": 1}
    arrays = initializers(model)
    assert sum(a.nbytes for a in arrays.values()) == storage_bytes(DType.BITNET158, (V, H))
    gather = next(n for n in model.graph.node if n.op_type == "Gather")
    bitlinear = next(n for n in model.graph.node if n.op_type == "BitLinear")
    assert gather.input[0] == bitlinear.input[1]
    assert result.warnings == ()
    head_change = next(c for c in result.changes if c.layer == "lm_head")
    assert "→ 0 bytes" in head_change.detail and "model.embed_tokens" in head_change.detail

    rows, logits = run(model, {"input_ids": IDS})
    np.testing.assert_array_equal(rows, table[IDS])
    packed, scale = arrays[bitlinear.input[1]], arrays[bitlinear.input[2]]
    np.testing.assert_array_equal(logits, bitlinear_reference(rows, packed, scale, None, H, "2bit"))


@pytest.mark.kernels
def test_a_tied_float16_table_is_stored_once_and_the_head_reads_it_transposed():
    table = _table()
    graph, (embed, head) = _embedding(table, tied_head=True)
    result, _ = rewrite(graph, [make_plan(embed, weights="F16"), make_plan(head, weights="F16")])
    model = export(graph)
    (stored,) = initializers(model).values()
    assert stored.dtype == np.float16 and stored.shape == (V, H)
    assert ops(model) == {"Gather": 1, "Cast": 2, "Transpose": 1, "MatMul": 1}
    assert result.warnings == ()
    _, logits = run(model, {"input_ids": IDS})
    w = round_to(table, DType.F16)
    np.testing.assert_allclose(logits, w[IDS] @ w.T, rtol=1e-5, atol=1e-5)


def test_a_tied_int8_head_reads_the_embedding_table_instead_of_measuring(monkeypatch):
    monkeypatch.setattr(
        linear, "choose_int8_kernel", lambda *args: pytest.fail("the table is shared: no choice")
    )
    graph, (embed, head) = _embedding(_table(), tied_head=True)
    plans = [make_plan(embed, weights="I8"), make_plan(head, weights="I8", activations="I8")]
    result, _ = rewrite(graph, plans, measure=True)
    lowbit = next(n for n in graph.nodes if n.op == "LowBitMatMul")
    gather = next(n for n in graph.nodes if n.op == "Gather" and n.inputs[0].dtype == np.uint8)
    assert lowbit.inputs[1] is gather.inputs[0]
    assert result.warnings == ()


def test_tied_layers_in_different_formats_store_two_copies_and_warn_with_the_cost():
    graph, (embed, head) = _embedding(_table(), tied_head=True)
    plans = [make_plan(embed, weights="F16"), make_plan(head, weights="BITNET158", activations="I8")]
    result, _ = rewrite(graph, plans)
    (warning,) = result.warnings
    cost = storage_bytes(DType.BITNET158, (V, H))
    assert "'model.embed_tokens' and 'lm_head'" in warning and f"costs {cost} bytes" in warning
    assert "F16 vs BITNET158" in warning
