"""One report from result files of several machines: report.md, report.html and two plots.

    build_report([Path("results/")], Path("report/"), baseline="dense")

Rows are models; columns are device x backend x precision x batch, where the device is a short
label from the file's fingerprint (GPU name, Jetson model and power mode, or CPU model and
threads). Columns from different fingerprint ids are never merged: two fingerprints that would
get the same label get their ids appended. A row is one model as its records identify it
(variant and spec hash from the ONNX metadata, else the file's SHA-256; see
`deploy.records.ModelIdentity`), never its name alone: two models both benchmarked as
model.onnx are two rows. The same (fingerprint, device, backend, precision, batch, model)
measured in two files is one measurement repeated, so the newer file (its `created` time,
then its path) wins and a note names both files and the one kept (`deploy report` prints it
too): re-running a benchmark to fix it is the common case, and a second column would double
the table.

Cells show the median latency per batch (ms), the speed-up over the baseline model in the same
column (baseline p50 / model p50), top-1 accuracy and energy per inference where measured.
Measurement warnings the result files carry (noisy or drifting timings, a busy or throttled
machine; see deploy.machine.stability) are listed with the file they came from.
matplotlib is imported lazily (in deploy.results.report_plots); without it (a bare Jetson)
the report says the plots were skipped. Every file is written atomically, so an interrupted
run leaves the previous report.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deploy.errors import DeployInputError, UnsafePathError
from deploy.files import atomic_write_bytes, file_sha256
from deploy.paths import check_output_path, path_kind
from deploy.results.files import ResultFile, read_results, read_results_text
from deploy.results.node_profile import (
    NodeProfile,
    describe_profile,
    read_node_profiles,
    removed_time_lines,
    short_name,
    top_nodes,
)
from deploy.results.report_plots import ACCURACY_PLOT, SPEEDUP_PLOT, pareto_front, render_plots
from deploy.results.table import (
    Cell,
    Column,
    ColumnKey,
    Device,
    MergedTable,
    describe_fingerprint,
    device_label,
    identity_lines,
    merge_results,
)

# The plots moved to deploy.results.report_plots; these names are still imported from here.
__all__ = [
    "ACCURACY_PLOT",
    "SPEEDUP_PLOT",
    "Cell",
    "Column",
    "ColumnKey",
    "Device",
    "MergedTable",
    "ReportFiles",
    "build_report",
    "describe_fingerprint",
    "device_label",
    "load_profiles",
    "load_result_files",
    "merge_results",
    "pareto_front",
    "render_html",
    "render_markdown",
]

_RESULT_SCHEMA_PREFIX = "deploy.results/"
PROFILE_SUFFIX = ".profile.json"  # `deploy bench --profile` writes <result stem> + this
PROFILE_ROWS = 5  # longest layers shown per profile under "Where the time goes"
PROFILE_NOTE = (
    "Per-node times come from a profiling pass of their own, after the timed runs, and carry "
    "the profiler's overhead: compare their shares, not their milliseconds, with the table "
    "above."
)


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    html: Path
    accuracy_plot: Path | None  # None when skipped (no matplotlib, no accuracy)
    speedup_plot: Path | None  # None when skipped (no matplotlib, no baseline)
    table: MergedTable
    notes: tuple[str, ...] = field(default=())

    def paths(self) -> list[Path]:
        return [p for p in (self.markdown, self.html, self.accuracy_plot, self.speedup_plot) if p]


def build_report(
    paths: Sequence[Path],
    out_dir: Path,
    *,
    baseline: str | None = "dense",
    batch: int | None = None,
) -> ReportFiles:
    """Read result files (directories are searched for *.json), merge them, write the report."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [Path(paths)]
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():  # checked before any file is read or written
        raise DeployInputError(f"--out {out_dir} is a file, not a folder; give a folder name")
    for name in ("report.md", "report.html", ACCURACY_PLOT, SPEEDUP_PLOT):
        check_output_path(out_dir / name, "report file")
    files, notes = load_result_files(paths)
    table = merge_results(files, baseline=baseline, batch=batch)
    profiles, profile_notes = load_profiles([path for path, _ in files], batch)
    notes = [*notes, *table.notes, *profile_notes]
    plots, plot_notes = render_plots(table, batch)
    notes += plot_notes
    for name, data in plots.items():
        _write_atomic(out_dir / name, data)
    for stale in {ACCURACY_PLOT, SPEEDUP_PLOT} - set(plots):  # from an earlier run; now wrong
        with contextlib.suppress(FileNotFoundError):
            (out_dir / stale).unlink()
    markdown = render_markdown(table, notes, list(plots), profiles)
    md_path = _write_atomic(out_dir / "report.md", markdown)
    html_path = _write_atomic(out_dir / "report.html", render_html(table, notes, plots, profiles))
    return ReportFiles(
        markdown=md_path,
        html=html_path,
        accuracy_plot=out_dir / ACCURACY_PLOT if ACCURACY_PLOT in plots else None,
        speedup_plot=out_dir / SPEEDUP_PLOT if SPEEDUP_PLOT in plots else None,
        table=table,
        notes=tuple(notes),
    )


