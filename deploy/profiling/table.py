"""A per-block latency table: what each removable block costs on one device, backend,
precision and batch, and what the whole network takes there.

Written by `deploy profile-blocks` (on the device, where only `deploy` may be installed),
read by `compressor` to choose blocks to a latency budget. The prediction for a network
without some blocks is the whole network's time less those blocks' costs. A block's cost is
its subgraph's time alone less the baseline (the per-call cost of a graph that only copies
the block's input, which removing the block does not save), scaled so that all blocks' costs
add up to what the network takes beyond its skeleton (the network without all of them,
timed in the same run); the scale is recorded.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deploy.errors import DeployInputError
from deploy.files import atomic_write_text
from deploy.profiling.blocks_file import read_format_file

TABLE_FORMAT = "layer-lottery.latency_table"
TABLE_VERSION = 1
MAX_TABLE_BYTES = 64 << 20


@dataclass(frozen=True)
class BlockLatency:
    ms: float  # median latency of the block's subgraph alone
    baseline_ms: float  # median latency of copying its input (per-call cost)
    alone_ms: float  # ms - baseline_ms, at least 0
    cost_ms: float  # what removing it saves in the network: alone_ms x the batch's scale
    run_cv: float | None  # run-to-run variation of `ms`
    macs: int  # per sample
    params: int
    stage: int


@dataclass(frozen=True)
class BatchTable:
    network_ms: float  # median latency of the whole dense network
    network_run_cv: float | None
    skeleton_ms: float  # median latency of the network without every listed block
    scale: float  # (network_ms - skeleton_ms) / sum of alone_ms
    blocks: dict[str, BlockLatency]


@dataclass(frozen=True)
class LatencyTable:
    model_sha256: str  # the dense ONNX file that was cut
    backend: str
    precision: str
    threads: int | None
    fingerprint: dict[str, Any]  # deploy.machine.fingerprint of the device it was measured on
    batches: dict[int, BatchTable]
    records: list[dict[str, Any]] = field(default_factory=list)  # every timing, as measured
    warnings: list[str] = field(default_factory=list)  # noisy timings, a busy machine

    @property
    def fingerprint_id(self) -> str:
        return str(self.fingerprint.get("fingerprint_id", "unknown"))

    def batch(self, batch: int) -> BatchTable:
        if batch not in self.batches:
            raise DeployInputError(
                f"the latency table has batch sizes {sorted(self.batches)}, not {batch}; "
                f"measure it again with --batch {batch}"
            )
        return self.batches[batch]

    def predict_ms(self, removed: Iterable[str], batch: int) -> float:
        """The dense network's time less the costs of the `removed` blocks."""
        table = self.batch(batch)
        unknown = sorted(set(removed) - set(table.blocks))
        if unknown:
            raise DeployInputError(f"blocks {unknown} are not in the latency table")
        return table.network_ms - sum(table.blocks[name].cost_ms for name in set(removed))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": TABLE_FORMAT,
            "version": TABLE_VERSION,
            "model_sha256": self.model_sha256,
            "backend": self.backend,
            "precision": self.precision,
            "threads": self.threads,
            "fingerprint": self.fingerprint,
            "batches": {
                str(batch): {
                    "network_ms": t.network_ms,
                    "network_run_cv": t.network_run_cv,
                    "skeleton_ms": t.skeleton_ms,
                    "scale": t.scale,
                    "blocks": {name: asdict(b) for name, b in t.blocks.items()},
                }
                for batch, t in self.batches.items()
            },
            "records": self.records,
            "warnings": self.warnings,
        }


def write_table(path: str | os.PathLike[str], table: LatencyTable) -> Path:
    return atomic_write_text(path, json.dumps(table.to_dict(), indent=2) + "\n")


def read_table(path: str | os.PathLike[str]) -> LatencyTable:
    """A latency table, checked; a wrong file is one line naming the field."""
    path = Path(path)
    data = read_format_file(
        path,
        "latency table",
        TABLE_FORMAT,
        TABLE_VERSION,
        "write one with `deploy profile-blocks`",
        MAX_TABLE_BYTES,
    )
    try:
        batches = {int(b): _batch_table(t) for b, t in data["batches"].items()}
        table = LatencyTable(
            model_sha256=str(data["model_sha256"]),
            backend=str(data["backend"]),
            precision=str(data["precision"]),
            threads=data.get("threads"),
            fingerprint=dict(data["fingerprint"]),
            batches=batches,
            records=list(data.get("records") or []),
            warnings=[str(w) for w in data.get("warnings") or []],
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DeployInputError(
            f"latency table {path} is damaged ({type(exc).__name__}: {exc}); measure it again"
        ) from None
    if not table.batches:
        raise DeployInputError(f"latency table {path} holds no batch size")
    return table


def _batch_table(data: dict[str, Any]) -> BatchTable:
    blocks = {}
    for name, b in data["blocks"].items():
        block = BlockLatency(**b)
        times = (block.ms, block.baseline_ms, block.alone_ms, block.cost_ms)
        if not all(isinstance(v, int | float) and math.isfinite(v) and v >= 0 for v in times):
            raise ValueError(f"block {name} has a time that is not a number >= 0")
        blocks[str(name)] = block
    network = float(data["network_ms"])
    if not (math.isfinite(network) and network > 0):
        raise ValueError("network_ms must be a number > 0")
    return BatchTable(
        network,
        data.get("network_run_cv"),
        float(data["skeleton_ms"]),
        float(data["scale"]),
        blocks,
    )


__all__ = ["BatchTable", "BlockLatency", "LatencyTable", "read_table", "write_table"]
