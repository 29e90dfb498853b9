"""nn.Module -> a checked, self-contained ONNX file whose outputs match torch's.

Exporter: torch's dynamo-based `torch.onnx.export(dynamo=True)`, the default since
PyTorch 2.9 and the one that keeps being developed. For conv/bn/relu/residual-add/pool/
linear CNNs it gives a clean graph: eval-mode batch norm is captured as
`_native_batch_norm_legit_no_training` and folded into the convolutions by its optimizer,
and `dynamic_shapes` yields a named symbolic batch axis even from a batch-1 example. It is
slow (about 1.5 s per export of a small CNN on 2 CPU cores, 4 s for the first one in a
process). The TorchScript exporter (`exporter="torchscript"`, 0.05 s) is deprecated and
kept as a fallback for models torch.export cannot trace; it folds batch norm too."""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import logging
import os
import re
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from deploy.files import file_sha256
from export.block_boundaries import block_boundaries
from export.checks import check_graph, run_checker, training_aten_ops
from export.config import BATCH_DIM_NAME, RESERVED_PREFIX, ExportConfig, ExportResult
from export.errors import (
    ExportError,
    ExportInputError,
    UnsupportedModelError,
    first_line,
)
from export.metadata import (
    MetadataValue,
    checked_metadata,
    save_onnx,
    set_metadata,
    write_metadata,
)
from export.parity import as_float32_batch, check_parity, eval_on_cpu

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
# torch.export names the user's frame that raised: 'File "m.py", line 8, in forward\n  code'
_USER_FRAME = re.compile(r'File "([^"]+)", line (\d+), in \w+\n\s*(.+)')


