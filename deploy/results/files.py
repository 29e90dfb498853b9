"""Result files: the one format every benchmark writes and every report reads.

Schema "deploy.results/3" (JSON object):
    schema       "deploy.results/3"
    created      ISO 8601 UTC time the file was written, e.g. "2026-05-09T07:35:25Z"
    fingerprint  object from `deploy.machine.fingerprint.device_fingerprint`
    records      list of `LatencyRecord.to_dict()` objects (one per model x backend x
                 precision x batch x device). Version 2 added the optional fields
                 accuracy, accuracy_samples, gpu_compute_ms, energy_mj, avg_power_w,
                 power_source and details; version 3 added runs, run_medians_ms and run_cv
                 (run-to-run variation). Version-1 and -2 files are still read (those are None).
    warnings     (version 3, optional) list of strings: what `deploy.machine.stability` found wrong
                 with the measurement (noisy or drifting timings, a busy or throttled
                 machine). Absent or empty: nothing was found.

A record's `details` object (free-form, so no version bump) says how it was timed:
    details.timing            {"method": "blocks" | "rounds" | "alone", "models": N,
                              "block_iters": B, "lead_in_seconds": S, "repeats": R}
                              (`deploy.timed_runs.timing_method`). Absent in files written
                              before it: those side-by-side records were timed in "rounds",
                              one iteration per model per round, which made a model slower
                              than alone.
    details.intra_op_spin_us  onnxruntime records: how long idle intra-op threads spin
                              (microseconds; 0: never; null: onnxruntime's default).

The version went up with each set of new record fields because a reader refuses unknown
fields: an older `deploy` then says the file is from another version instead of naming a
field it does not know.

Reports are made from these files only, so results from a Jetson and a server merge into one
table. Files are written atomically, so an interrupted run never leaves a half-written file
that a later report would choke on.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from deploy.errors import DeployInputError, UnsafePathError, first_line
from deploy.files import atomic_write_text
from deploy.paths import read_regular_bytes
from deploy.records import LatencyRecord

SCHEMA = "deploy.results/3"
# A result file holds a few records per model and batch size: kilobytes. Far beyond this it
# is not one, and reading it whole would only exhaust memory.
MAX_RESULTS_BYTES = 256 << 20
# Older schemas this version still reads.
READABLE_SCHEMAS = (SCHEMA, "deploy.results/2", "deploy.results/1")


@dataclass(frozen=True, kw_only=True)
class ResultFile:
    """A result file as read back: where the numbers came from and the numbers."""

    schema: str
    created: str
    fingerprint: dict[str, Any]
    records: tuple[LatencyRecord, ...]
    warnings: tuple[str, ...] = ()  # measurement warnings; () in older files


def default_results_path(directory: str | os.PathLike[str] | None = None) -> Path:
    """./results/bench-<UTC timestamp>.json, with a suffix if that name is already taken."""
    base = Path(directory) if directory is not None else Path.cwd() / "results"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = base / f"bench-{stamp}.json"
    counter = 2
    while path.exists():
        path = base / f"bench-{stamp}-{counter}.json"
        counter += 1
    return path


def write_results(
    path: str | os.PathLike[str],
    records: Sequence[LatencyRecord],
    fingerprint: dict[str, Any],
    warnings: Sequence[str] = (),
) -> Path:
    """Write a result file atomically (temp file in the same dir, fsync, rename); returns it."""
    path = Path(path)
    document = {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "fingerprint": fingerprint,
        "records": [record.to_dict() for record in records],
        "warnings": [str(line) for line in warnings],
    }
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    try:
        return atomic_write_text(path, text)
    except OSError as exc:
        raise DeployInputError(f"cannot write results to {path}: {exc.strerror or exc}") from exc


def read_results_text(path: str | os.PathLike[str]) -> str:
    """A result file's text: a regular file of at most MAX_RESULTS_BYTES (a FIFO is refused,
    not waited on), decoded as UTF-8."""
    return read_regular_bytes(path, "results file", max_bytes=MAX_RESULTS_BYTES).decode()


def read_results(path: str | os.PathLike[str]) -> ResultFile:
    """Read and validate a result file; errors name the file and what is wrong with it."""
    path = Path(path)
    try:
        text = read_results_text(path)
    except FileNotFoundError as exc:
        raise DeployInputError(f"results file not found: {path}") from exc
    except UnsafePathError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise DeployInputError(f"cannot read results file {path}: {exc}") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DeployInputError(
            f"results file {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
            f"{exc.msg})"
        ) from exc
    except (ValueError, RecursionError) as exc:  # a number too long, nesting too deep
        raise DeployInputError(
            f"results file {path} is not a result file: {first_line(exc)}"
        ) from exc
    if not isinstance(document, dict):
        raise DeployInputError(f"results file {path}: expected a JSON object at the top level")
    schema = document.get("schema")
    if schema not in READABLE_SCHEMAS:
        raise DeployInputError(
            f"results file {path}: schema is {schema!r}, expected {SCHEMA!r}"
            + ("; it was written by another version of deploy" if isinstance(schema, str) else "")
        )
    for key, kind in (("created", str), ("fingerprint", dict), ("records", list)):
        if not isinstance(document.get(key), kind):
            raise DeployInputError(
                f"results file {path}: '{key}' must be a {kind.__name__} (JSON "
                f"{'string' if kind is str else 'object' if kind is dict else 'array'}), "
                f"got {type(document.get(key)).__name__}"
            )
    records = []
    for index, entry in enumerate(document["records"]):
        try:
            records.append(LatencyRecord.from_dict(entry))
        except DeployInputError as exc:
            raise DeployInputError(f"results file {path}: records[{index}]: {exc}") from exc
    warnings = document.get("warnings", [])
    if not isinstance(warnings, list) or not all(isinstance(w, str) for w in warnings):
        raise DeployInputError(
            f"results file {path}: 'warnings' must be a list of strings, got {warnings!r}"
        )
    _check_values(path, document, records)
    return ResultFile(
        schema=schema,
        created=document["created"],
        fingerprint=document["fingerprint"],
        records=tuple(records),
        warnings=tuple(warnings),
    )


def _check_values(path: Path, document: dict[str, Any], records: list[LatencyRecord]) -> None:
    """What the schema check lets through but a report cannot use: text that is not Unicode
    (JSON's lone surrogate escapes such as \\ud800), fingerprint libraries that are not an
    object, and numbers that are negative, NaN, infinite or beyond a float."""
    try:
        json.dumps(document, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DeployInputError(
            f"results file {path} contains a string that is not valid Unicode (a lone "
            f"surrogate escape such as \\ud800); it was not written by deploy"
        ) from exc
    libraries = document["fingerprint"].get("libraries")
    if libraries is not None and not isinstance(libraries, dict):
        raise DeployInputError(
            f"results file {path}: fingerprint 'libraries' must be an object, got "
            f"{type(libraries).__name__}"
        )
    for index, record in enumerate(records):
        for name, value in record.to_dict().items():
            values = value if isinstance(value, (list, tuple)) else [value]  # per-run figures
            for item in values:
                if isinstance(item, bool) or not isinstance(item, (int, float)):
                    continue
                try:
                    finite = math.isfinite(float(item))
                except OverflowError:
                    finite = False
                if not finite or item < 0 or (name == "accuracy" and item > 1):
                    wanted = "a fraction from 0 to 1" if name == "accuracy" else "a number >= 0"
                    raise DeployInputError(
                        f"results file {path}: records[{index}]: '{name}' must be {wanted}, "
                        f"got {str(item)[:40]}"
                    )
        if record.batch < 1:
            raise DeployInputError(
                f"results file {path}: records[{index}]: 'batch' must be >= 1, got {record.batch}"
            )


def format_table(records: Sequence[LatencyRecord]) -> str:
    """Aligned plain-text table, one row per record, for terminals and logs.

    Run-to-run CV (std/mean of the per-run medians), top-1 accuracy, GPU compute time and
    energy get columns when any record measured them.
    """
    header = ["model", "backend", "precision", "batch", "mean ms", "p50 ms", "p90 ms", "p99 ms"]
    header.append("img/s")
    optional = [
        ("run CV", "run_cv", "{:.1%}"),
        ("gpu ms", "gpu_compute_ms", "{:.3f}"),
        ("mJ/call", "energy_mj", "{:.2f}"),
        ("top-1", "accuracy", "{:.2%}"),
    ]
    optional = [o for o in optional if any(getattr(r, o[1]) is not None for r in records)]
    header += [label for label, _, _ in optional]
    rows = [
        [
            r.model,
            r.backend,
            r.precision,
            str(r.batch),
            f"{r.mean_ms:.3f}",
            f"{r.p50_ms:.3f}",
            f"{r.p90_ms:.3f}",
            f"{r.p99_ms:.3f}",
            f"{r.throughput_ips:.1f}",
            *(
                "-" if getattr(r, field) is None else fmt.format(getattr(r, field))
                for _, field, fmt in optional
            ),
        ]
        for r in records
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    text_columns = 3  # model, backend and precision are left-aligned, numbers right-aligned

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(width) if i < text_columns else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])
