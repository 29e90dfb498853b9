"""Where the INT8 file's Q/DQ pairs go: TensorRT's fusion rules ("tensorrt") or onnxruntime's
QDQ default ("all"), and how many pairs feed each op type.

"all" is what `quantize_static` writes for every node of `op_types`: a Q/DQ pair on each
input and on each output, so one sits between every Conv and its ReLU and on both inputs of
every residual Add. TensorRT builds a Conv + bias + activation (+ residual Add) into one
kernel, quantized at its inputs, only when nothing quantized sits inside that group; an extra
pair makes the fused kernel write an INT8 tensor that a separate kernel re-quantizes to the
next scale (a reformat), and rounds the tensor twice.

"tensorrt" follows TensorRT's Q/DQ placement recommendations (developer guide, "Q/DQ layer
placement": quantize all inputs of weighted operations, do not quantize their outputs,
quantize the residual input of an element-wise add so the add fuses into the convolution)
and NVIDIA ModelOpt's ONNX INT8 placement (`modelopt/onnx/quantization/int8.py`, read, not
copied), which does the same with onnxruntime and a clean-up pass:
- weights and activations at the inputs of Conv / Gemm / MatMul; no output quantized, so
  no pair between a Conv and its activation;
- a residual Add keeps one quantized input, the shortcut; the input from the convolution it
  fuses into is left in float (with two convolution inputs, as in a projection shortcut, the
  one on the longer path from the block's input is the fused one, as ModelOpt decides);
- the classifier (the last Gemm/MatMul before the output) left in float by default.

Why the classifier stays in float by default: ModelOpt leaves out every Gemm/MatMul that is a
GEMV (one of M, N is 1; a batch-1 classifier is one), because a GEMV cannot use INT8 tensor
cores and its Q/DQ only adds kernels; it is also the layer whose rounding lands on the logits
directly. `quantize_classifier=True` quantizes it anyway.

Only onnx is needed here (the lint imports this module and must run without onnxruntime).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import onnx

from export.onnx_graph import OnnxGraph

QdqPlacement = Literal["tensorrt", "all"]
PLACEMENTS: tuple[str, ...] = get_args(QdqPlacement)
# Ops TensorRT runs as weighted layers, quantized at their inputs; their outputs stay float.
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# Pointwise activations TensorRT fuses into the weighted layer before it (its epilogue).
ACTIVATIONS = frozenset(
    {"Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu"}
    | {"Softplus", "Gelu", "Mish", "PRelu", "ThresholdedRelu"}
)
# Ops a classifier's output may pass through on its way to the graph output.
_CLASSIFIER_TAIL = frozenset(
    {"Reshape", "Flatten", "Identity", "Softmax", "LogSoftmax", "Squeeze", "Cast"}
    | {"Transpose", "Add", "Mul"}  # Add/Mul only with a constant (a bias or a scale)
)
_FOLDED = frozenset({"BatchNormalization"})  # folded into the Conv before it by TensorRT
_SEARCH_LIMIT = 256  # nodes visited looking for a residual block's common ancestor


@dataclass(frozen=True)
class PlacementPlan:
    """What onnxruntime is asked to quantize, and which pairs are removed after it."""

    placement: str
    # None: every node of op_types (onnxruntime's default); () means nothing to quantize.
    nodes_to_quantize: tuple[str, ...] | None
    nodes_to_exclude: tuple[str, ...]
    extra_options: dict[str, Any] = field(default_factory=dict)  # added to quantize_static's
    # (Add node, input index): the input from the convolution the Add fuses into; its Q/DQ
    # pair is removed after onnxruntime wrote it (onnxruntime quantizes all inputs of a node).
    fused_add_inputs: tuple[tuple[str, int], ...] = ()
    classifier: str | None = None  # the classifier node found, quantized or not
    classifier_quantized: bool = True
    renamed_nodes: int = 0  # unnamed nodes named here so they can be listed for onnxruntime


@dataclass(frozen=True)
class QdqCounts:
    """QuantizeLinear and DequantizeLinear nodes, in all and by the op type they feed.

    A Q counts for the op types its DQs feed. A pair shared by several consumers counts once
    under each op type it feeds, so the per-type figures can add up to more than the totals;
    "(output)" is a graph output.
    """

    quantize: int
    dequantize: int
    by_op_type: dict[str, dict[str, int]]  # op type fed -> {"Q": n, "DQ": n}

    def to_dict(self) -> dict[str, Any]:
        return {"Q": self.quantize, "DQ": self.dequantize, "by_op_type": self.by_op_type}


def plan_placement(
    model: onnx.ModelProto,
    op_types: Iterable[str],
    placement: str,
    quantize_classifier: bool | None,
) -> PlacementPlan:
    """The plan for `model` (the graph onnxruntime will quantize); names unnamed nodes of
    `model` in place for "tensorrt", which lists nodes by name."""
    op_types = set(op_types)
    # Nodes are listed by name for "tensorrt", and the classifier excluded by name for "all"
    # (onnxruntime would exclude every unnamed node with it); "all" stays byte-identical to
    # onnxruntime's own placement otherwise.
    lists_nodes = placement == "tensorrt" or quantize_classifier is False
    renamed = _name_nodes_(model) if lists_nodes else 0
    g = OnnxGraph(model)
    classifier = next(iter(classifier_nodes(g)), None)
    name = None if classifier is None else g.nodes[classifier].name
    if placement == "all":  # onnxruntime's placement, the classifier included unless told
        excluded = (name,) if name and quantize_classifier is False else ()
        return PlacementPlan("all", None, excluded, classifier=name,
                             classifier_quantized=not excluded,
                             renamed_nodes=renamed)  # fmt: skip
    keep_classifier = bool(quantize_classifier)
    fused = residual_adds(g)
    chosen = []
    for i, node in enumerate(g.nodes):
        if node.op_type not in op_types or (i == classifier and not keep_classifier):
            continue
        if node.op_type == "Add" and node.name not in fused:
            continue  # not a residual Add: TensorRT runs it in float, a pair only rounds
        chosen.append(node.name)
    return PlacementPlan(
        "tensorrt",
        tuple(chosen),
        (),
        {"OpTypesToExcludeOutputQuantization": sorted({n.op_type for n in g.nodes})},
        tuple(sorted(fused.items())),
        classifier=name,
        classifier_quantized=keep_classifier or name is None,
        renamed_nodes=renamed,
    )


def residual_adds(g: OnnxGraph) -> dict[str, int]:
    """Add name -> index of its input from the weighted layer it fuses into, for each Add of
    two computed tensors at least one of which a weighted layer alone consumes."""
    found = {}
    for i, node in enumerate(g.nodes):
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        if any(name in g.consts or name not in g.producer for name in node.input):
            continue  # a bias or a graph input: nothing to fuse
        weighted = [fusable_producer(g, name, i) is not None for name in node.input]
        if weighted == [True, True]:
            found[node.name] = main_branch(g, node)
        elif any(weighted):
            found[node.name] = weighted.index(True)
    return found


def fusable_producer(g: OnnxGraph, tensor: str, consumer: int) -> int | None:
    """The weighted layer computing `tensor` (across a BatchNormalization) whose output only
    node `consumer` reads: the layer TensorRT can fuse that consumer into.

    Every tensor on the way must have that one reader: a conv (or its batch norm) output
    that another layer also reads stays a tensor of its own, so nothing fuses into the conv.
    """
    outputs = {value.name for value in g.proto.graph.output}
    i, reader = g.producer.get(tensor), consumer
    while i is not None and g.nodes[i].op_type in _FOLDED:
        if not _read_only_by(g, i, reader, outputs):
            return None
        i, reader = g.producer.get(g.nodes[i].input[0]), i
    if i is None or g.nodes[i].op_type not in WEIGHTED_OPS:
        return None
    return i if _read_only_by(g, i, reader, outputs) else None


def _read_only_by(g: OnnxGraph, node: int, reader: int, outputs: set[str]) -> bool:
    """Whether node `reader` alone reads the outputs of `node` (no other node, no graph
    output)."""
    produced = g.nodes[node].output
    readers = {j for out in produced for j in g.readers(out)}
    return readers == {reader} and not outputs.intersection(produced)


def classifier_nodes(g: OnnxGraph) -> list[int]:
    """The Gemm/MatMul nodes whose output reaches a graph output through reshapes, softmax
    or a constant bias only: the classifier heads."""
    found = []
    for output in g.proto.graph.output:
        i = g.producer.get(output.name)
        while i is not None and g.nodes[i].op_type in _CLASSIFIER_TAIL:
            data = list(g.nodes[i].input[:1])  # the data input; shapes and axes follow it
            if g.nodes[i].op_type in ("Add", "Mul"):
                data = [name for name in g.nodes[i].input if name not in g.consts]
            i = g.producer.get(data[0]) if len(data) == 1 else None
        if i is not None and g.nodes[i].op_type in ("Gemm", "MatMul") and i not in found:
            found.append(i)
    return found


def remove_fused_input_qdq_(model: onnx.ModelProto, plan: PlacementPlan) -> int:
    """Reconnect each fused Add input of `plan` to the tensor its Q/DQ pair quantized, then
    drop the Q/DQ nodes and scales nothing reads any more; returns the inputs reconnected."""
    g = OnnxGraph(model)
    by_name = {node.name: node for node in g.nodes}
    reconnected = 0
    for add_name, index in plan.fused_add_inputs:
        add = by_name.get(add_name)
        dq = g.producer.get(add.input[index]) if add is not None else None
        if dq is None or g.nodes[dq].op_type != "DequantizeLinear":
            continue
        q = g.producer.get(g.nodes[dq].input[0])
        if q is None or g.nodes[q].op_type != "QuantizeLinear":
            continue
        add.input[index] = g.nodes[q].input[0]
        reconnected += 1
    if reconnected:
        _drop_unread_qdq_(model)
    return reconnected


def _drop_unread_qdq_(model: onnx.ModelProto) -> None:
    graph = model.graph
    while True:
        read = {name for node in graph.node for name in node.input}
        read |= {output.name for output in graph.output}
        unread = [
            node
            for node in graph.node
            if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.output[0] not in read
        ]
        if not unread:
            break
        for node in unread:
            graph.node.remove(node)
    read = {name for node in graph.node for name in node.input}
    for init in [init for init in graph.initializer if init.name not in read]:
        graph.initializer.remove(init)


def count_qdq(model: onnx.ModelProto) -> QdqCounts:
    """Q and DQ nodes of `model`'s main graph, in all and by the op type each one feeds."""
    g = OnnxGraph(model)
    outputs = {output.name for output in model.graph.output}
    by_type: dict[str, Counter[str]] = {}
    totals: Counter[str] = Counter()
    for i, node in enumerate(g.nodes):
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        kind = "Q" if node.op_type == "QuantizeLinear" else "DQ"
        totals[kind] += 1
        dqs = [i] if kind == "DQ" else g.readers(node.output[0])
        fed = set()
        for j in dqs:
            out = g.nodes[j].output[0]
            fed.update(g.nodes[k].op_type for k in g.readers(out))
            if out in outputs:
                fed.add("(output)")
        for op_type in fed - {"DequantizeLinear"}:
            by_type.setdefault(op_type, Counter())[kind] += 1
    return QdqCounts(
        totals["Q"],
        totals["DQ"],
        {op: {"Q": c["Q"], "DQ": c["DQ"]} for op, c in sorted(by_type.items())},
    )


