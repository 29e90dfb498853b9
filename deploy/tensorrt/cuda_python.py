"""The TensorRT runner's GPU buffers from NVIDIA's cuda-python, for devices without torch.

cuda-python's runtime bindings (`cuda.bindings.runtime`; `cuda.cudart` before cuda-python
12.6) are what NVIDIA's TensorRT samples use. Every call returns an error code first; each is
checked, and a failure is a `CudaError` naming the call and the CUDA error
(cudaErrorInsufficientDriver, cudaErrorMemoryAllocation, ...) with what to do about it.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import numpy as np

from deploy.errors import CudaError, MissingDependencyError
from deploy.lazy import lazy_import
from deploy.tensorrt.cuda_buffers import (
    INSTALL_HINT,
    CudaBuffers,
    DeviceBuffer,
    check_size,
)
from deploy.tensorrt.dtypes import from_device_layout, host_dtype, to_device_layout

# What to do about the CUDA errors a user meets first, by error name.
_CUDA_HINTS = {
    "cudaErrorInsufficientDriver": (
        "this machine has no NVIDIA driver, or one older than this cuda-python's CUDA; install "
        "the cuda-python whose major version matches the driver's CUDA (nvidia-smi shows it; "
        "pip install 'cuda-python==12.*' for CUDA 12)"
    ),
    "cudaErrorNoDevice": "no CUDA GPU is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES)",
    "cudaErrorInvalidDevice": "that device index does not exist (nvidia-smi lists the GPUs)",
    "cudaErrorMemoryAllocation": "out of GPU memory; lower the batch size (--batch)",
}


def cuda_runtime() -> ModuleType:
    """cuda-python's runtime module: cuda.bindings.runtime, or cuda.cudart before 12.6."""
    try:
        return lazy_import("cuda.bindings.runtime", "the TensorRT runner")
    except MissingDependencyError:
        pass
    try:
        return lazy_import("cuda.cudart", "the TensorRT runner")
    except MissingDependencyError as exc:
        raise MissingDependencyError(
            f"the TensorRT runner's cuda-python buffers need the 'cuda-python' package, which "
            f"is not installed; {INSTALL_HINT}"
        ) from exc.__cause__


