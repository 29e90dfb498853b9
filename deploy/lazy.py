"""One place that imports optional heavy packages, so a missing one is a clear error.

`deploy` must import on a Jetson or server that has only numpy, onnx and onnxruntime, so
torch, TensorRT or pynvml are imported only when a runner that needs them is used.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from deploy.errors import MissingDependencyError

# What to tell the user to install, per importable module name.
_INSTALL_HINTS = {
    "onnxruntime": "pip install onnxruntime (or onnxruntime-gpu on a CUDA machine)",
    "onnx": "pip install onnx",
    "torch": "pip install torch (see the README for the tested version)",
    "tensorrt": (
        "use an NVIDIA container (nvcr.io/nvidia/tensorrt or pytorch) or JetPack, which ship "
        "TensorRT, or pip install tensorrt on an x86 CUDA machine"
    ),
    "pynvml": "pip install nvidia-ml-py",
    "cuda": "pip install cuda-python",
}


def lazy_import(module: str, needed_for: str) -> ModuleType:
    """Import `module` or raise MissingDependencyError saying what needs it and how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        hint = _INSTALL_HINTS.get(module.split(".")[0], f"pip install {module}")
        raise MissingDependencyError(
            f"{needed_for} needs the '{module}' package, which is not installed; {hint}"
        ) from exc
