"""summary.md of a lottery grid: one markdown table per kind of cell, from `summarise`'s rows."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

NAMES = {
    "snip": "SNIP",
    "grasp": "GraSP",
    "synflow": "SynFlow",
    "random": "random",
    "hrank": "HRank",
    "expectabs": "expectABS",
    "kl": "KL",
    "pls": "PLS+VIP",
    "cka": "CKA",
}


def _header(*columns: str) -> list[str]:
    """A markdown table's header and separator lines."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def _main_table(rows: Iterable[dict[str, Any]], summary: dict[str, Any]) -> list[str]:
    lines = _header(
        "method", "p", "seeds", "top-1 % (mean ± std)", "Δ vs dense", "wins", "MACs saved %",
        "params saved %", "memory saved %", "train s (speed-up)", "CO2 g (saved %)",
        "corrupted % (Δ)",
    )  # fmt: skip
    for row in rows:
        dense = row["kind"] == "dense"
        base = summary["dense"]
        if dense:
            co2 = "n/a" if base["co2_g"] is None else f"{base['co2_g']:.3g}"
            corrupted = "n/a" if base["corrupted"] is None else f"{base['corrupted']:.2f}"
        else:
            co2 = f"{row['co2_g']:.3g} ({_pct(row['co2_saved'])})" if "co2_g" in row else "n/a"
            corrupted = (
                f"{row['corrupted']:.2f} ({row['corrupted_delta']:+.2f})"
                if "corrupted" in row
                else "n/a"
            )
        delta = "" if dense else f"{row['delta']:+.2f}"
        wins = "" if dense else ("yes" if row["wins"] else "no")
        lines.append(
            f"| {row['method']} | {row['blocks'] or '-'} | {len(row['seeds'])} "
            f"| {row['accuracy']:.2f} ± {row['accuracy_std']:.2f} "
            f"| {delta} | {wins} | {_pct(row['macs_saved'])} | {_pct(row['params_saved'])} "
            f"| {_pct(row['memory_saved'])} "
            f"| {row['train_seconds']:.1f} ({row['speedup']:.2f}x) | {co2} | {corrupted} |"
        )
    return lines


def render_markdown(
    summary: dict[str, Any], recipe: Any, cka_reference: dict[str, float] | None
) -> str:
    rows = summary["rows"]
    dense = [r for r in rows if r["kind"] == "dense"]
    pick = lambda *kinds: dense + [r for r in rows if r["kind"] in kinds]  # noqa: E731
    data = recipe.data
    lines = [
        f"# Layer lottery: {recipe.model.name or recipe.model.factory} on {data.name}",
        "",
        f"{recipe.train.epochs} epochs per network; accuracy on the test split; a ticket "
        f"wins when its mean + xi >= the dense mean (xi = {summary['xi_points']:.2f} points"
        f"{' = the dense std' if summary['xi'] == 'std' else ''}). Memory: one training step "
        "(saved activations + weights, gradients, momentum). Train s: the epochs' training "
        "time, evaluation excluded.",
        "",
        "## Tickets at initialization (Algorithm 2; the paper's Table 2), and from scratch",
        "",
        *_main_table(pick("init", "scratch"), summary),
    ]
    lines += _filter_section(rows)
    after = pick("after")
    if len(after) > len(dense):
        lines += [
            "",
            "## Tickets after training with rewinding (Algorithm 1)",
            "",
            "Train s and CO2 include the dense training the blocks were chosen on (then the "
            "retraining from the rewind point): Algorithm 1 costs more than dense training.",
            "",
            *_main_table(after, summary),
        ]
    lines += _lmc_section(rows)
    lines += _cka_section(rows, cka_reference)
    lines += _robustness_section(rows)
    lines += _energy_lines(summary, rows)
    return "\n".join(lines) + "\n"


