"""`compressor run`: dense baseline, layer ticket at init, shrunk ticket — measured side by side.

Every stage writes its files under the output directory (models in the store format,
training checkpoints, ONNX files, result JSON), so a run can be resumed and any stage
re-run alone. The three variants share theta_0: the ticket is chosen on the dense
network's initial weights before anything is trained.
"""

from __future__ import annotations

import contextlib
import copy
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
from compressor.prune.layers import prune_at_init
from compressor.recipe.sections import Recipe
from compressor.training.config import TrainConfig
from compressor.training.distributed import barrier, cleanup, init_from_env
from compressor.training.loop import train
from compressor.workflows.accuracy_check import mark_comparable_
from compressor.workflows.deliver import benchmark_variants, export_precisions, export_variant
from compressor.workflows.export_probe import probe_export
from compressor.workflows.report import write_report
from compressor.workflows.stages import (
    dense_model,
    pretrained_info,
    recalibrate_after_surgery_,
    save_trained,
    shrink_for_recipe,
)

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
    info: dict[str, Any]


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
    if resume and (model_dir / "spec.json").is_file():
        stored = load_model(model_dir, factory=spec.factory)
        log(f"[{name}] reusing finished stage {model_dir}")
        return _Variant(name, stored.model, stored.spec, stored.info)
    log(
        f"[{name}] training {config.epochs} epochs ({spec.model}, "
        f"{len(spec.removed_blocks)} blocks removed)"
    )
    result = train(
        model,
        data,
        config,
        out_dir / name / "train",
        resume=resume,
        describe={"variant": name, "spec": spec.to_dict()},
    )
    info = save_trained(model, spec, data, result, model_dir, {"variant": name, **extra})
    log(
        f"[{name}] test accuracy {result.test_acc:.4f}, "
        f"median epoch {result.median_epoch_seconds:.2f}s"
    )
    return _Variant(name, model, spec, info)


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
    _check_out_dir(out_dir, recipe, resume)
    if "tensorrt" in recipe.bench.backends:  # fail now, not after an hour of training
        from deploy.lazy import lazy_import

        lazy_import("tensorrt", "bench.backends: tensorrt")
    barrier()  # every rank has looked at out_dir before rank 0 writes into it
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "recipe.json", json.dumps(recipe.to_dict(), indent=2))
    started = time.perf_counter()
    data = load_data(recipe.data)
    log(
        f"[data] {data.name}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} "
        f"test images, {data.in_channels}x{data.image_size}x{data.image_size}, "
        f"{data.num_classes} classes"
    )
    dense, spec = dense_model(recipe, data)  # theta_0, shared by the dense run and the ticket
    # An export fault (untraceable op, parity) fails now, in seconds, not after the training.
    probe_export(dense, data, recipe.export, "untrained dense", log)
    pretrained = pretrained_info(recipe, dense)  # model.weights: file, sha256, left out

    # Algorithm 2: score blocks on theta_0, remove the lowest, before any training.
    tick = time.perf_counter()
    ticket, pruned = prune_at_init(dense, spec, data.train.images, data.train.labels, recipe.prune)
    prune_seconds = time.perf_counter() - tick
    recalibrate_after_surgery_(ticket, data, recipe.train)  # the removed blocks' statistics
    if is_main:
        (out_dir / "ticket").mkdir(parents=True, exist_ok=True)
        text = json.dumps(pruned.to_dict(), indent=2)
        atomic_write_text(out_dir / "ticket" / "prune.json", text)
    log(
        f"[prune] {recipe.prune.criterion}: removed {len(pruned.removed)} of "
        f"{sum(b.removable for b in pruned.blocks)} removable blocks in {prune_seconds:.1f}s "
        f"(MACs {pruned.macs_after / pruned.macs_before:.2f}x of dense)"
    )
    for warning in pruned.warnings:  # scores that cannot separate the blocks (prune.json too)
        log(f"[prune] warning: {warning}")

    variants = [
        _train_stage("dense", dense, spec, data, recipe.train, out_dir, resume, log, pretrained),
        _train_stage(
            "ticket",
            ticket,
            pruned.spec,
            data,
            recipe.train,
            out_dir,
            resume,
            log,
            {"criterion": recipe.prune.criterion, "prune_seconds": prune_seconds, **pretrained},
        ),
    ]
    variants.append(_shrink_stage(variants[1], data, recipe, out_dir, resume, log))
    if not is_main:  # training is over: export, benchmark and report are rank 0's alone
        return None

    exports = {
        v.name: export_variant(
            v.model, v.spec, v.info, data, recipe, out_dir / v.name / "model.onnx", log
        )
        for v in variants
    }
    precisions = {
        name: export_precisions(result.path, data, recipe, log) for name, result in exports.items()
    }
    records, fingerprint, warnings = benchmark_variants(
        {v.name: v.model for v in variants},
        {name: result.path for name, result in exports.items()},
        data,
        recipe,
        out_dir,
        log,
    )
    report = _build_report(
        variants, exports, precisions, records, fingerprint, recipe, time.perf_counter() - started
    )
    report["measurement_warnings"] = warnings
    failed = mark_comparable_(report, data.num_classes, recipe.report.max_accuracy_drop)
    json_path, md_path, plot_path = write_report(report, out_dir)
    log(f"[report] {md_path}")
    return PipelineResult(out_dir, report, json_path, md_path, plot_path, failed)


