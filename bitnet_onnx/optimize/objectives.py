"""What the optimizer may choose per layer, and what it is asked to achieve.

A `PrecisionChoice` is one candidate for one layer: the precision of its weights, of its
activations (the input as the layer computes with it) and the layout knobs of the weights. It
becomes the plan's decisions for a layer through `layer_plan` (what the seed facades adapt to their
specs) and a config entry through `to_layer_config`, which states every component the choice
decides so the entry means the same under any base config; both read one table:

- float weights (F32, F16, BF16): the weights' precision is the entry's precision and decides the
  bias, activations and outputs too, unless `activations` says otherwise (an override, which sets
  the outputs too: a layer hands on what it computes in, so `F16/F32`, F16 stored and F32
  computed, adds no conversion at its boundary);
- integer weights (I8 ... I1, BITNET158): the weights take the integer precision, the activations
  `activations` (F32 when None), and the bias and outputs F32 (overrides): an integer precision
  must never decide a layer's outputs, which would hand them on quantized;
- no weights (attention, activation, a normalization without a scale): `activations` is the
  entry's precision and decides every component.

Labels (`PrecisionChoice.label`, read back by `PrecisionChoice.parse`): the weights' precision
name, then the layout knobs (`g<group_size>`, `z` for zero points, `pc` for per-channel ternary
scales, `b3` for base-3 ternary packing), then `+<conversion strategy>` when one is stated
(`I4g128+gptq/I8`), then `/<activations>` when the activations are stated:
always with integer weights, with float weights only when they differ: `F16`, `F16/F32`, `I8/I8`
(int8 weights and activations), `I4g128/F32`, `BITNET158/I8`, `BITNET158b3/I8`. A weightless
choice is its activations' name (`F32`).

`candidate_choices(layer, support)` lists the choices the compiler realises for a layer type, most
precise first (the order the search breaks ties in), filtered by the support matrix:

| layer type          | candidates                                                                      |
|---------------------|---------------------------------------------------------------------------------|
| linear, output      | F32, F16/F32, I8/I8, I8/F32, I4g128/I8, I4g128/F32, I2g64/I8, I2g64/F32,        |
|                     | BITNET158/I8, BITNET158b3/I8, I1g64/F32                                         |
| convolution         | F32, F16/F32, I8/F32, I4g128/F32, I2g64/F32, BITNET158/F32, BITNET158b3/F32     |
| embedding           | F32, F16/F32, I8/F32, I4g128/F32, I2g64/F32 (a table has no activations: F32 is |
|                     | what its entry states for them)                                                 |
| normalization       | F32, F16/F32 (with its scale weight, when it has one)                           |
| attention, activation | F32                                                                           |
| other               | F32 (an unclassified op may be index or shape arithmetic)                       |

With calibration samples giving at least `GPTQ_ROWS_PER_INPUT` (8) × K activation rows for a
linear or output layer of K inputs (`candidate_choices(..., calibration_rows=)`: the search of a
manager built from a model), each of its I4, I2 and BITNET158 choices is followed by its gptq
twin (`numerics.gptq`: the same storage and kernel, the weights rounded with error compensation
on the calibration activations), measured like any other candidate.

Float weights are candidates as `F16/F32` (stored F16, computed F32), not `F16`: onnxruntime's
CPU provider computes a float16 MatMul, LayerNorm, Softmax or Gelu in float32 with a Cast on
each side (`bitnet_onnx.config.presets`), so F16 compute stores no fewer bytes and runs slower;
for the same reason a weightless layer, which stores nothing, has F32 alone. A config entry can
still ask for F16 compute. Convolutions get weight-only compression (the compiler unpacks their
weights for a float Conv, so int8 activations would only add a quantize/dequantize pair);
BITNET158 in a linear layer only with int8 activations, the one case with an integer kernel
(BitLinear). I4 and I2 come with int8
activations too (LowBitMatMul act_quant = 1), the fast form of their kernel.

`OptimizationObjective` is one of four frozen dataclasses, checked on construction (every problem
in one ConfigError):

- `Memory(target_reduction)`: save at least this fraction of the stored bytes, 0 < t < 1: the
  compiled model's constants take at most (1 − t) of the original's; among such plans the search
  takes the most accurate, which (errors growing as bytes shrink) saves about t, not more;
- `Speed(target_speedup, min_accuracy=0.99)`: latency at most 1/target_speedup of the base's
  (predicted by the search, measured by `search.verify`), target_speedup > 1, keeping the output
  cosine ≥ min_accuracy (the default floor: a plan
  that is fast but wrong meets no speed objective);
- `Accuracy(min_accuracy)`: keep the output cosine ≥ min_accuracy, 0 < m ≤ 1, compressing as much
  as possible;
- `Balanced(memory_weight, speed_weight, accuracy_weight)`: maximise the weighted sum of the
  normalised scores; weights ≥ 0, finite, summing to more than 0 (they are normalised to sum 1).

`str(objective)` and `OptimizationObjective.parse(text)` use one text form, the CLI's:
`memory:0.5`, `speed:2`, `speed:2,0.98`, `accuracy:0.99`, `balanced:0.4,0.3,0.3`.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from dataclasses import MISSING, dataclass, field, fields
from typing import ClassVar

from bitnet_onnx.config.config import LayerPrecisionConfig, MixedPrecisionStrategy
from bitnet_onnx.config.report import Thresholds
from bitnet_onnx.core.dtypes import ConversionStrategy, DType, TernaryPacking, WeightLayout
from bitnet_onnx.core.errors import ConfigError
from bitnet_onnx.core.layers import ComponentType, Layer, LayerType, SupportMatrix
from bitnet_onnx.core.plan import Decision, LayerPlan, components_of

__all__ = [
    "DEFAULT_ACCURACY_FLOOR",
    "GPTQ_ROWS_PER_INPUT",
    "Accuracy",
    "Balanced",
    "Memory",
    "OptimizationObjective",
    "PrecisionChoice",
    "Speed",
    "candidate_choices",
    "validation_thresholds",
]

DEFAULT_ACCURACY_FLOOR = 0.99
"""The output cosine a Speed objective keeps unless told otherwise."""

_F32, _F16 = DType.F32, DType.F16


@dataclass(frozen=True)
class PrecisionChoice:
    """One candidate for one layer: weights, activations and the weights' layout knobs.

    One spelling per choice: with float weights, `activations` is None when the layer computes in
    the weights' precision; with integer weights it is always set (None becomes F32); `weights`
    None is a layer without weights, computing in `activations`.
    """

    weights: DType | None
    activations: DType | None = None
    layout: WeightLayout = field(default_factory=WeightLayout)
    conversion: ConversionStrategy | None = None  # how the weights are converted; None: the default

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.weights is None and self.activations is None:
            raise ConfigError("a PrecisionChoice needs weights or activations; both are None")
        if self.weights is not None:
            set_(self, "weights", DType.parse(self.weights))
        if self.activations is not None:
            set_(self, "activations", DType.parse(self.activations))
        if self.weights is not None and self.weights.is_float and self.activations is self.weights:
            set_(self, "activations", None)
        if self.weights is not None and self.weights.is_integer and self.activations is None:
            set_(self, "activations", _F32)

    @property
    def precision(self) -> DType:
        """The entry's precision: the weights', or the activations' on a weightless choice."""
        return self.weights if self.weights is not None else self.activations  # type: ignore[return-value]

    @property
    def activation_dtype(self) -> DType:
        """The precision the layer computes its input in."""
        return self.activations if self.activations is not None else self.precision

    @property
    def label(self) -> str:
        if self.weights is None:
            return self.activation_dtype.name
        head = self.weights.name + _layout_suffix(self.layout)
        if self.conversion is not None:
            head += f"+{self.conversion.value}"
        return head if self.activations is None else f"{head}/{self.activations.name}"

    def __str__(self) -> str:
        return self.label

    @classmethod
    def parse(cls, label: str) -> PrecisionChoice:
        """Read a label back (`F16`, `I8/I8`, `I4g128/F32`, `BITNET158b3/I8`, ...). A weightless
        label parses as float weights; `weightless()` turns it into a weightless choice."""
        match = _LABEL.fullmatch(label.strip()) if isinstance(label, str) else None
        if match is None:
            raise ConfigError(
                f"precision choice {label!r} is not a label like F16, I8/I8, I4g128/F32 or BITNET158/I8"
            )
        layout = WeightLayout(
            group_size=int(match["group"]) if match["group"] else None,
            asymmetric=bool(match["z"]),
            per_channel=bool(match["pc"]),
            packing=TernaryPacking.BASE3 if match["b3"] else TernaryPacking.TWO_BIT,
        )
        try:
            activations = DType.parse(match["acts"]) if match["acts"] else None
            conversion = ConversionStrategy.parse(match["conv"]) if match["conv"] else None
            return cls(DType.parse(match["dtype"]), activations, layout, conversion)
        except ConfigError as exc:
            raise ConfigError(
                f"precision choice {label!r} is not a label like F16, I8/I8, I4g128/F32 or "
                f"BITNET158/I8: {exc}"
            ) from None

    def weightless(self) -> PrecisionChoice:
        """The same choice for a layer without weights: only the compute precision is kept."""
        return PrecisionChoice(None, self.activation_dtype)

    def _dtypes(self) -> dict[ComponentType, DType]:
        """The precision of every inference component under this choice (module docstring): the
        one statement both the plan (`layer_plan`) and the config entry (`to_layer_config`) read."""
        stored = self.precision if self.precision.is_float else _F32
        computed = self.activation_dtype if self.activation_dtype.is_float else _F32
        dtypes = {
            ComponentType.ACTIVATIONS: self.activation_dtype,
            ComponentType.BIAS: stored,
            ComponentType.OUTPUTS: computed,
        }
        return dtypes if self.weights is None else {ComponentType.WEIGHTS: self.weights, **dtypes}

    def layer_plan(self, layer: Layer) -> LayerPlan:
        """The plan's decisions for `layer` under this choice: one per component the layer has."""
        dtypes = self._dtypes()
        layout = self.layout if self.precision.is_integer else WeightLayout()
        return LayerPlan(
            layer,
            {
                c: Decision(
                    dtypes[c],
                    f"choice:{self.label}",
                    layout if c is ComponentType.WEIGHTS else WeightLayout(),
                    self.conversion if c is ComponentType.WEIGHTS else None,
                    None,
                    f"{c.value} {dtypes[c].name} by the optimizer's choice {self.label}",
                )
                for c in components_of(layer)
                if c in dtypes
            },
        )

    @classmethod
    def of_plan(cls, plan: LayerPlan) -> PrecisionChoice:
        """The choice a layer's plan states (the inverse of `layer_plan`): its weights' precision,
        layout (the layout only for integer weights) and gptq conversion, computing in its
        activations' precision (its outputs' when it has no activations component, as an embedding:
        a choice's outputs are its compute precision); a layer without weights computes in that
        precision alone."""
        weights = plan.decisions.get(ComponentType.WEIGHTS)
        activations = plan.dtype(ComponentType.ACTIVATIONS) or plan.dtype(ComponentType.OUTPUTS)
        if plan.layer.weight is None or weights is None:
            return cls(None, activations)
        layout = weights.layout if weights.dtype.is_integer else WeightLayout()
        # gptq is the one conversion strategy that makes a candidate of its own
        gptq = weights.conversion_strategy is ConversionStrategy.GPTQ and weights.dtype.is_integer
        return cls(weights.dtype, activations, layout, ConversionStrategy.GPTQ if gptq else None)

    def to_layer_config(self, layer_type: LayerType | str | None) -> LayerPrecisionConfig:
        """The config entry realising this choice on a layer of `layer_type` (see the module
        docstring for the components it decides); None writes an entry for any layer type. An
        integer precision states every other component (it must never decide them); a float one
        only those that differ from it."""
        layer_type = None if layer_type is None else LayerType.parse(layer_type)
        entry = LayerPrecisionConfig(layer_type, self.precision, self.layout, self.conversion)
        for component, dtype in self._dtypes().items():
            if component is not ComponentType.WEIGHTS and (
                self.precision.is_integer or dtype is not self.precision
            ):
                entry = entry.with_component_override(component, dtype)
        return entry


