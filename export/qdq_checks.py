"""The readiness checks of quantize/dequantize (Q/DQ) pairs: types, scales, zero points,
which layers TensorRT can run in INT8 from them (`export.trt_ops` says what each release
accepts), and pairs placed where TensorRT cannot fuse them (`export.qdq_placement` says where
they go instead). A misplaced pair still builds: those findings are warnings."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from onnx import TensorProto

from export.findings import Finding, finding
from export.onnx_graph import OnnxGraph
from export.qdq_placement import ACTIVATIONS, fusable_producer, main_branch
from export.trt_ops import (
    DEFAULT_DOMAINS,
    INT8_CONSUMERS,
    QDQ,
    QDQ_PASS_THROUGH,
    WEIGHT_AXIS,
    Target,
    quantized_types,
)


def check_qdq(g: OnnxGraph, target: Target, dla: bool) -> Iterator[Finding]:
    allowed = quantized_types(target.floor)
    for i, node in enumerate(g.nodes):
        if node.op_type in QDQ and node.domain in DEFAULT_DOMAINS:
            yield from _check_qdq_types(g, i, target, allowed, dla)
            yield from _check_qdq_scale(g, i)
        if g.has_qdq and node.op_type == "DequantizeLinear" and not g.is_weight(node.input[0]):
            yield from _check_dq_consumers(g, i)
            yield from _check_dq_output(g, i)
        if g.has_qdq and node.op_type == "QuantizeLinear":
            yield from _check_before_activation(g, i)
        if g.has_qdq and node.op_type == "Add" and len(node.input) == 2:
            yield from _check_residual_add(g, i)
        if g.has_qdq and node.op_type in WEIGHT_AXIS and len(node.input) > 1:
            yield from _check_layer_quantized(g, i)


def _check_qdq_types(
    g: OnnxGraph, i: int, target: Target, allowed: frozenset[int], dla: bool
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
        yield finding("error" if target.major < 10 else "warning", "qdq-zero-point-missing", msg,
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
        yield finding("error", "qdq-uint8", msg, label, op)
    elif qtype == TensorProto.INT32:
        msg = (
            "dequantizes an INT32 tensor (onnxruntime's quantized bias); TensorRT dequantizes "
            "8- and 4-bit types only and the parse fails; re-quantize with extra_options "
            "{'QuantizeBias': False} (TensorRT folds the float bias into the INT8 layer)"
        )
        yield finding("error", "qdq-dtype", msg, label, op)
    elif qtype is not None and qtype not in allowed:
        names = ", ".join(sorted(TensorProto.DataType.Name(t) for t in allowed))
        msg = (
            f"quantized type {TensorProto.DataType.Name(qtype)} is not one TensorRT "
            f"{target.label} quantizes to ({names}); re-quantize to INT8"
        )
        yield finding("error", "qdq-dtype", msg, label, op)
    zeros = g.array(zero_name) if zero_name else None
    if zeros is not None and np.any(zeros.astype(np.float64) != 0):
        shown = ", ".join(f"{v:g}" for v in sorted({float(v) for v in zeros.ravel() if v})[:3])
        msg = (
            f"zero point {shown} is not 0; TensorRT supports only symmetric quantization and "
            "refuses the node; re-quantize symmetrically (onnxruntime: extra_options "
            "ActivationSymmetric=True, WeightSymmetric=True)"
        )
        yield finding("error", "qdq-zero-point", msg, label, op)


def _check_qdq_scale(g: OnnxGraph, i: int) -> Iterator[Finding]:
    node, label, op = g.nodes[i], g.labels[i], g.nodes[i].op_type
    scale = g.array(node.input[1])
    if scale is not None and np.any(scale.astype(np.float64) <= 0):
        msg = (
            "has a scale <= 0; TensorRT needs every scale positive (a dead channel at calibration?)"
        )
        yield finding("error", "qdq-scale", msg, label, op)
    if scale is None or scale.size <= 1:
        return
    if not g.is_weight(node.input[0]):
        msg = (
            f"has {scale.size} scales on an activation; TensorRT quantizes activations per "
            "tensor only (per-channel is for weights); use one scale for this tensor"
        )
        yield finding("error", "qdq-per-channel-activation", msg, label, op)
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
            yield finding("error", "qdq-weight-axis", msg, label, op)


def _check_dq_consumers(g: OnnxGraph, i: int) -> Iterator[Finding]:
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
    yield finding("warning", "qdq-unfusable", msg, g.labels[i], g.nodes[i].op_type)


def _check_before_activation(g: OnnxGraph, i: int) -> Iterator[Finding]:
    """A pair on a weighted layer's (or an Add's) output that an activation reads:
    Conv -> Q -> DQ -> Relu, or Add -> Q -> DQ -> Relu after a residual Add."""
    tensor = g.nodes[i].input[0]
    layer = fusable_producer(g, tensor, i)
    add = g.producer.get(tensor)
    if layer is None and add is not None and g.nodes[add].op_type == "Add":
        layer = add if g.readers(tensor) == [i] else None
    if layer is None:
        return
    conv = f"{g.nodes[layer].op_type} '{g.labels[layer]}'"
    for dq in g.readers(g.nodes[i].output[0], "DequantizeLinear"):
        for j in g.readers(g.nodes[dq].output[0]):
            if g.nodes[j].op_type not in ACTIVATIONS:
                continue
            msg = (
                f"quantizes the output of {conv} before its {g.nodes[j].op_type} "
                f"'{g.labels[j]}' (DequantizeLinear '{g.labels[dq]}'): TensorRT fuses a "
                "layer, its bias, a residual Add and the activation into one kernel quantized "
                "at its inputs; "
                "this pair makes that kernel write the pre-activation tensor in INT8 and a "
                "separate kernel re-quantize it after the activation (a reformat), rounding "
                "it twice; remove the pair (quantize only the inputs of Conv/Gemm/MatMul: "
                "qdq_placement 'tensorrt', or onnxruntime's extra_options "
                "OpTypesToExcludeOutputQuantization)"
            )
            yield finding("warning", "qdq-before-activation", msg, g.labels[i], "QuantizeLinear")


def _check_residual_add(g: OnnxGraph, i: int) -> Iterator[Finding]:
    """An Add whose two inputs are both dequantized, one of them a weighted layer's output."""
    node, pairs = g.nodes[i], {}
    for index, name in enumerate(node.input):
        dq = g.producer.get(name)
        if dq is None or g.nodes[dq].op_type != "DequantizeLinear":
            return  # an input in float: the Add can fuse into the layer computing it
        q = g.producer.get(g.nodes[dq].input[0])
        if q is None or g.nodes[q].op_type != "QuantizeLinear":
            continue
        if g.readers(g.nodes[q].output[0]) != [dq] or g.readers(name) != [i]:
            continue  # the pair also feeds another layer, which needs its INT8 input
        layer = fusable_producer(g, g.nodes[q].input[0], q)
        if layer is not None:
            pairs[index] = (q, layer)
    if not pairs:
        return
    index = main_branch(g, node) if len(pairs) == 2 else next(iter(pairs))
    q, layer = pairs[index]
    conv = f"{g.nodes[layer].op_type} '{g.labels[layer]}'"
    msg = (
        f"both inputs are quantized, including the output of {conv} (QuantizeLinear "
        f"'{g.labels[q]}'): TensorRT fuses a residual Add into the kernel of the layer "
        "computing one input when only the other input (the shortcut) is quantized; with "
        f"both quantized, {conv} writes an INT8 tensor and the Add runs as a kernel of its own "
        "(an extra kernel and reformat); remove the pair on the input from that layer "
        "(qdq_placement 'tensorrt')"
    )
    yield finding("warning", "qdq-residual-both-inputs", msg, g.labels[i], "Add")


