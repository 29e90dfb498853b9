"""Fair side-by-side timing: models take turns in blocks, and every record says how it was timed.

Whether the blocks give each model the latency it has alone is a measurement, shown by
benchmarks/bench_fairness.py; these tests check the schedule and what the records carry.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from deploy.bench import BenchConfig, LatencyRecord, benchmark, benchmark_side_by_side
from deploy.errors import DeployConfigError
from deploy.results.files import read_results, write_results
from deploy.runners import OnnxRuntimeRunner, Runner, TensorSpec
from deploy.runners.onnxruntime import SPIN_DURATION_US


class SlowRunner(Runner):
    """Fake backend: every call sleeps `sleep_s` and is logged, to observe the schedule."""

    backend = "fake"

    def __init__(self, name: str, log: list[str], sleep_s: float = 0.002) -> None:
        self.name, self.log, self.sleep_s = name, log, sleep_s

    @property
    def input_specs(self) -> list[TensorSpec]:
        return [TensorSpec(name="x", shape=(None, 2), dtype="float32")]

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.log.append(self.name)
        time.sleep(self.sleep_s)
        return {"y": feed["x"]}


def _runners(names: str, log: list[str]) -> dict[str, Runner]:
    return {name: SlowRunner(name, log) for name in names}


def test_models_take_turns_in_blocks_in_rotated_order_after_an_untimed_lead_in() -> None:
    log: list[str] = []
    # A lead-in shorter than one call is one untimed call; blocks of 2 timed calls.
    config = BenchConfig(
        warmup_iters=0, iterations=4, repeats=1, block_iters=2, lead_in_seconds=0.0005
    )
    records = benchmark_side_by_side(_runners("abc", log), config)
    turns = ["".join(log[i : i + 3]) for i in range(0, len(log), 3)]
    assert turns == ["aaa", "bbb", "ccc", "bbb", "ccc", "aaa"]
    assert [r.iterations for r in records] == [4, 4, 4]  # lead-in calls are not timed


def test_the_last_block_is_cut_short_so_a_run_times_what_was_asked() -> None:
    log: list[str] = []
    config = BenchConfig(warmup_iters=0, iterations=5, repeats=1, block_iters=2, lead_in_seconds=0)
    records = benchmark_side_by_side(_runners("ab", log), config)
    assert log == ["a", "a", "b", "b", "b", "b", "a", "a", "a", "b"]
    assert [r.iterations for r in records] == [5, 5]


def test_a_lead_in_runs_untimed_calls_for_its_duration() -> None:
    log: list[str] = []
    config = BenchConfig(
        warmup_iters=0, iterations=2, repeats=1, block_iters=2, lead_in_seconds=0.02
    )
    benchmark_side_by_side(_runners("ab", log), config)
    # 2 ms calls for 20 ms: about 10 untimed calls before each model's 2 timed ones.
    assert log.count("a") >= 2 + 5 and log.count("b") >= 2 + 5
    assert log.index("b") >= 7  # a's whole turn, lead-in included, comes first


def test_a_model_alone_has_no_lead_in() -> None:
    log: list[str] = []
    config = BenchConfig(warmup_iters=0, iterations=6, repeats=2, lead_in_seconds=0.05)
    (record,) = benchmark(SlowRunner("a", log), config, "a")
    assert len(log) == 6 and record.iterations == 6
    assert record.details["timing"] == {
        "method": "alone",
        "models": 1,
        "block_iters": 20,
        "lead_in_seconds": 0.0,
        "repeats": 2,
    }


@pytest.mark.parametrize(
    ("block_iters", "lead_in_seconds", "method"),
    [(20, 0.005, "blocks"), (1, 0.0, "rounds"), (1, 0.001, "blocks")],
)
def test_records_say_how_they_were_timed_and_keep_it_in_the_result_file(
    block_iters: int, lead_in_seconds: float, method: str, tmp_path: Path
) -> None:
    config = BenchConfig(
        warmup_iters=0,
        iterations=3,
        repeats=3,
        block_iters=block_iters,
        lead_in_seconds=lead_in_seconds,
    )
    records = benchmark_side_by_side(_runners("ab", []), config)
    for record in records:
        assert record.details["timing"] == {
            "method": method,
            "models": 2,
            "block_iters": block_iters,
            "lead_in_seconds": lead_in_seconds,
            "repeats": 3,
        }
        assert record.runs == 3 and len(record.run_medians_ms) == 3  # run-to-run kept
    path = write_results(tmp_path / "results.json", records, {"fingerprint_id": "test"})
    assert [r.details["timing"]["method"] for r in read_results(path).records] == [method] * 2


def test_older_result_files_without_timing_still_read(tmp_path: Path) -> None:
    (record,) = benchmark(SlowRunner("a", []), BenchConfig(warmup_iters=0, iterations=2), "a")
    old = record.to_dict()
    del old["details"]
    path = write_results(tmp_path / "r.json", [record], {})
    text = path.read_text().replace('"schema": "deploy.results/3"', '"schema": "deploy.results/2"')
    path.write_text(text)
    assert read_results(path).records[0].details["timing"]["method"] == "alone"
    assert LatencyRecord.from_dict(old).details == {}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"block_iters": 0}, "block_iters"),
        ({"block_iters": 2.5}, "block_iters"),
        ({"lead_in_seconds": -1}, "lead_in_seconds"),
        ({"lead_in_seconds": float("nan")}, "lead_in_seconds"),
    ],
)
def test_block_settings_are_checked(kwargs: dict, field: str) -> None:
    with pytest.raises(DeployConfigError, match=field):
        BenchConfig(**kwargs)


def test_onnxruntime_bounds_idle_spinning_and_records_it(classifier: Path) -> None:
    with OnnxRuntimeRunner(classifier, threads=1) as runner:
        options = runner.session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.spin_duration_us") == str(
            SPIN_DURATION_US
        )
        (record,) = benchmark(runner, BenchConfig(warmup_iters=1, iterations=3), "dense")
    assert record.details["intra_op_spin_us"] == SPIN_DURATION_US
    with OnnxRuntimeRunner(classifier, threads=1, spin_duration_us=0) as runner:
        options = runner.session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert runner.record_details() == {"intra_op_spin_us": 0}


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1000"])
def test_onnxruntime_spin_duration_must_be_a_whole_number(bad: object, classifier: Path) -> None:
    with pytest.raises(DeployConfigError, match="spin_duration_us"):
        OnnxRuntimeRunner(classifier, spin_duration_us=bad)  # type: ignore[arg-type]
