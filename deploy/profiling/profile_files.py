"""The files profilers write, read into per-node times (deploy.results.node_profile).

- onnxruntime's profile (SessionOptions.enable_profiling, written by end_profiling()): a
  Chrome-trace JSON list with one event per node per call, "cat": "Node",
  "name": "<node>_kernel_time", "dur" in microseconds, "args": {"op_name": ...}; each call is
  a "cat": "Session" event named "model_run" around its nodes.
- trtexec --exportProfile: NVIDIA's samples/common/sampleReporting.cpp
  `Profiler::exportJSONProfile` (the same at tags v8.6.1, v10.3.0 and v11.1):
  `[{"count": N}, {"name", "timeMs" (all N calls), "averageMs", "medianMs" (from 8.4),
  "percentage"}, ...]`, layer names written unescaped.
- trtexec --exportLayerInfo: `IEngineInspector::getEngineInformation(kJSON)`, written by
  sampleReporting.cpp `printLayerInfo`: {"Layers": [...], "Bindings": [...]} ("I/O Tensors"
  from 11.x). With --profilingVerbosity=detailed each layer is an object ("Name",
  "LayerType", "ParameterType", "Inputs", "Outputs", ...; from 8.6 "Metadata": one
  "[ONNX Layer: <node> | ...]" per ONNX node, as onnx-tensorrt's processMetadata writes it,
  joined with \\x1e or \\x1f when layers were fused); otherwise each layer is its name
  alone. NVIDIA's trt-engine-explorer (tools/experimental/trt-engine-explorer/trex/
  parser.py, up to v10.16) reads the same files.

A file that is not what it should be, truncated or damaged, is a DeployInputError of one line
naming it.
"""

from __future__ import annotations

import json
import math
import os
import re
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

from deploy.errors import DeployInputError
from deploy.paths import read_regular_bytes
from deploy.results.node_profile import NodeProfile, NodeTime, node_times_from_ms

TRTEXEC_SOURCE = "trtexec --exportProfile"
WARMUP_CALLS = 1  # the first call allocates and picks kernels: left out of the times
KERNEL_SUFFIX = "_kernel_time"
MAX_TRTEXEC_FILE_BYTES = 64 << 20
_ONNX_LAYER = re.compile(r"\[ONNX Layer: (.*?)(?: \| [^\]]*)?\]")


@dataclass(frozen=True)
class LayerInfo:
    """One TensorRT layer as trtexec --exportLayerInfo describes it."""

    name: str
    layer_type: str  # ParameterType ("Convolution") or LayerType; "" with names only
    onnx_nodes: tuple[str, ...]  # from "Metadata" (TensorRT 8.6+, detailed verbosity)


def parse_onnxruntime_profile(
    text: str, source: str | os.PathLike[str], *, skip_calls: int = WARMUP_CALLS
) -> tuple[tuple[NodeTime, ...], float, float | None]:
    """Per-node times from onnxruntime's profile JSON, the first `skip_calls` calls left out:
    (nodes in run order, their total ms per call, a whole call's mean ms or None)."""
    events = load_json(text, f"onnxruntime profile {source}")
    if not isinstance(events, list):
        raise DeployInputError(
            f"onnxruntime profile {source} is not a list of trace events; pass the file "
            "InferenceSession.end_profiling() wrote"
        )
    calls = sorted(
        (number_field(e, "ts", source), number_field(e, "dur", source))
        for e in events
        if isinstance(e, dict) and e.get("cat") == "Session" and e.get("name") == "model_run"
    )
    starts = [start for start, _ in calls]
    durations: dict[str, list[float]] = {}
    ops: dict[str, str] = {}
    seen: dict[str, int] = {}
    for event in events:
        if not isinstance(event, dict) or event.get("cat") != "Node":
            continue
        label = event.get("name")
        if not isinstance(label, str) or not label.endswith(KERNEL_SUFFIX):
            continue
        node = label[: -len(KERNEL_SUFFIX)]
        ts, dur = number_field(event, "ts", source), number_field(event, "dur", source)
        if calls:
            call = bisect_right(starts, ts) - 1
        else:  # no call events: each node runs once per call, so its n-th event is call n
            call = seen[node] = seen.get(node, -1) + 1
        if call < skip_calls:
            continue
        durations.setdefault(node, []).append(dur / 1000)
        args = event.get("args")
        ops.setdefault(node, str(args.get("op_name", "")) if isinstance(args, dict) else "")
    if not durations:
        raise DeployInputError(
            f"onnxruntime profile {source} holds no node times after the first {skip_calls} "
            "call(s); profile more iterations"
        )
    rows = [
        (node, ops[node], sum(ms) / len(ms), median(ms), len(ms), ())
        for node, ms in durations.items()
    ]
    nodes, total = node_times_from_ms(rows)
    kept = [dur / 1000 for _, dur in calls[skip_calls:]]
    return nodes, total, (sum(kept) / len(kept) if kept else None)


