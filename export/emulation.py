"""A float32 stand-in for a low-precision ONNX graph that onnxruntime cannot run.

onnxruntime's CPU provider has no BF16 kernels for the ops image models use (1.32 refuses
Conv, Gemm, MatMul, Add, Mul, Relu, BatchNormalization and the pools with NOT_IMPLEMENTED), so
a BF16 graph does not load there. Its float32 emulation is the same graph with every
low-precision tensor replaced by float32 values rounded to the low type: weights widened
exactly (every bfloat16 or float16 value is a float32 value), and each low-type output of an
op rounded by a Cast to the low type and back (onnxruntime's Cast rounds to nearest even, as
torch does). Between those roundings the ops compute in float32, which is what GPU kernels
that accumulate in float32 and store the low type do; kernels that also accumulate in the low
type would round more often than the emulation does.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deploy.errors import DeployInputError
from deploy.runners import OnnxRuntimeRunner
from export.metadata import save_onnx
from export.precision_graph import inferred_types

FLOAT = TensorProto.FLOAT
ONNXRUNTIME, EMULATION = "onnxruntime", "float32-emulation"  # how a file was run


def float32_emulation(model: onnx.ModelProto, low_type: int) -> onnx.ModelProto:
    """A copy of `model` that computes in float32 but rounds every `low_type` tensor to it."""
    emulated = onnx.ModelProto()
    emulated.CopyFrom(model)
    graph = emulated.graph
    low = {name for name, kind in inferred_types(emulated).items() if kind == low_type}
    names = _Names(graph)
    for index, init in enumerate(graph.initializer):
        if init.data_type == low_type:
            graph.initializer[index].CopyFrom(_widened(init))
    initializers = {init.name for init in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    renamed: dict[str, str] = {}  # low-type graph inputs -> their rounded copies
    for value in graph.input:
        if value.name in low and value.name not in initializers:
            renamed[value.name] = names.new(f"{value.name}__rounded")
            nodes += _round(value.name, renamed[value.name], low_type, names)
    for node in list(graph.node):
        node.input[:] = [renamed.get(name, name) for name in node.input]
        _widen_attributes(node, low_type)
        rounding: list[onnx.NodeProto] = []
        for slot, name in enumerate(node.output):
            if name in low:
                raw = names.new(f"{name}__raw")
                node.output[slot] = raw
                rounding += _round(raw, name, low_type, names)
        nodes += [node, *rounding]
    del graph.node[:]
    graph.node.extend(nodes)
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if value.type.tensor_type.elem_type == low_type:
            value.type.tensor_type.elem_type = FLOAT
    return emulated


@contextmanager
def onnxruntime_or_emulation(
    path: Path, low_type: int, *, threads: int | None = None
) -> Iterator[tuple[OnnxRuntimeRunner, str]]:
    """An entered onnxruntime runner of `path`, and ONNXRUNTIME; or, when onnxruntime has no
    kernels for the file's low-precision ops, one of its float32 emulation, and EMULATION.

    The emulation runs with graph optimizations off, so no onnxruntime pass can fold the
    rounding Casts away.
    """
    runner = OnnxRuntimeRunner(path, threads=threads)
    try:
        runner.__enter__()
    except DeployInputError as exc:
        if "NOT_IMPLEMENTED" not in str(exc) and "implementation for" not in str(exc):
            raise
        with tempfile.TemporaryDirectory(prefix="emulation-") as folder:
            model = onnx.load(str(path))
            emulated = save_onnx(float32_emulation(model, low_type), Path(folder) / path.name)
            with OnnxRuntimeRunner(emulated, threads=threads, optimize=False) as fallback:
                yield fallback, EMULATION
        return
    try:
        yield runner, ONNXRUNTIME
    finally:
        runner.__exit__(None, None, None)


class _Names:
    """Fresh tensor names for one graph (one set, not a scan of the graph per name)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.taken = {n for node in graph.node for n in [*node.input, *node.output]}
        self.taken |= {t.name for t in graph.initializer}
        self.taken |= {v.name for v in [*graph.input, *graph.output, *graph.value_info]}

    def new(self, name: str) -> str:
        candidate, k = name, 0
        while candidate in self.taken:
            k += 1
            candidate = f"{name}{k}"
        self.taken.add(candidate)
        return candidate


def _round(source: str, target: str, low_type: int, names: _Names) -> list[onnx.NodeProto]:
    """float32 `source` -> `target`: the same values rounded to `low_type` (nearest even)."""
    low = names.new(f"{target}__low")
    return [
        helper.make_node("Cast", [source], [low], name=low, to=low_type),
        helper.make_node("Cast", [low], [target], name=names.new(f"{target}__round"), to=FLOAT),
    ]


def _widened(tensor: TensorProto) -> TensorProto:
    """The same values as float32 (exact: float32 holds every bfloat16 and float16 value)."""
    return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name)


def _widen_attributes(node: onnx.NodeProto, low_type: int) -> None:
    """Constant / ConstantOfShape tensors, Cast(to=low), EyeLike(dtype=low) in float32: the
    rounding after the node gives back the low type's values."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == low_type:
            attr.t.CopyFrom(_widened(attr.t))
        elif attr.name in ("to", "dtype") and attr.i == low_type:
            attr.i = FLOAT