_LABEL = re.compile(
    r"(?P<dtype>[A-Za-z0-9]+?)(?:g(?P<group>\d+))?(?P<z>z)?(?P<pc>pc)?(?P<b3>b3)?(?:\+(?P<conv>[a-z_]+))?(?:/(?P<acts>[A-Za-z0-9]+))?"
)


def _layout_suffix(layout: WeightLayout) -> str:
    return (
        (f"g{layout.group_size}" if layout.group_size else "")
        + ("z" if layout.asymmetric else "")
        + ("pc" if layout.per_channel else "")
        + ("b3" if layout.packing is TernaryPacking.BASE3 else "")
    )


def _choices(*labels: str) -> tuple[PrecisionChoice, ...]:
    return tuple(PrecisionChoice.parse(label) for label in labels)


_LINEAR = _choices(
    "F32",
    "F16/F32",
    "I8/I8",
    "I8/F32",
    "I4g128/I8",
    "I4g128/F32",
    "I2g64/I8",
    "I2g64/F32",
    "BITNET158/I8",
    "BITNET158b3/I8",
    "I1g64/F32",
)
_CONVOLUTION = _choices(
    "F32", "F16/F32", "I8/F32", "I4g128/F32", "I2g64/F32", "BITNET158/F32", "BITNET158b3/F32"
)
_EMBEDDING = _choices("F32", "F16/F32", "I8/F32", "I4g128/F32", "I2g64/F32")
_FLOATS = _choices("F32", "F16/F32")