def load_result_files(paths: Sequence[Path]) -> tuple[list[tuple[Path, ResultFile]], list[str]]:
    """Result files named or found under directories; notes for JSON files that are not results.

    A named file must be a result file. In a directory, *.json files (recursively, hidden ones
    left out) whose schema is not deploy.results/* are skipped with a note; a file that claims
    that schema but does not read is an error naming it.
    """
    files: list[tuple[Path, ResultFile]] = []
    notes: list[str] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*.json")
                if not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            for candidate in found:
                kind = path_kind(candidate.stat().st_mode) if candidate.exists() else "gone"
                if kind != "a regular file":  # a FIFO would hang the read, a device never end
                    notes.append(f"skipped {candidate}: {kind}, not a result file")
                elif _looks_like_results(candidate):
                    files.append((candidate, read_results(candidate)))
                elif not candidate.name.endswith(PROFILE_SUFFIX):  # read beside its results
                    notes.append(f"skipped {candidate}: not a result file")
        elif path.exists():
            files.append((path, read_results(path)))
        else:
            raise DeployInputError(f"results path not found: {path}")
    if not files:
        where = ", ".join(str(p) for p in paths)
        raise DeployInputError(
            f"no result files ({_RESULT_SCHEMA_PREFIX}*) in {where}; `deploy bench` writes them"
        )
    return files, notes


def _looks_like_results(path: Path) -> bool:
    try:
        text = read_results_text(path)
    except UnsafePathError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise DeployInputError(f"cannot read {path}: {exc}") from exc
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError, a number too long, deep nesting
        # A truncated result file still starts with its schema (write_results puts it first).
        return _RESULT_SCHEMA_PREFIX in text[:200]
    schema = document.get("schema") if isinstance(document, dict) else None
    return isinstance(schema, str) and schema.startswith(_RESULT_SCHEMA_PREFIX)


def _cell_text(table: MergedTable, model: str, column: Column) -> str:
    cell = table.cell(model, column)
    if cell is None:
        return "–"
    record = cell.record
    text = f"{record.p50_ms:.3f} ms"
    if cell.speedup is not None and model != table.baseline:
        text += f" ({cell.speedup:.2f}x)"
    if record.accuracy is not None:
        text += f" · {100 * record.accuracy:.1f}%"
    if record.energy_mj is not None:
        text += f" · {record.energy_mj:.2f} mJ"
    return text


def _intro(table: MergedTable) -> str:
    files = {path for device in table.devices for path in device.files}
    speedups = (
        f"; (N.NNx) is the speed-up over `{table.baseline}` in the same column (its p50 / this p50)"
        if table.baseline
        else ""
    )
    return (
        f"Merged from {len(files)} result file(s) measured on {len(table.devices)} device(s). "
        f"Cells: median (p50) latency per batch in ms{speedups}; then top-1 accuracy and energy "
        "per inference call where measured."
    )


