"""bitnet-onnx: compile ONNX models to BitNet-style mixed precision and run them in onnxruntime."""

from __future__ import annotations

from bitnet_onnx.compile import CompileResult, compile
from bitnet_onnx.config import (
    ComponentPrecisionConfig,
    LayerPrecisionConfig,
    MixedPrecisionConfig,
    MixedPrecisionStrategy,
    Resolution,
)
from bitnet_onnx.config_file import load_config, save_config
from bitnet_onnx.converter import (
    ConversionConfig,
    ConversionStats,
    ConversionStrategy,
    PrecisionConverter,
    QuantizedTensor,
)
from bitnet_onnx.dtypes import DType
from bitnet_onnx.errors import (
    ConfigError,
    ConversionError,
    KernelLibraryError,
    MixedPrecisionError,
    UnsupportedModelError,
    ValidationError,
)
from bitnet_onnx.layer_precision import (
    LayerPrecisionManager,
    LayerPrecisionSpec,
    MemoryOptimization,
    MemoryOptimizationResult,
)
from bitnet_onnx.layers import ComponentType, LayerType, SupportMatrix
from bitnet_onnx.objectives import Accuracy, Balanced, Memory, OptimizationObjective, PrecisionChoice, Speed
from bitnet_onnx.policy import (
    ConditionOperator,
    ConditionType,
    Decision,
    LayerFacts,
    PolicyAction,
    PolicyCondition,
    PolicyEngine,
    PolicyRule,
    PrecisionPolicy,
    weight_statistics,
)
from bitnet_onnx.precision_manager import PrecisionManager
from bitnet_onnx.quantizer import MixedPrecisionQuantizationConfig, MixedPrecisionQuantizer
from bitnet_onnx.report import CompileReport, CompileValidationError
from bitnet_onnx.validation import (
    Finding,
    PrecisionValidator,
    Severity,
    ValidationReport,
    ValidationRule,
    default_rules,
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
    "save_config",
    "weight_statistics",
]

__version__ = "0.1.0"
