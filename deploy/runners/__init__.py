"""Runners: one interface (`Runner`) over the inference backends.

Backends are registered by name and imported only when `make_runner` asks for them, so this
package imports on a machine that lacks torch (or TensorRT). Adding a backend is one entry in
`BACKENDS` plus its module.
"""

from __future__ import annotations

import importlib
from typing import Any

from deploy.errors import DeployConfigError
from deploy.runners.base import Runner, TensorSpec
from deploy.runners.onnxruntime import OnnxRuntimeRunner

# name -> (module, class, what the `model` argument is). Imported on demand by make_runner.
BACKENDS: dict[str, tuple[str, str, str]] = {
    "onnxruntime": ("deploy.runners.onnxruntime", "OnnxRuntimeRunner", "a path to an ONNX file"),
    "torch": ("deploy.runners.torch_runner", "TorchRunner", "a torch.nn.Module"),
    "tensorrt": ("deploy.tensorrt.runner", "TensorRTRunner", "a path to a TensorRT engine file"),
}

# Backends that time a model but are not runners (they do not return outputs to compare).
NOT_RUNNERS = {
    "trtexec": "trtexec runs as its own process and reports timings only; use "
    "deploy.tensorrt.trtexec.run_trtexec (`deploy bench --backend trtexec`)",
}


def make_runner(backend: str, model: Any, **options: Any) -> Runner:
    """Build the runner registered as `backend` for `model`, importing it only now.

    `model` is an ONNX path for "onnxruntime", an nn.Module for "torch" and an engine path for
    "tensorrt"; `options` go to the runner's constructor (e.g. `threads=2`, or
    `input_shape=(None, 3, 32, 32)` for torch, `cuda_graph=True` for tensorrt).
    """
    if backend not in BACKENDS:
        if backend in NOT_RUNNERS:
            raise DeployConfigError(
                f"backend '{backend}' is not a runner: {NOT_RUNNERS[backend]}; runners: "
                f"{sorted(BACKENDS)}"
            )
        raise DeployConfigError(f"unknown backend '{backend}'; choose from {sorted(BACKENDS)}")
    module_name, class_name, _ = BACKENDS[backend]
    runner_class = getattr(importlib.import_module(module_name), class_name)
    return runner_class(model, **options)


__all__ = ["BACKENDS", "OnnxRuntimeRunner", "Runner", "TensorSpec", "make_runner"]
