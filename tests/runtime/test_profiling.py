"""Kernel times grouped by layer (bitnet_onnx.runtime.profiling.layer_times), on synthetic profiler events."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from bitnet_onnx.runtime.profiling import NO_LAYER, LayerTime, layer_times


def _model() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["/conv/Conv_output_0"], name="/conv/Conv"),
        helper.make_node("BitLinear", ["a", "p", "s"], ["fc/out"], name="fc/BitLinear", domain="bitnet"),
        helper.make_node("Relu", ["fc/out"], ["y"], name="relu"),
    ]
    for node, layer, kind, op in (
        (nodes[0], "conv", "convolution", "Conv"),
        (nodes[1], "fc", "linear", "BitLinear"),
    ):
        for key, value in (("bitnet.layer", layer), ("bitnet.layer_type", kind), ("bitnet.op", op)):
            node.metadata_props.add(key=key, value=value)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    return helper.make_model(helper.make_graph(nodes, "g", [x], [x]))


def _event(name: str, dur: int, op: str, cat: str = "Node") -> dict:
    return {"cat": cat, "name": name, "dur": dur, "args": {"op_name": op}}


def test_kernels_are_grouped_by_layer_slowest_first():
    events = [
        _event("model_loading_uri", 900, "", cat="Session"),
        _event("fc/BitLinear_kernel_time", 30, "BitLinear"),
        _event("fc/BitLinear_fence_before", 5, "BitLinear"),
        _event("fc/BitLinear_kernel_time", 20, "BitLinear"),
        _event("/conv/Conv_output_0_nchwc_kernel_time", 70, "Conv"),  # renamed by layout transform
        _event("relu_kernel_time", 4, "Relu"),
        _event("MatMulAddFusion_kernel_time", 6, "Gemm"),
        _event("fc/BitLinear/SomeFusion/_kernel_time", 9, "FusedOp"),  # named after a node it fused
        _event("relu_kernel_time", 3, "Relu"),
    ]
    assert layer_times(events, _model()) == [
        LayerTime("conv", "convolution", "Conv", 1, 70),
        LayerTime("fc", "linear", "BitLinear", 3, 59),
        LayerTime(NO_LAYER, "", "Relu", 2, 7),
        LayerTime(NO_LAYER, "", "Gemm", 1, 6),
    ]


def test_no_events_no_rows():
    assert layer_times([], _model()) == []
