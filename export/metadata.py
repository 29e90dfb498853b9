"""Read and write an ONNX file's metadata_props, and the file-level helpers around them.

The ONNX file is the artifact that travels to a Jetson or a server, so the facts a later
stage needs (source spec hash, accuracy, exporter versions, parity) live inside it as
metadata_props rather than in a side file that can get separated from it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import onnx

from deploy.errors import DeployInputError, UnsafePathError
from deploy.files import atomic_write_bytes
from deploy.model_files import PICKLE_HINT, pickle_kind
from deploy.onnx_files import MAX_ONNX_BYTES, check_external_data
from deploy.paths import check_output_path, check_readable_file, same_file
from export.errors import ExportError, ExportInputError, OnnxValidationError, first_line

# protobuf cannot serialize a message of 2 GiB or more; such models need external data.
MetadataValue = str | int | float  # numbers are written with str()
_PROTOBUF_LIMIT_BYTES = 2**31 - 1


def load_onnx(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load the model proto without its external data (metadata never needs the weights).

    Raises OnnxValidationError naming the file when it is missing, unreadable, or not an
    ONNX model, so callers get one error type for "this file cannot be used".
    """
    path = Path(path)
    if not path.is_file():
        raise OnnxValidationError(f"ONNX file not found: {path}")
    try:
        check_readable_file(path, "ONNX file", max_bytes=MAX_ONNX_BYTES)
    except DeployInputError as exc:
        raise OnnxValidationError(str(exc)) from exc
    refuse_pickle(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and onnx's own errors differ by version
        raise OnnxValidationError(
            f"cannot read {path} as an ONNX model ({first_line(exc)}); the file is corrupt "
            "or truncated; export it again"
        ) from exc
    # Arbitrary bytes sometimes decode as an (empty) protobuf message without an error.
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise OnnxValidationError(
            f"{path} is not an ONNX model (no IR version or graph); the file is corrupt or "
            "of another format; export it again"
        )
    try:  # a caller that goes on to load the external data reads only what is declared
        check_external_data(path, model)
    except DeployInputError as exc:
        raise OnnxValidationError(str(exc)) from exc
    return model


def refuse_pickle(path: Path, error: type[ExportError] = OnnxValidationError) -> None:
    """A pickle offered as an ONNX file is refused before anything reads it (see
    `deploy.model_files`: unpickling runs code); raises `error` naming the file."""
    kind = pickle_kind(path)
    if kind is not None:
        raise error(
            f"{path} is {kind}, not an ONNX file; it is not loaded, since loading a pickle can "
            f"run any code it carries; {PICKLE_HINT}"
        )


def save_onnx(model: onnx.ModelProto, path: str | os.PathLike[str]) -> Path:
    """Write `model` as one self-contained file, atomically (temp file + os.replace).

    Atomic so that a crash or a full disk never leaves a half-written .onnx at `path` that a
    later stage would pick up; the temp file sits in the same folder so os.replace is a
    rename on one filesystem.
    """
    path = Path(path)
    size = model.ByteSize()
    if size > _PROTOBUF_LIMIT_BYTES:
        raise ExportError(
            f"cannot write {path}: the model is {size / 2**30:.2f} GiB, above protobuf's 2 GiB "
            "limit for a single self-contained ONNX file"
        )
    if not path.parent.is_dir():
        raise ExportInputError(f"cannot write {path}: folder {path.parent} does not exist")
    return atomic_write_bytes(path, model.SerializeToString())


def load_source(path: Path, who: str) -> onnx.ModelProto:
    """A source model for a conversion (INT8, FP16), or an ExportInputError naming the file."""
    if path.is_dir() or not path.exists():
        raise ExportInputError(f"{who}: source ONNX file not found: {path}; export it first")
    try:
        return load_onnx(path)
    except OnnxValidationError as exc:
        raise ExportInputError(f"{who}: {path} is not an ONNX model ({exc})") from exc


def check_out_path(out_path: Path, source: Path) -> None:
    """A conversion writes a new file in an existing folder, never over its source."""
    if out_path.is_dir() or not out_path.parent.is_dir():
        raise ExportInputError(
            f"output path {out_path}: must be a file in an existing folder, e.g. model.int8.onnx"
        )
    if same_file(out_path, source) or out_path.resolve() == source.resolve():
        raise ExportInputError(f"output path {out_path} is the source file; choose another name")
    try:
        check_output_path(out_path, "output path")  # a link, device or FIFO; a read-only folder
    except UnsafePathError as exc:
        raise ExportInputError(str(exc)) from exc


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """Return the file's metadata_props as a dict (later duplicates of a key win)."""
    return {prop.key: prop.value for prop in load_onnx(path).metadata_props}


def set_metadata(
    model: onnx.ModelProto, metadata: Mapping[str, MetadataValue], *, replace: bool = False
) -> dict[str, str]:
    """Merge `metadata` into the proto's metadata_props in place; returns the full dict.

    Keys stay unique: onnx allows duplicates but readers disagree on which one wins.
    """
    merged = {} if replace else {prop.key: prop.value for prop in model.metadata_props}
    merged.update(checked_metadata(metadata))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, merged)
    return merged


def write_metadata(
    path: str | os.PathLike[str], metadata: Mapping[str, MetadataValue], *, replace: bool = False
) -> dict[str, str]:
    """Merge `metadata` into the file's metadata_props (or replace them all) and rewrite it.

    Returns the metadata now in the file. External data, if the file has any, is left where
    it is: only the model proto is rewritten.
    """
    model = load_onnx(path)
    merged = set_metadata(model, metadata, replace=replace)
    save_onnx(model, path)
    return merged


def checked_metadata(metadata: Mapping[str, MetadataValue]) -> dict[str, str]:
    """metadata_props hold strings only; numbers are accepted and written with str().

    Public so export can reject bad metadata before spending seconds on the export.
    """
    checked: dict[str, str] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not key:
            raise ExportInputError(f"metadata keys must be non-empty strings, got {key!r}")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ExportInputError(
                f"metadata[{key!r}] must be a string (or a number, written with str()), got "
                f"{type(value).__name__} {value!r}; format it yourself, e.g. json.dumps(value)"
            )
        checked[key] = value if isinstance(value, str) else str(value)
    return checked
