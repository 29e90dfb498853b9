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
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.atomic import atomic_write_text
from compressor.data.corruptions import corrupt, load_cifar10c, mean_corruption_accuracy
from compressor.data.splits import DataSplits, Split, load_data
from compressor.errors import CompressorError, ConfigError, InputError
from compressor.models.blocks import discover_blocks, select_patterns
from compressor.models.spec import ModelSpec, build_model, remove_blocks_
from compressor.models.store import load_model, save_model
from compressor.outdir import LOCK_NAME, exclusive_out_dir
from compressor.prune.filters import block_filters, prune_filters_at_init
from compressor.prune.layers import prune_after_training, prune_at_init, scoring_batch
from compressor.prune.shrink import count_macs_params
from compressor.recipe.experiment import ExperimentConfig
from compressor.recipe.resume import recipe_changes, started_recipe
from compressor.recipe.sections import Recipe
from compressor.training.config import RUNTIME_ONLY_FIELDS, resolve_device, rewind_path
from compressor.training.evaluate import evaluate
from compressor.training.loop import train
from compressor.training.memory import step_memory_bytes
from compressor.workflows.lottery.analysis import error_barrier, recompute_bn_stats, stage_cka
from compressor.workflows.lottery.cells import Cell, cell_result, plan
from compressor.workflows.lottery.energy import EnergyMeter
from compressor.workflows.lottery.summary import write_summary
from compressor.workflows.stages import dense_model

Log = Callable[[str], None]
LMC_SEED_OFFSET = 1000  # the twin's data-order seed: seed + this
SCRATCH_SEED_OFFSET = 7919  # the re-initialised ticket's weight seed: seed + this
CKA_MAX_IMAGES = 2000
# Dense networks keep snapshots at the paper's rewind points (and any other the grid names),
# so a grid may later grow by rewind points without retraining them.
PAPER_REWIND = (0.0, 0.25, 0.5, 0.75)
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


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class _Context:
    recipe: Recipe
    data: DataSplits
    out_dir: Path
    log: Log
    corrupted: dict[tuple[str, int], Split] = field(default_factory=dict)
    dense_trained: dict[int, nn.Module] = field(default_factory=dict)

    @property
    def config(self) -> ExperimentConfig:
        return self.recipe.experiment

    def cell_dir(self, key: str) -> Path:
        return self.out_dir / "cells" / key


def run_experiment(
    recipe: Recipe, out_dir: str | Path, *, resume: bool = False, log: Log = _stderr
) -> Path:
    """Run (or continue) the grid of `recipe.experiment`; returns the summary.md path.

    The output directory is held for the whole run (`compressor.outdir`): a second run on it
    is refused with the first one's process id.
    """
    out_dir = Path(out_dir)
    cells = plan(recipe.experiment)  # a bad grid fails before anything is written
    _check_out_dir(out_dir, recipe, resume)
    data = load_data(recipe.data)
    log(
        f"[data] {data.name}: {len(data.train)} train / {len(data.val)} val / "
        f"{len(data.test)} test images; {len(cells)} cells"
    )
    ctx = _Context(recipe, data, out_dir, log)
    _preflight(ctx, cells)  # nothing is written before the grid is known to fit
    with exclusive_out_dir(out_dir):
        _check_out_dir(out_dir, recipe, resume)  # again: another run may have started since
        return _run_cells(ctx, cells)


def _run_cells(ctx: _Context, cells: list[Cell]) -> Path:

    recipe, out_dir, data, log = ctx.recipe, ctx.out_dir, ctx.data, ctx.log
    atomic_write_text(out_dir / "recipe.json", json.dumps(recipe.to_dict(), indent=2))
    started = time.perf_counter()
    for number, cell in enumerate(cells, 1):
        result = cell_result(out_dir, cell.key)
        if result is not None:
            log(f"[{number}/{len(cells)}] {cell.key}: finished before, kept")
            continue
        tick = time.perf_counter()
        result = _run_cell(ctx, cell)
        log(
            f"[{number}/{len(cells)}] {cell.key}: accuracy {100 * result['accuracy']:.2f}, "
            f"{len(result['removed_blocks'])} blocks removed, {time.perf_counter() - tick:.0f}s"
        )
    log(f"[grid] done in {time.perf_counter() - started:.0f}s")
    return write_summary(
        recipe,
        out_dir,
        cells,
        dense_models=_dense_models(ctx),
        images=data.test.images[:CKA_MAX_IMAGES],
    )


def _check_out_dir(out_dir: Path, recipe: Recipe, resume: bool) -> None:
    before = started_recipe(out_dir)
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


def _preflight(ctx: _Context, cells: list[Cell]) -> None:
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
        model, spec = _theta0(ctx, config.seeds[0])
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
    _corrupted_sets(ctx)  # unreadable CIFAR-10-C files fail here


# --- building each cell's network ------------------------------------------------------------


def _theta0(ctx: _Context, seed: int) -> tuple[nn.Module, ModelSpec]:

    return dense_model(dataclasses.replace(ctx.recipe, seed=seed), ctx.data)