def export_onnx(
    model: nn.Module,
    example_input: torch.Tensor,
    path: str | os.PathLike[str],
    config: ExportConfig | None = None,
    *,
    parity_inputs: torch.Tensor | np.ndarray | None = None,
    metadata: Mapping[str, MetadataValue] | None = None,
    blocks: Sequence[str] = (),
) -> ExportResult:
    """Export `model` to one self-contained ONNX file at `path`, check it, prove parity.

    Steps: eval mode on CPU (the model is given back in the mode and on the device it came
    in) -> torch.onnx.export -> metadata_props (yours plus `export.*` producer keys) ->
    atomic write -> onnx.checker (full) -> symbolic batch and no training-mode ops ->
    torch vs onnxruntime on `parity_inputs` (default: the example) -> parity numbers
    written into the metadata. A failed check raises and leaves the file for inspection.
    `blocks` (qualified module names): their boundary tensors come back in `result.blocks`,
    read from the exporter's module scopes before they are stripped (block_boundaries.py).
    """
    config = config or ExportConfig()
    path = Path(path)
    if path.is_dir():
        raise ExportInputError(f"export path {path} is a folder; give a file path like model.onnx")
    # Standard strides: torch.export fails on a dynamic batch ("Invalid ranges [2:1]") when a
    # size-1 channel axis has stride 1, as numpy's images[:, None] or an NHWC permute gives.
    example = as_float32_batch(example_input, "example_input")
    example = example.clone(memory_format=torch.contiguous_format)
    checks = example if parity_inputs is None else as_float32_batch(parity_inputs, "parity_inputs")
    if tuple(checks.shape[1:]) != tuple(example.shape[1:]):
        raise ExportInputError(
            f"parity_inputs have per-sample shape {tuple(checks.shape[1:])}, the example input "
            f"{tuple(example.shape[1:])}; give validation images preprocessed like the example"
        )
    user_metadata = checked_metadata(metadata or {})
    reserved = sorted(key for key in user_metadata if key.startswith(RESERVED_PREFIX))
    if reserved:
        raise ExportInputError(
            f"metadata keys {reserved} use the prefix '{RESERVED_PREFIX}', which export "
            "writes itself; rename them"
        )

    with eval_on_cpu(model):
        started = time.perf_counter()
        proto = _torch_to_onnx(model, example, config)
        export_seconds = time.perf_counter() - started
        boundaries = block_boundaries(proto, blocks) if blocks else ()
        if not config.keep_node_metadata:
            _strip_node_metadata(proto)
        written = max(
            (o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0
        )
        if written != config.opset:
            raise ExportError(
                f"the {config.exporter} exporter wrote opset {written}, not the {config.opset} "
                "asked for; choose the other exporter or opset"
            )
        set_metadata(proto, user_metadata)
        set_metadata(proto, _producer_metadata(config))
        save_onnx(proto, path)
        run_checker(path)
        input_shape, output_shape = check_graph(proto, path, config)
        parity = check_parity(model, path, checks, config)

    final_metadata = write_metadata(
        path,
        {
            "export.parity_max_abs_diff": f"{parity.max_abs_diff:.6g}",
            "export.parity_top1_agreement": f"{parity.top1_agreement:.6f}",
            "export.parity_samples": str(len(checks)),
            "export.parity_atol": f"{config.parity_atol:g}",
            "export.parity_rtol": f"{config.parity_rtol:g}",
            "export.parity_tolerance": f"{parity.tolerance:.6g}",
        },
    )
    return ExportResult(
        path=path,
        opset=config.opset,
        input_name=config.input_name,
        output_name=config.output_name,
        input_shape=input_shape,
        output_shape=output_shape,
        parity_max_abs_diff=parity.max_abs_diff,
        parity_top1_agreement=parity.top1_agreement,
        parity_samples=len(checks),
        sha256=file_sha256(path),
        size_bytes=path.stat().st_size,
        exporter=config.exporter,
        export_seconds=export_seconds,
        metadata=final_metadata,
        parity_tolerance=parity.tolerance,
        blocks=boundaries,
    )


def _torch_to_onnx(
    model: nn.Module, example: torch.Tensor, config: ExportConfig
) -> onnx.ModelProto:
    """Run the chosen exporter in memory; the caller decides where and how the file is written."""
    try:
        with _quiet_exporter():
            if config.exporter == "dynamo":
                return _export_dynamo(model, example, config)
            return _export_torchscript(model, example, config)
    except UnsupportedModelError:
        raise
    except Exception as exc:  # torch raises many types (TorchExportError, UserError, ...)
        other = "torchscript" if config.exporter == "dynamo" else "dynamo"
        raise UnsupportedModelError(
            f"torch.onnx.export ({config.exporter} exporter) failed for "
            f"{type(model).__name__}: {_describe_failure(exc)}; if the model has data-dependent "
            f"control flow make it traceable, or try ExportConfig(exporter='{other}')"
        ) from exc


def _export_dynamo(
    model: nn.Module, example: torch.Tensor, config: ExportConfig
) -> onnx.ModelProto:
    dynamic = ({0: torch.export.Dim(BATCH_DIM_NAME)},) if config.dynamic_batch else None
    program = torch.onnx.export(
        model,
        (example,),
        None,  # in memory: the file is written atomically by save_onnx
        dynamo=True,
        input_names=[config.input_name],
        output_names=[config.output_name],
        dynamic_shapes=dynamic,
        opset_version=config.opset,
        optimize=config.optimize,
        external_data=False,
        verbose=False,
    )
    # Caught here by name, before decomposition into plain ONNX ops hides them.
    training_ops = training_aten_ops(program.exported_program)
    if training_ops:
        raise UnsupportedModelError(
            f"{type(model).__name__} runs training-mode ops {training_ops} even in eval mode; "
            "its forward forces training behaviour (e.g. F.batch_norm(training=True) or "
            "F.dropout(training=True)); use self.training there"
        )
    return program.model_proto


def _strip_node_metadata(proto: onnx.ModelProto) -> None:
    """Drop the dynamo exporter's per-node debug props (stack traces, fx nodes, scopes).

    They hold absolute source paths, so the same model exported from two checkouts would get
    different bytes and SHA-256s, and they are a third of this small model's file.
    """
    for graph_nodes in [proto.graph.node, *(function.node for function in proto.functions)]:
        for node in graph_nodes:
            del node.metadata_props[:]


def _export_torchscript(
    model: nn.Module, example: torch.Tensor, config: ExportConfig
) -> onnx.ModelProto:
    buffer = io.BytesIO()
    axes = {config.input_name: {0: BATCH_DIM_NAME}, config.output_name: {0: BATCH_DIM_NAME}}
    torch.onnx.export(
        model,
        (example,),
        buffer,
        dynamo=False,
        input_names=[config.input_name],
        output_names=[config.output_name],
        dynamic_axes=axes if config.dynamic_batch else None,
        opset_version=config.opset,
        do_constant_folding=config.optimize,
    )
    return onnx.load_from_string(buffer.getvalue())


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence exporter chatter that is not the user's concern, only while exporting.

    The dynamo exporter logs a warning per torchvision op it cannot register (torchvision
    is optional) and torch internals emit deprecation warnings; the legacy exporter warns
    that it is deprecated, which the user chose knowingly.
    """
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def _producer_metadata(config: ExportConfig) -> dict[str, str]:
    """Who made the file, so a result months later can be traced to the tool versions."""
    return {
        "export.exporter": f"torch.onnx.export({config.exporter})",
        "export.torch_version": torch.__version__,
        "export.onnx_version": onnx.__version__,
        "export.onnxruntime_version": _package_version("onnxruntime"),
        "export.opset": str(config.opset),
        "export.dynamic_batch": str(config.dynamic_batch).lower(),
    }


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _describe_failure(exc: BaseException) -> str:
    """The root cause's first line and the user's line that triggered it, without colours.

    torch wraps the real error (e.g. a guard on a data-dependent value) in a page of
    generic advice; the root cause and the offending line of forward are what to fix.
    """
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    summary = _ANSI_ESCAPE.sub("", first_line(root))
    where = _USER_FRAME.search(_ANSI_ESCAPE.sub("", str(exc)))
    if where:
        file, line, code = where.groups()
        summary += f" (at {Path(file).name}:{line}: {code.strip()})"
    return summary
