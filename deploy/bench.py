"""Benchmark harness: time runners on random inputs and return one record per model x batch.

`benchmark_side_by_side` is what the pipeline uses to compare variants (dense, ticket,
shrunk): the models take turns in blocks of iterations, the order rotated each round, so
thermal drift, frequency scaling and background load hit every variant equally instead of
whichever happened to run last, while each model is timed as it runs on its own (see
`deploy.timed_runs` for why blocks and not single iterations). The timed phase is split into
`repeats` runs, so every record also says how far its median moves from run to run, and
`details["timing"]` says how the record was timed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from deploy.errors import DeployConfigError, DeployInputError
from deploy.machine.memory import available_memory_bytes, format_bytes, tensor_bytes
from deploy.runners.base import Runner, TensorSpec
from deploy.stats import latency_stats, run_to_run_cv
from deploy.timed_runs import timed_runs, timing_method

if TYPE_CHECKING:
    from deploy.machine.power import Energy, PowerSampler
    from deploy.machine.state import MachineMonitor


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """How to time a model. Timing stops once both `iterations` and `min_seconds` are met.

    The timed phase is `repeats` runs, each with its share of `iterations`, `min_seconds` and
    `max_seconds` (at least one iteration each); medians and percentiles are over all of them.
    """

    batch_sizes: tuple[int, ...] = (1,)
    warmup_iters: int = 20  # untimed runs per model and batch: allocator, caches, clocks
    iterations: int = 100  # timed runs per model and batch, at least
    min_seconds: float = 0.0  # ...and keep timing until each model has this much timed time
    max_seconds: float = 300.0  # safety cap on the timed phase of one batch size (wall clock)
    seed: int = 0  # for the random inputs, so reruns feed the same data
    # Independent timed runs per model and batch; their medians' spread is the run-to-run CV.
    # Three is the fewest that shows a drifting median without tripling short benchmarks.
    repeats: int = 3
    # Side by side, models take turns in blocks of this many timed iterations, each turn
    # after untimed iterations for `lead_in_seconds` (one at least) so the previous model's
    # threads go idle (1 and 0: one iteration per model per round, the method before blocks,
    # which timed models slower than they run alone). See deploy/timed_runs.py.
    block_iters: int = 20
    lead_in_seconds: float = 0.005
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # name -> full shape
    # With a power sampler, each model then runs alone for this long while power is sampled
    # (interleaving would mix the models' power draw); energy per inference comes from it.
    power_seconds: float = 2.0

    def __post_init__(self) -> None:
        batches = tuple(self.batch_sizes)
        if not batches or any(not _is_int(b) or b < 1 for b in batches):
            raise DeployConfigError(
                f"batch_sizes must be a non-empty list of integers >= 1, got {self.batch_sizes!r}"
            )
        if len(set(batches)) != len(batches):
            raise DeployConfigError(f"batch_sizes has duplicates: {batches}")
        object.__setattr__(self, "batch_sizes", batches)
        if not _is_int(self.warmup_iters) or self.warmup_iters < 0:
            raise DeployConfigError(
                f"warmup_iters must be an integer >= 0, got {self.warmup_iters!r}"
            )
        if not _is_int(self.iterations) or self.iterations < 1:
            raise DeployConfigError(f"iterations must be an integer >= 1, got {self.iterations!r}")
        if not _is_number(self.min_seconds) or self.min_seconds < 0:
            raise DeployConfigError(f"min_seconds must be a number >= 0, got {self.min_seconds!r}")
        if not _is_number(self.max_seconds) or self.max_seconds <= 0:
            raise DeployConfigError(f"max_seconds must be a number > 0, got {self.max_seconds!r}")
        if self.max_seconds < self.min_seconds:
            raise DeployConfigError(
                f"max_seconds ({self.max_seconds}) must not be below min_seconds "
                f"({self.min_seconds})"
            )
        if not _is_int(self.seed):
            raise DeployConfigError(f"seed must be an integer, got {self.seed!r}")
        if not _is_int(self.repeats) or self.repeats < 1:
            raise DeployConfigError(f"repeats must be an integer >= 1, got {self.repeats!r}")
        if not _is_int(self.block_iters) or self.block_iters < 1:
            raise DeployConfigError(
                f"block_iters must be an integer >= 1, got {self.block_iters!r}"
            )
        if not _is_number(self.lead_in_seconds) or self.lead_in_seconds < 0:
            raise DeployConfigError(
                f"lead_in_seconds must be a number >= 0, got {self.lead_in_seconds!r}"
            )
        shapes = {}
        for name, shape in dict(self.shapes).items():
            dims = tuple(shape)
            if not dims or any(not _is_int(d) or d < 1 for d in dims):
                raise DeployConfigError(
                    f"shapes['{name}'] must be a tuple of integers >= 1, got {shape!r}"
                )
            shapes[str(name)] = dims
        object.__setattr__(self, "shapes", shapes)
        if not _is_number(self.power_seconds) or self.power_seconds <= 0:
            raise DeployConfigError(
                f"power_seconds must be a number > 0, got {self.power_seconds!r}"
            )


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
            if not _is_int(data[name]):
                raise DeployInputError(
                    f"record field '{name}' must be an integer, got {data[name]!r}"
                )
        if data["threads"] is not None and not _is_int(data["threads"]):
            raise DeployInputError(
                f"record field 'threads' must be an integer or null, got {data['threads']!r}"
            )
        for name in names:
            is_measurement = name.endswith("_ms") or name in ("cv", "throughput_ips")
            is_measurement = is_measurement and name in required
            if is_measurement and not _is_number(data[name]):
                raise DeployInputError(
                    f"record field '{name}' must be a number, got {data[name]!r}"
                )
        for name in ("accuracy", "gpu_compute_ms", "energy_mj", "avg_power_w", "run_cv"):
            if data.get(name) is not None and not _is_number(data[name]):
                raise DeployInputError(
                    f"record field '{name}' must be a number or null, got {data[name]!r}"
                )
        for name in ("accuracy_samples", "runs"):
            if data.get(name) is not None and not _is_int(data[name]):
                raise DeployInputError(
                    f"record field '{name}' must be an integer or null, got {data[name]!r}"
                )
        medians = data.get("run_medians_ms")
        if medians is not None and (
            not isinstance(medians, Sequence)
            or isinstance(medians, str)
            or not all(_is_number(m) for m in medians)
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


def make_inputs(
    input_specs: Sequence[TensorSpec],
    batch: int,
    shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Random inputs of the right shape and dtype for a batch of `batch`.

    A dynamic axis 0 becomes `batch`. Other dynamic axes come from `shapes` (the full shape
    per input name; its axis 0 is replaced by `batch` when the model's batch axis is dynamic).
    """
    shapes = shapes or {}
    unknown = sorted(set(shapes) - {spec.name for spec in input_specs})
    if unknown:
        raise DeployInputError(
            f"--shapes names {unknown} are not inputs of the model; its inputs are "
            f"{[spec.name for spec in input_specs]}"
        )
    concrete = {spec.name: _concrete_shape(spec, batch, shapes) for spec in input_specs}
    _check_inputs_fit_in_memory(input_specs, concrete, batch)
    rng = np.random.default_rng(seed)
    return {spec.name: _random_array(spec, concrete[spec.name], rng) for spec in input_specs}


