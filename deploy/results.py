"""Result files: the one format every benchmark writes and every report reads.

Schema "deploy.results/2" (JSON object):
    schema       "deploy.results/2"
    created      ISO 8601 UTC time the file was written, e.g. "2026-05-09T07:35:25Z"
    fingerprint  object from `deploy.fingerprint.device_fingerprint`
    records      list of `LatencyRecord.to_dict()` objects (one per model x backend x
                 precision x batch x device). Version 2 added the optional fields
                 accuracy, accuracy_samples, gpu_compute_ms, energy_mj, avg_power_w,
                 power_source and details; version-1 files are still read (those are None).

Reports are made from these files only, so results from a Jetson and a server merge into one
table. Files are written atomically, so an interrupted run never leaves a half-written file
that a later report would choke on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from deploy.bench import LatencyRecord
from deploy.errors import DeployInputError
from deploy.files import atomic_write_text

SCHEMA = "deploy.results/2"
# Older schemas this version still reads.
READABLE_SCHEMAS = (SCHEMA, "deploy.results/1")


@dataclass(frozen=True, kw_only=True)
class ResultFile:
    """A result file as read back: where the numbers came from and the numbers."""

    schema: str
    created: str
    fingerprint: dict[str, Any]
    records: tuple[LatencyRecord, ...]


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
) -> Path:
    """Write a result file atomically (temp file in the same dir, fsync, rename); returns it."""
    path = Path(path)
    document = {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "fingerprint": fingerprint,
        "records": [record.to_dict() for record in records],
    }
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    try:
        return atomic_write_text(path, text)
    except OSError as exc:
        raise DeployInputError(f"cannot write results to {path}: {exc.strerror or exc}") from exc


def read_results(path: str | os.PathLike[str]) -> ResultFile:
    """Read and validate a result file; errors name the file and what is wrong with it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DeployInputError(f"results file not found: {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DeployInputError(f"cannot read results file {path}: {exc}") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DeployInputError(
            f"results file {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
            f"{exc.msg})"
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
    return ResultFile(
        schema=schema,
        created=document["created"],
        fingerprint=document["fingerprint"],
        records=tuple(records),
    )


def format_table(records: Sequence[LatencyRecord]) -> str:
    """Aligned plain-text table, one row per record, for terminals and logs.

    Top-1 accuracy, GPU compute time and energy get columns when any record measured them.
    """
    header = ["model", "backend", "precision", "batch", "mean ms", "p50 ms", "p90 ms", "p99 ms"]
    header.append("img/s")
    optional = [
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
