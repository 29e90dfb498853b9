"""Benchmark harness: inputs, stopping rules, records, and interleaving of models."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from deploy.bench import BenchConfig, LatencyRecord, benchmark, benchmark_side_by_side, make_inputs
from deploy.errors import DeployConfigError, DeployInputError
from deploy.runners import Runner, TensorSpec, make_runner
from deploy.timed_runs import iterations_per_run

QUICK = {"warmup_iters": 2, "iterations": 15}


class LoggingRunner(Runner):
    """Fake backend that logs every call into a shared list, to observe the run order."""

    backend = "fake"

    def __init__(self, name: str, log: list[str], sleep_s: float = 0.0) -> None:
        self.name, self.log, self.sleep_s = name, log, sleep_s
        self.activations = 0

    def _activate(self) -> None:
        self.activations += 1

    @property
    def input_specs(self) -> list[TensorSpec]:
        return [TensorSpec(name="x", shape=(None, 2), dtype="float32")]

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.log.append(self.name)
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return {"y": feed["x"]}


# --- make_inputs ---------------------------------------------------------------------------


def test_make_inputs_sets_dynamic_batch_and_dtype() -> None:
    specs = [
        TensorSpec(name="image", shape=(None, 3, 4, 4), dtype="float32"),
        TensorSpec(name="ids", shape=(None, 5), dtype="int64"),
    ]
    feed = make_inputs(specs, batch=6, seed=1)
    assert feed["image"].shape == (6, 3, 4, 4) and feed["image"].dtype == np.float32
    assert feed["ids"].shape == (6, 5) and feed["ids"].dtype == np.int64
    again = make_inputs(specs, batch=6, seed=1)
    np.testing.assert_array_equal(feed["image"], again["image"])  # same seed, same data


def test_dynamic_spatial_dims_without_shapes_say_to_pass_shapes() -> None:
    spec = TensorSpec(name="input", shape=(None, 1, None, None), dtype="float32")
    with pytest.raises(DeployInputError, match=r"input 'input' has dynamic dims.*--shapes"):
        make_inputs([spec], batch=1)


def test_shapes_fill_dynamic_dims_and_batch_follows_batch_size() -> None:
    spec = TensorSpec(name="input", shape=(None, 1, None, None), dtype="float32")
    feed = make_inputs([spec], batch=4, shapes={"input": (1, 1, 16, 12)})
    assert feed["input"].shape == (4, 1, 16, 12)


def test_shapes_that_contradict_the_model_are_rejected() -> None:
    spec = TensorSpec(name="input", shape=(None, 1, 8, 8), dtype="float32")
    with pytest.raises(DeployInputError, match="axis 1 = 3, but the model fixes it to 1"):
        make_inputs([spec], batch=1, shapes={"input": (1, 3, 8, 8)})
    with pytest.raises(DeployInputError, match=r"names \['mask'\] are not inputs"):
        make_inputs([spec], batch=1, shapes={"mask": (1, 8)})


def test_fixed_batch_model_refuses_other_batch_sizes() -> None:
    spec = TensorSpec(name="input", shape=(1, 1, 8, 8), dtype="float32")
    assert make_inputs([spec], batch=1)["input"].shape == (1, 1, 8, 8)
    with pytest.raises(DeployInputError, match="fixed batch size of 1.*cannot run batch 2"):
        make_inputs([spec], batch=2)


# --- BenchConfig ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"batch_sizes": (0,)}, "batch_sizes"),
        ({"batch_sizes": ()}, "batch_sizes"),
        ({"batch_sizes": (1, 1)}, "batch_sizes"),
        ({"warmup_iters": -1}, "warmup_iters"),
        ({"iterations": 0}, "iterations"),
        ({"min_seconds": -1.0}, "min_seconds"),
        ({"max_seconds": 0.0}, "max_seconds"),
        ({"min_seconds": 5.0, "max_seconds": 1.0}, "max_seconds"),
        ({"shapes": {"input": (1, 0)}}, "shapes"),
        ({"repeats": 0}, "repeats"),
    ],
)
def test_bench_config_errors_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(DeployConfigError, match=field):
        BenchConfig(**kwargs)


def test_bench_config_defaults() -> None:
    config = BenchConfig()
    assert (config.batch_sizes, config.warmup_iters, config.iterations) == ((1,), 20, 100)
    assert config.min_seconds == 0.0 and config.max_seconds > 0


# --- benchmark on real onnxruntime ---------------------------------------------------------


def test_benchmark_records_are_consistent(classifier: Path) -> None:
    config = BenchConfig(batch_sizes=(1, 4), **QUICK)
    with make_runner("onnxruntime", classifier, threads=1) as runner:
        records = benchmark(runner, config, "dense")
    assert [(r.model, r.batch) for r in records] == [("dense", 1), ("dense", 4)]
    for r in records:
        assert (r.backend, r.device, r.precision, r.threads) == ("onnxruntime", "cpu", "fp32", 1)
        assert (r.warmup_iters, r.iterations) == (2, 15)
        assert 0 < r.min_ms <= r.p50_ms <= r.p90_ms <= r.p95_ms <= r.p99_ms <= r.max_ms
        assert r.min_ms <= r.mean_ms <= r.max_ms
        assert r.throughput_ips == pytest.approx(r.batch * 1000 / r.mean_ms)
        assert r.cv >= 0 and r.std_ms >= 0
        assert set(r.to_dict()) >= {"model", "mean_ms", "p99_ms", "throughput_ips"}
        assert LatencyRecord.from_dict(r.to_dict()) == r


def test_benchmark_opens_and_closes_a_runner_it_was_given_closed(classifier: Path) -> None:
    runner = make_runner("onnxruntime", classifier)
    records = benchmark(runner, BenchConfig(**QUICK), "dense")
    assert len(records) == 1 and not runner.is_active


def test_side_by_side_gives_one_record_per_model_and_batch(onnx_models: dict[str, Path]) -> None:
    runners = {name: make_runner("onnxruntime", onnx_models[name]) for name in ("dense", "shrunk")}
    records = benchmark_side_by_side(runners, BenchConfig(batch_sizes=(1, 2), **QUICK))
    assert [(r.model, r.batch) for r in records] == [
        ("dense", 1),
        ("shrunk", 1),
        ("dense", 2),
        ("shrunk", 2),
    ]
    assert all(r.iterations == 15 for r in records)


def test_side_by_side_interleaves_and_rotates_the_order() -> None:
    log: list[str] = []
    runners = {name: LoggingRunner(name, log) for name in ("a", "b", "c")}
    rounds = {"block_iters": 1, "lead_in_seconds": 0}  # one iteration per model per round
    benchmark_side_by_side(runners, BenchConfig(warmup_iters=2, iterations=3, **rounds))
    warmup, timed = log[:6], log[6:]
    assert warmup == ["a", "a", "b", "b", "c", "c"]
    # Each round runs every model once; the first model moves along, so none is always first.
    assert timed == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]


def test_already_open_runner_is_not_reopened() -> None:
    log: list[str] = []
    runner = LoggingRunner("a", log)
    with runner:
        benchmark(runner, BenchConfig(warmup_iters=0, iterations=2), "a")
        assert runner.is_active  # still usable by the caller
    assert runner.activations == 1


def test_min_seconds_keeps_timing_past_iterations() -> None:
    runner = LoggingRunner("slow", [], sleep_s=0.002)
    config = BenchConfig(warmup_iters=0, iterations=1, min_seconds=0.03)
    (record,) = benchmark(runner, config, "slow")
    assert record.iterations > 1
    assert record.mean_ms * record.iterations >= 30.0


def test_max_seconds_caps_a_run_that_asks_for_too_many_iterations() -> None:
    runner = LoggingRunner("slow", [], sleep_s=0.001)
    config = BenchConfig(warmup_iters=0, iterations=1_000_000, max_seconds=0.05)
    started = time.perf_counter()
    (record,) = benchmark(runner, config, "slow")
    assert time.perf_counter() - started < 2.0
    assert 1 <= record.iterations < 1_000_000


# --- repeats: run-to-run variation ---------------------------------------------------------


def test_repeats_split_the_timed_phase_into_runs_with_their_medians(classifier: Path) -> None:
    config = BenchConfig(batch_sizes=(1, 2), warmup_iters=1, iterations=10, repeats=3)
    with make_runner("onnxruntime", classifier, threads=1) as runner:
        records = benchmark(runner, config, "dense")
    for r in records:
        assert r.iterations == 10 and r.runs == 3  # 4 + 3 + 3 iterations
        assert len(r.run_medians_ms) == 3
        assert all(r.min_ms <= m <= r.max_ms for m in r.run_medians_ms)
        medians = np.array(r.run_medians_ms)
        assert r.run_cv == pytest.approx(medians.std(ddof=1) / medians.mean())
        assert LatencyRecord.from_dict(r.to_dict()) == r


def test_one_repeat_has_no_run_to_run_cv() -> None:
    runner = LoggingRunner("a", [])
    (record,) = benchmark(runner, BenchConfig(warmup_iters=0, iterations=4, repeats=1), "a")
    assert (record.runs, len(record.run_medians_ms), record.run_cv) == (1, 1, None)


def test_rotation_carries_across_runs_and_every_run_gets_an_iteration() -> None:
    log: list[str] = []
    runners = {name: LoggingRunner(name, log) for name in ("a", "b")}
    config = BenchConfig(warmup_iters=0, iterations=1, repeats=3, block_iters=1, lead_in_seconds=0)
    records = benchmark_side_by_side(runners, config)
    assert log == ["a", "b", "b", "a", "a", "b"]  # one round per run, order still rotating
    assert [r.iterations for r in records] == [3, 3]
    assert iterations_per_run(100, 3) == [34, 33, 33]
    assert iterations_per_run(2, 3) == [1, 1, 1]
