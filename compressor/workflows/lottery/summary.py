"""The tables and plots of a `compressor lottery` grid, from its finished cells.

Rows group the cells of one method over seeds. Accuracies are in points (percent); a
row's delta is its mean minus the dense mean over the same experiment's seeds; it *wins*
(the paper's definition) when mean + xi >= dense mean, xi in points or the dense runs'
standard deviation. Savings are 1 - row / dense of the means. Standard deviations are
sample deviations over seeds (0 with one seed).

summary.json holds every number; summary.md the tables; delta_vs_p.png and
savings_vs_p.png the plots.
"""

from __future__ import annotations

import io
import itertools
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from compressor.atomic import atomic_write_bytes, atomic_write_text
from compressor.workflows.lottery.analysis import stage_cka
from compressor.workflows.lottery.cells import cell_result
from compressor.workflows.lottery.energy import energy_method_kind
from compressor.workflows.lottery.summary_tables import NAMES, render_markdown

KIND_LABEL = {
    "init": "{c} at init",
    "scratch": "scratch ({c} arch.)",
    "filter": "filters at init ({c})",
    "after": "{c} after training, rewind {r}%",
    "lmc": "LMC twin",
}


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _label(kind: str, criterion: str | None, rewind: float | None) -> str:
    if kind == "dense":
        return "dense"
    name = NAMES.get(criterion or "", criterion or "")
    return KIND_LABEL[kind].format(c=name, r=round(100 * (rewind or 0.0)))


def _energy(result: dict[str, Any], key: str) -> float | None:
    energy = result.get("energy")
    return None if energy is None else energy[key]


def summarise(results: list[dict[str, Any]], xi: float | str) -> dict[str, Any]:
    """Rows (one per method, over seeds) from the cells' result.json contents."""
    dense = [r for r in results if r["kind"] == "dense"]
    if not dense:
        return {"rows": [], "dense": None}
    base = _dense_base(dense)
    margin = base["accuracy_std"] if xi == "std" else float(xi)
    by_seed = {r["seed"]: r for r in dense}

    def cost(result: dict[str, Any], key: str) -> float | None:
        """Training seconds or CO2 of a cell; Algorithm 1's includes its dense training."""
        value = result["train_seconds"] if key == "train_seconds" else _energy(result, key)
        if value is not None and result["kind"] == "after":
            before = by_seed.get(result["seed"])
            extra = None if before is None else cost(before, key)
            value = None if extra is None else value + extra
        return value

    rows = []
    order = {"dense": 0, "init": 1, "scratch": 2, "filter": 3, "after": 4, "lmc": 5}
    group_key = lambda r: (order[r["kind"]], r["criterion"] or "", r["blocks"], r["rewind"] or 0.0)  # noqa: E731
    for (_, criterion, blocks, rewind), members in itertools.groupby(
        sorted(results, key=group_key), key=group_key
    ):
        members = list(members)
        kind = members[0]["kind"]
        acc = [100 * r["accuracy"] for r in members]
        row: dict[str, Any] = {
            "method": _label(kind, criterion or None, rewind),
            "kind": kind,
            "criterion": criterion or None,
            "blocks": blocks,
            "rewind": rewind if kind == "after" else None,
            "seeds": sorted(r["seed"] for r in members),
            "accuracy": _mean(acc),
            "accuracy_std": _std(acc),
            "delta": _mean(acc) - base["accuracy"],
            "wins": _mean(acc) + margin >= base["accuracy"],
            "macs": _mean([r["macs"] for r in members]),
            "params": _mean([r["params"] for r in members]),
            "memory": _mean([r["step_memory_bytes"]["total"] for r in members]),
            "train_seconds": _mean([cost(r, "train_seconds") for r in members]),
            "epochs": _mean([r["epochs_trained"] for r in members]),
        }
        for name in ("macs", "params", "memory", "train_seconds"):
            row[f"{name}_saved"] = 1 - row[name] / base[name]
        row["speedup"] = base["train_seconds"] / row["train_seconds"]
        _measured_extras(row, members, base, cost)
        rows.append(row)
    if rows and rows[0]["kind"] == "dense" and base["corrupted"] is not None:
        rows[0]["corrupted_by_name"] = _by_corruption(dense)
    # by kind (a GPU model, a CPU model): cells spread over eight GPUs are one kind
    devices = sorted({r.get("device_kind") or r.get("device") or "?" for r in results})
    methods = sorted(
        {energy_method_kind(r["energy"]["method"]) for r in results if r.get("energy")}
    )
    return {
        "dense": base,
        "xi_points": margin,
        "xi": xi,
        "rows": rows,
        "devices": devices,
        "energy_methods": methods,
        "executors": sorted({r.get("executor") or "local" for r in results}),
    }


