"""GPU memory, a stream, CUDA events and CUDA graphs for the TensorRT runner, from torch or
from NVIDIA's cuda-python, behind one small interface (`CudaBuffers`).

torch is the natural source where it is installed with CUDA (NVIDIA's PyTorch containers,
JetPack's l4t-pytorch). A Jetson or GPU server that installed only `deploy` has no torch;
there the runner uses cuda-python's runtime bindings (`cuda.bindings.runtime`, `cuda.cudart`
before cuda-python 12.6), the package NVIDIA's TensorRT samples use. Every cuda-python call
returns an error code first; each is checked, and a failure is a `CudaError` naming the call
and the CUDA error (cudaErrorInsufficientDriver, cudaErrorMemoryAllocation, ...).
"""

from __future__ import annotations

import importlib.metadata
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal, get_args

import numpy as np

from deploy.errors import DeployConfigError, DeployError, MissingDependencyError, first_line
from deploy.lazy import PROJECT, lazy_import
from deploy.tensorrt.dtypes import from_device_layout, host_dtype, to_device_layout

CudaBuffersChoice = Literal["auto", "torch", "cuda-python"]
CUDA_BUFFERS: tuple[str, ...] = get_args(CudaBuffersChoice)
INSTALL_HINT = (
    f"pip install '{PROJECT}[tensorrt]' (its cuda-python gives the runner GPU buffers without "
    "torch; on a Jetson, whose TensorRT comes with JetPack: pip install 'cuda-python==12.*')"
)
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


class CudaError(DeployError):
    """A CUDA runtime call made through cuda-python failed; `error_name` is CUDA's name."""

    def __init__(self, message: str, error_name: str) -> None:
        super().__init__(message)
        self.error_name = error_name


@dataclass(frozen=True)
class DeviceBuffer:
    """One tensor's GPU memory: `ptr` is what TensorRT's set_tensor_address takes."""

    shape: tuple[int, ...]
    dtype: str  # numpy dtype name; "bfloat16" too
    ptr: int
    nbytes: int
    owner: Any = None  # the torch tensor that keeps the memory alive (torch backend)


class CudaBuffers(ABC):
    """A CUDA stream on one device, two timing events, the device buffers and at most one
    captured CUDA graph. Copies and enqueues go to `stream_handle`; `download` waits."""

    backend: str
    version: str

    @property
    @abstractmethod
    def stream_handle(self) -> int:
        """The stream as the integer execute_async_v3 takes."""

    @abstractmethod
    def allocate(self, shape: tuple[int, ...], dtype: str) -> DeviceBuffer: ...

    @abstractmethod
    def release(self, buffers: Mapping[str, DeviceBuffer]) -> None:
        """Free buffers no longer bound (after the stream has finished with them)."""

    @abstractmethod
    def upload(self, buffer: DeviceBuffer, array: np.ndarray) -> None:
        """Queue a host-to-device copy of `array` (bfloat16 tensors take float32)."""

    @abstractmethod
    def download(self, buffers: Mapping[str, DeviceBuffer]) -> dict[str, np.ndarray]:
        """Copy `buffers` to new host arrays, wait for the stream, return them by name."""

    @abstractmethod
    def mark_start(self) -> None: ...

    @abstractmethod
    def mark_end(self) -> None: ...

    @abstractmethod
    def elapsed_ms(self) -> float:
        """GPU time between the last mark_start and mark_end (the stream has finished)."""

    @abstractmethod
    def capture(self, enqueue: Callable[[], bool]) -> str | None:
        """Capture `enqueue` into a CUDA graph; the reason when it cannot be captured."""

    @abstractmethod
    def replay(self) -> bool:
        """Launch the captured graph; False when there is none."""

    @abstractmethod
    def drop_graph(self) -> None: ...

    @abstractmethod
    def synchronize(self) -> None: ...

    @abstractmethod
    def close(self) -> None:
        """Wait, then free the graph, buffers, events and stream."""


def open_cuda_buffers(choice: str, device_index: int) -> CudaBuffers:
    """The buffers `choice` names on CUDA device `device_index`. "auto" takes torch where it
    is installed and sees a GPU, else cuda-python; a missing package or GPU is one clear error.
    """
    check_choice(choice)
    if choice == "torch":
        return TorchBuffers(_cuda_torch(), device_index)
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


def check_choice(choice: str) -> None:
    """`choice` must name a source of GPU buffers (checked when a runner is made)."""
    if choice not in CUDA_BUFFERS:
        raise DeployConfigError(
            f"TensorRT runner: cuda_buffers must be one of {', '.join(CUDA_BUFFERS)}, "
            f"got {choice!r}"
        )


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