def _check_inputs_fit_in_memory(
    specs: Sequence[TensorSpec], shapes: Mapping[str, tuple[int, ...]], batch: int
) -> None:
    """Refuse a batch whose random inputs cannot fit in the memory available now, before numpy
    asks for it: Linux would overcommit and OOM-kill the process half way, with no message.
    Checked per model, so with several models the earlier ones' inputs are already counted
    (they are in use, so MemAvailable has dropped by them)."""
    sizes = {spec.name: tensor_bytes(shapes[spec.name], _itemsize(spec)) for spec in specs}
    total = sum(sizes.values())
    # Each input is drawn as float64 (8 bytes per value) before the cast: the peak is higher.
    peak = total + max((tensor_bytes(shape, 8) for shape in shapes.values()), default=0)
    available = available_memory_bytes()
    if available is None or peak <= available:
        return
    name = max(sizes, key=lambda key: sizes[key])
    spec = next(spec for spec in specs if spec.name == name)
    raise DeployConfigError(
        f"batch {batch} does not fit in memory: the random inputs alone need "
        f"{format_bytes(total)} (input '{name}' is {'x'.join(map(str, shapes[name]))} "
        f"{spec.dtype}), {format_bytes(peak)} while they are made, and "
        f"{format_bytes(available)} is available; lower --batch"
    )


