"""Where each residual block of an exported model starts and ends, as ONNX tensor names.

`deploy profile-blocks` times every removable block on its own, on the device the model
ships to (a Jetson with only `deploy` installed), by cutting the block's subgraph out of the
dense ONNX between two tensors. Only the exporter knows which ONNX nodes came from which
module, and it says so in per-node metadata that the written file does not keep (it holds
absolute source paths); so the boundaries are read here, from the in-memory graph, before
that metadata is stripped.

Both exporters record the module path: dynamo in `pkg.torch.onnx.name_scopes` (a list of
qualified module names), TorchScript in the node name ("/layer1/layer1.0/conv1/Conv").
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass

import onnx

from export.errors import BlockBoundaryError

_DYNAMO_SCOPES = "pkg.torch.onnx.name_scopes"


@dataclass(frozen=True)
class BlockBoundary:
    """One block as a subgraph of the exported file: it reads `input` and writes `output`."""

    name: str  # the module's qualified name, e.g. "layer2.3"
    input: str  # the ONNX tensor the block reads (the previous block's output)
    output: str  # the ONNX tensor the block writes
    nodes: int  # ONNX nodes inside the block


def block_boundaries(proto: onnx.ModelProto, names: Sequence[str]) -> tuple[BlockBoundary, ...]:
    """The boundary tensors of the modules `names` in `proto` (as exported, before its node
    metadata is stripped); a BlockBoundaryError names a module that is not one subgraph with one
    input and one output (a block whose shortcut reads an earlier tensor, say)."""
    scopes = [_scopes(node) for node in proto.graph.node]
    constants = _constant_tensors(proto.graph)
    graph_outputs = {out.name for out in proto.graph.output}
    found = []
    for name in names:
        inside = [
            node for node, scope in zip(proto.graph.node, scopes, strict=True) if name in scope
        ]
        if not inside:
            raise BlockBoundaryError(
                f"block {name}: no ONNX node of the export comes from this module (the "
                "exporter kept no module scopes, or the module is not called in forward)"
            )
        produced = {out for node in inside for out in node.output}
        reads = {
            tensor
            for node in inside
            for tensor in node.input
            if tensor and tensor not in produced and tensor not in constants
        }
        outside = [
            node for node, scope in zip(proto.graph.node, scopes, strict=True) if name not in scope
        ]
        used_outside = {tensor for node in outside for tensor in node.input}
        writes = {t for t in produced if t in used_outside or t in graph_outputs}
        if len(reads) != 1 or len(writes) != 1:
            raise BlockBoundaryError(
                f"block {name}: its ONNX subgraph reads {sorted(reads)} and writes "
                f"{sorted(writes)}; a block that can be timed alone reads one tensor and "
                "writes one"
            )
        found.append(BlockBoundary(name, reads.pop(), writes.pop(), len(inside)))
    return tuple(found)


def _constant_tensors(graph: onnx.GraphProto) -> set[str]:
    """Initializers and what is computed from them alone (TorchScript shares equal weights
    through scope-less Identity nodes): weights, not a block's input."""
    constants = {init.name for init in graph.initializer}
    pending = list(graph.node)
    while True:  # to a fixed point: exporters do not always list these nodes first
        ready = [n for n in pending if all(not i or i in constants for i in n.input)]
        if not ready:
            return constants
        for node in ready:
            constants.update(node.output)
        pending = [n for n in pending if n not in ready]


def _scopes(node: onnx.NodeProto) -> frozenset[str]:
    """The qualified names of the modules a node was exported from."""
    for prop in node.metadata_props:
        if prop.key == _DYNAMO_SCOPES:
            try:
                path = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return frozenset()
            # The last entry names the op itself, not a module.
            return frozenset(str(p) for p in path[:-1] if p)
    if node.name.startswith("/"):  # TorchScript: "/layer1/layer1.0/conv1/Conv"
        return frozenset(part for part in node.name.split("/")[1:-1] if part)
    return frozenset()


__all__ = ["BlockBoundary", "block_boundaries"]
