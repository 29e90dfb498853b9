"""An ONNX file is checked before anything loads it: a regular file, not a pickle, and every
tensor stored outside it (external data) exactly as large as its shape says.

onnx and onnxruntime read a tensor's external data from `offset` for `length` bytes, or to
the end of the file when no length is given, whatever the tensor's shape declares: a
16-byte tensor pointing into a 6 GB file loads 6 GB before anything notices. Comparing the
declared size (shape x element size) with the entry and with the file's real size first
costs one stat per file and turns that into a one-line error.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deploy.errors import DeployInputError, first_line
from deploy.lazy import lazy_import
from deploy.model_files import refuse_pickle
from deploy.paths import check_readable_file, format_size

__all__ = ["MAX_ONNX_BYTES", "check_external_data", "check_onnx_file"]

# protobuf cannot hold a message of 2 GiB or more: a larger .onnx file is not one.
MAX_ONNX_BYTES = 2**31 - 1
_EXTERNAL = 1  # onnx.TensorProto.EXTERNAL


def check_onnx_file(path: str | os.PathLike[str]) -> Any:
    """Check `path` as above; returns its proto without external data (onnx.ModelProto).

    Raises DeployInputError naming the file, the tensor and the sizes that disagree.
    """
    onnx = lazy_import("onnx", "reading an ONNX file")
    path = Path(path)
    try:
        check_readable_file(path, "ONNX file", max_bytes=MAX_ONNX_BYTES)
    except FileNotFoundError:
        raise DeployInputError(f"ONNX file not found: {path}") from None
    refuse_pickle(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends: not an ONNX file
        raise DeployInputError(
            f"{path} is not a readable ONNX file ({first_line(exc)}); pass a .onnx model "
            "(exported with torch.onnx or `compressor export`)"
        ) from exc
    check_external_data(path, model)
    return model


def check_external_data(path: str | os.PathLike[str], model: Any) -> None:
    """Every external tensor of `model` (loaded from `path` without its external data) has
    a regular file beside `path` holding exactly its declared bytes."""
    onnx = lazy_import("onnx", "reading an ONNX file")
    sizes: dict[Path, int] = {}
    for tensor in _tensors(model.graph):
        if tensor.data_location == _EXTERNAL:
            _check_external(onnx, Path(path), tensor, sizes)


def _tensors(graph: Any) -> Iterator[Any]:
    """Initializers and tensor attributes of every node, subgraphs included."""
    yield from graph.initializer
    yield from (sparse.values for sparse in graph.sparse_initializer)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)


def _check_external(onnx: Any, path: Path, tensor: Any, sizes: dict[Path, int]) -> None:
    entry = {item.key: item.value for item in tensor.external_data}
    name = tensor.name or "(unnamed)"
    where = f"{path}: tensor {name!r}"
    location = entry.get("location", "")
    if not location or os.path.isabs(location) or ".." in Path(location).parts:
        raise DeployInputError(
            f"{where} names external data {location!r}; it must be a file name beside the "
            "model (no absolute path, no '..')"
        )
    data_file = path.parent / location
    if data_file not in sizes:
        try:
            sizes[data_file] = check_readable_file(data_file, "external data file")
        except FileNotFoundError:
            raise DeployInputError(
                f"{where} keeps its weights in {location}, which is missing: copy it beside "
                f"{path.name} (external data files travel with the model)"
            ) from None
    try:
        offset = int(entry.get("offset", 0))
        length = int(entry["length"]) if "length" in entry else None
    except ValueError:
        raise DeployInputError(f"{where}: external data offset or length is not a number") from None
    declared = _declared_bytes(onnx, tensor)
    actual = sizes[data_file]
    if declared is None:  # strings: no fixed element size; bounded by the file itself
        declared = length if length is not None else actual - offset
    if offset < 0 or (length is not None and length != declared):
        raise DeployInputError(
            f"{where} has shape {list(tensor.dims)}, {format_size(declared)}, but its external "
            f"data entry says offset {offset}, length {length}; the file is corrupt or edited"
        )
    end = offset + declared
    if end > actual or (length is None and actual - offset != declared):
        raise DeployInputError(
            f"{where} has shape {list(tensor.dims)} ({format_size(declared)}) but {location} "
            f"holds {format_size(max(actual - offset, 0))} from offset {offset}; the file is "
            "corrupt, truncated or not this model's; export it again"
        )


def _declared_bytes(onnx: Any, tensor: Any) -> int | None:
    try:
        item = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    if tensor.data_type == onnx.TensorProto.STRING:
        return None
    count = math.prod(tensor.dims)
    if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return (count + 1) // 2
    return count * item
