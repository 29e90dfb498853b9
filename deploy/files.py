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
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from deploy.errors import UnsafePathError
from deploy.paths import check_readable_file, check_write_target, disk_full_error

__all__ = [
    "atomic_copy",
    "atomic_file",
    "atomic_write_bytes",
    "atomic_write_text",
    "file_sha256",
    "output_lock",
    "remove_abandoned_work_directory",
    "remove_stale_temporaries",
    "sweep_work_directories",
    "work_directory",
]

# atomic_file's temporary names: ".<target name>.<mkstemp's 8 random chars>.tmp", in the
# target's directory.
_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")
# Work folders of INT8/FP16 exports before they were named like the above (no ".tmp").
_OLD_WORK_DIRECTORY = re.compile(r"\..+\.onnx\.[a-z0-9_]{8}")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Yield a binary file that replaces `path` only if the block finishes without error.

    Parent directories are created. The file is world-readable (0644) like any other the
    user writes: results, reports and engines are shared. A target that is a symbolic link,
    device, FIFO or socket is refused (UnsafePathError), before and again just before the
    rename; a full disk is a DiskFullError naming the folder and its free space. Other
    OSErrors propagate to the caller, which knows what the file was for and says so.
    """
    target = Path(path)
    check_write_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        try:
            with os.fdopen(fd, "wb") as handle:
                if hasattr(os, "fchmod"):  # mkstemp makes it private (0600)
                    os.fchmod(handle.fileno(), 0o644)
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            check_write_target(target)  # planted while we wrote
            os.replace(tmp_name, target)
        except OSError as exc:
            full = disk_full_error(exc, target)
            if full is not None and full is not exc:
                raise full from exc
            raise
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
    check_readable_file(source, "file to copy")  # a FIFO or device would never end
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
    named `skip_dirs_with` (another run's lock) are left to their own owner. Work folders of
    the same shape (`work_directory`: INT8 and FP16 exports, bundles) are removed whole, but
    only when no live process holds their lock, so any process may sweep them.
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
        for name in [
            d for d in subdirs if _TEMPORARY.fullmatch(d) or _OLD_WORK_DIRECTORY.fullmatch(d)
        ]:
            subdirs.remove(name)  # never walked into: it is removed whole or left alone
            if remove_abandoned_work_directory(here / name):
                removed.append(here / name)
        for name in sorted(names):
            path = here / name
            if _TEMPORARY.fullmatch(name) and path.is_file() and not path.is_symlink():
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
    return removed


@contextlib.contextmanager
def work_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """A private folder beside `target` for a multi-file write (external data, a bundle's
    staging copy), removed when the block ends however it ends.

    Named like atomic_file's temporaries (".<target name>.<random>.tmp") and held with a
    `flock` for its lifetime, so a sweep by any process removes it only once its writer is
    dead (SIGKILL or a power cut leave it behind; the kernel drops the lock).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_work_directories(target)  # a killed earlier writer's
    folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    fd = _lock_fd(folder)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if fd is not None:
            os.close(fd)


def sweep_work_directories(target: str | os.PathLike[str]) -> list[Path]:
    """Remove the work folders of `target` that killed writers left; safe for any process
    (a live writer's folder is locked and kept). Returns what was removed."""
    target = Path(target)
    removed = []
    with contextlib.suppress(OSError):
        for entry in sorted(target.parent.iterdir()):
            name = entry.name
            ours = name.startswith(f".{target.name}.") and _TEMPORARY.fullmatch(name)
            if ours and remove_abandoned_work_directory(entry):
                removed.append(entry)
    return removed


def remove_abandoned_work_directory(folder: Path) -> bool:
    """Remove a `work_directory` whose writer is gone (its lock is free); True if removed."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return False
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # pragma: no cover - Windows: no way to tell; leave it
        os.close(fd)
        return False
    except OSError:  # a live writer holds it
        os.close(fd)
        return False
    try:
        shutil.rmtree(folder, ignore_errors=True)  # rmtree never follows links inside
    finally:
        os.close(fd)
    return not folder.exists()


def _lock_fd(folder: Path) -> int | None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


@contextlib.contextmanager
def output_lock(path: str | os.PathLike[str], what: str = "output") -> Iterator[Path]:
    """Hold `path` as this process's output until the block ends; a second writer is refused.

    Two processes writing one result file would each replace the other's records. The lock
    is a `flock` on ".<name>.lock" beside the file, made before any work starts, which also
    proves the folder can be written. The lock file is removed at the end; a process that
    opened it just before is told by the inode check and takes the lock afresh.
    """
    path = Path(path)
    lock = path.parent / f".{path.name}.lock"
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        yield path
        return
    created = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        check_write_target(lock, f"lock file of {what} {path}")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UnsafePathError(
                f"{what} {path} is being written by {holder}; wait for it to finish or "
                "choose another path"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed it after we opened it: take the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()}".encode(), 0)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)
        for folder in created:  # made for the lock by a run that then wrote nothing
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks (engines can be large); a FIFO or
    device is refused (UnsafePathError), not read until it ends."""
    check_readable_file(path, "file to hash")
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