def _cuda_torch() -> ModuleType:
    torch = lazy_import("torch", "the TensorRT runner's torch buffers")
    if not torch.cuda.is_available():
        raise DeployConfigError(
            f"TensorRT runner: torch {torch.__version__} sees no CUDA GPU; run on a device "
            "with one (torch built with CUDA), or use cuda_buffers='cuda-python'"
        )
    return torch


class TorchBuffers(CudaBuffers):
    """torch CUDA tensors, a torch.cuda.Stream, torch events and torch.cuda.CUDAGraph."""

    backend = "torch"

    def __init__(self, torch: ModuleType, device_index: int) -> None:
        self._torch = torch
        self.version = str(torch.__version__)
        torch.cuda.set_device(device_index)
        self._device = torch.device("cuda", device_index)
        self._stream = torch.cuda.Stream(device=self._device)
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)
        self._graph: Any = None

    @property
    def stream_handle(self) -> int:
        return int(self._stream.cuda_stream)

    def allocate(self, shape: tuple[int, ...], dtype: str) -> DeviceBuffer:
        tensor = self._torch.empty(shape, dtype=getattr(self._torch, dtype), device=self._device)
        nbytes = tensor.numel() * tensor.element_size()
        return DeviceBuffer(shape, dtype, int(tensor.data_ptr()), nbytes, owner=tensor)

    def release(self, buffers: Mapping[str, DeviceBuffer]) -> None:
        pass  # the tensors go with the buffers; torch's caching allocator reuses the memory

    def upload(self, buffer: DeviceBuffer, array: np.ndarray) -> None:
        with self._torch.cuda.stream(self._stream):  # copy_ converts float32 -> bfloat16
            buffer.owner.copy_(self._torch.from_numpy(np.ascontiguousarray(array)))

    def download(self, buffers: Mapping[str, DeviceBuffer]) -> dict[str, np.ndarray]:
        with self._torch.cuda.stream(self._stream):
            host = {name: _torch_to_host(self._torch, b.owner) for name, b in buffers.items()}
        self._stream.synchronize()
        return host

    def mark_start(self) -> None:
        self._start.record(self._stream)

    def mark_end(self) -> None:
        self._end.record(self._stream)

    def elapsed_ms(self) -> float:
        return float(self._start.elapsed_time(self._end))

    def capture(self, enqueue: Callable[[], bool]) -> str | None:
        graph = self._torch.cuda.CUDAGraph()
        try:
            with self._torch.cuda.graph(graph, stream=self._stream):
                captured = enqueue()
        except RuntimeError as exc:  # torch reports a failed capture as a RuntimeError
            return first_line(exc)
        if not captured:
            return "execute_async_v3 returned False during capture"
        self._graph = graph
        return None

    def replay(self) -> bool:
        if self._graph is None:
            return False
        self._graph.replay()
        return True

    def drop_graph(self) -> None:
        self._graph = None

    def synchronize(self) -> None:
        self._stream.synchronize()

    def close(self) -> None:
        self._stream.synchronize()
        self._graph = None


def _torch_to_host(torch: ModuleType, tensor: Any) -> np.ndarray:
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.cpu().numpy()


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
        _check_size(host, buffer)
        if host.nbytes:  # pageable memory: staged before the call returns, as torch's copy_
            kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
            self._call(
                "cudaMemcpyAsync", buffer.ptr, host.ctypes.data, host.nbytes, kind, self._stream
            )

    def download(self, buffers: Mapping[str, DeviceBuffer]) -> dict[str, np.ndarray]:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        host = {name: np.empty(b.shape, host_dtype(b.dtype)) for name, b in buffers.items()}
        for name, buffer in buffers.items():
            _check_size(host[name], buffer)
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
        finally:  # capture must end even when enqueue raises, or the stream stays unusable
            err, graph = self._rt.cudaStreamEndCapture(self._stream)
        try:
            if err != self._rt.cudaError_t.cudaSuccess:
                return str(cuda_error(self._rt, "cudaStreamEndCapture", err))
            if not captured:
                return "execute_async_v3 returned False during capture"
            self._graph = self._call("cudaGraphInstantiateWithFlags", graph, 0)
        except CudaError as exc:  # the graph cannot run: plain enqueues, as trtexec falls back
            return str(exc)
        finally:
            if graph is not None and int(graph):
                self._call("cudaGraphDestroy", graph)  # the executable graph stands alone
        return None

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


def _check_size(host: np.ndarray, buffer: DeviceBuffer) -> None:
    """A copy of the wrong size would write past a buffer: refuse it (a bug, not user input)."""
    if host.nbytes != buffer.nbytes:
        raise DeployError(
            f"TensorRT runner: host array of {host.nbytes} bytes {host.shape} does not match "
            f"the device buffer of {buffer.nbytes} bytes {buffer.shape}"
        )


def _cuda_python_version() -> str:
    for distribution in ("cuda-bindings", "cuda-python"):
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"