def _itemsize(spec: TensorSpec) -> int:
    try:
        return np.dtype(spec.dtype).itemsize
    except TypeError:  # bfloat16 and other types numpy lacks: _random_array refuses them
        return 4


def _concrete_shape(
    spec: TensorSpec, batch: int, shapes: Mapping[str, Sequence[int]]
) -> tuple[int, ...]:
    if spec.name in shapes:
        given = tuple(shapes[spec.name])
        if len(given) != len(spec.shape):
            raise DeployInputError(
                f"--shapes gives input '{spec.name}' {len(given)} dims {given}, the model "
                f"expects {len(spec.shape)} {_fmt(spec.shape)}"
            )
        if spec.shape[0] is not None and given[0] != spec.shape[0]:
            raise DeployInputError(
                f"--shapes gives input '{spec.name}' a batch of {given[0]}, but the model fixes "
                f"its batch to {spec.shape[0]} (shape {_fmt(spec.shape)}); export it with a "
                "dynamic batch axis to run other batches"
            )
        for axis, (got, want) in enumerate(zip(given, spec.shape, strict=True)):
            if axis > 0 and want is not None and got != want:  # axis 0 is the batch
                raise DeployInputError(
                    f"--shapes gives input '{spec.name}' axis {axis} = {got}, but the model "
                    f"fixes it to {want} (shape {_fmt(spec.shape)})"
                )
        template: tuple[int | None, ...] = given
    else:
        template = spec.shape
    shape = list(template)
    if shape:
        if spec.shape[0] is not None and spec.shape[0] != batch:
            raise DeployInputError(
                f"input '{spec.name}' has a fixed batch size of {spec.shape[0]} "
                f"(shape {_fmt(spec.shape)}), cannot run batch {batch}; export the model with a "
                f"dynamic batch axis or benchmark batch {spec.shape[0]} only"
            )
        shape[0] = batch
    dynamic = [axis for axis, dim in enumerate(shape) if dim is None]
    if dynamic:
        raise DeployInputError(
            f"input '{spec.name}' has dynamic dims at axes {dynamic} (shape {_fmt(spec.shape)}); "
            f"pass their sizes with --shapes {spec.name}:"
            + "x".join(str(batch) if i == 0 else "D" for i in range(len(shape)))
            + " (e.g. 1x3x224x224)"
        )
    return tuple(int(d) for d in shape)