def _dense_base(dense: list[dict[str, Any]]) -> dict[str, Any]:
    """The dense networks' means over seeds: what every other row is compared with."""
    dense_acc = [100 * r["accuracy"] for r in dense]
    return {
        "accuracy": _mean(dense_acc),
        "accuracy_std": _std(dense_acc),
        "macs": _mean([r["macs"] for r in dense]),
        "params": _mean([r["params"] for r in dense]),
        "memory": _mean([r["step_memory_bytes"]["total"] for r in dense]),
        "train_seconds": _mean([r["train_seconds"] for r in dense]),
        "co2_g": _mean([_energy(r, "co2_g") for r in dense])
        if all(r.get("energy") for r in dense)
        else None,
        "corrupted": _mean([100 * r["corruptions"]["mean"] for r in dense])
        if all(r.get("corruptions") for r in dense)
        else None,
    }


def _measured_extras(
    row: dict[str, Any],
    members: list[dict[str, Any]],
    base: dict[str, Any],
    cost: Callable[[dict[str, Any], str], float | None],
) -> None:
    """Columns only some cells have: CO2, corruptions, CKA, filter counts, LMC barriers."""
    co2 = [cost(r, "co2_g") for r in members]
    if base["co2_g"] is not None and all(value is not None for value in co2):
        row["co2_g"] = _mean(co2)
        row["co2_saved"] = 1 - row["co2_g"] / base["co2_g"] if base["co2_g"] else None
        row["energy_method"] = members[0]["energy"]["method"]
        row["energy_estimate"] = members[0]["energy"]["estimate"]
    if base["corrupted"] is not None and all(r.get("corruptions") for r in members):
        corrupted = [100 * r["corruptions"]["mean"] for r in members]
        row["corrupted"] = _mean(corrupted)
        row["corrupted_delta"] = row["corrupted"] - base["corrupted"]
        row["corrupted_by_name"] = _by_corruption(members)
    if all(r.get("cka_vs_dense") for r in members):
        stages = members[0]["cka_vs_dense"].keys()
        row["cka"] = {s: _mean([r["cka_vs_dense"][s] for r in members]) for s in stages}
    if row["kind"] == "filter":
        row["target_filters"] = _mean([r["filters"]["target_filters"] for r in members])
        row["removed_filters"] = _mean([r["filters"]["removed_filters"] for r in members])
    if row["kind"] == "lmc":
        row["twin_of"] = members[0]["lmc"]["twin_of"].rsplit("-s", 1)[0]
        row["barrier"] = _mean([100 * r["lmc"]["barrier"] for r in members])
        row["barrier_std"] = _std([100 * r["lmc"]["barrier"] for r in members])
        row["barrier_mean"] = _mean([100 * r["lmc"]["barrier_mean"] for r in members])


def _by_corruption(members: list[dict[str, Any]]) -> dict[str, float]:
    """Mean accuracy (points) per corruption over severities and seeds."""
    table: dict[str, list[float]] = {}
    for result in members:
        for row in result["corruptions"]["rows"]:
            if row["severity"] > 0:
                table.setdefault(row["corruption"], []).append(100 * row["accuracy"])
    return {name: _mean(values) for name, values in table.items()}


