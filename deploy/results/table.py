"""Result files merged into one table: a row per model, a column per device x backend x
precision x batch, and the devices they ran on. A leaf below the report and its plots,
which both read the table."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.errors import DeployInputError
from deploy.machine.fingerprint import fingerprint_id
from deploy.records import LatencyRecord
from deploy.results.files import ResultFile

ColumnKey = tuple[
    str, str, str, str, int
]  # fingerprint id, record device, backend, precision, batch


@dataclass(frozen=True)
class Column:
    """One device x backend x precision x batch; `label` names the device for people."""

    fingerprint_id: str
    device: str  # the record's device ("cpu", "cuda")
    backend: str
    precision: str
    batch: int
    label: str

    @property
    def key(self) -> ColumnKey:
        return (self.fingerprint_id, self.device, self.backend, self.precision, self.batch)

    @property
    def title(self) -> str:
        return f"{self.label} | {self.backend} {self.precision} | batch {self.batch}"


@dataclass(frozen=True)
class Cell:
    """One model in one column: its record, where it came from, its speed-up."""

    record: LatencyRecord
    source: Path
    speedup: float | None  # baseline p50 / this p50 in the same column; None without baseline


@dataclass(frozen=True)
class Device:
    """A (fingerprint, record device) pair as the report's Devices section lists it."""

    label: str
    fingerprint_id: str
    description: str
    files: tuple[Path, ...]


@dataclass(frozen=True)
class MergedTable:
    models: tuple[str, ...]  # rows; the baseline first when present
    columns: tuple[Column, ...]
    cells: Mapping[tuple[str, ColumnKey], Cell]
    baseline: str | None  # the baseline model, or None when there is none in the data
    devices: tuple[Device, ...]
    notes: tuple[str, ...] = ()
    # (file, warning) for every file that contributed a cell, in file order.
    warnings: tuple[tuple[Path, str], ...] = ()

    def cell(self, model: str, column: Column) -> Cell | None:
        return self.cells.get((model, column.key))


_Chosen = dict[tuple[str, ColumnKey], tuple[tuple[str, str], Path, LatencyRecord]]


def merge_results(
    files: Sequence[tuple[Path | str, ResultFile]],
    *,
    baseline: str | None = "dense",
    batch: int | None = None,
) -> MergedTable:
    """Merge (path, result file) pairs into one table; pure, no file access."""
    chosen, fingerprints, notes, model_order = _choose_records(files, batch)
    sources: dict[tuple[str, str], set[Path]] = {}
    for (_, key), (_, path, _) in chosen.items():
        sources.setdefault(key[:2], set()).add(path)
    labels = _device_labels({(k[1][0], k[1][1]) for k in chosen}, fingerprints, chosen)
    columns = sorted(
        {Column(*key, label=labels[key[:2]]) for _, key in chosen},
        key=lambda c: (c.label, c.backend, c.precision, c.batch),
    )
    if baseline is not None and baseline not in model_order:
        notes.append(
            f"baseline model {baseline!r} is in none of the files, so there are no speed-ups; "
            f"pass one of {', '.join(model_order)}"
        )
        baseline = None
    models = [baseline] if baseline else []
    models += [m for m in model_order if m != baseline]
    cells: dict[tuple[str, ColumnKey], Cell] = {}
    for (model, key), (_, path, record) in chosen.items():
        base = chosen.get((baseline, key)) if baseline else None
        speedup = base[2].p50_ms / record.p50_ms if base and record.p50_ms > 0 else None
        cells[(model, key)] = Cell(record=record, source=path, speedup=speedup)
    devices = tuple(
        Device(
            label=labels[pair],
            fingerprint_id=pair[0],
            description=describe_fingerprint(fingerprints[pair[0]]),
            files=tuple(sorted(sources[pair])),
        )
        for pair in sorted(labels, key=lambda p: labels[p])
    )
    used = {path for _, path, _ in chosen.values()}
    warnings = tuple(
        (Path(raw_path), line)
        for raw_path, result in files
        if Path(raw_path) in used
        for line in result.warnings
    )
    return MergedTable(
        models=tuple(models),
        columns=tuple(columns),
        cells=cells,
        baseline=baseline,
        devices=devices,
        notes=tuple(notes),
        warnings=warnings,
    )


