"""The pipeline's report.md shows run-to-run variation and measurement warnings (and still
renders a report.json written before they existed)."""

from __future__ import annotations

import copy
from typing import Any

from compressor.workflows.report import render_markdown


def _latency(p50_ms: float, run_cv: float | None) -> dict[str, Any]:
    row = {
        "backend": "onnxruntime",
        "device": "cpu",
        "precision": "fp32",
        "batch": 1,
        "mean_ms": p50_ms,
        "p50_ms": p50_ms,
        "p90_ms": p50_ms,
        "p95_ms": p50_ms,
        "p99_ms": p50_ms,
        "std_ms": 0.0,
        "throughput_ips": 1000 / p50_ms,
    }
    if run_cv is not None:
        row |= {"cv": 0.02, "runs": 3, "run_medians_ms": [p50_ms] * 3, "run_cv": run_cv}
    return row


def _report(run_cv: float | None, warnings: list[str] | None) -> dict[str, Any]:
    variant = {
        "accuracy": 0.9,
        "params": 1000,
        "macs": 10_000,
        "removed_blocks": [],
        "epoch_seconds": 1.0,
        "parity_max_abs_diff": 1e-6,
    }
    variants = [
        copy.deepcopy(variant) | {"name": name, "latency": [_latency(ms, run_cv)]}
        for name, ms in (("dense", 2.0), ("ticket", 1.0), ("shrunk", 0.5))
    ]
    report = {
        "recipe": {
            "name": "tiny",
            "model": {"name": "resnet8"},
            "data": {"name": "digits"},
            "prune": {"criterion": "snip"},
        },
        "variants": variants,
        "speedups": [],
        "environment": {"cpu_model": "test cpu", "threads": 2, "fingerprint_id": "abc"},
    }
    if warnings is not None:
        report["measurement_warnings"] = warnings
    return report


def test_latency_table_has_the_run_cv_and_warnings_are_listed() -> None:
    warning = "machine busy: 1-minute load average 3.00 on 2 CPUs around the timed runs"
    markdown = render_markdown(_report(0.034, [warning]))
    header = next(line for line in markdown.splitlines() if line.startswith("| variant | backend"))
    assert "| run CV |" in header
    dense = next(line for line in markdown.splitlines() if line.startswith("| dense | onnx"))
    assert "| 3.4% |" in dense
    assert f"## Measurement warnings\n\n- {warning}\n" in markdown


def test_a_report_from_before_run_cv_still_renders() -> None:
    markdown = render_markdown(_report(None, None))
    dense = next(line for line in markdown.splitlines() if line.startswith("| dense | onnx"))
    assert "| n/a |" in dense
    assert "Measurement warnings" not in markdown
