"""What the TensorRT-readiness lint reports: one `Finding` per problem, and the report of
all of them for one model. A leaf below the lint's check modules."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from deploy.config_fields import check_fields, one_of

Severity = Literal["error", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = ("error", "warning", "info")


@dataclass(frozen=True)
class Finding:
    """One problem: what is wrong and what to do (`message`), and where (`node`, `op_type`)."""

    severity: Severity = field(metadata=one_of(SEVERITIES))
    code: str  # stable short id, e.g. "unsupported-op", "qdq-zero-point"
    node: str | None  # node name, or "OpType#index" when the node has none
    op_type: str | None
    message: str

    def __post_init__(self) -> None:
        check_fields(self, ValueError, "Finding.{name}: ")


@dataclass(frozen=True)
class ReadinessReport:
    """Every finding for one model against one declared TensorRT version."""

    trt_version: str
    findings: tuple[Finding, ...]
    source: str = "<ModelProto>"

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "error")

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "warning")

    @property
    def ok(self) -> bool:
        """No errors: TensorRT should parse and build it (warnings may still cost speed)."""
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        counts = {s: sum(f.severity == s for f in self.findings) for s in SEVERITIES}
        return {
            "trt_version": self.trt_version,
            "source": self.source,
            "ok": self.ok,
            "counts": counts,
            "findings": [asdict(f) for f in self.findings],
        }

    def format(self) -> str:
        """One line per finding (one summary line when there is none)."""
        if not self.findings:
            return f"{self.source}: no findings for TensorRT {self.trt_version}"
        return "\n".join(
            f"{f.severity:<7} {f.code:<28} "
            + (f"{f.op_type} '{f.node}': " if f.node else "")
            + f.message
            for f in self.findings
        )


def finding(severity: Severity, code: str, message: str, node: str | None = None,
       op: str | None = None) -> Finding:  # fmt: skip
    return Finding(severity, code, node, op, message)
