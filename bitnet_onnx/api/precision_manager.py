"""`PrecisionManager`: the seed's central coordinator, on a model or on layers registered by hand.

It holds a `MixedPrecisionConfig` and the layers' `LayerPrecisionSpec`s (in a
`LayerPrecisionManager`, so registration checks the support matrix and keeps model order), and:

- `get_optimal_precision(layer, component, tensor=None)`: the precision a component gets. A
  registered layer starts from its spec (source `spec:NAME`; the layout of its weights is the
  spec's; the config's conversion strategy comes along when the config resolves the same
  precision); a layer not registered starts from the config, which must then name it in an exact,
  typed entry. The config's policies decide on top (`PolicyEngine.decide`), with the layer's facts:
  position, parameter count, and the statistics of `tensor` (or of the weights given at
  registration) when the component is the weights.
- `convert_for_operation(tensor, layer, component)`: the tensor in that precision, layout and
  conversion strategy (`PrecisionConverter`; activations and outputs as the ops take them).
- `optimize_precision(objective)`: `bitnet_onnx.optimize.search.search` over the layers registered with
  dynamic adjustment (every other layer is pinned at its spec), with the manager's cost model
  (default: this machine's latency table) and an error model: measured sensitivity
  (`bitnet_onnx.optimize.sensitivity.measure_sensitivity`) when the manager was built `from_model` with
  calibration inputs, else `static_sensitivity`. On a model the plan is then verified
  (`search.verify`: compiled and measured on held-out inputs, never the calibration ones) and the
  verified best is kept; `feasible` is the measurement's verdict (`search.verify` says what meets
  each objective), and when it misses, `shortfall` is the measured one and `limiting_layers` the
  layers holding the plan back. The moved layers' specs are updated; the result is
  returned. Reductions and speedups are relative to the registered plan (for `from_model` with the
  default config: the model as given, all F32). This supersedes, for the manager, the seed's
  bytes-only greedy `LayerPrecisionManager.optimize_for_memory`, which stays the layer manager's
  own tool.
- `validate_configuration()`: the `PrecisionValidator` report over the specs, in model order.
- `analyze_configuration()`: `bitnet_onnx.optimize.analysis.analyze` of the model compiled with the
  manager's plan when a model is attached; else a static `Analysis` of the specs' bytes (accuracy
  not measured, the static estimate in its notes).
- `to_config()`: the manager's layers as a config with one exact entry each (save it with
  `config_file.save_config`).

`static_sensitivity`: for layers without a model, 1 − cosine of a layer at a choice is estimated as
½·(r_w² + r_a²), the small-error cosine of an output carrying relative RMS errors r_w (weights)
and r_a (activations): r_w from converting the layer's weights (given at registration; else a
seeded standard Gaussian sample of up to 64 rows of the layer's row length, the error any
Gaussian-like tensor gets at those bits and that layout) with the SCALED strategy, r_a from
converting a seeded Gaussian sample of 8 tokens to the activations' precision (0 for F32).

`PrecisionManager.from_model(model, config=None, calibration=None, dynamic=("*",))` registers the
layers the compiler's normalize and annotate_layers passes find, each with the precisions the
config resolves (default: CUSTOM, all F32), with dynamic adjustment when its name matches one of
the `dynamic` globs (fnmatch; default: every layer). `calibration` (a `Calibration`, an .npz path,
or None: 4 batches generated from the input specs with `seed`) is split (`Calibration.split`): the
last `holdout` samples (a count, or a fraction: default a quarter) are held out for verification
and for `analyze_configuration`'s measurement; the sensitivity is measured on the others.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx

from bitnet_onnx.config.config import MixedPrecisionConfig, MixedPrecisionStrategy
from bitnet_onnx.config.layer_precision import (
    LayerPrecisionManager,
    LayerPrecisionSpec,
    require_weight_shapes,
)
from bitnet_onnx.config.policy import LayerFacts, PolicyEngine, weight_statistics
from bitnet_onnx.config.validation import PrecisionValidator, ValidationReport
from bitnet_onnx.core.dtypes import ConversionStrategy, DType, WeightLayout
from bitnet_onnx.core.errors import ConfigError
from bitnet_onnx.core.layers import ComponentType, Layer, LayerType
from bitnet_onnx.core.plan import Decision, LayerPlan, PlannedLayer, Resolution
from bitnet_onnx.numerics.converter import ConversionConfig, PrecisionConverter, QuantizedTensor
from bitnet_onnx.optimize.analysis import Analysis, LayerAnalysis, analyze
from bitnet_onnx.optimize.calibration import DEFAULT_HOLDOUT, Calibration
from bitnet_onnx.optimize.cost_model import CostModel, LatencyTable, storage_shape
from bitnet_onnx.optimize.objectives import OptimizationObjective, PrecisionChoice, candidate_choices
from bitnet_onnx.optimize.search import (
    SearchResult,
    Verification,
    base_plan,
    objective_shortfall,
    plan_to_config,
    search,
    verify,
)
from bitnet_onnx.optimize.sensitivity import SensitivityEntry, SensitivityTable, measure_sensitivity
from bitnet_onnx.passes import annotate
from bitnet_onnx.passes._graph import load_model
from bitnet_onnx.passes.base import graph_bytes

__all__ = ["PrecisionManager", "static_sensitivity"]

logger = logging.getLogger(__name__)

_STATIC_SEED = 0
_SAMPLE_ROWS = 64
_SAMPLE_TOKENS = 8
_F32 = DType.F32
_INFERENCE = (ComponentType.WEIGHTS, ComponentType.BIAS, ComponentType.ACTIVATIONS, ComponentType.OUTPUTS)


# -- layers and specs -------------------------------------------------------------------------------


def _choice_of(spec: LayerPrecisionSpec, layer: Layer) -> PrecisionChoice:
    """The optimizer's choice that the spec's plan states for `layer` (the model's layer, which
    says whether it has weights)."""
    return PrecisionChoice.of_plan(LayerPlan(layer, spec.to_plan(layer.index).plan.decisions))


def _spec_with(spec: LayerPrecisionSpec, choice: PrecisionChoice, layer: Layer) -> LayerPrecisionSpec:
    """`spec` with the precisions the choice's plan for `layer` decides (bias: the outputs'
    default, which is the bias the plan decides; weights kept on a layer without them)."""
    plan = choice.layer_plan(layer)
    weights = plan.decisions.get(ComponentType.WEIGHTS)
    return replace(
        spec,
        weight_precision=weights.dtype if weights is not None else spec.weight_precision,
        # An embedding has no activations component (its input is token ids); the spec keeps the
        # choice's so `_choice_of` reads the same choice back.
        input_precision=plan.dtype(ComponentType.ACTIVATIONS) or choice.activation_dtype,
        output_precision=plan.dtype(ComponentType.OUTPUTS),
        bias_precision=None,
        layout=weights.layout if weights is not None else WeightLayout(),
        conversion_strategy=weights.conversion_strategy if weights is not None else None,
    )


def _spec_from_config(layer: Layer, config: MixedPrecisionConfig, dynamic: bool) -> LayerPrecisionSpec:
    """The spec of the config's plan for `layer`: every inference component as the config resolves
    it (a spec states all four; the bias only when the layer has one), through `of_plan`."""
    components = [c for c in _INFERENCE if c is not ComponentType.BIAS or layer.bias is not None]
    plan = LayerPlan(
        layer, {c: Decision.of_config(config.resolve(layer.name, layer.layer_type, c)) for c in components}
    )
    shape = storage_shape(layer)
    spec = LayerPrecisionSpec.of_plan(PlannedLayer(plan, shape, _bias_shape(layer, shape)), config.support)
    return replace(spec, dynamic_adjustment=dynamic)


def _bias_shape(layer: Layer, shape: tuple[int, ...] | None) -> tuple[int, ...] | None:
    if layer.bias is None or shape is None:
        return None
    return shape if layer.layer_type is LayerType.NORMALIZATION else (shape[0],)


# -- the static error proxy -------------------------------------------------------------------------


def static_sensitivity(
    layers: Sequence[Layer],
    choices: Mapping[str, Sequence[PrecisionChoice]],
    weights: Mapping[str, np.ndarray] | None = None,
) -> SensitivityTable:
    """Estimated 1 − cosine per (layer, choice) without a model (module docstring)."""
    weights = weights or {}
    converter = PrecisionConverter(
        ConversionConfig(strategy=ConversionStrategy.SCALED, preserve_metadata=False)
    )
    entries = []
    for layer in layers:
        shape = storage_shape(layer)
        k = shape[-1] if shape else 64
        w = weights.get(layer.name)
        if w is not None:
            w = np.asarray(w, np.float32).reshape(-1, np.asarray(w).shape[-1])
        elif shape is not None:
            rng = np.random.default_rng([_STATIC_SEED, k])
            w = rng.standard_normal((min(_SAMPLE_ROWS, math.prod(shape) // k), k)).astype(np.float32)
        acts = (
            np.random.default_rng([_STATIC_SEED, k, 1])
            .standard_normal((_SAMPLE_TOKENS, k))
            .astype(np.float32)
        )
        for choice in choices[layer.name]:
            r_w = 0.0
            if w is not None and choice.weights is not None:
                layout = choice.layout if choice.weights.is_integer else None
                r_w = _relative_rms(
                    w, converter.convert_tensor(w, choice.weights, layout=layout).dequantize()
                )
            r_a = 0.0
            if choice.activation_dtype is not _F32:
                r_a = _relative_rms(
                    acts, converter.convert_activations(acts, choice.activation_dtype).dequantize()
                )
            error = 0.5 * (r_w * r_w + r_a * r_a)
            entries.append(SensitivityEntry(layer.name, choice, 1.0 - error, r_w))
    return SensitivityTable("static", tuple(entries))


def _relative_rms(reference: np.ndarray, approx: np.ndarray) -> float:
    norm = float(np.linalg.norm(reference.astype(np.float64)))
    diff = float(np.linalg.norm(approx.astype(np.float64) - reference.astype(np.float64)))
    return diff / norm if norm > 0 else 0.0


# -- the attached model -----------------------------------------------------------------------------


@dataclass
class _Model:
    """A model the manager was built from, with what optimizing and analyzing it need."""

    source: str | onnx.ModelProto
    layers: Mapping[str, Layer]
    total_bytes: int  # every constant of the model as given
    calibration: Calibration
    holdout: Calibration
    cache_dir: str | os.PathLike[str] | None
    workers: int
    progress: bool
    sensitivity: SensitivityTable | None = None


# -- the manager ------------------------------------------------------------------------------------


class PrecisionManager:
    """Coordinates config, layer specs, policies, conversion, search, validation and analysis
    (module docstring). `cost_model` defaults to this machine's latency table (measured once, then
    cached); `validator` to the default rules."""

    def __init__(
        self,
        config: MixedPrecisionConfig | None = None,
        *,
        cost_model: CostModel | None = None,
        validator: PrecisionValidator | None = None,
    ) -> None:
        self.config = config if config is not None else MixedPrecisionConfig.balanced()
        self.config.validate()
        self._specs = LayerPrecisionManager(self.config.support)
        self._weights: dict[str, np.ndarray] = {}
        self._engine = PolicyEngine.from_config(self.config) if self.config.policies else None
        self._converters: dict[ConversionStrategy | None, PrecisionConverter] = {}
        self._cost = cost_model
        self.validator = validator or PrecisionValidator()
        self._model: _Model | None = None
        self.last_result: SearchResult | None = None
        self.verification: Verification | None = None

    # -- registration ---------------------------------------------------------------------------

    def register_layer(self, spec: LayerPrecisionSpec, weights: np.ndarray | None = None) -> None:
        """Register `spec` (ConfigError for a duplicate name or a precision the support matrix
        forbids); `weights`, of the spec's `weight_shape`, feed the policies' weight statistics and
        the static error estimate."""
        if weights is not None:
            weights = np.asarray(weights)
            if spec.weight_shape is None or weights.shape != spec.weight_shape:
                raise ConfigError(
                    f"layer {spec.name!r}: weights of shape {weights.shape} do not match its spec's "
                    f"weight_shape {spec.weight_shape}; register the layer with the shape it has"
                )
        self._specs.register_layer(spec)
        if weights is not None:
            self._weights[spec.name] = weights

    @property
    def layers(self) -> tuple[LayerPrecisionSpec, ...]:
        """Every registered spec, in registration (model) order."""
        return self._specs.layers()

    def get_layer(self, name: str) -> LayerPrecisionSpec:
        return self._specs.get_layer(name)

    @property
    def calibration(self) -> Calibration | None:
        """The samples plans are chosen (and GPTQ layers calibrated) on (None without a model)."""
        return self._model.calibration if self._model is not None else None

    @property
    def holdout(self) -> Calibration | None:
        """The held-out samples plans are verified and analyzed on (None without a model)."""
        return self._model.holdout if self._model is not None else None

    @classmethod
    def from_model(
        cls,
        model: str | os.PathLike[str] | onnx.ModelProto,
        config: MixedPrecisionConfig | None = None,
        calibration: Calibration | str | os.PathLike[str] | None = None,
        *,
        dynamic: Iterable[str] = ("*",),
        holdout: int | float = DEFAULT_HOLDOUT,
        seed: int = 0,
        cost_model: CostModel | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        workers: int = 1,
        progress: bool = False,
    ) -> PrecisionManager:
        """A manager over `model`'s annotated layers (module docstring). `cache_dir`, `workers`
        and `progress` go to the sensitivity measurement."""
        config = config if config is not None else MixedPrecisionConfig.new(MixedPrecisionStrategy.CUSTOM)
        manager = cls(config, cost_model=cost_model)

        graph, annotated = annotate(load_model(model))
        layers, total_bytes = dict(annotated.layers), graph_bytes(graph)
        globs = tuple(dynamic)
        for layer in layers.values():
            moving = any(fnmatch.fnmatchcase(layer.name, g) for g in globs)
            manager.register_layer(_spec_from_config(layer, config, moving))
        if calibration is None:
            calibration = Calibration.generated(model, n=4, seed=seed)
        elif not isinstance(calibration, Calibration):
            calibration = Calibration.from_npz(calibration, model)
        fitted, held_out = calibration.split(holdout)
        source = model if isinstance(model, onnx.ModelProto) else os.fspath(model)
        manager._model = _Model(source, layers, total_bytes, fitted, held_out, cache_dir, workers, progress)
        return manager

    # -- precision of one operation -------------------------------------------------------------

    def _layer(self, name: str) -> Layer:
        if self._model is not None and name in self._model.layers:
            return self._model.layers[name]
        names = [spec.name for spec in self._specs.layers()]
        return self._specs.get_layer(name).layer(names.index(name))

    def _decide(
        self, layer_name: str, component: ComponentType | str, tensor: np.ndarray | None
    ) -> Resolution | Decision:
        component = ComponentType.parse(component)
        if layer_name in self._specs:
            spec = self._specs.get_layer(layer_name)
            layer_type = spec.layer_type
            dtype = spec.precision_for(component)
            configured = self.config.resolve(layer_name, layer_type, component)
            layout = (
                spec.layout if component is ComponentType.WEIGHTS and dtype.is_integer else WeightLayout()
            )
            strategy = configured.conversion_strategy if configured.dtype is dtype else None
            current = Resolution(dtype, f"spec:{layer_name}", layout, strategy)
            index, count = [s.name for s in self.layers].index(layer_name), len(self._specs)
            parameters = spec.parameter_count
        else:
            entry = self.config.layers.get(layer_name)
            if entry is None or entry.layer_type is None:
                raise ConfigError(
                    f"unknown layer {layer_name!r}: neither registered ({len(self._specs)} layers) nor "
                    "named by a typed exact entry of the config; register it with register_layer"
                )
            layer_type = entry.layer_type
            current = self.config.resolve(layer_name, layer_type, component)
            index, count, parameters = len(self._specs), len(self._specs) + 1, 0
        if self._engine is None:
            return current
        if tensor is None:
            tensor = self._weights.get(layer_name)
        statistics = (
            weight_statistics(tensor) if tensor is not None and component is ComponentType.WEIGHTS else {}
        )
        facts = LayerFacts(
            layer_name, layer_type, index, count, parameter_count=parameters, weight_statistics=statistics
        )
        return self._engine.decide(facts, component, current)

    def get_optimal_precision(
        self, layer: str, component: ComponentType | str, tensor: np.ndarray | None = None
    ) -> DType:
        """The precision `component` of `layer` gets (module docstring)."""
        return self._decide(layer, component, tensor).dtype

    def convert_for_operation(
        self, tensor: np.ndarray, layer: str, component: ComponentType | str
    ) -> QuantizedTensor:
        """`tensor` in the precision, layout and conversion strategy `layer`'s `component` gets;
        activations and outputs as the ops take them (float, or I8 per token)."""
        component = ComponentType.parse(component)
        decision = self._decide(layer, component, tensor)
        converter = self._converter(decision.conversion_strategy)
        name = f"{layer}.{component.value}"
        if component in (ComponentType.ACTIVATIONS, ComponentType.OUTPUTS):
            return converter.convert_activations(np.asarray(tensor), decision.dtype, name=name)
        layout = decision.layout if decision.dtype.is_integer else None
        return converter.convert_tensor(np.asarray(tensor), decision.dtype, name=name, layout=layout)

    def _converter(self, strategy: ConversionStrategy | None) -> PrecisionConverter:
        if strategy not in self._converters:
            config = ConversionConfig() if strategy is None else ConversionConfig(strategy=strategy)
            self._converters[strategy] = PrecisionConverter(config)
        return self._converters[strategy]

    # -- optimization ---------------------------------------------------------------------------

    def cost_model(self) -> CostModel:
        """The cost model: the one given, else this machine's latency table (cached on disk)."""
        if self._cost is None:
            self._cost = CostModel(LatencyTable.for_this_machine())
        return self._cost

    def _plan_inputs(self) -> tuple[list[Layer], dict[str, PrecisionChoice], set[str], dict]:
        specs = self._specs.layers()
        if self._model is None:  # with a model, its layers give the shapes
            require_weight_shapes(specs, "the search and the analysis of registered layers")
        layers = [self._layer(spec.name) for spec in specs]
        plan = {spec.name: _choice_of(spec, layer) for spec, layer in zip(specs, layers, strict=True)}
        pinned = {spec.name for spec in specs if not spec.dynamic_adjustment}
        choices = {}
        for layer in layers:
            if layer.name in pinned:
                choices[layer.name] = (plan[layer.name],)
            else:
                # gptq twins need enough of the model's calibration samples
                rows = self._model.calibration.positions if self._model is not None else 0
                listed = list(candidate_choices(layer, self.config.support, calibration_rows=rows))
                choices[layer.name] = tuple(
                    listed if plan[layer.name] in listed else [plan[layer.name], *listed]
                )
        return layers, plan, pinned, choices

    def sensitivity(self) -> SensitivityTable:
        """The error table the search uses: measured on the attached model's calibration inputs
        (cached on disk by the sensitivity module), else `static_sensitivity`."""
        layers, _, _, choices = self._plan_inputs()
        if self._model is None:
            return static_sensitivity(layers, choices, self._weights)
        if self._model.sensitivity is None:
            wanted = {
                name: options
                for name, options in choices.items()
                if options != (base_plan([self._layer(name)])[name],)
            }
            self._model.sensitivity = measure_sensitivity(
                self._model.source,
                self._model.calibration,
                layers=list(wanted),
                choices=wanted,
                workers=self._model.workers,
                cache_dir=self._model.cache_dir,
                progress=self._model.progress,
            )
        return self._model.sensitivity

    def optimize_precision(
        self,
        objective: OptimizationObjective,
        *,
        verify_plan: bool = True,
        tokens: float = 1,
        seed: int = 0,
        allow_slower: bool = False,
    ) -> SearchResult:
        """Search the plan for `objective`, verify it on a model (unless `verify_plan` is False),
        and move the dynamic layers to it (module docstring). The verification, when one ran, is
        kept in `self.verification`. A Memory or Accuracy plan is never slower than the model
        (predicted per layer, then measured) unless `allow_slower` (`bitnet_onnx.optimize.search`)."""
        if not isinstance(objective, OptimizationObjective):
            raise ConfigError(
                f"objective must be Memory, Speed, Accuracy or Balanced, not {type(objective).__name__}"
            )
        layers, plan, pinned, choices = self._plan_inputs()
        table = self.sensitivity()
        cost = self.cost_model()
        other = 0
        if self._model is not None:  # constants outside the layers (rotary tables, masks)
            other = self._model.total_bytes - cost.plan_bytes(layers, base_plan(layers))
        result = search(
            layers, table, cost, objective,
            base=plan, pinned=pinned, choices=choices, support=self.config.support,
            other_bytes=other, tokens=tokens, seed=seed, allow_slower=allow_slower,
        )  # fmt: skip
        self.verification = None
        if self._model is not None and verify_plan:
            checked = verify(
                self._model.source, result, self._model.holdout, layers, table, cost,
                base_config=self._plain_config(), choices=choices, support=self.config.support,
                other_bytes=other, calibration=self._model.calibration,
            )  # fmt: skip
            self.verification = checked
            best = checked.best
            if best.plan != result.plan:
                result = replace(result, plan=best.plan, predicted=best.predicted)
            result = replace(result, message=f"{result.message}; {checked.message}")
            # The measurement has the last word, both ways: a plan the prediction doubted can
            # measure fine, and one it trusted can miss.
            measured_base = replace(result.base, bytes=checked.bytes_before)
            shortfall = objective_shortfall(objective, measured_base, best.measured)
            limiting = () if checked.met else result.limiting_layers or checked.limiting_layers
            result = replace(
                result, feasible=checked.met, shortfall=max(0.0, shortfall), limiting_layers=limiting
            )
        self._apply(result.plan)
        self.last_result = result
        return result

    def _apply(self, plan: Mapping[str, PrecisionChoice]) -> None:
        updated = LayerPrecisionManager(self.config.support)
        for spec in self._specs.layers():
            layer = self._layer(spec.name)
            moved = spec.dynamic_adjustment and plan[spec.name] != _choice_of(spec, layer)
            updated.register_layer(_spec_with(spec, plan[spec.name], layer) if moved else spec)
        self._specs = updated

    def _plain_config(self) -> MixedPrecisionConfig:
        """The config without its policies: a plan's exact entries are final."""
        return replace(self.config, policies=())

    def to_config(self) -> MixedPrecisionConfig:
        """The config with one exact entry per registered layer, as its spec says."""
        layers, plan, _, _ = self._plan_inputs()
        return plan_to_config(plan, self._plain_config(), layers=layers)

    # -- validation and analysis ----------------------------------------------------------------

    def validate_configuration(self, budget_bytes: int | None = None) -> ValidationReport:
        """Every finding of the validator's rules over the specs, in model order."""
        return self.validator.validate(self._specs, budget_bytes=budget_bytes)

    def analyze_configuration(self, *, measure_speed: bool = False) -> Analysis:
        """The analysis of the manager's plan: measured on the attached model (compiled, compared
        on the held-out inputs), else static (module docstring). The last objective is recorded in
        it, `feasible` judged on the analysis's measured numbers (`Analysis.meets`) on a model."""

        if self._model is not None:
            analysis = analyze(
                self._model.source,
                self.to_config(),
                self._model.holdout,
                sensitivity=self._model.sensitivity,
                cost=self.cost_model(),
                measure_speed=measure_speed,
                conversion_inputs=self._model.calibration,
            )
        else:
            analysis = self._static_analysis()
        if self.last_result is not None:
            result = self.last_result
            # Measured on a model: the analysis's own numbers decide (static: the prediction).
            met = (
                analysis.meets(result.objective, allow_slower=result.allow_slower)
                if self._model is not None
                else result.feasible
            )
            analysis = replace(
                analysis,
                objective=str(result.objective),
                feasible=met,
                objective_message=result.message,
                limiting_layers=() if met else result.limiting_layers,
            )
        return analysis

    def _static_analysis(self) -> Analysis:
        layers, plan, _, _ = self._plan_inputs()
        cost = self.cost_model()
        before_plan = base_plan(layers)
        rows, by_type_before, by_type_after = [], {}, {}
        for layer, spec in zip(layers, self._specs.layers(), strict=True):
            before = cost.memory_bytes(layer, before_plan[layer.name])
            after = spec.memory_bytes()
            key = layer.layer_type.value
            by_type_before[key] = by_type_before.get(key, 0) + before
            by_type_after[key] = by_type_after.get(key, 0) + after
            precisions = {
                c: spec.precision_for(c)
                for c in (
                    ComponentType.WEIGHTS,
                    ComponentType.BIAS,
                    ComponentType.ACTIVATIONS,
                    ComponentType.OUTPUTS,
                )
            }
            rows.append(
                LayerAnalysis(
                    layer.name, layer.layer_type, precisions, before, after, choice=plan[layer.name].label
                )
            )
        table = static_sensitivity(layers, {name: (choice,) for name, choice in plan.items()}, self._weights)
        predicted = 1.0 - sum(1.0 - e.cosine for e in table.entries)
        latency_before = cost.plan_latency_us(layers, before_plan)
        latency_after = cost.plan_latency_us(layers, plan)
        return Analysis(
            model="<registered layers>",
            config=self.config.strategy.value,
            bytes_before=sum(by_type_before.values()),
            bytes_after=sum(by_type_after.values()),
            layers=tuple(rows),
            memory_by_type_before=by_type_before,
            memory_by_type_after=by_type_after,
            accuracy=(),
            accuracy_inputs="none: no model attached",
            estimated_speedup=latency_before / latency_after if latency_after else None,
            notes=(
                "static analysis of the registered layers: bytes from their specs, accuracy not measured; "
                f"static estimate of the output cosine: {predicted:.6f}",
            ),
        )
