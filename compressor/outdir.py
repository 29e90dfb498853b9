"""One run per output directory: a lock that names its holder, and cleanup after a crash.

Two runs writing the same checkpoints would each resume from the other's epochs and leave a
model neither of them trained. So every command that writes an output directory first takes
an exclusive `flock` on `<out>/.lock` and writes its process id, command line and start time
into it; a second run is refused with that information. The kernel drops a `flock` when its
process dies, SIGKILL included, so a crashed run never leaves a stale lock to clear by hand.

The holder then owns the directory, so it may delete temporaries a killed writer left behind
(`deploy.files.remove_stale_temporaries`); the files they were replacing are intact.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from compressor.errors import InputError, InUseError
from deploy.errors import UnsafePathError
from deploy.files import remove_stale_temporaries
from deploy.paths import check_folder_writable, check_write_target, is_within, read_regular_bytes

LOCK_NAME = ".lock"


@contextlib.contextmanager
def exclusive_out_dir(out_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold `out_dir` for this process until the block ends; InUseError if another run has it.

    The directory is created. Where `fcntl` does not exist (Windows) there is no lock, and
    nothing is cleaned up, since another run could be writing.
    """
    out_dir = Path(out_dir)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux or macOS
        out_dir.mkdir(parents=True, exist_ok=True)
        yield out_dir
        return
    lock = out_dir / LOCK_NAME
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        check_folder_writable(out_dir, f"output directory {out_dir}")
        check_write_target(lock, "lock file")
        # O_NOFOLLOW: a link planted as .lock is refused, not followed to the file it names.
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK
        fd = os.open(lock, flags, 0o644)
    except UnsafePathError as exc:
        raise InputError(f"cannot use {out_dir} as an output directory: {exc}") from exc
    except OSError as exc:
        reason = exc.strerror or exc
        if exc.errno == errno.ELOOP:
            reason = "its .lock is a symbolic link; remove the link"
        raise InputError(f"cannot use {out_dir} as an output directory: {reason}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped in between the check and open
            raise InputError(f"cannot use {out_dir} as an output directory: {lock} is not a file")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise InputError(  # ENOLCK, EOPNOTSUPP: Lustre without -o flock, some FUSE
                    f"cannot use {out_dir} as an output directory: its file system refuses "
                    f"locks ({exc.strerror or exc}); use a folder on a file system with "
                    "flock (NFSv4, Lustre mounted with -o flock, a local disk)"
                ) from exc
            raise InUseError(
                f"{out_dir} is in use by another run ({_holder(fd)}); wait for it to finish, "
                "or choose another --out"
            ) from exc
        os.ftruncate(fd, 0)
        holder = {"pid": os.getpid(), "command": " ".join(sys.argv), "started": _now()}
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        remove_stale_temporaries(out_dir, skip_dirs_with=LOCK_NAME)
        yield out_dir
    finally:
        os.close(fd)  # closing the last descriptor releases the flock


def lock_holder(out_dir: str | os.PathLike[str]) -> dict[str, object] | None:
    """What the lock file of `out_dir` says about the run that last held it (None: no file)."""
    try:
        return json.loads(
            read_regular_bytes(Path(out_dir) / LOCK_NAME, "lock file", max_bytes=1 << 16)
        )
    except (OSError, ValueError):
        return None


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode())
        return f"process {info['pid']}, started {info['started']}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):  # it is still writing its details
        return "process id not yet written"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# A stored model directory holds these two files (compressor.models.store writes them).
_MODEL_FILES = ("spec.json", "weights.safetensors")


def stored_model_dir(path: str | os.PathLike[str]) -> Path | None:
    """The stored model directory that `path` is or lies inside, if any."""
    path = Path(os.path.abspath(path))
    for folder in (path, *path.parents):
        if all((folder / name).is_file() for name in _MODEL_FILES):
            return folder
    return None


def check_outputs(
    writes: list[Path],
    *,
    inputs: tuple[str | os.PathLike[str], ...] = (),
    replaces_model_of_stage: str | None = None,
    own_model: Path | None = None,
) -> None:
    """Refuse, before any work, outputs that would overwrite what the project made or reads.

    `writes` are the files and folders the command writes (not the --out folder itself, in
    which a recipe may well live). None of them may be an input, lie inside one, or hold
    one (a stored model, a checkpoint, a recipe). None may be or lie inside a stored model
    directory, except that a command that writes a stored model (prune) may replace one made
    by the same stage (`replaces_model_of_stage`, its info.stage): a rerun, not a trained
    model swapped for an untrained one; and `own_model`, the folder where the command stores
    its result (train's out/model), is its own to replace on a rerun or --resume.
    """
    for target in writes:
        for source in inputs:
            if Path(source).exists() and (is_within(target, source) or is_within(source, target)):
                raise InputError(
                    f"output {target} would overwrite the input {source}; choose another --out"
                )
        model_dir = stored_model_dir(target)
        if model_dir is None:
            continue
        if own_model is not None and model_dir == Path(os.path.abspath(own_model)):
            continue  # the model this command writes there: a rerun or --resume replaces it
        if replaces_model_of_stage is not None and _stage_of(model_dir) == replaces_model_of_stage:
            continue
        target_path = Path(os.path.abspath(target))
        if model_dir in (target_path, target_path.parent):
            raise InputError(
                f"--out {model_dir} is a stored model (spec.json + weights.safetensors), "
                "which this command would overwrite; choose another --out"
            )
        raise InputError(
            f"output {target} lies inside the stored model {model_dir}; choose another --out"
        )


def _stage_of(model_dir: Path) -> str | None:
    try:
        document = json.loads(
            read_regular_bytes(model_dir / "spec.json", "model spec", max_bytes=1 << 26)
        )
        return document["info"].get("stage")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
