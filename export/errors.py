"""Errors raised by `export`; the CLI turns each into one line and a non-zero exit code."""

from deploy.errors import first_line  # the one helper, in the lowest layer

__all__ = [
    "ExportConfigError",
    "ExportError",
    "ExportInputError",
    "OnnxValidationError",
    "ParityError",
    "UnsupportedModelError",
    "first_line",
]


class ExportError(Exception):
    """Base of every error `export` raises on purpose."""


class ExportConfigError(ExportError, ValueError):
    """An export setting is invalid (opset too old, bad tolerance)."""


class ExportInputError(ExportError, ValueError):
    """An argument other than the config cannot be used (example input, metadata, paths)."""


class UnsupportedModelError(ExportError):
    """torch cannot export the model, or the exported graph is unfit (training-mode ops)."""


class BlockBoundaryError(ExportError):
    """A block asked about is not one subgraph with one input and one output."""


class ParityError(ExportError):
    """onnxruntime's outputs differ from torch's beyond the tolerance."""


class OnnxValidationError(ExportError):
    """The ONNX file fails onnx.checker or cannot be read."""
