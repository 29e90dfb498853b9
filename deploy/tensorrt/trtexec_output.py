"""Reading trtexec's output: version banner, `--exportTimes` JSON, summary, LatencyRecords.

Formats as printed by trtexec's own code (NVIDIA/TensorRT samples/common, tags v8.6.1 to
v11.1): logging.h prefixes lines with "[MM/DD/YYYY-HH:MM:SS] [I] " and starts with
"&&&& RUNNING TensorRT.trtexec [TensorRT v100300]"; sampleReporting.cpp printEpilog writes the
"=== Performance summary ===" block and exportJSONTrace the per-query JSON.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deploy.errors import DeployInputError
from deploy.records import LatencyRecord
from deploy.stats import latency_stats
from deploy.tensorrt.version import TrtVersion, capabilities, version_from_banner_number

LOG_PREFIX = re.compile(r"^\[\d\d/\d\d/\d{4}-\d\d:\d\d:\d\d\] \[([FEWIV])\] ")
_BANNER = re.compile(r"\[TensorRT v(\d+)\]")
_STAT_LINES = {
    "Latency": "latency_ms",
    "Enqueue Time": "enqueue_time_ms",
    "H2D Latency": "h2d_latency_ms",
    "GPU Compute Time": "gpu_compute_time_ms",
    "D2H Latency": "d2h_latency_ms",
}
_WARNINGS = {
    "bound by Enqueue Time": "enqueue_bound",
    "host-to-device": "h2d_bound",
    "device-to-host": "d2h_bound",
    "GPU compute time is unstable": "gpu_compute_unstable",
    "Multiple inference streams": "multiple_streams",
}
_SETTINGS = ("CUDA Graph", "Data transfers", "Spin-wait", "Separate profiling")


def error_lines(output: str, last: int = 3) -> list[str]:
    """The last error lines of a failed trtexec run ([E]/[F] severity), else its last lines.

    trtexec logs errors through logging.h with an "[E] " prefix (TensorRT's own errors as
    "[E] [TRT] ..."); a rejected flag ends with "[E] Unknown option: --fp16" after the help.
    """
    errors, other = [], []
    for line in output.splitlines():
        match = LOG_PREFIX.match(line)
        text = line[match.end() :].strip() if match else line.strip()
        if match and match.group(1) in "EF" and text:
            errors.append(text)
        elif text:
            other.append(text)
    return (errors or other)[-last:]


def parse_banner(text: str) -> TrtVersion | None:
    """The TensorRT version in trtexec output: its banner, else "TensorRT version: x.y.z"."""
    match = _BANNER.search(text)
    if match:
        return version_from_banner_number(int(match.group(1)))
    match = re.search(r"TensorRT version: (\d+\.\d+\.\d+)", text)
    return capabilities(match.group(1)).version if match else None


@dataclass(frozen=True)
class TrtexecIteration:
    """One timed query from `--exportTimes`; times in ms since trtexec's inference start."""

    start_enq_ms: float
    end_enq_ms: float
    start_h2d_ms: float
    end_h2d_ms: float
    start_compute_ms: float
    end_compute_ms: float
    start_d2h_ms: float
    end_d2h_ms: float
    h2d_ms: float
    compute_ms: float
    d2h_ms: float
    latency_ms: float  # h2d + compute + d2h, as trtexec defines "Latency"

    @property
    def enqueue_ms(self) -> float:
        """Host enqueue time; coarse (the JSON prints absolute ms to 6 significant digits)."""
        return self.end_enq_ms - self.start_enq_ms


# JSON keys written by sampleReporting.cpp exportJSONTrace (same in 8.6, 10.x and 11.x).
_TIME_KEYS = {
    "startEnqMs": "start_enq_ms",
    "endEnqMs": "end_enq_ms",
    "startH2dMs": "start_h2d_ms",
    "endH2dMs": "end_h2d_ms",
    "startComputeMs": "start_compute_ms",
    "endComputeMs": "end_compute_ms",
    "startD2hMs": "start_d2h_ms",
    "endD2hMs": "end_d2h_ms",
    "h2dMs": "h2d_ms",
    "computeMs": "compute_ms",
    "d2hMs": "d2h_ms",
    "latencyMs": "latency_ms",
}


