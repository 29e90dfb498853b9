"""Hostile and wrong inputs to `deploy`: result files, command lines, batches beyond memory.

Whatever a user, a script or a damaged disk hands `deploy`, the answer is a result or the
project's own error as one line with exit code 1 or 2: never a traceback, a hang, an
allocation the machine cannot hold, or a good result file or report overwritten by a run
that failed. Hypothesis budgets are small so the file runs in seconds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deploy.cli
import deploy.cli_parser
from deploy.errors import DeployError, DeployInputError, MeasurementError
from deploy.results.files import ResultFile, read_results
from deploy.runners import OnnxRuntimeRunner
from tests.deploy.hostile import armed_pickle, rgb_classifier, run_deploy

FAST = ["--warmup", "0", "--iterations", "2", "--threads", "1"]
PROPERTY = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)


@pytest.fixture(scope="module")
def good_results(classifier_module: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real result file: two records of the tiny classifier, named dense."""
    folder = tmp_path_factory.mktemp("good_results")
    argv = ["bench", str(classifier_module), *FAST, "--batch", "1,2", "--name", "dense"]
    outcome = run_deploy([*argv, "--output", "dense.json"], folder)
    assert outcome.code == 0, outcome.err
    return folder / "dense.json"


@pytest.fixture(scope="module")
def classifier_module(onnx_models: dict[str, Path]) -> Path:
    return onnx_models["dense"]


