"""`deploy report`, `deploy compare` and `deploy info`: the commands that read result files
or describe the device, each printing text, or with --json one JSON object on stdout for
scripts (stable keys, versioned by "schema"; warnings stay on stderr either way)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from deploy.cli_options import int_option
from deploy.errors import DeployConfigError
from deploy.machine.fingerprint import clock_warnings, device_fingerprint, summary_line
from deploy.records import LatencyRecord
from deploy.results.compare import KEY_FIELDS, Comparison, compare_results, render_comparison
from deploy.results.files import read_results
from deploy.results.report import build_report, load_result_files
from deploy.results.table import model_rows

INFO_SCHEMA = "deploy.info/1"
COMPARE_SCHEMA = "deploy.compare/1"


def report_command(args: argparse.Namespace) -> int:
    """`deploy report`: the report files, then (stderr) the notes on what was set aside."""
    batch = None if args.batch is None else int_option("--batch", args.batch, minimum=1)
    if args.baseline is not None:  # named by the user: a typo must not pass as "no baseline"
        files, _ = load_result_files(args.results)
        rows = sorted(set(model_rows(files).values()))
        names = {record.model for _, result in files for record in result.records}
        if args.baseline in names and args.baseline not in rows:
            raise DeployConfigError(
                f"--baseline {args.baseline!r} names several different models; pass one of "
                f"{[row for row in rows if row.startswith(f'{args.baseline} [')]}"
            )
        if args.baseline not in rows:
            raise DeployConfigError(
                f"--baseline {args.baseline!r} is in none of the result files; their models "
                f"are {rows}"
            )
    report = build_report(args.results, args.out, baseline=args.baseline or "dense", batch=batch)
    for path in report.paths():
        print(f"wrote {path}")
    for note in report.table.notes:  # what was set aside is said here, not only in report.md
        print(f"deploy: note: {note}", file=sys.stderr)
    return 0


def compare_command(args: argparse.Namespace) -> int:
    """`deploy compare BASELINE NEW [--json]`."""
    batch = None if args.batch is None else int_option("--batch", args.batch, minimum=1)
    baseline, new = read_results(args.baseline), read_results(args.new)
    names = (str(args.baseline), str(args.new))
    comparison = compare_results(
        baseline, new, allow_cross_device=args.allow_cross_device, names=names, batch=batch
    )
    for name, result in zip(names, (baseline, new), strict=True):
        for line in result.warnings:
            print(f"deploy: warning: {name}: {line}", file=sys.stderr)
    if args.json:
        warnings = {"baseline": list(baseline.warnings), "new": list(new.warnings)}
        _print_json(comparison_to_dict(comparison, names, warnings))
    else:
        print(render_comparison(comparison, names))
    return 0


def comparison_to_dict(
    comparison: Comparison, names: tuple[str, str], warnings: dict[str, list[str]]
) -> dict[str, Any]:
    """`deploy compare --json`: one object per measurement in both files, then the keys of
    those in only one; times in ms, speed-up = baseline p50 / new p50 (null when a p50 is 0),
    within_noise null when a file has no run-to-run CV."""
    return {
        "schema": COMPARE_SCHEMA,
        "baseline": {"path": names[0], "device": comparison.baseline_device},
        "new": {"path": names[1], "device": comparison.new_device},
        "cross_device": comparison.cross_device,
        "pairs": [
            {field: getattr(pair.baseline, field) for field in KEY_FIELDS}
            | {
                "speedup": pair.speedup,
                "within_noise": pair.within_noise,
                "baseline_figures": _figures(pair.baseline),
                "new_figures": _figures(pair.new),
            }
            for pair in comparison.pairs
        ],
        "only_in_baseline": [_key_dict(key) for key in comparison.only_in_baseline],
        "only_in_new": [_key_dict(key) for key in comparison.only_in_new],
        "warnings": warnings,
    }


def _key_dict(key: tuple[str, str, str, str, int]) -> dict[str, Any]:
    return dict(zip(KEY_FIELDS, key, strict=True))


def _figures(record: LatencyRecord) -> dict[str, Any]:
    identity = record.identity
    figures = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "run_cv", "iterations")
    return {name: getattr(record, name) for name in figures} | {
        "model_identity": identity.to_dict() if identity is not None else None
    }


def info_command(args: argparse.Namespace) -> int:
    """`deploy info [--json]`: the fingerprint result files carry, and clock warnings."""
    fingerprint = device_fingerprint()
    warnings = clock_warnings(fingerprint)
    if args.json:
        _print_json(
            {
                "schema": INFO_SCHEMA,
                "summary": summary_line(fingerprint),
                "fingerprint": fingerprint,
                "warnings": list(warnings),
            }
        )
        return 0
    print(summary_line(fingerprint))
    for key, value in fingerprint.items():
        if value is not None and key != "libraries":
            print(f"  {key}: {value}")
    for line in warnings:
        print(f"warning: {line}")
    return 0


def _print_json(document: dict[str, Any]) -> None:
    """Sorted keys and no NaN, so the output is stable and any JSON parser reads it."""
    print(json.dumps(document, indent=2, sort_keys=True, allow_nan=False, default=_plain))


def _plain(value: object) -> object:
    """Tuples and dataclasses a record may hold, as JSON lists and objects."""
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)  # type: ignore[arg-type]
    if isinstance(value, (tuple, set, frozenset)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    raise TypeError(f"{type(value).__name__} is not JSON")