def main_branch(g: OnnxGraph, add: onnx.NodeProto) -> int:
    """Which input of an Add of two convolutions is the main branch: the one on the longer
    path back to the nearest node both come from (the shortcut is the shorter path)."""
    first, second = (_distances(g, name) for name in add.input[:2])
    common = first.keys() & second.keys()
    if not common:
        return 0
    nearest = min(common, key=lambda i: (first[i] + second[i], i))
    return 0 if first[nearest] >= second[nearest] else 1


def _distances(g: OnnxGraph, tensor: str) -> dict[int, int]:
    """Node index -> nodes on the shortest path back from `tensor` to it."""
    start = g.producer.get(tensor)
    if start is None:
        return {}
    seen, queue = {start: 1}, deque([start])
    while queue and len(seen) < _SEARCH_LIMIT:
        i = queue.popleft()
        for name in g.nodes[i].input:
            j = g.producer.get(name)
            if j is not None and j not in seen:
                seen[j] = seen[i] + 1
                queue.append(j)
    return seen


def _name_nodes_(model: onnx.ModelProto) -> int:
    """Give each unnamed node of the main graph a unique name; returns how many."""
    taken = Counter(node.name for node in model.graph.node if node.name)
    named = 0
    for i, node in enumerate(model.graph.node):
        if not node.name:
            candidate = f"{node.op_type}_{i}"
            while candidate in taken:
                candidate += "_"
            node.name, taken[candidate] = candidate, 1
            named += 1
    return named
