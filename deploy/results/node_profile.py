"""Per-node (per-layer) times of one model: the file `deploy bench --profile` writes beside
its result file (<output stem>.profile.json) and the tables that show them.

The times are measured in deploy.profiling.node_times (onnxruntime's profiler in a pass of
its own after the timed runs, or trtexec's --exportProfile); this module is only the data,
its file and its plain-text table, so `deploy report` reads profiles without the profilers.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.errors import DeployInputError
from deploy.files import atomic_write_text
from deploy.paths import read_regular_bytes

PROFILE_FORMAT = "layer-lottery.node_profile"
PROFILE_VERSION = 1
MAX_PROFILE_BYTES = 64 << 20
NAME_WIDTH = 48  # TensorRT names fused layers after every node in them: hundreds of characters


@dataclass(frozen=True)
class NodeTime:
    """One node (onnxruntime) or layer (TensorRT: often several ONNX nodes fused)."""

    name: str
    op_type: str  # ONNX op type, TensorRT layer type, or "" when the source does not say
    mean_ms: float  # per inference call, over `count` profiled calls
    median_ms: float | None  # None when the source gives no median
    share: float  # of the profile's total_ms, 0 to 1
    count: int  # profiled calls the times are over
    onnx_nodes: tuple[str, ...] = ()  # the ONNX nodes it computes, when the source says

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "op_type": self.op_type,
            "mean_ms": self.mean_ms,
            "median_ms": self.median_ms,
            "share": self.share,
            "count": self.count,
            "onnx_nodes": list(self.onnx_nodes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeTime:
        median = data.get("median_ms")
        return cls(
            name=_text(data, "name"),
            op_type=str(data.get("op_type") or ""),
            mean_ms=_time(data, "mean_ms"),
            median_ms=None if median is None else _time(data, "median_ms"),
            share=_time(data, "share"),
            count=_count(data, "count"),
            onnx_nodes=tuple(str(n) for n in data.get("onnx_nodes") or ()),
        )


@dataclass(frozen=True)
class NodeProfile:
    """Where one inference call of `model` spends its time, node by node, at one batch."""

    model: str
    backend: str
    precision: str
    batch: int
    nodes: tuple[NodeTime, ...]  # in the order they ran
    total_ms: float  # the nodes' mean_ms summed: one call, time inside nodes only
    source: str  # "onnxruntime profiler", "trtexec --exportProfile"
    model_path: str | None = None  # the file profiled, as given
    run_ms: float | None = None  # one whole call as the profiler saw it, where it says
    block_ms: dict[str, float] | None = None  # per removable block (blocks.json beside it)
    # The dense network's blocks this model lacks (its spec in the ONNX metadata), by their
    # names in the dense network: what `deploy report` looks up in the dense profile.
    removed_blocks: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "backend": self.backend,
            "precision": self.precision,
            "batch": self.batch,
            "source": self.source,
            "model_path": self.model_path,
            "total_ms": self.total_ms,
            "run_ms": self.run_ms,
            "block_ms": self.block_ms,
            "removed_blocks": list(self.removed_blocks),
            "nodes": [node.to_dict() for node in self.nodes],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeProfile:
        if not isinstance(data, dict):
            raise ValueError("a profile must be an object")
        nodes = data.get("nodes")
        if not isinstance(nodes, list):
            raise ValueError('"nodes" must be a list')
        blocks = data.get("block_ms")
        if blocks is not None and not isinstance(blocks, dict):
            raise ValueError('"block_ms" must be an object of block name -> ms')
        run_ms = data.get("run_ms")
        return cls(
            model=_text(data, "model"),
            backend=_text(data, "backend"),
            precision=_text(data, "precision"),
            batch=_count(data, "batch"),
            nodes=tuple(NodeTime.from_dict(_object(n)) for n in nodes),
            total_ms=_time(data, "total_ms"),
            source=_text(data, "source"),
            model_path=None if data.get("model_path") is None else str(data["model_path"]),
            run_ms=None if run_ms is None else _time(data, "run_ms"),
            block_ms=None if blocks is None else {str(k): _time(blocks, k) for k in blocks},
            removed_blocks=tuple(str(b) for b in data.get("removed_blocks") or ()),
        )


def removed_time_lines(profiles: Sequence[NodeProfile]) -> list[str]:
    """For each pruned model profiled beside its dense network (same backend, precision and
    batch): the time the removed blocks took in the dense profile, and how much less the
    pruned model's own profile takes."""
    lines = []
    dense = {
        (p.backend, p.precision, p.batch): p
        for p in profiles
        if p.block_ms and not p.removed_blocks
    }
    for profile in profiles:
        base = dense.get((profile.backend, profile.precision, profile.batch))
        if not profile.removed_blocks or base is None or not base.block_ms:
            continue
        known = [b for b in profile.removed_blocks if b in base.block_ms]
        removed_ms = sum(base.block_ms[b] for b in known)
        share = removed_ms / base.total_ms if base.total_ms > 0 else 0.0
        lines.append(
            f"{profile.model} ({profile.backend} {profile.precision}, batch {profile.batch}): "
            f"its {len(known)} removed blocks took {removed_ms:.4f} ms ({share:.1%}) of "
            f"{base.model}'s {base.total_ms:.4f} ms in nodes; its own nodes take "
            f"{profile.total_ms:.4f} ms ({base.total_ms - profile.total_ms:.4f} ms less)"
        )
    return lines


