"""TensorRT runner: runs a serialized engine through the same interface as the other backends.

GPU buffers, the stream, CUDA events and CUDA graphs come from torch (one small path, present
in NVIDIA's PyTorch containers and JetPack's l4t-pytorch); a device without torch times its
engines with trtexec (`deploy.tensorrt.trtexec`) instead. The engine's sidecar is checked before
TensorRT deserializes it, because an engine built by another TensorRT version or for another
GPU must be a clear error, not a crash.

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

from deploy.errors import DeployConfigError, DeployError, DeployInputError
from deploy.lazy import lazy_import
from deploy.runners.base import Runner, TensorSpec
from deploy.tensorrt.engine import TRT_DTYPES, trt_logger
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
    (for engines built elsewhere that you know match this device).
    """

    backend = "tensorrt"

    def __init__(
        self,
        engine_path: str | os.PathLike[str],
        *,
        device: str = "cuda",
        cuda_graph: bool = False,
        check_compatibility: bool = True,
    ) -> None:
        # The file is checked first (exists, no pickle, sidecar whose SHA-256 matches), so a
        # wrong file is named as such even where TensorRT is missing.
        verify_engine_file(engine_path, require_sidecar=check_compatibility)
        self._trt = lazy_import("tensorrt", "the TensorRT runner")
        if device != "cuda" and not (device.startswith("cuda:") and device[5:].isdigit()):
            raise DeployConfigError(
                f"TensorRT runner: device must be 'cuda' or 'cuda:N', got {device!r}"
            )
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
        self._stream: Any = None
        self._graph: Any = None
        self._runs_since_bind = 0
        self._specs: list[TensorSpec] = []
        self._input_names: list[str] = []
        self._output_names: list[str] = []
        self._profile_ranges: dict[str, tuple[tuple[int, ...], ...]] = {}
        self._bound_shapes: dict[str, tuple[int, ...]] = {}
        self._buffers: dict[str, Any] = {}

    def _activate(self) -> None:
        trt = self._trt
        torch = lazy_import("torch", "the TensorRT runner (its GPU buffers are torch tensors)")
        if not torch.cuda.is_available():
            raise DeployConfigError(
                f"TensorRT runner: torch {torch.__version__} sees no CUDA GPU; run on a device "
                "with one (torch built with CUDA)"
            )
        self._torch = torch
        index = int(self.device[5:]) if ":" in self.device else 0
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
        torch.cuda.set_device(index)
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
        self._stream = torch.cuda.Stream(device=self.device)
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self._input_names if is_input else self._output_names).append(name)
        for name in self._input_names:
            shape = tuple(int(d) for d in self._engine.get_tensor_shape(name))
            dtype = _dtype_name(self._engine.get_tensor_dtype(name))
            # bfloat16 has no numpy type: feed float32, the copy to the GPU converts it.
            spec_dtype = "float32" if dtype == "bfloat16" else dtype
            self._specs.append(
                TensorSpec(name, tuple(None if d < 0 else d for d in shape), spec_dtype)
            )
            if -1 in shape:
                ranges = self._engine.get_tensor_profile_shape(name, 0)
                self._profile_ranges[name] = tuple(tuple(int(d) for d in s) for s in ranges)

    def _deactivate(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()
        self._reset()

    @property
    def input_specs(self) -> list[TensorSpec]:
        if self._engine is None:
            raise RuntimeError("use the runner as a context manager: `with runner: ...`")
        return list(self._specs)

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        shapes = {name: tuple(int(d) for d in feed[name].shape) for name in self._input_names}
        if shapes != self._bound_shapes:
            self._bind(shapes)
        with torch.cuda.stream(self._stream):
            for name in self._input_names:
                source = torch.from_numpy(np.ascontiguousarray(feed[name]))
                self._buffers[name].copy_(source)
            if self.cuda_graph and self._graph is None and self._runs_since_bind > 0:
                self._capture()
            self._start.record(self._stream)
            if self._graph is not None:
                self._graph.replay()
            elif not self._context.execute_async_v3(self._stream.cuda_stream):
                raise DeployError(
                    f"TensorRT failed to run {self.engine_path.name} "
                    f"(execute_async_v3 returned False)"
                )
            self._end.record(self._stream)
            outputs = {name: self._to_host(self._buffers[name]) for name in self._output_names}
        self._stream.synchronize()
        self._runs_since_bind += 1
        self.last_gpu_ms = float(self._start.elapsed_time(self._end))
        self.gpu_times_ms.append(self.last_gpu_ms)
        return outputs

    def _bind(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Set input shapes, allocate I/O buffers of those shapes and give TensorRT addresses."""
        torch, context = self._torch, self._context
        for name, shape in shapes.items():
            if name in self._profile_ranges:
                _check_in_profile(name, shape, self._profile_ranges[name])
                if not context.set_input_shape(name, shape):
                    raise DeployInputError(
                        f"TensorRT rejected shape {list(shape)} for input '{name}' of "
                        f"{self.engine_path.name}"
                    )
        self._graph = None  # captured addresses and shapes are stale now
        self._buffers = {}
        for name in self._input_names + self._output_names:
            shape = tuple(int(d) for d in context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise DeployInputError(
                    f"output '{name}' of {self.engine_path.name} has a data-dependent shape "
                    f"{list(shape)}, which the TensorRT runner does not support"
                )
            dtype = getattr(torch, _dtype_name(self._engine.get_tensor_dtype(name)))
            self._buffers[name] = torch.empty(shape, dtype=dtype, device=self.device)
            context.set_tensor_address(name, self._buffers[name].data_ptr())
        self._bound_shapes = dict(shapes)
        self._runs_since_bind = 0

    def _capture(self) -> None:
        """Record the enqueue in a CUDA graph (TensorRT has run once with these shapes).

        Some engines cannot be captured (loops, data-dependent shapes, some plugins); then the
        runner falls back to plain enqueues, as trtexec does, and its records say so.
        """
        torch = self._torch
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self._stream):
                captured = self._context.execute_async_v3(self._stream.cuda_stream)
        except RuntimeError as exc:  # torch reports a failed capture as a RuntimeError
            captured, reason = False, str(exc).splitlines()[0] if str(exc) else repr(exc)
        else:
            reason = "execute_async_v3 returned False during capture"
        if not captured:
            self.cuda_graph = False
            self._details["cuda_graph_fallback"] = reason
            return
        self._graph = graph

    def record_details(self) -> dict[str, Any]:
        return {
            **self._details,
            "cuda_graph": self.cuda_graph,
            "tensorrt_version": getattr(self._trt, "__version__", None),
        }

    def _to_host(self, tensor: Any) -> np.ndarray:
        if tensor.dtype == self._torch.bfloat16:
            tensor = tensor.float()
        return tensor.cpu().numpy()

    def synchronize(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()

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


def _dtype_name(dtype: Any) -> str:
    """trt.DataType -> numpy/torch dtype name ("float32", "float16", "bfloat16", ...)."""
    member = getattr(dtype, "name", str(dtype).rsplit(".", 1)[-1])
    if member not in TRT_DTYPES:
        raise DeployInputError(f"the TensorRT runner does not handle tensors of type {member}")
    return TRT_DTYPES[member]
