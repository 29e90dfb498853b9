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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compressor.data.splits import load_data
from compressor.errors import CompressorError, ConfigError, InputError, InUseError
from compressor.recipe.sections import Recipe, recipe_from_dict
from compressor.workflows.lottery.cell_work import CellContext, claim_and_run
from compressor.workflows.lottery.cells import Cell, plan
from compressor.workflows.lottery.executor_config import ExecutorConfig
from compressor.workflows.lottery.schedule import (
    GridProgress,
    blocks_removed,
    dependencies,
    log_to_stderr,
)
from deploy.lazy import lazy_import

WAIT_SECONDS = 2.0  # how often a worker whose cell another run holds looks again
REPORT_SECONDS = 300.0  # a progress line at least this often, even when no cell finishes

# One context per worker process and grid: on CPUs the data are loaded once per worker, not
# per cell (a GPU worker trains one cell and exits, see run_on_ray).
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
    try:
        plan_ = _start(ray, recipe, executor)
        progress.log(plan_.describe(executor.address))
        # GPU cells: a fresh worker each (torch's CUDA context keeps its first GPU); Ray
        # honours max_calls only from ray.remote(), not from .options()
        gpu = {"num_gpus": 1, "max_calls": 1} if plan_.gpu else {}
        remote = ray.remote(**gpu)(_cell_task) if gpu else ray.remote(_cell_task)
        task = remote.options(
            num_cpus=plan_.threads, max_retries=executor.max_retries, retry_exceptions=False
        )
        task_recipe = json.dumps(task_recipe_dict(recipe, plan_))
        return _drive(ray, task, task_recipe, out_dir.resolve(), cells, plan_.slots, progress)
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class Resources:
    """What each cell asks Ray for and how many cells train at once."""

    gpu: bool  # one GPU per cell; else `threads` CPU cores
    threads: int
    slots: int  # cells in flight at once: --workers, else what the resources hold

    def describe(self, address: str | None) -> str:
        where = address or "a Ray cluster on this machine"
        each = "one GPU" if self.gpu else f"{self.threads} CPU thread(s)"
        return f"[ray] cells on {where}; each on {each}; at most {self.slots} at once"


