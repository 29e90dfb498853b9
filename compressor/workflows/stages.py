"""The stages, written once: the pipeline (`compressor run`) calls the cores (prune_ticket,
train_variant, shrink_ticket) on models in memory; the single-stage commands (`compressor
prune|train|shrink|export`) read a stored model, call the same cores, and return a small
summary dict."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.atomic import atomic_write_text
from compressor.data.splits import DataSplits, load_data
from compressor.errors import InputError, UnsupportedModelError
from compressor.models.blocks import discover_blocks, output_shape, select_patterns
from compressor.models.channels import channel_mismatch, mismatch_message
from compressor.models.pretrained import describe_pretrained, load_pretrained_
from compressor.models.source import channel_kwarg
from compressor.models.spec import ModelSpec, build_model
from compressor.models.store import load_model, save_model
from compressor.outdir import exclusive_out_dir
from compressor.prune.latency import BudgetOutcome
from compressor.prune.layers import LayerPruneResult, prune_at_init, scoring_batch
from compressor.prune.shrink import ShrinkResult, count_macs_params, shrink_channels_
from compressor.prune.shrink_latency import shrink_to_latency
from compressor.recipe.sections import Recipe
from compressor.training.bn_recalibration import BNRecalibration, recalibrate_bn_
from compressor.training.checks import check_model_fits
from compressor.training.config import TrainConfig, TrainResult
from compressor.training.distributed import is_main_process
from compressor.training.loop import train
from compressor.workflows.deliver import export_precisions, export_variant
from compressor.workflows.export_probe import probe_export
from compressor.workflows.facts import TrainedFacts
from deploy.paths import read_regular_bytes
from deploy.profiling.table import read_table, write_table

Log = Callable[[str], None]
MAX_PRUNE_JSON = 64 << 20  # prune.json of a resumed run: scores and steps, never this large


def dense_model(recipe: Recipe, data: DataSplits) -> tuple[nn.Module, ModelSpec]:
    """theta_0 of the recipe's model, checked against the data before anything is trained."""
    spec = recipe.model.spec(data.num_classes, data.in_channels)
    torch.manual_seed(recipe.seed)
    model = build_model(spec)
    try:
        shape = output_shape(model, data.val.images[:1])
    except UnsupportedModelError:
        raise
    except Exception as exc:
        mismatch = channel_mismatch(model, data.val.images[:1], str(exc))
        if mismatch is not None:  # "wants 3, gives 1; set data.channels: 3", not torch's text
            key = channel_kwarg(spec.factory) if spec.factory else None
            message = mismatch_message(spec.model, mismatch, data.name, key)
            raise UnsupportedModelError(message) from exc
        raise UnsupportedModelError(
            f"model {spec.model} cannot run on this data's {tuple(data.val.images.shape[1:])} "
            f"inputs: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
        ) from exc
    if shape != (1, data.num_classes):
        hint = " (set num_classes in model.kwargs)" if spec.factory else ""
        raise UnsupportedModelError(
            f"model {spec.model} outputs shape {shape} for one image, but the data has "
            f"{data.num_classes} classes{hint}"
        )
    weights = recipe.model
    if weights.weights is not None:  # theta_0 = the pretrained weights: scored, then trained
        load_pretrained_(
            model,
            weights.weights,
            strict=weights.weights_strict,
            expected_sha256=weights.weights_sha256,
            log=_log_main,
        )
    return model, spec


def pretrained_info(recipe: Recipe, dense: nn.Module) -> dict[str, Any]:
    """{"pretrained": file, sha256, tensors left out} for a stored model's info; {} without
    model.weights. `dense` is the unpruned model dense_model built (same tensor names)."""
    section = recipe.model
    if section.weights is None:
        return {}
    return {"pretrained": describe_pretrained(dense, section.weights, section.weights_sha256)}


def _log_main(message: str) -> None:
    if is_main_process():  # under torchrun, one line rather than one per process
        print(message, file=sys.stderr, flush=True)


def list_blocks(recipe: Recipe) -> str:
    data = load_data(recipe.data)
    model, spec = dense_model(recipe, data)
    blocks = select_patterns(
        discover_blocks(model, data.val.images[:1]), recipe.prune.include, recipe.prune.exclude
    )
    width = max([12, *(len(b.name) + 1 for b in blocks)])
    lines = [
        f"{'block':<{width}} {'stage':>5} {'removable':>9} {'params':>10} {'MACs':>13}  in -> out"
    ]
    for b in blocks:
        lines.append(
            f"{b.name:<{width}} {b.stage + 1:>5} {'yes' if b.removable else 'no':>9} "
            f"{b.params:>10,} {b.macs:>13,}  {b.in_shape} -> {b.out_shape}"
            + (f"  ({b.reason})" if b.reason else "")
        )
    lines.append(
        f"{spec.model}: {sum(b.removable for b in blocks)} of {len(blocks)} residual blocks "
        "are removable"
    )
    return "\n".join(lines)


