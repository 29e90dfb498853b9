"""`compressor run`: dense baseline, layer ticket at init, shrunk ticket — measured side by side.

Every stage writes its files under the output directory (models in the store format,
training checkpoints, ONNX files, result JSON), so a run can be resumed and any stage
re-run alone. The three variants share theta_0: the ticket is chosen on the dense
network's initial weights before anything is trained.
"""

from __future__ import annotations

import contextlib
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
from compressor.data.splits import DataSplits, load_data
from compressor.errors import ConfigError, InputError
from compressor.models.spec import ModelSpec
from compressor.models.store import load_model
from compressor.outdir import exclusive_out_dir
from compressor.recipe.resume import RECIPE_FILE, recipe_changes, started_recipe
from compressor.recipe.sections import Recipe
from compressor.training.checkpoint_checks import check_same_file
from compressor.training.config import TrainConfig
from compressor.training.distributed import barrier, cleanup, init_from_env
from compressor.workflows.accuracy_check import mark_comparable_
from compressor.workflows.deliver import benchmark_variants, export_precisions, export_variant
from compressor.workflows.export_probe import probe_export
from compressor.workflows.facts import TrainedFacts
from compressor.workflows.report import write_report
from compressor.workflows.report_budget import budget_report, shrink_budget_report
from compressor.workflows.stages import (
    dense_model,
    pretrained_info,
    prune_ticket,
    shrink_ticket,
    train_variant,
)
from deploy.lazy import lazy_import
from deploy.records import LatencyRecord
from export.config import ExportResult

Log = Callable[[str], None]
VARIANTS = ("dense", "ticket", "shrunk")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class PipelineResult:
    out_dir: Path
    report: dict[str, Any]
    report_json: Path
    report_md: Path
    plot: Path
    # Variants the accuracy check marked not comparable, with the reason (empty: none);
    # `compressor run` then exits 3 (compressor/workflows/accuracy_check.py).
    not_comparable: dict[str, str] = field(default_factory=dict)


@dataclass
class _Variant:
    name: str
    model: nn.Module
    spec: ModelSpec
    facts: TrainedFacts


def _train_stage(
    name: str,
    model: nn.Module,
    spec: ModelSpec,
    data: DataSplits,
    config: TrainConfig,
    out_dir: Path,
    resume: bool,
    log: Log,
    extra: dict[str, Any],
) -> _Variant:
    """Train (or, on resume, reuse a finished stage) and store the model with its facts."""
    model_dir = out_dir / name / "model"
    if resume:
        check_same_file(model_dir / "spec.json")  # every rank reuses the stage, or none
    if resume and (model_dir / "spec.json").is_file():
        stored = load_model(model_dir, factory=spec.factory)
        log(f"[{name}] reusing finished stage {model_dir}")
        facts = TrainedFacts.from_info(stored.info, str(model_dir))
        return _Variant(name, stored.model, stored.spec, facts)
    log(
        f"[{name}] training {config.epochs} epochs ({spec.model}, "
        f"{len(spec.removed_blocks)} blocks removed)"
    )
    describe = {"variant": name, "spec": spec.to_dict()}
    facts = train_variant(
        model,
        spec,
        data,
        config,
        out_dir / name,
        resume=resume,
        describe=describe,
        extra={"variant": name, **extra},
    )
    log(f"[{name}] test accuracy {facts.accuracy:.4f}, median epoch {facts.epoch_seconds:.2f}s")
    return _Variant(name, model, spec, facts)


def run_pipeline(
    recipe: Recipe, out_dir: str | Path, *, resume: bool = False, log: Log = _stderr
) -> PipelineResult | None:
    """Run every stage; under `torchrun` training is data-parallel across the processes.

    Every process runs the same stages on the same data (pruning at init and shrinking are
    deterministic, so all hold the same model); rank 0 alone writes files and logs, and
    after the last training it alone exports, benchmarks and reports: the others return
    None then.
    """
    dist = init_from_env(recipe.train.device)
    try:
        _check_out_dir(Path(out_dir), recipe, resume)  # refusals create no directory
        # Rank 0 holds the directory for all ranks (it alone writes there); _run checks it
        # again under the lock, in case another run started in between.
        owner = exclusive_out_dir(out_dir) if dist.is_main else contextlib.nullcontext()
        with owner:
            return _run(
                recipe, Path(out_dir), resume, log if dist.is_main else _silent, dist.is_main
            )
    finally:
        cleanup()


def _silent(message: str) -> None:
    pass