def node_times_from_ms(
    times: Sequence[tuple[str, str, float, float | None, int, tuple[str, ...]]],
) -> tuple[tuple[NodeTime, ...], float]:
    """NodeTimes with their shares, from (name, op, mean ms, median ms, count, ONNX nodes)
    rows, and the total the shares are of."""
    total = sum(row[2] for row in times)
    nodes = tuple(
        NodeTime(name, op, mean, median, mean / total if total > 0 else 0.0, count, onnx)
        for name, op, mean, median, count, onnx in times
    )
    return nodes, total


def write_node_profiles(
    path: str | os.PathLike[str],
    profiles: Sequence[NodeProfile],
    *,
    results_sha256: str | None = None,
) -> Path:
    """Write `profiles`; `results_sha256` is that of the result file they go with, so a
    profile left from an earlier run is not shown beside newer results."""
    document = {
        "format": PROFILE_FORMAT,
        "version": PROFILE_VERSION,
        "results_sha256": results_sha256,
        "profiles": [profile.to_dict() for profile in profiles],
    }
    return atomic_write_text(path, json.dumps(document, indent=1) + "\n")


def read_node_profiles(
    path: str | os.PathLike[str], *, results_sha256: str | None = None
) -> list[NodeProfile]:
    """The profiles in a <stem>.profile.json, checked; a wrong file is one line naming it.
    With `results_sha256`, a file written with another result file is refused too."""
    path = Path(path)
    try:
        text = read_regular_bytes(path, "profile file", max_bytes=MAX_PROFILE_BYTES)
        data = json.loads(text)
    except FileNotFoundError:
        raise DeployInputError(
            f"profile file {path} not found; `deploy bench --profile` writes one"
        ) from None
    except DeployInputError:  # a link to a FIFO, a file of implausible size
        raise
    except OSError as exc:
        raise DeployInputError(f"cannot read profile file {path}: {exc.strerror or exc}") from None
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError, JSONDecodeError
        raise DeployInputError(
            f"profile file {path} is not JSON ({type(exc).__name__}); it may be truncated: "
            "run `deploy bench --profile` again"
        ) from None
    if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
        raise DeployInputError(
            f'{path} is not a per-node profile (no "format": "{PROFILE_FORMAT}")'
        )
    if data.get("version") != PROFILE_VERSION:
        raise DeployInputError(
            f"profile file {path} has version {data.get('version')!r}; this deploy reads "
            f"version {PROFILE_VERSION}"
        )
    written_for = data.get("results_sha256")
    if results_sha256 is not None and written_for != results_sha256:
        raise DeployInputError(
            f"profile file {path} was written with another version of its result file (an "
            "earlier run); run `deploy bench --profile` again"
        )
    try:
        entries = data["profiles"]
        if not isinstance(entries, list):
            raise TypeError('"profiles" must be a list')
        return [NodeProfile.from_dict(entry) for entry in entries]
    except (KeyError, TypeError, ValueError) as exc:
        raise DeployInputError(
            f"profile file {path} is damaged ({type(exc).__name__}: {exc}); run "
            "`deploy bench --profile` again"
        ) from None


