"""Errors raised by `export`."""


class ExportError(Exception):
    """Base of every error `export` raises on purpose."""


class ExportConfigError(ExportError, ValueError):
    """An export setting is invalid (opset too old, bad tolerance)."""


class ParityError(ExportError):
    """onnxruntime's outputs differ from torch's beyond the tolerance."""


class OnnxValidationError(ExportError):
    """The ONNX file fails onnx.checker or cannot be read."""
