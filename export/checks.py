"""Checks on the exported graph that torch's exporter does not make for us.

onnx.checker catches malformed graphs; the rest catches graphs that are valid ONNX but
wrong for deployment: a batch size baked in, or ops that only make sense in training.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch

from export.config import ExportConfig
from export.errors import OnnxValidationError, UnsupportedModelError, first_line

# aten ops that only appear when forward forces training behaviour in eval mode; in eval,
# batch norm is captured as `_native_batch_norm_legit_no_training` and dropout vanishes.
_TRAINING_ATEN_OPS = (
    "aten._native_batch_norm_legit.",
    "aten._native_batch_norm_legit_functional.",
    "aten.native_dropout.",
    "aten.batch_norm_with_update.",
)


def run_checker(path: Path) -> None:
    """onnx.checker with full_check (also runs strict shape inference) on the written file."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # ValidationError, InferenceError
        raise OnnxValidationError(
            f"{path} fails onnx.checker (full check): {first_line(exc)}; the file is kept for "
            "inspection"
        ) from exc


def check_graph(
    proto: onnx.ModelProto, path: Path, config: ExportConfig
) -> tuple[tuple[int | None, ...], tuple[int | None, ...]]:
    """Names, a symbolic batch axis when asked, and no op that only makes sense in training."""
    inputs = [value.name for value in proto.graph.input]
    outputs = [value.name for value in proto.graph.output]
    if inputs != [config.input_name] or outputs != [config.output_name]:
        raise UnsupportedModelError(
            f"{path} has inputs {inputs} and outputs {outputs}; export expects one input "
            f"'{config.input_name}' and one output '{config.output_name}' (a single-tensor "
            "classifier)"
        )
    input_shape = _shape(proto.graph.input[0])
    output_shape = _shape(proto.graph.output[0])
    if config.dynamic_batch and (input_shape[:1] != (None,) or output_shape[:1] != (None,)):
        raise OnnxValidationError(
            f"{path}: dynamic_batch is on but the batch axis came out fixed (input "
            f"{input_shape}, output {output_shape}); the model probably hard-codes its batch "
            "size (e.g. x.view(1, -1)); use torch.flatten(x, 1). The file is kept for inspection"
        )
    training_ops = [
        f"{node.op_type} '{node.name}'"
        for node in proto.graph.node
        if node.op_type == "Dropout"
        or (
            node.op_type == "BatchNormalization"
            and any(a.name == "training_mode" and a.i == 1 for a in node.attribute)
        )
    ]
    if training_ops:
        raise UnsupportedModelError(
            f"{path} contains training-mode ops {training_ops[:5]}; the model forces training "
            "behaviour in forward (e.g. F.batch_norm(training=True) or F.dropout(training=True)); "
            "the file is kept for inspection"
        )
    return input_shape, output_shape


def _shape(value: onnx.ValueInfoProto) -> tuple[int | None, ...]:
    dims = value.type.tensor_type.shape.dim
    return tuple(dim.dim_value if dim.HasField("dim_value") else None for dim in dims)


def training_aten_ops(program: torch.export.ExportedProgram) -> list[str]:
    """Training-mode aten ops in the dynamo exporter's graph, by name, sorted."""
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    return sorted(t for t in targets if t.startswith(_TRAINING_ATEN_OPS))
