"""TensorRT-readiness lint for an ONNX file, without TensorRT.

No machine here can run TensorRT, so this reads the graph as TensorRT's ONNX parser and builder
would and reports what they would refuse (errors), what would build but cost speed or accuracy
(warnings) and what is worth knowing (info). Only onnx and numpy, no torch or onnxruntime: it is
cheap to run on any file, on any machine.

What each TensorRT release accepts (operator sets, opsets, quantized types, DLA layers) and
where that comes from is in `export.trt_ops`; this module holds the checks.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from deploy.errors import DeployInputError
from deploy.onnx_files import MAX_ONNX_BYTES, check_external_data
from deploy.paths import check_readable_file
from export.errors import ExportConfigError, ExportInputError, OnnxValidationError, first_line
from export.findings import SEVERITIES, Finding, ReadinessReport, Severity, finding
from export.metadata import refuse_pickle
from export.onnx_graph import OnnxGraph, walk_nodes
from export.qdq_checks import check_qdq
from export.trt_ops import (
    BF16_CONV_OPSET,
    BF16_SINCE,
    DEFAULT_DOMAINS,
    DLA_UNSUPPORTED,
    MIN_OPSET,
    SHAPE_INPUTS,
    Target,
    Version,
    max_opset,
    parse_trt_version,
    supported_since,
)

Shape = Sequence[int]

# Version and MIN_OPSET live in export.trt_ops now; they are still importable from here.
__all__ = [
    "MIN_OPSET",
    "SEVERITIES",
    "Finding",
    "ReadinessReport",
    "Severity",
    "Shape",
    "Version",
    "check_readiness",
]


def _load(model: str | Path | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    if isinstance(model, onnx.ModelProto):
        try:
            onnx.checker.check_model(model)
        except Exception as exc:  # ValidationError and friends
            raise OnnxValidationError(f"model fails onnx.checker: {first_line(exc)}") from exc
        return model, "<ModelProto>"
    if not isinstance(model, str | Path):
        raise ExportInputError(f"model: expected a path or onnx.ModelProto, got {type(model)}")
    path = Path(model)
    if not path.exists():
        raise ExportInputError(f"ONNX file not found: {path}")
    try:
        check_readable_file(path, "ONNX file", max_bytes=MAX_ONNX_BYTES)  # before any read
        refuse_pickle(path, ExportInputError)
        proto = onnx.load(str(path), load_external_data=False)
    except DeployInputError as exc:
        raise ExportInputError(str(exc)) from exc
    except Exception as exc:  # DecodeError
        raise ExportInputError(f"{path} is not an ONNX model: {first_line(exc)}") from exc
    if proto.ir_version <= 0 or not proto.HasField("graph"):
        raise ExportInputError(f"{path} is not an ONNX model (no IR version or graph)")
    try:  # every external tensor exactly as large as declared, before it is read
        check_external_data(path, proto)
        onnx.load_external_data_for_model(proto, str(path.parent))
    except DeployInputError as exc:
        raise ExportInputError(str(exc)) from exc
    except Exception as exc:
        raise ExportInputError(f"{path}: cannot read its external data: {first_line(exc)}") from exc
    try:
        onnx.checker.check_model(str(path))  # the path form also handles files over 2 GB
    except Exception as exc:
        raise OnnxValidationError(f"{path} fails onnx.checker: {first_line(exc)}") from exc
    return proto, str(path)


# --- Checks ----------------------------------------------------------------------------------
def _check_operators(proto: onnx.ModelProto, target: Target) -> Iterator[Finding]:
    opset = next((o.version for o in proto.opset_import if o.domain in DEFAULT_DOMAINS), None)
    newest = max_opset(target.floor)
    if opset is not None and opset < MIN_OPSET:
        msg = (
            f"default-domain opset {opset}: the TensorRT ONNX parser supports opset "
            f"{MIN_OPSET} and newer; re-export with a newer opset, or convert with "
            f"onnx.version_converter.convert_version(model, {newest})"
        )
        yield finding("error", "opset-too-old", msg)
    elif opset is not None and opset > newest:
        fix = f"export with opset {newest}"
        if _bf16_tensors(proto) and opset >= BF16_CONV_OPSET > newest:
            fix = (  # a lower opset would leave Conv and the pools without bfloat16
                f"a BF16 graph needs opset {BF16_CONV_OPSET} for bfloat16 Conv and pools, so "
                "on this release build BF16 from the FP32 file with the BF16 builder flag"
            )
        msg = (
            f"default-domain opset {opset}: TensorRT {target.label} documents opsets "
            f"{MIN_OPSET}-{newest} and may refuse newer op versions; {fix}, or declare the "
            "exact TensorRT release you deploy on"
        )
        yield finding("warning", "opset-too-new", msg)
    functions = {(f.domain, f.name): f for f in proto.functions}
    for label, node in walk_nodes(proto.graph, functions):
        if (node.domain, node.op_type) in functions:
            if target.major < 9:
                msg = (
                    f"calls model-local function {node.op_type!r}; the TensorRT "
                    f"{target.label} parser cannot import local functions (9.0 added them); "
                    "inline them with onnx.inliner.inline_local_functions"
                )
                yield finding("error", "local-function", msg, label, node.op_type)
        elif node.domain not in DEFAULT_DOMAINS:
            msg = (
                f"op {node.op_type!r} is in the custom domain {node.domain!r}; TensorRT imports "
                f"it only as a plugin named {node.op_type!r}: register one (IPluginV3) for the "
                "engine build, or export without the custom op"
            )
            yield finding("error", "custom-op", msg, label, node.op_type)
        else:
            yield from _check_op_support(label, node.op_type, target)


def _check_op_support(label: str, op: str, target: Target) -> Iterator[Finding]:
    since = supported_since(op)
    if since is not None and since <= target.floor:
        return
    if since is None:
        msg = (
            f"{op} is not supported by the TensorRT {target.label} ONNX parser (onnx-tensorrt "
            "operators.md); rewrite it with supported ops, or provide a TensorRT plugin named "
            f"{op!r} (the parser falls back to a plugin of that name)"
        )
        yield finding("error", "unsupported-op", msg, label, op)
    elif since <= target.ceiling:
        msg = (
            f"{op} is supported from TensorRT {since[0]}.{since[1]} on; older {target.major}.x "
            f"parsers{' (e.g. 10.3 on JetPack 6)' if target.major == 10 else ''} refuse it; "
            "declare the exact release you deploy on, or replace the op"
        )
        yield finding("warning", "op-needs-newer-release", msg, label, op)
    else:
        msg = (
            f"{op} is not supported by the TensorRT {target.label} ONNX parser (it is from "
            f"{since[0]}.{since[1]} on); upgrade TensorRT or replace the op"
        )
        yield finding("error", "unsupported-op", msg, label, op)


def _check_inputs(
    proto: onnx.ModelProto, profiles: Mapping[str, Sequence[Shape]] | None, dla: bool
) -> Iterator[Finding]:
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [v for v in proto.graph.input if v.name not in initializers]
    profiles = dict(profiles or {})
    for name in sorted(set(profiles) - {v.name for v in inputs}):
        msg = f"profile given for {name!r}, which is not a graph input ({[v.name for v in inputs]})"
        yield finding("error", "profile-unknown-input", msg)
    for value in inputs:
        if not value.type.HasField("tensor_type"):  # onnx.checker already demands a shape
            kind = str(value.type.WhichOneof("value")).removesuffix("_type")
            msg = f"input {value.name!r} is a {kind}; TensorRT engine inputs are tensors only"
            yield finding("error", "input-not-tensor", msg)
            continue
        dims = [d.dim_value if d.dim_value > 0 else None for d in value.type.tensor_type.shape.dim]
        dynamic = [axis for axis, d in enumerate(dims) if d is None]
        if value.name not in profiles:
            yield from (_no_profile(value, dims, axis) for axis in dynamic)
            if dla and dynamic:
                msg = f"input {value.name!r} has dynamic axes {dynamic}; DLA needs fixed shapes"
                yield finding("warning", "dla-dynamic-shape", msg)
            continue
        shapes = _profile_shapes(value.name, profiles[value.name])
        problems = _profile_problems(dims, shapes)
        if problems:
            msg = (
                f"profile for input {value.name!r} (shape {_dims_text(dims)}): "
                f"{'; '.join(problems)}; give (min, opt, max) shapes of the input's rank, "
                "min <= opt <= max, static dims unchanged"
            )
            yield finding("error", "profile-invalid", msg)
        elif dla and shapes[0] != shapes[2]:
            msg = f"profile for {value.name!r}: DLA needs min == opt == max, got {shapes}"
            yield finding("warning", "dla-dynamic-shape", msg)


def _no_profile(value: onnx.ValueInfoProto, dims: list[int | None], axis: int) -> Finding:
    param = value.type.tensor_type.shape.dim[axis].dim_param
    lo, opt, hi = ("x".join(str(d or size) for d in dims) for size in (1, 8, 32))
    name = value.name
    msg = (
        f"input {name!r} axis {axis}{f' ({param!r})' if param else ''} is dynamic and has no "
        f"optimization profile; pass one (`compressor lint --profile {name}:{lo},{opt},{hi}`, "
        f"profiles={{{name!r}: (min, opt, max)}} in Python), or trtexec "
        f"--minShapes={name}:{lo} --optShapes={name}:{opt} --maxShapes={name}:{hi} (example "
        "sizes), or export with a fixed shape"
    )
    return finding("warning", "dynamic-dim-no-profile", msg)


def _profile_shapes(name: str, profile: object) -> tuple[tuple[int, ...], ...]:
    def is_shape(shape: object) -> bool:
        return isinstance(shape, Sequence) and not isinstance(shape, str) and all(
            isinstance(d, int | np.integer) and not isinstance(d, bool) for d in shape
        )  # fmt: skip

    if not (isinstance(profile, Sequence) and len(profile) == 3 and all(map(is_shape, profile))):
        raise ExportConfigError(
            f"profiles[{name!r}]: expected (min_shape, opt_shape, max_shape), three sequences "
            f"of ints, got {profile!r}"
        )
    return tuple(tuple(int(d) for d in shape) for shape in profile)


def _profile_problems(dims: list[int | None], shapes: Sequence[tuple[int, ...]]) -> list[str]:
    ranks = sorted({len(s) for s in shapes})
    if ranks != [len(dims)]:
        return [f"shapes of rank {ranks}, the input has rank {len(dims)}"]
    problems = []
    for axis, dim in enumerate(dims):
        lo, opt, hi = (shape[axis] for shape in shapes)
        if min(lo, opt, hi) < 1 or not lo <= opt <= hi:
            problems.append(f"axis {axis} needs 1 <= min <= opt <= max, got {lo}/{opt}/{hi}")
        if dim is not None and {lo, opt, hi} != {dim}:
            problems.append(f"axis {axis} is static ({dim}), got {lo}/{opt}/{hi}")
    return problems


def _dims_text(dims: Sequence[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _check_dtypes(g: OnnxGraph, target: Target) -> Iterator[Finding]:
    double = TensorProto.DOUBLE
    io = [*g.proto.graph.input, *g.proto.graph.output]
    doubles = [name for name, t in g.consts.items() if t.data_type == double]
    doubles += [v.name for v in io if v.type.tensor_type.elem_type == double]
    doubles += [g.labels[i] for i, n in enumerate(g.nodes) if n.op_type == "Cast" and any(
        a.name == "to" and a.i == double for a in n.attribute)]  # fmt: skip
    if doubles:
        msg = (
            f"{len(doubles)} DOUBLE tensors or casts ({', '.join(doubles[:5])}); TensorRT casts "
            "DOUBLE to FLOAT, clamping to +-FLT_MAX; export in float32"
        )
        yield finding("warning", "double-tensor", msg)
    if target.major >= 9:  # since 9.0 the parser keeps INT64 (Changelog 9.0 EA)
        return
    for tensor in g.proto.graph.initializer:
        uses = g.consumers.get(tensor.name, [])
        shape_like = all(pos in SHAPE_INPUTS.get(g.nodes[j].op_type, ()) for j, pos in uses)
        if tensor.data_type != TensorProto.INT64 or shape_like:
            continue
        values, i32 = numpy_helper.to_array(tensor), np.iinfo(np.int32)
        clamped = values.size > 0 and (values.min() < i32.min or values.max() > i32.max)
        msg = (
            f"INT64 initializer {tensor.name!r} is used as data; TensorRT {target.label} casts "
            f"INT64 to INT32{', clamping values outside its range' if clamped else ''}; store "
            "it as INT32 (or float) unless it is an index"
        )
        yield finding("warning" if clamped else "info", "int64-weights", msg)


def _check_dla(g: OnnxGraph, target: Target) -> Iterator[Finding]:
    # "Working with DLA" (11.4.1 docs): 10.7 was the last 10.x with DLA on Jetson; 11.0-11.3
    # have none; 11.4.1 brings it back on Jetson AGX Orin with JetPack 7.2.2+.
    if target.floor >= (11, 0) and target.ceiling <= (11, 3):
        msg = (
            f"TensorRT {target.label} has no DLA support (none in 11.0-11.3); build DLA engines "
            "with 10.7 or earlier, or 11.4.1+ on Jetson AGX Orin (JetPack 7.2.2+)"
        )
        yield finding("error", "dla-unavailable", msg)
    elif target.ceiling > (10, 7) and target.floor < (11, 4):
        msg = (
            f"DLA builds need TensorRT <= 10.7 or >= 11.4.1 (Jetson AGX Orin); check that "
            f"your {target.label} release supports DLA"
        )
        yield finding("warning", "dla-unavailable", msg)
    by_op: dict[str, list[str]] = {}
    for label, node in zip(g.labels, g.nodes, strict=True):
        if node.op_type in DLA_UNSUPPORTED and node.domain in DEFAULT_DOMAINS:
            by_op.setdefault(node.op_type, []).append(label)
    for op, labels in sorted(by_op.items()):
        msg = (
            f"{len(labels)} {op} node(s) cannot run on DLA; with GPU fallback "
            "(--allowGPUFallback) they run on the GPU and split the DLA graph (at most 16 "
            "DLA loadables per core); replace them to keep the network on DLA"
        )
        yield finding("warning", "dla-unsupported-op", msg, labels[0], op)
    if not g.has_qdq:
        msg = "DLA runs FP16 or INT8 only: build with --fp16/--int8 (10.x) or give an FP16 graph"
        yield finding("info", "dla-precision", msg)


def _bf16_tensors(proto: onnx.ModelProto) -> list[str]:
    """Names of the BFLOAT16 initializers, inputs and outputs, and of Casts to BFLOAT16."""
    bf16, graph = TensorProto.BFLOAT16, proto.graph
    names = [t.name for t in graph.initializer if t.data_type == bf16]
    names += [v.name for v in [*graph.input, *graph.output] if v.type.tensor_type.elem_type == bf16]
    names += [n.output[0] for n in graph.node if n.op_type == "Cast" and any(
        a.name == "to" and a.i == bf16 for a in n.attribute)]  # fmt: skip
    return names


def _check_bf16(g: OnnxGraph, target: Target, dla: bool) -> Iterator[Finding]:
    """What a BF16 graph meets on `target`: no BF16 before TensorRT 9, none on DLA, and
    weights left in float32 (ops without bfloat16 at the file's opset) that run in FP32."""
    bf16 = _bf16_tensors(g.proto)
    if not bf16:
        return
    if target.floor < BF16_SINCE:
        msg = (
            f"{len(bf16)} BFLOAT16 tensors or casts ({', '.join(bf16[:3])}); TensorRT "
            f"{target.label} has no BF16 (9.0 added it); build from the FP32 or FP16 file"
        )
        yield finding("error", "bf16-unsupported", msg)
    if dla:
        msg = "DLA runs FP16 or INT8 only, not BF16; use the FP16 or INT8 file for DLA"
        yield finding("warning", "dla-bf16", msg)
    float32_ops: dict[str, set[int]] = {}  # op type -> the nodes that take float32 weights
    for tensor in g.proto.graph.initializer:
        if tensor.data_type != TensorProto.FLOAT:
            continue
        for node, _ in g.consumers.get(tensor.name, []):
            op = g.nodes[node].op_type
            if op != "Cast":  # a weight cast to bf16 is BF16 where it is used
                float32_ops.setdefault(op, set()).add(node)
    if float32_ops:
        opset = next(o.version for o in g.proto.opset_import if o.domain in DEFAULT_DOMAINS)
        why = (
            f"; ONNX gives Conv and the pools bfloat16 from opset {BF16_CONV_OPSET} on, this "
            f"file is opset {opset}: write the BF16 file at opset {BF16_CONV_OPSET}"
            if opset < BF16_CONV_OPSET
            else ""
        )
        counts = ", ".join(f"{len(nodes)} {op}" for op, nodes in sorted(float32_ops.items()))
        msg = f"{counts} node(s) of this BF16 graph take float32 weights and run in FP32{why}"
        yield finding("info", "bf16-float32-ops", msg)


def _check_strong_typing(g: OnnxGraph, target: Target) -> Iterator[Finding]:
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)
    types = {t.data_type for t in g.proto.graph.initializer}
    types |= {v.type.tensor_type.elem_type for v in g.proto.graph.input}
    types &= set(floats)
    if target.major >= 11 and not g.has_qdq and types == {TensorProto.FLOAT}:
        msg = (
            f"TensorRT {target.label} networks are strongly typed: this FP32 graph builds an "
            "FP32 engine (11 has no --fp16/--int8/--bf16); use an FP16 or BF16 graph "
            "(`compressor export` writes model.fp16.onnx and model.bf16.onnx beside it; "
            "export.fp16 / export.bf16 in Python) or Q/DQ nodes for INT8 (model.int8.onnx)"
        )
        yield finding("info", "strongly-typed-fp32", msg)


