"""`deploy compare`: speed-ups between two result files, refused across device fingerprints."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from deploy.cli import main
from deploy.results.files import write_results
from tests.deploy.test_report import record

CPU_A = {
    "fingerprint_id": "aaaaaaaaaaaa",
    "cpu_model": "AMD EPYC 7763 64-Core Processor",
    "threads": 2,
    "libraries": {"onnxruntime": "1.22.0"},
}
CPU_B = CPU_A | {"fingerprint_id": "bbbbbbbbbbbb", "libraries": {"onnxruntime": "1.18.0"}}
ORT = {"backend": "onnxruntime", "device": "cpu", "precision": "fp32", "threads": 2}


def measured(model: str, p50_ms: float, run_cv: float | None, batch: int = 1):  # noqa: ANN201
    base = record(model, p50_ms, batch=batch, **ORT)
    if run_cv is None:
        return base
    medians = (p50_ms * (1 - run_cv), p50_ms, p50_ms * (1 + run_cv))
    return replace(base, runs=3, run_medians_ms=medians, run_cv=run_cv)


def write(path: Path, fingerprint: dict, records: list, warnings: tuple[str, ...] = ()) -> str:
    return str(write_results(path, records, fingerprint, warnings))


def test_same_fingerprint_prints_speedups_with_tails_and_run_cvs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = write(
        tmp_path / "old.json", CPU_A, [measured("dense", 2.0, 0.01), measured("t", 1.0, 0.02)]
    )
    new = write(
        tmp_path / "new.json", CPU_A, [measured("dense", 1.0, 0.02), measured("t", 0.99, 0.02)]
    )
    assert main(["compare", old, new]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # same device: nothing to warn about
    lines = captured.out.splitlines()
    assert lines[0].startswith(f"baseline: {old} on AMD EPYC 7763 64-Core, 2 threads")
    assert not any("CROSS-DEVICE" in line for line in lines)
    header = next(line for line in lines if line.startswith("model"))
    assert header.split() == [
        "model", "backend", "device", "precision", "batch", "p50", "ms", "speed-up",
        "p90", "ms", "p99", "ms", "run", "CV", "note",
    ]  # fmt: skip
    dense = next(line for line in lines if line.startswith("dense "))
    assert "2.000 -> 1.000" in dense and " 2.00x " in dense
    assert "2.400 -> 1.200" in dense and "3.000 -> 1.500" in dense  # p90, p99
    assert "1.0% / 2.0%" in dense and "within noise" not in dense
    ticket = next(line for line in lines if line.startswith("t "))
    assert " 1.01x " in ticket and ticket.endswith("within noise")


def test_different_fingerprints_are_refused_in_one_line_naming_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = write(tmp_path / "a.json", CPU_A, [measured("dense", 2.0, 0.01)])
    new = write(tmp_path / "b.json", CPU_B, [measured("dense", 1.0, 0.01)])
    assert main(["compare", old, new]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith(f"deploy: error: {old} was measured on AMD EPYC 7763 64-Core, 2 ")
    assert "(fingerprint aaaaaaaaaaaa)" in line and "(fingerprint bbbbbbbbbbbb)" in line
    assert "differ in onnxruntime 1.22.0 vs 1.18.0" in line
    assert line.endswith("pass --allow-cross-device to compute it anyway")


def test_allow_cross_device_computes_and_labels_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = write(tmp_path / "a.json", CPU_A, [measured("dense", 2.0, 0.01)])
    new = write(tmp_path / "b.json", CPU_B, [measured("dense", 1.0, None)])
    assert main(["compare", old, new, "--allow-cross-device"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("CROSS-DEVICE comparison (--allow-cross-device)")
    assert "[aaaaaaaaaaaa]" in lines[1] and "[bbbbbbbbbbbb]" in lines[2]
    dense = next(line for line in lines if line.startswith("dense "))
    assert " 2.00x " in dense and "1.0% / -" in dense and dense.endswith("noise unknown")


def test_unmatched_measurements_and_file_warnings_are_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    warning = "dense (onnxruntime cpu fp32, batch 1): per-iteration CV 30.0% is above 10.0%"
    old = write(
        tmp_path / "a.json",
        CPU_A,
        [measured("dense", 2.0, 0.01), measured("dense", 9.0, 0.01, batch=8)],
        (warning,),
    )
    new = write(tmp_path / "b.json", CPU_A, [measured("dense", 1.0, 0.01)])
    assert main(["compare", old, new]) == 0
    captured = capsys.readouterr()
    assert captured.err == f"deploy: warning: {old}: {warning}\n"
    assert "only in baseline: dense onnxruntime cpu fp32 batch 8" in captured.out
    assert main(["compare", old, new, "--batch", "8"]) == 1  # nothing in common at batch 8
    assert "no measurement is in both files" in capsys.readouterr().err


def test_old_result_files_without_run_fields_compare(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A deploy.results/2 file (before run-to-run CV existed) is still a valid side."""
    rec = record("dense", 2.0, **ORT).to_dict()
    for name in ("runs", "run_medians_ms", "run_cv"):
        del rec[name]
    document = {
        "schema": "deploy.results/2",
        "created": "x",
        "fingerprint": CPU_A,
        "records": [rec],
    }
    old = tmp_path / "v2.json"
    old.write_text(json.dumps(document))
    new = write(tmp_path / "new.json", CPU_A, [measured("dense", 1.0, 0.01)])
    assert main(["compare", str(old), new]) == 0
    dense = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("dense"))
    assert " 2.00x " in dense and "- / 1.0%" in dense