def plan_resources(
    device: str, gpus: int, cpus: int, executor: ExecutorConfig, recipe_threads: int | None
) -> Resources:
    """Each cell's share of a cluster with `gpus` GPUs and `cpus` cores (device: the recipe's).

    GPU cells take one GPU each and --threads (else train.threads, else 1) cores; CPU cells
    take --threads (else train.threads, else the cores shared by --workers) cores. Without
    --workers, as many cells train at once as the GPUs, or the cores, hold.
    """
    if device == "cuda" and gpus == 0:
        raise ConfigError(
            "train.device is 'cuda' but the Ray cluster has no GPU; use 'auto' or 'cpu'"
        )
    gpu = gpus > 0 and device != "cpu"
    workers = executor.workers
    if gpu:
        threads = executor.threads or recipe_threads or 1
        return Resources(True, threads, workers or gpus)
    threads = executor.threads or recipe_threads or max(1, cpus // (workers or cpus))
    return Resources(False, threads, workers or max(1, cpus // threads))


def task_recipe_dict(recipe: Recipe, resources: Resources) -> dict[str, Any]:
    """The recipe a worker runs: its threads and device fixed (Ray shows a GPU task its GPU
    as cuda:0; a CPU task must not pick up a GPU Ray did not give it), paths absolute (a
    worker on another node starts in another folder)."""
    device = "cuda" if resources.gpu else "cpu"
    train = dataclasses.replace(recipe.train, threads=resources.threads, device=device)
    data = recipe.data
    if getattr(data, "root", None):
        data = dataclasses.replace(data, root=str(Path(data.root).resolve()))
    return dataclasses.replace(recipe, train=train, data=data).to_dict()


def _start(ray: Any, recipe: Recipe, executor: ExecutorConfig) -> Resources:
    """Start a cluster on this machine, or join the one at --address; the cells' resources."""

    device = recipe.train.device
    quiet = {"logging_level": logging.ERROR, "include_dashboard": False}
    if executor.address is not None:
        _check_reachable(executor.address)
        try:
            ray.init(address=executor.address, **quiet)
        except Exception as exc:  # ConnectionError, a ray:// address without ray[client], ...
            raise InputError(
                f"--address {executor.address}: cannot join a Ray cluster there "
                f"({_first_line(exc)}); start one with `ray start --head` and pass the address "
                "it prints, or leave out --address to start one on this machine"
            ) from exc
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        gpus = int(ray.cluster_resources().get("GPU", 0))
        cpus = int(ray.cluster_resources().get("CPU", 1))
        resources = plan_resources(device, gpus, cpus, executor, recipe.train.threads)
        widest = max((int(n.get("Resources", {}).get("CPU", 0)) for n in nodes), default=0)
        if resources.threads > widest:
            raise ConfigError(
                f"--threads {resources.threads}: no node of the cluster at "
                f"{executor.address} has that many CPUs (the largest has {widest}); "
                "ask for fewer"
            )
        return resources
    import torch

    gpus = torch.cuda.device_count() if device != "cpu" else 0
    cpus = os.cpu_count() or 1
    resources = plan_resources(device, gpus, cpus, executor, recipe.train.threads)
    if resources.threads > cpus:
        raise ConfigError(
            f"--threads {resources.threads}: this machine has {cpus} CPU cores; ask for at "
            "most that many per cell"
        )
    try:  # address="local": a new cluster, even where RAY_ADDRESS or `ray start` say another
        ray.init(
            address="local",
            # logical: more workers x threads than cores is the user's call
            num_cpus=max(cpus, resources.slots * resources.threads),
            num_gpus=gpus,
            **quiet,
        )
    except Exception as exc:
        raise InputError(f"cannot start Ray on this machine: {_first_line(exc)}") from exc
    return resources


def _check_reachable(address: str, seconds: float = 5.0) -> None:
    """A HOST:PORT nobody answers on fails now: ray.init would retry it without end."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # "auto", ray://...: Ray resolves those itself
    try:
        socket.create_connection((host, int(port)), timeout=seconds).close()
    except OSError as exc:
        raise InputError(
            f"--address {address}: nothing answers there ({exc.strerror or exc}); start a "
            "cluster with `ray start --head` and pass the address it prints, or leave out "
            "--address to start one on this machine"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _drive(
    ray: Any,
    task: Any,
    task_recipe: str,
    out_dir: Path,
    cells: list[Cell],
    slots: int,
    progress: GridProgress,
) -> dict[str, str]:
    log = progress.log
    needs = dependencies(cells)
    pending = progress.unfinished(cells, out_dir)
    failed: dict[str, str] = {}
    running: dict[Any, str] = {}
    changed = True  # the first line once the first cells are submitted
    while pending or running:
        for cell in list(pending):
            lost = [key for key in needs[cell.key] if key in failed]
            if lost:
                pending.remove(cell)
                failed[cell.key] = f"not started, it needs {lost[0]}, which failed"
                progress.fail(cell.key, blocked=True)
            elif len(running) >= slots:
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
        ready, _ = ray.wait(list(running), num_returns=1, timeout=REPORT_SECONDS)
        if not ready:  # nothing finished for a while: say where the grid stands anyway
            changed = True
        for ref in ready:
            key = running.pop(ref)
            head = progress.label(key)
            try:
                reply = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                failed[key] = _why(getattr(exc, "cause", None) or exc)
                progress.fail(key)
                log(f"{head}: failed: {failed[key]}")
            except ray.exceptions.RayError as exc:  # a worker or node died on every try, ...
                failed[key] = f"Ray could not run it: {_first_line(exc)}"
                progress.fail(key)
                log(f"{head}: failed: {failed[key]}")
            else:
                progress.finish(key, trained=reply["ran"])
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
        f"accuracy {100 * reply['accuracy']:.2f}, {blocks_removed(reply['removed'])}, "
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
        _CONTEXTS[context_key] = CellContext(
            recipe, load_data(recipe.data), out, log_to_stderr, executor="ray"
        )
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
