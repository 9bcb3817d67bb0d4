"""bitnet-onnx: compile ONNX models to BitNet-style mixed precision and run them in onnxruntime."""

from __future__ import annotations

from bitnet_onnx.api.precision_manager import PrecisionManager
from bitnet_onnx.api.quantizer import MixedPrecisionQuantizationConfig, MixedPrecisionQuantizer
from bitnet_onnx.compiler.compile import CompileResult, compile
from bitnet_onnx.config.config import (
    ComponentPrecisionConfig,
    LayerPrecisionConfig,
    MixedPrecisionConfig,
    MixedPrecisionStrategy,
)
from bitnet_onnx.config.config_file import load_config, save_config
from bitnet_onnx.config.layer_precision import (
    LayerPrecisionManager,
    LayerPrecisionSpec,
    MemoryOptimization,
    MemoryOptimizationResult,
)
from bitnet_onnx.config.policy import (
    ConditionOperator,
    ConditionType,
    LayerFacts,
    PolicyAction,
    PolicyCondition,
    PolicyEngine,
    PolicyRule,
    PrecisionPolicy,
    read_policy,
    weight_statistics,
)
from bitnet_onnx.config.report import CompileReport, CompileValidationError
from bitnet_onnx.config.validation import (
    Finding,
    PrecisionValidator,
    Severity,
    ValidationReport,
    ValidationRule,
    default_rules,
)
from bitnet_onnx.core.dtypes import ConversionStrategy, DType
from bitnet_onnx.core.errors import (
    ConfigError,
    ConversionError,
    KernelLibraryError,
    MixedPrecisionError,
    UnsupportedModelError,
    ValidationError,
)
from bitnet_onnx.core.layers import ComponentType, LayerType, SupportMatrix
from bitnet_onnx.core.plan import Decision, Resolution
from bitnet_onnx.core.version import __version__ as __version__  # re-exported
from bitnet_onnx.numerics.converter import (
    ConversionConfig,
    ConversionStats,
    PrecisionConverter,
    QuantizedTensor,
)
from bitnet_onnx.optimize.objectives import (
    Accuracy,
    Balanced,
    Memory,
    OptimizationObjective,
    PrecisionChoice,
    Speed,
)

__all__ = [
    "Accuracy",
    "Balanced",
    "CompileReport",
    "CompileResult",
    "CompileValidationError",
    "ComponentPrecisionConfig",
    "ComponentType",
    "ConditionOperator",
    "ConditionType",
    "ConfigError",
    "ConversionConfig",
    "ConversionError",
    "ConversionStats",
    "ConversionStrategy",
    "DType",
    "Decision",
    "Finding",
    "KernelLibraryError",
    "LayerFacts",
    "LayerPrecisionConfig",
    "LayerPrecisionManager",
    "LayerPrecisionSpec",
    "LayerType",
    "Memory",
    "MemoryOptimization",
    "MemoryOptimizationResult",
    "MixedPrecisionConfig",
    "MixedPrecisionError",
    "MixedPrecisionQuantizationConfig",
    "MixedPrecisionQuantizer",
    "MixedPrecisionStrategy",
    "OptimizationObjective",
    "PolicyAction",
    "PolicyCondition",
    "PolicyEngine",
    "PolicyRule",
    "PrecisionChoice",
    "PrecisionConverter",
    "PrecisionManager",
    "PrecisionPolicy",
    "PrecisionValidator",
    "QuantizedTensor",
    "Resolution",
    "Severity",
    "Speed",
    "SupportMatrix",
    "UnsupportedModelError",
    "ValidationError",
    "ValidationReport",
    "ValidationRule",
    "compile",
    "default_rules",
    "load_config",
    "read_policy",
    "save_config",
    "weight_statistics",
]
