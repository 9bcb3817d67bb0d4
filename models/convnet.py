"""Small CNN classifier, named like a torchvision `features`/`classifier` model.

input float32 [batch, in_channels, image_size, image_size] → logits float32 [batch, num_classes].
Stage j (one per entry of `channels`): Conv 3×3, pad 1, with bias (`features.{4j}`), then
BatchNormalization (`features.{4j+1}`, eval mode: running mean/var) unless `fold_batchnorm`, Relu
(`features.{4j+2}`), then MaxPool 2×2 stride 2 (`features.{4j+3}`) on every stage but the last.
Then GlobalAveragePool, Flatten and the classifier Gemm(transB=1) with a [num_classes, C] weight
(`classifier.weight`).

With `fold_batchnorm` the BatchNorm is folded into the conv as exporters do in eval mode:
W' = W · γ/sqrt(var + ε) per output channel, b' = (b − mean) · γ/sqrt(var + ε) + β. Running var is
γ² of the weight recipe (so 1 unless trained-like); with TERNARY weights the folding factor is the
same for every channel, so folded weights stay exactly ternary × one scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from models._onnx import GraphBuilder, check_opset, require
from models.weights import WeightInit, WeightSampler

__all__ = ["ConvNetConfig", "build"]

_BN_EPS = 1e-5


@dataclass(frozen=True)
class ConvNetConfig:
    """Shape, graph style and weights of one CNN. The defaults are a tiny test model."""

    in_channels: int = 3
    image_size: int = 32
    channels: tuple[int, ...] = (16, 32, 64)
    num_classes: int = 10
    fold_batchnorm: bool = True
    weights: WeightInit = WeightInit.RANDOM
    opset: int = 17
    seed: int = 0

    def __post_init__(self) -> None:
        problems = [
            f"{k} must be positive, got {getattr(self, k)}"
            for k in ("in_channels", "image_size", "num_classes")
            if getattr(self, k) <= 0
        ]
        if not self.channels or min(self.channels) <= 0:
            problems.append(f"channels must be a non-empty tuple of positive widths, got {self.channels}")
        elif self.image_size % 2 ** (len(self.channels) - 1):
            problems.append(
                f"image_size {self.image_size} must be divisible by 2^{len(self.channels) - 1} "
                f"(one 2×2 max-pool between stages)"
            )
        problems += check_opset(self.opset, 13, "ConvNet")
        require(problems, "ConvNetConfig")


def build(config: ConvNetConfig) -> onnx.ModelProto:
    """The CNN described by `config`."""
    c = config
    b = GraphBuilder("convnet", c.opset)
    w = WeightSampler(c.weights, c.seed)
    x = b.input("input", TensorProto.FLOAT, ["batch", c.in_channels, c.image_size, c.image_size])
    in_ch = c.in_channels
    for j, out_ch in enumerate(c.channels):
        depth = j / len(c.channels)
        conv, bn, relu, pool = (f"features.{4 * j + k}" for k in range(4))
        weight = w.matrix(f"{conv}.weight", (out_ch, in_ch, 3, 3), out_axis=0, depth=depth)
        bias = w.bias(f"{conv}.bias", out_ch)
        stats = _batchnorm_stats(w, bn, out_ch, depth)
        if c.fold_batchnorm:
            weight, bias = _fold(weight, bias, stats)
        conv_inputs = [x, b.initializer(f"{conv}.weight", weight), b.initializer(f"{conv}.bias", bias)]
        x = b.node("Conv", conv_inputs, f"/features/{conv}", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        if not c.fold_batchnorm:
            names = [b.initializer(f"{bn}.{k}", v) for k, v in stats.items()]
            x = b.node("BatchNormalization", [x, *names], f"/features/{bn}", epsilon=_BN_EPS)
        x = b.node("Relu", [x], f"/features/{relu}")
        if j < len(c.channels) - 1:
            x = b.node("MaxPool", [x], f"/features/{pool}", kernel_shape=[2, 2], strides=[2, 2])
        in_ch = out_ch
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x], "/avgpool")], "", axis=1)
    weight = b.initializer(
        "classifier.weight", w.matrix("classifier.weight", (c.num_classes, in_ch), out_axis=0, depth=1.0)
    )
    bias = b.initializer("classifier.bias", w.bias("classifier.bias", c.num_classes))
    b.node("Gemm", [x, weight, bias], "/classifier", transB=1, output="logits")
    b.output("logits", TensorProto.FLOAT, ["batch", c.num_classes])
    return b.finish(f"small CNN: {c}")


def _batchnorm_stats(w: WeightSampler, prefix: str, n: int, depth: float) -> dict[str, np.ndarray]:
    gamma = w.gain(f"{prefix}.weight", n, depth=depth)
    return {
        "weight": gamma,
        "bias": w.bias(f"{prefix}.bias", n),
        "running_mean": w.bias(f"{prefix}.running_mean", n),
        "running_var": np.square(w.gain(f"{prefix}.running_var", n, depth=depth)),
    }


def _fold(
    weight: np.ndarray, bias: np.ndarray, stats: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    factor = stats["weight"] / np.sqrt(stats["running_var"] + np.float32(_BN_EPS))
    return weight * factor[:, None, None, None], (bias - stats["running_mean"]) * factor + stats["bias"]