def _markdown_cell(text: str) -> str:
    """Text as one table cell: a '|' escaped, line breaks and control characters shown as
    escapes (names come from result files anyone may have written)."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
    return shown.replace("|", "\\|")


def load_profiles(
    result_paths: Sequence[Path], batch: int | None = None
) -> tuple[list[tuple[Path, NodeProfile]], list[str]]:
    """The per-node profiles `deploy bench --profile` wrote beside result files
    (<stem>.profile.json), at `batch` if given; a damaged one, or one left from an earlier
    run of the result file, is a note, not an error."""
    found: list[tuple[Path, NodeProfile]] = []
    notes: list[str] = []
    for result in dict.fromkeys(result_paths):
        path = result.with_suffix(PROFILE_SUFFIX)
        if path == result or not path.is_file():
            continue
        try:
            profiles = read_node_profiles(path, results_sha256=file_sha256(result))
        except DeployInputError as exc:
            notes.append(f"skipped {path}: {exc}")
            continue
        found += [(path, p) for p in profiles if batch is None or p.batch == batch]
    return found, notes


def _profile_rows(profile: NodeProfile) -> list[tuple[str, str, str, str]]:
    """(layer, op, ms, share) of the longest nodes, then the removable blocks' total."""
    rows = [
        (short_name(n.name, 72), n.op_type or "-", f"{n.mean_ms:.4f}", f"{100 * n.share:.1f}%")
        for n in top_nodes(profile, PROFILE_ROWS)
    ]
    blocks = profile.block_ms
    if blocks:
        ms = sum(blocks.values())
        share = ms / profile.total_ms if profile.total_ms > 0 else 0.0
        rows.append(
            (
                f"all {len(blocks)} removable blocks together, rows above included (longest: "
                f"{max(blocks, key=blocks.__getitem__)})",
                "blocks.json",
                f"{ms:.4f}",
                f"{100 * share:.1f}%",
            )
        )
    return rows


def _profile_markdown(profiles: Sequence[tuple[Path, NodeProfile]]) -> list[str]:
    lines = ["", "## Where the time goes", "", PROFILE_NOTE, ""]
    for path, profile in profiles:
        lines += [f"{_markdown_cell(describe_profile(profile))} (`{path}`)", ""]
        lines += ["| layer | op | ms | share |", "|---|---|---:|---:|"]
        lines += [
            "| " + " | ".join(map(_markdown_cell, row)) + " |" for row in _profile_rows(profile)
        ]
        lines.append("")
    removed = removed_time_lines([profile for _, profile in profiles])
    if removed:
        lines += ["Time the pruned models no longer spend:", "", *(f"- {r}" for r in removed), ""]
    return lines[:-1]


def _profile_html(profiles: Sequence[tuple[Path, NodeProfile]]) -> str:
    esc = html.escape
    parts = []
    for path, profile in profiles:
        rows = "".join(
            f"<tr><td style='text-align:left'>{esc(name)}</td><td style='text-align:left'>"
            f"{esc(op)}</td><td>{ms}</td><td>{share}</td></tr>"
            for name, op, ms, share in _profile_rows(profile)
        )
        parts.append(
            f"<p>{esc(describe_profile(profile))} (<code>{esc(str(path))}</code>)</p><table>"
            f"<thead><tr><th>layer</th><th>op</th><th>ms</th><th>share</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
        )
    removed = removed_time_lines([profile for _, profile in profiles])
    if removed:
        items = "".join(f"<li>{esc(line)}</li>" for line in removed)
        parts.append(f"<p>Time the pruned models no longer spend:</p><ul>{items}</ul>")
    if not parts:
        return ""
    return f"<h2>Where the time goes</h2><p>{esc(PROFILE_NOTE)}</p>" + "".join(parts)


