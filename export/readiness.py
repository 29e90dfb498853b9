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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deploy.errors import DeployInputError
from deploy.onnx_files import MAX_ONNX_BYTES, check_external_data
from deploy.paths import check_readable_file
from export.errors import ExportConfigError, ExportInputError, OnnxValidationError, first_line
from export.metadata import refuse_pickle
from export.trt_ops import (
    DEFAULT_DOMAINS,
    DLA_UNSUPPORTED,
    INT8_CONSUMERS,
    MIN_OPSET,
    QDQ,
    QDQ_PASS_THROUGH,
    SHAPE_INPUTS,
    WEIGHT_AXIS,
    Target,
    Version,
    max_opset,
    parse_trt_version,
    quantized_types,
    supported_since,
)

Severity = Literal["error", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = ("error", "warning", "info")
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


@dataclass(frozen=True)
class Finding:
    """One problem: what is wrong and what to do (`message`), and where (`node`, `op_type`)."""

    severity: Severity
    code: str  # stable short id, e.g. "unsupported-op", "qdq-zero-point"
    node: str | None  # node name, or "OpType#index" when the node has none
    op_type: str | None
    message: str

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"Finding.severity: one of {SEVERITIES}, got {self.severity!r}")


@dataclass(frozen=True)
class ReadinessReport:
    """Every finding for one model against one declared TensorRT version."""

    trt_version: str
    findings: tuple[Finding, ...]
    source: str = "<ModelProto>"

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "error")

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "warning")

    @property
    def ok(self) -> bool:
        """No errors: TensorRT should parse and build it (warnings may still cost speed)."""
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        counts = {s: sum(f.severity == s for f in self.findings) for s in SEVERITIES}
        return {
            "trt_version": self.trt_version,
            "source": self.source,
            "ok": self.ok,
            "counts": counts,
            "findings": [asdict(f) for f in self.findings],
        }

    def format(self) -> str:
        """One line per finding (one summary line when there is none)."""
        if not self.findings:
            return f"{self.source}: no findings for TensorRT {self.trt_version}"
        return "\n".join(
            f"{f.severity:<7} {f.code:<28} "
            + (f"{f.op_type} '{f.node}': " if f.node else "")
            + f.message
            for f in self.findings
        )


def _f(severity: Severity, code: str, message: str, node: str | None = None,
       op: str | None = None) -> Finding:  # fmt: skip
    return Finding(severity, code, node, op, message)


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


