"""The lottery grid on Ray: every cell a Ray task, on whatever GPUs or nodes the cluster has.

Ray, not a scheduler of our own: `ray.init()` starts a cluster on this machine, and the same
code joins one started with `ray start --head` (or KubeRay, or a Slurm job) through
`--address`. The driver (this process) submits a cell once the cells it reads have finished
(compressor/workflows/lottery/schedule.py) and reports progress; a worker trains the cell
with the same code the one-process grid runs (compressor/workflows/lottery/cell_work.py),
holding the cell's lock, on the GPU Ray gave it or on `threads` CPU threads.

Why the grid survives a dying worker: every cell trains with its own checkpoint in
`cells/<key>/train/`, and the kernel drops a dead process's lock. Ray starts a task whose
worker died again (`retries`), and the new try resumes from that checkpoint; a cell whose
`result.json` exists is read back, never retrained. A cell that raises (a user error, a
NaN loss) is not retried: it is reported by name with its message, the cells that need it
are not started, and every other cell finishes.

The grid's folder must be on a file system every node shares: workers read the dense
networks other workers trained and write their cells there. A worker that cannot see it
fails its cell with that advice instead of training into a folder nobody reads.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from compressor.data.splits import load_data
from compressor.errors import CompressorError, ConfigError, InputError, InUseError
from compressor.recipe.sections import Recipe, recipe_from_dict
from compressor.workflows.lottery.cell_work import CellContext, claim_and_run
from compressor.workflows.lottery.cells import Cell, cell_result, plan
from compressor.workflows.lottery.executor_config import ExecutorConfig
from compressor.workflows.lottery.schedule import GridProgress, dependencies
from deploy.lazy import lazy_import

WAIT_SECONDS = 2.0  # how often a worker whose cell another run holds looks again

# One context per worker process and grid: the data are loaded once per worker, not per cell.
_CONTEXTS: dict[tuple[str, str], CellContext] = {}


def run_on_ray(
    recipe: Recipe,
    out_dir: Path,
    cells: list[Cell],
    executor: ExecutorConfig,
    progress: GridProgress,
) -> dict[str, str]:
    """Train the unfinished cells as Ray tasks; {key: why} of the cells that failed for good."""

    ray = lazy_import("ray", "compressor lottery --executor ray")
    gpu, threads, workers = _start(ray, recipe, executor, progress.log)
    try:
        train = dataclasses.replace(recipe.train, threads=threads)
        if gpu:  # Ray hands each task one GPU, which torch then sees as cuda:0
            train = dataclasses.replace(train, device="cuda")
        task_recipe = json.dumps(dataclasses.replace(recipe, train=train).to_dict())
        task = ray.remote(_cell_task).options(
            num_cpus=threads,
            num_gpus=1 if gpu else 0,
            max_retries=executor.retries,
            retry_exceptions=False,
        )
        return _drive(ray, task, task_recipe, out_dir, cells, workers, progress)
    finally:
        ray.shutdown()


def _start(
    ray: Any, recipe: Recipe, executor: ExecutorConfig, log: Any
) -> tuple[bool, int, int | None]:
    """Start or join the cluster; (cells train on GPUs, threads per cell, most cells at once)."""

    device = recipe.train.device
    quiet = {"logging_level": logging.ERROR, "include_dashboard": False}
    if executor.address is not None:
        try:
            ray.init(address=executor.address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise InputError(
                f"--address {executor.address}: no Ray cluster answers there ({exc}); start "
                "one with `ray start --head` and pass the address it prints, or leave out "
                "--address to start one on this machine"
            ) from exc
        gpus = int(ray.cluster_resources().get("GPU", 0))
        cpus = int(ray.cluster_resources().get("CPU", 1))
    else:
        import torch

        gpus = torch.cuda.device_count() if device != "cpu" else 0
        cpus = os.cpu_count() or 1
    if device == "cuda" and gpus == 0:
        raise ConfigError(
            "train.device is 'cuda' but the Ray cluster has no GPU; use 'auto' or 'cpu'"
        )
    gpu = gpus > 0 and device != "cpu"
    workers = executor.workers
    if gpu:
        threads = executor.threads or recipe.train.threads or 1
    else:
        threads = executor.threads or recipe.train.threads or max(1, cpus // (workers or cpus))
    if executor.address is None:
        slots = workers or (gpus if gpu else max(1, cpus // threads))
        # Logical resources: asking for more workers x threads than cores is the user's call.
        ray.init(num_cpus=max(cpus, slots * threads), num_gpus=gpus, **quiet)
    where = executor.address or "a Ray cluster on this machine"
    each = "one GPU" if gpu else f"{threads} CPU thread(s)"
    at_once = workers or "as many as the cluster's resources allow"
    log(f"[ray] cells on {where}; each on {each}; at most {at_once} at once")
    return gpu, threads, workers


def _drive(
    ray: Any,
    task: Any,
    task_recipe: str,
    out_dir: Path,
    cells: list[Cell],
    workers: int | None,
    progress: GridProgress,
) -> dict[str, str]:
    log = progress.log
    needs = dependencies(cells)
    number = {cell.key: n for n, cell in enumerate(cells, 1)}
    pending: list[Cell] = []
    for cell in cells:
        if cell_result(out_dir, cell.key) is not None:
            log(f"[{number[cell.key]}/{len(cells)}] {cell.key}: finished before, kept")
            progress.finished_before(cell.key)
        else:
            pending.append(cell)
    failed: dict[str, str] = {}
    running: dict[Any, str] = {}
    changed = False
    while pending or running:
        for cell in list(pending):
            lost = [key for key in needs[cell.key] if key in failed]
            if lost:
                pending.remove(cell)
                failed[cell.key] = f"not started, it needs {lost[0]}, which failed"
                progress.fail(cell.key)
            elif workers is not None and len(running) >= workers:
                break
            elif all(key in progress.done for key in needs[cell.key]):
                pending.remove(cell)
                running[task.remote(task_recipe, str(out_dir), cell.key)] = cell.key
                progress.start(cell.key)
        if changed:  # said once the cells it made ready are running too
            progress.report()
            changed = False
        if not running:
            for cell in pending:  # cannot happen with plan()'s order; said, not looped on
                failed[cell.key] = "not started, it waits for cells that never finished"
            break
        ready, _ = ray.wait(list(running), num_returns=1)
        for ref in ready:
            key = running.pop(ref)
            head = f"[{number[key]}/{len(cells)}] {key}"
            try:
                reply = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                failed[key] = _why(getattr(exc, "cause", None) or exc)
                progress.fail(key)
                log(f"{head}: failed: {failed[key]}")
            except ray.exceptions.RayError as exc:  # the worker or its node died every try
                failed[key] = f"its worker died on every try ({type(exc).__name__})"
                progress.fail(key)
                log(f"{head}: failed: {failed[key]}")
            else:
                progress.finish(key)
                log(f"{head}: {_describe(reply)}")
            changed = True
    if changed:
        progress.report()
    return failed


def _why(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if isinstance(exc, CompressorError) else f"{type(exc).__name__}: {text}"


def _describe(reply: dict[str, Any]) -> str:
    if not reply["ran"]:
        return "finished meanwhile by another run, kept"
    return (
        f"accuracy {100 * reply['accuracy']:.2f}, {reply['removed']} blocks removed, "
        f"{reply['seconds']:.0f}s on {reply['host']} ({reply['device']})"
    )


# --- what runs in a Ray worker ---------------------------------------------------------------


def _cell_task(task_recipe: str, out_dir: str, key: str) -> dict[str, Any]:
    """Train one cell in this worker (or read it back when a run finished it meanwhile)."""

    out = Path(out_dir)
    host = socket.gethostname()
    if not (out / "recipe.json").is_file():
        raise InputError(
            f"{out} is not visible on {host}: the grid's --out must be on a file system every "
            "Ray node shares (NFS, Lustre, a cloud file share), at the same path"
        )
    context_key = (task_recipe, str(out.resolve()))
    if context_key not in _CONTEXTS:
        recipe = recipe_from_dict(json.loads(task_recipe))
        _CONTEXTS[context_key] = CellContext(recipe, load_data(recipe.data), out, _worker_log)
    ctx = _CONTEXTS[context_key]
    (cell,) = [cell for cell in plan(ctx.config) if cell.key == key]
    tick = time.perf_counter()
    while True:
        try:
            result, ran = claim_and_run(ctx, cell)
            break
        except InUseError:  # another run trains it: wait, then read its result
            time.sleep(WAIT_SECONDS)
    return {
        "ran": ran,
        "accuracy": result["accuracy"],
        "removed": len(result["removed_blocks"]),
        "seconds": time.perf_counter() - tick,
        "host": host,
        "device": result.get("device"),
    }


def _worker_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
