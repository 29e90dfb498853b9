"""The interface through which the TensorRT runner uses the GPU: device memory, a stream, two
timing events and at most one CUDA graph (`CudaBuffers`), whatever provides them.

Two implementations: `deploy.tensorrt.cuda_torch` (torch, where it is installed with CUDA:
NVIDIA's PyTorch containers, JetPack's PyTorch) and `deploy.tensorrt.cuda_python` (NVIDIA's
cuda-python, for a Jetson or server that installed only `deploy`). The runner picks one
(`deploy.tensorrt.runner.open_cuda_buffers`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from deploy.errors import DeployConfigError, DeployError
from deploy.lazy import PROJECT

CudaBuffersChoice = Literal["auto", "torch", "cuda-python"]
CUDA_BUFFERS: tuple[str, ...] = get_args(CudaBuffersChoice)
INSTALL_HINT = (
    f"pip install '{PROJECT}[tensorrt]' (its cuda-python gives the runner GPU buffers without "
    "torch; on a Jetson, whose TensorRT comes with JetPack: pip install 'cuda-python==12.*')"
)


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


def check_choice(choice: str) -> None:
    """`choice` must name a source of GPU buffers (checked when a runner is made)."""
    if choice not in CUDA_BUFFERS:
        raise DeployConfigError(
            f"TensorRT runner: cuda_buffers must be one of {', '.join(CUDA_BUFFERS)}, "
            f"got {choice!r}"
        )


def check_size(host: np.ndarray, buffer: DeviceBuffer) -> None:
    """A copy of the wrong size would write past a buffer: refuse it (a bug, not user input)."""
    if host.nbytes != buffer.nbytes:
        raise DeployError(
            f"TensorRT runner: host array of {host.nbytes} bytes {host.shape} does not match "
            f"the device buffer of {buffer.nbytes} bytes {buffer.shape}"
        )
