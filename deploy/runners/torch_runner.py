"""PyTorch runner: times an in-memory nn.Module through the same interface as the others.

The file is not named `torch.py` so that `import torch` inside the package never resolves to
it. torch is imported only when a TorchRunner is built (through `lazy_import`), so importing
this module works on a Jetson or server that has no torch.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from deploy.errors import DeployConfigError, DeployInputError
from deploy.lazy import lazy_import
from deploy.machine.cpus import default_threads
from deploy.model_files import refuse_pickle
from deploy.runners.base import Runner, TensorSpec

if TYPE_CHECKING:  # pragma: no cover - only for type checkers
    import torch

Shape = Sequence[int | None]


class TorchRunner(Runner):
    """Runs an already-built `torch.nn.Module` in eval mode under `torch.inference_mode`.

    The runner works on its own deep copy of the module (made when it is entered), so
    benchmarking never moves the caller's model to another device, switches it to eval mode
    or changes its memory format. Inputs are copied from numpy to the device and outputs back
    to numpy inside `infer`, as onnxruntime does, so latencies of both backends include the
    same host<->device traffic.

    `input_shape` declares the input (None for dynamic axes, usually the batch axis), since a
    module, unlike an ONNX file, does not describe its inputs; pass a mapping name -> shape
    when `input_names` has several entries. `device="auto"` picks CUDA when available.
    `threads` sets torch's intra-op threads while the runner is active and restores the
    previous value afterwards; None on the CPU means one per CPU this process may use
    (`deploy.machine.cpus.default_threads`, decided when the runner is entered), so every CPU record
    says how many threads it ran with. torch's inter-op pool is left alone: eager modules do
    not use it, and torch allows setting it only once per process.
    """

    backend = "torch"

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        input_shape: Shape | Mapping[str, Shape],
        device: str = "cpu",
        input_names: Sequence[str] = ("input",),
        output_names: Sequence[str] = ("logits",),
        channels_last: bool = False,
        threads: int | None = None,
        input_dtype: str = "float32",
    ) -> None:
        self._torch = lazy_import("torch", "the torch runner")
        if not isinstance(module, self._torch.nn.Module):
            raise DeployConfigError(
                f"torch runner: expected a torch.nn.Module, got {type(module).__name__}; "
                "ONNX files go to the onnxruntime backend"
            )
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise DeployConfigError(
                f"torch runner: threads must be an integer >= 1, got {threads!r}"
            )
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)
        if not self.input_names or not self.output_names:
            raise DeployConfigError("torch runner: input_names and output_names must not be empty")
        self._specs = _input_specs(input_shape, self.input_names, input_dtype)
        self.device = _resolve_device(self._torch, device)
        self.channels_last = channels_last
        self.threads = threads
        self._source = module
        self._module: torch.nn.Module | None = None
        self._previous_threads: int | None = None

    def _activate(self) -> None:
        torch = self._torch
        if self.threads is None and self.device == "cpu":
            self.threads = default_threads()
        if self.threads is not None:
            self._previous_threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)
        with warnings.catch_warnings():  # torch.export modules warn about pytree internals
            warnings.simplefilter("ignore", FutureWarning)
            module = copy.deepcopy(self._source).eval().to(self.device)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self._module = module

    def _deactivate(self) -> None:
        self._module = None
        if self._previous_threads is not None:
            self._torch.set_num_threads(self._previous_threads)
            self._previous_threads = None
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()

    @property
    def module(self) -> torch.nn.Module:
        if self._module is None:
            raise RuntimeError("use the runner as a context manager: `with runner: ...`")
        return self._module

    @property
    def input_specs(self) -> list[TensorSpec]:
        return list(self._specs)

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        module = self.module
        with torch.inference_mode():
            tensors = [self._to_device(feed[name]) for name in self.input_names]
            result = module(*tensors)
        return self._outputs_to_numpy(result)

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = self._torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
        if self.channels_last and tensor.ndim == 4:
            tensor = tensor.contiguous(memory_format=self._torch.channels_last)
        return tensor

    def _outputs_to_numpy(self, result: Any) -> dict[str, np.ndarray]:
        torch = self._torch
        if isinstance(result, torch.Tensor):
            values = [result]
        elif isinstance(result, Mapping):
            return {str(k): v.detach().cpu().numpy() for k, v in result.items()}
        elif isinstance(result, (tuple, list)):
            values = list(result)
        else:
            raise DeployInputError(
                f"torch runner: the module returned {type(result).__name__}; expected a tensor, "
                "a tuple/list of tensors or a dict of tensors"
            )
        if len(values) != len(self.output_names):
            raise DeployConfigError(
                f"torch runner: the module returned {len(values)} outputs but output_names has "
                f"{len(self.output_names)} {list(self.output_names)}; pass matching output_names"
            )
        return {
            name: value.detach().cpu().numpy()
            for name, value in zip(self.output_names, values, strict=True)
        }

    def synchronize(self) -> None:
        """Wait for queued CUDA kernels so a timed iteration ends when the GPU is done."""
        if self.device.startswith("cuda"):
            self._torch.cuda.synchronize(self.device)


def _resolve_device(torch: Any, device: str) -> str:
    """Map "cpu" / "cuda" / "cuda:N" / "auto" to a concrete device, checking CUDA exists."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if not torch.cuda.is_available():
            raise DeployConfigError(
                f"torch runner: device '{device}' was asked for but torch sees no CUDA GPU "
                f"(torch {torch.__version__}); use device='cpu' or device='auto'"
            )
        return device
    raise DeployConfigError(
        f"torch runner: unknown device '{device}'; choose 'cpu', 'cuda', 'cuda:N' or 'auto'"
    )