def parse_trtexec_profile(text: str, source: str | os.PathLike[str]) -> list[NodeTime]:
    """The layers of a trtexec --exportProfile file, in run order; layers that took no time
    (no-ops, as trtexec's own printed profile leaves out) are dropped."""
    where = f"trtexec profile {source}"
    data = load_json(
        text, where, hint="trtexec writes layer names unescaped, so a quote in one breaks it"
    )
    head = data[0] if isinstance(data, list) and data else None
    count = head.get("count") if isinstance(head, dict) else None
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise DeployInputError(
            f"{where} is not a trtexec --exportProfile file (expected a list starting with "
            '{"count": N}); pass the file --exportProfile wrote'
        )
    rows = []
    for position, record in enumerate(data[1:], start=1):
        if not isinstance(record, dict) or not isinstance(record.get("name"), str):
            raise DeployInputError(f'{where}: entry {position} has no layer "name"')
        average = number_field(record, "averageMs", source)
        if average <= 0:
            continue
        mid = number_field(record, "medianMs", source) if "medianMs" in record else None
        rows.append((record["name"], "", average, mid, count, ()))
    if not rows:
        raise DeployInputError(f"{where} holds no layer that took time; profile the engine again")
    return list(node_times_from_ms(rows)[0])


def parse_trtexec_layer_info(text: str, source: str | os.PathLike[str]) -> dict[str, LayerInfo]:
    """Layer name -> LayerInfo from a trtexec --exportLayerInfo file (detailed or names only)."""
    where = f"trtexec layer information {source}"
    data = load_json(text, where)
    layers = data.get("Layers") if isinstance(data, dict) else None
    if not isinstance(layers, list):
        raise DeployInputError(
            f'{where} has no "Layers" list; pass the file --exportLayerInfo wrote'
        )
    found: dict[str, LayerInfo] = {}
    for position, layer in enumerate(layers):
        if isinstance(layer, str):  # --profilingVerbosity=layer_names_only: names alone
            found[layer] = LayerInfo(layer, "", ())
            continue
        name = layer.get("Name") if isinstance(layer, dict) else None
        if not isinstance(name, str):
            raise DeployInputError(f'{where}: layer {position} has no "Name"')
        kind = layer.get("ParameterType") or layer.get("LayerType") or ""
        metadata = layer.get("Metadata")
        nodes = _onnx_layers(metadata) if isinstance(metadata, str) else ()
        found[name] = LayerInfo(name, str(kind), nodes)
    return found


def _onnx_layers(metadata: str) -> tuple[str, ...]:
    """The ONNX node names in a layer's metadata: "[ONNX Layer: <node> | ...]" per node,
    joined with \\x1e or \\x1f when layers were fused."""
    return tuple(match.group(1) for match in _ONNX_LAYER.finditer(metadata))


def read_trtexec_node_times(
    profile_path: str | os.PathLike[str],
    layer_info_path: str | os.PathLike[str] | None = None,
    *,
    model: str,
    precision: str,
    batch: int,
    model_path: str | os.PathLike[str] | None = None,
) -> NodeProfile:
    """A NodeProfile from trtexec's --exportProfile file and, when given, --exportLayerInfo
    (layer types and the ONNX nodes each layer computes)."""
    profile = read_text(Path(profile_path), "trtexec profile", MAX_TRTEXEC_FILE_BYTES)
    layers = parse_trtexec_profile(profile, profile_path)
    if layer_info_path is not None:
        text = read_text(Path(layer_info_path), "trtexec layer information", MAX_TRTEXEC_FILE_BYTES)
        info = parse_trtexec_layer_info(text, layer_info_path)
        layers = [
            NodeTime(
                n.name,
                info[n.name].layer_type,
                n.mean_ms,
                n.median_ms,
                n.share,
                n.count,
                info[n.name].onnx_nodes,
            )
            if n.name in info
            else n
            for n in layers
        ]
    return NodeProfile(
        model=model,
        backend="trtexec",
        precision=precision,
        batch=batch,
        nodes=tuple(layers),
        total_ms=sum(n.mean_ms for n in layers),
        source=TRTEXEC_SOURCE,
        model_path=None if model_path is None else str(model_path),
    )


def read_text(path: Path, what: str, max_bytes: int) -> str:
    try:
        return read_regular_bytes(path, what, max_bytes=max_bytes).decode("utf-8")
    except FileNotFoundError:
        raise DeployInputError(f"{what} {path} not found") from None
    except DeployInputError:  # a FIFO, a file of implausible size
        raise
    except OSError as exc:
        raise DeployInputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise DeployInputError(f"{what} {path} is not UTF-8 text") from None


def load_json(text: str, where: str, hint: str = "") -> Any:
    try:
        return json.loads(text, strict=False)  # raw control characters, e.g. \x1e
    except (ValueError, RecursionError) as exc:
        detail = f"{exc.msg} at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        extra = f"; {hint}" if hint else ""
        raise DeployInputError(
            f"{where} is not JSON ({detail or type(exc).__name__}): truncated or damaged{extra}"
        ) from None


def number_field(record: dict[str, Any], key: str, source: str | os.PathLike[str]) -> float:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DeployInputError(f'{source}: "{key}" must be a number, got {value!r}')
    if value < 0:
        raise DeployInputError(f'{source}: "{key}" must be >= 0, got {value!r}')
    return float(value)


__all__ = [
    "LayerInfo",
    "load_json",
    "number_field",
    "parse_onnxruntime_profile",
    "parse_trtexec_layer_info",
    "parse_trtexec_profile",
    "read_text",
    "read_trtexec_node_times",
]
