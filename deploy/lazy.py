"""One place that imports optional heavy packages, so a missing one is a clear error, and
the packages' public names, each imported when first used.

`deploy` must import on a Jetson or server that has only numpy, onnx and onnxruntime, so
torch, TensorRT or pynvml are imported only when a runner that needs them is used.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

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
    "ray": "pip install 'layer-lottery-deploy[ray]' (from a checkout: bash install.sh --ray)",
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


def lazy_attributes(
    package: str, api: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's `__getattr__` and `__dir__` (PEP 562) over `api`, {module: public names}.

    Each name is imported from its module on first use, so `import compressor` (and its
    error types, which every command line needs) stays as cheap as the modules actually
    used, and the API needs no import of torch until a model is asked for.
    """
    where = {name: module for module, names in api.items() for name in names}

    def __getattr__(name: str) -> Any:  # noqa: N807
        if name not in where:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        value = getattr(importlib.import_module(where[name]), name)
        setattr(sys.modules[package], name, value)  # the next lookup skips __getattr__
        return value

    def __dir__() -> list[str]:  # noqa: N807
        return sorted({*vars(sys.modules[package]), *where})

    return __getattr__, __dir__