class CudaPythonBuffers(CudaBuffers):
    """cudaMalloc'd memory, a non-blocking stream, events and stream-captured CUDA graphs,
    through cuda-python's runtime API; no torch involved."""

    backend = "cuda-python"

    def __init__(self, runtime: ModuleType, device_index: int) -> None:
        self._rt = runtime
        self.version = _cuda_python_version()
        self._allocated: dict[int, int] = {}  # ptr -> bytes, everything not yet freed
        self._graph: Any = None
        self._stream: Any = None
        self._events: list[Any] = []
        self._call("cudaSetDevice", device_index)
        self._stream = self._call("cudaStreamCreateWithFlags", runtime.cudaStreamNonBlocking)
        self._events = [self._call("cudaEventCreate"), self._call("cudaEventCreate")]

    def _call(self, function: str, *args: Any) -> Any:
        """Call `function`, check its error code, return what it returns after the code."""
        err, *values = getattr(self._rt, function)(*args)
        if err != self._rt.cudaError_t.cudaSuccess:
            raise cuda_error(self._rt, function, err)
        return values[0] if len(values) == 1 else tuple(values)

    @property
    def stream_handle(self) -> int:
        return int(self._stream)

    def allocate(self, shape: tuple[int, ...], dtype: str) -> DeviceBuffer:
        nbytes = int(np.prod(shape, dtype=np.int64)) * host_dtype(dtype).itemsize
        ptr = int(self._call("cudaMalloc", max(nbytes, 1)))  # TensorRT wants non-null
        self._allocated[ptr] = nbytes
        return DeviceBuffer(shape, dtype, ptr, nbytes)

    def release(self, buffers: Mapping[str, DeviceBuffer]) -> None:
        for buffer in buffers.values():
            if self._allocated.pop(buffer.ptr, None) is not None:
                self._call("cudaFree", buffer.ptr)

    def upload(self, buffer: DeviceBuffer, array: np.ndarray) -> None:
        host = to_device_layout(array, buffer.dtype)
        check_size(host, buffer)
        if host.nbytes:  # pageable memory: staged before the call returns, as torch's copy_
            kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
            self._call(
                "cudaMemcpyAsync", buffer.ptr, host.ctypes.data, host.nbytes, kind, self._stream
            )

    def download(self, buffers: Mapping[str, DeviceBuffer]) -> dict[str, np.ndarray]:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        host = {name: np.empty(b.shape, host_dtype(b.dtype)) for name, b in buffers.items()}
        for name, buffer in buffers.items():
            check_size(host[name], buffer)
            if buffer.nbytes:
                target = host[name].ctypes.data
                self._call("cudaMemcpyAsync", target, buffer.ptr, buffer.nbytes, kind, self._stream)
        self.synchronize()
        return {name: from_device_layout(array) for name, array in host.items()}

    def mark_start(self) -> None:
        self._call("cudaEventRecord", self._events[0], self._stream)

    def mark_end(self) -> None:
        self._call("cudaEventRecord", self._events[1], self._stream)

    def elapsed_ms(self) -> float:
        return float(self._call("cudaEventElapsedTime", *self._events))

    def capture(self, enqueue: Callable[[], bool]) -> str | None:
        """Stream capture, as trtexec does it. Thread-local mode: the power sampler's thread
        may go on with its own (non-CUDA) calls while this thread captures."""
        mode = self._rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._call("cudaStreamBeginCapture", self._stream, mode)
        try:
            captured = enqueue()
        except BaseException:
            self._destroy_graph(self._end_capture()[0])  # the stream must leave capture mode
            raise
        graph, reason = self._end_capture()
        try:
            if reason is None and not captured:
                reason = "execute_async_v3 returned False during capture"
            if reason is None:
                self._graph = self._call("cudaGraphInstantiateWithFlags", graph, 0)
        except CudaError as exc:  # the graph cannot run: plain enqueues, as trtexec falls back
            reason = str(exc)
        finally:
            self._destroy_graph(graph)  # the executable graph stands alone
        return reason

    def _end_capture(self) -> tuple[Any, str | None]:
        """The captured graph (None if there is none), and why capture failed, if it did."""
        err, graph = self._rt.cudaStreamEndCapture(self._stream)
        if err != self._rt.cudaError_t.cudaSuccess:
            return graph, str(cuda_error(self._rt, "cudaStreamEndCapture", err))
        return graph, None

    def _destroy_graph(self, graph: Any) -> None:
        if graph is not None and int(graph):
            self._call("cudaGraphDestroy", graph)

    def replay(self) -> bool:
        if self._graph is None:
            return False
        self._call("cudaGraphLaunch", self._graph, self._stream)
        return True

    def drop_graph(self) -> None:
        graph, self._graph = self._graph, None
        if graph is not None:
            self._call("cudaGraphExecDestroy", graph)

    def synchronize(self) -> None:
        self._call("cudaStreamSynchronize", self._stream)

    def close(self) -> None:
        """Free everything, even after a failure; then raise the first error, if any."""
        steps: list[tuple[str, tuple[Any, ...]]] = []
        if self._stream is not None:
            steps.append(("cudaStreamSynchronize", (self._stream,)))
        if self._graph is not None:
            steps.append(("cudaGraphExecDestroy", (self._graph,)))
        steps += [("cudaFree", (ptr,)) for ptr in self._allocated]
        steps += [("cudaEventDestroy", (event,)) for event in self._events]
        if self._stream is not None:
            steps.append(("cudaStreamDestroy", (self._stream,)))
        self._graph, self._allocated, self._events, self._stream = None, {}, [], None
        errors = []
        for function, args in steps:
            try:
                self._call(function, *args)
            except CudaError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


def cuda_error(runtime: ModuleType, function: str, err: Any) -> CudaError:
    """A CudaError for `err` returned by `function`: CUDA's name and text, and what to do."""
    name = _decoded(runtime.cudaGetErrorName(err), getattr(err, "name", str(err)))
    text = _decoded(runtime.cudaGetErrorString(err), "")
    hint = _CUDA_HINTS.get(name)
    message = f"CUDA call {function} failed: {name}" + (f" ({text})" if text else "")
    return CudaError(message + (f"; {hint}" if hint else ""), name)


def _decoded(result: tuple[Any, ...], default: str) -> str:
    """The string of a (cudaError_t, bytes) pair that cudaGetErrorName/String return."""
    value = result[1] if len(result) > 1 else None
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return default if value is None else str(value)


def _cuda_python_version() -> str:
    for distribution in ("cuda-bindings", "cuda-python"):
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"
