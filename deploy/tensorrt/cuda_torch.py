"""The TensorRT runner's GPU buffers from torch: CUDA tensors, a torch.cuda.Stream, torch
events and torch.cuda.CUDAGraph (torch imported by the caller, through deploy.lazy)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import numpy as np

from deploy.errors import DeployConfigError, first_line
from deploy.lazy import lazy_import
from deploy.tensorrt.cuda_buffers import CudaBuffers, DeviceBuffer


def cuda_torch() -> ModuleType:
    """torch, when it can see a GPU; otherwise the error that says to use cuda-python."""
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