def _check_dq_output(g: OnnxGraph, i: int) -> Iterator[Finding]:
    """A Q/DQ pair on a graph output: nothing after it to fuse into."""
    node = g.nodes[i]
    q = g.producer.get(node.input[0])
    outputs = {value.name for value in g.proto.graph.output}
    if node.output[0] not in outputs or q is None or g.nodes[q].op_type != "QuantizeLinear":
        return
    msg = (
        f"dequantizes onto the graph output '{node.output[0]}': the output is rounded to "
        "8 bits, and with no INT8 layer after it TensorRT runs the quantize and dequantize as "
        "kernels of their own; leave the last layer's output in float (qdq_placement "
        "'tensorrt')"
    )
    yield finding("warning", "qdq-output", msg, g.labels[i], "DequantizeLinear")


def _quantizes_int8_output(g: OnnxGraph, tensor: str, depth: int = 6) -> bool:
    """`tensor` comes from a QuantizeLinear of an INT8-capable layer's output."""
    q = g.producer.get(tensor)
    if q is None or g.nodes[q].op_type != "QuantizeLinear":
        return False
    i = g.producer.get(g.nodes[q].input[0])
    while i is not None and g.nodes[i].op_type in QDQ_PASS_THROUGH and depth > 0:
        i, depth = g.producer.get(g.nodes[i].input[0]), depth - 1
    return i is not None and g.nodes[i].op_type in INT8_CONSUMERS - {"QuantizeLinear"}


def _first_float_consumer(g: OnnxGraph, tensor: str, depth: int = 6) -> int | None:
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


def _check_layer_quantized(g: OnnxGraph, i: int) -> Iterator[Finding]:
    node, label = g.nodes[i], g.labels[i]
    weight_from = g.producer.get(node.input[1])
    if weight_from is None or g.nodes[weight_from].op_type != "DequantizeLinear":
        msg = (
            "has float weights (no DequantizeLinear) in a Q/DQ model, so TensorRT keeps this "
            "layer in FP32/FP16; quantize its weights per channel if it should run in INT8"
        )
        yield finding("warning", "qdq-weight-not-quantized", msg, label, node.op_type)
    elif not _from_dequantize(g, node.input[0]):
        msg = (
            "has quantized weights but a float input; TensorRT runs it in float with "
            "dequantized weights (no INT8 kernel); add a Q/DQ pair on its input"
        )
        yield finding("warning", "qdq-activation-not-quantized", msg, label, node.op_type)


def _from_dequantize(g: OnnxGraph, tensor: str, depth: int = 6) -> bool:
    i = g.producer.get(tensor)
    if i is None or depth == 0:
        return False
    node = g.nodes[i]
    if node.op_type == "DequantizeLinear":
        return True
    return node.op_type in QDQ_PASS_THROUGH and _from_dequantize(g, node.input[0], depth - 1)
