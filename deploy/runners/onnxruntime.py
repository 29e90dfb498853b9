"""onnxruntime runner (CPU execution provider by default)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from deploy.errors import DeployConfigError, DeployInputError
from deploy.lazy import lazy_import
from deploy.machine.cpus import default_threads
from deploy.onnx_files import check_onnx_file
from deploy.onnx_info import inspect_onnx
from deploy.runners.base import Runner, TensorSpec

# How long (microseconds) an idle intra-op thread spins for more work before it sleeps.
# onnxruntime's own default spins about 40 ms after every call (measured on a 2-core EPYC):
# beside other sessions, or right after a model timed before it, that steals a core from the
# model being timed. 1 ms still covers the gaps between the operators of one call and between
# back-to-back calls: ResNet-56 variants alone, batch 1 and 8, ran within noise of the default
# (0.93-1.06x), while no spinning at all cost 14-41%.
SPIN_DURATION_US = 1000

# onnxruntime's type strings -> numpy dtype names.
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


class OnnxRuntimeRunner(Runner):
    """Runs an ONNX file with onnxruntime.

    `threads` sets intra-op threads; None on the CPU provider means one per CPU this process
    may use (`deploy.machine.cpus.default_threads`, decided when the session is made, so after any
    pinning), never onnxruntime's own default, which varies by version and machine and would
    leave the record without a thread count. Inter-op is kept at 1 because CNN graphs here
    are sequential. `optimize=False` runs the graph as written: a QDQ model then computes on
    dequantized int8 values in float (exact int8 products, wide sums), as TensorRT's INT8
    kernels do, instead of onnxruntime's fused CPU int8 kernels, whose 16-bit intermediate
    sums saturate on x86 CPUs without VNNI. `spin_duration_us` bounds how long idle intra-op
    threads spin before they sleep (`SPIN_DURATION_US`; 0: no spinning; None: onnxruntime's
    own default). An onnxruntime too old to know `session.intra_op.spin_duration_us` ignores
    it and spins as by default (1.30 and 1.32 honour it).
    """

    backend = "onnxruntime"

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        threads: int | None = None,
        providers: list[str] | None = None,
        optimize: bool = True,
        spin_duration_us: int | None = SPIN_DURATION_US,
    ) -> None:
        if spin_duration_us is not None and (
            isinstance(spin_duration_us, bool)
            or not isinstance(spin_duration_us, int)
            or spin_duration_us < 0
        ):
            raise DeployConfigError(
                "onnxruntime runner: spin_duration_us must be an integer >= 0 or None, got "
                f"{spin_duration_us!r}"
            )
        self.model_path = Path(model_path)
        self.optimize = optimize
        self.spin_duration_us = spin_duration_us
        self.threads = threads
        self.providers = providers or ["CPUExecutionProvider"]
        self.device = "cuda" if "CUDAExecutionProvider" in self.providers else "cpu"
        self._session = None
        # Cached at activation: the benchmark calls infer() in its timed loop, and asking the
        # session for its inputs and outputs on every call would be timed as model latency.
        self._input_specs: list[TensorSpec] = []
        self._output_names: list[str] = []

    def _activate(self) -> None:
        ort = lazy_import("onnxruntime", "the onnxruntime runner")
        if not self.model_path.is_file():
            raise DeployInputError(f"ONNX file not found: {self.model_path}")
        options = ort.SessionOptions()
        if self.threads is None and self.device == "cpu":
            self.threads = default_threads()
        if self.threads is not None:
            options.intra_op_num_threads = int(self.threads)
        options.inter_op_num_threads = 1
        if self.spin_duration_us is not None:
            spinning = self.spin_duration_us > 0
            options.add_session_config_entry(
                "session.intra_op.allow_spinning", "1" if spinning else "0"
            )
            if spinning:
                options.add_session_config_entry(
                    "session.intra_op.spin_duration_us", str(self.spin_duration_us)
                )
        # Fatal only: errors reach the user as our one-line DeployError, quoting onnxruntime's
        # message; its own log line on stderr would be a second, colored copy.
        options.log_severity_level = 4
        options.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if self.optimize
            else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )
        check_onnx_file(self.model_path)  # before onnxruntime reads what it declares
        try:
            self._session = ort.InferenceSession(
                str(self.model_path), sess_options=options, providers=self.providers
            )
        except Exception as exc:  # onnxruntime raises its own C++-backed error types
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            hint = ""
            if (
                "NOT_IMPLEMENTED" in first_line
                and inspect_onnx(self.model_path).precision == "bf16"
            ):
                hint = (
                    "; this is a BF16 graph, and onnxruntime's CPU provider has no BF16 kernels: "
                    "time it with --backend tensorrt (its accuracy was measured on a float32 "
                    "emulation when it was written)"
                )
            raise DeployInputError(
                f"onnxruntime cannot load {self.model_path}: {first_line}{hint}"
            ) from exc
        # What the file computes in (Q/DQ nodes: int8; FP16 weights: fp16), for the records.
        self.precision = inspect_onnx(self.model_path).precision
        self._input_specs = [_spec(node) for node in self._session.get_inputs()]
        self._output_names = [node.name for node in self._session.get_outputs()]

    def _deactivate(self) -> None:
        self._session = None
        self._input_specs = []
        self._output_names = []

    @property
    def session(self):  # noqa: ANN201 - onnxruntime.InferenceSession, imported lazily
        if self._session is None:
            raise RuntimeError("use the runner as a context manager: `with runner: ...`")
        return self._session

    @property
    def input_specs(self) -> list[TensorSpec]:
        self.session  # noqa: B018 - raises the "use a context manager" error when inactive
        return self._input_specs

    @property
    def output_specs(self) -> list[TensorSpec]:
        return [_spec(node) for node in self.session.get_outputs()]

    def record_details(self) -> dict[str, Any]:
        """The thread settings that change latency; None: onnxruntime's own default."""
        return {"intra_op_spin_us": self.spin_duration_us}

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(self._output_names, feed)
        return dict(zip(self._output_names, outputs, strict=True))


def _spec(node) -> TensorSpec:  # noqa: ANN001 - onnxruntime NodeArg
    shape = tuple(dim if isinstance(dim, int) and dim > 0 else None for dim in node.shape)
    return TensorSpec(name=node.name, shape=shape, dtype=_ORT_TYPES.get(node.type, node.type))
