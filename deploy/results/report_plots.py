"""The report's PNG plots: accuracy against latency with the Pareto front, and speed-up bars.

matplotlib is imported lazily, and only through `matplotlib.figure.Figure` (no pyplot: no GUI
backend, no global state); without it (a bare Jetson) `render_plots` returns no plots and a
note saying so.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from deploy.errors import MissingDependencyError
from deploy.lazy import lazy_import
from deploy.records import LatencyRecord
from deploy.results.table import Column, MergedTable

ACCURACY_PLOT = "accuracy_vs_latency.png"
SPEEDUP_PLOT = "speedup.png"


def render_plots(table: MergedTable, batch: int | None) -> tuple[dict[str, bytes], list[str]]:
    """PNG bytes by file name, and notes on the plots skipped (no matplotlib, no accuracy,
    no baseline)."""
    try:
        lazy_import("matplotlib", "report plots")
    except MissingDependencyError:
        return {}, [
            "matplotlib is not installed, so the plots were skipped (pip install matplotlib)"
        ]
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    plots: dict[str, bytes] = {}
    notes: list[str] = []
    plot_batch = batch if batch is not None else min(c.batch for c in table.columns)
    panels: dict[str, list[tuple[str, Column, LatencyRecord]]] = {}
    for column in table.columns:
        if column.batch != plot_batch:
            continue
        for model in table.models:
            cell = table.cell(model, column)
            if cell is not None and cell.record.accuracy is not None:
                panels.setdefault(column.label, []).append((model, column, cell.record))
    if panels:
        plots[ACCURACY_PLOT] = _accuracy_plot(Figure, panels, table.models, plot_batch)
        if len({c.batch for c in table.columns}) > 1:
            notes.append(
                f"the accuracy plot shows batch {plot_batch} (deploy report --batch N for another)"
            )
    else:
        notes.append("no record carries accuracy, so the accuracy-vs-latency plot was skipped")
    if table.baseline is not None and len(table.models) > 1:
        plots[SPEEDUP_PLOT] = _speedup_plot(Figure, table)
    else:
        notes.append("no baseline to compare against, so the speed-up plot was skipped")
    return plots, notes


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, accuracy) points no other point beats on both, fastest first.

    A point is dominated when another is at least as fast and at least as accurate and better
    in one; equal points are both kept. Points with a non-finite coordinate are never on it.
    """
    finite = [i for i, (lat, acc) in enumerate(points) if math.isfinite(lat) and math.isfinite(acc)]
    front: list[int] = []
    for i in sorted(finite, key=lambda i: (points[i][0], -points[i][1])):
        last = tuple(points[front[-1]]) if front else None
        # More accurate than every faster point, or an exact tie with the last one kept.
        if last is None or points[i][1] > last[1] or tuple(points[i]) == last:
            front.append(i)
    return front


def _accuracy_plot(
    Figure: Any, panels: Mapping[str, list], models: Sequence[str], batch: int
) -> bytes:
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(5.5 * len(panels), 4.2), dpi=110)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    markers = "osD^vP*Xh"
    for ax, (label, points) in zip(axes, panels.items(), strict=True):
        series = sorted({(c.backend, c.precision) for _, c, _ in points})
        xy = [(r.p50_ms, 100 * r.accuracy) for _, _, r in points]
        for (model, column, _), (x, y) in zip(points, xy, strict=True):
            colour = f"C{series.index((column.backend, column.precision)) % 10}"
            marker = markers[models.index(model) % len(markers)]
            ax.scatter(
                x,
                y,
                color=colour,
                marker=marker,
                s=45,
                zorder=3,
                label=f"{model} {column.backend}/{column.precision}",
            )
        front = pareto_front(xy)
        ax.plot(
            [xy[i][0] for i in front],
            [xy[i][1] for i in front],
            drawstyle="steps-post",
            color="black",
            linewidth=1,
            alpha=0.6,
            zorder=2,
            label="Pareto front",
        )
        ax.scatter(
            [xy[i][0] for i in front],
            [xy[i][1] for i in front],
            s=160,
            facecolors="none",
            edgecolors="black",
            zorder=4,
        )
        ax.set_xscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:g}")  # 0.4, not 4x10^-1
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain)
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel(f"p50 latency, batch {batch} (ms, log)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    return _png(fig)


def _speedup_plot(Figure: Any, table: MergedTable) -> bytes:
    others = [m for m in table.models if m != table.baseline]
    width = 0.8 / len(others)
    fig = Figure(figsize=(max(5.0, 1.4 * len(table.columns) + 2), 4.2), dpi=110)
    ax = fig.subplots()
    for i, model in enumerate(others):
        values = []
        for column in table.columns:
            cell = table.cell(model, column)
            values.append(cell.speedup if cell is not None and cell.speedup is not None else 0.0)
        positions = [j + (i - (len(others) - 1) / 2) * width for j in range(len(table.columns))]
        ax.bar(positions, values, width=width, label=model, color=f"C{i % 10}")
    ax.axhline(1.0, color="black", linewidth=1)
    ax.set_xticks(range(len(table.columns)))
    ax.set_xticklabels([c.title.replace(" | ", "\n") for c in table.columns], fontsize=7)
    ax.set_ylabel(f"speed-up over {table.baseline} (p50 ratio)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