def _choose_records(
    files: Sequence[tuple[Path | str, ResultFile]], batch: int | None
) -> tuple[_Chosen, dict[str, dict[str, Any]], list[str], list[str]]:
    """One record per (model, column): a measurement repeated in two files is the newer
    file's, with a note naming the other. Returns the records, the fingerprints by id, the
    notes and the models in the order the files list them."""
    chosen: _Chosen = {}
    fingerprints: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    model_order: list[str] = []
    batches: set[int] = set()
    for raw_path, result in files:
        path = Path(raw_path)
        fid = str(result.fingerprint.get("fingerprint_id") or fingerprint_id(result.fingerprint))
        fingerprints.setdefault(fid, result.fingerprint)
        for record in result.records:
            batches.add(record.batch)
            if batch is not None and record.batch != batch:
                continue
            key = (
                record.model,
                (fid, record.device, record.backend, record.precision, record.batch),
            )
            age = (result.created, str(path))
            if key in chosen:
                kept, dropped = sorted([(age, path), (chosen[key][0], chosen[key][1])])[::-1]
                notes.append(
                    f"{record.model} on {record.backend} {record.precision} batch {record.batch} "
                    f"(fingerprint {fid}) is in {kept[1]} and {dropped[1]}: kept the newer, "
                    f"{kept[1]}"
                )
                if kept[1] != path:
                    continue
            chosen[key] = (age, path, record)
            if record.model not in model_order:
                model_order.append(record.model)
    if not chosen:
        raise DeployInputError(
            f"no records for batch {batch}; the files hold batches {sorted(batches)}"
            if batch is not None
            else "the result files hold no records"
        )
    return chosen, fingerprints, notes, model_order


def _device_labels(
    pairs: set[tuple[str, str]],
    fingerprints: Mapping[str, dict[str, Any]],
    chosen: Mapping[tuple[str, ColumnKey], tuple[Any, Path, LatencyRecord]],
) -> dict[tuple[str, str], str]:
    """Label per (fingerprint id, record device); a label two of them share gets the
    fingerprint id appended (two machines) or the record's device (one machine)."""
    threads = {(k[0], k[1]): rec.threads for (_, k), (_, _, rec) in chosen.items()}
    base = {pair: device_label(fingerprints[pair[0]], pair[1], threads.get(pair)) for pair in pairs}
    sharing: dict[str, list[tuple[str, str]]] = {}
    for pair, label in base.items():
        sharing.setdefault(label, []).append(pair)
    labels = {}
    for pair, label in base.items():
        others = sharing[label]
        if len({fid for fid, _ in others}) > 1:  # two machines: the id tells them apart
            label = f"{label} [{pair[0]}]"
        if len({device for _, device in others}) > 1:  # one machine, two record devices
            label = f"{label} ({pair[1]})"
        labels[pair] = label
    return labels


def device_label(
    fingerprint: Mapping[str, Any], device: str = "cpu", threads: int | None = None
) -> str:
    """Short name of where a record ran: GPU, Jetson model + power mode, or CPU + threads."""
    on_cpu = device.lower().startswith("cpu")
    threads = threads if threads is not None else fingerprint.get("threads")
    thread_text = f"{threads} threads" if threads is not None else "default threads"
    if fingerprint.get("jetson_model"):
        name = _short_name(str(fingerprint["jetson_model"]))
        mode = fingerprint.get("power_mode")
        name = f"{name} {mode}" if mode else name
        return f"{name} CPU, {thread_text}" if on_cpu else name
    if not on_cpu and fingerprint.get("gpu_name"):
        return _short_name(str(fingerprint["gpu_name"]))
    return f"{_short_name(str(fingerprint.get('cpu_model') or 'unknown CPU'))}, {thread_text}"


def _short_name(name: str) -> str:
    for noise in ("NVIDIA ", "(R)", "(TM)", " Developer Kit", " Engineering Reference", " CPU"):
        name = name.replace(noise, "")
    name = re.sub(r"\s*@\s*[\d.]+\s*GHz", "", name)
    name = re.sub(r"\s+Processor$", "", name)
    return " ".join(name.split())


def describe_fingerprint(fp: Mapping[str, Any]) -> str:
    """The facts behind a device label, in one line."""
    libs = fp.get("libraries") or {}
    parts = [f"CPU {fp.get('cpu_model')} ({fp.get('logical_cores')} logical cores)"]
    if fp.get("gpu_name"):
        parts.append(
            f"GPU {fp['gpu_name']}, driver {fp.get('gpu_driver')}, CUDA {fp.get('cuda_version')}"
            + {True: ", clocks locked", False: ", clocks not locked"}.get(
                fp.get("gpu_clocks_locked"), ""
            )
        )
    if fp.get("jetson_model"):
        clocks = {True: "locked", False: "not locked"}.get(
            fp.get("jetson_clocks_locked"), "unknown"
        )
        parts.append(
            f"{fp['jetson_model']}, L4T {fp.get('l4t_release')}, JetPack {fp.get('jetpack')}, "
            f"power mode {fp.get('power_mode')}, jetson_clocks {clocks}"
        )
    parts.append(
        ", ".join(
            f"{name} {version}" for name, version in libs.items() if version and name != "numpy"
        )
    )
    system = " ".join(str(fp[k]) for k in ("os", "machine") if fp.get(k))
    parts.append(", ".join(p for p in (system, f"host {fp.get('hostname')}") if p))
    return "; ".join(p for p in parts if p)


# --- rendering ----------------------------------------------------------------------------