def _check_out_dir(out_dir: Path, recipe: Recipe, resume: bool) -> None:
    """Refuse, before writing anything, to mix two runs in one directory."""
    previous = out_dir / "recipe.json"
    if not previous.is_file():
        return
    if not resume:
        raise InputError(
            f"{out_dir} already holds a run; pass --resume to continue it or choose another --out"
        )
    try:
        before = json.loads(previous.read_text())
    except ValueError as exc:
        raise InputError(f"{previous} is not valid JSON; choose another --out") from exc
    now = json.loads(json.dumps(recipe.to_dict()))  # tuples -> lists, as on disk
    # Export, benchmark and report run again on every resume, so changing them is safe.
    changed = sorted(
        k
        for k in before.keys() | now.keys()
        if before.get(k) != now.get(k) and k not in ("export", "bench", "experiment", "report")
    )
    if changed:
        raise ConfigError(
            f"--resume: the recipe differs from the one {out_dir} was started with (sections "
            f"{changed}); resume with the same recipe or choose another --out"
        )


def _shrink_stage(
    ticket: _Variant, data: DataSplits, recipe: Recipe, out_dir: Path, resume: bool, log: Log
) -> _Variant:
    if resume and (out_dir / "shrunk" / "model" / "spec.json").is_file():
        stored = load_model(out_dir / "shrunk" / "model", factory=recipe.model.trusted_factory())
        log("[shrunk] reusing finished stage")
        return _Variant("shrunk", stored.model, stored.spec, stored.info)
    model = copy.deepcopy(ticket.model).cpu()
    result, fine_tune = shrink_for_recipe(model, data, recipe, out_dir / "shrunk")
    log(
        f"[shrink] {recipe.shrink.importance}: "
        f"MACs {result.macs_before:,} -> {result.macs_after:,}, "
        f"params {result.params_before:,} -> {result.params_after:,}"
    )
    spec = ticket.spec.with_shapes(model)
    extra = {
        "shrink": result.to_dict(),
        "fine_tune_epochs": recipe.shrink.fine_tune_epochs,
        "ticket_train_seconds": ticket.info["train_seconds"],
    }
    return _train_stage("shrunk", model, spec, data, fine_tune, out_dir, resume, log, extra)


def _build_report(
    variants: list[_Variant],
    exports: dict[str, Any],
    precisions: dict[str, dict[str, Any]],
    records: list[dict[str, Any]],
    fingerprint: dict[str, Any],
    recipe: Recipe,
    seconds: float,
) -> dict[str, Any]:
    rows = []
    for variant in variants:
        export = exports[variant.name]
        latency = [
            {
                key: record[key]
                for key in (
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
                )
            }
            # How far the median moved between the benchmark's runs (None: one run).
            | {key: record.get(key) for key in ("cv", "runs", "run_medians_ms", "run_cv")}
            for record in records
            if record["model"] == variant.name
        ]
        info = variant.info
        rows.append(
            {
                "name": variant.name,
                "accuracy": info["accuracy"],
                "val_accuracy": info["val_accuracy"],
                "params": info["params"],
                "macs": info["macs"],
                "removed_blocks": info["removed_blocks"],
                "train_seconds": info["train_seconds"],
                "epoch_seconds": info["epoch_seconds"],
                "epochs": info["epochs"],
                "bn_recalibration": info.get("bn_recalibration"),  # None: off, or an old stage
                "onnx": str(export.path),
                "onnx_sha256": export.sha256,
                "parity_max_abs_diff": export.parity_max_abs_diff,
                "parity_top1_agreement": export.parity_top1_agreement,
                "spec_sha256": variant.spec.sha256(),
                **precisions[variant.name],  # int8, fp16 (when made) and readiness
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
            "train_device": variants[0].info.get("device"),
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
