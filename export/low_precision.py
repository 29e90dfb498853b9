"""The one writer behind `convert_fp16` and `convert_bf16`: FP32 ONNX -> a low-precision graph.

TensorRT 11 builds strongly typed networks only: a tensor is FP16 or BF16 because the ONNX
says so, not because of a builder flag. Both writers follow the same steps, parameterised by
a `FloatFormat`: load the FP32 file, let the format prepare it (BF16 raises the opset to one
whose Conv and pools accept bfloat16), rewrite the graph (`export.precision_graph`), record
what was done in the metadata, write it to a work folder, run onnx.checker (full, strict shape
inference), and, given parity inputs, compare its first output with the FP32 file's on
onnxruntime. Where onnxruntime has no kernels for the low type (BF16 on its CPU provider), the
comparison runs the file's float32 emulation instead (`export.emulation`), and the result says
which ran. The file is moved into place only when every check passed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnx
from onnx import helper

from deploy.config_fields import check_fields, flag, names
from deploy.errors import DeployError
from deploy.evaluate import run_batches
from deploy.files import file_sha256, work_directory
from deploy.paths import check_write_target
from deploy.runners import OnnxRuntimeRunner
from deploy.runners.base import Runner
from export.checks import run_checker
from export.emulation import onnxruntime_or_emulation
from export.errors import ExportConfigError, ExportInputError, OnnxValidationError, ParityError
from export.metadata import check_out_path, load_source, save_onnx, set_metadata
from export.precision_graph import (
    DEFAULT_OP_BLOCK_LIST,
    FLOAT,
    FloatFormat,
    model_opset,
    rewrite_,
)

# A format's preparation of the loaded FP32 model: the model to rewrite (the same or a new
# one) and metadata to record about what it did.
Prepare = Callable[[onnx.ModelProto], tuple[onnx.ModelProto, dict[str, str]]]


@dataclass(frozen=True, kw_only=True)
class LowPrecisionConfig:
    """Which ops stay float32 and whether the graph keeps float32 inputs and outputs."""

    # float32 in and out, Casts inside (callers need not change).
    keep_io_types: bool = field(default=True, metadata=flag())
    op_block_list: tuple[str, ...] = field(  # op types computed in float32
        default=DEFAULT_OP_BLOCK_LIST, metadata=names(expected="a list of ONNX op types")
    )

    def __post_init__(self) -> None:
        who = type(self).__name__
        check_fields(self, ExportConfigError, f"{who}.{{name}}: ")
        blocked = self.op_block_list
        unknown = [op for op in blocked if not isinstance(op, str) or not onnx.defs.has(op)]
        if unknown:
            raise ExportConfigError(
                f"{who}.op_block_list: {unknown} are not ONNX op types (names are "
                "case-sensitive, e.g. 'Resize')"
            )


@dataclass(frozen=True)
class LowPrecisionResult:
    """What a low-precision writer wrote, and how far its outputs are from the FP32 file's."""

    path: Path
    converted_initializers: int  # float32 initializers and Constant tensors now low type
    clamped_values: int  # weight values beyond the format's range, clamped to it
    max_abs_diff: float | None  # largest |low - FP32| of the first output; None: no parity
    top1_agreement: float | None  # fraction of parity inputs whose argmax agrees
    float32_nodes: int = 0  # nodes left computing in float32 (blocked or float32-only)
    tolerance: float | None = None  # the max_abs_diff allowed (atol + rtol * max |FP32 logit|)
    sha256: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    opset: int = 0  # default-domain opset of the written file
    # How the file was run for parity: "onnxruntime", or "float32-emulation" where
    # onnxruntime has no kernels for its type (export.emulation); None: no parity inputs.
    parity_method: str | None = None


Result = TypeVar("Result", bound=LowPrecisionResult)


@dataclass(frozen=True)
class Writer:
    """What one low-precision writer adds to the shared steps."""

    fmt: FloatFormat
    config_name: str  # "FP16Config": named in the messages that suggest a setting
    # Largest finite value of the type: a float32 activation beyond it overflows to inf.
    # None: the type has float32's range (BF16), so no activation can overflow it.
    max_value: float | None
    prepare: Prepare | None = None