def check_readiness(
    model: str | Path | onnx.ModelProto,
    *,
    trt_version: str = "10",
    profiles: Mapping[str, tuple[Shape, Shape, Shape]] | None = None,
    dla: bool = False,
) -> ReadinessReport:
    """Lint `model` for TensorRT `trt_version` ("8.6", "10", "10.x", "10.8", "11", ...).

    `profiles` maps input names to (min, opt, max) shapes, as trtexec --minShapes/--optShapes/
    --maxShapes; `dla` adds the checks for a Jetson DLA core. Raises ExportConfigError for an
    unknown version or a malformed profile, ExportInputError for a missing or non-ONNX file,
    OnnxValidationError when onnx.checker rejects the model.
    """
    target = parse_trt_version(trt_version)
    proto, source = _load(model)
    g = OnnxGraph(proto)
    findings = [
        *_check_operators(proto, target),
        *_check_inputs(proto, profiles, dla),
        *check_qdq(g, target, dla),
        *_check_dtypes(g, target),
        *(_check_dla(g, target) if dla else ()),
        *_check_bf16(g, target, dla),
        *_check_strong_typing(g, target),
    ]
    findings.sort(key=lambda f: SEVERITIES.index(f.severity))  # stable: graph order kept
    return ReadinessReport(trt_version=target.label, findings=tuple(findings), source=source)
