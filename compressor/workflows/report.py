"""Pipeline report: report.json (the data), report.md (for people), a PNG of accuracy vs latency.

The Markdown and the plot are made from the report dictionary alone, so they can be
re-drawn from report.json without re-running anything. A variant the accuracy check marked
not comparable (compressor/workflows/accuracy_check.py) is named as such everywhere: its
speed-ups are printed as plain latency ratios, never as wins, and its points in the plot are hollow.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from compressor.atomic import atomic_write_bytes, atomic_write_text
from compressor.workflows.report_budget import BLOCK_PLOT_FILE, budget_lines, plot_block_latency

PLOT_FILE = "accuracy_vs_latency.png"


def _latency(
    variant: dict[str, Any], backend: str, batch: int, device: str = "cpu", precision: str = "fp32"
) -> float | None:
    for r in variant["latency"]:
        if (r["backend"], r["batch"], r["device"], r.get("precision", "fp32")) == (
            backend,
            batch,
            device,
            precision,
        ):
            return r["p50_ms"]
    return None


def _comparable(entry: dict[str, Any]) -> bool:
    """Reports written before the accuracy check have no flag: comparable, as they were read."""
    return entry.get("comparable", True)


def _accuracy_check_lines(report: dict[str, Any]) -> list[str]:
    check = report.get("accuracy_check")
    if not check:
        return []
    failed = [v for v in report["variants"] if not _comparable(v)]
    if not failed:
        return [
            f"Accuracy check: every variant is within {check['max_accuracy_drop_points']:g} "
            f"points of dense and more than {check['chance_margin_points']:g} points above "
            f"chance ({100 * check['chance_accuracy']:.2f}%).",
            "",
        ]
    lines = [
        "## Accuracy check: NOT COMPARABLE",
        "",
        "These variants' latencies are not compared with dense: a network that lost this "
        "much accuracy is not a faster version of it (report.max_accuracy_drop: "
        f"{check['max_accuracy_drop_points']:g} points).",
        "",
    ]
    lines += [f"- **{v['name']}**: {v['not_comparable_reason']}" for v in failed]
    return [*lines, ""]


def model_label(model: dict[str, Any]) -> str:
    """The recipe's model as a report names it: the zoo name, or for a factory its display
    name when the recipe gives one, else the factory itself ("Model None" otherwise)."""
    return str(model.get("name") or model.get("factory") or "unnamed model")


def render_markdown(report: dict[str, Any]) -> str:
    variants = report["variants"]
    dense = variants[0]
    env = report["environment"]
    lines = [
        f"# Compression report: {report['recipe']['name']}",
        "",
        f"Model `{model_label(report['recipe']['model'])}` "
        f"on `{report['recipe']['data']['name']}`; "
        f"layer criterion `{report['recipe']['prune']['criterion']}`; "
        f"measured on {env.get('cpu_model', 'unknown CPU')} "
        f"({env.get('threads') or 'default'} threads), fingerprint `{env.get('fingerprint_id')}`.",
        "",
        *_accuracy_check_lines(report),
        "| variant | test acc | Δ acc (pts) | params | MACs | blocks removed | median epoch (s) "
        "| ORT b1 p50 (ms) | ORT b1 speed-up | parity max abs diff |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    dense_ort = _latency(dense, "onnxruntime", 1)
    for v in variants:
        ort = _latency(v, "onnxruntime", 1)
        speedup = f"{dense_ort / ort:.2f}x" if ort and dense_ort else "n/a"
        if not (_comparable(v) and _comparable(dense)):
            speedup = "not comparable"
        lines.append(
            f"| {v['name']} | {v['accuracy']:.4f} "
            f"| {100 * (v['accuracy'] - dense['accuracy']):+.2f} "
            f"| {v['params']:,} | {v['macs']:,} | {len(v['removed_blocks'])} "
            f"| {v['epoch_seconds']:.2f} | {ort if ort is None else f'{ort:.3f}'} | {speedup} "
            f"| {v['parity_max_abs_diff']:.2e} |"
        )
    lines += _latency_lines(variants)
    warnings = report.get("measurement_warnings") or []
    if warnings:
        lines += ["", "## Measurement warnings", "", *(f"- {line}" for line in warnings)]
    lines += _precision_lines(variants)
    lines += _speedup_lines(report["speedups"])
    lines += budget_lines(report)
    removed = variants[1]["removed_blocks"]
    lines += ["", f"Blocks removed at initialization: {', '.join(removed) or 'none'}.", ""]
    lines += [f"![accuracy vs latency]({PLOT_FILE})", ""]
    return "\n".join(lines)


def _latency_lines(variants: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "## Latency (median over interleaved timed iterations; ms)",
        "",
        "Run CV: how far the median moved between the benchmark's independent runs (std/mean "
        "of the per-run medians); speed-ups smaller than it are noise.",
        "",
        "| variant | backend | device | precision | batch | mean | p50 | p90 | p99 | run CV "
        "| throughput (img/s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        for r in v["latency"]:
            lines.append(
                f"| {v['name']} | {r['backend']} | {r['device']} "
                f"| {r.get('precision', 'fp32')} | {r['batch']} "
                f"| {r['mean_ms']:.3f} "
                f"| {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | {r['p99_ms']:.3f} "
                f"| {_percent(r.get('run_cv'))} | {r['throughput_ips']:.1f} |"
            )
    return lines


def _speedup_lines(speedups: list[dict[str, Any]]) -> list[str]:
    """Not-comparable variants keep their ratio for the record, never shown as a win."""
    lines = ["", "## Speed-ups over dense (p50 latency ratio)", ""]
    for s in speedups:
        if not _comparable(s):  # a ratio for the record, never presented as a win
            if "latency_speedup_p50" in s:
                lines.append(
                    f"- {s['variant']}: {s['backend']} {s['device']} "
                    f"{s.get('precision', 'fp32')} batch {s['batch']}: NOT COMPARABLE "
                    f"(accuracy check; latency ratio {s['latency_speedup_p50']:.2f})"
                )
            else:
                lines.append(
                    f"- {s['variant']}: NOT COMPARABLE: {s['not_comparable_reason']} "
                    f"(epoch time ratio {s['epoch_time_speedup']:.2f}, accuracy "
                    f"{100 * s['accuracy_delta']:+.2f} points)"
                )
        elif "latency_speedup_p50" in s:
            lines.append(
                f"- {s['variant']}: {s['backend']} {s['device']} {s.get('precision', 'fp32')} "
                f"batch {s['batch']}: "
                f"{s['latency_speedup_p50']:.2f}x"
            )
        else:
            lines.append(
                f"- {s['variant']}: epoch time {s['epoch_time_speedup']:.2f}x faster, accuracy "
                f"{100 * s['accuracy_delta']:+.2f} points"
            )
    return lines


def _percent(value: float | None) -> str:
    """A run CV for the table; reports written before it existed have none."""
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _precision_lines(variants: list[dict[str, Any]]) -> list[str]:
    """INT8/FP16/BF16 files' accuracy and TensorRT-readiness, when the run made them."""
    if not any(v.get("int8") or v.get("fp16") or v.get("bf16") for v in variants):
        return []

    def acc(entry: dict[str, Any] | None, base: float) -> str:
        if not entry:
            return "not made"
        return f"{entry['accuracy']:.4f} ({100 * (entry['accuracy'] - base):+.2f})"

    lines = [
        "",
        "## INT8 (QDQ), FP16 and BF16 ONNX files (test top-1 with onnxruntime CPU; Δ pts vs FP32)",
        "",
        "INT8 QDQ: the Q/DQ graph computed as written (exact int8 products, as TensorRT's INT8 "
        "kernels do); onnxruntime int8 kernels: onnxruntime's fused CPU kernels, which lose "
        "accuracy on x86 CPUs without VNNI. BF16: onnxruntime's CPU provider has no BF16 "
        "kernels, so the file's float32 emulation ran (every BF16 tensor rounded to bfloat16, "
        "ops in float32).",
        "",
        "| variant | FP32 | INT8 QDQ | onnxruntime int8 kernels | FP16 | BF16 "
        "| TensorRT readiness (errors / warnings) |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        readiness = v.get("readiness", {})
        kernels = (
            acc({"accuracy": v["int8"]["accuracy_onnxruntime_cpu"]}, v["accuracy"])
            if v.get("int8")
            else "not made"
        )
        checks = ", ".join(
            f"{precision} {r['counts']['error']}/{r['counts']['warning']}"
            for precision, r in readiness.items()
        )
        lines.append(
            f"| {v['name']} | {v['accuracy']:.4f} | {acc(v.get('int8'), v['accuracy'])} "
            f"| {kernels} | {acc(v.get('fp16'), v['accuracy'])} "
            f"| {acc(v.get('bf16'), v['accuracy'])} | {checks or 'not checked'} |"
        )
    lines += _parity_lines(variants)
    return lines


def _parity_lines(variants: list[dict[str, Any]]) -> list[str]:
    """Each FP16/BF16 file's parity with its FP32 file on the validation images."""
    rows = [
        f"| {v['name']} | {precision.upper()} | {entry['max_abs_diff']:.3g} "
        f"| {entry['parity_tolerance']:.3g} | {entry['top1_agreement']:.4f} "
        f"| {entry['parity_method']} |"
        for v in variants
        for precision in ("fp16", "bf16")
        if (entry := v.get(precision)) and entry.get("parity_tolerance") is not None
    ]  # reports written before parity_tolerance was recorded have no row
    if not rows:
        return []
    return [
        "",
        "Parity with the FP32 file on the validation images (max |low - FP32| of the logits):",
        "",
        "| variant | file | max abs diff | allowed | top-1 agreement | run as |",
        "|---|---|---|---|---|---|",
        *rows,
    ]


def plot_accuracy_latency(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=120)
    series = sorted(
        {
            (r["backend"], r["device"], r.get("precision", "fp32"), r["batch"])
            for v in report["variants"]
            for r in v["latency"]
        }
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = ["o", "s", "^", "D", "v", "P"]  # one shape per variant
    for i, (backend, device, precision, batch) in enumerate(series):
        for j, v in enumerate(report["variants"]):
            ms = _latency(v, backend, batch, device, precision)
            if ms is not None:
                # INT8 and FP16 engines are plotted at their own files' accuracy.
                accuracy = (v.get(precision) or {}).get("accuracy", v["accuracy"])
                color = colors[i % len(colors)]
                ax.scatter(
                    ms,
                    100 * accuracy,
                    facecolors=color if _comparable(v) else "none",  # hollow: not comparable
                    edgecolors=color,
                    marker=markers[j % len(markers)],
                    s=40,
                    zorder=3,
                )
    # Two legends: colour = backend/device/precision/batch, shape = variant.
    handles = _legend_handles(series, report["variants"], colors, markers)
    check = report.get("accuracy_check")
    if check:
        chance = 100 * check["chance_accuracy"]
        ax.axhline(chance, color="gray", linestyle="--", linewidth=0.8, zorder=1)
        handles.append(Line2D([], [], color="gray", linestyle="--", label="chance"))
    ax.set_xscale("log")
    ax.set_xlabel("median latency per batch (ms, log scale)")
    ax.set_ylabel("test top-1 accuracy (%)")
    title = f"{model_label(report['recipe']['model'])} on {report['recipe']['data']['name']}"
    failed = [v["name"] for v in report["variants"] if not _comparable(v)]
    if failed:
        title += f"\nnot comparable (accuracy check): {', '.join(failed)}"
    ax.set_title(title, fontsize=9 if failed else None)
    ax.grid(True, alpha=0.3)
    ax.legend(handles=handles, fontsize=7, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _legend_handles(
    series: list[tuple[str, str, str, int]],
    variants: list[dict[str, Any]],
    colors: list[str],
    markers: list[str],
) -> list[Any]:
    """Colour per backend/device/precision/batch, shape per variant (hollow: not comparable)."""
    from matplotlib.lines import Line2D

    handles = [
        Line2D(
            [],
            [],
            color=colors[i % len(colors)],
            marker="o",
            linestyle="",
            label=f"{b} {d} {p} batch {n}",
        )
        for i, (b, d, p, n) in enumerate(series)
    ]
    handles += [
        Line2D(
            [],
            [],
            color="gray",
            marker=markers[j % len(markers)],
            linestyle="",
            markerfacecolor="gray" if _comparable(v) else "none",
            label=v["name"] if _comparable(v) else f"{v['name']} (NOT COMPARABLE)",
        )
        for j, v in enumerate(variants)
    ]
    return handles


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path, Path]:
    json_path, md_path, plot_path = (
        out_dir / "report.json",
        out_dir / "report.md",
        out_dir / PLOT_FILE,
    )
    atomic_write_text(json_path, json.dumps(report, indent=2))
    atomic_write_text(md_path, render_markdown(report))
    plot_accuracy_latency(report, plot_path)
    plot_block_latency(report, out_dir / BLOCK_PLOT_FILE)  # with a latency budget only
    return json_path, md_path, plot_path
