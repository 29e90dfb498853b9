"""One cell of the lottery grid: its network built (Algorithm 1 or 2, a baseline or an LMC
twin), trained, measured and written to `cells/<key>/`, `result.json` last.

Kept apart from the grid (compressor/workflows/lottery/experiment.py) so that whatever runs
a cell, the one-process loop or a Ray worker on another machine, runs the same code.
"""

from __future__ import annotations

import dataclasses
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.atomic import atomic_write_text
from compressor.data.corruptions import corrupt, load_cifar10c, mean_corruption_accuracy
from compressor.data.splits import DataSplits, Split
from compressor.errors import CompressorError, ConfigError, InputError
from compressor.models.spec import ModelSpec, build_model, remove_blocks_
from compressor.models.store import load_model, save_model
from compressor.outdir import exclusive_out_dir
from compressor.prune.filters import block_filters, prune_filters_at_init
from compressor.prune.layers import prune_after_training, prune_at_init, scoring_batch
from compressor.prune.shrink import count_macs_params
from compressor.recipe.experiment import ExperimentConfig
from compressor.recipe.sections import Recipe
from compressor.training.config import resolve_device, rewind_path
from compressor.training.evaluate import evaluate
from compressor.training.loop import train
from compressor.training.memory import step_memory_bytes
from compressor.workflows.lottery.analysis import error_barrier, recompute_bn_stats, stage_cka
from compressor.workflows.lottery.cells import Cell, cell_result
from compressor.workflows.lottery.energy import EnergyMeter, device_kind, physical_gpu_index
from compressor.workflows.stages import dense_model

Log = Callable[[str], None]
LMC_SEED_OFFSET = 1000  # the twin's data-order seed: seed + this
SCRATCH_SEED_OFFSET = 7919  # the re-initialised ticket's weight seed: seed + this
CKA_MAX_IMAGES = 2000
# Dense networks keep snapshots at the paper's rewind points (and any other the grid names),
# so a grid may later grow by rewind points without retraining them.
PAPER_REWIND = (0.0, 0.25, 0.5, 0.75)


@dataclass
class CellContext:
    recipe: Recipe
    data: DataSplits
    out_dir: Path
    log: Log
    executor: str = "local"  # "ray": cells train side by side, which the summary says
    corrupted: dict[tuple[str, int], Split] = field(default_factory=dict)
    dense_trained: dict[int, nn.Module] = field(default_factory=dict)

    @property
    def config(self) -> ExperimentConfig:
        return self.recipe.experiment

    def cell_dir(self, key: str) -> Path:
        return self.out_dir / "cells" / key


# --- building each cell's network ------------------------------------------------------------


def theta0(ctx: CellContext, seed: int) -> tuple[nn.Module, ModelSpec]:

    return dense_model(dataclasses.replace(ctx.recipe, seed=seed), ctx.data)


def _prune_config(ctx: CellContext, criterion: str, blocks: int, seed: int) -> Any:
    return dataclasses.replace(
        ctx.recipe.prune,
        criterion=criterion,
        blocks=blocks,
        fraction=None,
        macs_target=None,
        seed=seed,
    )


def _layer_ticket(
    ctx: CellContext, criterion: str, blocks: int, seed: int
) -> tuple[nn.Module, Any]:
    """(ticket with theta_0 weights, LayerPruneResult) of Algorithm 2."""

    dense, spec = theta0(ctx, seed)
    train = ctx.data.train
    ticket, result = prune_at_init(
        dense, spec, train.images, train.labels, _prune_config(ctx, criterion, blocks, seed)
    )
    return ticket, result


def _ticket(
    ctx: CellContext, criterion: str, blocks: int, seed: int
) -> tuple[nn.Module, ModelSpec, tuple[str, ...]]:
    """(ticket at theta_0, its spec, removed blocks) of Algorithm 2 for the cells built on it.

    Once the init cell has finished, its recorded choice is used: the scratch, filter and
    LMC cells then build on the very ticket that was trained, even when they run on another
    machine whose scoring could break a near-tie differently."""

    done = cell_result(ctx.out_dir, Cell("init", seed, criterion, blocks).key)
    if done is None:
        ticket, result = _layer_ticket(ctx, criterion, blocks, seed)
        return ticket, result.spec, result.removed
    ticket, spec = theta0(ctx, seed)
    removed = tuple(done["removed_blocks"])
    remove_blocks_(ticket, list(removed), example=ctx.data.val.images[:1])
    return ticket, spec.with_removed(removed), removed


def _dense_trained(ctx: CellContext, seed: int) -> nn.Module:

    if seed not in ctx.dense_trained:
        stored = load_model(
            ctx.cell_dir(f"dense-s{seed}") / "model", factory=ctx.recipe.model.trusted_factory()
        )
        ctx.dense_trained[seed] = stored.model.eval()
    return ctx.dense_trained[seed]


