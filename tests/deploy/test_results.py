"""Result files: round trip, atomic writes, schema errors a user can act on, the table."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from deploy.bench import LatencyRecord
from deploy.errors import DeployInputError
from deploy.results.files import (
    SCHEMA,
    default_results_path,
    format_table,
    read_results,
    write_results,
)

FINGERPRINT = {"fingerprint_id": "abc123", "cpu_model": "test cpu", "threads": 1}


def make_record(model: str = "dense", batch: int = 1, mean_ms: float = 2.0) -> LatencyRecord:
    return LatencyRecord(
        model=model,
        backend="onnxruntime",
        device="cpu",
        precision="fp32",
        batch=batch,
        threads=1,
        warmup_iters=20,
        iterations=100,
        mean_ms=mean_ms,
        p50_ms=1.9,
        p90_ms=2.5,
        p95_ms=2.8,
        p99_ms=3.5,
        std_ms=0.3,
        min_ms=1.5,
        max_ms=4.0,
        cv=0.15,
        throughput_ips=batch * 1000 / mean_ms,
    )


def test_round_trip_keeps_records_and_fingerprint(tmp_path: Path) -> None:
    records = [make_record("dense", 1), make_record("shrunk", 8, mean_ms=0.5)]
    path = write_results(tmp_path / "sub" / "run.json", records, FINGERPRINT)
    loaded = read_results(path)
    assert loaded.schema == SCHEMA == "deploy.results/3"
    assert loaded.records == tuple(records)
    assert loaded.fingerprint == FINGERPRINT
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", loaded.created)
    # No temporary file is left next to the result.
    assert [p.name for p in path.parent.iterdir()] == ["run.json"]


def test_rewrite_replaces_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    write_results(path, [make_record("old")] * 3, FINGERPRINT)
    write_results(path, [make_record("new")], FINGERPRINT)
    assert [r.model for r in read_results(path).records] == ["new"]


def test_default_path_is_under_results_in_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    first = default_results_path()
    assert first.parent == tmp_path / "results"
    assert re.fullmatch(r"bench-\d{8}T\d{6}Z\.json", first.name)
    write_results(first, [make_record()], FINGERPRINT)
    assert default_results_path() != first  # never overwrites a result of the same second


def _write(path: Path, document: object) -> Path:
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ('{"schema": "deploy.results/1", "records": [', "not valid JSON"),
        ([1, 2], "expected a JSON object"),
        (
            {"schema": "deploy.results/9", "created": "x", "fingerprint": {}, "records": []},
            "schema is 'deploy.results/9', expected 'deploy.results/3'",
        ),
        ({"created": "x", "fingerprint": {}, "records": []}, "schema is None"),
        (
            {"schema": SCHEMA, "created": "x", "fingerprint": {}, "records": {}},
            "'records' must be a list",
        ),
        (
            {"schema": SCHEMA, "created": "x", "fingerprint": {}, "records": [{"model": "m"}]},
            r"records\[0\].*missing \['backend'",
        ),
    ],
)
def test_corrupt_files_name_the_file_and_the_problem(
    tmp_path: Path, document: object, message: str
) -> None:
    path = _write(tmp_path / "bad.json", document)
    with pytest.raises(DeployInputError, match=message) as info:
        read_results(path)
    assert str(path) in str(info.value)


def test_record_with_a_wrong_type_is_named(tmp_path: Path) -> None:
    record = make_record().to_dict() | {"mean_ms": "fast"}
    document = {"schema": SCHEMA, "created": "x", "fingerprint": {}, "records": [record]}
    with pytest.raises(DeployInputError, match="'mean_ms' must be a number"):
        read_results(_write(tmp_path / "bad.json", document))


def test_missing_results_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(DeployInputError, match="results file not found"):
        read_results(tmp_path / "absent.json")


def test_table_is_aligned_and_shows_the_numbers() -> None:
    records = [make_record("dense", 1, 2.0), replace(make_record("a-much-longer-name", 32, 0.25))]
    lines = format_table(records).splitlines()
    assert lines[0].split() == [
        "model",
        "backend",
        "precision",
        "batch",
        "mean",
        "ms",
        "p50",
        "ms",
        "p90",
        "ms",
        "p99",
        "ms",
        "img/s",
    ]
    assert len(lines) == 4
    assert len({len(line) for line in lines}) == 1  # every row as wide as the header
    assert "2.000" in lines[2] and "500.0" in lines[2]  # mean ms and img/s of dense
    assert lines[3].startswith("a-much-longer-name") and "128000.0" in lines[3]
    with_accuracy = format_table([replace(make_record(), accuracy=0.9861)]).splitlines()
    assert with_accuracy[0].split()[-1] == "top-1" and with_accuracy[2].endswith("98.61%")


def test_version_1_files_still_read_with_the_new_fields_none(tmp_path: Path) -> None:
    old = make_record().to_dict()
    for name in ("accuracy", "accuracy_samples", "gpu_compute_ms", "energy_mj", "avg_power_w"):
        del old[name]
    del old["power_source"], old["details"]
    document = {"schema": "deploy.results/1", "created": "x", "fingerprint": {}, "records": [old]}
    (record,) = read_results(_write(tmp_path / "v1.json", document)).records
    assert record.accuracy is None and record.energy_mj is None and record.details == {}
    assert record.mean_ms == 2.0


def test_optional_figures_round_trip_and_are_type_checked(tmp_path: Path) -> None:
    record = replace(
        make_record(),
        accuracy=0.75,
        accuracy_samples=360,
        gpu_compute_ms=0.4,
        energy_mj=3.5,
        avg_power_w=41.0,
        power_source="nvml",
        details={"cuda_graph": True},
    )
    path = write_results(tmp_path / "r.json", [record], {"fingerprint_id": "abc"})
    assert read_results(path).records == (record,)
    bad = record.to_dict() | {"energy_mj": "lots"}
    document = {"schema": SCHEMA, "created": "x", "fingerprint": {}, "records": [bad]}
    with pytest.raises(DeployInputError, match="'energy_mj' must be a number or null"):
        read_results(_write(tmp_path / "bad.json", document))


def test_version_2_files_read_without_run_fields_or_warnings(tmp_path: Path) -> None:
    old = make_record().to_dict()
    for name in ("runs", "run_medians_ms", "run_cv"):
        del old[name]
    document = {"schema": "deploy.results/2", "created": "x", "fingerprint": {}, "records": [old]}
    loaded = read_results(_write(tmp_path / "v2.json", document))
    (record,) = loaded.records
    assert (record.runs, record.run_medians_ms, record.run_cv) == (None, None, None)
    assert loaded.warnings == ()
    assert "run CV" not in format_table(loaded.records)  # nothing measured, no column


def test_run_to_run_fields_and_warnings_round_trip(tmp_path: Path) -> None:
    record = replace(make_record(), runs=3, run_medians_ms=(1.8, 1.9, 2.1), run_cv=0.08)
    warning = "dense (onnxruntime cpu fp32, batch 1): run-to-run CV 8.0% is above 5.0%"
    path = write_results(tmp_path / "r.json", [record], FINGERPRINT, [warning])
    document = json.loads(path.read_text())
    assert document["warnings"] == [warning]
    assert document["records"][0]["run_medians_ms"] == [1.8, 1.9, 2.1]
    loaded = read_results(path)
    assert loaded.records == (record,) and loaded.warnings == (warning,)
    assert format_table([record]).splitlines()[2].split()[-1] == "8.0%"  # the run CV column
    bad_runs = record.to_dict() | {"run_medians_ms": [1.8, 1.9]}
    for bad, message in (
        ({"records": [bad_runs]}, "'run_medians_ms' must be a list of numbers, one per run"),
        ({"records": [record.to_dict() | {"run_cv": "low"}]}, "'run_cv' must be a number"),
        ({"records": [], "warnings": "busy"}, "'warnings' must be a list of strings"),
    ):
        document = {"schema": SCHEMA, "created": "x", "fingerprint": {}} | bad
        with pytest.raises(DeployInputError, match=message):
            read_results(_write(tmp_path / "bad.json", document))