def top_nodes(profile: NodeProfile, k: int = 10) -> list[NodeTime]:
    """The `k` nodes that take longest per call, longest first (ties in run order)."""
    order = sorted(range(len(profile.nodes)), key=lambda i: (-profile.nodes[i].mean_ms, i))
    return [profile.nodes[i] for i in order[: max(k, 0)]]


def short_name(name: str, width: int = NAME_WIDTH) -> str:
    """One printable line of at most `width` characters: the start and the end of a long
    name, which is where TensorRT's fused names say what they are."""
    shown = "".join(c if c.isprintable() else " " for c in name)
    if len(shown) <= width:
        return shown
    half = (width - 3) // 2
    return shown[:half] + "..." + shown[len(shown) - (width - 3 - half) :]


def describe_profile(profile: NodeProfile) -> str:
    """One line: whose profile, how long a call spends in nodes, and where that came from."""
    count = max((node.count for node in profile.nodes), default=0)
    run = f" (a whole call {profile.run_ms:.4f} ms)" if profile.run_ms is not None else ""
    return (
        f"{profile.model} on {profile.backend} {profile.precision}, batch {profile.batch}: "
        f"{profile.total_ms:.4f} ms in {len(profile.nodes)} nodes{run}; "
        f"{profile.source}, {count} calls"
    )


def format_node_times(profile: NodeProfile, k: int = 10) -> str:
    """A plain-text table of the `k` longest nodes, then what the others add up to."""
    shown = top_nodes(profile, k)
    lines = [
        describe_profile(profile),
        f"  {'node':<{NAME_WIDTH}} {'op':<16} {'mean ms':>9} {'median ms':>9} {'share':>6}",
    ]
    for node in shown:
        median = "-" if node.median_ms is None else f"{node.median_ms:.4f}"
        lines.append(
            f"  {short_name(node.name):<{NAME_WIDTH}} {short_name(node.op_type, 16):<16} "
            f"{node.mean_ms:>9.4f} {median:>9} {100 * node.share:>5.1f}%"
        )
    rest = len(profile.nodes) - len(shown)
    if rest > 0:
        ms = profile.total_ms - sum(node.mean_ms for node in shown)
        share = ms / profile.total_ms if profile.total_ms > 0 else 0.0
        lines.append(f"  ... {rest} more nodes: {ms:.4f} ms, {100 * share:.1f}%")
    if profile.block_ms:
        blocks = sorted(profile.block_ms.items(), key=lambda item: -item[1])
        summed = sum(profile.block_ms.values())
        lines.append(
            f"  removable blocks (blocks.json): {summed:.4f} ms of {profile.total_ms:.4f}; "
            + ", ".join(f"{name} {ms:.4f}" for name, ms in blocks[:k])
            + (" ..." if len(blocks) > k else "")
        )
    return "\n".join(lines)


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError("a node must be an object")
    return value


def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f'"{key}" must be a non-empty string, got {value!r}')
    return value


def _time(data: dict[str, Any], key: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f'"{key}" must be a number, got {value!r}')
    if value < 0:
        raise ValueError(f'"{key}" must be >= 0, got {value!r}')
    return float(value)


def _count(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'"{key}" must be a whole number >= 1, got {value!r}')
    return value


__all__ = [
    "NodeProfile",
    "NodeTime",
    "describe_profile",
    "format_node_times",
    "node_times_from_ms",
    "read_node_profiles",
    "short_name",
    "top_nodes",
    "write_node_profiles",
]