def dense_models(ctx: CellContext) -> dict[int, nn.Module]:
    for seed in ctx.config.seeds:
        _dense_trained(ctx, seed)
    return ctx.dense_trained


def _build(ctx: CellContext, cell: Cell) -> tuple[nn.Module, ModelSpec, dict[str, Any], Any]:
    """(model to train, its spec, facts for result.json, TrainConfig) of one cell."""

    train_config = dataclasses.replace(ctx.recipe.train, seed=cell.seed)
    facts: dict[str, Any] = {}
    if cell.kind == "dense":
        model, spec = theta0(ctx, cell.seed)
        if ctx.config.after_training:
            points = tuple(sorted(set(PAPER_REWIND) | set(ctx.config.rewind)))
            train_config = dataclasses.replace(train_config, rewind_points=points)
    elif cell.kind == "init":
        model, result = _layer_ticket(ctx, cell.criterion, cell.blocks, cell.seed)
        spec, facts["block_scores"] = result.spec, result.scores
    elif cell.kind == "scratch":
        _, spec, _ = _ticket(ctx, cell.criterion, cell.blocks, cell.seed)
        torch.manual_seed(cell.seed + SCRATCH_SEED_OFFSET)
        model = build_model(spec)
    elif cell.kind == "filter":
        _, _, removed = _ticket(ctx, cell.criterion, cell.blocks, cell.seed)
        model, spec = theta0(ctx, cell.seed)
        target = block_filters(model, removed)
        train = ctx.data.train
        batch = scoring_batch(
            train.images, train.labels, ctx.recipe.prune.samples_per_class, cell.seed
        )
        pruned = prune_filters_at_init(
            model, ctx.data.val.images[:2], target, cell.criterion, batch, seed=cell.seed
        )
        spec = spec.with_shapes(model)
        facts["filters"] = pruned.to_dict()
        facts["layer_ticket_removed"] = list(removed)
    elif cell.kind == "after":
        from safetensors.torch import load_file

        dense_dir = ctx.cell_dir(f"dense-s{cell.seed}")
        epoch = cell.rewind_epoch(ctx.recipe.train.epochs)
        path = rewind_path(dense_dir / "train", epoch)
        if not path.is_file():
            raise InputError(
                f"{path} is missing: the dense run of seed {cell.seed} kept no snapshot at "
                f"epoch {epoch}; delete {dense_dir} to retrain it with experiment.rewind"
            )
        _, spec = theta0(ctx, cell.seed)
        train = ctx.data.train
        model, result = prune_after_training(
            _dense_trained(ctx, cell.seed),
            load_file(str(path)),
            spec,
            train.images,
            train.labels,
            _prune_config(ctx, cell.criterion, cell.blocks, cell.seed),
        )
        spec, facts["block_scores"] = result.spec, result.scores
        train_config = dataclasses.replace(train_config, start_epoch=epoch)
        facts["rewind_epoch"] = epoch
    elif cell.kind == "lmc":
        if cell.criterion is None:  # the twin of a dense network
            model, spec = theta0(ctx, cell.seed)
        else:  # the twin of a ticket at init
            model, spec, _ = _ticket(ctx, cell.criterion, cell.blocks, cell.seed)
        train_config = dataclasses.replace(train_config, seed=cell.seed + LMC_SEED_OFFSET)
    else:
        raise ConfigError(f"unknown cell kind {cell.kind!r}")
    return model, spec, facts, train_config


# --- running one cell --------------------------------------------------------------------