def _filter_section(rows: list[dict[str, Any]]) -> list[str]:
    filters = [r for r in rows if r["kind"] == "filter"]
    if not filters:
        return []
    lines = [
        "",
        "## Layers vs filters at a matched filter count (the paper's Table 3)",
        "",
        *_header(
            "criterion",
            "p",
            "layer removal Δ",
            "filter removal Δ",
            "filters (target → removed)",
            "layer MACs saved %",
            "filter MACs saved %",
        ),  # fmt: skip
    ]
    for f in filters:
        layer = next(
            (
                r
                for r in rows
                if r["kind"] == "init"
                and (r["criterion"], r["blocks"]) == (f["criterion"], f["blocks"])
            ),
            None,
        )
        layer_delta = (
            "" if layer is None else f"{layer['delta']:+.2f} ± {layer['accuracy_std']:.2f}"
        )
        layer_macs = "" if layer is None else _pct(layer["macs_saved"])
        lines.append(
            f"| {NAMES.get(f['criterion'], f['criterion'])} | {f['blocks']} "
            f"| {layer_delta} "
            f"| {f['delta']:+.2f} ± {f['accuracy_std']:.2f} "
            f"| {f['target_filters']:.0f} → {f['removed_filters']:.0f} "
            f"| {layer_macs} | {_pct(f['macs_saved'])} |"
        )
    return lines


def _lmc_section(rows: list[dict[str, Any]]) -> list[str]:
    lmc = [r for r in rows if r["kind"] == "lmc"]
    if not lmc:
        return []
    lines = [
        "",
        "## Linear mode connectivity (two copies from the same weights, other data order)",
        "",
        *_header(
            "network",
            "seeds",
            "error barrier, points (mean ± std)",
            "max error − mean of ends",
        ),  # fmt: skip
    ]
    for r in lmc:
        lines.append(
            f"| {r['twin_of']} | {len(r['seeds'])} "
            f"| {r['barrier']:.2f} ± {r['barrier_std']:.2f} | {r['barrier_mean']:.2f} |"
        )
    return lines


def _cka_section(rows: list[dict[str, Any]], cka_reference: dict[str, float] | None) -> list[str]:
    with_cka = [
        r for r in rows if "cka" in r and r["kind"] in ("init", "scratch", "filter", "after")
    ]
    if not with_cka:
        return []
    stages = list(with_cka[0]["cka"])
    lines = [
        "",
        "## Linear CKA with the dense network of the same seed, per stage",
        "",
        *_header("network", *stages),
    ]
    if cka_reference:
        lines.append(
            "| two dense networks, other seeds (reference) | "
            + " | ".join(f"{cka_reference.get(s, float('nan')):.3f}" for s in stages)
            + " |"
        )
    for r in with_cka:
        lines.append(
            f"| {r['method']}, p={r['blocks']} | "
            + " | ".join(f"{r['cka'].get(s, float('nan')):.3f}" for s in stages)
            + " |"
        )
    return lines


def _robustness_section(rows: list[dict[str, Any]]) -> list[str]:
    robust = [r for r in rows if "corrupted_by_name" in r and r["kind"] in ("dense", "init")]
    if not robust:
        return []
    names = list(robust[0]["corrupted_by_name"])
    lines = [
        "",
        "## Accuracy under corruptions, % (mean over severities and seeds)",
        "",
        *_header("network", "p", *names),
    ]
    for r in robust:
        lines.append(
            f"| {r['method']} | {r['blocks'] or '-'} | "
            + " | ".join(f"{r['corrupted_by_name'][n]:.2f}" for n in names)
            + " |"
        )
    return lines


def _energy_lines(summary: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    energy = next((r for r in rows if "energy_method" in r), None)
    lines = [""]
    if len(summary["devices"]) > 1 or len(summary["energy_methods"]) > 1:
        lines += [
            f"**Warning:** the cells ran on {summary['devices']} with energy from "
            f"{summary['energy_methods']}; time and CO2 ratios across them mean little.",
            "",
        ]
    if "ray" in summary.get("executors", ()):
        lines += [
            "Some cells trained as Ray tasks, side by side: their train s, speed-ups and CO2 "
            "include what they shared (CPU cores, memory bandwidth, a node's power) and are "
            "comparable only with cells trained the same way; accuracies do not depend on it.",
            "",
        ]
    if energy is not None:
        kind = "an estimate (declared power x time)" if energy["energy_estimate"] else "measured"
        lines.append(f"Energy and CO2: {energy['energy_method']}, {kind}.")
    else:
        lines.append(
            "Energy and CO2: not measured (no codecarbon, NVML or tegrastats here) and no "
            "experiment.power_watts declared."
        )
    return lines
