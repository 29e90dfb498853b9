"""Layer pruning to a latency budget measured on a device, not to a block count or MACs.

Blocks of equal MACs do not cost equal time (a small late-stage block is launch-bound on a
GPU, an early one is memory-bound on a CPU), so the choice reads a per-block latency table
(`deploy profile-blocks`, measured here or on the target and carried over): keep the most
saliency while the predicted latency meets the budget (knapsack.py). A prediction is not a
measurement, so the candidate is then built, exported and *timed* side by side with the
dense network; when it misses the budget, more blocks are removed, the shortfall added to
what must be saved, and it is timed again. Every step is recorded for prune.json.

The budget is `latency_ms` on the table's device, or `latency_fraction` of the table's
dense latency. A table measured on another device (another fingerprint) still drives the
choice; the candidate is then checked here as a fraction of the dense network timed here,
and the mismatch is recorded and warned about, never silent.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.errors import ConfigError, InputError
from compressor.models.blocks import BlockInfo
from compressor.models.spec import remove_blocks_
from compressor.prune.knapsack import cover_budget
from compressor.prune.torch_table import time_modules, torch_block_table
from deploy.errors import DeployConfigError, DeployError
from deploy.machine.cpus import default_threads
from deploy.machine.fingerprint import summary_line
from deploy.machine.stability import load_warnings, timing_warnings
from deploy.profiling.blocks_file import BlockEntry, BlocksFile, default_blocks_path, write_blocks
from deploy.profiling.profile_blocks import profile_blocks, time_files
from deploy.profiling.table import LatencyTable, read_table
from deploy.records import BenchConfig, LatencyRecord
from deploy.session import BenchSession
from export.config import ExportConfig, ExportResult
from export.onnx_export import export_onnx

# Timing of the table, of each candidate and of each channel probe (shrink_latency.py):
# turns of 100 iterations (blocks take microseconds), 300 per model in 3 runs.
TIMING = {"iterations": 300, "block_iters": 100, "repeats": 3}


@dataclass(frozen=True)
class LatencyBudget:
    """How to prune to latency (the prune section's latency_* keys)."""

    fraction: float | None  # of the dense latency in the table
    ms: float | None  # on the table's device
    table: str | None  # a table file measured elsewhere; None: measure here
    backend: str = "onnxruntime"
    precision: str | None = None
    batch: int = 1
    steps: int = 4  # measure-and-remove-more rounds at most


@dataclass
class BudgetOutcome:
    removed: list[str]
    record: dict[str, Any]  # for prune.json: budget, table, steps
    table: LatencyTable
    warnings: list[str] = field(default_factory=list)


def blocks_file(blocks: Sequence[BlockInfo], result: ExportResult) -> BlocksFile:
    """blocks.json for an export made with `blocks=[b.name for b in blocks]`."""
    by_name = {b.name: b for b in blocks}
    entries = tuple(
        BlockEntry(
            name=bound.name,
            input=bound.input,
            output=bound.output,
            stage=by_name[bound.name].stage,
            index=by_name[bound.name].index,
            macs=by_name[bound.name].macs,
            params=by_name[bound.name].params,
        )
        for bound in result.blocks
    )
    return BlocksFile(result.sha256, result.input_name, entries)


def export_with_blocks(
    model: nn.Module, example: torch.Tensor, path: Path, blocks: Sequence[BlockInfo]
) -> BlocksFile:
    """The model as ONNX at `path` and its blocks file beside it (default_blocks_path)."""
    result = export_onnx(model, example, path, ExportConfig(), blocks=[b.name for b in blocks])
    described = blocks_file(blocks, result)
    write_blocks(default_blocks_path(path), described)
    return described


def prune_to_latency(
    model: nn.Module,
    removable: Sequence[BlockInfo],
    scores: dict[str, float],
    budget: LatencyBudget,
    example: torch.Tensor,
    log: Callable[[str], object] = print,
    every: Sequence[str] | None = None,
) -> BudgetOutcome:
    """The blocks of `removable` to remove from `model` (theta_0) so that it meets `budget`,
    measured. `every`: the names of all the model's blocks (default: `removable`'s), which
    a table of another model is recognised by."""
    every = list(every) if every is not None else [b.name for b in removable]
    candidates = [b.name for b in removable]
    threads = default_threads()
    session = BenchSession(threads)
    config = BenchConfig(batch_sizes=(budget.batch,), **TIMING)
    warnings: list[str] = []
    with tempfile.TemporaryDirectory(prefix="prune-latency-") as folder:
        work = Path(folder)
        ctx = _Timing(model, example, work, work / "dense.onnx", config, session, budget, threads)
        if budget.backend != "torch":
            blocks = export_with_blocks(model, example[:2], ctx.dense_onnx, removable)
        if budget.table is None:
            log(f"[prune] measuring the block latency table on {budget.backend}")
            if budget.backend == "torch":
                table = torch_block_table(
                    model, removable, example, config, session.fingerprint,
                    threads=threads, monitor=session.monitor,
                )  # fmt: skip
            else:
                with _named_backend(budget):
                    table = _profile(ctx.dense_onnx, blocks, config, session, budget, threads, log)
            table = _with_warnings(table, session)
            warnings += _unstable_medians(table, session)
        else:
            table = read_table(budget.table)
            warnings += _table_mismatch(table, session.fingerprint, budget)
        dense_ms = table.batch(budget.batch).network_ms
        target_ms = budget.ms if budget.ms is not None else budget.fraction * dense_ms
        if target_ms >= dense_ms:
            raise ConfigError(
                f"prune.latency_ms {target_ms:.4g}: the dense network already takes "
                f"{dense_ms:.4g} ms in the table ({table.backend}, batch {budget.batch}); give "
                "a smaller budget"
            )
        _check_table_fits(table.batch(budget.batch).blocks, removable, every, budget.table)
        costs = {n: b.cost_ms for n, b in table.batch(budget.batch).blocks.items()}
        steps, step_warnings = _measure_steps(ctx, table, costs, scores, candidates, target_ms, log)
        warnings += step_warnings
    final = steps[-1]
    target_fraction = target_ms / dense_ms
    record = {
        "budget_ms": target_ms,
        "budget_fraction": target_fraction,
        "batch": budget.batch,
        "backend": table.backend,
        "precision": table.precision,
        "table": budget.table or "measured here (latency_table.json)",
        "table_fingerprint_id": table.fingerprint_id,
        "measured_fingerprint_id": session.fingerprint.get("fingerprint_id"),
        "dense_ms_table": dense_ms,
        "steps": steps,
        "warnings": warnings,
    }
    return BudgetOutcome(list(final["removed"]), record, table, warnings)


def _check_table_fits(
    table: dict[str, Any],
    removable: Sequence[BlockInfo],
    every: Sequence[str],
    source: str | None,
) -> None:
    """A table made on another model (another depth or width) is refused, naming a block it
    gets wrong: its costs would be another network's."""
    where = source or "the latency table"
    foreign = sorted(set(table) - set(every))
    missing = sorted({b.name for b in removable} - set(table))
    if foreign or missing:
        raise ConfigError(
            f"prune.latency_table: {where} lists blocks this model does not have "
            f"({foreign[:4]}) or lacks some it does ({missing[:4]}); measure the table on "
            "this model's dense ONNX (`deploy profile-blocks`)"
        )
    for block in removable:
        if table[block.name].macs != block.macs:
            raise ConfigError(
                f"prune.latency_table: block {block.name} has {table[block.name].macs:,} MACs "
                f"in {where} and {block.macs:,} in this model (another width?); measure the "
                "table on this model's dense ONNX (`deploy profile-blocks`)"
            )


def _with_warnings(table: LatencyTable, session: BenchSession) -> LatencyTable:
    """The table with the warnings its timings earned (noisy or drifting, a busy machine)."""
    records = [LatencyRecord.from_dict(r) for r in table.records]
    found = timing_warnings(records, session.monitor.samples, session.limits)
    return dataclasses.replace(table, warnings=found)


def _unstable_medians(table: LatencyTable, session: BenchSession) -> list[str]:
    """What undermines the table's medians (all its warnings are in the table file): medians
    that moved between runs more than the limit, and a busy machine. Single slow iterations
    do not: the table is made of medians."""
    limit = session.limits.max_run_cv
    moved = [r["model"] for r in table.records if (r.get("run_cv") or 0.0) > limit]
    notes = load_warnings(session.monitor.samples, session.limits)
    if moved:
        notes.insert(
            0,
            f"{len(moved)} of the latency table's {len(table.records)} timings moved more than "
            f"{limit:.0%} between runs ({', '.join(moved[:3])}{', ...' if len(moved) > 3 else ''}"
            "); its costs are that uncertain",
        )
    return notes


def _profile(
    dense_onnx: Path,
    blocks: BlocksFile,
    config: BenchConfig,
    session: BenchSession,
    budget: LatencyBudget,
    threads: int,
    log: Callable[[str], object],
) -> LatencyTable:
    return profile_blocks(
        dense_onnx,
        blocks,
        config,
        session.fingerprint,
        backend=budget.backend,
        precision=budget.precision,
        threads=threads,
        monitor=session.monitor,
        log=log,
    )


@dataclass(frozen=True)
class _Timing:
    """What timing a candidate needs: the dense model (and its ONNX), how and where."""

    model: nn.Module
    example: torch.Tensor
    work: Path
    dense_onnx: Path  # exported unless the backend is torch
    config: BenchConfig
    session: BenchSession
    budget: LatencyBudget
    threads: int


def _time_candidate(
    ctx: _Timing, ticket: nn.Module, step: int, log: Callable[[str], object]
) -> list[LatencyRecord]:
    """The candidate timed side by side with dense, as modules (torch) or ONNX files."""
    budget = ctx.budget
    if budget.backend == "torch":
        models = {"dense": ctx.model, "candidate": ticket}
        return time_modules(
            models, ctx.example, ctx.config, threads=ctx.threads, monitor=ctx.session.monitor
        )
    path = ctx.work / f"candidate_{step}.onnx"
    export_onnx(ticket, ctx.example[:2], path, ExportConfig())
    with _named_backend(budget):
        return time_files(
            {"dense": ctx.dense_onnx, "candidate": path},
            budget.backend,
            budget.precision,
            ctx.threads,
            ctx.config,
            ctx.work,
            ctx.session.monitor,
            log=log,
        )


@contextlib.contextmanager
def _named_backend(budget: LatencyBudget) -> Iterator[None]:
    """deploy's errors while timing, as the recipe key that chose the backend: a setting
    (exit 2) or a missing tool such as trtexec or TensorRT (exit 1)."""
    try:
        yield
    except DeployConfigError as exc:
        raise ConfigError(f"prune.latency_backend {budget.backend}: {exc}") from exc
    except DeployError as exc:
        raise InputError(f"prune.latency_backend {budget.backend}: {exc}") from exc


def _table_mismatch(table: LatencyTable, here: dict[str, Any], budget: LatencyBudget) -> list[str]:
    """Say when the table and the timings here are not about the same thing."""
    notes = []
    if table.fingerprint_id != here.get("fingerprint_id"):
        notes.append(
            f"the latency table was measured on another device ({summary_line(table.fingerprint)})"
            f" than the candidates are timed on here ({summary_line(here)}); the budget is "
            "checked here as a fraction of the dense latency measured here"
        )
    if table.backend != budget.backend:
        notes.append(
            f"the latency table is for {table.backend}, the candidates are timed on "
            f"{budget.backend} (prune.latency_backend)"
        )
    return notes


def _measure_steps(
    ctx: _Timing,
    table: LatencyTable,
    costs: dict[str, float],
    scores: dict[str, float],
    candidates: Sequence[str],
    target_ms: float,
    log: Callable[[str], object],
) -> tuple[list[dict[str, Any]], list[str]]:
    """Choose, build, time; remove more while the measurement misses the budget by more
    than the timings' own run-to-run variation. The steps and what to warn about."""
    budget = ctx.budget
    dense_ms = table.batch(budget.batch).network_ms
    target_fraction = target_ms / dense_ms
    need = dense_ms - target_ms
    removed: list[str] = []
    steps: list[dict[str, Any]] = []
    warnings: list[str] = []
    for step in range(1, budget.steps + 1):
        chosen = cover_budget(scores, costs, need, candidates=candidates, forced=removed)
        if step > 1 and len(chosen) == len(removed):  # the table says it already covers
            rest = [name for name in candidates if name not in removed]
            need = sum(costs[name] for name in removed) + min(costs[n] for n in rest) / 2
            chosen = cover_budget(scores, costs, need, candidates=candidates, forced=removed)
        removed = chosen
        predicted = table.predict_ms(removed, budget.batch)
        ticket = copy.deepcopy(ctx.model)
        remove_blocks_(ticket, removed, example=ctx.example[:1])
        records = _time_candidate(ctx, ticket, step, log)
        p50 = {r.model: r.p50_ms for r in records}
        cv = {r.model: r.run_cv for r in records}
        fraction = p50["candidate"] / p50["dense"]
        noise = max(value or 0.0 for value in cv.values())
        steps.append(
            {
                "step": step,
                "removed": list(removed),
                "predicted_ms": predicted,
                "predicted_fraction": predicted / dense_ms,
                "measured_ms": p50["candidate"],
                "measured_dense_ms": p50["dense"],
                "measured_fraction": fraction,
                "run_cv": cv,
            }
        )
        log(
            f"[prune] latency step {step}: {len(removed)} blocks removed, predicted "
            f"{predicted:.4f} ms ({predicted / dense_ms:.3f} of dense), measured "
            f"{p50['candidate']:.4f} ms ({fraction:.3f} of dense {p50['dense']:.4f} ms, run "
            f"CV up to {100 * noise:.1f}%), budget {target_fraction:.3f}"
        )
        if len(steps) > 1 and fraction > steps[-2]["measured_fraction"]:
            warnings.append(
                f"step {step} removed more blocks than step {step - 1} but measured slower "
                f"({fraction:.3f} against {steps[-2]['measured_fraction']:.3f} of dense): the "
                "timings on this machine are noisier than the differences being measured"
            )
        if fraction <= target_fraction:
            break
        if len(removed) == len(candidates):
            warnings.append(_missed(steps, target_fraction))
            break
        if fraction - target_fraction <= noise * fraction:
            warnings.append(
                f"the ticket measures {fraction:.3f} of the dense latency, over the budget's "
                f"{target_fraction:.3f} by less than the run-to-run variation ({100 * noise:.1f}%"
                "); no more blocks removed on a difference the timings cannot resolve"
            )
            break
        if step == budget.steps:
            warnings.append(_missed(steps, target_fraction))
        need += (fraction - target_fraction) * dense_ms  # the shortfall, in the table's ms
        need = min(need, sum(costs[name] for name in candidates))
    return steps, warnings


def _missed(steps: list[dict[str, Any]], target_fraction: float) -> str:
    return (
        f"after {len(steps)} steps the ticket measures {steps[-1]['measured_fraction']:.3f} "
        f"of the dense latency here, above the budget's {target_fraction:.3f}"
    )


__all__ = [
    "BudgetOutcome",
    "LatencyBudget",
    "blocks_file",
    "export_with_blocks",
    "prune_to_latency",
]
