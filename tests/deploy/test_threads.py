"""CPU threads are always explicit and honoured; CPU lists parse; pinning says what is wrong."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deploy.bench import BenchConfig, benchmark
from deploy.errors import DeployConfigError
from deploy.machine.cpus import (
    default_threads,
    format_cpu_list,
    online_cpus,
    parse_cpu_list,
    usable_cpus,
)
from deploy.runners import OnnxRuntimeRunner


@pytest.mark.parametrize("asked", [None, 1])
def test_onnxruntime_session_gets_the_thread_count_the_record_shows(
    classifier: Path, asked: int | None
) -> None:
    expected = default_threads() if asked is None else asked
    with OnnxRuntimeRunner(classifier, threads=asked) as runner:
        options = runner.session.get_session_options()
        assert options.intra_op_num_threads == expected
        assert options.inter_op_num_threads == 1
        (record,) = benchmark(runner, BenchConfig(warmup_iters=0, iterations=2), "dense")
    assert record.threads == expected


def test_default_threads_follow_the_usable_cpus() -> None:
    assert default_threads() == len(usable_cpus()) >= 1
    if hasattr(os, "sched_getaffinity"):
        assert set(usable_cpus()) == os.sched_getaffinity(0)


def test_torch_runner_on_cpu_sets_and_restores_an_explicit_thread_count() -> None:
    torch = pytest.importorskip("torch")
    from deploy.runners.torch_runner import TorchRunner

    before = torch.get_num_threads()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    runner = TorchRunner(model, input_shape=(None, 1, 2, 2), device="cpu")
    with runner:
        assert torch.get_num_threads() == default_threads() == runner.threads
        (record,) = benchmark(runner, BenchConfig(warmup_iters=0, iterations=2), "linear")
    assert record.threads == default_threads()
    assert torch.get_num_threads() == before


def test_cpu_lists_parse_and_format_like_taskset() -> None:
    assert parse_cpu_list("0-3,6") == (0, 1, 2, 3, 6)
    assert parse_cpu_list(" 5, 1-2 ,2") == (1, 2, 5)
    assert format_cpu_list([6, 0, 1, 2, 3]) == "0-3,6"
    assert format_cpu_list([4]) == "4" and format_cpu_list([1, 3, 5]) == "1,3,5"
    for text, message in (("3-1", "runs backwards"), ("0-", "expected CPU"), ("", "expected")):
        with pytest.raises(DeployConfigError, match=message):
            parse_cpu_list(text)


def test_online_cpus_come_from_sysfs_or_the_cpu_count(tmp_path: Path) -> None:
    (tmp_path / "devices/system/cpu").mkdir(parents=True)
    (tmp_path / "devices/system/cpu/online").write_text("0-5,8\n")
    assert online_cpus(tmp_path) == (0, 1, 2, 3, 4, 5, 8)
    assert online_cpus(tmp_path / "absent") == tuple(range(os.cpu_count() or 1))
