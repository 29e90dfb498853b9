"""One place that imports optional heavy packages, so a missing one is a clear error, and
the packages' public names, each imported when first used.

`deploy` must import on a Jetson or server that has only numpy, onnx and onnxruntime (the
package's core dependencies), so torch, TensorRT, cuda-python or pynvml are imported only when
a runner that needs them is used. Each hint names the pip extra that brings the package.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

from deploy.errors import MissingDependencyError

PROJECT = "layer-lottery-deploy"
# The pipeline (`compressor`: training, pruning, export) is the [pipeline] extra; a deploy-only
# install lacks these top-level modules.
PIPELINE_MODULES = frozenset(
    {"torch", "torch_pruning", "onnxscript", "PIL", "safetensors", "sklearn", "yaml", "tqdm"}
)
PIPELINE_HINT = (
    f"pip install '{PROJECT}[pipeline]' (from a checkout: bash install.sh, which also keeps "
    "a torch you installed for your CUDA)"
)
TENSORRT_HINT = (
    f"pip install '{PROJECT}[tensorrt]' on a GPU server, or use an NVIDIA container "
    "(nvcr.io/nvidia/tensorrt or pytorch) or JetPack, which ship TensorRT"
)
# What to tell the user to install, per importable module name.
_INSTALL_HINTS = {
    "onnxruntime": "pip install onnxruntime (or onnxruntime-gpu on a CUDA machine)",
    "onnx": "pip install onnx",
    "torch": f"{PIPELINE_HINT}; on a Jetson, NVIDIA's torch wheel for your JetPack",
    "tensorrt": TENSORRT_HINT,
    "pynvml": f"pip install '{PROJECT}[nvml]' (the nvidia-ml-py package)",
    "codecarbon": f"pip install '{PROJECT}[energy]'",
    "cuda": (
        f"pip install '{PROJECT}[tensorrt]' (cuda-python; on a Jetson, whose TensorRT comes "
        "with JetPack: pip install 'cuda-python==12.*')"
    ),
    "matplotlib": f"pip install '{PROJECT}[deploy]' (matplotlib)",
    "ray": f"pip install '{PROJECT}[pipeline,ray]' (from a checkout: bash install.sh --ray)",
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


def pipeline_missing(exc: ModuleNotFoundError) -> str | None:
    """The one-line reason when `exc` says a pipeline package is missing, else None.

    `compressor` catches this at its entry point (`compressor.entry`), so a deploy-only install
    answers `compressor run` with the extra to install instead of a traceback.
    """
    module = (exc.name or "").split(".")[0]
    if module not in PIPELINE_MODULES:
        return None
    return (
        f"the pipeline needs the '{module}' package, which is not installed (this looks like "
        f"a deploy-only install); {PIPELINE_HINT}"
    )


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
