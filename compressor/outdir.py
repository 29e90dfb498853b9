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
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from compressor.errors import InputError
from deploy.files import remove_stale_temporaries

LOCK_NAME = ".lock"


@contextlib.contextmanager
def exclusive_out_dir(out_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold `out_dir` for this process until the block ends; InputError if another run has it.

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
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(out_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise InputError(f"cannot use {out_dir} as an output directory: {exc}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise InputError(
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
        return json.loads((Path(out_dir) / LOCK_NAME).read_text())
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
