"""Cut each block out of the dense ONNX file, so it can be timed alone on any backend.

A block's subgraph is what lies between its two boundary tensors (onnx's own model
extractor). Timing a subgraph alone also times the runtime's per-call cost (binding,
allocating the output, launching), which removing the block from the network does not save;
so each distinct block input shape also gets a baseline graph that only copies its input
(one Identity), timed the same way, and a block's cost is its time less that baseline.

Alone, blocks still take longer than inside the network (each call allocates its output and
wakes the runtime's threads; in the network one node feeds the next), so the table also times
the *skeleton*: the dense network with every listed block cut out by graph surgery (each
block's consumers read its input instead), which is what no block costs. The blocks' costs
are then scaled to add up to network minus skeleton (profile_blocks.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.errors import DeployInputError
from deploy.files import atomic_write_bytes
from deploy.lazy import lazy_import
from deploy.onnx_files import check_onnx_file
from deploy.profiling.blocks_file import BlocksFile


@dataclass(frozen=True)
class Subgraphs:
    blocks: dict[str, Path]  # block name -> its subgraph file
    skeleton: Path  # the network without any of the blocks
    baselines: dict[str, Path]  # shape key ("64x8x8") -> the Identity file for that input
    baseline_of: dict[str, str]  # block name -> its input's shape key


def write_subgraphs(model_path: Path, blocks: BlocksFile, folder: Path) -> Subgraphs:
    """One ONNX file per block and per distinct input shape, written into `folder`."""
    onnx = lazy_import("onnx", "cutting block subgraphs out of an ONNX file")
    check_onnx_file(model_path)
    model = onnx.load(str(model_path))
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.input]}
    extractor = onnx.utils.Extractor(inferred)
    paths, baselines, baseline_of = {}, {}, {}
    for index, block in enumerate(blocks.blocks):
        for tensor in (block.input, block.output):
            if tensor not in types and tensor not in {o.name for o in inferred.graph.output}:
                raise DeployInputError(
                    f"block {block.name}: tensor '{tensor}' is not in {model_path.name} (or has "
                    "no inferred shape); the blocks file belongs to another export of the model"
                )
        try:
            sub = extractor.extract_model([block.input], [block.output])
        except Exception as exc:  # onnx raises bare Exceptions for unknown tensors
            raise DeployInputError(
                f"block {block.name}: cannot cut {block.input} -> {block.output} out of "
                f"{model_path.name}: {exc}"
            ) from None
        paths[block.name] = folder / f"block_{index:03d}.onnx"
        atomic_write_bytes(paths[block.name], sub.SerializeToString())
        key = _shape_key(types[block.input])
        baseline_of[block.name] = key
        if key not in baselines:
            baselines[key] = folder / f"baseline_{len(baselines):03d}.onnx"
            baseline = _identity_model(onnx, types[block.input], model)
            atomic_write_bytes(baselines[key], baseline.SerializeToString())
    skeleton = folder / "skeleton.onnx"
    cut = without_blocks(model, [(b.input, b.output) for b in blocks.blocks])
    atomic_write_bytes(skeleton, cut.SerializeToString())
    return Subgraphs(paths, skeleton, baselines, baseline_of)


def without_blocks(model: Any, cuts: list[tuple[str, str]]) -> Any:
    """A copy of `model` without the subgraphs between each (input, output) tensor pair:
    what removing those blocks from the network builds, made from the ONNX file alone."""
    onnx = lazy_import("onnx", "cutting blocks out of an ONNX file")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    producer = {t: i for i, node in enumerate(graph.node) for t in node.output}
    renamed: dict[str, str] = {}
    dropped: set[int] = set()
    for start, end in cuts:
        stack, seen = [end], set()
        while stack:  # every node between the block's input and its output
            tensor = stack.pop()
            if tensor == start or tensor not in producer or tensor in seen:
                continue
            seen.add(tensor)
            dropped.add(producer[tensor])
            stack.extend(graph.node[producer[tensor]].input)
        renamed[end] = renamed.get(start, start)
    kept = [node for i, node in enumerate(graph.node) if i not in dropped]
    for node in kept:
        for position, tensor in enumerate(node.input):
            if tensor in renamed:
                node.input[position] = renamed[tensor]
    del graph.node[:]
    graph.node.extend(kept)
    used = {t for node in kept for t in node.input}
    inits = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    infos = [v for v in graph.value_info if v.name in used]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    return out


def _shape_key(value_info: Any) -> str:
    dims = value_info.type.tensor_type.shape.dim
    return "x".join(str(d.dim_value) if d.HasField("dim_value") else "?" for d in dims[1:])


def _identity_model(onnx: Any, value_info: Any, like: Any) -> Any:
    """A graph that copies a tensor of the block input's type: the per-call cost alone."""
    helper = onnx.helper
    source = onnx.ValueInfoProto()
    source.CopyFrom(value_info)
    source.name = "x"
    target = onnx.ValueInfoProto()
    target.CopyFrom(value_info)
    target.name = "y"
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "baseline", [source], [target])
    opsets = list(like.opset_import)
    return helper.make_model(graph, opset_imports=opsets, ir_version=like.ir_version)


__all__ = ["Subgraphs", "without_blocks", "write_subgraphs"]