def _random_array(spec: TensorSpec, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    try:
        dtype = np.dtype(spec.dtype)
    except TypeError as exc:
        raise DeployInputError(
            f"input '{spec.name}' has type {spec.dtype}, which the benchmark cannot generate"
        ) from exc
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind in "iu":
        return rng.integers(0, 10, size=shape).astype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    raise DeployInputError(
        f"input '{spec.name}' has type {spec.dtype}, which the benchmark cannot generate"
    )


def benchmark(
    runner: Runner,
    config: BenchConfig,
    model_name: str,
    *,
    power: PowerSampler | None = None,
    monitor: MachineMonitor | None = None,
) -> list[LatencyRecord]:
    """Time one runner at every batch size in `config`; one record per batch size."""
    return benchmark_side_by_side({model_name: runner}, config, power=power, monitor=monitor)


def benchmark_side_by_side(
    runners: Mapping[str, Runner],
    config: BenchConfig,
    *,
    power: PowerSampler | None = None,
    monitor: MachineMonitor | None = None,
) -> list[LatencyRecord]:
    """Time several models interleaved; one record per model x batch, models in given order.

    Runners not yet entered are entered here and closed afterwards; runners the caller already
    entered are used as they are. With `power` (see `deploy.machine.power.open_power_sampler`), each
    model also gets an energy phase of `config.power_seconds` on its own, after its latency is
    timed, and its records carry energy per inference and mean power. With `monitor` (a
    `deploy.machine.state.MachineMonitor`), the machine is sampled around and between the
    timed runs; `deploy.machine.stability.timing_warnings` reads the samples.
    """
    if not runners:
        raise DeployConfigError("benchmark: no models to time")
    names = list(runners)
    records: list[LatencyRecord] = []
    with contextlib.ExitStack() as stack:
        for runner in runners.values():
            if not runner.is_active:
                stack.enter_context(runner)
        for batch in config.batch_sizes:
            feeds = {
                name: make_inputs(runners[name].input_specs, batch, config.shapes, config.seed)
                for name in names
            }
            for name in names:
                for _ in range(config.warmup_iters):
                    runners[name].infer(feeds[name])
                runners[name].synchronize()
                runners[name].take_gpu_times_ms()  # warm-up times are not reported
            timings = timed_runs(runners, feeds, config, monitor)
            gpu_ms = {name: runners[name].take_gpu_times_ms() for name in names}
            energy = {
                name: _energy_phase(runners[name], feeds[name], config, power)
                for name in names
                if power is not None
            }
            timing = timing_method(config, len(names))
            for name in names:
                record = _record(name, runners[name], batch, config, timings[name], timing)
                if gpu_ms[name]:
                    record = dataclasses.replace(
                        record, gpu_compute_ms=float(np.median(gpu_ms[name]))
                    )
                if name in energy:
                    record = dataclasses.replace(
                        record,
                        energy_mj=energy[name].energy_mj_per_inference,
                        avg_power_w=energy[name].avg_power_w,
                        power_source=energy[name].source,
                    )
                records.append(record)
    return records


def _energy_phase(
    runner: Runner, feed: dict[str, np.ndarray], config: BenchConfig, power: PowerSampler
) -> Energy:
    """Run one model alone for `power_seconds` while `power` samples; energy per inference."""
    from deploy.machine.power import energy_from_trace  # numpy-only, but only needed with a sampler

    inferences = 0
    budget_ns = int(config.power_seconds * 1e9)
    power.start()
    try:
        started = time.perf_counter_ns()
        while time.perf_counter_ns() - started < budget_ns:
            runner.infer(feed)
            inferences += 1
        runner.synchronize()
    finally:
        trace = power.stop()
    runner.take_gpu_times_ms()
    return energy_from_trace(trace, inferences)


def _record(
    name: str,
    runner: Runner,
    batch: int,
    config: BenchConfig,
    runs: list[list[int]],
    timing: dict[str, Any],
) -> LatencyRecord:
    stats = latency_stats([t / 1e9 for run in runs for t in run], batch)
    medians = tuple(float(np.median(run)) / 1e6 for run in runs)
    return LatencyRecord(
        model=name,
        backend=runner.backend,
        device=runner.device,
        precision=runner.precision,
        batch=batch,
        threads=runner.threads,
        warmup_iters=config.warmup_iters,
        **dataclasses.asdict(stats),  # every statistic under the same name
        runs=len(runs),
        run_medians_ms=medians,
        run_cv=run_to_run_cv(medians),
        details={**runner.record_details(), "timing": timing},
    )


def _fmt(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return _is_int(value) or (isinstance(value, (float, np.floating)) and math.isfinite(value))
