"""FP32 ONNX -> FP16 ONNX graph: how strongly typed TensorRT 11 gets an FP16 engine.

TensorRT 11 dropped the FP16 builder flag: a tensor is FP16 because the ONNX says so. This
rewrites the graph itself (no onnxconverter-common): float32 initializers, Constant tensors,
intermediate tensors and Cast(to=FLOAT) become float16. Whether an op input may be float16 is
read from the ONNX schema of the model's opset, so inputs defined as float32 only (Resize
`scales`) stay float32, and ops with no float16 definition at all (Range) run in float32
between Casts, as do the ops of `FP16Config.op_block_list`, ops of other domains and ops with
subgraphs (their bodies are not converted). With `keep_io_types` the graph still takes and
returns float32: a Cast follows each float input and precedes each float output, so callers
and the evaluation files do not change.

The result is checked with onnx.checker (full, with strict shape inference). Given parity
inputs, it is run against the FP32 file with onnxruntime. Its CPU provider has few FP16
kernels: it casts the FP16 weights back to float32 and drops the Casts between ops, so the
comparison measures the weight rounding, not FP16 activations. Overflow (an activation beyond
+-65504, inf in FP16) is therefore checked separately, from the FP32 activations' range on
the same inputs.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deploy.config_fields import check_fields, flag, names
from deploy.errors import DeployError
from deploy.evaluate import run_batches
from deploy.files import file_sha256, work_directory
from deploy.paths import check_write_target
from deploy.runners import OnnxRuntimeRunner
from export.checks import run_checker
from export.errors import (
    ExportConfigError,
    ExportInputError,
    OnnxValidationError,
    ParityError,
    first_line,
)
from export.metadata import check_out_path, load_source, save_onnx, set_metadata

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
FP16_MAX = 65504.0  # largest finite float16; larger float32 values are clamped to it
# Default block list: random ops (onnxruntime has no FP16 kernels and FP16 sampling differs)
# and ops whose ONNX definition has no float16 (also found from the schema; listed to be clear).
DEFAULT_OP_BLOCK_LIST = (
    "Bernoulli",
    "Multinomial",
    "NonMaxSuppression",
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Range",
)
_SUBGRAPH_OPS = frozenset({"If", "Loop", "Scan"})  # always float32: bodies are not converted
_CONSTANT_LIKE = frozenset({"Constant", "ConstantOfShape", "Cast", "EyeLike"})
# Parity tolerance, relative to the largest FP32 logit: FP16 keeps 11 significant bits (a
# rounding error of up to 2**-11 = 4.9e-4 per tensor). Measured max |FP16 - FP32| / max |logit|:
# 3e-4 to 7e-4 on the default pipeline's ResNet-56 variants and a small digits CNN, 2e-3 on a
# badly conditioned one. 1% leaves 5-30x headroom for TensorRT's FP16 activations, and still
# catches real faults (a lost Cast, a clamped weight), which move logits by their own size.
DEFAULT_RTOL = 1e-2
DEFAULT_ATOL = 1e-3


@dataclass(frozen=True, kw_only=True)
class FP16Config:
    """Which ops stay float32 and whether the graph keeps float32 inputs and outputs."""

    # float32 in and out, Casts inside (callers need not change).
    keep_io_types: bool = field(default=True, metadata=flag())
    op_block_list: tuple[str, ...] = field(  # op types computed in float32
        default=DEFAULT_OP_BLOCK_LIST, metadata=names(expected="a list of ONNX op types")
    )

    def __post_init__(self) -> None:
        check_fields(self, ExportConfigError, "FP16Config.{name}: ")
        blocked = self.op_block_list
        unknown = [op for op in blocked if not isinstance(op, str) or not onnx.defs.has(op)]
        if unknown:
            raise ExportConfigError(
                f"FP16Config.op_block_list: {unknown} are not ONNX op types (names are "
                "case-sensitive, e.g. 'Resize')"
            )


@dataclass(frozen=True)
class FP16Result:
    """What `convert_fp16` wrote, and how far its outputs are from the FP32 file's."""

    path: Path
    converted_initializers: int  # float32 initializers and Constant tensors now float16
    clamped_values: int  # weight values beyond +-65504, clamped to it
    max_abs_diff: float | None  # largest |FP16 - FP32| of the first output; None: no parity
    top1_agreement: float | None  # fraction of parity inputs whose argmax agrees
    float32_nodes: int = 0  # nodes left computing in float32 (blocked or float32-only)
    tolerance: float | None = None  # the max_abs_diff allowed (atol + rtol * max |FP32 logit|)
    sha256: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


