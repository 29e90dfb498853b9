"""Files every layer writes: atomically, and known by their SHA-256.

A reader sees the old file or the new one, never half of one, so a crash or Ctrl-C mid-write
cannot leave a truncated checkpoint, result file or engine that a later step would trip over.
The recipe: write a temporary file in the same directory (so the rename stays on one
filesystem), flush and fsync it, `os.replace` it over the target, then fsync the directory
so the rename itself survives a power cut. `compressor`, `export` and `deploy` all write
through here (deploy is the lowest layer, so this lives in it).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = [
    "atomic_copy",
    "atomic_file",
    "atomic_write_bytes",
    "atomic_write_text",
    "file_sha256",
    "remove_stale_temporaries",
]

# atomic_file's temporary names: ".<target name>.<mkstemp's 8 random chars>.tmp", in the
# target's directory.
_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Yield a binary file that replaces `path` only if the block finishes without error.

    Parent directories are created. The file is world-readable (0644) like any other the
    user writes: results, reports and engines are shared. OSError propagates to the caller,
    which knows what the file was for and says so.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            if hasattr(os, "fchmod"):  # mkstemp makes it private (0600)
                os.fchmod(handle.fileno(), 0o644)
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


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` atomically; parent directories are created. Returns the path."""
    with atomic_file(path) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically (UTF-8 unless told otherwise). Returns the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_copy(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Copy a file atomically (fsynced before the rename), streaming: engines can be large."""
    with open(source, "rb") as reader, atomic_file(target) as writer:
        for chunk in iter(lambda: reader.read(1 << 20), b""):
            writer.write(chunk)
    return Path(target)


def remove_stale_temporaries(
    directory: str | os.PathLike[str], *, skip_dirs_with: str | None = None
) -> list[Path]:
    """Delete temporary files a killed writer left under `directory`; returns them.

    SIGKILL or a power cut mid-write leaves ".<name>.<8 random chars>.tmp" behind (the
    target itself is untouched); only names of exactly that shape are removed. Only the
    process that owns the directory may call this, i.e. one holding its run lock: another
    live writer's temporary would otherwise vanish under it. Subdirectories holding a file
    named `skip_dirs_with` (another run's lock) are left to their own owner.
    """
    root = Path(directory)
    if not root.is_dir():
        return []
    removed = []
    for folder, subdirs, names in os.walk(root):
        here = Path(folder)
        subdirs[:] = sorted(
            d for d in subdirs if not (skip_dirs_with and (here / d / skip_dirs_with).exists())
        )
        for name in sorted(names):
            path = here / name
            if _TEMPORARY.fullmatch(name) and path.is_file() and not path.is_symlink():
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
    return removed


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks (engines can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_directory(directory: Path) -> None:
    """Persist a rename; skipped where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
