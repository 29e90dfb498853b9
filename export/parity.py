"""Parity: does onnxruntime compute what torch computes, on the inputs that matter?

Run on real validation images, not only the example: a graph that is right for one input
can still be wrong for others (a baked-in batch size, a shape-dependent branch), and top-1
agreement over many images is what a user of the classifier actually notices.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deploy.errors import DeployError
from deploy.runners import OnnxRuntimeRunner
from export.config import ExportConfig
from export.errors import ExportInputError, OnnxValidationError, ParityError, UnsupportedModelError


@dataclass(frozen=True)
class Parity:
    """What `check_parity` measured; unpacks as `(max_abs_diff, top1_agreement)`."""

    max_abs_diff: float  # largest |onnxruntime - torch| over every output element
    top1_agreement: float  # fraction of inputs whose argmax is the same in both
    max_abs_output: float = 0.0  # largest |torch| output: the scale parity_rtol applies to
    tolerance: float = 0.0  # the max_abs_diff allowed: parity_atol + parity_rtol * max_abs_output

    def __iter__(self) -> Iterator[float]:
        return iter((self.max_abs_diff, self.top1_agreement))


def parity_tolerance(config: ExportConfig, max_abs_output: float) -> float:
    """The largest |onnxruntime - torch| allowed: absolute plus relative to the output scale.

    Float rounding grows with the values summed, so a fixed bound that suits logits of
    size 1 fails a network whose logits reach 30 (a torchvision ResNet-18 differs by 2.75e-4
    there), while a fault (a wrong op, changed weights) moves the logits by their own size.
    One scale for all outputs, the largest |torch| value, rather than numpy's per element
    `atol + rtol * |b|`: a logit near zero is computed from the same large sums as the rest.
    """
    return config.parity_atol + config.parity_rtol * max_abs_output


@contextlib.contextmanager
def eval_on_cpu(model: nn.Module) -> Iterator[nn.Module]:
    """Put the model in eval mode on CPU for the block, then give it back as it came.

    Export and parity need eval mode (batch norm from running stats, no dropout) and CPU
    (onnxruntime runs there), but the caller may go on training the model on a GPU.
    """
    was_training = model.training
    devices = {tensor.device for tensor in [*model.parameters(), *model.buffers()]}
    model.eval().cpu()
    try:
        yield model
    finally:
        if len(devices) == 1 and (device := devices.pop()).type != "cpu":
            model.to(device)
        model.train(was_training)


def as_float32_batch(inputs: torch.Tensor | np.ndarray, what: str) -> torch.Tensor:
    """A CPU float32 tensor with a batch axis, or an ExportInputError that says what is wrong.

    No silent casting: a float64 or uint8 input means the preprocessing differs from what
    the model will get in deployment, which the user should fix at the source.
    """
    if isinstance(inputs, np.ndarray):
        inputs = torch.from_numpy(inputs)
    if not isinstance(inputs, torch.Tensor):
        raise ExportInputError(f"{what} must be a torch.Tensor, got {type(inputs).__name__}")
    if inputs.dtype != torch.float32:
        raise ExportInputError(
            f"{what} must be float32 (the ONNX input type), got {inputs.dtype}; convert it "
            "with .float() after the same preprocessing the model is trained with"
        )
    if inputs.ndim < 2 or inputs.shape[0] < 1:
        raise ExportInputError(
            f"{what} must be a batch (N, ...) with N >= 1, got shape {tuple(inputs.shape)}"
        )
    return inputs.detach().cpu()


def check_parity(
    model: nn.Module,
    onnx_path: str | os.PathLike[str],
    inputs: torch.Tensor | np.ndarray,
    config: ExportConfig,
) -> Parity:
    """Compare torch and onnxruntime outputs on `inputs`, in batches of parity_batch_size.

    Returns the max absolute difference and the top-1 agreement; raises ParityError when
    the difference exceeds `parity_tolerance` (parity_atol + parity_rtol * max |torch output|)
    or the agreement misses `config.require_top1_agreement`. The ONNX file is never deleted,
    so the user can inspect the graph that disagrees.
    """
    onnx_path = Path(onnx_path)
    inputs = as_float32_batch(inputs, "parity inputs")
    total = int(inputs.shape[0])
    max_diff, max_output, agreeing = 0.0, 0.0, 0
    with eval_on_cpu(model), _open_runner(onnx_path) as runner:
        batch_size = _batch_size(runner, onnx_path, config)
        fixed_batch = runner.input_specs[0].shape[0] is not None
        for start in range(0, total, batch_size):
            batch = inputs[start : start + batch_size]
            with torch.inference_mode():
                expected = _single_tensor(model(batch)).float().numpy()
            feed = np.ascontiguousarray(batch.numpy())  # onnxruntime reads C order
            if fixed_batch and len(batch) < batch_size:
                # A static-batch graph only takes full batches: pad with zeros and drop the
                # padded rows; in eval mode every sample is computed independently.
                padding = np.zeros((batch_size - len(batch), *feed.shape[1:]), feed.dtype)
                feed = np.concatenate([feed, padding])
            try:
                got = runner.infer({config.input_name: feed})[config.output_name][: len(batch)]
            except DeployError as exc:
                raise ExportInputError(f"parity inputs do not fit {onnx_path}: {exc}") from exc
            if got.shape != expected.shape:
                raise ParityError(
                    f"{onnx_path}: onnxruntime output '{config.output_name}' has shape "
                    f"{got.shape}, torch's has {expected.shape}; the file is kept for inspection"
                )
            max_diff = max(max_diff, _max_abs_diff(got, expected))
            max_output = max(max_output, float(np.abs(expected).max(initial=0.0)))
            agreeing += int(np.sum(_top1(got) == _top1(expected)))
    agreement = agreeing / total
    tolerance = parity_tolerance(config, max_output)
    if not max_diff <= tolerance or agreement < config.require_top1_agreement:
        raise ParityError(
            f"parity check failed for {onnx_path} on {total} inputs: max |onnxruntime - torch| "
            f"= {max_diff:.3g}, allowed {tolerance:.3g} (parity_atol={config.parity_atol:g} + "
            f"parity_rtol={config.parity_rtol:g} x max |torch output| {max_output:.3g}); "
            f"top-1 agreement {agreement:.2%} ({agreeing}/{total}; required: "
            f"require_top1_agreement={config.require_top1_agreement:.2%}). The ONNX file is "
            f"kept at {onnx_path} for inspection; if the model behaves differently under "
            "export (a data-dependent branch, a custom op), fix the model; if the gap is float "
            "rounding, raise parity_rtol (recipe: export.parity_rtol)"
        )
    return Parity(
        max_abs_diff=max_diff,
        top1_agreement=agreement,
        max_abs_output=max_output,
        tolerance=tolerance,
    )


@contextlib.contextmanager
def _open_runner(onnx_path: Path) -> Iterator[OnnxRuntimeRunner]:
    """deploy's runner, with its load errors turned into this package's error type."""
    runner = OnnxRuntimeRunner(onnx_path)
    try:
        runner.__enter__()
    except DeployError as exc:
        raise OnnxValidationError(f"onnxruntime cannot run {onnx_path}: {exc}") from exc
    try:
        yield runner
    finally:
        runner.__exit__(None, None, None)


def _batch_size(runner: OnnxRuntimeRunner, onnx_path: Path, config: ExportConfig) -> int:
    """parity_batch_size for a dynamic batch axis; the file's own batch when it is fixed."""
    inputs = {spec.name: spec for spec in runner.input_specs}
    outputs = {spec.name for spec in runner.output_specs}
    if config.input_name not in inputs or config.output_name not in outputs:
        raise ExportInputError(
            f"{onnx_path} has inputs {sorted(inputs)} and outputs {sorted(outputs)}; the config "
            f"expects input '{config.input_name}' and output '{config.output_name}'; set "
            "input_name/output_name to match the file"
        )
    if len(inputs) != 1:
        raise UnsupportedModelError(
            f"{onnx_path} has {len(inputs)} inputs {sorted(inputs)}; parity supports "
            "single-input models"
        )
    fixed = inputs[config.input_name].shape[0]
    return fixed if fixed is not None else config.parity_batch_size


def _single_tensor(output: object) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    raise UnsupportedModelError(
        f"the model returns {type(output).__name__}, export expects one tensor (the logits); "
        "wrap it so forward returns a single tensor"
    )


def _max_abs_diff(got: np.ndarray, expected: np.ndarray) -> float:
    """NaN anywhere counts as an infinite difference, so it can never pass a tolerance."""
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    return float("inf") if np.isnan(diff).any() else float(diff.max(initial=0.0))


def _top1(logits: np.ndarray) -> np.ndarray:
    """Argmax per sample; outputs beyond (N, C) are flattened per sample."""
    return logits.reshape(len(logits), -1).argmax(axis=1)