def convert_fp16(
    fp32_onnx: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    config: FP16Config = FP16Config(),  # noqa: B008 - frozen, so sharing is safe
    *,
    parity_inputs: np.ndarray | None = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
) -> FP16Result:
    """Write the FP16 graph of `fp32_onnx` to `out_path` atomically, checked and, with
    `parity_inputs` (N x ... float images), compared with the FP32 file on onnxruntime.

    Raises ParityError when an activation computed in FP16 would overflow on those inputs,
    or when max |FP16 - FP32| exceeds atol + rtol * max |FP32 output|; the FP16 file is then
    not written (call without parity_inputs to write it for inspection).
    """
    source, out_path = Path(fp32_onnx), Path(out_path)
    for name, value in (("atol", atol), ("rtol", rtol)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e9:
            raise ExportConfigError(f"convert_fp16 {name}: must be a finite number >= 0")
    model = load_source(source, "convert_fp16")
    onnx.load_external_data_for_model(model, str(source.parent))  # no-op without external data
    check_out_path(out_path, source)
    if parity_inputs is not None:
        _check_parity_inputs(parity_inputs)
    probe = onnx.ModelProto()
    if parity_inputs is not None:
        probe.CopyFrom(model)  # the FP32 graph, before _convert changes `model` in place
    activations, stats = _convert(model, config)
    ours = {"precision": "fp16", "source_onnx_sha256": file_sha256(source)}
    ours["fp16.keep_io_types"] = str(config.keep_io_types).lower()
    set_metadata(model, ours)
    with work_directory(out_path) as work:
        save_onnx(model, work / "fp16.onnx")
        _check(work / "fp16.onnx")
        diff = agreement = tolerance = None
        if parity_inputs is not None:
            outputs = {output.name for output in probe.graph.output}
            probe.graph.output.extend(
                helper.make_tensor_value_info(name, FLOAT, None)
                for name in activations
                if name not in outputs
            )
            save_onnx(probe, work / "probe.onnx")
            reference, peaks = _run(work / "probe.onnx", parity_inputs)
            _check_range({n: peaks[n] for n in activations}, source, len(parity_inputs))
            got, _ = _run(work / "fp16.onnx", parity_inputs)
            tolerance = atol + rtol * float(np.max(np.abs(reference)))
            diff = float(np.max(np.abs(got - reference))) if np.all(np.isfinite(got)) else np.inf
            agreement = float(np.mean(reference.argmax(1) == got.argmax(1)))
            if not diff <= tolerance:
                raise ParityError(
                    f"FP16 of {source} differs from FP32 by {diff:.3g} (allowed {tolerance:.3g} = "
                    f"{atol:g} + {rtol:g} x max |FP32 output|) on {len(parity_inputs)} inputs, "
                    f"top-1 agreement {agreement:.4f}; keep the sensitive op types in float32 "
                    "with FP16Config.op_block_list"
                )
        check_write_target(out_path, "output path")  # a link or FIFO planted meanwhile
        os.replace(work / "fp16.onnx", out_path)
    return FP16Result(
        path=out_path,
        max_abs_diff=diff,
        top1_agreement=agreement,
        tolerance=tolerance,
        sha256=file_sha256(out_path),
        metadata={prop.key: prop.value for prop in model.metadata_props},
        **stats,
    )


def _check_range(peaks: dict[str, float], source: Path, samples: int) -> None:
    """onnxruntime's CPU provider computes an FP16 graph in float32 (it casts the FP16
    weights back and drops the Casts between ops), so FP16 overflow never shows in its
    outputs; the FP32 activations' range on the parity inputs shows it instead."""
    over = {name: peak for name, peak in peaks.items() if not peak <= FP16_MAX}
    if over:
        name = max(over, key=lambda key: over[key])
        raise ParityError(
            f"FP16 overflow in {source}: {len(over)} tensor(s) exceed +-{FP16_MAX:g} on "
            f"{samples} parity inputs (largest: '{name}' reaches {over[name]:.3g}), which "
            "FP16 turns into inf; keep their op types in float32 with FP16Config.op_block_list"
        )


def _check_parity_inputs(images: Any) -> None:
    if not isinstance(images, np.ndarray) or images.dtype.kind != "f" or images.ndim < 2:
        got = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
        raise ExportInputError(
            f"parity_inputs: must be a float numpy array N x C x H x W (preprocessed), got {got}"
        )
    if len(images) == 0 or not np.all(np.isfinite(images)):
        raise ExportInputError("parity_inputs: must hold at least one image and no NaN or Inf")


def _convert(model: onnx.ModelProto, config: FP16Config) -> tuple[list[str], dict[str, int]]:
    """Rewrite `model` in place; returns the node outputs now float16 (by their float32
    names) and the counts FP16Result reports."""
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    dtype = _inferred_types(model)
    keep_fp32 = [_keeps_fp32(node, opset, dtype, config) for node in graph.node]
    io_type = FLOAT if config.keep_io_types else FLOAT16
    # What each consumer needs of each float32 tensor: FLOAT16, or FLOAT (float32-only input).
    wants: dict[str, set[int]] = {}
    for node, fp32 in zip(graph.node, keep_fp32, strict=True):
        for slot, name in enumerate(node.input):
            if dtype.get(name) == FLOAT:
                wants.setdefault(name, set()).add(_wanted(node, slot, fp32, opset))
    for output in graph.output:
        wants.setdefault(output.name, set()).add(io_type)
    # The type each float32 tensor gets: producers of constants follow their consumers.
    new: dict[str, int] = {i.name: io_type for i in graph.input if dtype.get(i.name) == FLOAT}
    for init in graph.initializer:
        if init.data_type == FLOAT:
            new[init.name] = FLOAT if FLOAT in wants.get(init.name, ()) else FLOAT16
    for node, fp32 in zip(graph.node, keep_fp32, strict=True):
        for name in node.output:
            if dtype.get(name) == FLOAT:
                follows = node.op_type in _CONSTANT_LIKE and FLOAT in wants.get(name, ())
                new[name] = FLOAT if fp32 or follows else FLOAT16
    activations = [out for node in graph.node for out in node.output if new.get(out) == FLOAT16]
    counts = {"converted_initializers": 0, "clamped_values": 0}
    for index, init in enumerate(graph.initializer):
        if init.data_type == FLOAT and new[init.name] == FLOAT16:
            graph.initializer[index].CopyFrom(_half(init, counts))
    for node, fp32 in zip(graph.node, keep_fp32, strict=True):
        if not fp32 and node.output and new.get(node.output[0]) == FLOAT16:
            _retype_constant(node, counts)
    _rename_outputs(graph, new, io_type)
    _insert_casts(graph, keep_fp32, new, opset)
    for value in [*graph.value_info, *graph.input, *graph.output]:
        if value.type.tensor_type.elem_type == FLOAT and new.get(value.name) == FLOAT16:
            value.type.tensor_type.elem_type = FLOAT16
    if counts["clamped_values"]:
        warnings.warn(
            f"FP16: {counts['clamped_values']} weight value(s) beyond +-{FP16_MAX:g} were "
            "clamped; check the FP16 accuracy",
            stacklevel=3,
        )
    return activations, {**counts, "float32_nodes": sum(keep_fp32)}


def _inferred_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor, from onnx shape inference on a copy of the model."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # InferenceError, or a checker error for broken graphs
        raise OnnxValidationError(f"FP16: shape inference failed: {first_line(exc)}") from exc
    graph = inferred.graph
    types = {i.name: i.data_type for i in graph.initializer}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if value.type.HasField("tensor_type"):
            types[value.name] = value.type.tensor_type.elem_type
    return types


def _schema(node: onnx.NodeProto, opset: int) -> Any:
    if node.domain not in ("", "ai.onnx") or not onnx.defs.has(node.op_type):
        return None
    return onnx.defs.get_schema(node.op_type, opset, "")


def _allows_fp16(schema: Any, slot: int) -> tuple[bool, bool]:
    """(input `slot` may be float16, its type is shared with an output) per the schema."""
    param = schema.inputs[min(slot, len(schema.inputs) - 1)]
    allowed = {c.type_param_str: c.allowed_type_strs for c in schema.type_constraints}
    types = allowed.get(param.type_str, [param.type_str])
    return "tensor(float16)" in types, any(o.type_str == param.type_str for o in schema.outputs)


def _keeps_fp32(node: onnx.NodeProto, opset: int, dtype: dict[str, int], cfg: FP16Config) -> bool:
    """Blocked, without a schema, with subgraphs, or with a float32-only input whose type the
    output shares (so the whole op has no float16 form)."""
    schema = _schema(node, opset)
    if node.op_type in cfg.op_block_list or node.op_type in _SUBGRAPH_OPS or schema is None:
        return True
    for slot, name in enumerate(node.input):
        if dtype.get(name) == FLOAT:
            fp16_ok, shared = _allows_fp16(schema, slot)
            if not fp16_ok and shared:
                return True
    return False


def _wanted(node: onnx.NodeProto, slot: int, fp32: bool, opset: int) -> int:
    if fp32:
        return FLOAT
    return FLOAT16 if _allows_fp16(_schema(node, opset), slot)[0] else FLOAT


def _half(init: TensorProto, counts: dict[str, int]) -> TensorProto:
    values = numpy_helper.to_array(init)
    counts["converted_initializers"] += 1
    counts["clamped_values"] += int(np.sum(np.abs(values) > FP16_MAX))
    clipped = np.clip(values, -FP16_MAX, FP16_MAX).astype(np.float16)
    return numpy_helper.from_array(clipped, init.name)


def _retype_constant(node: onnx.NodeProto, counts: dict[str, int]) -> None:
    """Float16 Constant / ConstantOfShape tensors, Cast(to=FLOAT16), EyeLike(dtype=FLOAT16)."""
    for attr in node.attribute:
        if attr.name == "value" and attr.t.data_type == FLOAT:
            attr.t.CopyFrom(_half(attr.t, counts))
        elif attr.name in ("value_float", "value_floats"):
            values = np.asarray(attr.f if attr.name == "value_float" else list(attr.floats))
            node.attribute.remove(attr)
            tensor = numpy_helper.from_array(values.astype(np.float32))
            node.attribute.append(helper.make_attribute("value", _half(tensor, counts)))
            break
        elif attr.name in ("to", "dtype") and attr.i == FLOAT:
            attr.i = FLOAT16
    if node.op_type == "ConstantOfShape" and not node.attribute:  # default: float32 zeros
        zero = numpy_helper.from_array(np.zeros(1, np.float16))
        node.attribute.append(helper.make_attribute("value", zero))


def _rename_outputs(graph: onnx.GraphProto, new: dict[str, int], io_type: int) -> None:
    """A graph output computed in float16 but declared float32: the producer writes
    `<name>__fp16` and a Cast to float32 writes `<name>`, so the output name is unchanged."""
    for output in graph.output:
        name = output.name
        if new.get(name) != FLOAT16 or io_type != FLOAT:
            continue
        internal = _unique(f"{name}__fp16", graph)
        for node in graph.node:
            node.input[:] = [internal if i == name else i for i in node.input]
            node.output[:] = [internal if o == name else o for o in node.output]
        for init in graph.initializer:
            if init.name == name:
                init.name = internal
        for value in graph.value_info:
            if value.name == name:
                value.name = internal
        new[internal], new[name] = FLOAT16, FLOAT
        graph.node.append(
            helper.make_node("Cast", [internal], [name], name=f"{name}__to_fp32", to=FLOAT)
        )


def _insert_casts(
    graph: onnx.GraphProto, keep_fp32: list[bool], new: dict[str, int], opset: int
) -> None:
    """Give every node input the float type it needs: a Cast, made once per tensor and type,
    placed right before the first node that needs it (right after the input, for inputs)."""
    keep_fp32 = keep_fp32 + [False] * (len(graph.node) - len(keep_fp32))  # output Casts
    casts: dict[tuple[str, int], str] = {}
    nodes: list[onnx.NodeProto] = []
    for node, fp32 in zip(list(graph.node), keep_fp32, strict=True):
        for slot, name in enumerate(node.input):
            if new.get(name) not in (FLOAT, FLOAT16) or node.op_type == "Cast":
                continue
            wanted = _wanted(node, slot, fp32, opset)
            if wanted == new[name]:
                continue
            if (name, wanted) not in casts:
                suffix = "fp16" if wanted == FLOAT16 else "fp32"
                cast = _unique(f"{name}__{suffix}", graph)
                casts[name, wanted] = cast
                nodes.append(helper.make_node("Cast", [name], [cast], name=cast, to=wanted))
            node.input[slot] = casts[name, wanted]
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def _unique(name: str, graph: onnx.GraphProto) -> str:
    taken = {n for node in graph.node for n in [*node.input, *node.output]}
    taken.update(i.name for i in graph.initializer)
    candidate, k = name, 0
    while candidate in taken:
        k += 1
        candidate = f"{name}{k}"
    return candidate


def _check(path: Path) -> None:
    try:
        run_checker(path)
    except OnnxValidationError as exc:
        raise OnnxValidationError(
            f"the FP16 graph {exc}; block the op it names in FP16Config.op_block_list"
        ) from exc


def _run(path: Path, images: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, dict]:
    """The first output for every image (float32), and max |value| of every output."""
    chunks: list[np.ndarray] = []
    peaks: dict[str, float] = {}
    with OnnxRuntimeRunner(path) as runner:
        if len(runner.input_specs) != 1:
            raise ExportInputError(f"parity needs a model with one input; {path.name} has more")
        try:
            for outputs in run_batches(runner, images, batch_size):
                chunks.append(np.asarray(next(iter(outputs.values())), dtype=np.float32))
                for name, value in outputs.items():
                    peak = float(np.max(np.abs(value))) if value.size else 0.0
                    peaks[name] = max(peaks.get(name, 0.0), peak)
        except DeployError as exc:
            raise ExportInputError(f"parity_inputs do not fit the model: {exc}") from exc
    return np.concatenate(chunks).reshape(len(images), -1), peaks