_CANDIDATES: dict[LayerType, tuple[PrecisionChoice, ...]] = {
    LayerType.LINEAR: _LINEAR,
    LayerType.OUTPUT: _LINEAR,
    LayerType.CONVOLUTION: _CONVOLUTION,
    LayerType.EMBEDDING: _EMBEDDING,
    LayerType.NORMALIZATION: _FLOATS,
    LayerType.ATTENTION: _choices("F32"),
    LayerType.ACTIVATION: _choices("F32"),
    LayerType.OTHER: _choices("F32"),
}

GPTQ_ROWS_PER_INPUT = 8
"""Activation rows per layer input the calibration must give before gptq is a candidate. Measured on
all-MiniLM-L6-v2: with 864 rows for K = 384 (2.25 per input) the gptq layers fitted the samples:
each alone measured 2-10× closer than round-to-nearest, the plan of 30 of them 0.981 on held-out
samples where the search predicted 0.990."""

_GPTQ_LAYERS = frozenset({LayerType.LINEAR, LayerType.OUTPUT})
_GPTQ_WEIGHTS = frozenset({DType.I4, DType.I2, DType.BITNET158})


def _inputs_of(layer: Layer) -> int:
    """K of a matrix layer's W [N, K] (0 when its weight is no plain matrix)."""
    shape, nk = layer.weight_shape, layer.weight_nk
    if shape is None or len(shape) != 2 or nk is None:
        return 0
    return shape[1] if nk else shape[0]