def _prune_config(ctx: _Context, criterion: str, blocks: int, seed: int) -> Any:
    return dataclasses.replace(
        ctx.recipe.prune,
        criterion=criterion,
        blocks=blocks,
        fraction=None,
        macs_target=None,
        seed=seed,
    )


def _layer_ticket(ctx: _Context, criterion: str, blocks: int, seed: int) -> tuple[nn.Module, Any]:
    """(ticket with theta_0 weights, LayerPruneResult) of Algorithm 2."""

    dense, spec = _theta0(ctx, seed)
    train = ctx.data.train
    ticket, result = prune_at_init(
        dense, spec, train.images, train.labels, _prune_config(ctx, criterion, blocks, seed)
    )
    return ticket, result


def _ticket(
    ctx: _Context, criterion: str, blocks: int, seed: int
) -> tuple[nn.Module, ModelSpec, tuple[str, ...]]:
    """(ticket at theta_0, its spec, removed blocks) of Algorithm 2 for the cells built on it.

    Once the init cell has finished, its recorded choice is used: the scratch, filter and
    LMC cells then build on the very ticket that was trained, even when they run on another
    machine whose scoring could break a near-tie differently."""

    done = cell_result(ctx.out_dir, Cell("init", seed, criterion, blocks).key)
    if done is None:
        ticket, result = _layer_ticket(ctx, criterion, blocks, seed)
        return ticket, result.spec, result.removed
    ticket, spec = _theta0(ctx, seed)
    removed = tuple(done["removed_blocks"])
    remove_blocks_(ticket, list(removed), example=ctx.data.val.images[:1])
    return ticket, spec.with_removed(removed), removed


def _dense_trained(ctx: _Context, seed: int) -> nn.Module:

    if seed not in ctx.dense_trained:
        stored = load_model(
            ctx.cell_dir(f"dense-s{seed}") / "model", factory=ctx.recipe.model.trusted_factory()
        )
        ctx.dense_trained[seed] = stored.model.eval()
    return ctx.dense_trained[seed]


def _dense_models(ctx: _Context) -> dict[int, nn.Module]:
    for seed in ctx.config.seeds:
        _dense_trained(ctx, seed)
    return ctx.dense_trained


def _build(ctx: _Context, cell: Cell) -> tuple[nn.Module, ModelSpec, dict[str, Any], Any]:
    """(model to train, its spec, facts for result.json, TrainConfig) of one cell."""

    train_config = dataclasses.replace(ctx.recipe.train, seed=cell.seed)
    facts: dict[str, Any] = {}
    if cell.kind == "dense":
        model, spec = _theta0(ctx, cell.seed)
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
        model, spec = _theta0(ctx, cell.seed)
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
        _, spec = _theta0(ctx, cell.seed)
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
            model, spec = _theta0(ctx, cell.seed)
        else:  # the twin of a ticket at init
            model, spec, _ = _ticket(ctx, cell.criterion, cell.blocks, cell.seed)
        train_config = dataclasses.replace(train_config, seed=cell.seed + LMC_SEED_OFFSET)
    else:
        raise ConfigError(f"unknown cell kind {cell.kind!r}")
    return model, spec, facts, train_config


# --- running one cell --------------------------------------------------------------------


def _run_cell(ctx: _Context, cell: Cell) -> dict[str, Any]:

    cell_dir = ctx.cell_dir(cell.key)
    model, spec, facts, config = _build(ctx, cell)
    batch = min(config.batch_size, len(ctx.data.train))
    memory = step_memory_bytes(model, ctx.data.train.images[:batch], ctx.data.train.labels[:batch])
    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    meter = EnergyMeter(ctx.config.energy_source, ctx.config.power_watts, ctx.config.g_co2_per_kwh)
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


def _corrupted_sets(ctx: _Context) -> dict[tuple[str, int], Split]:
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


def _robustness(ctx: _Context, model: nn.Module, device: torch.device) -> dict[str, Any] | None:

    if not ctx.config.corruptions or not ctx.config.severities:
        return None
    n = min(ctx.config.robustness_samples, len(ctx.data.test))
    clean = Split(ctx.data.test.images[:n], ctx.data.test.labels[:n])
    rows = [
        {"corruption": "clean", "severity": 0, "accuracy": evaluate(model, clean, device=device)[0]}
    ]
    for (name, severity), split in _corrupted_sets(ctx).items():
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


def _cka(ctx: _Context, dense: nn.Module, model: nn.Module) -> dict[str, float] | None:
    """Per-stage CKA; None when it is undefined (a stage whose output is constant)."""

    try:
        return stage_cka(dense, model.cpu(), ctx.data.test.images[:CKA_MAX_IMAGES])
    except CompressorError as exc:
        ctx.log(f"[cka] not computed: {exc}")
        return None


def _lmc(ctx: _Context, cell: Cell, model: nn.Module, device: torch.device) -> dict[str, Any]:

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
