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
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from deploy.errors import DeployConfigError, DeployInputError
from deploy.machine.memory import available_memory_bytes, format_bytes, tensor_bytes
from deploy.machine.power import Energy, PowerSampler, energy_from_trace
from deploy.machine.state import MachineMonitor
from deploy.records import BenchConfig, LatencyRecord
from deploy.runners.base import Runner, TensorSpec
from deploy.stats import latency_stats, run_to_run_cv
from deploy.timed_runs import timed_runs, timing_method


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


__all__ = ["BenchConfig", "LatencyRecord", "benchmark", "benchmark_side_by_side", "make_inputs"]
