"""Runners: one interface (`Runner`) over the inference backends."""

from deploy.runners.base import Runner, TensorSpec
from deploy.runners.onnxruntime import OnnxRuntimeRunner

__all__ = ["OnnxRuntimeRunner", "Runner", "TensorSpec"]
