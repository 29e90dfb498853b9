"""`deploy compare BASELINE NEW`: speed-ups of one result file over another, same device only.

A speed-up between two files is only the model's (or the setting's) when both were measured
on the same machine with the same software: two files with different fingerprint ids
(`deploy.machine.fingerprint.fingerprint_id`) also differ in CPU, GPU, threads or library versions,
and their ratio mixes that difference in. So `compare_results` refuses them, naming both
devices and what differs, unless asked (`allow_cross_device=True`), and then labels the
output as cross-device. Measurements are matched on model, backend, device, precision and
batch; each pair shows medians, p90/p99 and both files' run-to-run CV, and a speed-up smaller
than the run-to-run noise is marked as such.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from deploy.errors import DeployConfigError, DeployInputError
from deploy.machine.fingerprint import _ID_FIELDS, _ID_FIELDS_WHEN_SET, fingerprint_id
from deploy.records import LatencyRecord
from deploy.results.files import ResultFile
from deploy.results.report import device_label

RecordKey = tuple[str, str, str, str, int]  # model, backend, device, precision, batch
KEY_FIELDS = ("model", "backend", "device", "precision", "batch")  # a RecordKey's fields
_MAX_DIFFERENCES = 4  # named in the refusal; more would not fit one line


@dataclass(frozen=True)
class Pair:
    """The same measurement in both files."""

    baseline: LatencyRecord
    new: LatencyRecord

    @property
    def speedup(self) -> float | None:
        """baseline p50 / new p50: above 1 means NEW is faster; None when a p50 is 0 (a
        timer too coarse for the model), which no ratio can be made of."""
        if self.new.p50_ms <= 0 or self.baseline.p50_ms <= 0:
            return None
        return self.baseline.p50_ms / self.new.p50_ms

    @property
    def within_noise(self) -> bool | None:
        """True when the medians differ by less than twice their combined run-to-run CV;
        None when either file has no run-to-run CV (one run, or an older file)."""
        if self.baseline.run_cv is None or self.new.run_cv is None or self.speedup is None:
            return None
        noise = 2 * math.hypot(self.baseline.run_cv, self.new.run_cv)
        return abs(self.speedup - 1) <= noise


@dataclass(frozen=True)
class Comparison:
    pairs: tuple[Pair, ...]
    cross_device: bool  # the files' fingerprint ids differ (and that was allowed)
    baseline_device: str  # short device labels, for the header
    new_device: str
    only_in_baseline: tuple[RecordKey, ...]
    only_in_new: tuple[RecordKey, ...]


def compare_results(
    baseline: ResultFile,
    new: ResultFile,
    *,
    allow_cross_device: bool = False,
    names: tuple[str, str] = ("baseline", "new"),
    batch: int | None = None,
) -> Comparison:
    """Pair the files' records; refuses different fingerprints unless `allow_cross_device`.

    `names` are what the refusal and errors call the two files (their paths in the CLI).
    """
    labels = (_label(baseline), _label(new))
    ids = (_fingerprint_id(baseline), _fingerprint_id(new))
    cross = ids[0] != ids[1]
    if cross and not allow_cross_device:
        differences = fingerprint_differences(baseline.fingerprint, new.fingerprint)
        differ = f"; they differ in {differences}" if differences else ""
        raise DeployConfigError(
            f"{names[0]} was measured on {labels[0]} (fingerprint {ids[0]}) and {names[1]} on "
            f"{labels[1]} (fingerprint {ids[1]}){differ}: a speed-up between them mixes the "
            "device difference into the model's; pass --allow-cross-device to compute it anyway"
        )
    old_records, new_records = _by_key(baseline, batch), _by_key(new, batch)
    pairs = tuple(Pair(old_records[k], new_records[k]) for k in old_records if k in new_records)
    if not pairs:
        raise DeployInputError(
            f"no measurement is in both files (matched on model, backend, device, precision "
            f"and batch): {names[0]} has {_keys_text(old_records) or 'none'}; {names[1]} has "
            f"{_keys_text(new_records) or 'none'}"
        )
    return Comparison(
        pairs=pairs,
        cross_device=cross,
        baseline_device=f"{labels[0]} [{ids[0]}]",
        new_device=f"{labels[1]} [{ids[1]}]",
        only_in_baseline=tuple(k for k in old_records if k not in new_records),
        only_in_new=tuple(k for k in new_records if k not in old_records),
    )


def render_comparison(comparison: Comparison, names: tuple[str, str]) -> str:
    """Plain-text lines: a header per file, an aligned table, then unmatched measurements."""
    lines = []
    if comparison.cross_device:
        lines.append(
            "CROSS-DEVICE comparison (--allow-cross-device): the speed-ups include the "
            "difference between the two devices, not only between the measurements"
        )
    lines += [
        f"baseline: {names[0]} on {comparison.baseline_device}",
        f"new:      {names[1]} on {comparison.new_device}",
        "speed-up = baseline p50 / new p50 (above 1: new is faster); run CV = run-to-run "
        "variation of the medians, baseline / new",
        "",
    ]
    header = ["model", "backend", "device", "precision", "batch", "p50 ms", "speed-up"]
    header += ["p90 ms", "p99 ms", "run CV", "note"]
    rows = []
    for pair in comparison.pairs:
        old, new = pair.baseline, pair.new
        note = {True: "within noise", False: "", None: "noise unknown"}[pair.within_noise]
        rows.append(
            [
                *(str(part) for part in _key(old)),
                f"{old.p50_ms:.3f} -> {new.p50_ms:.3f}",
                "n/a" if pair.speedup is None else f"{pair.speedup:.2f}x",
                f"{old.p90_ms:.3f} -> {new.p90_ms:.3f}",
                f"{old.p99_ms:.3f} -> {new.p99_ms:.3f}",
                f"{_percent(old.run_cv)} / {_percent(new.run_cv)}",
                note,
            ]
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for cells in [header, ["-" * w for w in widths], *rows]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    for title, keys in (
        ("only in baseline", comparison.only_in_baseline),
        ("only in new", comparison.only_in_new),
    ):
        if keys:
            lines.append(f"{title}: {_keys_text(dict.fromkeys(keys))}")
    return "\n".join(lines)


def fingerprint_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    """The timing-relevant fields two fingerprints differ in, e.g. "threads 2 vs 4"."""
    differences = []
    for name in (*_ID_FIELDS, *_ID_FIELDS_WHEN_SET):
        left, right = a.get(name), b.get(name)
        if left == right:
            continue
        if isinstance(left, Mapping) and isinstance(right, Mapping):  # libraries
            for lib in sorted(set(left) | set(right)):
                if left.get(lib) != right.get(lib):
                    differences.append(f"{lib} {left.get(lib)} vs {right.get(lib)}")
        else:
            differences.append(f"{name} {left} vs {right}")
    if len(differences) > _MAX_DIFFERENCES:
        more = len(differences) - _MAX_DIFFERENCES
        differences = [*differences[:_MAX_DIFFERENCES], f"{more} more"]
    return ", ".join(differences)


def _fingerprint_id(result: ResultFile) -> str:
    return str(result.fingerprint.get("fingerprint_id") or fingerprint_id(result.fingerprint))


def _label(result: ResultFile) -> str:
    first = result.records[0] if result.records else None
    device = first.device if first else "cpu"
    return device_label(result.fingerprint, device, first.threads if first else None)


def _key(record: LatencyRecord) -> RecordKey:
    return tuple(getattr(record, field) for field in KEY_FIELDS)  # type: ignore[return-value]


def _by_key(result: ResultFile, batch: int | None) -> dict[RecordKey, LatencyRecord]:
    return {_key(r): r for r in result.records if batch is None or r.batch == batch}


def _keys_text(keys: Mapping[RecordKey, Any] | Sequence[RecordKey]) -> str:
    return "; ".join(f"{m} {b} {d} {p} batch {n}" for m, b, d, p, n in keys)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"