def _gptq_twin(choice: PrecisionChoice) -> tuple[PrecisionChoice, ...]:
    if choice.weights not in _GPTQ_WEIGHTS:
        return ()
    return (PrecisionChoice(choice.weights, choice.activations, choice.layout, ConversionStrategy.GPTQ),)


# Layer types whose activations a choice sets, for the support check.
_ACTIVATED = frozenset({LayerType.LINEAR, LayerType.OUTPUT, LayerType.CONVOLUTION})


def candidate_choices(
    layer: Layer, support: SupportMatrix | None = None, *, calibration_rows: int = 0
) -> tuple[PrecisionChoice, ...]:
    """The choices for `layer` (module docstring table), most precise first, keeping those the
    support matrix allows: the weights for (layer type, WEIGHTS), the activations for (layer type,
    ACTIVATIONS) on linear, output and convolution layers. A weightless layer gets weightless
    choices. `calibration_rows` (the activation rows the search's calibration samples give,
    `Calibration.positions`) of at least `GPTQ_ROWS_PER_INPUT` × the layer's K adds the gptq twin
    of each I4, I2 and BITNET158 choice of a linear or output layer right after it: with few rows
    per input H = 2XᵀX/n is (near) singular and GPTQ fits the samples instead of the layer."""
    support = support or SupportMatrix()
    kept: list[PrecisionChoice] = []
    listed = _CANDIDATES[layer.layer_type]
    if layer.layer_type in _GPTQ_LAYERS and 0 < GPTQ_ROWS_PER_INPUT * _inputs_of(layer) <= calibration_rows:
        listed = tuple(twin for choice in listed for twin in (choice, *_gptq_twin(choice)))
    for choice in listed:
        if layer.weight is None:
            choice = choice.weightless()
            allowed = support.allows(layer.layer_type, ComponentType.ACTIVATIONS, choice.activation_dtype)
        else:
            allowed = support.allows(layer.layer_type, ComponentType.WEIGHTS, choice.precision) and (
                layer.layer_type not in _ACTIVATED
                or support.allows(layer.layer_type, ComponentType.ACTIVATIONS, choice.activation_dtype)
            )
        if allowed and choice not in kept:
            kept.append(choice)
    return tuple(kept)


