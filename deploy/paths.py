"""Checks on the paths the project writes and reads, made before anything is written or read.

Outputs are named by users and sometimes by colleagues sharing a folder: a link planted where
a result file goes, a device node, a FIFO, a read-only mount. Writing through a link would
overwrite the file it points at; opening a FIFO hangs; a read-only folder found after an hour
of training loses the hour. So every output is checked when the command starts (is it a
plain file or absent, can its folder be written), and every write refuses a target that
became a link or special file meanwhile (`deploy.files.atomic_file`).

Inputs get the mirror check: a regular file (links are followed: a user's own link to their
data is fine, as long as it ends at a file), of a size the reader can afford, before a byte
of it is read. Errors are `UnsafePathError` (a DeployInputError that is also an OSError).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

from deploy.errors import DeployInputError, DiskFullError, UnsafePathError

__all__ = [
    "check_output_path",
    "check_folder_writable",
    "check_readable_file",
    "check_write_target",
    "disk_full_error",
    "format_size",
    "is_within",
    "path_kind",
    "read_regular_bytes",
    "same_file",
]


def path_kind(mode: int) -> str:
    """What a file of this st_mode is, in words for an error message."""
    for test, words in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISREG, "a regular file"),
    ):
        if test(mode):
            return words
    return "a special file"


def check_write_target(path: str | os.PathLike[str], what: str = "output") -> None:
    """Refuse to replace anything at `path` but a regular file (absent is fine).

    A link is never written through nor replaced: whoever planted it meant something by it.
    """
    path = Path(path)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError:  # ENOTDIR, EACCES: the write itself reports it
        return
    if stat.S_ISLNK(info.st_mode):
        raise UnsafePathError(
            f"{what} {path} is a symbolic link (to {os.readlink(path)}); nothing is written "
            "through a link: give the real path, or remove the link"
        )
    if not stat.S_ISREG(info.st_mode):
        raise UnsafePathError(
            f"{what} {path} is {path_kind(info.st_mode)}, not a regular file; choose a file path"
        )


def check_output_path(path: str | os.PathLike[str], what: str = "output") -> Path:
    """Before any work starts: `path` can be written (a plain file or absent, its folder
    writable). Returns the path; raises UnsafePathError naming the reason."""
    path = Path(path)
    check_write_target(path, what)
    folder = _nearest_existing(path.parent)
    if not folder.is_dir():
        raise UnsafePathError(f"{what} {path}: {folder} is not a directory")
    check_folder_writable(folder, f"{what} {path}")
    return path


def check_folder_writable(folder: Path, what: str) -> None:
    """A folder that exists can take new files: not on a read-only mount, permission to write."""
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs (Windows)
        read_only = False
    if read_only:
        raise UnsafePathError(f"{what}: {folder} is on a read-only file system", errno.EROFS)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UnsafePathError(f"{what}: no permission to write in {folder}", errno.EACCES)


def _nearest_existing(folder: Path) -> Path:
    """The folder itself or its closest ancestor that exists (mkdir creates the rest)."""
    folder = Path(os.path.abspath(folder))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_readable_file(
    path: str | os.PathLike[str], what: str, *, max_bytes: int | None = None
) -> int:
    """The file's size, after checking it is a regular file no larger than `max_bytes`.

    Links are followed (to a regular file). FileNotFoundError propagates: callers have their
    own words for a missing file.
    """
    path = Path(path)
    info = os.stat(path)
    _check_regular(path, info.st_mode, what)
    _check_size(path, info.st_size, what, max_bytes)
    return info.st_size


def read_regular_bytes(
    path: str | os.PathLike[str], what: str, *, max_bytes: int | None = None
) -> bytes:
    """A regular file's bytes, at most `max_bytes`; a FIFO or device is refused, not opened
    for reading (O_NONBLOCK: opening a FIFO would otherwise wait for a writer forever)."""
    path = Path(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        info = os.fstat(fd)
        _check_regular(path, info.st_mode, what)
        _check_size(path, info.st_size, what, max_bytes)
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(info.st_size + 1)
    finally:
        os.close(fd)
    _check_size(path, len(data), what, max_bytes)  # grew meanwhile
    return data


def _check_regular(path: Path, mode: int, what: str) -> None:
    if not stat.S_ISREG(mode):
        raise UnsafePathError(
            f"{what} {path} is {path_kind(mode)}, not a regular file; pass the file itself"
        )


def _check_size(path: Path, size: int, what: str, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise UnsafePathError(
            f"{what} {path} is {format_size(size)}, more than a {what} can be "
            f"({format_size(max_bytes)}); it is not one"
        )


def disk_full_error(exc: BaseException, target: str | os.PathLike[str]) -> DiskFullError | None:
    """The one-line error for a write to `target` that ran out of space, or None if `exc`
    (or an error it was raised from) is not about space."""
    seen: BaseException | None = exc
    for _ in range(8):  # the chain: torch and onnx wrap the OSError underneath
        if seen is None:
            return None
        if isinstance(seen, DiskFullError):
            return seen
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            folder = Path(target).parent
            try:
                free = format_size(shutil.disk_usage(_nearest_existing(folder)).free)
            except OSError:
                free = "unknown"
            why = "quota exceeded" if seen.errno == errno.EDQUOT else "no space left"
            return DiskFullError(
                f"{why} on the disk of {folder} ({free} free) while writing "
                f"{Path(target).name}; free some space and rerun (files already saved are "
                "intact; --resume continues where the command has it)",
                seen.errno,
            )
        seen = seen.__cause__ or seen.__context__
    return None


def format_size(size: float) -> str:
    """Bytes in the largest unit that keeps the number >= 1 (1.5 GiB, 12 KiB)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def check_replaceable_output(
    output: Path,
    inputs: tuple[Path, ...],
    read: Callable[[Path], object],
    *,
    is_input: str,
    kind: str,
) -> None:
    """Refuse, before anything is timed, to write `output` over a folder, through a link, over
    one of `inputs` (`is_input` says which, e.g. "the model being timed") or over a file
    `read` does not accept as a `kind` (an existing `kind` is replaced)."""
    if output.is_dir() and not output.is_symlink():
        raise DeployInputError(f"--output {output} is a directory; give a file name")
    check_output_path(output, "--output")
    if not output.exists():
        return
    if any(path.exists() and same_file(output, path) for path in inputs):
        raise DeployInputError(f"--output {output} is {is_input}; choose another path")
    try:
        read(output)
    except DeployInputError:
        raise DeployInputError(
            f"--output {output} exists and is not a {kind}; choose another path (an existing "
            f"{kind} is replaced)"
        ) from None


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name one file (links resolved); False if either is absent."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def is_within(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """Whether `path` is `folder` or lies inside it, after resolving links."""
    resolved, base = Path(path).resolve(), Path(folder).resolve()
    return resolved == base or base in resolved.parents