def _input_specs(
    input_shape: Shape | Mapping[str, Shape], names: tuple[str, ...], dtype: str
) -> list[TensorSpec]:
    """Turn the declared shape(s) into TensorSpecs, checking every dim is None or >= 1."""
    try:
        np.dtype(dtype)
    except TypeError as exc:
        raise DeployConfigError(
            f"torch runner: input_dtype '{dtype}' is not a numpy dtype"
        ) from exc
    if isinstance(input_shape, Mapping):
        shapes = dict(input_shape)
        if set(shapes) != set(names):
            raise DeployConfigError(
                f"torch runner: input_shape names {sorted(shapes)} do not match "
                f"input_names {list(names)}"
            )
    elif len(names) == 1:
        shapes = {names[0]: input_shape}
    else:
        raise DeployConfigError(
            f"torch runner: {len(names)} input_names {list(names)} need input_shape as a "
            "mapping name -> shape"
        )
    specs = []
    for name in names:
        shape = tuple(shapes[name])
        if any(dim is not None and (not isinstance(dim, int) or dim < 1) for dim in shape):
            raise DeployConfigError(
                f"torch runner: input_shape for '{name}' must hold integers >= 1 or None "
                f"(dynamic), got {shape}"
            )
        specs.append(TensorSpec(name=name, shape=shape, dtype=np.dtype(dtype).name))
    return specs


def load_exported_program(
    path: str | Any, *, allow_pickle: bool = False
) -> tuple[torch.nn.Module, dict[str, tuple[int | None, ...]]]:
    """A `torch.export` file (.pt2) as a module plus its input shapes (None: dynamic dims).

    torch.export files are read with pickle, which can run code from the file, so loading
    one needs `allow_pickle=True`: the caller says the file is trusted.
    """
    from pathlib import Path

    torch = lazy_import("torch", "the torch runner")
    path = Path(path)
    if path.is_file():  # a torch.save file or raw pickle is never loaded, --allow-pickle or not
        refuse_pickle(path, expected="a torch.export file (.pt2)")
    if path.suffix != ".pt2":
        raise DeployInputError(
            f"the torch backend runs torch.export files (.pt2), got {path.name}; ONNX files go "
            "to --backend onnxruntime, tensorrt or trtexec"
        )
    if not path.is_file():
        raise DeployInputError(f"torch.export file not found: {path}")
    if not allow_pickle:
        raise DeployConfigError(
            f"{path.name} is a torch.export file, which torch loads with pickle (it can run "
            "code); pass --allow-pickle if you trust where it came from"
        )
    try:
        # torch logs a multi-line traceback for a bad archive before raising; the error below
        # says it in one line.
        export_logger = logging.getLogger("torch.export")
        level = export_logger.level
        export_logger.setLevel(logging.CRITICAL)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                program = torch.export.load(str(path))
        finally:
            export_logger.setLevel(level)
    except Exception as exc:  # torch raises several types for a bad archive
        raise DeployInputError(
            f"torch cannot load {path} as a torch.export file: {exc}".splitlines()[0]
        ) from exc
    shapes = {}
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in program.graph_signature.user_inputs:
            continue
        value = node.meta.get("val")
        shapes[node.name] = tuple(d if isinstance(d, int) else None for d in value.shape)
    return program.module(), shapes