# -- objectives -----------------------------------------------------------------------------------


def _number_problems(name: str, value: object) -> list[str]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return [f"{name} must be a number, not {value!r}"]
    if not math.isfinite(value):
        return [f"{name} must be finite, not {value!r}"]
    return []


class OptimizationObjective(ABC):
    """What the optimizer is asked to achieve. Subclasses: Memory, Speed, Accuracy, Balanced."""

    kind: ClassVar[str]

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise ConfigError(problems, source=f"{type(self).__name__} objective")

    @abstractmethod
    def _problems(self) -> list[str]: ...

    def __str__(self) -> str:
        values = ",".join(f"{getattr(self, f.name):g}" for f in fields(self))  # type: ignore[arg-type]
        return f"{self.kind}:{values}"

    @staticmethod
    def parse(text: str) -> OptimizationObjective:
        """Read `memory:0.5`, `speed:2`, `speed:2,0.98`, `accuracy:0.99`, `balanced:0.4,0.3,0.3`."""
        kind, _, rest = text.strip().partition(":")
        cls = _KINDS.get(kind.strip().lower())
        if cls is None or not rest.strip():
            raise ConfigError(
                f"objective {text!r} must be KIND:VALUES with KIND one of {', '.join(_KINDS)}, e.g. "
                "memory:0.5, speed:2, accuracy:0.99 or balanced:0.4,0.3,0.3"
            )
        try:
            values = [float(v) for v in rest.split(",")]
        except ValueError:
            raise ConfigError(f"objective {text!r}: {rest!r} must be comma-separated numbers") from None
        arity = len(fields(cls))  # type: ignore[arg-type]
        required = sum(1 for f in fields(cls) if f.default is MISSING)  # type: ignore[arg-type]
        if not required <= len(values) <= arity:
            raise ConfigError(
                f"objective {text!r}: {kind} takes {required} to {arity} values, got {len(values)}"
            )
        return cls(*values)