def parse_export_times(source: str | os.PathLike[str] | Sequence[Any]) -> list[TrtexecIteration]:
    """Per-iteration records from an `--exportTimes` file (or its already-parsed list)."""
    data = source
    if isinstance(source, (str, os.PathLike)):
        try:
            data = json.loads(Path(source).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DeployInputError(f"trtexec times {source} are not readable JSON: {exc}") from exc
    if not isinstance(data, list) or not data:
        raise DeployInputError("trtexec --exportTimes holds no iterations (did inference run?)")
    iterations = []
    for index, entry in enumerate(data):
        missing = sorted(set(_TIME_KEYS) - set(entry)) if isinstance(entry, dict) else ["all"]
        if missing:
            raise DeployInputError(f"trtexec times entry {index} lacks {missing}")
        iterations.append(
            TrtexecIteration(**{field: float(entry[key]) for key, field in _TIME_KEYS.items()})
        )
    return iterations


def parse_summary(log_text: str) -> dict[str, Any]:
    """The "=== Performance summary ===" block of a trtexec log, plus what ran where.

    Returns throughput_qps; latency_ms, enqueue_time_ms, h2d_latency_ms, gpu_compute_time_ms
    and d2h_latency_ms as {min, max, mean, median, p90, ...}; total_host_walltime_s,
    total_gpu_compute_time_s; warnings (codes) and warning_lines; and, when the log has them,
    tensorrt_version, gpu_name, compute_capability, warmup/timing query counts and the
    inference settings (CUDA Graph, Data transfers, Spin-wait) trtexec printed.
    """
    lines = [LOG_PREFIX.sub("", line).rstrip() for line in log_text.splitlines()]
    starts = [i for i, line in enumerate(lines) if line == "=== Performance summary ==="]
    if not starts:
        raise DeployInputError(
            "trtexec output has no '=== Performance summary ===' block; "
            "did inference run (no --skipInference, profiling separate)?"
        )
    summary: dict[str, Any] = {"warnings": [], "warning_lines": [], "settings": {}}
    for line in lines[starts[-1] + 1 :]:
        if not line.strip() or line.startswith("==="):  # --verbose prints explanations next
            break
        key, _, value = line.partition(": ")
        if key == "Throughput":
            summary["throughput_qps"] = _float(value.removesuffix(" qps"))
        elif key in _STAT_LINES:
            summary[_STAT_LINES[key]] = _stat_values(value)
        elif key in ("Total Host Walltime", "Total GPU Compute Time"):
            name = key.lower().replace(" ", "_") + "_s"
            summary[name] = _float(value.removesuffix(" s"))
    missing = sorted({"throughput_qps", *_STAT_LINES.values()} - set(summary))
    if missing:
        raise DeployInputError(f"trtexec performance summary lacks {missing}")
    for line in lines:  # warnings go to stderr, which may precede stdout in a saved log
        codes = [code for text, code in _WARNINGS.items() if line.startswith("* ") and text in line]
        if codes and line[2:] not in summary["warning_lines"]:
            summary["warning_lines"].append(line[2:])
            summary["warnings"] += codes
        cv = re.search(r"coefficient of variance = ([\d.eE+-]+)%", line)
        if cv:
            summary["gpu_compute_cv_percent"] = _float(cv.group(1))
    for line in lines[: starts[-1]]:
        key, _, value = line.partition(": ")
        if key in _SETTINGS:
            summary["settings"][key] = value
        elif key == "Selected Device":
            summary["gpu_name"] = value
        elif key == "Compute Capability":
            summary["compute_capability"] = value
        elif match := re.match(r"(Warmup completed|Timing trace has) (\d+) queries", line):
            name = "warmup_queries" if match.group(1).startswith("Warmup") else "timing_queries"
            summary[name] = int(match.group(2))
    version = parse_banner(log_text)
    summary["tensorrt_version"] = None if version is None else str(version)
    return summary


def _stat_values(text: str) -> dict[str, float]:
    """Parse "min = 1 ms, ..., percentile(90%) = 1.5 ms" into {"min": 1.0, ..., "p90": 1.5}."""
    values = {}
    for item in text.split(", "):
        name, _, number = item.partition(" = ")
        percentile = re.fullmatch(r"percentile\(([\d.]+)%\)", name)
        values[f"p{percentile.group(1)}" if percentile else name] = _float(
            number.removesuffix(" ms")
        )
    return values


def _float(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError as exc:
        raise DeployInputError(f"trtexec printed {text!r} where a number was expected") from exc


def record_from_trtexec(
    log_text: str,
    times: str | os.PathLike[str] | Sequence[Any],
    *,
    model: str,
    batch: int,
    precision: str,
    command: Sequence[str],
    trt_version: str | TrtVersion | None = None,
) -> LatencyRecord:
    """One LatencyRecord from a trtexec run's log and `--exportTimes` file (what run_trtexec does).

    Host latency statistics are over trtexec's per-query Latency (H2D + GPU compute + D2H);
    gpu_compute_ms is the median GPU compute time; trtexec's own figures go into details.
    """
    summary = parse_summary(log_text)
    iterations = parse_export_times(times)
    stats = latency_stats([it.latency_ms / 1e3 for it in iterations], batch)
    settings = summary["settings"]
    version = trt_version or summary["tensorrt_version"]
    details = {
        "trtexec_version": None if version is None else str(version),
        "command": shlex.join(str(part) for part in command),
        "latency_definition": "trtexec Latency: H2D + GPU compute + D2H per query",
        # From the summary: the JSON prints absolute times to 6 digits (~1 us at 200 ms).
        "enqueue_median_ms": summary["enqueue_time_ms"]["median"],
        "h2d_median_ms": summary["h2d_latency_ms"]["median"],
        "d2h_median_ms": summary["d2h_latency_ms"]["median"],
        "throughput_qps": summary["throughput_qps"],
        "total_host_walltime_s": summary.get("total_host_walltime_s"),
        "warnings": summary["warnings"],
        "gpu_name": summary.get("gpu_name"),
        "cuda_graph": _enabled(settings.get("CUDA Graph")),
        "data_transfers": _enabled(settings.get("Data transfers")),
        "spin_wait": _enabled(settings.get("Spin-wait")),
    }
    return LatencyRecord(
        model=model,
        backend="trtexec",
        device="cuda",
        precision=precision,
        batch=batch,
        threads=None,
        warmup_iters=int(summary.get("warmup_queries", 0)),
        gpu_compute_ms=float(np.median([it.compute_ms for it in iterations])),
        details=details,
        **stats.to_dict(),
    )


def _enabled(value: str | None) -> bool | None:
    return None if value is None else value == "Enabled"