def prune_ticket(
    dense: nn.Module,
    spec: ModelSpec,
    data: DataSplits,
    recipe: Recipe,
    out: Path,
    log: Log,
    resume: bool = False,
) -> tuple[nn.Module, LayerPruneResult, float]:
    """Algorithm 2: score theta_0's blocks, remove the lowest, recalibrate batch norm.

    Writes out/prune.json (rank 0) and logs the warnings of scores that cannot separate
    the blocks; returns the ticket, what was removed and the seconds the scoring took.
    """
    tick = time.perf_counter()
    measured = earlier_budget_choice(out, recipe) if resume else None
    ticket, result = prune_at_init(
        dense, spec, data.train.images, data.train.labels, recipe.prune, measured=measured
    )
    seconds = time.perf_counter() - tick
    recalibrate_after_surgery_(ticket, data, recipe.train)  # the removed blocks' statistics
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "prune.json", json.dumps(result.to_dict(), indent=2))
        if result.latency is not None and recipe.prune.latency_table is None:
            write_table(out / "latency_table.json", result.latency.table)  # measured here
    for warning in result.warnings:  # scores that cannot separate the blocks
        log(f"[prune] warning: {warning}")
    return ticket, result, seconds


def earlier_budget_choice(out: Path, recipe: Recipe) -> BudgetOutcome | None:
    """The latency-budget choice a resumed run made before (its prune.json and table): the
    stages already trained were built from it, and timing again could choose otherwise."""
    if recipe.prune.budget() is None or not (out / "prune.json").is_file():
        return None
    text = read_regular_bytes(out / "prune.json", "prune.json", max_bytes=MAX_PRUNE_JSON)
    record = json.loads(text).get("latency")
    table = recipe.prune.latency_table or out / "latency_table.json"
    if not record or not Path(table).is_file():
        return None
    removed = list(record["steps"][-1]["removed"])
    return BudgetOutcome(removed, record, read_table(table), list(record.get("warnings") or []))


def prune_stage(recipe: Recipe, out: Path) -> dict[str, Any]:
    """Store theta_0's ticket; `compressor train` then trains it."""
    data = load_data(recipe.data)
    dense, spec = dense_model(recipe, data)  # bad data or model: refused, no directory made
    with exclusive_out_dir(out):  # before the scoring: a second run is refused without it
        ticket, result, _ = prune_ticket(dense, spec, data, recipe, out, _log_main)
        info = {"variant": "ticket", "stage": "pruned at init", **pretrained_info(recipe, dense)}
        save_model(ticket, result.spec, out, info)
    return {
        "model": str(out),
        "removed_blocks": list(result.removed),
        "macs_ratio": result.macs_after / result.macs_before,
        "warnings": list(result.warnings),
    }