def _plots(summary: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary["rows"] if r["kind"] in ("init", "scratch", "after", "filter")]
    if not rows:
        return []
    figure, axis = plt.subplots(figsize=(9, 4))
    markers = "osD^v<>p*hX"
    for number, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
        line = sorted((r for r in rows if r["method"] == method), key=lambda r: r["blocks"])
        axis.errorbar(
            [r["blocks"] for r in line],
            [r["delta"] for r in line],
            yerr=[r["accuracy_std"] for r in line],
            marker=markers[number % len(markers)],
            color=plt.get_cmap("tab20")(number % 20),
            capsize=3,
            label=method,
        )
    axis.set_xticks(sorted({r["blocks"] for r in rows}))
    axis.axhline(0, color="black", linewidth=0.8)
    axis.axhline(-summary["xi_points"], color="grey", linestyle="--", linewidth=0.8, label="-xi")
    axis.set_xlabel("blocks removed (p)")
    axis.set_ylabel("top-1 − dense (points), ± std over seeds")
    axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    delta_path = out_dir / "delta_vs_p.png"
    _save_png(figure, delta_path)

    paper = next(
        (
            c
            for c in ("grasp", "snip")
            if any(r["criterion"] == c and r["kind"] == "init" for r in rows)
        ),
        None,
    )
    line = sorted(
        (
            r
            for r in rows
            if r["kind"] == "init" and r["criterion"] == (paper or rows[0]["criterion"])
        ),
        key=lambda r: r["blocks"],
    )
    estimate = any(r.get("energy_estimate") for r in line)
    figure, axis = plt.subplots(figsize=(6.5, 4))
    for key, label in (
        ("macs_saved", "MACs"),
        ("params_saved", "params"),
        ("memory_saved", "training-step memory"),
        ("train_seconds_saved", "training time"),
        ("co2_saved", "CO2 (declared power: same as time)" if estimate else "CO2"),
    ):
        if all(r.get(key) is not None for r in line):
            axis.plot(
                [r["blocks"] for r in line], [100 * r[key] for r in line], marker="o", label=label
            )
    axis.set_xlabel("blocks removed (p)")
    axis.set_ylabel("saved vs dense (%)")
    axis.set_xticks([r["blocks"] for r in line])
    axis.set_title(f"{line[0]['method'] if line else ''}: savings")
    axis.legend(fontsize=7)
    figure.tight_layout()
    savings_path = out_dir / "savings_vs_p.png"
    _save_png(figure, savings_path)
    return [delta_path, savings_path]


def cka_reference(dense: dict[int, nn.Module], images: Any) -> dict[str, float] | None:
    """Per-stage CKA of dense networks of different seeds, averaged over pairs: how similar
    two independently trained networks look to linear CKA on these images (its floor here)."""

    pairs = list(itertools.combinations(sorted(dense), 2))
    if not pairs:
        return None
    values = [stage_cka(dense[a], dense[b], images) for a, b in pairs]
    return {stage: _mean([v[stage] for v in values]) for stage in values[0]}


def write_summary(
    recipe: Any,
    out_dir: Path,
    cells: list[Any],
    *,
    dense_models: dict[int, nn.Module],
    images: Any,
) -> Path:
    """Write summary.json, summary.md and the plots from the finished cells of `cells`;
    `dense_models` (trained, by seed) and test `images` give the CKA reference."""

    results = [r for r in (cell_result(out_dir, c.key) for c in cells) if r is not None]
    summary = summarise(results, recipe.experiment.xi)
    reference = cka_reference(dense_models, images)
    summary["cka_reference"] = reference
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    md = out_dir / "summary.md"
    atomic_write_text(md, render_markdown(summary, recipe, reference))
    _plots(summary, out_dir)
    return md


def _save_png(figure: Any, path: Path) -> None:
    """Render to memory, then write atomically: a killed run leaves no half-drawn plot."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
