"""Which cells of the grid wait for which, and how far the grid has come.

Both executors (the one-process loop and Ray) start a cell only when the cells it reads have
finished, so a cell computes the same thing whichever executor runs it and in whatever
order the cells happen to finish:

- every cell but a dense one reads its seed's trained dense network (CKA; Algorithm 1
  prunes it and rewinds to its snapshots);
- a scratch or filter cell builds on the ticket its init cell trained, when that init cell
  is in the grid (the recorded choice, not a rescoring that could break a near-tie
  differently on another machine);
- an LMC twin is compared with the cell it is a twin of.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from compressor.workflows.lottery.cells import Cell, cell_result


def dependencies(cells: Sequence[Cell]) -> dict[str, tuple[str, ...]]:
    """For each cell's key, the keys of the cells of `cells` it must wait for."""

    keys = {cell.key for cell in cells}
    needs: dict[str, tuple[str, ...]] = {}
    for cell in cells:
        wanted: list[str] = []
        if cell.kind != "dense":
            wanted.append(Cell("dense", cell.seed).key)
        if cell.kind in ("scratch", "filter"):
            wanted.append(Cell("init", cell.seed, cell.criterion, cell.blocks).key)
        if cell.kind == "lmc" and cell.twin_of:
            wanted.append(cell.twin_of)
        needs[cell.key] = tuple(dict.fromkeys(k for k in wanted if k in keys and k != cell.key))
    return needs


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class GridProgress:
    """Cells done / running / left, and the time left at the pace of this run so far.

    The pace is epochs trained per second of wall time since this run started its first
    cell, so it counts every worker at once; cells are weighed by the epochs they train
    (an Algorithm 1 cell retrains only the epochs after its rewind point). Cells finished
    by an earlier run count as done but not towards the pace.
    """

    epochs: dict[str, int]  # the epochs each cell of the grid trains, in plan order
    log: Callable[[str], None]
    done: set[str] = field(default_factory=set)
    running: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    blocked: set[str] = field(default_factory=set)  # of `failed`: not started, need a failed one
    _epochs_done_here: int = 0
    _started: float | None = None

    @classmethod
    def of(cls, cells: Iterable[Cell], epochs: int, log: Callable[[str], None]) -> GridProgress:
        return cls({cell.key: cell.epochs_to_train(epochs) for cell in cells}, log)

    def label(self, key: str) -> str:
        """ "[3/89] init-grasp-p1-s0": the cell and its place in the plan."""
        return f"[{list(self.epochs).index(key) + 1}/{len(self.epochs)}] {key}"

    def unfinished(self, cells: Sequence[Cell], out_dir: Path) -> list[Cell]:
        """The cells without a result, in plan order; the others are said to be kept."""
        pending = []
        for cell in cells:
            if cell_result(out_dir, cell.key) is not None:
                self.log(f"{self.label(cell.key)}: finished before, kept")
                self.finished_before(cell.key)
            else:
                pending.append(cell)
        return pending

    def finished_before(self, key: str) -> None:
        self.done.add(key)

    def start(self, key: str) -> None:
        if self._started is None:
            self._started = time.perf_counter()
        self.running.add(key)

    def finish(self, key: str, *, trained: bool = True) -> None:
        """`trained` False: another run finished it meanwhile; done, but no pace from it."""
        self.running.discard(key)
        self.done.add(key)
        if trained:
            self._epochs_done_here += self.epochs[key]

    def fail(self, key: str, *, blocked: bool = False) -> None:
        """`blocked`: never started, because a cell it needs failed."""
        self.running.discard(key)
        self.failed.add(key)
        if blocked:
            self.blocked.add(key)

    @property
    def left(self) -> int:
        return len(self.epochs) - len(self.done) - len(self.running) - len(self.failed)

    def seconds_left(self) -> float | None:
        """None until this run has finished a cell (there is no pace to go by before)."""
        if self._started is None or self._epochs_done_here == 0:
            return None
        pace = self._epochs_done_here / max(time.perf_counter() - self._started, 1e-9)
        untrained = set(self.epochs) - self.done - self.failed
        return sum(self.epochs[key] for key in untrained) / pace

    def line(self) -> str:
        text = f"{len(self.done)} done, {len(self.running)} running, {self.left} left"
        if self.failed - self.blocked:
            text += f", {len(self.failed - self.blocked)} failed"
        if self.blocked:
            text += f", {len(self.blocked)} blocked by a failed cell"
        remaining = self.seconds_left()
        if self.left or self.running:
            text += "; time left: " + (
                f"about {_duration(remaining)}" if remaining is not None else "after the first cell"
            )
        return f"[grid] {text}"

    def report(self) -> None:
        self.log(self.line())


def blocks_removed(count: int) -> str:
    return f"{count} block{'' if count == 1 else 's'} removed"


def log_to_stderr(message: str) -> None:
    """The grid's log lines, the driver's and a Ray worker's alike."""
    print(message, file=sys.stderr, flush=True)
