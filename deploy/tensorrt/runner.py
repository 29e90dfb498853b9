"""TensorRT runner: runs a serialized engine through the same interface as the other backends.

GPU buffers, the stream, CUDA events and CUDA graphs come from torch where it is installed with
CUDA (NVIDIA's PyTorch containers, JetPack's l4t-pytorch), else from NVIDIA's cuda-python
(`deploy.tensorrt.cuda_buffers`), so a Jetson or server with only the deploy install runs
engines too. TensorRT itself is driven through its documented Python API: set_tensor_address
with device pointers, execute_async_v3 with the stream as an integer. The engine's sidecar is
checked before TensorRT deserializes it, because an engine built by another TensorRT version or
for another GPU must be a clear error, not a crash.

Each `infer` copies inputs host->device, enqueues the engine (or replays its CUDA graph),
copies outputs back and waits, as onnxruntime and torch do, so host latencies compare. CUDA
events around the enqueue measure GPU compute time alone; `take_gpu_times_ms` hands those
to the benchmark.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from deploy.errors import (
    DeployConfigError,
    DeployError,
    DeployInputError,
    MissingDependencyError,
)
from deploy.lazy import lazy_import
from deploy.runners.base import Runner, TensorSpec
from deploy.tensorrt.cuda_buffers import (
    INSTALL_HINT,
    CudaBuffers,
    CudaBuffersChoice,
    DeviceBuffer,
    check_choice,
)
from deploy.tensorrt.cuda_python import CudaPythonBuffers, cuda_runtime
from deploy.tensorrt.cuda_torch import TorchBuffers, cuda_torch
from deploy.tensorrt.dtypes import dtype_name, feed_dtype
from deploy.tensorrt.engine import trt_logger
from deploy.tensorrt.sidecar import (
    REBUILD_HINT,
    check_engine_compatible,
    gpu_identity,
    load_engine_info,
    sidecar_path,
    verify_engine_file,
)


class TensorRTRunner(Runner):
    """Runs a TensorRT engine file on one CUDA device.

    `cuda_graph=True` captures the enqueue in a CUDA graph after a first plain run and replays
    it; a new input shape re-captures. `check_compatibility=False` skips the sidecar check
    (for engines built elsewhere that you know match this device). `cuda_buffers` picks where
    GPU memory, stream, events and graphs come from: "auto" (torch with CUDA when installed,
    else cuda-python), "torch" or "cuda-python".
    """

    backend = "tensorrt"

    def __init__(
        self,
        engine_path: str | os.PathLike[str],
        *,
        device: str = "cuda",
        cuda_graph: bool = False,
        check_compatibility: bool = True,
        cuda_buffers: CudaBuffersChoice = "auto",
    ) -> None:
        # The file is checked first (exists, no pickle, sidecar whose SHA-256 matches), so a
        # wrong file is named as such even where TensorRT is missing.
        verify_engine_file(engine_path, require_sidecar=check_compatibility)
        if device != "cuda" and not (device.startswith("cuda:") and device[5:].isdigit()):
            raise DeployConfigError(
                f"TensorRT runner: device must be 'cuda' or 'cuda:N', got {device!r}"
            )
        check_choice(cuda_buffers)  # settings before packages: a typo is named everywhere
        self._trt = lazy_import("tensorrt", "the TensorRT runner")
        self.cuda_buffers = cuda_buffers
        self.engine_path = Path(engine_path)
        self.device = device
        self.cuda_graph = bool(cuda_graph)
        self.check_compatibility = check_compatibility
        self.precision = "unknown"  # from the sidecar once active
        self._details: dict[str, Any] = {}
        self.last_gpu_ms: float | None = None
        self.gpu_times_ms: list[float] = []
        self._reset()

    def _reset(self) -> None:
        self._engine: Any = None
        self._context: Any = None
        self._cuda: CudaBuffers | None = None
        self._captured = False  # a CUDA graph of the bound shapes is ready to replay
        self._runs_since_bind = 0
        self._specs: list[TensorSpec] = []
        self._input_names: list[str] = []
        self._output_names: list[str] = []
        self._profile_ranges: dict[str, tuple[tuple[int, ...], ...]] = {}
        self._bound_shapes: dict[str, tuple[int, ...]] = {}
        self._buffers: dict[str, DeviceBuffer] = {}

    def _activate(self) -> None:
        index = int(self.device[5:]) if ":" in self.device else 0
        self._cuda = open_cuda_buffers(self.cuda_buffers, index)
        self._details["cuda_buffers"] = f"{self._cuda.backend} {self._cuda.version}"
        try:
            self._load_engine(index)
        except BaseException:
            self._close_cuda(quietly=True)  # __exit__ never runs when __enter__ fails
            raise

    def _load_engine(self, index: int) -> None:
        trt = self._trt
        if not self.engine_path.is_file():
            raise DeployInputError(f"TensorRT engine not found: {self.engine_path}")
        info = None
        if sidecar_path(self.engine_path).is_file() or self.check_compatibility:
            info = load_engine_info(self.engine_path)
            self.precision = info.precision
            self._details["engine_sha256"] = info.sidecar.get("engine_sha256")
            if self.check_compatibility:
                gpu = gpu_identity(index)
                check_engine_compatible(
                    info.sidecar, trt.__version__, gpu.name, gpu.compute_capability
                )
        runtime = trt.Runtime(trt_logger(trt))
        dla_core = (info.sidecar.get("build_options") or {}).get("dla_core") if info else None
        if dla_core is not None:  # the runtime's DLA core defaults to -1 (none)
            runtime.DLA_core = int(dla_core)
        self._engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self._engine is None:
            raise DeployInputError(
                f"TensorRT {trt.__version__} cannot deserialize {self.engine_path.name} (made by "
                f"another TensorRT version or for another GPU?); {REBUILD_HINT}"
            )
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise DeployError(
                f"TensorRT could not create an execution context for "
                f"{self.engine_path.name} (out of GPU memory?)"
            )
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self._input_names if is_input else self._output_names).append(name)
        for name in self._input_names:
            shape = tuple(int(d) for d in self._engine.get_tensor_shape(name))
            dtype = feed_dtype(dtype_name(self._engine.get_tensor_dtype(name)))
            self._specs.append(TensorSpec(name, tuple(None if d < 0 else d for d in shape), dtype))
            if -1 in shape:
                ranges = self._engine.get_tensor_profile_shape(name, 0)
                self._profile_ranges[name] = tuple(tuple(int(d) for d in s) for s in ranges)

    def _deactivate(self) -> None:
        self._close_cuda(quietly=False)

    def _close_cuda(self, *, quietly: bool) -> None:
        """Drop TensorRT's objects, then free buffers, graph, events and stream."""
        cuda = self._cuda
        self._reset()
        if cuda is None:
            return
        try:
            cuda.close()
        except DeployError:
            if not quietly:  # a failed start's own error says more than the cleanup's
                raise

    @property
    def input_specs(self) -> list[TensorSpec]:
        if self._engine is None:
            raise RuntimeError("use the runner as a context manager: `with runner: ...`")
        return list(self._specs)

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cuda = self._active_cuda()
        shapes = {name: tuple(int(d) for d in feed[name].shape) for name in self._input_names}
        if shapes != self._bound_shapes:
            self._bind(shapes)
        for name in self._input_names:
            cuda.upload(self._buffers[name], feed[name])
        if self.cuda_graph and self._runs_since_bind > 0 and not self._captured:
            self._capture()
        cuda.mark_start()
        if not cuda.replay() and not self._context.execute_async_v3(cuda.stream_handle):
            raise DeployError(
                f"TensorRT failed to run {self.engine_path.name} (execute_async_v3 returned False)"
            )
        cuda.mark_end()
        outputs = cuda.download({name: self._buffers[name] for name in self._output_names})
        self._runs_since_bind += 1
        self.last_gpu_ms = cuda.elapsed_ms()
        self.gpu_times_ms.append(self.last_gpu_ms)
        return outputs

    def _active_cuda(self) -> CudaBuffers:
        if self._cuda is None:
            raise RuntimeError("use the runner as a context manager: `with runner: ...`")
        return self._cuda

    def _bind(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Set input shapes, allocate I/O buffers of those shapes and give TensorRT addresses."""
        cuda, context = self._active_cuda(), self._context
        for name, shape in shapes.items():
            if name in self._profile_ranges:
                _check_in_profile(name, shape, self._profile_ranges[name])
                if not context.set_input_shape(name, shape):
                    raise DeployInputError(
                        f"TensorRT rejected shape {list(shape)} for input '{name}' of "
                        f"{self.engine_path.name}"
                    )
        cuda.synchronize()  # the old buffers may still be in use
        cuda.drop_graph()  # captured addresses and shapes are stale now
        self._captured = False
        cuda.release(self._buffers)
        self._buffers = {}
        for name in self._input_names + self._output_names:
            shape = tuple(int(d) for d in context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise DeployInputError(
                    f"output '{name}' of {self.engine_path.name} has a data-dependent shape "
                    f"{list(shape)}, which the TensorRT runner does not support"
                )
            dtype = dtype_name(self._engine.get_tensor_dtype(name))
            self._buffers[name] = cuda.allocate(shape, dtype)
            context.set_tensor_address(name, self._buffers[name].ptr)
        self._bound_shapes = dict(shapes)
        self._runs_since_bind = 0

    def _capture(self) -> None:
        """Record the enqueue in a CUDA graph (TensorRT has run once with these shapes).

        Some engines cannot be captured (loops, data-dependent shapes, some plugins); then the
        runner falls back to plain enqueues, as trtexec does, and its records say so.
        """
        cuda = self._active_cuda()
        reason = cuda.capture(lambda: self._context.execute_async_v3(cuda.stream_handle))
        if reason is not None:
            self.cuda_graph = False
            self._details["cuda_graph_fallback"] = reason
            return
        self._captured = True

    def record_details(self) -> dict[str, Any]:
        return {
            **self._details,
            "cuda_graph": self.cuda_graph,
            "tensorrt_version": getattr(self._trt, "__version__", None),
        }

    def synchronize(self) -> None:
        if self._cuda is not None:
            self._cuda.synchronize()

    def take_gpu_times_ms(self) -> list[float]:
        times, self.gpu_times_ms = self.gpu_times_ms, []
        return times


def _check_in_profile(
    name: str, shape: tuple[int, ...], ranges: tuple[tuple[int, ...], ...]
) -> None:
    low, _, high = ranges
    if shape[0] > high[0]:
        raise DeployInputError(
            f"batch {shape[0]} is above the engine's profile max {high[0]} for input '{name}'; "
            "rebuild it with `deploy build --batch` including that batch"
        )
    if any(not (lo <= d <= hi) for d, lo, hi in zip(shape, low, high, strict=True)):
        raise DeployInputError(
            f"input '{name}' shape {list(shape)} is outside the engine's profile "
            f"(min {list(low)}, max {list(high)}); rebuild with a profile that covers it"
        )


def open_cuda_buffers(choice: str, device_index: int) -> CudaBuffers:
    """The buffers `choice` names on CUDA device `device_index`. "auto" takes torch where it
    is installed and sees a GPU, else cuda-python; a missing package or GPU is one clear error.
    """
    check_choice(choice)
    if choice == "torch":
        return TorchBuffers(cuda_torch(), device_index)
    if choice == "cuda-python":
        return CudaPythonBuffers(cuda_runtime(), device_index)
    try:
        torch = lazy_import("torch", "the TensorRT runner")
    except MissingDependencyError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        return TorchBuffers(torch, device_index)
    try:
        runtime = cuda_runtime()
    except MissingDependencyError as exc:
        what = (
            "torch sees no CUDA GPU (a CPU build?) and cuda-python is not installed"
            if torch is not None
            else "neither torch nor cuda-python is installed"
        )
        raise MissingDependencyError(
            f"the TensorRT runner takes its GPU buffers from torch with CUDA or from "
            f"cuda-python, and {what}; {INSTALL_HINT}"
        ) from exc.__cause__
    return CudaPythonBuffers(runtime, device_index)
