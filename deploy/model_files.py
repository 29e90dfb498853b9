"""Model files are data, never code: a pickle offered as a model is recognised and refused.

A pickle (what `torch.save` and `pickle.dump` write; .pt, .pth, .pkl, or any file renamed)
runs code while it loads: an object's `__reduce__` can call any function. deploy runs ONNX
files, TensorRT engines and, when the user vouches for them with --allow-pickle, torch.export
archives, so every place that opens a model file asks `refuse_pickle` first. It reads the
file's first bytes and decodes pickle opcodes with `pickletools` (which executes nothing);
nothing here ever unpickles.
"""

from __future__ import annotations

import io
import os
import pickletools
import zipfile
from pathlib import Path

from deploy.errors import DeployInputError

__all__ = ["PICKLE_HINT", "pickle_kind", "refuse_pickle"]

PICKLE_HINT = (
    "export the model to ONNX (`compressor export`, or torch.onnx.export) and pass the .onnx file"
)
# A protocol 0/1 pickle has no header; decoding this much of it is enough to recognise one.
_SNIFF_BYTES = 1 << 20


def pickle_kind(path: str | os.PathLike[str]) -> str | None:
    """What kind of pickle `path` holds ("a Python pickle", "a torch.save archive"), or None.

    Recognised from the bytes, whatever the file is called: protocols 2-5 by their header,
    protocols 0-1 by decoding the opcodes up to STOP, and torch.save's zip format (PyTorch
    1.6+) by the `data.pkl` it holds. torch.export archives (.pt2) hold no .pkl member and are
    not reported; loading one still needs the user's consent (--allow-pickle).
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError as exc:
        raise DeployInputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # PROTO opcode
        return f"a Python pickle (protocol {head[1]})"
    if head.startswith(b"PK\x03\x04"):
        return _zip_pickle(path)
    if head[:1] in b"(cIJKLSVNdl]}" and _decodes_as_pickle(head):  # opcodes a pickle opens with
        return "a Python pickle (protocol 0 or 1)"
    return None


def refuse_pickle(path: str | os.PathLike[str], expected: str = "an ONNX file") -> None:
    """Raise DeployInputError when `path` is a pickle; `expected` is what the caller wanted."""
    kind = pickle_kind(path)
    if kind is not None:
        raise DeployInputError(
            f"{path} is {kind}, not {expected}; deploy does not load pickles, since loading "
            f"one can run any code it carries; {PICKLE_HINT}"
        )


def _zip_pickle(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    if any(name.endswith(".pkl") for name in names):
        return "a torch.save archive (a zip holding a pickle, data.pkl)"
    return None


def _decodes_as_pickle(head: bytes) -> bool:
    """True when `head` is a complete, well-formed pickle (opcodes and stack up to STOP)."""
    try:
        pickletools.dis(head, out=io.StringIO())
    except Exception:  # ValueError for bytes that are not a pickle; dis raises nothing else
        return False
    return True
