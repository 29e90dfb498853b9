"""Export: nn.Module -> checked ONNX file with parity against torch and metadata."""

from deploy.files import file_sha256
from export.errors import (
    ExportConfigError,
    ExportError,
    ExportInputError,
    OnnxValidationError,
    ParityError,
    UnsupportedModelError,
)
from export.fp16 import FP16Config, FP16Result, convert_fp16
from export.metadata import read_metadata, write_metadata
from export.onnx_export import ExportConfig, ExportResult, export_onnx
from export.parity import Parity, check_parity
from export.quantize import QuantizeConfig, QuantizeResult, quantize_qdq
from export.readiness import Finding, ReadinessReport, check_readiness

__all__ = [
    "ExportConfig",
    "ExportConfigError",
    "ExportError",
    "ExportInputError",
    "ExportResult",
    "OnnxValidationError",
    "Parity",
    "ParityError",
    "UnsupportedModelError",
    "check_parity",
    "export_onnx",
    "file_sha256",
    "read_metadata",
    "write_metadata",
    "FP16Config",
    "FP16Result",
    "QuantizeConfig",
    "QuantizeResult",
    "convert_fp16",
    "quantize_qdq",
    "Finding",
    "ReadinessReport",
    "check_readiness",
]