def run_cell(ctx: CellContext, cell: Cell) -> dict[str, Any]:

    cell_dir = ctx.cell_dir(cell.key)
    model, spec, facts, config = _build(ctx, cell)
    batch = min(config.batch_size, len(ctx.data.train))
    memory = step_memory_bytes(model, ctx.data.train.images[:batch], ctx.data.train.labels[:batch])
    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    meter = EnergyMeter(
        ctx.config.energy_source,
        ctx.config.power_watts,
        ctx.config.g_co2_per_kwh,
        gpu_index=physical_gpu_index(device),
    )
    with meter:
        trained = train(
            model, ctx.data, config, cell_dir / "train", resume=True,
            describe={"cell": cell.key, "spec": spec.to_dict()},
        )  # fmt: skip
    energy = meter.reading(trained.train_seconds)
    cuda_peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    model.eval()
    macs, params = count_macs_params(model.cpu(), ctx.data.val.images[:1])
    result: dict[str, Any] = {
        "key": cell.key,
        **dataclasses.asdict(cell),
        "removed_blocks": list(spec.removed_blocks),
        "accuracy": trained.test_acc,
        "val_accuracy": trained.final_val_acc,
        "macs": macs,
        "params": params,
        "step_memory_bytes": memory,
        "cuda_peak_bytes": cuda_peak,
        "train_seconds": trained.train_seconds,
        "epochs_trained": len(trained.epoch_seconds),
        "median_epoch_seconds": trained.median_epoch_seconds,
        "energy": energy.to_dict() if energy else None,
        "device": trained.device,
        "device_kind": device_kind(device),
        "executor": ctx.executor,
        "host": socket.gethostname(),
        **facts,
    }
    result["corruptions"] = _robustness(ctx, model, device)
    if cell.kind != "dense":
        result["cka_vs_dense"] = _cka(ctx, _dense_trained(ctx, cell.seed), model)
    if cell.kind == "lmc":
        result["lmc"] = _lmc(ctx, cell, model, device)
    save_model(model.cpu(), spec, cell_dir / "model", {"cell": cell.key})
    atomic_write_text(cell_dir / "result.json", json.dumps(result, indent=2))
    return result


def claim_and_run(
    ctx: CellContext, cell: Cell, on_start: Callable[[str], None] | None = None
) -> tuple[dict[str, Any], bool]:
    """(result, whether it was trained now) of `cell`, holding the cell while it trains.

    InUseError while another live process holds the cell. A cell another process finished
    in the meantime (or a retried Ray task whose first try wrote result.json before it
    died) is read back, never trained again.
    """
    with exclusive_out_dir(ctx.cell_dir(cell.key)):
        done = cell_result(ctx.out_dir, cell.key)
        if done is not None:
            return done, False
        if on_start is not None:
            on_start(cell.key)
        return run_cell(ctx, cell), True


def corrupted_sets(ctx: CellContext) -> dict[tuple[str, int], Split]:
    """The corrupted test sets, made once per process and shared by every cell."""
    config, data = ctx.config, ctx.data
    if not ctx.corrupted:
        n = min(config.robustness_samples, len(data.test))
        images, labels = data.test.images[:n], data.test.labels[:n]
        for name in config.corruptions:
            for severity in config.severities:
                if config.cifar10c_root is not None:
                    c_images, c_labels = load_cifar10c(
                        config.cifar10c_root, name, severity, mean=data.mean, std=data.std
                    )
                    ctx.corrupted[name, severity] = Split(c_images[:n], c_labels[:n])
                else:
                    corrupted = corrupt(
                        images, name, severity, mean=data.mean, std=data.std, seed=0
                    )
                    ctx.corrupted[name, severity] = Split(corrupted, labels)
    return ctx.corrupted


def _robustness(ctx: CellContext, model: nn.Module, device: torch.device) -> dict[str, Any] | None:

    if not ctx.config.corruptions or not ctx.config.severities:
        return None
    n = min(ctx.config.robustness_samples, len(ctx.data.test))
    clean = Split(ctx.data.test.images[:n], ctx.data.test.labels[:n])
    rows = [
        {"corruption": "clean", "severity": 0, "accuracy": evaluate(model, clean, device=device)[0]}
    ]
    for (name, severity), split in corrupted_sets(ctx).items():
        rows.append(
            {
                "corruption": name,
                "severity": severity,
                "accuracy": evaluate(model, split, device=device)[0],
            }
        )
    model.cpu()
    source = "CIFAR-10-C files" if ctx.config.cifar10c_root else "generated"
    return {"source": source, "images": n, "mean": mean_corruption_accuracy(rows), "rows": rows}


def _cka(ctx: CellContext, dense: nn.Module, model: nn.Module) -> dict[str, float] | None:
    """Per-stage CKA; None when it is undefined (a stage whose output is constant)."""

    try:
        return stage_cka(dense, model.cpu(), ctx.data.test.images[:CKA_MAX_IMAGES])
    except CompressorError as exc:
        ctx.log(f"[cka] not computed: {exc}")
        return None


def _lmc(ctx: CellContext, cell: Cell, model: nn.Module, device: torch.device) -> dict[str, Any]:

    twin = load_model(
        ctx.cell_dir(cell.twin_of or "") / "model", factory=ctx.recipe.model.trusted_factory()
    ).model
    train = ctx.data.train
    batches = [train.images[i : i + 256] for i in range(0, min(len(train), 1024), 256)]
    result = error_barrier(
        twin.cpu(),
        model.cpu(),
        lambda m: evaluate(m, ctx.data.test, device=device)[0],
        recompute_bn=recompute_bn_stats(batches),
    )
    return {"twin_of": cell.twin_of, "twin_train_seed": cell.seed + LMC_SEED_OFFSET, **result}
