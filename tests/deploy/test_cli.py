"""`deploy bench` end to end on a real ONNX file, and how it reports user mistakes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deploy.cli import main
from deploy.results.files import read_results

REPO_ROOT = Path(__file__).resolve().parents[2]
FAST = ["--warmup", "1", "--iterations", "5", "--threads", "1"]


def run_module(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m deploy ...` in a fresh interpreter, as a user on a device would run it."""
    env = os.environ | {"PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "deploy", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_bench_writes_results_and_prints_the_table(
    classifier: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out" / "run.json"
    code = main(
        [
            "bench",
            str(classifier),
            "--batch",
            "1,2",
            *FAST,
            "--output",
            str(output),
            "--name",
            "tiny",
        ]
    )
    stdout = capsys.readouterr().out
    assert code == 0
    assert stdout.startswith("device: ")
    assert f"results written to {output}" in stdout
    table_rows = [line.split() for line in stdout.splitlines() if line.startswith("tiny ")]
    assert [tuple(row[1:4]) for row in table_rows] == [
        ("onnxruntime", "fp32", "1"),
        ("onnxruntime", "fp32", "2"),
    ]
    results = read_results(output)
    assert [(r.model, r.batch, r.iterations, r.threads) for r in results.records] == [
        ("tiny", 1, 5, 1),
        ("tiny", 2, 5, 1),
    ]
    assert results.fingerprint["threads"] == 1


def test_default_output_goes_to_results_dir_and_name_to_file_stem(
    classifier: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["bench", str(classifier), *FAST]) == 0
    (written,) = (tmp_path / "results").glob("bench-*.json")
    assert str(written.name) in capsys.readouterr().out
    assert [r.model for r in read_results(written).records] == [classifier.stem]


def test_shapes_make_dynamic_spatial_models_runnable(
    onnx_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = str(onnx_models["dynamic_hw"])
    output = tmp_path / "r.json"
    assert (
        main(
            [
                "bench",
                model,
                *FAST,
                "--batch",
                "3",
                "--shapes",
                "input:1x1x12x10",
                "--output",
                str(output),
            ]
        )
        == 0
    )
    assert read_results(output).records[0].batch == 3
    assert main(["bench", model, *FAST, "--output", str(output)]) == 1
    assert "pass their sizes with --shapes input:" in capsys.readouterr().err


def test_python_dash_m_deploy_runs_a_benchmark(classifier: Path, tmp_path: Path) -> None:
    result = run_module("bench", str(classifier), *FAST, "--output", "r.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "results written to r.json" in result.stdout
    assert len(read_results(tmp_path / "r.json").records) == 1


def _garbage(tmp_path: Path) -> str:
    path = tmp_path / "garbage.onnx"
    path.write_bytes(bytes(range(256)) * 4)
    return str(path)


@pytest.mark.parametrize(
    ("make_args", "exit_code", "message"),
    [
        (lambda m, t: ["bench", str(t / "absent.onnx")], 1, "ONNX file not found"),
        (lambda m, t: ["bench", _garbage(t)], 1, "is not a readable ONNX file"),
        (lambda m, t: ["bench", str(m["dense"]), "--batch", "0"], 2, "--batch"),
        (lambda m, t: ["bench", str(m["dense"]), "--batch", "abc"], 2, "got 'abc'"),
        (lambda m, t: ["bench", str(m["dense"]), "--batch", "1,,2"], 2, "--batch"),
        (lambda m, t: ["bench", str(m["dense"]), "--shapes", "input=1x1"], 2, "--shapes"),
        (lambda m, t: ["bench", str(m["dense"]), "--iterations", "-3"], 2, "--iterations"),
        (
            lambda m, t: ["bench", str(m["dense"]), "--backend", "tensorrt"],
            1,
            "needs the 'tensorrt' package, which is not installed",
        ),
        (
            lambda m, t: ["bench", str(m["dense"]), "--backend", "trtexec", "--trtexec", "/no/x"],
            1,
            "trtexec",
        ),
        (lambda m, t: ["bench", str(m["dense"]), "--backend", "tflite"], 2, "is unknown"),
        (
            lambda m, t: ["bench", str(m["dense"]), "--precision", "int8"],
            2,
            "is an fp32 graph and onnxruntime runs what the file holds; pass the QDQ ONNX",
        ),
        (lambda m, t: ["bench", str(m["dense"]), "--precision", "fp8"], 2, "--precision"),
        (
            lambda m, t: ["bench", str(m["dense"]), "--backend", "torch"],
            1,
            "the torch backend runs torch.export files (.pt2)",
        ),
        (lambda m, t: ["bench", str(m["dense"]), "--data", str(t / "no.npz")], 1, "not found"),
        (
            lambda m, t: ["build", str(m["dense"]), "--batch", "1,8"],
            1,
            "needs the 'tensorrt' package, which is not installed",
        ),
        (lambda m, t: ["build", str(m["dense"]), "--precision", "int4"], 2, "--precision"),
        (lambda m, t: ["build", _garbage(t)], 1, "is not a readable ONNX file"),
        (lambda m, t: ["bench", str(m["dense"]), "--output", str(m["dense"])], 1, "is the model"),
        (lambda m, t: ["bench", str(m["dense"]), "--output", str(t)], 1, "is a directory"),
        (lambda m, t: ["bench", str(t / "m.engine")], 2, "use --backend tensorrt"),
        (lambda m, t: ["bench", str(m["fixed_batch"]), "--batch", "2"], 1, "fixed batch size"),
        (
            lambda m, t: ["bench", str(m["fixed_batch"]), "--shapes", "input:2x1x8x8"],
            1,
            "gives input 'input' a batch of 2, but the model fixes its batch to 1",
        ),
        (lambda m, t: ["bench", str(m["dense"]), "--repeats", "0"], 2, "--repeats"),
        (lambda m, t: ["bench", str(m["dense"]), "--max-cv", "-1"], 2, "--max-cv"),
        (lambda m, t: ["bench", str(m["dense"]), "--max-run-cv", "x"], 2, "--max-run-cv"),
        (lambda m, t: ["bench", str(m["dense"]), "--cpus", "3-1"], 2, "runs backwards"),
        (lambda m, t: ["bench", str(m["dense"]), "--cpus", "a"], 2, "--cpus: expected CPU"),
        (lambda m, t: ["bench", str(m["dense"]), "--cpus", "99999"], 2, "has no online CPU 99999"),
        (lambda m, t: ["compare", str(t / "a.json"), str(t / "b.json")], 1, "not found"),
        (lambda m, t: ["bench"], 2, "required: model"),
        (lambda m, t: ["bench", str(m["dense"]), "--no-such-flag"], 2, "unrecognized"),
        (lambda m, t: [], 2, "required"),
    ],
)
def test_user_mistakes_give_one_line_and_an_exit_code(
    make_args,
    exit_code: int,
    message: str,
    onnx_models: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    args = make_args(onnx_models, tmp_path)
    if len(args) >= 2 and args[0] == "bench":  # keep runs short; the case's flags win
        args = [*args[:2], *FAST, *args[2:]]
    code = main(args)
    captured = capsys.readouterr()
    assert code == exit_code
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("deploy: error: ")
    assert message in lines[0]
    assert "Traceback" not in captured.err
    assert not (tmp_path / "results").exists()  # no result file from a failed run


def test_corrupt_model_in_a_real_process_has_no_traceback(tmp_path: Path) -> None:
    result = run_module("bench", _garbage(tmp_path), cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("deploy: error: ")


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--help"]) == 0
    assert "--shapes" in capsys.readouterr().out


def test_power_sampling_adds_energy_per_inference(
    classifier: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--power tegrastats` with a tegrastats on PATH that replays recorded Orin Nano output
    (a real subprocess and real parsing; only the numbers are recorded, not live)."""
    from tests.deploy.test_power import fake_tegrastats

    fake = fake_tegrastats(tmp_path / "bin", "orin_nano_jp6.txt")
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    output = tmp_path / "r.json"
    args = ["bench", str(classifier), *FAST, "--power", "tegrastats", "--power-seconds", "0.5"]
    assert main([*args, "--output", str(output)]) == 0, capsys.readouterr().err
    (record,) = read_results(output).records
    assert record.power_source == "tegrastats:VDD_IN"
    assert record.avg_power_w is not None and 1 < record.avg_power_w < 60  # a Jetson's range
    # energy per call = mean power x time per call, so it is far below a joule here
    assert 0 < record.energy_mj < record.avg_power_w * 1e3


def test_power_that_is_not_there_is_one_line(
    classifier: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # noqa: ANN001
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["bench", str(classifier), *FAST, "--power", "tegrastats"]) == 1
    assert "tegrastats" in capsys.readouterr().err


def test_torch_backend_runs_a_torch_export_file_only_when_trusted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3)
    ).eval()
    example = (torch.zeros(2, 1, 8, 8),)
    program = torch.export.export(model, example, dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = tmp_path / "tiny.pt2"
    torch.export.save(program, path)
    output = tmp_path / "r.json"
    args = ["bench", str(path), "--backend", "torch", *FAST, "--batch", "1,4"]
    assert main([*args, "--output", str(output)]) == 2
    assert "pass --allow-pickle if you trust" in capsys.readouterr().err
    assert main([*args, "--allow-pickle", "--device", "cpu", "--output", str(output)]) == 0
    records = read_results(output).records
    assert [(r.backend, r.device, r.batch) for r in records] == [
        ("torch", "cpu", 1),
        ("torch", "cpu", 4),
    ]


def test_report_merges_result_files(
    onnx_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("dense", "shrunk"):
        output = tmp_path / "results" / f"{name}.json"
        assert main(["bench", str(onnx_models[name]), *FAST, "--output", str(output)]) == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "results"), "--out", str(tmp_path / "rep")]) == 0
    markdown = (tmp_path / "rep" / "report.md").read_text()
    assert "| dense (baseline) |" in markdown
    shrunk_row = next(line for line in markdown.splitlines() if line.startswith("| shrunk |"))
    assert shrunk_row.endswith("x) |")  # its speed-up over dense in the same column
    assert (tmp_path / "rep" / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert main(["report", str(tmp_path / "absent"), "--out", str(tmp_path / "r2")]) == 1
    args = ["report", str(tmp_path / "results"), "--out", str(tmp_path / "r3")]
    assert main([*args, "--baseline", "dens"]) == 2
    assert "--baseline 'dens' is in none of the result files" in capsys.readouterr().err
    assert main([*args, "--baseline", "shrunk"]) == 0


def test_output_over_a_file_that_is_not_a_result_file_is_refused(
    classifier: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    precious = tmp_path / "notes.json"
    precious.write_text('{"mine": true}')
    assert main(["bench", str(classifier), *FAST, "--output", str(precious)]) == 1
    assert "exists and is not a result file" in capsys.readouterr().err
    assert precious.read_text() == '{"mine": true}'
    results = tmp_path / "r.json"
    assert main(["bench", str(classifier), *FAST, "--output", str(results)]) == 0
    assert main(["bench", str(classifier), *FAST, "--output", str(results)]) == 0  # replaced


def test_expected_top1_fails_the_run_but_keeps_the_results(
    classifier: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from deploy.evaluate import save_labelled
    from deploy.runners import OnnxRuntimeRunner

    images = np.random.default_rng(0).standard_normal((20, 1, 8, 8)).astype(np.float32)
    with OnnxRuntimeRunner(classifier) as runner:
        labels = runner.infer({"input": images})["logits"].argmax(axis=1)
    data = save_labelled(tmp_path / "eval.npz", images, labels)
    output = tmp_path / "r.json"
    args = ["bench", str(classifier), *FAST, "--data", str(data), "--output", str(output)]
    assert main([*args, "--expect-top1", "1.0"]) == 0
    assert main([*args, "--expect-top1", "0.9", "--top1-tolerance", "0.05"]) == 1
    assert "is 10.00 points from the expected 0.9000" in capsys.readouterr().err
    assert read_results(output).records[0].accuracy == 1.0  # written before the verdict
    assert main(["bench", str(classifier), *FAST, "--expect-top1", "0.9"]) == 2
    assert "--expect-top1 needs --data" in capsys.readouterr().err


def test_bench_records_runs_and_an_explicit_thread_count(
    classifier: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from deploy.machine.cpus import default_threads

    output = tmp_path / "r.json"
    args = ["bench", str(classifier), "--warmup", "1", "--iterations", "6", "--repeats", "2"]
    assert main([*args, "--output", str(output)]) == 0
    assert "run CV" in capsys.readouterr().out.splitlines()[1]  # the table's header
    document = json.loads(output.read_text())
    (raw,) = document["records"]
    assert raw["runs"] == 2 and len(raw["run_medians_ms"]) == 2 and raw["run_cv"] >= 0
    assert isinstance(document["warnings"], list)
    # No --threads: the CPU backend still runs, and records, an explicit count.
    assert raw["threads"] == document["fingerprint"]["threads"] == default_threads()


def test_busy_machine_warns_and_strict_fails_after_writing_the_results(
    classifier: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(os, "getloadavg", lambda: (500.0, 500.0, 500.0))
    output = tmp_path / "r.json"
    args = ["bench", str(classifier), *FAST, "--output", str(output), "--max-cv", "1e9"]
    assert main(args) == 0
    err = capsys.readouterr().err.splitlines()
    busy = [line for line in err if line.startswith("deploy: warning: machine busy: 1-minute")]
    assert len(busy) == 1
    assert any(w.startswith("machine busy: 1-minute") for w in read_results(output).warnings)
    output.unlink()
    assert main([*args, "--strict"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("deploy: error: --strict: ") and str(output) in err[-1]
    assert all(line.startswith("deploy: ") for line in err)  # one line each, no traceback
    assert read_results(output).warnings  # written before the verdict, warnings included


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux-only")
def test_cpus_pins_the_benchmark_and_is_recorded(
    classifier: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from deploy.machine.cpus import pin_process

    before = sorted(os.sched_getaffinity(0))
    cpu = before[-1]
    output = tmp_path / "r.json"
    try:
        args = ["bench", str(classifier), "--warmup", "1", "--iterations", "3", "--cpus", str(cpu)]
        assert main([*args, "--output", str(output)]) == 0
        assert os.sched_getaffinity(0) == {cpu}
    finally:
        pin_process(before)
    assert f"pinned to CPU {cpu}" in capsys.readouterr().out
    result = read_results(output)
    assert result.fingerprint["pinned_cpus"] == result.fingerprint["cpu_affinity"] == str(cpu)
    assert result.records[0].threads == 1  # one usable CPU: one thread by default