def _run(
    recipe: Recipe, out_dir: Path, resume: bool, log: Log, is_main: bool
) -> PipelineResult | None:
    if resume:
        check_same_file(out_dir / RECIPE_FILE)  # every rank resumes, or is refused alike
    _check_out_dir(out_dir, recipe, resume)
    if "tensorrt" in recipe.bench.backends:  # fail now, not after an hour of training
        lazy_import("tensorrt", "bench.backends: tensorrt")
    barrier()  # every rank has looked at out_dir before rank 0 writes into it
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / RECIPE_FILE, json.dumps(recipe.to_dict(), indent=2))
    started = time.perf_counter()
    data = load_data(recipe.data)
    log(
        f"[data] {data.name}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} "
        f"test images, {data.in_channels}x{data.image_size}x{data.image_size}, "
        f"{data.num_classes} classes"
    )
    variants = _trained_variants(recipe, data, out_dir, resume, log)
    if not is_main:  # training is over: export, benchmark and report are rank 0's alone
        return None
    return _deliver(variants, data, recipe, out_dir, log, started)


def _trained_variants(
    recipe: Recipe, data: DataSplits, out_dir: Path, resume: bool, log: Log
) -> list[_Variant]:
    """Dense, ticket and shrunk ticket, trained (or reused on resume), all from one theta_0."""
    dense, spec = dense_model(recipe, data)  # theta_0, shared by the dense run and the ticket
    # An export fault (untraceable op, parity) fails now, in seconds, not after the training.
    probe_export(dense, data, recipe.export, "untrained dense", log)
    pretrained = pretrained_info(recipe, dense)  # model.weights: file, sha256, left out

    # Algorithm 2: score blocks on theta_0, remove the lowest, before any training.
    ticket, pruned, prune_seconds = prune_ticket(
        dense, spec, data, recipe, out_dir / "ticket", log, resume
    )
    log(
        f"[prune] {recipe.prune.criterion}: removed {len(pruned.removed)} of "
        f"{sum(b.removable for b in pruned.blocks)} removable blocks in {prune_seconds:.1f}s "
        f"(MACs {pruned.macs_after / pruned.macs_before:.2f}x of dense)"
    )
    ticket_facts = {
        "criterion": recipe.prune.criterion,
        "prune_seconds": prune_seconds,
        **pretrained,
        **({"latency_budget": pruned.latency.record} if pruned.latency else {}),
    }
    variants = [
        _train_stage("dense", dense, spec, data, recipe.train, out_dir, resume, log, pretrained),
        _train_stage(
            "ticket", ticket, pruned.spec, data, recipe.train, out_dir, resume, log, ticket_facts
        ),
    ]
    variants.append(_shrink_stage(variants[1], data, recipe, out_dir, resume, log))
    return variants


def _deliver(
    variants: list[_Variant],
    data: DataSplits,
    recipe: Recipe,
    out_dir: Path,
    log: Log,
    started: float,
) -> PipelineResult:
    """Export every variant (FP32, INT8, FP16, BF16), time them side by side, write the report."""
    exports = {
        v.name: export_variant(
            v.model,
            v.spec,
            v.facts.to_info(),
            data,
            recipe.export,
            out_dir / v.name / "model.onnx",
            log,
        )
        for v in variants
    }
    largest = max(recipe.bench.batch_sizes)
    precisions = {
        name: export_precisions(result.path, data, recipe.export, largest, log)
        for name, result in exports.items()
    }
    records, fingerprint, warnings = benchmark_variants(
        {v.name: v.model for v in variants},
        {name: result.path for name, result in exports.items()},
        data,
        recipe.bench,
        out_dir,
        log,
    )
    report = _build_report(
        variants, exports, precisions, records, fingerprint, recipe, time.perf_counter() - started
    )
    report["measurement_warnings"] = warnings
    ticket = variants[1].facts
    table = out_dir / "ticket" / "latency_table.json"
    report["latency_budget"] = budget_report(
        ticket.extra.get("latency_budget"),
        table if table.is_file() else _optional_path(recipe.prune.latency_table),
        ticket.removed_blocks,
    )
    report["shrink_budget"] = shrink_budget_report(out_dir / "shrunk" / "shrink.json")
    failed = mark_comparable_(report, data.num_classes, recipe.report.max_accuracy_drop)
    json_path, md_path, plot_path = write_report(report, out_dir)
    log(f"[report] {md_path}")
    return PipelineResult(out_dir, report, json_path, md_path, plot_path, failed)


def _optional_path(text: str | None) -> Path | None:
    return None if text is None else Path(text)