# --- result files ----------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=10)
    | st.sampled_from([10**400, -1, 0, float("nan"), float("inf"), 1e308, "\ud800", "é\n"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def _mutations(document: dict) -> st.SearchStrategy[bytes]:
    """The real document with one value replaced or deleted, re-encoded (lone surrogates kept)."""
    record_keys = sorted({*document["records"][0], "accuracy", "extra_field"})
    places = [(key,) for key in document] + [("records", 0, key) for key in record_keys]
    places += [("fingerprint", key) for key in ("libraries", "threads", "gpu_name", "cpu_model")]

    def apply(place: tuple, value: object, delete: bool) -> bytes:
        copy = json.loads(json.dumps(document))
        target = copy
        for step in place[:-1]:
            target = target[step]
        if delete:
            target.pop(place[-1], None)
        else:
            target[place[-1]] = value
        return json.dumps(copy).encode("utf-8", "surrogatepass")

    return st.builds(apply, st.sampled_from(places), JSON_VALUES, st.booleans())


def _damaged_bytes(data: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.integers(0, len(data)).map(lambda n: data[:n]),  # truncated
        st.tuples(st.integers(0, len(data) - 1), st.binary(min_size=1, max_size=3)).map(
            lambda t: data[: t[0]] + t[1] + data[t[0] + len(t[1]) :]  # overwritten bytes
        ),
        st.binary(max_size=200),  # not UTF-8, not JSON
        st.integers(1, 50_000).map(lambda n: b"[" * n),  # nested deeper than the parser goes
        st.integers(4300, 5000).map(lambda n: b'{"schema": ' + b"7" * n + b"}"),  # too long
        JSON_VALUES.map(lambda v: json.dumps(v).encode("utf-8", "surrogatepass")),
    )


def hostile_result_files(good: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(_mutations(json.loads(good)), _damaged_bytes(good))


def test_read_results_returns_a_result_file_or_refuses(good_results: Path) -> None:
    @PROPERTY
    @given(data=hostile_result_files(good_results.read_bytes()))
    def check(data: bytes) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "r.json"
            path.write_bytes(data)
            try:
                result = read_results(path)
            except DeployInputError as exc:
                assert str(path) in str(exc)
            else:
                assert isinstance(result, ResultFile)
                assert all(r.batch >= 1 and r.p50_ms >= 0 for r in result.records)

    check()


def test_report_on_hostile_files_is_one_line_and_keeps_the_last_report(
    good_results: Path,
) -> None:
    @PROPERTY
    @given(data=hostile_result_files(good_results.read_bytes()), as_directory=st.booleans())
    def check(data: bytes, as_directory: bool) -> None:
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            (root / "in").mkdir()
            (root / "in" / "r.json").write_bytes(data)
            report = root / "report"
            report.mkdir()
            (report / "report.md").write_text("the report of a good run")
            source = root / "in" if as_directory else root / "in" / "r.json"
            outcome = run_deploy(["report", str(source), "--out", str(report)], root)
            assert outcome.code in (0, 1, 2)
            if outcome.code:
                outcome.error_line()
                assert (report / "report.md").read_text() == "the report of a good run"

    check()


# --- arbitrary command lines -------------------------------------------------------------------

JUNK = ["-1", "abc", "", "nan", "inf", "-inf", "1e400", "x" * 300, "٣", "../no/such/file"]
FILES = ["model.onnx", "absent.onnx", "garbage.onnx", "folder", "model.pt", "dense.json"]
VALUES = {  # flag -> values; others get JUNK (never a valid small number: --cpus 0 would pin us)
    "--backend": ["onnxruntime", "tensorrt", "trtexec", "torch", "tflite", "ONNXRUNTIME"],
    "--precision": ["fp32", "fp16", "int8", "bf16", "fp8", ""],
    "--batch": ["1", "2", "1,2", "0", "-1", "1,,2", "abc", "", "1000000000", "9" * 25, "1, 2"],
    "--shapes": ["input:1x1x8x8", "input:2x1x8x8", "input:1x3x8x8", "input:1x1x8", "nope:1x1",
                 "input:0x1x8x8", "input=1x1", ":", "input:", "input:1x1x9999999x9999999",
                 "input:1x1x8x8,input:1x1x8x8"],  # fmt: skip
    "--threads": ["1", "2", "0", "-3", "abc", "100000"],
    "--warmup": ["0", "1", "-1", "abc", "1.5"],
    "--iterations": ["1", "3", "0", "-1", "abc", ""],
    "--repeats": ["1", "2", "0", "-1", "abc"],
    "--seed": ["0", "7", "-1", "abc", "9" * 30],
    "--min-seconds": ["0", "0.01", "-1", "abc", "nan", "inf"],
    "--max-seconds": ["1", "0.5", "0", "-1", "abc", "nan", "inf", "1e400"],
    "--power": ["auto", "none", "nvml", "tegrastats", "bogus", ""],
    "--power-seconds": ["0.1", "0", "-1", "abc", "nan", "inf"],
    "--device": ["cpu", "cuda", "auto", "tpu", ""],
    "--expect-top1": ["0.5", "1", "2", "-0.1", "abc"],
    "--top1-tolerance": ["0.01", "1", "-1", "abc"],
    "--baseline": ["dense", "nope", ""],
    "--name": ["tiny", "", "a/b", "☃"],
    **{flag: [*FILES, "eval.npz", "eval_rgb.npz", "results/new.json"] for flag in (
        "--data", "--output", "--out", "--engine-dir", "--timing-cache", "--trtexec")},
}  # fmt: skip


def _parser_options() -> dict[str, list[argparse.Action]]:
    """Every subcommand and its optional flags, read from the real parser."""
    parser = deploy.cli_parser.build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {
        name: [a for a in sub._actions if a.option_strings and a.dest != "help"]
        for name, sub in commands.choices.items()
    }


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    options = _parser_options()
    command = draw(st.sampled_from(["bench", "bench", *sorted(options)]))  # bench does most
    argv = [command]
    if command in ("bench", "build"):
        argv.append(draw(st.sampled_from(["model.onnx", "model.onnx", *FILES])))
        argv += ["--warmup", "0", "--iterations", "2", "--max-seconds", "2"] * (command == "bench")
    elif command in ("report", "compare"):
        count = 2 if command == "compare" else draw(st.integers(1, 2))
        argv += draw(st.lists(st.sampled_from(FILES), min_size=count, max_size=count))
    for action in draw(st.lists(st.sampled_from(options[command] or [None]), max_size=4)):
        if action is None:
            continue
        flag = action.option_strings[-1]
        argv.append(flag)
        if action.nargs != 0:  # store_true flags take no value
            argv.append(draw(st.sampled_from(VALUES.get(flag, JUNK))))
    if draw(st.integers(0, 5)) == 0:  # a stray word or flag where argparse expects none
        argv.insert(draw(st.integers(0, len(argv))), draw(st.sampled_from(["--bogus", "x"])))
    return argv


def test_any_command_line_gives_a_result_or_one_error_line(
    onnx_models: dict[str, Path], good_results: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    @settings(PROPERTY, max_examples=80)
    @given(argv=command_lines())
    def check(argv: list[str]) -> None:
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            shutil.copy(onnx_models["dense"], root / "model.onnx")
            shutil.copy(good_results, root / "dense.json")
            (root / "garbage.onnx").write_bytes(b"\x08\x07garbage")
            (root / "folder").mkdir()
            armed_pickle(root / "model.pt", root / "MARKER")
            images = np.zeros((3, 1, 8, 8), np.float32)
            np.savez(root / "eval.npz", images=images, labels=np.arange(3))
            np.savez(root / "eval_rgb.npz", images=images.repeat(3, axis=1), labels=np.arange(3))
            outcome = run_deploy(argv, root)
            assert outcome.code in (0, 1, 2), (argv, outcome)
            if outcome.code:
                outcome.error_line()
            read_results(root / "dense.json")  # a failed or odd run never destroys results
            assert not (root / "MARKER").exists()

    check()


# --- batches beyond memory, and allocations that fail while timing ------------------------------


@pytest.fixture(scope="module")
def rgb224(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rgb_classifier(tmp_path_factory.mktemp("rgb") / "rgb224.onnx")


def test_a_batch_beyond_memory_is_refused_before_anything_is_allocated(
    rgb224: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_allocation(*args: object, **kwargs: object) -> None:
        raise AssertionError("the random inputs were being allocated")

    monkeypatch.setattr("deploy.bench._random_array", no_allocation)
    outcome = run_deploy(["bench", str(rgb224), *FAST, "--batch", "1000000"], tmp_path)
    line = outcome.error_line()
    assert outcome.code == 2
    assert "batch 1000000 does not fit in memory" in line
    assert "560.8 GiB" in line and "(input 'input' is 1000000x3x224x224 float32)" in line
    assert " is available; lower --batch" in line
    assert not (tmp_path / "results").exists()


def test_the_memory_check_uses_what_is_available_and_skips_when_unknown(
    rgb224: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("deploy.bench.available_memory_bytes", lambda: 8 << 20)  # 8 MiB
    line = run_deploy(["bench", str(rgb224), *FAST, "--batch", "8"], tmp_path).error_line()
    assert "batch 8 does not fit in memory" in line and "8.0 MiB is available" in line
    monkeypatch.setattr("deploy.bench.available_memory_bytes", lambda: None)
    assert run_deploy(["bench", str(rgb224), *FAST, "--batch", "8"], tmp_path).code == 0


ALLOCATION_FAILED = "[ONNXRuntimeError] : 6 : Failed to allocate memory for buffer of size 9"
RUN_FAILED = "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Conv"


@pytest.mark.parametrize(
    ("make_error", "kind", "message"),
    [
        (lambda e: e.RuntimeException(ALLOCATION_FAILED), MeasurementError, "ran out of memory"),
        (lambda e: MemoryError(), MeasurementError, "onnxruntime ran out of memory on inputs"),
        (lambda e: e.Fail(RUN_FAILED), DeployError, "onnxruntime failed to run the model"),
    ],
)
def test_a_failure_while_timing_keeps_the_earlier_results(
    make_error,  # noqa: ANN001
    kind: type,
    message: str,
    classifier_module: Path,
    good_results: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    original = OnnxRuntimeRunner._infer

    def fail_on_batch_4(self: OnnxRuntimeRunner, feed: dict) -> dict:
        if feed["input"].shape[0] == 4:
            raise make_error(ort_errors)
        return original(self, feed)

    monkeypatch.setattr(OnnxRuntimeRunner, "_infer", fail_on_batch_4)
    output = tmp_path / "earlier.json"
    shutil.copy(good_results, output)
    before = output.read_bytes()
    argv = ["bench", str(classifier_module), *FAST, "--batch", "1,4", "--output", str(output)]
    outcome = run_deploy(argv, tmp_path)
    assert outcome.code == 1 and message in outcome.error_line()
    assert output.read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))
    with OnnxRuntimeRunner(classifier_module) as runner, pytest.raises(kind, match=message):
        runner.infer({"input": np.zeros((4, 1, 8, 8), np.float32)})


# --- shapes, dtypes and threads the model cannot take --------------------------------------------


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        ("input:1x3x8x8", "axis 1 = 3, but the model fixes it to 1"),
        ("input:1x1x16x16", "axis 2 = 16, but the model fixes it to 8"),
        ("input:1x1x8", "gives input 'input' 3 dims (1, 1, 8), the model expects 4"),
        ("image:1x1x8x8", "--shapes names ['image'] are not inputs of the model"),
    ],
)
def test_shapes_that_disagree_with_the_model_are_named(
    shapes: str, message: str, classifier_module: Path, tmp_path: Path
) -> None:
    outcome = run_deploy(["bench", str(classifier_module), *FAST, "--shapes", shapes], tmp_path)
    assert outcome.code == 1 and message in outcome.error_line()


def test_a_feed_of_the_wrong_dtype_names_both(classifier_module: Path) -> None:
    with OnnxRuntimeRunner(classifier_module) as runner:
        for dtype in ("float64", "int64", "uint8"):
            with pytest.raises(DeployInputError, match=f"is {dtype}, the model expects float32"):
                runner.infer({"input": np.zeros((1, 1, 8, 8), dtype)})


def test_thousands_of_threads_are_refused_not_spun_up(
    classifier_module: Path, tmp_path: Path
) -> None:
    outcome = run_deploy(["bench", str(classifier_module), "--threads", "100000"], tmp_path)
    assert outcome.code == 2
    assert "--threads 100000: this machine has" in outcome.error_line()
