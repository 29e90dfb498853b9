"""An ONNX graph indexed for the readiness checks: producers, consumers and constants by
tensor name, and a walk into subgraphs and local functions."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.trt_ops import QDQ


class OnnxGraph:
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
            if node.op_type == "Constant" and (value := constant_value(node)) is not None:
                self.consts[node.output[0]] = value
        self.has_qdq = any(n.op_type in QDQ for n in self.nodes)

    def readers(self, tensor: str, op_type: str | None = None) -> list[int]:
        """The nodes reading `tensor` (of `op_type` only, if given), in graph order."""
        found = [j for j, _ in self.consumers.get(tensor, [])]
        return [j for j in found if op_type is None or self.nodes[j].op_type == op_type]

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


def constant_value(node: onnx.NodeProto) -> TensorProto | None:
    for attr in node.attribute:
        if attr.name == "value":
            return attr.t
        if attr.name in ("value_float", "value_floats", "value_int", "value_ints"):
            value = helper.get_attribute_value(attr)
            dtype = TensorProto.FLOAT if "float" in attr.name else TensorProto.INT64
            dims = [len(value)] if isinstance(value, list) else []
            return helper.make_tensor(node.output[0], dtype, dims, np.ravel(value).tolist())
    return None


def walk_nodes(graph: onnx.GraphProto, functions: Mapping, prefix: str = "") -> Iterator[tuple]:
    """(label, node) for every node, into subgraphs (If/Loop/Scan) and local function bodies."""
    for i, node in enumerate(graph.node):
        label = prefix + (node.name or f"{node.op_type}#{i}")
        yield label, node
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else attr.graphs:
                yield from walk_nodes(sub, functions, f"{label}/{attr.name}/")
        if (body := functions.get((node.domain, node.op_type))) is not None:
            yield from walk_nodes(body, functions, f"{label}/")