@dataclass(frozen=True)
class Memory(OptimizationObjective):
    """Save at least `target_reduction` of the stored bytes (module docstring) with the least
    accuracy loss."""

    target_reduction: float
    kind: ClassVar[str] = "memory"

    def _problems(self) -> list[str]:
        found = _number_problems("target_reduction", self.target_reduction)
        if not found and not 0.0 < self.target_reduction < 1.0:
            found.append(
                f"target_reduction {self.target_reduction!r} must be a fraction strictly between 0 and 1, "
                "e.g. 0.5 to halve the stored bytes"
            )
        return found


@dataclass(frozen=True)
class Speed(OptimizationObjective):
    """Run at least `target_speedup` times faster than the base (predicted), keeping the output
    cosine ≥ `min_accuracy`."""

    target_speedup: float
    min_accuracy: float = DEFAULT_ACCURACY_FLOOR
    kind: ClassVar[str] = "speed"

    def _problems(self) -> list[str]:
        found = _number_problems("target_speedup", self.target_speedup)
        if not found and not self.target_speedup > 1.0:
            found.append(f"target_speedup {self.target_speedup!r} must be greater than 1, e.g. 2.0")
        return found + _accuracy_problems(self.min_accuracy)


@dataclass(frozen=True)
class Accuracy(OptimizationObjective):
    """Keep the output cosine ≥ `min_accuracy`, compressing as much as possible."""

    min_accuracy: float
    kind: ClassVar[str] = "accuracy"

    def _problems(self) -> list[str]:
        return _accuracy_problems(self.min_accuracy)


def _accuracy_problems(value: float) -> list[str]:
    found = _number_problems("min_accuracy", value)
    if not found and not 0.0 < value <= 1.0:
        found.append(f"min_accuracy {value!r} is an output cosine: it must be in (0, 1], e.g. 0.99")
    return found


@dataclass(frozen=True)
class Balanced(OptimizationObjective):
    """Maximise memory_weight·memory score + speed_weight·speed score + accuracy_weight·accuracy
    score (each score normalised to [0, 1], see `bitnet_onnx.optimize.search`)."""

    memory_weight: float
    speed_weight: float
    accuracy_weight: float
    kind: ClassVar[str] = "balanced"

    def _problems(self) -> list[str]:
        found: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            problems = _number_problems(f.name, value)
            if not problems and value < 0:
                problems.append(f"{f.name} {value!r} must be ≥ 0")
            found += problems
        if not found and self.memory_weight + self.speed_weight + self.accuracy_weight <= 0:
            found.append("memory_weight + speed_weight + accuracy_weight must be > 0, e.g. 0.4, 0.3, 0.3")
        return found

    @property
    def normalized(self) -> tuple[float, float, float]:
        """(memory, speed, accuracy) weights scaled to sum 1."""
        total = self.memory_weight + self.speed_weight + self.accuracy_weight
        return self.memory_weight / total, self.speed_weight / total, self.accuracy_weight / total


_KINDS: dict[str, type[OptimizationObjective]] = {
    cls.kind: cls
    for cls in (Memory, Speed, Accuracy, Balanced)  # type: ignore[type-abstract]
}


def validation_thresholds(
    objective: OptimizationObjective, strategy: MixedPrecisionStrategy
) -> tuple[str, Thresholds]:
    """(what sets them, the thresholds) the compile of a plan for `objective` is validated against:
    Accuracy and Speed their own floor (every output's cosine ≥ min_accuracy, no bound on the
    relative error); Memory and Balanced set no accuracy floor, so the plan's `strategy`'s."""
    if isinstance(objective, (Accuracy, Speed)):
        floor = Thresholds(min_cosine=objective.min_accuracy, max_rel_error=math.inf)
        return f"objective {objective}", floor
    basis = f"{strategy.value} (objective {objective} sets no accuracy floor)"
    return basis, Thresholds.for_strategy(strategy)
