"""What an ONNX file is, read from the file alone: inputs, outputs and numeric precision.

Every backend records the precision a latency was measured at, and the same file means
different things to different runtimes: a QDQ graph is INT8 to TensorRT and to onnxruntime's
quantized kernels, a graph of FP16 weights is FP16 everywhere. Reading it from the graph, not
from a flag, keeps result files honest about what actually ran.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from deploy.errors import DeployError, DeployInputError
from deploy.files import file_sha256
from deploy.onnx_files import check_onnx_file
from deploy.records import ModelIdentity
from deploy.tensor_spec import TensorSpec

PRECISIONS = ("fp32", "fp16", "bf16", "int8")

# The metadata_props keys `compressor export` writes (compressor/workflows/deliver.py) that
# name a model whatever its file is called.
VARIANT_KEY, SPEC_HASH_KEY = "variant", "spec_sha256"
SOURCE_HASH_KEY = "source_onnx_sha256"  # written by the INT8/FP16/BF16 writers
_MAX_ID_CHARS = 128  # a variant or hash longer than this is not ours: ignored

# ONNX TensorProto data types -> numpy dtype names (the ones image models use).
_ONNX_TYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool",
               10: "float16", 11: "float64", 16: "bfloat16"}  # fmt: skip


@dataclass(frozen=True)
class OnnxInfo:
    """Facts about one ONNX file; `precision` is fp32, fp16, bf16 or int8 (Q/DQ nodes)."""

    path: Path
    opset: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    precision: str
    qdq_nodes: int
    initializer_types: dict[str, int] = field(default_factory=dict)  # dtype name -> count
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def identity(self) -> ModelIdentity:
        """The model this file holds: its variant and spec hash from the metadata, when
        `compressor export` wrote them; the SHA-256 of the file always."""
        spec = _metadata_text(self.metadata, SPEC_HASH_KEY)
        sha = file_sha256(self.path)
        source = _metadata_text(self.metadata, SOURCE_HASH_KEY)
        return ModelIdentity(
            variant=_metadata_text(self.metadata, VARIANT_KEY),
            spec_sha256=spec,
            file_sha256=sha,
            source_sha256=source or (sha if spec else None),
        )

    @property
    def dynamic_inputs(self) -> tuple[TensorSpec, ...]:
        return tuple(spec for spec in self.inputs if None in spec.shape)


def inspect_onnx(path: str | os.PathLike[str]) -> OnnxInfo:
    """Read an ONNX file's graph (not its external weights; no runtime); a non-ONNX file is
    refused."""
    path = Path(path)
    if path.is_dir():
        raise DeployInputError(f"{path} is a directory; pass an ONNX file")
    if path.is_file() and path.stat().st_size == 0:
        raise DeployInputError(f"{path} is empty (0 bytes); export the model again")
    # A regular file, not a pickle, external data as large as declared; the weights
    # themselves are not needed for what is read here.
    model = check_onnx_file(path)
    graph = model.graph
    if not graph.node and not graph.output:
        raise DeployInputError(f"{path} is not an ONNX model (its graph is empty)")
    for value in (*graph.input, *graph.output):
        texts = [value.name, *(dim.dim_param for dim in value.type.tensor_type.shape.dim)]
        if any(isinstance(text, bytes) for text in texts):  # protobuf's answer to bad UTF-8
            raise DeployInputError(
                f"{path} is corrupt: input or output {value.name!r} has a name or dimension "
                "that is not UTF-8 text; export the model again"
            )
    initializer_names = {init.name for init in graph.initializer}
    counts: dict[str, int] = {}
    for init in graph.initializer:
        name = _ONNX_TYPES.get(init.data_type, f"type{init.data_type}")
        counts[name] = counts.get(name, 0) + 1
    qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return OnnxInfo(
        path=path,
        opset=opset,
        inputs=tuple(_spec(value) for value in graph.input if value.name not in initializer_names),
        outputs=tuple(_spec(value) for value in graph.output),
        precision=_precision(qdq, counts),
        qdq_nodes=qdq,
        initializer_types=counts,
        metadata={prop.key: prop.value for prop in model.metadata_props},
    )


def model_identity(path: str | os.PathLike[str]) -> ModelIdentity:
    """The identity of a model file being timed: an ONNX file's metadata (variant, spec hash)
    and SHA-256, or for any other file (or an ONNX file that does not read) its SHA-256 alone.
    Never raises for what the file holds: a benchmark that ran must not fail on naming it."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        try:
            return inspect_onnx(path).identity
        except DeployError:
            pass
    try:
        return ModelIdentity(file_sha256=file_sha256(path))
    except (OSError, DeployError):  # gone or unreadable since it was timed
        return ModelIdentity()


def _metadata_text(metadata: dict[str, str], key: str) -> str | None:
    """A metadata value fit to name a model in a table (one short line), else None."""
    value = metadata.get(key)
    if not value or len(value) > _MAX_ID_CHARS or not value.isprintable():
        return None
    return value


def _precision(qdq_nodes: int, counts: dict[str, int]) -> str:
    if qdq_nodes:
        return "int8"
    floats = {name: counts.get(name, 0) for name in ("float32", "float16", "bfloat16")}
    heaviest = max(floats, key=lambda name: floats[name])
    if floats[heaviest] == 0:
        return "fp32"
    return {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[heaviest]


def _spec(value) -> TensorSpec:  # noqa: ANN001 - onnx ValueInfoProto
    tensor = value.type.tensor_type
    shape = tuple(
        dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None
        for dim in tensor.shape.dim
    )
    dtype = _ONNX_TYPES.get(tensor.elem_type, f"type{tensor.elem_type}")
    return TensorSpec(name=value.name, shape=shape, dtype=dtype)