def _check_out_dir(out_dir: Path, recipe: Recipe, resume: bool) -> None:
    """Refuse, before writing anything, to mix two runs in one directory."""
    before = started_recipe(out_dir)
    if before is None:
        return
    if not resume:
        raise InputError(
            f"{out_dir} already holds a run; pass --resume to continue it or choose another --out"
        )
    # Export, benchmark and report run again on every resume, so changing them is safe.
    changed = recipe_changes(
        before, recipe, free_sections=("export", "bench", "experiment", "report")
    )
    if changed:
        raise ConfigError(
            f"--resume: the recipe differs from the one {out_dir} was started with (sections "
            f"{changed}); resume with the same recipe or choose another --out"
        )


def _shrink_stage(
    ticket: _Variant, data: DataSplits, recipe: Recipe, out_dir: Path, resume: bool, log: Log
) -> _Variant:
    model_dir = out_dir / "shrunk" / "model"
    if resume and (model_dir / "spec.json").is_file():
        stored = load_model(model_dir, factory=recipe.model.trusted_factory())
        log("[shrunk] reusing finished stage")
        facts = TrainedFacts.from_info(stored.info, str(model_dir))
        return _Variant("shrunk", stored.model, stored.spec, facts)
    model, spec, result, fine_tune = shrink_ticket(
        ticket.model, ticket.spec, data, recipe, out_dir / "shrunk"
    )
    log(
        f"[shrink] {recipe.shrink.importance}: "
        f"MACs {result.macs_before:,} -> {result.macs_after:,}, "
        f"params {result.params_before:,} -> {result.params_after:,}"
    )
    extra = {
        "shrink": result.to_dict(),
        "fine_tune_epochs": recipe.shrink.fine_tune_epochs,
        "ticket_train_seconds": ticket.facts.train_seconds,
    }
    return _train_stage("shrunk", model, spec, data, fine_tune, out_dir, resume, log, extra)


_LATENCY_FIELDS = (
    "backend",
    "device",
    "precision",
    "batch",
    "mean_ms",
    "p50_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "std_ms",
    "throughput_ips",
    # How far the median moved between the benchmark's runs (None: one run).
    "cv",
    "runs",
    "run_medians_ms",
    "run_cv",
)


def _build_report(
    variants: list[_Variant],
    exports: dict[str, ExportResult],
    precisions: dict[str, dict[str, Any]],
    records: list[LatencyRecord],
    fingerprint: dict[str, Any],
    recipe: Recipe,
    seconds: float,
) -> dict[str, Any]:
    rows = []
    for variant in variants:
        export, facts = exports[variant.name], variant.facts
        latency = [
            {key: getattr(record, key) for key in _LATENCY_FIELDS}
            for record in records
            if record.model == variant.name
        ]
        rows.append(
            {
                "name": variant.name,
                "accuracy": facts.accuracy,
                "val_accuracy": facts.val_accuracy,
                "params": facts.params,
                "macs": facts.macs,
                "removed_blocks": facts.removed_blocks,
                "train_seconds": facts.train_seconds,
                "epoch_seconds": facts.epoch_seconds,
                "epochs": facts.epochs,
                "bn_recalibration": facts.bn_recalibration,  # None: off, or an old stage
                "onnx": str(export.path),
                "onnx_sha256": export.sha256,
                "parity_max_abs_diff": export.parity_max_abs_diff,
                "parity_top1_agreement": export.parity_top1_agreement,
                "spec_sha256": variant.spec.sha256(),
                **precisions[variant.name],  # int8, fp16, bf16 (when made) and readiness
                "latency": latency,
            }
        )
    return {
        "schema": "compressor.report/1",
        "recipe": recipe.to_dict(),
        "variants": rows,
        "speedups": _speedups(rows),
        "environment": {
            **fingerprint,
            "torch_version": torch.__version__,
            "train_device": variants[0].facts.device,
        },
        "pipeline_seconds": seconds,
    }


def _speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Dense median latency / variant median latency, per backend, device, precision, batch."""
    dense = {
        (r["backend"], r["device"], r["precision"], r["batch"]): r["p50_ms"]
        for r in rows[0]["latency"]
    }
    out = []
    for row in rows[1:]:
        for r in row["latency"]:
            key = (r["backend"], r["device"], r["precision"], r["batch"])
            if key in dense:
                out.append(
                    {
                        "variant": row["name"],
                        "backend": key[0],
                        "device": key[1],
                        "precision": key[2],
                        "batch": key[3],
                        "latency_speedup_p50": dense[key] / r["p50_ms"],
                    }
                )
        out.append(
            {
                "variant": row["name"],
                "epoch_time_speedup": rows[0]["epoch_seconds"] / row["epoch_seconds"],
                "accuracy_delta": row["accuracy"] - rows[0]["accuracy"],
            }
        )
    return out
