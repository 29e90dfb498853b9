"""The interface every runner offers, so the benchmark harness need not know the backend."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from deploy.errors import DeployError, DeployInputError, MeasurementError, first_line
from deploy.tensor_spec import TensorSpec


class Runner:
    """Base class: a context manager that runs one model on named numpy inputs.

    Subclasses implement `_activate`, `_deactivate` and `_infer`. `infer` checks the feed
    against `input_specs` first so every backend fails the same clear way on bad input.
    """

    backend: str = "base"
    device: str = "cpu"
    # Intra-op threads the backend was asked to use; None means the backend's own default.
    threads: int | None = None
    # Numeric precision of the computation, recorded with every latency measurement.
    precision: str = "fp32"
    # True between __enter__ and __exit__, so helpers such as the benchmark can use a runner
    # the caller already opened without building its session a second time.
    is_active: bool = False

    def __enter__(self) -> Runner:
        self._activate()
        self.is_active = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._deactivate()
        finally:
            self.is_active = False

    def _activate(self) -> None:  # pragma: no cover - trivial default
        pass

    def _deactivate(self) -> None:  # pragma: no cover - trivial default
        pass

    @property
    def input_specs(self) -> list[TensorSpec]:
        raise NotImplementedError

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model; returns outputs by name as numpy arrays on the host."""
        expected = {spec.name: spec for spec in self.input_specs}
        missing = sorted(set(expected) - set(feed))
        extra = sorted(set(feed) - set(expected))
        if missing or extra:
            raise DeployInputError(
                f"{self.backend} runner: inputs do not match the model: missing {missing}, "
                f"unexpected {extra}; the model takes {sorted(expected)}"
            )
        for name, array in feed.items():
            spec = expected[name]
            if array.ndim != len(spec.shape):
                raise DeployInputError(
                    f"{self.backend} runner: input '{name}' has {array.ndim} dims "
                    f"{tuple(array.shape)}, the model expects {len(spec.shape)} {spec.shape}"
                )
            for axis, (got, want) in enumerate(zip(array.shape, spec.shape, strict=True)):
                if want is not None and got != want:
                    raise DeployInputError(
                        f"{self.backend} runner: input '{name}' axis {axis} is {got}, "
                        f"the model expects {want} (shape {spec.shape})"
                    )
            want_dtype = _numpy_dtype(spec.dtype)
            if want_dtype is not None and array.dtype != want_dtype:
                raise DeployInputError(
                    f"{self.backend} runner: input '{name}' is {array.dtype}, the model expects "
                    f"{spec.dtype}; cast it first (array.astype(np.{spec.dtype}))"
                )
        try:
            return self._infer(feed)
        except DeployError:
            raise
        except Exception as exc:  # the backend's own error types; a bug of ours passes through
            shapes = {name: list(array.shape) for name, array in feed.items()}
            reason = first_line(exc)
            if _out_of_memory(exc):
                raise MeasurementError(
                    f"{self.backend} ran out of memory on inputs {shapes}: {reason}; lower the "
                    "batch size (--batch)"
                ) from exc
            if isinstance(exc, RuntimeError) or type(exc).__module__.startswith("onnxruntime"):
                raise DeployError(
                    f"{self.backend} failed to run the model on inputs {shapes}: {reason}"
                ) from exc
            raise

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait for queued device work; a no-op on CPU backends (timing calls it)."""

    def record_details(self) -> dict[str, Any]:
        """Backend-specific facts each result record should carry (JSON-safe)."""
        return {}

    def take_gpu_times_ms(self) -> list[float]:
        """GPU compute times (ms) of the inferences since the last call, then forgets them.

        Only runners that time the device with CUDA events return anything; the benchmark puts
        the median of the timed iterations into `LatencyRecord.gpu_compute_ms`.
        """
        return []


# What backends say when an allocation fails: numpy/Python MemoryError, torch's
# OutOfMemoryError, onnxruntime's "Failed to allocate memory", C++'s std::bad_alloc.
_OUT_OF_MEMORY = ("out of memory", "failed to allocate", "not enough memory", "bad_alloc",
                  "bad allocation")  # fmt: skip


def _out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError) or "OutOfMemory" in type(exc).__name__:
        return True
    return any(text in str(exc).lower() for text in _OUT_OF_MEMORY)


@functools.lru_cache(maxsize=64)  # infer() runs in timed loops: look each name up once
def _numpy_dtype(name: str) -> np.dtype | None:
    try:
        return np.dtype(name)
    except TypeError:  # "bfloat16" and other names numpy does not know
        return None
