"""Fuzzing the compiler with small random graphs (random_graphs.py) and random presets and configs
(layer-type, component and glob entries with their knobs, policies, a memory budget).

Property: `bitnet_onnx.compile` either succeeds, and its output loads and runs in onnxruntime with
the input model's output names, types and shapes, or raises a MixedPrecisionError. A PassError (a
pass crashed: "this is a bug in bitnet-onnx") fails the test like any other exception, and so does
a validation error that says the compiled graph is broken (the checker or onnxruntime rejected it).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fuzz_budget import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from random_graphs import DIMS, RandomModel, random_models

from bitnet_onnx import runtime
from bitnet_onnx.compiler.compile import compile
from bitnet_onnx.config.config import ComponentPrecisionConfig, LayerPrecisionConfig, MixedPrecisionConfig
from bitnet_onnx.config.policy import PolicyAction, PolicyCondition, PolicyRule, PrecisionPolicy
from bitnet_onnx.config.report import CompileValidationError
from bitnet_onnx.config.validation import Severity
from bitnet_onnx.core.dtypes import DType, TernaryPacking, WeightLayout
from bitnet_onnx.core.errors import KernelLibraryError, MixedPrecisionError
from bitnet_onnx.core.layers import ComponentType, LayerType, SupportMatrix
from bitnet_onnx.passes.base import PassError

pytestmark = pytest.mark.fuzz


@pytest.fixture(scope="module", autouse=True)
def _ops_lib() -> None:
    try:
        runtime.library_path()
    except KernelLibraryError as exc:
        pytest.skip(str(exc))


_SUPPORT = SupportMatrix()


@st.composite
def layouts(draw: st.DrawFn, dtype: DType) -> WeightLayout:
    if dtype in (DType.I8, DType.I4, DType.I2, DType.I1):
        return WeightLayout(
            group_size=draw(st.sampled_from([None, 8, 16, 32, 64, 128, 12, 3])),
            asymmetric=dtype is not DType.I1 and draw(st.booleans()),
        )
    if dtype is DType.BITNET158:
        packing = draw(st.sampled_from(list(TernaryPacking)))
        return WeightLayout(per_channel=draw(st.booleans()), packing=packing)
    return WeightLayout()


@st.composite
def layer_entries(draw: st.DrawFn, layer_type: LayerType) -> LayerPrecisionConfig:
    allowed = sorted(_SUPPORT.allowed(layer_type, ComponentType.WEIGHTS), key=DType.rank)
    dtype = draw(st.sampled_from(allowed))
    entry = LayerPrecisionConfig(layer_type, dtype, draw(layouts(dtype)))
    for component in draw(st.lists(st.sampled_from(list(ComponentType)), max_size=2, unique=True)):
        choices = sorted(_SUPPORT.allowed(layer_type, component), key=DType.rank)
        override = draw(st.sampled_from(choices))
        entry = entry.with_component_override(component, override, layout=draw(layouts(override)))
    return entry


@st.composite
def configs(draw: st.DrawFn) -> MixedPrecisionConfig | str:
    """A preset by name, or a preset with random layer-type defaults, component defaults and globs."""
    preset = draw(st.sampled_from(["conservative", "balanced", "aggressive", "custom"]))
    if draw(st.booleans()):
        return preset
    config = MixedPrecisionConfig.new(preset)
    for layer_type in draw(st.lists(st.sampled_from(list(LayerType)), max_size=3, unique=True)):
        config = config.with_layer_type_config(draw(layer_entries(layer_type)))
    if draw(st.booleans()):
        component = draw(st.sampled_from([ComponentType.WEIGHTS, ComponentType.ACTIVATIONS]))
        dtype = draw(st.sampled_from([DType.F16, DType.I8, DType.BF16, DType.F32]))
        config = config.with_component_config(component, ComponentPrecisionConfig(dtype))
    globs = st.lists(st.sampled_from(["*weight*", "*_1*", "*", "/MatMul_*"]), max_size=2, unique=True)
    for glob in draw(globs):
        entry = draw(layer_entries(LayerType.LINEAR))
        config = config.with_layer_config(glob, LayerPrecisionConfig(None, entry.precision, entry.layout))
    for policy in draw(st.lists(st.sampled_from(POLICIES), max_size=2, unique_by=lambda p: p.id)):
        config = config.with_policy(policy)
    return config


def _policy(
    name: str, action: PolicyAction, *conditions: tuple[str, str, object, str | None]
) -> PrecisionPolicy:
    rule = PolicyRule("r", action, tuple(PolicyCondition(t, o, v, k) for t, o, v, k in conditions))
    return PrecisionPolicy(name, priority=len(name), rules=(rule,))


POLICIES = (
    _policy("last_f16", PolicyAction.set_precision(DType.F16), ("layer_index", "equal", "last", None)),
    _policy("big_i4", PolicyAction.set_precision(DType.I4), ("parameter_count", "greater_than", 200, None)),
    _policy("raise", PolicyAction.raise_precision(2), ("layer_type", "in", ["linear", "convolution"], None)),
    _policy("lower", PolicyAction.lower_precision(1), ("layer_name", "matches", "*weight*", None)),
    _policy("keep", PolicyAction.keep_original(), ("weight_statistic", "greater_than", 2.0, "kurtosis")),
    _policy("bias32", PolicyAction.set_component_precision("bias", DType.F32)),
    _policy("over_budget", PolicyAction.set_precision(DType.I8), ("memory_usage", "greater_than", 50, None)),
    _policy("stochastic", PolicyAction.set_conversion_strategy("stochastic_rounding")),
)


budgets = st.one_of(st.none(), st.none(), st.none(), st.integers(0, 10**6))  # bytes; 0 is invalid

# Validation findings that say the compiled graph is broken (the checker or onnxruntime rejected
# it, a layer was not realised as planned): the compiler's fault, whatever the input.
_BROKEN_OUTPUT = frozenset({"checker", "session", "readback"})


def _check_error(exc: MixedPrecisionError) -> None:
    if isinstance(exc, PassError):
        raise AssertionError(f"a pass crashed: {exc}") from exc
    if isinstance(exc, CompileValidationError):
        errors = [f for f in exc.findings if f.severity is Severity.ERROR]
        broken = [str(f) for f in errors if f.rule_id in _BROKEN_OUTPUT]
        assert not broken, f"the compiled model is broken: {broken}"


def _run(model: onnx.ModelProto | str, feeds: dict[str, np.ndarray], custom: bool) -> list[np.ndarray]:
    if custom:
        session = runtime.session(model)
    else:
        source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
        session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def compile_and_run(
    case: RandomModel, config: Any, to_file: bool, dims: bool, memory_budget: int | None = None
) -> None:
    expected = _run(case.model, case.feeds, custom=False)
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "out.onnx" if to_file else None
        try:
            result = compile(
                case.model,
                config,
                output=output,
                inputs=None if dims else case.feeds,
                dims=DIMS if dims else None,
                strict=False,
                memory_budget=memory_budget,
                measure_kernels=False,
            )
        except MixedPrecisionError as exc:
            _check_error(exc)
            assert output is None or not output.exists()
            assert sorted(Path(folder).iterdir()) == []
            return
        if output is None:
            return  # the compile validated its in-memory model in onnxruntime already
        assert result.output_path == output
        assert sorted(p.name for p in Path(folder).iterdir()) == ["out.onnx"]
        compiled = onnx.load(output)
    names = [o.name for o in case.model.graph.output]
    assert [o.name for o in compiled.graph.output] == names
    got = _run(compiled, case.feeds, custom=True)
    for name, want, have in zip(names, expected, got, strict=True):
        assert have.dtype == want.dtype and have.shape == want.shape, name


@settings(max_examples=examples(400))
@given(random_models(), configs(), st.booleans(), st.booleans(), budgets)
def test_random_graphs_compile_or_raise_mixed_precision_errors(
    case: RandomModel, config: Any, to_file: bool, dims: bool, memory_budget: int | None
) -> None:
    compile_and_run(case, config, to_file, dims, memory_budget)
