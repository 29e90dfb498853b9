"""What one benchmark is asked to do (`BenchConfig`) and the record it returns per model and
batch size (`LatencyRecord`). A leaf module: the harness, its timed runs and the result files
all read these, so they live below all of them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from deploy.config_fields import (
    check_fields,
    is_int,
    is_real,
    is_sequence,
    plain_tuple,
    real,
    rule,
    whole,
    wholes,
)
from deploy.errors import DeployConfigError, DeployInputError


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """How to time a model. Timing stops once both `iterations` and `min_seconds` are met.

    The timed phase is `repeats` runs, each with its share of `iterations`, `min_seconds` and
    `max_seconds` (at least one iteration each); medians and percentiles are over all of them.
    """

    batch_sizes: tuple[int, ...] = field(
        default=(1,), metadata=wholes(expected="a non-empty list of integers >= 1")
    )
    # Untimed runs per model and batch: allocator, caches, clocks.
    warmup_iters: int = field(default=20, metadata=whole(0))
    iterations: int = field(default=100, metadata=whole(1))  # timed runs, at least
    # ...and keep timing until each model has this much timed time
    min_seconds: float = field(default=0.0, metadata=real(0))
    # Safety cap on the timed phase of one batch size (wall clock).
    max_seconds: float = field(default=300.0, metadata=real(0, above=True))
    seed: int = field(default=0, metadata=whole())  # the random inputs: reruns feed the same
    # Independent timed runs per model and batch; their medians' spread is the run-to-run CV.
    # Three is the fewest that shows a drifting median without tripling short benchmarks.
    repeats: int = field(default=3, metadata=whole(1))
    # Side by side, models take turns in blocks of this many timed iterations, each turn
    # after untimed iterations for `lead_in_seconds` (one at least) so the previous model's
    # threads go idle (1 and 0: one iteration per model per round, the method before blocks,
    # which timed models slower than they run alone). See deploy/timed_runs.py.
    block_iters: int = field(default=20, metadata=whole(1))
    lead_in_seconds: float = field(default=0.005, metadata=real(0))
    shapes: Mapping[str, tuple[int, ...]] = field(  # name -> full shape
        default_factory=dict,
        metadata=rule(lambda v: isinstance(v, Mapping), "a mapping of input names to shapes"),
    )
    # With a power sampler, each model then runs alone for this long while power is sampled
    # (interleaving would mix the models' power draw); energy per inference comes from it.
    power_seconds: float = field(default=2.0, metadata=real(0, above=True))

    def __post_init__(self) -> None:
        check_fields(self, DeployConfigError, "{name} ")
        if len(set(self.batch_sizes)) != len(self.batch_sizes):
            raise DeployConfigError(f"batch_sizes has duplicates: {self.batch_sizes}")
        if self.max_seconds < self.min_seconds:
            raise DeployConfigError(
                f"max_seconds ({self.max_seconds}) must not be below min_seconds "
                f"({self.min_seconds})"
            )
        shapes = {}
        for name, shape in dict(self.shapes).items():
            dims = plain_tuple(shape) if is_sequence(shape) else ()
            if not dims or any(not is_int(d) or d < 1 for d in dims):
                raise DeployConfigError(
                    f"shapes['{name}'] must be a tuple of integers >= 1, got {shape!r}"
                )
            shapes[str(name)] = dims
        object.__setattr__(self, "shapes", shapes)


IDENTITY_KEY = "model_identity"  # where a record keeps its ModelIdentity, in `details`


@dataclass(frozen=True, kw_only=True)
class ModelIdentity:
    """Which model a record measured, so two files both called model.onnx never merge.

    `compressor export` writes the variant and the hash of the model's spec into the ONNX
    metadata (keys "variant" and "spec_sha256"): those name the model, whatever the file is
    called, and stay the same for its FP32, INT8 and FP16 files (the precision is a column of
    its own). A file without them (a foreign ONNX, an engine whose ONNX is gone, a .pt2) is
    named by the SHA-256 of its bytes instead. `file_sha256` is recorded either way, so a
    report can tell "measured again" from "another file of the same spec".
    """

    variant: str | None = None  # metadata "variant" ("dense", "ticket", "shrunk")
    spec_sha256: str | None = None  # metadata "spec_sha256"
    file_sha256: str | None = None  # the bytes that were timed (or the engine's source ONNX)
    # The FP32 ONNX file the model's files were exported from: an INT8/FP16/BF16 sibling's
    # metadata "source_onnx_sha256", an FP32 file's own hash. Two trainings of one spec have
    # the same variant and spec but not the same weights: this tells them apart, while the
    # precisions of one export stay one model.
    source_sha256: str | None = None

    def __post_init__(self) -> None:
        for name in ("variant", "spec_sha256", "file_sha256", "source_sha256"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.isprintable()):
                raise DeployInputError(
                    f"model identity '{name}' must be one line of text or null, got {value!r}"
                )

    @property
    def key(self) -> str | None:
        """What makes two records the same model: variant, spec hash and the FP32 file they
        were exported from, else the file's hash; None when neither is known (records written
        before identities)."""
        if self.spec_sha256:
            source = f"@onnx:{self.source_sha256}" if self.source_sha256 else ""
            return f"{self.variant or ''}@spec:{self.spec_sha256}{source}"
        if self.file_sha256:
            return f"sha256:{self.file_sha256}"
        return None

    @property
    def short(self) -> str:
        """A few characters that tell identities apart in a table: "spec 1a2b3c4d"."""
        if self.spec_sha256:
            return f"spec {self.spec_sha256[:8]}"
        if self.file_sha256:
            return f"sha256 {self.file_sha256[:8]}"
        return "no model id"

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> ModelIdentity:
        if not isinstance(data, Mapping) or set(data) - {f.name for f in fields(cls)}:
            raise DeployInputError(
                f"record field 'details.{IDENTITY_KEY}' must be an object with variant, "
                f"spec_sha256, file_sha256 and source_sha256, got {str(data)[:80]}"
            )
        return cls(**dict(data))


@dataclass(frozen=True, kw_only=True)
class LatencyRecord:
    """One measurement: a model on a backend, device, precision and batch size."""

    model: str
    backend: str
    device: str
    precision: str
    batch: int
    threads: int | None  # intra-op threads; CPU runners always set it, None for GPU backends
    warmup_iters: int
    iterations: int  # timed iterations run, over all runs (fewer than asked if max_seconds hit)
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    cv: float
    throughput_ips: float
    # Optional figures; None when the run did not measure them. The *_ms fields above are
    # host latency (what the caller waits for, transfers included on a GPU).
    accuracy: float | None = None  # top-1 fraction on a labelled evaluation file
    accuracy_samples: int | None = None  # how many labelled images `accuracy` is over
    gpu_compute_ms: float | None = None  # median GPU compute time alone (CUDA events, trtexec)
    energy_mj: float | None = None  # energy per inference call (one whole batch), millijoules
    avg_power_w: float | None = None  # mean power while the energy was measured
    power_source: str | None = None  # what measured it, e.g. "nvml" or "tegrastats:VDD_IN"
    # Run-to-run variation: the timed phase split into `runs` independent runs, the median
    # of each, and std/mean of those medians (None with one run, and in older files).
    runs: int | None = None
    run_medians_ms: tuple[float, ...] | None = None
    run_cv: float | None = None
    # Backend-specific figures and settings, JSON-safe (trtexec's enqueue and transfer times,
    # whether a CUDA graph was used, the engine's sidecar hash, ...).
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @property
    def identity(self) -> ModelIdentity | None:
        """The model this record measured (`details.model_identity`); None in records
        written before identities were recorded, which only their `model` name tells apart."""
        data = self.details.get(IDENTITY_KEY)
        return None if data is None else ModelIdentity.from_dict(data)

    def with_identity(self, identity: ModelIdentity) -> LatencyRecord:
        """This record, saying which model it measured. Kept in `details` (free-form) rather
        than a field of its own, so older `deploy` versions still read the file."""
        return replace(self, details={**self.details, IDENTITY_KEY: identity.to_dict()})

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> LatencyRecord:
        """Rebuild a record from `to_dict` output, saying which fields are missing or wrong."""
        if not isinstance(data, Mapping):
            raise DeployInputError(f"a record must be an object, got {type(data).__name__}")
        names = {f.name: f for f in fields(cls)}
        required = {name for name in names if name not in _OPTIONAL_FIELDS}
        missing = sorted(required - set(data))
        unknown = sorted(set(data) - set(names))
        if missing or unknown:
            raise DeployInputError(f"record fields: missing {missing}, unknown {unknown}")
        for name in ("model", "backend", "device", "precision"):
            if not isinstance(data[name], str):
                raise DeployInputError(
                    f"record field '{name}' must be a string, got {data[name]!r}"
                )
        for name in ("batch", "warmup_iters", "iterations"):
            if not is_int(data[name]):
                raise DeployInputError(
                    f"record field '{name}' must be an integer, got {data[name]!r}"
                )
        if data["threads"] is not None and not is_int(data["threads"]):
            raise DeployInputError(
                f"record field 'threads' must be an integer or null, got {data['threads']!r}"
            )
        for name in names:
            is_measurement = name.endswith("_ms") or name in ("cv", "throughput_ips")
            is_measurement = is_measurement and name in required
            if is_measurement and not is_real(data[name]):
                raise DeployInputError(
                    f"record field '{name}' must be a number, got {data[name]!r}"
                )
        for name in ("accuracy", "gpu_compute_ms", "energy_mj", "avg_power_w", "run_cv"):
            if data.get(name) is not None and not is_real(data[name]):
                raise DeployInputError(
                    f"record field '{name}' must be a number or null, got {data[name]!r}"
                )
        for name in ("accuracy_samples", "runs"):
            if data.get(name) is not None and not is_int(data[name]):
                raise DeployInputError(
                    f"record field '{name}' must be an integer or null, got {data[name]!r}"
                )
        medians = data.get("run_medians_ms")
        if medians is not None and (
            not isinstance(medians, Sequence)
            or isinstance(medians, str)
            or not all(is_real(m) for m in medians)
            or (data.get("runs") is not None and len(medians) != data["runs"])
        ):
            raise DeployInputError(
                "record field 'run_medians_ms' must be a list of numbers, one per run, or "
                f"null, got {medians!r}"
            )
        if data.get("power_source") is not None and not isinstance(data["power_source"], str):
            raise DeployInputError(
                f"record field 'power_source' must be a string or null, got "
                f"{data['power_source']!r}"
            )
        if not isinstance(data.get("details", {}), Mapping):
            raise DeployInputError(
                f"record field 'details' must be an object, got {data['details']!r}"
            )
        identity = data.get("details", {}).get(IDENTITY_KEY)
        if identity is not None:  # checked here, so a report never meets a malformed one
            ModelIdentity.from_dict(identity)
        values = dict(data)
        values["details"] = dict(values.get("details", {}))
        if medians is not None:
            values["run_medians_ms"] = tuple(float(m) for m in medians)
        return cls(**values)


# Fields a record may leave out (older result files, runs that did not measure them).
_OPTIONAL_FIELDS = frozenset(
    (
        "accuracy",
        "accuracy_samples",
        "gpu_compute_ms",
        "energy_mj",
        "avg_power_w",
        "power_source",
        "runs",
        "run_medians_ms",
        "run_cv",
        "details",
    )
)