def train_variant(
    model: nn.Module,
    spec: ModelSpec,
    data: DataSplits,
    config: TrainConfig,
    stage_dir: Path,
    *,
    resume: bool,
    describe: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> TrainedFacts:
    """Train `model` in place under stage_dir/train and store it in stage_dir/model."""
    result = train(model, data, config, stage_dir / "train", resume=resume, describe=describe)
    return save_trained(model, spec, data, result, stage_dir / "model", extra)


def train_stage(model_dir: str, recipe: Recipe, out: Path, resume: bool) -> dict[str, Any]:
    stored = load_model(model_dir, factory=recipe.model.trusted_factory())
    data = load_data(recipe.data)
    check_model_fits(stored.model, data, torch.device("cpu"))  # its message, not export's
    probe_export(stored.model, data, recipe.export, "stored", _quiet)  # seconds, not the run
    with _owned(out):
        describe = {"spec": stored.spec.to_dict()}
        facts = train_variant(
            stored.model, stored.spec, data, recipe.train, out, resume=resume, describe=describe
        )
    return _summary(facts, out / "model")


def _quiet(message: str) -> None:
    pass


def _owned(out: Path) -> contextlib.AbstractContextManager[Any]:
    """The output directory held by this run; under torchrun by rank 0, which alone writes
    (every rank runs the stage, and the others would be refused the lock)."""
    return exclusive_out_dir(out) if is_main_process() else contextlib.nullcontext()


def save_trained(
    model: nn.Module,
    spec: ModelSpec,
    data: DataSplits,
    result: TrainResult,
    model_dir: Path,
    extra: dict[str, Any] | None = None,
) -> TrainedFacts:
    """Store a trained model with the facts a report needs; returns those facts.

    Under torchrun every rank computes the facts (later stages need them) and rank 0 alone
    writes the files.
    """
    model.cpu().eval()
    macs, params = count_macs_params(model, data.val.images[:1])
    facts = TrainedFacts(
        accuracy=result.test_acc,
        val_accuracy=result.final_val_acc,
        params=params,
        macs=macs,
        removed_blocks=list(spec.removed_blocks),
        train_seconds=result.train_seconds,
        epoch_seconds=result.median_epoch_seconds,
        epochs=result.epochs_run,
        device=result.device,
        bn_recalibration=result.bn_recalibration,  # before the accuracy above was measured
        dataset=data.name,
        input_shape=list(data.val.images.shape[1:]),
        extra=dict(extra or {}),
    )
    if is_main_process():
        save_model(model, spec, model_dir, facts.to_info())
    return facts


def check_same_data(info: dict[str, Any], data: DataSplits, model_dir: str | Path) -> None:
    """A trained model only makes sense on the data it was trained on (name and input size)."""
    shape = list(data.val.images.shape[1:])
    want = (info.get("dataset"), info.get("input_shape"))
    if want[0] is None or want[1] is None:  # stored before these facts were recorded
        return
    if want != (data.name, shape):
        trained = f"{want[0]} {'x'.join(map(str, want[1]))}"
        given = f"{data.name} {'x'.join(map(str, shape))}"
        raise InputError(
            f"{model_dir} was trained on {trained} inputs but this recipe's data is {given}; "
            "use the recipe the model was trained with"
        )


def _summary(facts: TrainedFacts, model_dir: Path) -> dict[str, Any]:
    return {
        "model": str(model_dir),
        "accuracy": facts.accuracy,
        "params": facts.params,
        "macs": facts.macs,
    }


def recalibrate_after_surgery_(
    model: nn.Module, data: DataSplits, config: TrainConfig
) -> BNRecalibration:
    """Batch-norm statistics of the network as it is now, after blocks or channels were cut.

    The running averages still describe the network before the cut; a model evaluated (or
    scored, or exported) before its next training would use them. Same images and seed as
    the recalibration at the end of training (`train.bn_recalibration_batches`, 0 = off).
    """
    return recalibrate_bn_(
        model,
        data.train.images,
        config.bn_recalibration_batches,
        config.batch_size,
        seed=config.seed,
    )


def shrink_for_recipe(
    model: nn.Module, data: DataSplits, recipe: Recipe, out: Path
) -> tuple[ShrinkResult, TrainConfig]:
    """Shrink `model` in place, write out/shrink.json, return the fine-tune settings.

    Fine-tuning reuses the recipe's training settings at the shrink section's epochs and
    (lower) learning rate, without warm-up: the weights are already trained.
    """
    calibration = scoring_batch(data.train.images, data.train.labels, 16, recipe.seed)
    record = None
    if recipe.shrink.by_latency():  # the ratio found by timing probes
        result, record = shrink_to_latency(
            model, data.val.images[:2], recipe.shrink, calibration, _log_main
        )
    else:
        result = shrink_channels_(model, data.val.images[:1], recipe.shrink, calibration)
    recalibrate_after_surgery_(model, data, recipe.train)  # before fine-tuning starts
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        written = {**result.to_dict(), **({"latency": record} if record else {})}
        atomic_write_text(out / "shrink.json", json.dumps(written, indent=2))
    fine_tune = dataclasses.replace(
        recipe.train,
        epochs=recipe.shrink.fine_tune_epochs,
        lr=recipe.shrink.fine_tune_lr,
        warmup_epochs=0,
    )
    return result, fine_tune


def shrink_ticket(
    ticket: nn.Module, spec: ModelSpec, data: DataSplits, recipe: Recipe, out: Path
) -> tuple[nn.Module, ModelSpec, ShrinkResult, TrainConfig]:
    """A shrunk copy of `ticket` (on the CPU), its spec, what was removed and the
    fine-tune settings; `ticket` itself is left as it is."""
    model = copy.deepcopy(ticket).cpu()
    result, fine_tune = shrink_for_recipe(model, data, recipe, out)
    return model, spec.with_shapes(model), result, fine_tune


def shrink_stage(model_dir: str, recipe: Recipe, out: Path, resume: bool) -> dict[str, Any]:
    stored = load_model(model_dir, factory=recipe.model.trusted_factory())
    data = load_data(recipe.data)
    check_same_data(stored.info, data, model_dir)
    with _owned(out):
        model, spec, _, config = shrink_ticket(stored.model, stored.spec, data, recipe, out)
        probe_export(model, data, recipe.export, "shrunk", _quiet)  # before the fine-tune
        describe = {"spec": spec.to_dict()}
        facts = train_variant(model, spec, data, config, out, resume=resume, describe=describe)
    return _summary(facts, out / "model")


def export_stage(model_dir: str, recipe: Recipe, out: Path) -> dict[str, Any]:
    stored = load_model(model_dir, factory=recipe.model.trusted_factory())
    data = load_data(recipe.data)
    check_same_data(stored.info, data, model_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = export_variant(
        stored.model, stored.spec, stored.info, data, recipe.export, out, log=_quiet
    )
    # INT8 QDQ, FP16 and BF16 siblings (out.int8.onnx, out.fp16.onnx, out.bf16.onnx) as asked.
    largest = max(recipe.bench.batch_sizes)
    return {
        **result.to_dict(),
        **export_precisions(result.path, data, recipe.export, largest, _quiet),
    }
