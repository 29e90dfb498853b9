"""The report's latency-budget part: budget, predicted and measured latency side by side,
and per-block latency against per-block MACs.

Only for a ticket pruned to a latency budget (prune.latency_fraction / latency_ms). The
budget record comes from prune.json (compressor/prune/latency.py); the per-block costs from
the latency table the choice was made with; the final check from the pipeline's own
benchmark, which times the trained ticket beside dense after everything else.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from compressor.atomic import atomic_write_bytes
from deploy.errors import DeployInputError
from deploy.paths import read_regular_bytes
from deploy.profiling.table import read_table

BLOCK_PLOT_FILE = "block_latency_vs_macs.png"
MAX_JSON = 64 << 20  # shrink.json: a few probes, never this large


def budget_report(
    record: dict[str, Any] | None, table_path: Path | None, removed: list[str]
) -> dict[str, Any] | None:
    """report.json's "latency_budget": prune.json's record, and the table's per-block costs
    (None without a budget; without the costs when the table cannot be read)."""
    if record is None:
        return None
    out = {key: value for key, value in record.items() if key != "steps"}
    out["steps"] = [{k: v for k, v in s.items() if k != "run_cv"} for s in record["steps"]]
    out["removed"] = removed
    try:
        table = read_table(table_path) if table_path is not None else None
    except DeployInputError:
        table = None
    if table is not None:
        out["blocks"] = {
            str(batch): [
                {"name": name, "stage": b.stage, "macs": b.macs, "cost_ms": b.cost_ms}
                for name, b in t.blocks.items()
            ]
            for batch, t in table.batches.items()
        }
    return out


def shrink_budget_report(shrink_json: Path) -> dict[str, Any] | None:
    """report.json's "shrink_budget": shrink.json's record of a latency-budgeted shrink."""
    try:
        record = json.loads(read_regular_bytes(shrink_json, "shrink.json", max_bytes=MAX_JSON))
    except (OSError, ValueError, DeployInputError):
        return None
    return record.get("latency") if isinstance(record, dict) else None


def budget_lines(report: dict[str, Any]) -> list[str]:
    """Markdown: the budget, each measured step, and the trained ticket in the benchmark."""
    return _layer_budget_lines(report) + _shrink_budget_lines(report)


def _shrink_budget_lines(report: dict[str, Any]) -> list[str]:
    shrink = report.get("shrink_budget")
    if not shrink:
        return []
    probes = shrink["probes"]
    kept = next((p for p in probes if p["ratio"] == shrink["ratio"]), None)
    measured = f"{kept['fraction']:.3f}" if kept else "n/a"
    lines = [
        "",
        "## Channel budget",
        "",
        f"Budget {shrink['budget_fraction']:.3f} of the unshrunk ticket's latency "
        f"({shrink['backend']}, batch {shrink['batch']}); kept ratio {shrink['ratio']:.3f}, "
        f"measured {measured} of the unshrunk; {len(probes)} probes: "
        + ", ".join(f"{p['ratio']:.3f} -> {p['fraction']:.3f}" for p in probes)
        + ".",
    ]
    return lines + [f"- warning: {w}" for w in shrink.get("warnings") or []]


def _layer_budget_lines(report: dict[str, Any]) -> list[str]:
    budget = report.get("latency_budget")
    if not budget:
        return []
    lines = [
        "",
        "## Latency budget",
        "",
        f"Budget {budget['budget_ms']:.4f} ms = {budget['budget_fraction']:.3f} of the dense "
        f"latency in the table ({budget['dense_ms_table']:.4f} ms; {budget['backend']} "
        f"{budget['precision']}, batch {budget['batch']}). Table: {budget['table']}, "
        f"fingerprint `{budget['table_fingerprint_id']}`; candidates timed on "
        f"`{budget['measured_fingerprint_id']}`.",
        "",
        "The budget is checked as *measured / dense*: the candidate against a dense network "
        "timed in the same run, so that drift between runs does not count.",
        "",
        "| step | blocks removed | predicted ms | predicted / dense | measured ms "
        "| measured / dense |",
        "|---|---|---|---|---|---|",
    ]
    for step in budget["steps"]:
        lines.append(
            f"| {step['step']} | {len(step['removed'])} | {step['predicted_ms']:.4f} "
            f"| {step['predicted_fraction']:.3f} | {step['measured_ms']:.4f} "
            f"| {step['measured_fraction']:.3f} |"
        )
    trained = _benchmark_fraction(report, budget)
    if trained:
        lines += ["", trained]
    lines += [f"- warning: {w}" for w in budget.get("warnings") or []]
    if budget.get("blocks"):
        lines += ["", f"![block latency vs MACs]({BLOCK_PLOT_FILE})"]
    return lines


def _benchmark_fraction(report: dict[str, Any], budget: dict[str, Any]) -> str | None:
    """The trained ticket against dense in the pipeline's benchmark, at the budget's batch."""
    medians, cvs = {}, {}
    for variant in report["variants"]:
        for r in variant["latency"]:
            if (r["backend"], r["batch"]) == (budget["backend"], budget["batch"]) and r.get(
                "precision", "fp32"
            ) == budget["precision"]:
                medians[variant["name"]] = r["p50_ms"]
                cvs[variant["name"]] = r.get("run_cv") or 0.0
    if "dense" not in medians or "ticket" not in medians:
        return None
    fraction = medians["ticket"] / medians["dense"]
    target = budget["budget_fraction"]
    noise = max(cvs["dense"], cvs["ticket"])
    verdict = "within the budget" if fraction <= target else (
        f"**over the budget** by {fraction - target:.3f}"
        + (", within the run-to-run variation" if fraction - target <= noise * fraction else "")
    )  # fmt: skip
    return (
        f"The pipeline's benchmark, after training: ticket {medians['ticket']:.4f} ms, dense "
        f"{medians['dense']:.4f} ms, **{fraction:.3f} of dense** (budget {target:.3f}): "
        f"{verdict} (run CVs {100 * cvs['ticket']:.1f}% and {100 * cvs['dense']:.1f}%)."
    )


def _spread(values: list[float]) -> list[float]:
    """Blocks of exactly equal MACs side by side (in forward order) instead of on one spot:
    each group is spread over +-3% of its value."""
    out = list(values)
    groups: dict[float, list[int]] = {}
    for i, value in enumerate(values):
        groups.setdefault(value, []).append(i)
    for value, members in groups.items():
        for rank, i in enumerate(members):
            if len(members) > 1:
                out[i] = value * (1 + 0.06 * (rank / (len(members) - 1) - 0.5))
    return out


def plot_block_latency(report: dict[str, Any], path: Path) -> bool:
    """Per-block cost against MACs, one panel per batch, removed blocks filled; False when
    the report has no per-block costs."""
    budget = report.get("latency_budget") or {}
    blocks = budget.get("blocks")
    if not blocks:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    removed = set(budget.get("removed") or [])
    fig, axes = plt.subplots(1, len(blocks), figsize=(4.2 * len(blocks), 3.6), dpi=120)
    axes = [axes] if len(blocks) == 1 else list(axes)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    panels = sorted(blocks.items(), key=lambda kv: int(kv[0]))
    for ax, (batch, entries) in zip(axes, panels, strict=True):
        x = _spread([e["macs"] / 1e6 for e in entries])
        for stage in sorted({e["stage"] for e in entries}):
            for kept in (True, False):
                index = [
                    i
                    for i, e in enumerate(entries)
                    if e["stage"] == stage and (e["name"] not in removed) == kept
                ]
                if not index:
                    continue
                color = colors[stage % len(colors)]
                ax.scatter(
                    [x[i] for i in index],
                    [1000 * entries[i]["cost_ms"] for i in index],
                    facecolors="none" if kept else color,
                    edgecolors=color,
                    label=f"stage {stage + 1}{'' if kept else ' (removed)'}",
                    s=30,
                )
        ax.set_xlabel("MMACs per sample (equal MACs spread sideways)", fontsize=8)
        ax.set_ylabel("cost in the network (us)")
        chosen = " (the budget's batch)" if int(batch) == budget.get("batch") else ""
        ax.set_title(f"batch {batch}{chosen}", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle("per-block latency against MACs (filled: removed)", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return True


__all__ = [
    "BLOCK_PLOT_FILE",
    "budget_lines",
    "budget_report",
    "plot_block_latency",
    "shrink_budget_report",
]
