"""Objective-driven precision search: the per-layer plan that meets an `OptimizationObjective`.

Inputs: the layers (`Layer`s, model order), a `SensitivityTable` (the output cosine with each
layer alone at each choice), a `CostModel` (exact bytes, predicted latency), the objective, the
base plan (what each layer has before the search: default F32) and the pinned layers (never moved:
they keep their base choice).

Error model. A layer at choice c alone moves the output cosine to cos(c); the plan's predicted
error is the sum of the layers' 1 − cos(c), its predicted cosine 1 − that sum. For small,
independent perturbations the output error is the sum of the layers' errors, its squared norm the
sum of their squared norms, and 1 − cosine ≈ ‖e⊥‖² / 2‖y‖², so 1 − cosine adds up across layers;
`verify` measures the truth and the integration tests compare the two. A choice the table lacks
(or that failed to compile) is never picked; a base choice the table lacks counts as error 0.

Units. Layers that read the same weight initializer (a head tied to its embedding table, gains
an exporter deduplicated) form one unit whose options are every combination of their choices, with
the bytes of `CostModel.plan_bytes` (a tensor stored alike is stored once); past
`MAX_UNIT_OPTIONS` combinations the unit's layers move together (the choices they all have). Every
other layer is a unit of its own.

Memory, Accuracy, Speed: an exact dynamic programme over units. After each unit it keeps the
Pareto frontier of partial plans in (resource, error), resource = bytes (Memory, Accuracy) or
predicted latency (Speed): every partial plan not beaten in both. The frontier of all units holds
every plan that could be optimal, and the objective picks from it:

- Memory(t): the least error among plans with bytes ≤ (1 − t) × the base's bytes;
- Accuracy(m): the fewest bytes among plans with error ≤ 1 − m (ties: less error);
- Speed(s, m): the least latency among plans with error ≤ 1 − m; feasible when that latency is at
  most the base's / s.

Ties on (resource, error) keep the layers' more precise choices (candidate order). Past
`FRONTIER_CAP` points a frontier is thinned to one point per error bucket (1/FRONTIER_CAP of its
error range), the one with the least resource, plus one per resource bucket (1/FRONTIER_CAP of its
resource range), the one with the least error: exact below the cap, within a bucket of either
above it. Both are needed: the error range of a model's candidates spans from F16's ~1e-7 to a
binarized layer's ~1, so error buckets alone merge every accurate plan into one bucket and keep
only its smallest (a memory:0.25 plan then saved 70 %); resource buckets keep the most accurate
plan at every size.
`seed` sets the order in which the units are visited: it never changes the optimum, only which of
exactly equal plans is returned (and the thinning past the cap); the same seed gives the same plan.

Balanced(w): each score is normalised to [0, 1] between the base and the extreme over the
candidates: memory (B_base − B) / (B_base − B_min), speed (T_base − T) / (T_base − T_min),
accuracy 1 − E / E_max (E_max: every unit at its worst choice); the weighted sum is separable over
units, so each unit takes its best option (exact).

Infeasible. `feasible` False comes with the best plan found (Memory: the fewest bytes; Accuracy:
the least error; Speed: the fastest within the floor, or the least error when no plan keeps it),
the shortfall in the objective's unit (fraction of bytes, speedup, cosine) and the limiting layers:
the units whose choice in that plan is furthest from their cheapest candidate in the objective's
resource (bytes, latency or error; pinned layers and layers held back by the accuracy floor), taken
largest first until they cover the shortfall; when those cannot cover it (every layer already at
its cheapest), the largest holders of the resource follow.

Never slower. Memory and Accuracy plans must not run slower than the base (the model as it is,
fp32) unless the caller passes `allow_slower` (CLI `--allow-slower`): the search then offers a
layer only the candidates predicted no slower than its base choice at every M of the latency
table (`cost_model.TOKENS`: 1, 16 and 256 tokens), so the plan's predicted latency is at most
the base's; `verify` times each plan it compiles against the original (`analysis.time_models`:
batch 1, one thread) and a plan measured slower (a speedup under `analysis.NOT_SLOWER`) does not
meet the objective; the limiting layers are then the ones furthest from their fastest candidate.
Speed objectives ask for speed themselves; Balanced weighs it.

`verify` compiles plans (`bitnet_onnx.compile`, in a temporary folder) and measures the true bytes
of their constants and the true output cosine on held-out inputs, never the calibration set: per
output over all held-out batches, the lowest of the outputs (what the compile's own validation
reports, so the two never disagree; the sensitivity table's cosine pools the outputs, so on a model
with several outputs the prediction can be optimistic and the measurement decides). It measures the
chosen plan and its `alternatives` (runner-up frontier plans that meet the objective by prediction),
keeps the best by measurement (Memory: least measured error among those that reach the bytes;
Accuracy: fewest bytes among those that keep the cosine; Speed: fastest that keeps the floor). A
plan meets Memory(t) when its measured bytes are at most (1 − t) × the original's, Accuracy(m) when
its measured cosine is ≥ m, Speed(s, m) when its measured cosine is ≥ m and its measured speedup ≥
s; Balanced has no target. When none meets an accuracy requirement it backs off: the moved layer
with the largest predicted error goes one step up its candidates (to the next more precise one the
table knows and, for a plan that must not be slower, that is predicted no slower than its base
choice; else its base choice) and the plan is measured again, for at most `max_rounds` rounds
(only while no plan keeps the cosine: more precise layers are never faster). Latency in a verified
estimate is the prediction, except for Speed: the base's predicted latency divided by the speedup
measured against the original (`analysis.time_models`: batch 1, one thread, interleaved runs), so a
Speed objective is met by a measured speedup. When the best misses, `limiting_layers` names the
layers that hold it back, by the objective's resource as in the search: predicted error (a missed
cosine), bytes or latency, each layer's gap to its cheapest candidate, largest first until the
shortfall is covered. `plan_to_config`
turns a plan into a reusable config with one exact entry per layer.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np
import onnx

from bitnet_onnx import runtime
from bitnet_onnx.compiler.compile import compile as compile_model
from bitnet_onnx.config.config import MixedPrecisionConfig, MixedPrecisionStrategy
from bitnet_onnx.config.report import compare_outputs
from bitnet_onnx.core.errors import ConfigError
from bitnet_onnx.core.layers import Layer, SupportMatrix
from bitnet_onnx.optimize.analysis import NOT_SLOWER, time_models
from bitnet_onnx.optimize.cost_model import TOKENS, CostModel
from bitnet_onnx.optimize.objectives import (
    Accuracy,
    Balanced,
    Memory,
    OptimizationObjective,
    PrecisionChoice,
    Speed,
    candidate_choices,
)
from bitnet_onnx.passes.instruments import pass_warnings_silenced

if TYPE_CHECKING:
    from bitnet_onnx.optimize.calibration import Calibration
    from bitnet_onnx.optimize.sensitivity import SensitivityTable

__all__ = [
    "FRONTIER_CAP",
    "MAX_UNIT_OPTIONS",
    "PlanEstimate",
    "SearchResult",
    "Verification",
    "VerifiedPlan",
    "base_plan",
    "estimate_plan",
    "objective_shortfall",
    "plan_to_config",
    "search",
    "verify",
]

logger = logging.getLogger(__name__)

FRONTIER_CAP = 4096
"""Largest Pareto frontier kept between units before thinning (module docstring)."""
MAX_UNIT_OPTIONS = 64
"""Largest number of joint options of layers sharing a weight; beyond it they move together."""

Plan = Mapping[str, PrecisionChoice]


@dataclass(frozen=True)
class PlanEstimate:
    """What a plan costs: stored bytes (exact), latency (µs, the cost model's prediction) and
    output error (predicted 1 − cosine, or measured when it comes from `verify`)."""

    bytes: int
    latency_us: float
    error: float

    @property
    def cosine(self) -> float:
        return 1.0 - self.error


@dataclass(frozen=True)
class SearchResult:
    """The plan a search chose for `objective` and how it stands against it.

    `plan` maps every layer to its choice (pinned layers keep theirs); `base` and `predicted` are
    the estimates of the starting plan and of `plan`; `feasible` says whether `plan` meets the
    objective by prediction; when it does not, `plan` is the best found, `shortfall` how far it
    misses (fraction of bytes, speedup factor or cosine, in the objective's own unit) and
    `limiting_layers` the layers that block the target. `alternatives` are runner-up plans that
    also meet the objective (best first), which `verify` measures too; `tried` counts the partial
    plans the search compared; `base_plan` is the starting plan; `allow_slower` whether a Memory
    or Accuracy plan may be slower than the base (module docstring, "Never slower").
    """

    objective: OptimizationObjective
    plan: Plan
    feasible: bool
    base: PlanEstimate
    predicted: PlanEstimate
    limiting_layers: tuple[str, ...] = ()
    shortfall: float = 0.0
    tried: int = 0
    message: str = ""
    alternatives: tuple[tuple[Plan, PlanEstimate], ...] = ()
    base_plan: Plan = field(default_factory=dict)
    allow_slower: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "plan", MappingProxyType(dict(self.plan)))
        object.__setattr__(self, "base_plan", MappingProxyType(dict(self.base_plan)))
        alternatives = tuple((MappingProxyType(dict(p)), e) for p, e in self.alternatives)
        object.__setattr__(self, "alternatives", alternatives)

    @property
    def reduction(self) -> float:
        """Predicted fraction of the base's bytes saved."""
        return 1.0 - self.predicted.bytes / self.base.bytes if self.base.bytes else 0.0

    @property
    def speedup(self) -> float:
        """Predicted base latency over the plan's (1 when neither has a modelled latency)."""
        return _speedup(self.base.latency_us, self.predicted.latency_us)

    @property
    def moved(self) -> tuple[str, ...]:
        """Layers whose choice differs from the base plan, in plan order."""
        return tuple(name for name, choice in self.plan.items() if self.base_plan.get(name) != choice)


@dataclass(frozen=True)
class VerifiedPlan:
    """One plan compiled and measured: `measured` holds the true bytes of the compiled model's
    constants and the measured 1 − cosine on held-out inputs (latency: the prediction)."""

    plan: Plan
    predicted: PlanEstimate
    measured: PlanEstimate
    meets: bool

    def __post_init__(self) -> None:
        object.__setattr__(self, "plan", MappingProxyType(dict(self.plan)))


@dataclass(frozen=True)
class Verification:
    """`verify`'s outcome: the chosen plan (`best`), every plan compiled and measured, in order
    (`tried`), the bytes of the original model's constants, and whether `best` meets the objective
    by measurement (`met`); `message` says what happened, backing off included; `limiting_layers`
    the layers holding `best` back when it misses."""

    best: VerifiedPlan
    tried: tuple[VerifiedPlan, ...]
    bytes_before: int
    met: bool
    message: str = ""
    limiting_layers: tuple[str, ...] = ()

    @property
    def reduction(self) -> float:
        """Measured fraction of the original bytes saved by `best`."""
        return 1.0 - self.best.measured.bytes / self.bytes_before if self.bytes_before else 0.0


# -- units ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Option:
    choices: tuple[PrecisionChoice, ...]  # one per member layer
    bytes: int
    latency: float
    error: float


@dataclass(frozen=True)
class _Unit:
    layers: tuple[Layer, ...]
    options: tuple[_Option, ...]  # what the search may pick (pinned: the base only)
    every: tuple[_Option, ...]  # every candidate, pinned or not (for the limiting layers)
    pinned: bool


def base_plan(layers: Sequence[Layer]) -> dict[str, PrecisionChoice]:
    """The plan of the model as given: every layer F32 (weightless layers compute in F32)."""
    f32 = PrecisionChoice.parse("F32")
    return {layer.name: f32 if layer.weight is not None else f32.weightless() for layer in layers}


def _error(sensitivity: SensitivityTable, layer: str, choice: PrecisionChoice) -> float | None:
    """1 − cosine of `layer` alone at `choice`, None when unknown or failed."""
    entry = sensitivity.get(layer, choice)
    if entry is None or not math.isfinite(entry.cosine):
        return None
    return max(0.0, 1.0 - entry.cosine)


def _units(
    layers: Sequence[Layer],
    sensitivity: SensitivityTable,
    cost: CostModel,
    base: Plan,
    pinned: Collection[str],
    choices: Mapping[str, Sequence[PrecisionChoice]] | None,
    support: SupportMatrix,
    tokens: float,
    no_slower: bool,
) -> list[_Unit]:
    groups: dict[str, list[Layer]] = {}
    for layer in layers:
        groups.setdefault(layer.weight or f"\0{layer.name}", []).append(layer)
    units = []
    for members in groups.values():
        per_layer_all: list[list[tuple[PrecisionChoice, float]]] = []
        per_layer_ok: list[list[tuple[PrecisionChoice, float]]] = []
        for layer in members:
            listed = choices.get(layer.name) if choices is not None else None
            candidates = list(listed) if listed is not None else list(candidate_choices(layer, support))
            start = base[layer.name]
            if start not in candidates:
                candidates.insert(0, start)
            known = []
            for choice in candidates:
                err = _error(sensitivity, layer.name, choice)
                if err is None and choice == start:
                    err = 0.0
                if err is not None:
                    known.append((choice, err))
            base_err = next(e for c, e in known if c == start)
            per_layer_all.append(known)
            allowed = [(c, e) for c, e in known if not no_slower or _no_slower(cost, layer, c, start)]
            per_layer_ok.append([(start, base_err)] if layer.name in pinned else allowed)
        pinned_unit = all(layer.name in pinned for layer in members)
        units.append(
            _Unit(
                tuple(members),
                _combine(members, per_layer_ok, cost, tokens),
                _combine(members, per_layer_all, cost, tokens),
                pinned_unit,
            )
        )
    return units


def _no_slower(cost: CostModel, layer: Layer, choice: PrecisionChoice, start: PrecisionChoice) -> bool:
    """Whether `choice` is predicted no slower than `start` for `layer` at every M of the table."""
    return all(cost.latency_us(layer, choice, m) <= cost.latency_us(layer, start, m) for m in TOKENS)


def _keeps_speed(objective: OptimizationObjective, allow_slower: bool) -> bool:
    """Whether a plan for `objective` must not be slower than the base (module docstring)."""
    return isinstance(objective, (Memory, Accuracy)) and not allow_slower


def _combine(
    members: Sequence[Layer],
    per_layer: Sequence[Sequence[tuple[PrecisionChoice, float]]],
    cost: CostModel,
    tokens: float,
) -> tuple[_Option, ...]:
    if math.prod(len(options) for options in per_layer) <= MAX_UNIT_OPTIONS:
        combos: list[list[tuple[PrecisionChoice, float]]] = [[]]
        for options in per_layer:
            combos = [[*combo, option] for combo in combos for option in options]
    else:  # many layers reading one tensor: they move together
        shared = [c for c, _ in per_layer[0] if all(c in dict(options) for options in per_layer[1:])]
        combos = [[(c, dict(options)[c]) for options in per_layer] for c in shared]
    out = []
    for combo in combos:
        plan = {layer.name: choice for layer, (choice, _) in zip(members, combo, strict=True)}
        out.append(
            _Option(
                tuple(choice for choice, _ in combo),
                cost.plan_bytes(members, plan),
                sum(cost.latency_us(layer, plan[layer.name], tokens) for layer in members),
                sum(err for _, err in combo),
            )
        )
    return tuple(out)


# -- the frontier ---------------------------------------------------------------------------------


@dataclass
class _Frontier:
    resource: np.ndarray
    error: np.ndarray
    steps: list[tuple[np.ndarray, np.ndarray]]  # per unit visited: (parent index, option index)
    tried: int = 0


def _pareto(units: Sequence[_Unit], resource: str, start: float) -> _Frontier:
    frontier = _Frontier(np.array([start], np.float64), np.zeros(1, np.float64), [])
    for unit in units:
        res_opt = np.array([getattr(o, resource) for o in unit.options], np.float64)
        err_opt = np.array([o.error for o in unit.options], np.float64)
        count = len(unit.options)
        res = (frontier.resource[:, None] + res_opt[None, :]).reshape(-1)
        err = (frontier.error[:, None] + err_opt[None, :]).reshape(-1)
        parent = np.repeat(np.arange(frontier.resource.size), count)
        option = np.tile(np.arange(count), frontier.resource.size)
        frontier.tried += res.size
        order = np.lexsort((parent, option, err, res))
        kept = []
        best = math.inf
        for i in order:
            if err[i] < best:
                kept.append(i)
                best = err[i]
        idx = np.array(kept, np.int64)
        if idx.size > FRONTIER_CAP:
            idx = _thin(idx, res, err)
        frontier.resource, frontier.error = res[idx], err[idx]
        frontier.steps.append((parent[idx], option[idx]))
    return frontier


def _thin(idx: np.ndarray, res: np.ndarray, err: np.ndarray) -> np.ndarray:
    """Per error bucket the point with the least resource, and per resource bucket the one with the
    least error (module docstring); idx is in resource order, so error falls along it."""

    def buckets(values: np.ndarray) -> np.ndarray:
        span = float(values.max() - values.min()) or 1.0
        return np.floor((values - values.min()) / span * FRONTIER_CAP).astype(np.int64)

    _, first = np.unique(buckets(err[idx]), return_index=True)
    _, last_reversed = np.unique(buckets(res[idx])[::-1], return_index=True)
    kept = np.union1d(first, idx.size - 1 - last_reversed)
    return idx[kept]


def _backtrack(frontier: _Frontier, point: int) -> list[int]:
    """The option index of each visited unit for the frontier point `point`."""
    picks = []
    for parent, option in reversed(frontier.steps):
        picks.append(int(option[point]))
        point = int(parent[point])
    return picks[::-1]


# -- search ---------------------------------------------------------------------------------------


def estimate_plan(
    layers: Sequence[Layer],
    plan: Plan,
    sensitivity: SensitivityTable,
    cost: CostModel,
    *,
    other_bytes: int = 0,
    tokens: float = 1,
) -> PlanEstimate:
    """Bytes (plus `other_bytes`), latency and predicted error of a whole plan (module docstring);
    a choice the table lacks counts as error 0."""
    error = sum(_error(sensitivity, layer.name, plan[layer.name]) or 0.0 for layer in layers)
    return PlanEstimate(
        cost.plan_bytes(layers, plan) + other_bytes, cost.plan_latency_us(layers, plan, tokens), error
    )


def search(
    layers: Sequence[Layer],
    sensitivity: SensitivityTable,
    cost: CostModel,
    objective: OptimizationObjective,
    *,
    base: Plan | None = None,
    pinned: Collection[str] = (),
    choices: Mapping[str, Sequence[PrecisionChoice]] | None = None,
    support: SupportMatrix | None = None,
    other_bytes: int = 0,
    tokens: float = 1,
    seed: int = 0,
    alternatives: int = 2,
    allow_slower: bool = False,
) -> SearchResult:
    """The plan for `objective` (module docstring).

    `sensitivity` is a `bitnet_onnx.optimize.sensitivity.SensitivityTable` (anything with `get(layer,
    choice)` returning an entry with `cosine`); `base` the starting plan (default `base_plan`);
    `pinned` layers keep their base choice; `choices` restricts a layer's candidates (default
    `candidate_choices(layer, support)`); `other_bytes` are constants outside the layers (counted
    in every total, never reduced); `tokens` the rows per call the latency is predicted for;
    `alternatives` how many runner-up plans to return for `verify`; `allow_slower` lets a Memory
    or Accuracy plan be slower than the base ("Never slower").
    """
    layers = list(layers)
    names = [layer.name for layer in layers]
    problems = [f"layer {name!r} appears twice" for name in sorted({n for n in names if names.count(n) > 1})]
    start = dict(base_plan(layers)) if base is None else dict(base)
    problems += [f"the base plan has no choice for layer {n!r}" for n in names if n not in start]
    problems += [
        f"pinned layer {n!r} is not among the layers searched" for n in sorted(set(pinned) - set(names))
    ]
    if problems:
        raise ConfigError(problems, source="search")
    units = _units(
        layers, sensitivity, cost, start, set(pinned), choices, support or SupportMatrix(), tokens,
        _keeps_speed(objective, allow_slower),
    )  # fmt: skip
    order = list(np.random.default_rng(seed).permutation(len(units)))
    units = [units[i] for i in order]
    base_estimate = estimate_plan(layers, start, sensitivity, cost, other_bytes=other_bytes, tokens=tokens)
    if isinstance(objective, Balanced):
        picks, tried = _balanced(units, objective, base_estimate, other_bytes)
        candidates = [picks]
        feasible, shortfall, limiting = True, 0.0, ()
    else:
        resource = "latency" if isinstance(objective, Speed) else "bytes"
        frontier = _pareto(units, resource, float(other_bytes) if resource == "bytes" else 0.0)
        tried = frontier.tried
        ranked, feasible = _rank(frontier, objective, base_estimate)
        candidates = [_backtrack(frontier, p) for p in ranked[: 1 + alternatives]]
        shortfall, limiting = 0.0, ()
    plans = [_plan_of(units, picks, names) for picks in candidates]
    estimates = [
        estimate_plan(layers, p, sensitivity, cost, other_bytes=other_bytes, tokens=tokens) for p in plans
    ]
    best, best_estimate = plans[0], estimates[0]
    if not feasible:
        shortfall = objective_shortfall(objective, base_estimate, best_estimate)
        limiting = _limiting(units, candidates[0], objective, base_estimate, best_estimate)
    message = _message(
        objective, feasible, base_estimate, best_estimate, shortfall, limiting, len(plans), other_bytes
    )
    logger.info("search %s: %s", objective, message)
    return SearchResult(
        objective,
        best,
        feasible,
        base_estimate,
        best_estimate,
        limiting,
        shortfall,
        tried,
        message,
        tuple(zip(plans[1:], estimates[1:], strict=True)) if feasible else (),
        start,
        allow_slower,
    )


def _plan_of(
    units: Sequence[_Unit], picks: Sequence[int], names: Sequence[str]
) -> dict[str, PrecisionChoice]:
    chosen: dict[str, PrecisionChoice] = {}
    for unit, pick in zip(units, picks, strict=True):
        for layer, choice in zip(unit.layers, unit.options[pick].choices, strict=True):
            chosen[layer.name] = choice
    return {name: chosen[name] for name in names}


def _rank(
    frontier: _Frontier, objective: OptimizationObjective, base: PlanEstimate
) -> tuple[list[int], bool]:
    """Frontier points best first, and whether the first meets the objective."""
    res, err = frontier.resource, frontier.error
    points = np.arange(res.size)
    if isinstance(objective, Memory):
        goal = math.floor((1.0 - objective.target_reduction) * base.bytes)
        ok = points[res <= goal]
        if ok.size:
            return [int(p) for p in ok[np.lexsort((res[ok], err[ok]))]], True
        return [int(points[0])], False  # the fewest bytes (least error among equals)
    budget = 1.0 - (objective.min_accuracy if isinstance(objective, (Accuracy, Speed)) else 0.0)
    ok = points[err <= budget + 1e-12]
    if not ok.size:
        return [int(points[-1])], False  # the least error
    ranked = [int(p) for p in ok[np.lexsort((err[ok], res[ok]))]]
    if isinstance(objective, Speed):
        return ranked, _speedup(base.latency_us, float(res[ranked[0]])) >= objective.target_speedup
    return ranked, True


def _speedup(base: float, plan: float) -> float:
    """base / plan; 1 when both are 0 (nothing modelled: nothing to gain)."""
    if plan > 0:
        return base / plan
    return math.inf if base > 0 else 1.0


def _balanced(
    units: Sequence[_Unit], objective: Balanced, base: PlanEstimate, other_bytes: int
) -> tuple[list[int], int]:
    w_mem, w_speed, w_acc = objective.normalized
    min_bytes = other_bytes + sum(min(o.bytes for o in u.options) for u in units)
    min_latency = sum(min(o.latency for o in u.options) for u in units)
    max_error = sum(max(o.error for o in u.options) for u in units)
    span_b = base.bytes - min_bytes
    span_t = base.latency_us - min_latency
    picks = []
    for unit in units:
        scores = [
            (w_mem * -o.bytes / span_b if span_b > 0 else 0.0)
            + (w_speed * -o.latency / span_t if span_t > 0 else 0.0)
            + (w_acc * -o.error / max_error if max_error > 0 else 0.0)
            for o in unit.options
        ]
        picks.append(int(np.argmax(scores)))  # the first (most precise) of equal scores
    return picks, sum(len(u.options) for u in units)


def objective_shortfall(objective: OptimizationObjective, base: PlanEstimate, best: PlanEstimate) -> float:
    """How far `best` is from `objective` in its unit (fraction of bytes, speedup, cosine), ≤ 0 when it
    meets it (negative: by how much it beats it); `base` is what reductions and speedups are
    relative to."""
    if isinstance(objective, Memory):
        achieved = 1.0 - best.bytes / base.bytes if base.bytes else 0.0
        return objective.target_reduction - achieved
    if isinstance(objective, Speed) and best.error <= 1.0 - objective.min_accuracy + 1e-12:
        return objective.target_speedup - _speedup(base.latency_us, best.latency_us)
    if isinstance(objective, (Accuracy, Speed)):
        return objective.min_accuracy - best.cosine
    return 0.0


def _limiting(
    units: Sequence[_Unit],
    picks: Sequence[int],
    objective: OptimizationObjective,
    base: PlanEstimate,
    best: PlanEstimate,
) -> tuple[str, ...]:
    """The units blocking the target (module docstring), as layer names."""
    if isinstance(objective, Memory):
        resource, need = "bytes", best.bytes - (1.0 - objective.target_reduction) * base.bytes
    elif isinstance(objective, Speed) and best.error <= 1.0 - objective.min_accuracy + 1e-12:
        resource, need = "latency", best.latency_us - base.latency_us / objective.target_speedup
    else:
        floor = objective.min_accuracy if isinstance(objective, (Accuracy, Speed)) else 1.0
        resource, need = "error", best.error - (1.0 - floor)
    chosen = [getattr(u.options[p], resource) for u, p in zip(units, picks, strict=True)]
    gaps = [c - min(getattr(o, resource) for o in u.every) for u, c in zip(units, chosen, strict=True)]
    ranked = sorted((i for i in range(len(units)) if gaps[i] > 0), key=lambda i: -gaps[i])
    picked, covered = [], 0.0
    for i in ranked:
        if covered >= need:
            break
        picked.append(i)
        covered += gaps[i]
    if covered < need:
        for i in sorted(range(len(units)), key=lambda i: -chosen[i]):
            if covered >= need or chosen[i] <= 0:
                break
            if i not in picked:
                picked.append(i)
                covered += chosen[i]
    return tuple(layer.name for i in picked for layer in units[i].layers)


def _message(
    objective: OptimizationObjective,
    feasible: bool,
    base: PlanEstimate,
    best: PlanEstimate,
    shortfall: float,
    limiting: Sequence[str],
    plans: int,
    other_bytes: int,
) -> str:
    reduction = 1.0 - best.bytes / base.bytes if base.bytes else 0.0
    speedup = _speedup(base.latency_us, best.latency_us)
    figures = (
        f"{base.bytes} → {best.bytes} bytes ({reduction:.1%} saved), predicted speedup {speedup:.2f}x, "
        f"predicted cosine {best.cosine:.5f}"
    )
    if feasible:
        return f"{objective} met by prediction: {figures} ({plans - 1} alternatives)"
    names = _names(limiting)
    fixed = (
        f" ({other_bytes} bytes of constants outside the layers cannot shrink)"
        if isinstance(objective, Memory) and other_bytes
        else ""
    )
    return (
        f"{objective} is not reachable: the best plan found gives {figures}, short by "
        f"{shortfall:.4g}{fixed}; limiting layers: {names}"
    )


# -- configs and verification ---------------------------------------------------------------------


def plan_to_config(
    plan: Plan, base: MixedPrecisionConfig | None = None, *, layers: Sequence[Layer] | None = None
) -> MixedPrecisionConfig:
    """`base` (default: CUSTOM, everything F32) with one exact entry per planned layer, typed by
    `layers` when given; save it with `config_file.save_config`."""
    config = base if base is not None else MixedPrecisionConfig.new(MixedPrecisionStrategy.CUSTOM)
    types = {layer.name: layer.layer_type for layer in layers or ()}
    for name, choice in plan.items():
        config = config.with_layer_config(name, choice.to_layer_config(types.get(name)))
    return config


def _meets(
    objective: OptimizationObjective,
    measured: PlanEstimate,
    bytes_before: int,
    base: PlanEstimate,
    no_slower: bool = False,
) -> bool:
    """Whether `measured` meets `objective` (module docstring); `base` gives Speed its reference,
    and Memory and Accuracy too with `no_slower`."""
    fast_enough = not no_slower or _speedup(base.latency_us, measured.latency_us) >= NOT_SLOWER
    if isinstance(objective, Memory):
        return measured.bytes <= (1.0 - objective.target_reduction) * bytes_before and fast_enough
    if isinstance(objective, Speed):
        fast = _speedup(base.latency_us, measured.latency_us) >= objective.target_speedup
        return fast and measured.cosine >= objective.min_accuracy
    if isinstance(objective, Accuracy):
        return measured.cosine >= objective.min_accuracy and fast_enough
    return True


def _outputs(
    model: onnx.ModelProto | str | os.PathLike[str], batches: Sequence[Mapping[str, np.ndarray]]
) -> list[np.ndarray]:
    """Each output over all batches, flattened into one float64 vector per output."""

    session = runtime.session(model if not isinstance(model, os.PathLike) else os.fspath(model), threads=1)
    names = [o.name for o in session.get_outputs()]
    parts: list[list[np.ndarray]] = [[] for _ in names]
    for feeds in batches:
        for part, array in zip(parts, session.run(names, dict(feeds)), strict=True):
            part.append(np.asarray(array, np.float64).reshape(-1))
    return [np.concatenate(part) for part in parts]


def _cosine(reference: Sequence[np.ndarray], actual: Sequence[np.ndarray]) -> float:
    """The lowest output cosine (NaN when any output has non-finite values where the other does not)."""

    cosines = [compare_outputs("output", r, a).cosine for r, a in zip(reference, actual, strict=True)]
    return math.nan if any(math.isnan(c) for c in cosines) else min(cosines)


def verify(
    model: str | os.PathLike[str] | onnx.ModelProto,
    result: SearchResult,
    holdout: Calibration,
    layers: Sequence[Layer],
    sensitivity: SensitivityTable,
    cost: CostModel,
    *,
    base_config: MixedPrecisionConfig | None = None,
    choices: Mapping[str, Sequence[PrecisionChoice]] | None = None,
    support: SupportMatrix | None = None,
    other_bytes: int = 0,
    max_rounds: int = 3,
    calibration: Calibration | None = None,
) -> Verification:
    """Compile and measure `result`'s plan and alternatives on `holdout` (a Calibration held apart
    from the one the sensitivity was measured on), back off on a missed accuracy (module docstring).
    `calibration`: the samples the plan's gptq layers calibrate on (the sensitivity's)."""
    batches = list(holdout.batches)
    source = model if isinstance(model, onnx.ModelProto) else os.fspath(model)
    reference = _outputs(source, batches)
    objective = result.objective
    no_slower = _keeps_speed(objective, result.allow_slower)
    timed = no_slower or isinstance(objective, Speed)
    by_name = {layer.name: layer for layer in layers}
    tried: list[VerifiedPlan] = []
    bytes_before = 0
    notes: list[str] = []

    def measure(plan: Plan, predicted: PlanEstimate, folder: Path) -> VerifiedPlan:
        nonlocal bytes_before
        out = folder / f"plan{len(tried)}.onnx"
        config = plan_to_config(plan, base_config, layers=layers)
        with pass_warnings_silenced():
            compiled = compile_model(
                model, config, output=out, inputs=holdout, calibration=calibration, strict=False
            )
        bytes_before = compiled.bytes_before
        cosine = _cosine(reference, _outputs(out, batches))
        error = max(0.0, 1.0 - cosine) if math.isfinite(cosine) else math.inf
        latency = predicted.latency_us
        if timed:  # judged on a measured speedup, not the prediction
            timing = time_models(source, out, batches[0])
            latency = result.base.latency_us / timing.speedup if timing.speedup > 0 else math.inf
        measured = PlanEstimate(compiled.bytes_after, latency, error)
        meets = _meets(objective, measured, bytes_before, result.base, no_slower)
        verified = VerifiedPlan(plan, predicted, measured, meets)
        tried.append(verified)
        logger.info(
            "verify %s plan %d: %d bytes, measured cosine %.6f (predicted %.6f)%s",
            objective,
            len(tried),
            measured.bytes,
            measured.cosine,
            predicted.cosine,
            "" if verified.meets else ", misses the objective",
        )
        return verified

    with tempfile.TemporaryDirectory(prefix="bitnet-onnx-verify-") as tmp:
        folder = Path(tmp)
        for plan, predicted in [(result.plan, result.predicted), *result.alternatives]:
            measure(plan, predicted, folder)
        plan = dict(result.plan)
        rounds = 0
        # Only a missed cosine backs off: more precise layers never make a plan faster.
        while (
            isinstance(objective, (Accuracy, Speed))
            and not any(v.measured.cosine >= objective.min_accuracy for v in tried)
            and rounds < max_rounds
        ):
            step = _back_off(
                plan, result.base_plan, by_name, sensitivity, choices, support or SupportMatrix(),
                cost if no_slower else None,
            )  # fmt: skip
            if step is None:
                break
            name, before, after = step
            plan[name] = after
            rounds += 1
            notes.append(f"round {rounds}: backed off {name} {before.label} → {after.label}")
            measure(plan, estimate_plan(layers, plan, sensitivity, cost, other_bytes=other_bytes), folder)
    best = _best_verified(objective, tried)
    met = best.meets
    summary = (
        f"{len(tried)} plan(s) compiled and measured on {holdout.describe()}; best: "
        f"{best.measured.bytes} of {bytes_before} bytes "
        f"({1.0 - best.measured.bytes / bytes_before if bytes_before else 0.0:.1%} saved), "
        f"measured cosine {best.measured.cosine:.6f}{_measured_speedup(timed, result.base, best)}; "
        f"objective {objective} "
        f"{'met' if met else 'NOT met'} by measurement"
    )
    limiting: tuple[str, ...] = ()
    if not met:
        limiting = _measured_limiting(
            objective, best, result.base, bytes_before, result.base_plan, layers, sensitivity, cost,
            choices, support or SupportMatrix(), no_slower,
        )  # fmt: skip
        notes.append(f"limiting layers: {_names(limiting)}")
    return Verification(best, tuple(tried), bytes_before, met, "; ".join([summary, *notes]), limiting)


def _measured_speedup(timed: bool, base: PlanEstimate, best: VerifiedPlan) -> str:
    if not timed:
        return ""
    return (
        f", measured speedup {_speedup(base.latency_us, best.measured.latency_us):.2f}x (batch 1, 1 thread)"
    )


def _measured_limiting(
    objective: OptimizationObjective,
    best: VerifiedPlan,
    base: PlanEstimate,
    bytes_before: int,
    start: Plan,
    layers: Sequence[Layer],
    sensitivity: SensitivityTable,
    cost: CostModel,
    choices: Mapping[str, Sequence[PrecisionChoice]] | None,
    support: SupportMatrix,
    no_slower: bool,
) -> tuple[str, ...]:
    """The layers holding a measured miss back (module docstring)."""
    measured = best.measured
    if no_slower and _meets(objective, measured, bytes_before, base):  # met, but slower than the base
        need = measured.latency_us - base.latency_us

        def amount(layer: Layer, choice: PrecisionChoice) -> float:
            return cost.latency_us(layer, choice, 1)
    elif isinstance(objective, Memory):
        need = measured.bytes - (1.0 - objective.target_reduction) * bytes_before

        def amount(layer: Layer, choice: PrecisionChoice) -> float:
            return float(cost.memory_bytes(layer, choice))
    elif isinstance(objective, Speed) and measured.cosine >= objective.min_accuracy:
        need = measured.latency_us - base.latency_us / objective.target_speedup

        def amount(layer: Layer, choice: PrecisionChoice) -> float:
            return cost.latency_us(layer, choice, 1)
    else:
        floor = objective.min_accuracy if isinstance(objective, (Accuracy, Speed)) else 1.0
        need = measured.error - (1.0 - floor)

        def amount(layer: Layer, choice: PrecisionChoice) -> float:
            error = _error(sensitivity, layer.name, choice)
            return error if error is not None else (0.0 if choice == start.get(layer.name) else math.inf)

    gaps = []
    for layer in layers:
        listed = choices.get(layer.name) if choices is not None else None
        candidates = list(listed) if listed is not None else list(candidate_choices(layer, support))
        chosen = amount(layer, best.plan[layer.name])
        gap = chosen - min((amount(layer, c) for c in candidates), default=chosen)
        if gap > 0 and math.isfinite(gap):
            gaps.append((gap, layer.name))
    picked: list[str] = []
    covered = 0.0
    for gap, name in sorted(gaps, key=lambda g: (-g[0], g[1])):
        if covered >= need:
            break
        picked.append(name)
        covered += gap
    return tuple(picked)


def _names(layers: Sequence[str]) -> str:
    shown = ", ".join(layers[:8]) + (f" and {len(layers) - 8} more" if len(layers) > 8 else "")
    return shown or "none"


def _best_verified(objective: OptimizationObjective, tried: Sequence[VerifiedPlan]) -> VerifiedPlan:
    meeting = [v for v in tried if v.meets]
    pool = meeting or list(tried)
    if isinstance(objective, Memory):
        return (
            min(pool, key=lambda v: (v.measured.error, v.measured.bytes))
            if meeting
            else min(pool, key=lambda v: (v.measured.bytes, v.measured.error))
        )
    if isinstance(objective, Accuracy):
        return (
            min(pool, key=lambda v: (v.measured.bytes, v.measured.error))
            if meeting
            else min(pool, key=lambda v: v.measured.error)
        )
    if isinstance(objective, Speed):
        return (
            min(pool, key=lambda v: (v.measured.latency_us, v.measured.error))
            if meeting
            else min(pool, key=lambda v: v.measured.error)
        )
    return pool[0]


def _back_off(
    plan: dict[str, PrecisionChoice],
    base: Plan,
    layers: Mapping[str, Layer],
    sensitivity: SensitivityTable,
    choices: Mapping[str, Sequence[PrecisionChoice]] | None,
    support: SupportMatrix,
    no_slower: CostModel | None = None,
) -> tuple[str, PrecisionChoice, PrecisionChoice] | None:
    """The most sensitive moved layer and the choice one step up its candidates (with a cost
    model in `no_slower`, only among those predicted no slower than its base choice)."""
    moved = [
        (_error(sensitivity, name, choice) or 0.0, name)
        for name, choice in plan.items()
        if base.get(name) is not None and choice != base[name]
    ]
    if not moved:
        return None
    _, name = max(moved, key=lambda em: (em[0], em[1]))
    current = plan[name]
    listed = choices.get(name) if choices is not None else None
    candidates = list(listed) if listed is not None else list(candidate_choices(layers[name], support))
    now = _error(sensitivity, name, current) or 0.0
    if current in candidates:
        # The nearest more precise candidate that the table predicts to be better.
        for choice in reversed(candidates[: candidates.index(current)]):
            err = _error(sensitivity, name, choice)
            fast = no_slower is None or _no_slower(no_slower, layers[name], choice, base[name])
            if err is not None and err < now and fast:
                return name, current, choice
    return name, current, base[name]