class _Graph:
    """The top-level graph indexed: labels, producers, consumers, constants by tensor name."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        self.proto = proto
        self.nodes = list(proto.graph.node)
        self.labels = [n.name or f"{n.op_type}#{i}" for i, n in enumerate(self.nodes)]
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[tuple[int, int]]] = {}
        self.consts: dict[str, TensorProto] = {t.name: t for t in proto.graph.initializer}
        for i, node in enumerate(self.nodes):
            self.producer.update((out, i) for out in node.output)
            for pos, name in enumerate(node.input):
                self.consumers.setdefault(name, []).append((i, pos))
            if node.op_type == "Constant" and (value := _constant_value(node)) is not None:
                self.consts[node.output[0]] = value
        self.has_qdq = any(n.op_type in QDQ for n in self.nodes)

    def array(self, name: str) -> np.ndarray | None:
        tensor = self.consts.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def is_weight(self, name: str, depth: int = 4) -> bool:
        """A constant, or a constant through Q/DQ, Cast or Identity (a weight Q/DQ pair)."""
        i = self.producer.get(name)
        if name in self.consts or i is None or depth == 0:
            return name in self.consts
        node = self.nodes[i]
        passes = node.op_type in (*QDQ, "Cast", "Identity")
        return passes and self.is_weight(node.input[0], depth - 1)


def _constant_value(node: onnx.NodeProto) -> TensorProto | None:
    for attr in node.attribute:
        if attr.name == "value":
            return attr.t
        if attr.name in ("value_float", "value_floats", "value_int", "value_ints"):
            value = helper.get_attribute_value(attr)
            dtype = TensorProto.FLOAT if "float" in attr.name else TensorProto.INT64
            dims = [len(value)] if isinstance(value, list) else []
            return helper.make_tensor(node.output[0], dtype, dims, np.ravel(value).tolist())
    return None


def _walk(graph: onnx.GraphProto, functions: Mapping, prefix: str = "") -> Iterator[tuple]:
    """(label, node) for every node, into subgraphs (If/Loop/Scan) and local function bodies."""
    for i, node in enumerate(graph.node):
        label = prefix + (node.name or f"{node.op_type}#{i}")
        yield label, node
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else attr.graphs:
                yield from _walk(sub, functions, f"{label}/{attr.name}/")
        if (body := functions.get((node.domain, node.op_type))) is not None:
            yield from _walk(body, functions, f"{label}/")


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
        yield _f("error", "opset-too-old", msg)
    elif opset is not None and opset > newest:
        msg = (
            f"default-domain opset {opset}: TensorRT {target.label} documents opsets "
            f"{MIN_OPSET}-{newest} and may refuse newer op versions; export with opset "
            f"{newest}, or declare the exact TensorRT release you deploy on"
        )
        yield _f("warning", "opset-too-new", msg)
    functions = {(f.domain, f.name): f for f in proto.functions}
    for label, node in _walk(proto.graph, functions):
        if (node.domain, node.op_type) in functions:
            if target.major < 9:
                msg = (
                    f"calls model-local function {node.op_type!r}; the TensorRT "
                    f"{target.label} parser cannot import local functions (9.0 added them); "
                    "inline them with onnx.inliner.inline_local_functions"
                )
                yield _f("error", "local-function", msg, label, node.op_type)
        elif node.domain not in DEFAULT_DOMAINS:
            msg = (
                f"op {node.op_type!r} is in the custom domain {node.domain!r}; TensorRT imports "
                f"it only as a plugin named {node.op_type!r}: register one (IPluginV3) for the "
                "engine build, or export without the custom op"
            )
            yield _f("error", "custom-op", msg, label, node.op_type)
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
        yield _f("error", "unsupported-op", msg, label, op)
    elif since <= target.ceiling:
        msg = (
            f"{op} is supported from TensorRT {since[0]}.{since[1]} on; older {target.major}.x "
            f"parsers{' (e.g. 10.3 on JetPack 6)' if target.major == 10 else ''} refuse it; "
            "declare the exact release you deploy on, or replace the op"
        )
        yield _f("warning", "op-needs-newer-release", msg, label, op)
    else:
        msg = (
            f"{op} is not supported by the TensorRT {target.label} ONNX parser (it is from "
            f"{since[0]}.{since[1]} on); upgrade TensorRT or replace the op"
        )
        yield _f("error", "unsupported-op", msg, label, op)


def _check_inputs(
    proto: onnx.ModelProto, profiles: Mapping[str, Sequence[Shape]] | None, dla: bool
) -> Iterator[Finding]:
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [v for v in proto.graph.input if v.name not in initializers]
    profiles = dict(profiles or {})
    for name in sorted(set(profiles) - {v.name for v in inputs}):
        msg = f"profile given for {name!r}, which is not a graph input ({[v.name for v in inputs]})"
        yield _f("error", "profile-unknown-input", msg)
    for value in inputs:
        if not value.type.HasField("tensor_type"):  # onnx.checker already demands a shape
            kind = str(value.type.WhichOneof("value")).removesuffix("_type")
            msg = f"input {value.name!r} is a {kind}; TensorRT engine inputs are tensors only"
            yield _f("error", "input-not-tensor", msg)
            continue
        dims = [d.dim_value if d.dim_value > 0 else None for d in value.type.tensor_type.shape.dim]
        dynamic = [axis for axis, d in enumerate(dims) if d is None]
        if value.name not in profiles:
            yield from (_no_profile(value, dims, axis) for axis in dynamic)
            if dla and dynamic:
                msg = f"input {value.name!r} has dynamic axes {dynamic}; DLA needs fixed shapes"
                yield _f("warning", "dla-dynamic-shape", msg)
            continue
        shapes = _profile_shapes(value.name, profiles[value.name])
        problems = _profile_problems(dims, shapes)
        if problems:
            msg = (
                f"profile for input {value.name!r} (shape {_dims_text(dims)}): "
                f"{'; '.join(problems)}; give (min, opt, max) shapes of the input's rank, "
                "min <= opt <= max, static dims unchanged"
            )
            yield _f("error", "profile-invalid", msg)
        elif dla and shapes[0] != shapes[2]:
            msg = f"profile for {value.name!r}: DLA needs min == opt == max, got {shapes}"
            yield _f("warning", "dla-dynamic-shape", msg)


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
    return _f("warning", "dynamic-dim-no-profile", msg)


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


def _check_qdq(g: _Graph, target: Target, dla: bool) -> Iterator[Finding]:
    allowed = quantized_types(target.floor)
    for i, node in enumerate(g.nodes):
        if node.op_type in QDQ and node.domain in DEFAULT_DOMAINS:
            yield from _check_qdq_types(g, i, target, allowed, dla)
            yield from _check_qdq_scale(g, i)
        if g.has_qdq and node.op_type == "DequantizeLinear" and not g.is_weight(node.input[0]):
            yield from _check_dq_consumers(g, i)
        if g.has_qdq and node.op_type in WEIGHT_AXIS and len(node.input) > 1:
            yield from _check_layer_quantized(g, i)


def _check_qdq_types(
    g: _Graph, i: int, target: Target, allowed: frozenset[int], dla: bool
) -> Iterator[Finding]:
    node, label, op = g.nodes[i], g.labels[i], g.nodes[i].op_type
    zero_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    out_dtype = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
    if zero_name is None and (target.major < 10 or (op == "QuantizeLinear" and not out_dtype)):
        what = "8.6 refuses the node" if target.major < 10 else "quantizes to INT8"
        msg = (
            f"has no zero-point input: ONNX then means UINT8 (onnxruntime clamps to [0, 255]) "
            f"while TensorRT {what}; add an INT8 zero point of 0 so both runtimes agree"
        )
        yield _f("error" if target.major < 10 else "warning", "qdq-zero-point-missing", msg,
                 label, op)  # fmt: skip
    zero, data = g.consts.get(zero_name or ""), g.consts.get(node.input[0])
    qtype = zero.data_type if zero is not None else out_dtype or None
    if qtype is None and op == "DequantizeLinear" and data is not None:
        qtype = data.data_type
    if qtype == TensorProto.UINT8:
        flag = (
            " (DLA-only engines: 10.11+ parser flag kENABLE_UINT8_AND_ASYMMETRIC_QUANTIZATION_DLA)"
        )
        msg = (
            "quantizes to UINT8; TensorRT quantizes to signed INT8 and refuses UINT8 Q/DQ; "
            "re-quantize with QInt8 activations and weights (onnxruntime: "
            "activation_type=QuantType.QInt8, extra_options ActivationSymmetric=True)"
            + (flag if dla else "")
        )
        yield _f("error", "qdq-uint8", msg, label, op)
    elif qtype == TensorProto.INT32:
        msg = (
            "dequantizes an INT32 tensor (onnxruntime's quantized bias); TensorRT dequantizes "
            "8- and 4-bit types only and the parse fails; re-quantize with extra_options "
            "{'QuantizeBias': False} (TensorRT folds the float bias into the INT8 layer)"
        )
        yield _f("error", "qdq-dtype", msg, label, op)
    elif qtype is not None and qtype not in allowed:
        names = ", ".join(sorted(TensorProto.DataType.Name(t) for t in allowed))
        msg = (
            f"quantized type {TensorProto.DataType.Name(qtype)} is not one TensorRT "
            f"{target.label} quantizes to ({names}); re-quantize to INT8"
        )
        yield _f("error", "qdq-dtype", msg, label, op)
    zeros = g.array(zero_name) if zero_name else None
    if zeros is not None and np.any(zeros.astype(np.float64) != 0):
        shown = ", ".join(f"{v:g}" for v in sorted({float(v) for v in zeros.ravel() if v})[:3])
        msg = (
            f"zero point {shown} is not 0; TensorRT supports only symmetric quantization and "
            "refuses the node; re-quantize symmetrically (onnxruntime: extra_options "
            "ActivationSymmetric=True, WeightSymmetric=True)"
        )
        yield _f("error", "qdq-zero-point", msg, label, op)


def _check_qdq_scale(g: _Graph, i: int) -> Iterator[Finding]:
    node, label, op = g.nodes[i], g.labels[i], g.nodes[i].op_type
    scale = g.array(node.input[1])
    if scale is not None and np.any(scale.astype(np.float64) <= 0):
        msg = (
            "has a scale <= 0; TensorRT needs every scale positive (a dead channel at calibration?)"
        )
        yield _f("error", "qdq-scale", msg, label, op)
    if scale is None or scale.size <= 1:
        return
    if not g.is_weight(node.input[0]):
        msg = (
            f"has {scale.size} scales on an activation; TensorRT quantizes activations per "
            "tensor only (per-channel is for weights); use one scale for this tensor"
        )
        yield _f("error", "qdq-per-channel-activation", msg, label, op)
        return
    data = g.consts.get(node.input[0])
    given = next((a.i for a in node.attribute if a.name == "axis"), None)
    axis = 1 if given is None else given  # ONNX's default axis is 1, TensorRT's importer 0
    axis = axis + len(data.dims) if axis < 0 and data is not None else axis
    for j, pos in g.consumers.get(node.output[0], []) if op == "DequantizeLinear" else []:
        layer, expected = g.nodes[j].op_type, WEIGHT_AXIS.get(g.nodes[j].op_type)
        if pos == 1 and expected is not None and axis != expected:
            msg = (
                f"per-channel weight scales on axis {axis}"
                + (" (the ONNX default: no axis attribute)" if given is None else "")
                + f" feed {layer} '{g.labels[j]}'; "
                f"TensorRT quantizes {layer} weights per output channel, axis {expected}; "
                f"re-quantize with axis={expected}"
            )
            yield _f("error", "qdq-weight-axis", msg, label, op)


def _check_dq_consumers(g: _Graph, i: int) -> Iterator[Finding]:
    """A Q/DQ pair stranded between ops TensorRT runs in float: a DQ whose consumer is not
    INT8-capable, on a tensor no INT8 layer produced (an INT8 layer's output Q is fused)."""
    j = _first_float_consumer(g, g.nodes[i].output[0])
    if j is None or _quantizes_int8_output(g, g.nodes[i].input[0]):
        return
    msg = (
        f"feeds {g.nodes[j].op_type} '{g.labels[j]}', which TensorRT does not run in INT8, and "
        "no INT8 layer produces its input: the Q/DQ pair stays as separate quantize and "
        "dequantize kernels and only adds rounding error; exclude that node from quantization "
        "(onnxruntime nodes_to_exclude / op_types_to_quantize), or quantize the inputs of "
        "Conv/Gemm/MatMul/pooling/Add only"
    )
    yield _f("warning", "qdq-unfusable", msg, g.labels[i], g.nodes[i].op_type)


def _quantizes_int8_output(g: _Graph, tensor: str, depth: int = 6) -> bool:
    """`tensor` comes from a QuantizeLinear of an INT8-capable layer's output."""
    q = g.producer.get(tensor)
    if q is None or g.nodes[q].op_type != "QuantizeLinear":
        return False
    i = g.producer.get(g.nodes[q].input[0])
    while i is not None and g.nodes[i].op_type in QDQ_PASS_THROUGH and depth > 0:
        i, depth = g.producer.get(g.nodes[i].input[0]), depth - 1
    return i is not None and g.nodes[i].op_type in INT8_CONSUMERS - {"QuantizeLinear"}


def _first_float_consumer(g: _Graph, tensor: str, depth: int = 6) -> int | None:
    """The first op reached from `tensor`, across pass-through ops, that is not INT8-capable."""
    for j, _ in g.consumers.get(tensor, []):
        node = g.nodes[j]
        if node.op_type in QDQ_PASS_THROUGH and depth > 0:
            for out in node.output:
                if (found := _first_float_consumer(g, out, depth - 1)) is not None:
                    return found
        elif node.op_type not in INT8_CONSUMERS:
            return j
    return None


def _check_layer_quantized(g: _Graph, i: int) -> Iterator[Finding]:
    node, label = g.nodes[i], g.labels[i]
    weight_from = g.producer.get(node.input[1])
    if weight_from is None or g.nodes[weight_from].op_type != "DequantizeLinear":
        msg = (
            "has float weights (no DequantizeLinear) in a Q/DQ model, so TensorRT keeps this "
            "layer in FP32/FP16; quantize its weights per channel if it should run in INT8"
        )
        yield _f("warning", "qdq-weight-not-quantized", msg, label, node.op_type)
    elif not _from_dequantize(g, node.input[0]):
        msg = (
            "has quantized weights but a float input; TensorRT runs it in float with "
            "dequantized weights (no INT8 kernel); add a Q/DQ pair on its input"
        )
        yield _f("warning", "qdq-activation-not-quantized", msg, label, node.op_type)


def _from_dequantize(g: _Graph, tensor: str, depth: int = 6) -> bool:
    i = g.producer.get(tensor)
    if i is None or depth == 0:
        return False
    node = g.nodes[i]
    if node.op_type == "DequantizeLinear":
        return True
    return node.op_type in QDQ_PASS_THROUGH and _from_dequantize(g, node.input[0], depth - 1)


def _check_dtypes(g: _Graph, target: Target) -> Iterator[Finding]:
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
        yield _f("warning", "double-tensor", msg)
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
        yield _f("warning" if clamped else "info", "int64-weights", msg)


def _check_dla(g: _Graph, target: Target) -> Iterator[Finding]:
    # "Working with DLA" (11.4.1 docs): 10.7 was the last 10.x with DLA on Jetson; 11.0-11.3
    # have none; 11.4.1 brings it back on Jetson AGX Orin with JetPack 7.2.2+.
    if target.floor >= (11, 0) and target.ceiling <= (11, 3):
        msg = (
            f"TensorRT {target.label} has no DLA support (none in 11.0-11.3); build DLA engines "
            "with 10.7 or earlier, or 11.4.1+ on Jetson AGX Orin (JetPack 7.2.2+)"
        )
        yield _f("error", "dla-unavailable", msg)
    elif target.ceiling > (10, 7) and target.floor < (11, 4):
        msg = (
            f"DLA builds need TensorRT <= 10.7 or >= 11.4.1 (Jetson AGX Orin); check that "
            f"your {target.label} release supports DLA"
        )
        yield _f("warning", "dla-unavailable", msg)
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
        yield _f("warning", "dla-unsupported-op", msg, labels[0], op)
    if not g.has_qdq:
        msg = "DLA runs FP16 or INT8 only: build with --fp16/--int8 (10.x) or give an FP16 graph"
        yield _f("info", "dla-precision", msg)


def _check_strong_typing(g: _Graph, target: Target) -> Iterator[Finding]:
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)
    types = {t.data_type for t in g.proto.graph.initializer}
    types |= {v.type.tensor_type.elem_type for v in g.proto.graph.input}
    types &= set(floats)
    if target.major >= 11 and not g.has_qdq and types == {TensorProto.FLOAT}:
        msg = (
            f"TensorRT {target.label} networks are strongly typed: this FP32 graph builds an "
            "FP32 engine (11 has no --fp16/--int8); convert the ONNX to FP16 (e.g. ModelOpt "
            "AutoCast) or add Q/DQ nodes for INT8"
        )
        yield _f("info", "strongly-typed-fp32", msg)


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
    g = _Graph(proto)
    findings = [
        *_check_operators(proto, target),
        *_check_inputs(proto, profiles, dla),
        *_check_qdq(g, target, dla),
        *_check_dtypes(g, target),
        *(_check_dla(g, target) if dla else ()),
        *_check_strong_typing(g, target),
    ]
    findings.sort(key=lambda f: SEVERITIES.index(f.severity))  # stable: graph order kept
    return ReadinessReport(trt_version=target.label, findings=tuple(findings), source=source)