def write_low_precision(
    source: Path,
    out_path: Path,
    config: LowPrecisionConfig,
    writer: Writer,
    result_type: type[Result],
    *,
    parity_inputs: np.ndarray | None,
    atol: float,
    rtol: float,
) -> Result:
    """Write `source` in `writer.fmt` to `out_path` atomically; see the module docstring."""
    fmt, who = writer.fmt, f"convert_{writer.fmt.name}"
    for name, value in (("atol", atol), ("rtol", rtol)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e9:
            raise ExportConfigError(f"{who} {name}: must be a finite number >= 0")
    model = load_source(source, who)
    onnx.load_external_data_for_model(model, str(source.parent))  # no-op without external data
    check_out_path(out_path, source)
    if parity_inputs is not None:
        _check_parity_inputs(parity_inputs)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)  # the FP32 graph, before the rewrite changes `model` in place
    ours = {"precision": fmt.name, "source_onnx_sha256": file_sha256(source)}
    if writer.prepare is not None:
        model, extra = writer.prepare(model)
        ours.update(extra)
    rewrite = rewrite_(
        model, fmt, keep_io_types=config.keep_io_types, op_block_list=config.op_block_list
    )
    ours[f"{fmt.name}.keep_io_types"] = str(config.keep_io_types).lower()
    set_metadata(model, ours)
    diff = agreement = tolerance = method = None
    with work_directory(out_path) as work:
        written = work / f"{fmt.name}.onnx"
        save_onnx(model, written)
        _check(written, writer)
        if parity_inputs is not None:
            watched = rewrite.activations if writer.max_value is not None else ()
            outputs = {output.name for output in probe.graph.output}
            probe.graph.output.extend(
                helper.make_tensor_value_info(name, FLOAT, None)
                for name in watched
                if name not in outputs
            )
            save_onnx(probe, work / "probe.onnx")
            with OnnxRuntimeRunner(work / "probe.onnx") as runner:
                reference, peaks = run_logits(runner, parity_inputs)
            if writer.max_value is not None:
                _check_range({n: peaks[n] for n in watched}, source, len(parity_inputs), writer)
            with onnxruntime_or_emulation(written, fmt.onnx_type) as (runner, method):
                got, _ = run_logits(runner, parity_inputs)
            tolerance = atol + rtol * float(np.max(np.abs(reference)))
            diff = float(np.max(np.abs(got - reference))) if np.all(np.isfinite(got)) else np.inf
            agreement = float(np.mean(reference.argmax(1) == got.argmax(1)))
            if not diff <= tolerance:
                raise ParityError(
                    f"{fmt.label} of {source} differs from FP32 by {diff:.3g} (allowed "
                    f"{tolerance:.3g} = {atol:g} + {rtol:g} x max |FP32 output|, run as "
                    f"{method}) on {len(parity_inputs)} inputs, top-1 agreement "
                    f"{agreement:.4f}; keep the sensitive op types in float32 with "
                    f"{writer.config_name}.op_block_list"
                )
        check_write_target(out_path, "output path")  # a link or FIFO planted meanwhile
        os.replace(written, out_path)
    return result_type(
        path=out_path,
        converted_initializers=rewrite.converted_initializers,
        clamped_values=rewrite.clamped_values,
        float32_nodes=rewrite.float32_nodes,
        max_abs_diff=diff,
        top1_agreement=agreement,
        tolerance=tolerance,
        sha256=file_sha256(out_path),
        metadata={prop.key: prop.value for prop in model.metadata_props},
        opset=model_opset(model),
        parity_method=method,
    )


def _check_range(peaks: dict[str, float], source: Path, samples: int, writer: Writer) -> None:
    """onnxruntime's CPU provider computes an FP16 graph in float32 (it casts the FP16
    weights back and drops the Casts between ops), so FP16 overflow never shows in its
    outputs; the FP32 activations' range on the parity inputs shows it instead."""
    limit, label = writer.max_value, writer.fmt.label
    over = {name: peak for name, peak in peaks.items() if not peak <= limit}
    if over:
        name = max(over, key=lambda key: over[key])
        raise ParityError(
            f"{label} overflow in {source}: {len(over)} tensor(s) exceed +-{limit:g} on "
            f"{samples} parity inputs (largest: '{name}' reaches {over[name]:.3g}), which "
            f"{label} turns into inf; keep their op types in float32 with "
            f"{writer.config_name}.op_block_list"
        )


def _check_parity_inputs(images: Any) -> None:
    if not isinstance(images, np.ndarray) or images.dtype.kind != "f" or images.ndim < 2:
        got = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
        raise ExportInputError(
            f"parity_inputs: must be a float numpy array N x C x H x W (preprocessed), got {got}"
        )
    if len(images) == 0 or not np.all(np.isfinite(images)):
        raise ExportInputError("parity_inputs: must hold at least one image and no NaN or Inf")


def _check(path: Path, writer: Writer) -> None:
    try:
        run_checker(path)
    except OnnxValidationError as exc:
        raise OnnxValidationError(
            f"the {writer.fmt.label} graph {exc}; block the op it names in "
            f"{writer.config_name}.op_block_list"
        ) from exc


def run_logits(
    runner: Runner, images: np.ndarray, batch_size: int = 64
) -> tuple[np.ndarray, dict[str, float]]:
    """The first output for every image (float32, N x -1) of an entered one-input runner,
    and max |value| of every output."""
    chunks: list[np.ndarray] = []
    peaks: dict[str, float] = {}
    if len(runner.input_specs) != 1:
        raise ExportInputError("parity needs a model with one input; this one has more")
    try:
        for outputs in run_batches(runner, images, batch_size):
            chunks.append(np.asarray(next(iter(outputs.values())), dtype=np.float32))
            for name, value in outputs.items():
                peak = float(np.max(np.abs(value))) if value.size else 0.0
                peaks[name] = max(peaks.get(name, 0.0), peak)
    except DeployError as exc:
        raise ExportInputError(f"parity_inputs do not fit the model: {exc}") from exc
    return np.concatenate(chunks).reshape(len(images), -1), peaks
