"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file the project writes (checkpoints, metrics, specs, results) goes through here, so a
crash or Ctrl-C mid-write cannot leave a truncated checkpoint that a later `--resume` would
trip over. The recipe is the usual one: write a temporary file in the same directory (so the
rename stays on one filesystem), flush and fsync it, `os.replace` it over the target, then
fsync the directory so the rename itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_torch_save", "atomic_write_bytes", "atomic_write_text"]


def _fsync_directory(directory: Path) -> None:
    """Persist a rename; a no-op where directories cannot be opened (Windows)."""
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _atomic_file(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Yield a binary file that replaces `path` only if the block finishes without error."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        # Includes KeyboardInterrupt: never leave a stray temporary file behind.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_directory(target.parent)


def _write_with(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    with _atomic_file(path) as handle:
        write(handle)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` atomically; parent directories are created. Returns the path."""
    return _write_with(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically (UTF-8 unless told otherwise). Returns the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """`torch.save(obj, path)` atomically; torch is imported here so this module stays light."""
    import torch

    return _write_with(path, lambda handle: torch.save(obj, handle))