def render_markdown(
    table: MergedTable,
    notes: Sequence[str],
    plots: Sequence[str],
    profiles: Sequence[tuple[Path, NodeProfile]] = (),
) -> str:
    header = ["model", *(c.title.replace(" | ", "<br>") for c in table.columns)]
    lines = [
        "# Benchmark report",
        "",
        _intro(table),
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * len(table.columns),
    ]
    for model in table.models:
        name = f"{model} (baseline)" if model == table.baseline else model
        cells = [_cell_text(table, model, column) for column in table.columns]
        lines.append("| " + " | ".join(map(_markdown_cell, [name, *cells])) + " |")
    lines += ["", "## Devices", ""]
    for device in table.devices:
        files = ", ".join(str(f) for f in device.files)
        lines.append(
            f"- **{device.label}**: fingerprint `{device.fingerprint_id}`; {device.description}; "
            f"files: {files}"
        )
    if table.identities:
        lines += ["", "## Models", "", *(f"- {_markdown_cell(x)}" for x in identity_lines(table))]
    if table.warnings:
        lines += ["", "## Measurement warnings", ""]
        lines += [f"- `{path}`: {line}" for path, line in table.warnings]
    if profiles:
        lines += _profile_markdown(profiles)
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{Path(name).stem.replace('_', ' ')}]({name})" for name in plots]
    if notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def render_html(
    table: MergedTable,
    notes: Sequence[str],
    plots: Mapping[str, bytes],
    profiles: Sequence[tuple[Path, NodeProfile]] = (),
) -> str:
    """A self-contained page: plots inline as base64 PNG, no external assets."""
    esc = html.escape
    head = "".join(
        f"<th>{esc(c.label)}<br><small>{esc(c.backend)} {esc(c.precision)}, batch {c.batch}"
        "</small></th>"
        for c in table.columns
    )
    rows = []
    for model in table.models:
        name = f"{model} (baseline)" if model == table.baseline else model
        cells = "".join(f"<td>{esc(_cell_text(table, model, c))}</td>" for c in table.columns)
        rows.append(f"<tr><th>{esc(name)}</th>{cells}</tr>")
    devices = "".join(
        f"<li><b>{esc(d.label)}</b>: fingerprint <code>{esc(d.fingerprint_id)}</code>; "
        f"{esc(d.description)}; files: {esc(', '.join(str(f) for f in d.files))}</li>"
        for d in table.devices
    )
    images = "".join(
        f'<figure><img alt="{esc(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(data).decode()}"></figure>'
        for name, data in plots.items()
    )
    note_items = "".join(f"<li>{esc(note)}</li>" for note in notes)
    models = "".join(f"<li>{esc(line)}</li>" for line in identity_lines(table))
    warning_items = "".join(
        f"<li><code>{esc(str(path))}</code>: {esc(line)}</li>" for path, line in table.warnings
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>Benchmark report</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:100%}"
        "table{border-collapse:collapse}th,td{border:1px solid #bbb;padding:4px 8px}"
        "td{text-align:right;white-space:nowrap}img{max-width:100%}"
        "</style></head><body>"
        f"<h1>Benchmark report</h1><p>{esc(_intro(table))}</p>"
        f"<table><thead><tr><th>model</th>{head}</tr></thead><tbody>{''.join(rows)}"
        f"</tbody></table><h2>Devices</h2><ul>{devices}</ul>"
        + (f"<h2>Models</h2><ul>{models}</ul>" if models else "")
        + (f"<h2>Measurement warnings</h2><ul>{warning_items}</ul>" if warning_items else "")
        + _profile_html(profiles)
        + (f"<h2>Plots</h2>{images}" if images else "")
        + (f"<h2>Notes</h2><ul>{note_items}</ul>" if note_items else "")
        + "</body></html>\n"
    )


def _write_atomic(path: Path, data: str | bytes) -> Path:
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        return atomic_write_bytes(path, payload)
    except OSError as exc:
        raise DeployInputError(f"cannot write the report to {path}: {exc.strerror or exc}") from exc
