"""Result files merged into one table: a row per model, a column per device x backend x
precision x batch, and the devices they ran on. A leaf below the report and its plots,
which both read the table."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.errors import DeployInputError
from deploy.machine.fingerprint import fingerprint_id
from deploy.records import LatencyRecord, ModelIdentity
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
    # The model each row measured, where its records say (see deploy.records.ModelIdentity).
    identities: Mapping[str, ModelIdentity] = field(default_factory=dict)

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
    labels_by_model = model_rows(files)
    sources: dict[tuple[str, str], set[Path]] = {}
    for (_, key), (_, path, _) in chosen.items():
        sources.setdefault(key[:2], set()).add(path)
    labels = _device_labels({(k[1][0], k[1][1]) for k in chosen}, fingerprints, chosen)
    columns = sorted(
        {Column(*key, label=labels[key[:2]]) for _, key in chosen},
        key=lambda c: (c.label, c.backend, c.precision, c.batch),
    )
    split = [m for m in model_order if m.startswith(f"{baseline} [")]
    if baseline is not None and baseline not in model_order and split:
        notes.append(
            f"baseline model {baseline!r} names {len(split)} different models "
            f"({', '.join(split)}), so there are no speed-ups; pass one of them as the baseline"
        )
        baseline = None
    elif baseline is not None and baseline not in model_order:
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
    identities: dict[str, ModelIdentity] = {}
    for _, _, record in chosen.values():
        if record.identity is not None:
            identities.setdefault(row_label(record, labels_by_model), record.identity)
    return MergedTable(
        models=tuple(models),
        identities=identities,
        columns=tuple(columns),
        cells=cells,
        baseline=baseline,
        devices=devices,
        notes=tuple(notes),
        warnings=warnings,
    )


def identity_lines(table: MergedTable) -> list[str]:
    """One line per row whose records say which model they measured, for the report."""
    lines = []
    for model in table.models:
        identity = table.identities.get(model)
        if identity is None:
            continue
        parts = [f"variant {identity.variant}"] if identity.variant else []
        parts += [f"spec sha256 {identity.spec_sha256[:16]}"] if identity.spec_sha256 else []
        parts += [f"file sha256 {identity.file_sha256[:16]}"] if identity.file_sha256 else []
        if identity.source_sha256 and identity.source_sha256 != identity.file_sha256:
            parts.append(f"exported from the FP32 ONNX sha256 {identity.source_sha256[:16]}")
        source = "ONNX metadata" if identity.spec_sha256 else "no metadata of ours: file hash"
        lines.append(f"{model}: {', '.join(parts)} ({source})")
    return lines


def row_label(record: LatencyRecord, labels: Mapping[tuple[str, str | None], str]) -> str:
    """The report row a record lands in (see `model_rows`)."""
    return labels[_row_key(record)]


def model_rows(files: Sequence[tuple[Path | str, ResultFile]]) -> dict[tuple[str, str | None], str]:
    """A row label per (model name, identity key): the name alone when every record of that
    name measured one model, else the name and what tells the models apart ("model [spec
    1a2b3c4d]", "model [sha256 9f8e7d6c]"), so two different models both benchmarked as
    model.onnx stay two rows. Records without an identity (files written before identities
    were recorded) are told apart by their name only."""
    keys: dict[str, dict[str | None, LatencyRecord]] = {}
    for _, result in files:
        for record in result.records:
            keys.setdefault(record.model, {}).setdefault(_row_key(record)[1], record)
    labels: dict[tuple[str, str | None], str] = {}
    for name, by_key in keys.items():
        shorts = [r.identity.short if r.identity else "no model id" for r in by_key.values()]
        for key, record in by_key.items():
            identity = record.identity
            short = identity.short if identity is not None else "no model id"
            if shorts.count(short) > 1 and identity is not None and identity.source_sha256:
                short += f", onnx {identity.source_sha256[:8]}"  # one spec, trained twice
            labels[(name, key)] = name if len(by_key) == 1 else f"{name} [{short}]"
    taken: dict[str, int] = {}
    for label in labels.values():
        taken[label] = taken.get(label, 0) + 1
    for (name, key), label in labels.items():  # hashes alike in 8 characters: the whole key
        if taken[label] > 1:
            labels[(name, key)] = f"{name} [{key}]"
    return labels


def _row_key(record: LatencyRecord) -> tuple[str, str | None]:
    identity = record.identity
    return record.model, identity.key if identity is not None else None


def _choose_records(
    files: Sequence[tuple[Path | str, ResultFile]], batch: int | None
) -> tuple[_Chosen, dict[str, dict[str, Any]], list[str], list[str]]:
    """One record per (model row, column): a measurement repeated in two files is the newer
    file's, with a note naming both files, the one kept and whether the model files were the
    same bytes. Returns the records, the fingerprints by id, the notes and the model rows in
    the order the files list them."""
    chosen: _Chosen = {}
    fingerprints: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    model_order: list[str] = []
    batches: set[int] = set()
    labels = model_rows(files)
    for raw_path, result in files:
        path = Path(raw_path)
        fid = str(result.fingerprint.get("fingerprint_id") or fingerprint_id(result.fingerprint))
        fingerprints.setdefault(fid, result.fingerprint)
        for record in result.records:
            batches.add(record.batch)
            if batch is not None and record.batch != batch:
                continue
            label = row_label(record, labels)
            key = (label, (fid, record.device, record.backend, record.precision, record.batch))
            age = (result.created, str(path))
            if key in chosen:
                previous = chosen[key]
                newer_is_this = age > previous[0]
                kept, dropped = (path, previous[1]) if newer_is_this else (previous[1], path)
                pair = (record, previous[2]) if newer_is_this else (previous[2], record)
                notes.append(
                    f"{label} on {record.backend} {record.precision} batch {record.batch} "
                    f"(fingerprint {fid}) was measured twice, in {kept} and {dropped}"
                    f"{_same_bytes(*pair)}: kept the newer, {kept}; "
                    f"{dropped} is not in the table"
                )
                if not newer_is_this:
                    continue
            chosen[key] = (age, path, record)
            if label not in model_order:
                model_order.append(label)
    if not chosen:
        raise DeployInputError(
            f"no records for batch {batch}; the files hold batches {sorted(batches)}"
            if batch is not None
            else "the result files hold no records"
        )
    return chosen, fingerprints, notes, model_order


def _same_bytes(kept: LatencyRecord, dropped: LatencyRecord) -> str:
    """Whether two measurements of one model timed the same file, as far as they say; the
    hashes in the order the note names the files (kept, then dropped)."""
    hashes = [r.identity.file_sha256 if r.identity else None for r in (kept, dropped)]
    if None in hashes:
        return ""
    if hashes[0] == hashes[1]:
        return f" (the same file, sha256 {hashes[0][:8]})"
    return f" (two files of the same model, sha256 {hashes[0][:8]} and {hashes[1][:8]})"


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
