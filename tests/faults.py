"""Fault injection: run a `compressor` command and SIGKILL it at a chosen or random point.

Two kinds of kill, both SIGKILL (nothing is flushed, no handler runs, like a pre-empted job):
- from outside, after a random delay: wherever the command happens to be;
- from inside, in the middle of the Nth atomic file write whose path contains a given text
  (a checkpoint, a metrics file, a result): after `cut` of its bytes ("data"), after all of
  them but before the rename ("before-rename"), or right after the rename ("renamed").

The second needs a hook, so the child is `python -m tests.faults FAULT -- ARGS`: it wraps
`deploy.files.atomic_file`, through which every file is written, then runs the real
`compressor.cli.main(ARGS)`. Nothing else is replaced; the command does its real work.
Used by tests/compressor/test_crash_resume.py and benchmarks/soak_resume.py.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("data", "before-rename", "renamed")  # kills; "enospc" (a full disk) is not one


@dataclass(frozen=True)
class Fault:
    """Die inside the `nth` write (1-based) of a file whose path contains `matching`; or, with
    phase "enospc", fail that write as a full disk does (the process lives on)."""

    matching: str
    nth: int = 1
    phase: str = "data"
    cut: float = 0.5  # fraction of the file's bytes written before dying, for phase "data"

    def args(self) -> list[str]:
        return [self.matching, str(self.nth), self.phase, str(self.cut)]


@dataclass(frozen=True)
class Outcome:
    returncode: int
    seconds: float
    stdout: str
    stderr: str

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL


def child_env() -> dict[str, str]:
    """The environment every child runs in: this checkout importable, nothing else changed
    (a different thread count could change float sums, and so the weights)."""
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def small_training_recipe(name: str, epochs: int) -> dict[str, Any]:
    """ResNet-8 on 600 digits at 12x12 in one thread: a run of seconds, worth killing."""
    return {
        "name": name,
        "model": {"name": "resnet8", "width": 0.5},
        "data": {"name": "digits", "image_size": 12, "limit_train": 600},
        "prune": {"criterion": "grasp", "blocks": 1},
        "train": {"epochs": epochs, "batch_size": 64, "lr": 0.05, "progress": "none", "threads": 1},
    }


def run_compressor(
    argv: Sequence[str],
    *,
    fault: Fault | None = None,
    kill_after: float | None = None,
    timeout: float = 600,
    env: Mapping[str, str] | None = None,
) -> Outcome:
    """Run `compressor ARGV` in a child; kill it from inside (`fault`) or outside (seconds)."""
    command = [sys.executable, "-m", "tests.faults", *(fault.args() if fault else []), "--"]
    command += list(argv)
    started = time.monotonic()
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    environment = {**child_env(), **(env or {})}
    with subprocess.Popen(command, env=environment, cwd=ROOT, **pipes) as process:
        try:
            stdout, stderr = process.communicate(timeout=kill_after if kill_after else timeout)
        except subprocess.TimeoutExpired:
            if kill_after is None:
                process.kill()
                raise
            process.send_signal(signal.SIGKILL)
            stdout, stderr = process.communicate()
    return Outcome(process.returncode, time.monotonic() - started, stdout, stderr)


def random_fault(rng: random.Random, writes: Mapping[str, int]) -> Fault:
    """A fault in a random one of `writes` (file -> how many times a run writes it), at a
    random one of those writes, phase and cut."""
    matching = rng.choice(sorted(writes))
    return Fault(matching, rng.randint(1, writes[matching]), rng.choice(PHASES), rng.random())


def readable_files(out_dir: Path) -> dict[str, bytes | None]:
    """Every project file under `out_dir` -> its bytes, or None when it cannot be read as
    what it claims to be (a JSON that does not parse, a truncated checkpoint or model)."""
    found: dict[str, bytes | None] = {}
    for path in sorted(out_dir.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        data = path.read_bytes()
        found[path.relative_to(out_dir).as_posix()] = data if _parses(path, data) else None
    return found


def _parses(path: Path, data: bytes) -> bool:
    try:
        if path.suffix == ".json":
            json.loads(data)
        elif path.suffix == ".jsonl":
            for line in data.decode().splitlines():
                json.loads(line)
        elif path.suffix == ".safetensors":
            from safetensors.torch import load

            load(data)
        elif path.suffix == ".pt":
            import torch

            torch.load(path, map_location="cpu", weights_only=True)
        elif path.suffix == ".onnx":
            import onnx

            onnx.load_from_string(data)
    except Exception:
        return False
    return True


# Metrics that are wall-clock measurements: a resumed run measures them anew.
TIMING_FIELDS = ("epoch_seconds", "elapsed_seconds")
STORED_TIMING_FIELDS = ("train_seconds", "epoch_seconds")


def training_differences(out_dir: Path, reference: Path) -> list[str]:
    """How a `compressor train/shrink --out` directory differs from a reference run's (none:
    the same trained weights bit for bit, and the same metrics apart from wall-clock times)."""
    differences = []
    weights = "model/weights.safetensors"
    if not (out_dir / weights).is_file():
        return [f"{weights} is missing"]
    if (out_dir / weights).read_bytes() != (reference / weights).read_bytes():
        differences.append(f"{weights} differs")
    mine_spec, reference_spec = (
        _stored_facts(d / "model" / "spec.json") for d in (out_dir, reference)
    )
    if mine_spec != reference_spec:
        differences.append("model/spec.json differs beyond wall-clock times")
    mine_metrics, reference_metrics = (
        [
            {k: v for k, v in json.loads(line).items() if k not in TIMING_FIELDS}
            for line in (d / "train" / "metrics.jsonl").read_text().splitlines()
        ]
        for d in (out_dir, reference)
    )
    if mine_metrics != reference_metrics:
        differences.append("train/metrics.jsonl differs beyond wall-clock times")
    return differences


def _stored_facts(path: Path) -> dict[str, Any]:
    document = json.loads(path.read_text())
    info = document.pop("info")
    document["info"] = {k: v for k, v in info.items() if k not in STORED_TIMING_FIELDS}
    return document


def lost_files(before: dict[str, bytes | None], after: dict[str, bytes | None]) -> list[str]:
    """Files that were complete before a kill and are missing or unreadable after it."""
    return sorted(
        name for name, data in before.items() if data is not None and after.get(name) is None
    )


def stale_temporaries(out_dir: Path) -> list[Path]:
    return sorted(p for p in out_dir.rglob(".*.tmp") if p.is_file())


# --- the child ----------------------------------------------------------------------------------


class _CutAfter:
    """A file that SIGKILLs its process once `limit` bytes went through it."""

    def __init__(self, handle: IO[bytes], limit: int) -> None:
        self._handle, self._left = handle, limit

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if len(view) >= self._left:
            self._handle.write(view[: self._left])
            self._handle.flush()  # the bytes reach the file; the process dies mid-write
            _die()
        self._left -= len(view)
        return self._handle.write(view)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install(matching: str, nth: int, phase: str, cut: float) -> None:
    import deploy.files as files

    real = files.atomic_file
    seen = [0]

    @contextlib.contextmanager
    def atomic_file_that_dies(path: Any) -> Iterator[IO[bytes]]:
        hit = False
        if matching in str(path):
            seen[0] += 1
            hit = seen[0] == nth
        if not hit:
            with real(path) as handle:
                yield handle
            return
        with real(path) as handle:
            if phase == "enospc":  # the disk fills up part way through this file
                buffer = _Collect()
                yield buffer  # type: ignore[misc]
                handle.write(bytes(buffer.data[: int(cut * len(buffer.data))]))
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            if phase == "data":
                buffer = _Collect()
                yield buffer  # type: ignore[misc]
                _CutAfter(handle, int(cut * len(buffer.data))).write(bytes(buffer.data))
            else:
                yield handle
                if phase == "before-rename":
                    handle.flush()
                    _die()
        _die()  # "renamed", or a "data" cut at the very end

    files.atomic_file = atomic_file_that_dies


class _Collect:
    """Gathers what a writer writes, so a cut lands at a fraction of the whole file."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.data += view
        return len(view)

    def flush(self) -> None:
        pass


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    split = argv.index("--")
    fault, command = argv[:split], argv[split + 1 :]
    if fault:
        matching, nth, phase, cut = fault
        _install(matching, int(nth), phase, float(cut))
    from compressor.cli import main as compressor_main  # imported after the hook

    return compressor_main(command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
