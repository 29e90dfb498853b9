"""Export: nn.Module -> checked ONNX file with parity against torch and metadata.

    import export
    result = export.export_onnx(model, example_images, "model.onnx")
    export.check_readiness("model.onnx", trt_version="10.3").format()

Each public name is imported on first use, so `import export` (or its error types) loads no
torch until an export is asked for.
"""

from deploy.lazy import lazy_attributes

_API = {
    "export.errors": (
        "ExportConfigError",
        "ExportError",
        "ExportInputError",
        "OnnxValidationError",
        "ParityError",
        "UnsupportedModelError",
    ),
    "export.config": ("ExportConfig", "ExportResult"),
    "export.onnx_export": ("export_onnx",),
    "export.parity": ("Parity", "check_parity"),
    "export.metadata": ("read_metadata", "write_metadata"),
    "export.fp16": ("FP16Config", "FP16Result", "convert_fp16"),
    "export.bf16": ("BF16Config", "BF16Result", "convert_bf16"),
    "export.quantize": ("QuantizeConfig", "QuantizeResult", "quantize_qdq"),
    "export.findings": ("Finding", "ReadinessReport"),
    "export.readiness": ("check_readiness",),
    "deploy.files": ("file_sha256",),
}
__all__ = sorted(name for names in _API.values() for name in names)
__getattr__, __dir__ = lazy_attributes(__name__, _API)
del lazy_attributes  # the helper is not part of the API
