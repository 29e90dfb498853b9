"""`compressor lottery`: the layer lottery measured on the user's data, one resumable grid.

Every cell of the grid is one trained network, written to `cells/<key>/` with its own
training checkpoint; `result.json`, written last and atomically, marks it finished, so an
interrupted grid resumes mid-cell and a finished cell is never recomputed (growing the
grid — more seeds, more p — reuses every cell already there). Cells, by kind:

- dense-s{seed}: theta_0(seed) trained n epochs; keeps rewind snapshots for Algorithm 1.
- init-{criterion}-p{p}-s{seed}: Algorithm 2, the ticket at initialization: p blocks scored
  on theta_0 removed, the rest trained from theta_0.
- scratch-{criterion}-p{p}-s{seed}: that ticket's architecture re-initialised at random and
  trained from scratch (Liu et al., "Rethinking the value of network pruning").
- filter-{criterion}-p{p}-s{seed}: the same criterion removing as many filters as that
  ticket's blocks hold, as channels with Torch-Pruning (the paper's Table 3).
- after-{criterion}-p{p}-r{pct}-s{seed}: Algorithm 1, blocks scored on the trained dense
  network, the rest rewound to pct% of training and retrained the remaining epochs on the
  original learning-rate schedule. Weights and schedule both go back to epoch i: Frankle
  et al.'s rewinding, which the paper calls learning-rate rewinding after Renda et al.
  (whose "learning-rate rewinding" keeps the trained weights; not offered here).
- lmc-{cell}: a twin of a cell from the same starting weights with another data order, for
  the linear-mode-connectivity error barrier (Frankle et al. 2020).

Each cell records accuracy, MACs, params, one training step's memory, training time,
energy and CO2 (compressor/workflows/lottery/energy.py), accuracy under corruptions, and
per-stage CKA against the dense network of its seed. compressor/workflows/lottery/summary.py
turns the cells into the tables and plots.

Who trains the cells: this process, one after another (the default), or Ray tasks across
GPUs and nodes (compressor/workflows/lottery/ray_grid.py); both start a cell only after the
cells it reads (compressor/workflows/lottery/schedule.py) and run the same cell code
(compressor/workflows/lottery/cell_work.py).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from compressor.atomic import atomic_write_text
from compressor.data.splits import load_data
from compressor.errors import ConfigError, GridError, InputError, InUseError
from compressor.models.blocks import discover_blocks, select_patterns
from compressor.outdir import LOCK_NAME, exclusive_out_dir
from compressor.recipe.experiment import ExperimentConfig
from compressor.recipe.resume import recipe_changes, started_recipe
from compressor.recipe.sections import Recipe
from compressor.training.config import RUNTIME_ONLY_FIELDS, rewind_path
from compressor.training.distributed import world_size
from compressor.workflows.lottery.cell_work import (
    CKA_MAX_IMAGES,
    CellContext,
    claim_and_run,
    corrupted_sets,
    dense_models,
    theta0,
)
from compressor.workflows.lottery.cells import Cell, cell_result, plan
from compressor.workflows.lottery.executor_config import ExecutorConfig
from compressor.workflows.lottery.schedule import (
    GridProgress,
    blocks_removed,
    dependencies,
    log_to_stderr,
)
from compressor.workflows.lottery.summary import write_summary
from deploy.lazy import lazy_import

Log = Callable[[str], None]
# Grid fields that may change on --resume (cells are keyed by them); the rest may not.
GRID_FIELDS = (
    "seeds",
    "blocks",
    "at_init",
    "scratch",
    "filter_criteria",
    "filter_blocks",
    "after_training",
    "after_training_blocks",
    "rewind",
    "lmc_blocks",
    "lmc_seeds",
    "xi",
)


WAIT_SECONDS = 2.0  # how often a run waiting for cells another run holds looks again
GRID_WAIT_SECONDS = 120.0  # the longest wait for another run writing the grid's own files


def run_experiment(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    resume: bool = False,
    log: Log = log_to_stderr,
    executor: ExecutorConfig | None = None,
    summary_only: bool = False,
) -> Path:
    """Run (or continue) the grid of `recipe.experiment`; returns the summary.md path.

    Each cell is held by the process training it (`compressor.outdir` on `cells/<key>/`),
    not the grid: two runs on one --out (`--resume`) share the work, each skipping the
    cells the other holds, and Ray workers hold theirs. `executor` picks who trains the
    cells (`ExecutorConfig`; default: this process, one after another). Cells that fail
    for good under Ray are reported together in a GridError once the others finished;
    `summary_only` rewrites the summary from the finished cells without training.
    """
    executor = executor or ExecutorConfig()
    out_dir = Path(out_dir)
    cells = plan(recipe.experiment)  # a bad grid fails before anything is written
    if world_size() > 1:
        raise ConfigError(
            "compressor lottery trains one cell per process and cannot run under torchrun; "
            "to train cells on several GPUs or nodes at once use --executor ray"
        )
    if summary_only:
        return _summary_only(recipe, out_dir, cells, log)
    if executor.executor == "ray":  # missing Ray is said before anything is written
        lazy_import("ray", "compressor lottery --executor ray")
    _check_out_dir(out_dir, recipe, resume)
    data = load_data(recipe.data)
    log(
        f"[data] {data.name}: {len(data.train)} train / {len(data.val)} val / "
        f"{len(data.test)} test images; {len(cells)} cells"
    )
    ctx = CellContext(recipe, data, out_dir, log)
    _preflight(ctx, cells)  # nothing is written before the grid is known to fit
    with _grid_held(out_dir):  # while the grid's recipe is checked and written
        _check_out_dir(out_dir, recipe, resume)  # again: another run may have started since
        atomic_write_text(out_dir / "recipe.json", json.dumps(recipe.to_dict(), indent=2))
    progress = GridProgress.of(cells, recipe.train.epochs, log)
    started = time.perf_counter()
    if executor.executor == "ray":
        from compressor.workflows.lottery.ray_grid import run_on_ray

        failed = run_on_ray(recipe, out_dir, cells, executor, progress)
    else:
        _run_here(ctx, cells, progress)
        failed = {}
    took = f"{time.perf_counter() - started:.0f}s"
    log(
        f"[grid] stopped after {took}, {len(failed)} cell(s) failed"
        if failed
        else f"[grid] done in {took}"
    )
    if failed:
        blocked = {key: why for key, why in failed.items() if key in progress.blocked}
        broken = {key: why for key, why in failed.items() if key not in blocked}
        text = f"{len(broken)} cell(s) failed: " + "; ".join(
            f"{key}: {why}" for key, why in broken.items()
        )
        if blocked:
            text += f"; {len(blocked)} not started, as they need a failed cell: " + ", ".join(
                blocked
            )
        raise GridError(
            f"{text}. The other {len(progress.done)} cells are finished and kept in "
            f"{out_dir}; fix the cause and rerun with --resume to train only what is missing"
        )
    return _write_grid_summary(ctx, cells)


def _run_here(ctx: CellContext, cells: list[Cell], progress: GridProgress) -> None:
    """The cells one after another in this process, in plan order, skipping (and coming back
    to) cells another process holds; a failing cell stops the grid with its error."""

    out_dir, log = ctx.out_dir, ctx.log
    needs = dependencies(cells)
    pending = progress.unfinished(cells, out_dir)
    waited_for: set[str] = set()
    while pending:
        for cell in pending:
            if any(cell_result(out_dir, key) is None for key in needs[cell.key]):
                continue
            tick = time.perf_counter()
            try:
                result, ran = claim_and_run(ctx, cell, on_start=progress.start)
            except InUseError:
                continue
            pending.remove(cell)
            progress.finish(cell.key, trained=ran)
            what = (
                f"accuracy {100 * result['accuracy']:.2f}, "
                f"{blocks_removed(len(result['removed_blocks']))}, "
                f"{time.perf_counter() - tick:.0f}s"
                if ran
                else "finished meanwhile by another run, kept"
            )
            log(f"{progress.label(cell.key)}: {what}")
            progress.report()
            break
        else:  # every cell left is held by another run, or waits for one that is
            held = {cell.key for cell in pending}
            if held != waited_for:
                shown = ", ".join(sorted(held)[:3]) + (", ..." if len(held) > 3 else "")
                log(
                    f"[grid] waiting: {len(held)} cell(s) are held by, or wait for, another "
                    f"run on {out_dir} ({shown})"
                )
                waited_for = held
            time.sleep(WAIT_SECONDS)


def _write_grid_summary(ctx: CellContext, cells: list[Cell]) -> Path:
    with _grid_held(ctx.out_dir):  # two runs sharing the grid may finish at once
        return write_summary(
            ctx.recipe,
            ctx.out_dir,
            cells,
            dense_models=dense_models(ctx),
            images=ctx.data.test.images[:CKA_MAX_IMAGES],
        )


@contextlib.contextmanager
def _grid_held(out_dir: Path) -> Iterator[None]:
    """The grid folder itself, held briefly while its own files (recipe.json, the summary)
    are written, and only then swept of a killed writer's temporaries: several runs and
    Ray workers share the grid, each holding its cells. Another holder is waited for."""
    with contextlib.ExitStack() as stack:
        deadline = time.monotonic() + GRID_WAIT_SECONDS
        while True:
            try:
                stack.enter_context(exclusive_out_dir(out_dir))
                break
            except InUseError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)
        yield


def _summary_only(recipe: Recipe, out_dir: Path, cells: list[Cell], log: Log) -> Path:
    """The summary of a grid whose cells have all finished, written again without training."""

    if started_recipe(out_dir) is None:
        raise InputError(
            f"{out_dir} holds no lottery grid (no recipe.json); --summary-only rewrites the "
            "summary of a grid run there before"
        )
    _check_out_dir(out_dir, recipe, resume=True)
    missing = [cell.key for cell in cells if cell_result(out_dir, cell.key) is None]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise InputError(
            f"--summary-only: {len(missing)} of {len(cells)} cells of this grid have not "
            f"finished in {out_dir} ({shown}); run without --summary-only (with --resume) "
            "to train them"
        )
    data = load_data(recipe.data)
    log(f"[grid] all {len(cells)} cells finished; writing the summary again")
    return _write_grid_summary(CellContext(recipe, data, out_dir, log), cells)


def _check_out_dir(out_dir: Path, recipe: Recipe, resume: bool) -> None:
    before = started_recipe(out_dir)
    if before is not None and not (out_dir / "cells").exists():
        return  # a start that stopped before its first cell (Ray never came up): start again
    if before is None:
        if out_dir.is_dir() and any(p.name != LOCK_NAME for p in out_dir.iterdir()):
            raise InputError(
                f"{out_dir} is not empty and holds no experiment; choose another --out"
            )
        return
    if not resume:
        raise InputError(
            f"{out_dir} already holds an experiment; pass --resume to continue or grow it, "
            "or choose another --out"
        )
    changed = recipe_changes(
        before,
        recipe,
        free_sections=("name", "export", "bench", "shrink"),
        # device, threads, progress may change (the trainer allows it); so may the grid.
        free_fields={"train": RUNTIME_ONLY_FIELDS, "experiment": GRID_FIELDS},
        # a recipe at the default grid leaves it out
        defaults={"experiment": ExperimentConfig().to_dict()},
    )
    if changed:
        raise ConfigError(
            f"--resume: {changed} differ from the recipe {out_dir} was started with; only the "
            f"grid ({', '.join(GRID_FIELDS)}) may change; choose another --out"
        )


def _preflight(ctx: CellContext, cells: list[Cell]) -> None:
    """What would otherwise fail in the middle of the grid fails now, before any training."""

    config, epochs = ctx.config, ctx.recipe.train.epochs
    for fraction in config.rewind if config.after_training else ():
        if round(fraction * epochs) >= epochs:
            raise ConfigError(
                f"experiment.rewind {fraction}: epoch {round(fraction * epochs)} of "
                f"{epochs} leaves nothing to retrain; use a smaller fraction"
            )
    most = max((cell.blocks for cell in cells), default=0)
    if most:
        model, spec = theta0(ctx, config.seeds[0])
        found = discover_blocks(model, ctx.data.val.images[:1])
        prune = ctx.recipe.prune
        removable = sum(b.removable for b in select_patterns(found, prune.include, prune.exclude))
        if most > removable:
            raise ConfigError(
                f"experiment: a cell removes {most} blocks but {spec.model} has {removable} "
                "removable blocks; lower experiment.blocks (and the *_blocks lists)"
            )
    for cell in cells:
        if cell.kind != "after" or cell_result(ctx.out_dir, cell.key) is not None:
            continue
        dense_dir = ctx.cell_dir(f"dense-s{cell.seed}")
        epoch = cell.rewind_epoch(epochs)
        if (dense_dir / "result.json").is_file() and not rewind_path(
            dense_dir / "train", epoch
        ).is_file():
            saved = sorted(int(p.stem[8:]) for p in (dense_dir / "train").glob("rewind_e*"))
            raise ConfigError(
                f"experiment.rewind {cell.rewind}: the dense network of seed {cell.seed} was "
                f"trained without a snapshot at epoch {epoch} (it has epochs {saved}); "
                "rewind to those, or use another --out"
            )
    if config.cifar10c_root is not None and (
        ctx.data.name != "cifar10" or ctx.data.image_size != 32
    ):
        raise ConfigError(
            f"experiment.cifar10c_root: CIFAR-10-C files go with CIFAR-10 at 32x32, but the "
            f"data is {ctx.data.name} at {ctx.data.image_size}x{ctx.data.image_size}"
        )
    corrupted_sets(ctx)  # unreadable CIFAR-10-C files fail here
