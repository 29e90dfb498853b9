"""One run per output directory: the lock, its refusal message, and what a crash leaves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compressor.errors import InputError, InUseError
from compressor.outdir import LOCK_NAME, exclusive_out_dir, lock_holder

ROOT = Path(__file__).resolve().parents[2]
HOLD = """
import sys, time
from compressor.outdir import exclusive_out_dir
with exclusive_out_dir(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path: Path):  # noqa: ANN201
    """Another process holding tmp_path/out, as a second `compressor run` would find it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "held"
    yield process, out
    process.kill()
    process.wait()


def test_a_second_run_is_refused_with_the_holders_pid(holder) -> None:  # noqa: ANN001
    process, out = holder
    with pytest.raises(InputError) as refused, exclusive_out_dir(out):
        pytest.fail("the directory was entered while another process held it")
    message = str(refused.value)
    assert f"in use by another run (process {process.pid}, started " in message
    assert "choose another --out" in message and "\n" not in message


def test_a_killed_holder_frees_the_directory_and_its_temporaries_are_swept(holder) -> None:  # noqa: ANN001
    process, out = holder
    (out / "model").mkdir()
    torn = out / "model" / ".weights.safetensors.abc_1234.tmp"
    torn.write_bytes(b"half a file")
    kept = out / "model" / "weights.safetensors"
    kept.write_bytes(b"the last complete file")
    process.send_signal(signal.SIGKILL)
    process.wait()
    with exclusive_out_dir(out):  # no stale lock to clear by hand
        assert lock_holder(out)["pid"] == os.getpid()
        assert not torn.exists()
        assert kept.read_bytes() == b"the last complete file"


def test_the_lock_is_released_when_the_run_ends_or_fails(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), exclusive_out_dir(out):
        raise RuntimeError("training failed")
    started = time.monotonic()
    with exclusive_out_dir(out):
        pass
    assert time.monotonic() - started < 5
    assert (out / LOCK_NAME).is_file()


def test_an_unusable_directory_is_an_input_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with (
        pytest.raises(InputError, match="cannot use .* as an output directory"),
        exclusive_out_dir(blocker / "out"),
    ):
        pass


def test_a_file_system_without_locks_is_said_not_waited_on(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """Lustre without -o flock answers ENOLCK: an error naming the cause, not "in use" (which
    the lottery grid would wait on forever)."""
    import errno
    import fcntl

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(InputError) as caught, exclusive_out_dir(tmp_path / "out"):
        pass
    assert not isinstance(caught.value, InUseError)
    assert str(caught.value) == (
        f"cannot use {tmp_path / 'out'} as an output directory: its file system refuses locks "
        "(No locks available); use a folder on a file system with flock (NFSv4, Lustre mounted "
        "with -o flock, a local disk)"
    )
