"""Rewrite a float32 ONNX graph in place so it computes in a lower float type (FP16, BF16).

One rewrite serves every low-precision writer (`export.fp16`, `export.bf16`); what differs
between them is a `FloatFormat`: the ONNX type, the schema type string, and how float32
values are stored in it (FP16 clamps to +-65504; BF16 rounds to nearest even).

Float32 initializers, Constant tensors, intermediate tensors and Cast(to=FLOAT) become the
low type. Whether an op input may be the low type is read from the ONNX schema at the model's
opset, so inputs defined as float32 only (Resize `scales`) stay float32, and ops with no
low-type definition at that opset (Range; Conv and the pools before opset 22 for bfloat16)
run in float32 between Casts, as do the ops of the block list, ops of other domains and ops
with subgraphs (their bodies are not converted). With `keep_io_types` the graph still takes
and returns float32: a Cast follows each float input and precedes each float output.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.errors import OnnxValidationError, first_line

FLOAT = TensorProto.FLOAT
# Random ops (onnxruntime has no low-precision kernels and low-precision sampling differs) and
# ops whose ONNX definition has no float16 (also found from the schema; listed to be clear).
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


@dataclass(frozen=True)
class FloatFormat:
    """A float type a graph can be rewritten to."""

    name: str  # "fp16", "bf16": metadata, tensor-name suffixes
    label: str  # "FP16", "BF16": messages
    onnx_type: int  # TensorProto.FLOAT16, TensorProto.BFLOAT16
    # float32 values (any shape) and a name -> the stored tensor and how many values were
    # clamped to the format's largest finite value.
    encode: Callable[[np.ndarray, str], tuple[TensorProto, int]]

    @property
    def schema_type(self) -> str:
        """How ONNX schemas spell the type in their type constraints."""
        return f"tensor({helper.tensor_dtype_to_string(self.onnx_type).split('.')[-1].lower()})"


@dataclass(frozen=True)
class Rewrite:
    """What `rewrite_` changed."""

    activations: tuple[str, ...]  # node outputs now in the low type (by their float32 names)
    converted_initializers: int  # float32 initializers and Constant tensors now low type
    clamped_values: int  # weight values beyond the format's range, clamped to it
    float32_nodes: int  # nodes left computing in float32 (blocked, or float32-only)


def model_opset(model: onnx.ModelProto) -> int:
    """The default-domain opset the model imports (1 when it imports none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def rewrite_(
    model: onnx.ModelProto,
    fmt: FloatFormat,
    *,
    keep_io_types: bool,
    op_block_list: tuple[str, ...],
) -> Rewrite:
    """Rewrite `model` in place to compute in `fmt`; see the module docstring for the rules."""
    graph = model.graph
    low = fmt.onnx_type
    opset = model_opset(model)
    dtype = inferred_types(model, fmt)
    keep_fp32 = [_keeps_fp32(n, opset, dtype, op_block_list, fmt) for n in graph.node]
    io_type = FLOAT if keep_io_types else low
    # What each consumer needs of each float32 tensor: the low type, or FLOAT (float32-only).
    wants: dict[str, set[int]] = {}
    for node, fp32 in zip(graph.node, keep_fp32, strict=True):
        for slot, name in enumerate(node.input):
            if dtype.get(name) == FLOAT:
                wants.setdefault(name, set()).add(_wanted(node, slot, fp32, opset, fmt))
    for output in graph.output:
        wants.setdefault(output.name, set()).add(io_type)
    # The type each float32 tensor gets: producers of constants follow their consumers.
    new: dict[str, int] = {i.name: io_type for i in graph.input if dtype.get(i.name) == FLOAT}
    for init in graph.initializer:
        if init.data_type == FLOAT:
            new[init.name] = FLOAT if FLOAT in wants.get(init.name, ()) else low
    for node, fp32 in zip(graph.node, keep_fp32, strict=True):
        for name in node.output:
            if dtype.get(name) == FLOAT:
                follows = node.op_type in _CONSTANT_LIKE and FLOAT in wants.get(name, ())
                new[name] = FLOAT if fp32 or follows else low
    activations = tuple(out for node in graph.node for out in node.output if new.get(out) == low)
    counts = {"converted_initializers": 0, "clamped_values": 0}
    for index, init in enumerate(graph.initializer):
        if init.data_type == FLOAT and new[init.name] == low:
            graph.initializer[index].CopyFrom(_encode(init, fmt, counts))
    for node, fp32 in zip(graph.node, keep_fp32, strict=True):
        if not fp32 and node.output and new.get(node.output[0]) == low:
            _retype_constant(node, fmt, counts)
    _rename_outputs(graph, new, io_type, fmt)
    _insert_casts(graph, keep_fp32, new, opset, fmt)
    for value in [*graph.value_info, *graph.input, *graph.output]:
        if value.type.tensor_type.elem_type == FLOAT and new.get(value.name) == low:
            value.type.tensor_type.elem_type = low
    if counts["clamped_values"]:
        warnings.warn(
            f"{fmt.label}: {counts['clamped_values']} weight value(s) beyond the {fmt.label} "
            "range were clamped to its largest finite value; check the accuracy",
            stacklevel=3,
        )
    return Rewrite(activations=activations, float32_nodes=sum(keep_fp32), **counts)


def inferred_types(model: onnx.ModelProto, fmt: FloatFormat | None = None) -> dict[str, int]:
    """Element type of every tensor, from onnx shape inference on a copy of the model."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # InferenceError, or a checker error for broken graphs
        who = fmt.label if fmt else "low precision"
        raise OnnxValidationError(f"{who}: shape inference failed: {first_line(exc)}") from exc
    graph = inferred.graph
    types = {i.name: i.data_type for i in graph.initializer}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if value.type.HasField("tensor_type"):
            types[value.name] = value.type.tensor_type.elem_type
    return types


def _schema(node: onnx.NodeProto, opset: int) -> Any:
    if node.domain not in ("", "ai.onnx") or not onnx.defs.has(node.op_type):
        return None
    try:
        return onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:  # the op did not exist yet at this opset
        return None


def _allows(schema: Any, slot: int, fmt: FloatFormat) -> tuple[bool, bool]:
    """(input `slot` may be `fmt`, its type is shared with an output) per the schema."""
    param = schema.inputs[min(slot, len(schema.inputs) - 1)]
    allowed = {c.type_param_str: c.allowed_type_strs for c in schema.type_constraints}
    types = allowed.get(param.type_str, [param.type_str])
    return fmt.schema_type in types, any(o.type_str == param.type_str for o in schema.outputs)


def _keeps_fp32(
    node: onnx.NodeProto,
    opset: int,
    dtype: dict[str, int],
    op_block_list: tuple[str, ...],
    fmt: FloatFormat,
) -> bool:
    """Blocked, without a schema, with subgraphs, or with a float32-only input whose type the
    output shares (so the whole op has no low-type form at this opset)."""
    schema = _schema(node, opset)
    if node.op_type in op_block_list or node.op_type in _SUBGRAPH_OPS or schema is None:
        return True
    for slot, name in enumerate(node.input):
        if dtype.get(name) == FLOAT:
            allowed, shared = _allows(schema, slot, fmt)
            if not allowed and shared:
                return True
    return False


def _wanted(node: onnx.NodeProto, slot: int, fp32: bool, opset: int, fmt: FloatFormat) -> int:
    if fp32:
        return FLOAT
    return fmt.onnx_type if _allows(_schema(node, opset), slot, fmt)[0] else FLOAT


def _encode(init: TensorProto, fmt: FloatFormat, counts: dict[str, int]) -> TensorProto:
    tensor, clamped = fmt.encode(numpy_helper.to_array(init).astype(np.float32), init.name)
    counts["converted_initializers"] += 1
    counts["clamped_values"] += clamped
    return tensor


def _retype_constant(node: onnx.NodeProto, fmt: FloatFormat, counts: dict[str, int]) -> None:
    """Low-type Constant / ConstantOfShape tensors, Cast(to=low), EyeLike(dtype=low)."""
    for attr in node.attribute:
        if attr.name == "value" and attr.t.data_type == FLOAT:
            attr.t.CopyFrom(_encode(attr.t, fmt, counts))
        elif attr.name in ("value_float", "value_floats"):
            values = np.asarray(attr.f if attr.name == "value_float" else list(attr.floats))
            node.attribute.remove(attr)
            tensor = numpy_helper.from_array(values.astype(np.float32))
            node.attribute.append(helper.make_attribute("value", _encode(tensor, fmt, counts)))
            break
        elif attr.name in ("to", "dtype") and attr.i == FLOAT:
            attr.i = fmt.onnx_type
    if node.op_type == "ConstantOfShape" and not node.attribute:  # default: float32 zeros
        zero, _ = fmt.encode(np.zeros(1, np.float32), "")
        node.attribute.append(helper.make_attribute("value", zero))


def _rename_outputs(
    graph: onnx.GraphProto, new: dict[str, int], io_type: int, fmt: FloatFormat
) -> None:
    """A graph output computed in the low type but declared float32: the producer writes
    `<name>__<fmt>` and a Cast to float32 writes `<name>`, so the output name is unchanged."""
    for output in graph.output:
        name = output.name
        if new.get(name) != fmt.onnx_type or io_type != FLOAT:
            continue
        internal = unique_name(f"{name}__{fmt.name}", graph)
        for node in graph.node:
            node.input[:] = [internal if i == name else i for i in node.input]
            node.output[:] = [internal if o == name else o for o in node.output]
        for init in graph.initializer:
            if init.name == name:
                init.name = internal
        for value in graph.value_info:
            if value.name == name:
                value.name = internal
        new[internal], new[name] = fmt.onnx_type, FLOAT
        graph.node.append(
            helper.make_node("Cast", [internal], [name], name=f"{name}__to_fp32", to=FLOAT)
        )


def _insert_casts(
    graph: onnx.GraphProto,
    keep_fp32: list[bool],
    new: dict[str, int],
    opset: int,
    fmt: FloatFormat,
) -> None:
    """Give every node input the float type it needs: a Cast, made once per tensor and type,
    placed right before the first node that needs it (right after the input, for inputs)."""
    keep_fp32 = keep_fp32 + [False] * (len(graph.node) - len(keep_fp32))  # output Casts
    casts: dict[tuple[str, int], str] = {}
    nodes: list[onnx.NodeProto] = []
    for node, fp32 in zip(list(graph.node), keep_fp32, strict=True):
        for slot, name in enumerate(node.input):
            if new.get(name) not in (FLOAT, fmt.onnx_type) or node.op_type == "Cast":
                continue
            wanted = _wanted(node, slot, fp32, opset, fmt)
            if wanted == new[name]:
                continue
            if (name, wanted) not in casts:
                suffix = fmt.name if wanted == fmt.onnx_type else "fp32"
                cast = unique_name(f"{name}__{suffix}", graph)
                casts[name, wanted] = cast
                nodes.append(helper.make_node("Cast", [name], [cast], name=cast, to=wanted))
            node.input[slot] = casts[name, wanted]
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def unique_name(name: str, graph: onnx.GraphProto) -> str:
    """`name`, or `name` with a number appended, unused by any tensor of `graph`."""
    taken = {n for node in graph.node for n in [*node.input, *node.output]}
    taken.update(i.name for i in graph.initializer)
    taken.update(v.name for v in [*graph.input, *graph.output])
    candidate, k = name, 0
    while candidate in taken:
        k += 1
        candidate = f"{name}{k}"
    return candidate
