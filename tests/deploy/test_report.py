"""Report: result files from a GPU server and a Jetson merged into one table, speed-ups,
label collisions, repeated measurements, the Pareto front, and the files written."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from deploy.bench import LatencyRecord
from deploy.errors import DeployInputError
from deploy.results.files import ResultFile, write_results
from deploy.results.report import (
    ACCURACY_PLOT,
    SPEEDUP_PLOT,
    build_report,
    device_label,
    merge_results,
    pareto_front,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

SERVER = {
    "fingerprint_id": "5e7e7000aaaa",
    "hostname": "gpu-box",
    "cpu_model": "Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz",
    "logical_cores": 16,
    "threads": 4,
    "gpu_name": "NVIDIA H100 80GB HBM3",
    "gpu_driver": "550.54.15",
    "cuda_version": "12.4",
    "libraries": {"onnxruntime": "1.22.0", "tensorrt": "10.9.0"},
}
JETSON = {
    "fingerprint_id": "0e1b0000bbbb",
    "hostname": "orin",
    "cpu_model": "ARMv8 Processor rev 1 (v8l)",
    "logical_cores": 12,
    "threads": 4,
    "jetson_model": "NVIDIA Jetson AGX Orin Developer Kit",
    "l4t_release": "R36.4.3",
    "jetpack": "6.2",
    "power_mode": "MAXN",
    "jetson_clocks_locked": True,
    "libraries": {"onnxruntime": "1.20.0", "tensorrt": "10.3.0"},
}


def record(
    model: str,
    p50_ms: float,
    *,
    backend: str = "tensorrt",
    device: str = "cuda",
    precision: str = "fp16",
    batch: int = 1,
    threads: int | None = None,
    accuracy: float | None = None,
    energy_mj: float | None = None,
) -> LatencyRecord:
    return LatencyRecord(
        model=model,
        backend=backend,
        device=device,
        precision=precision,
        batch=batch,
        threads=threads,
        warmup_iters=20,
        iterations=100,
        mean_ms=p50_ms * 1.05,
        p50_ms=p50_ms,
        p90_ms=p50_ms * 1.2,
        p95_ms=p50_ms * 1.3,
        p99_ms=p50_ms * 1.5,
        std_ms=p50_ms * 0.1,
        min_ms=p50_ms * 0.9,
        max_ms=p50_ms * 2,
        cv=0.1,
        throughput_ips=batch * 1000 / p50_ms,
        accuracy=accuracy,
        energy_mj=energy_mj,
        power_source="nvml:gpu0" if energy_mj is not None else None,
    )


def result(fingerprint: dict, records: list[LatencyRecord], created: str) -> ResultFile:
    return ResultFile(
        schema="deploy.results/2", created=created, fingerprint=fingerprint, records=tuple(records)
    )


SERVER_RECORDS = [
    record("dense", 0.80, accuracy=0.97, energy_mj=120.0),
    record("shrunk", 0.40, accuracy=0.955, energy_mj=60.0),
    record("dense", 4.0, backend="onnxruntime", device="cpu", precision="fp32", threads=4),
    record("shrunk", 1.0, backend="onnxruntime", device="cpu", precision="fp32", threads=4),
]
JETSON_RECORDS = [
    record("dense", 3.0, accuracy=0.97, energy_mj=45.0),
    record("shrunk", 2.0, accuracy=0.955, energy_mj=30.0),
    record("ticket", 2.5, accuracy=0.96),
]


def test_merged_columns_keep_devices_apart_and_speedups_are_per_column() -> None:
    table = merge_results(
        [
            ("server.json", result(SERVER, SERVER_RECORDS, "2026-05-01T10:00:00Z")),
            ("orin.json", result(JETSON, JETSON_RECORDS, "2026-05-02T10:00:00Z")),
        ]
    )
    assert table.models == ("dense", "shrunk", "ticket") and table.baseline == "dense"
    titles = [c.title for c in table.columns]
    assert titles == [
        "H100 80GB HBM3 | tensorrt fp16 | batch 1",
        "Intel Xeon Platinum 8480+, 4 threads | onnxruntime fp32 | batch 1",
        "Jetson AGX Orin MAXN | tensorrt fp16 | batch 1",
    ]
    # Same backend, precision and batch on two machines: two columns, never one.
    assert {c.fingerprint_id for c in table.columns if c.backend == "tensorrt"} == {
        SERVER["fingerprint_id"],
        JETSON["fingerprint_id"],
    }
    h100, xeon, orin = table.columns
    assert table.cell("shrunk", h100).speedup == pytest.approx(2.0)
    assert table.cell("shrunk", xeon).speedup == pytest.approx(4.0)
    assert table.cell("shrunk", orin).speedup == pytest.approx(1.5)
    assert table.cell("ticket", orin).speedup == pytest.approx(1.2)
    assert table.cell("dense", orin).speedup == pytest.approx(1.0)
    assert table.cell("ticket", h100) is None
    assert [d.label for d in table.devices] == [c.label for c in table.columns]
    assert "R36.4.3" in table.devices[2].description and "MAXN" in table.devices[2].description


def test_same_label_from_two_fingerprints_gets_the_ids() -> None:
    """Two CPU machines with the same model and threads but different software."""
    cpu_a = {"fingerprint_id": "aaaaaaaaaaaa", "cpu_model": "AMD EPYC 7763 64-Core Processor"}
    cpu_b = cpu_a | {"fingerprint_id": "bbbbbbbbbbbb", "libraries": {"onnxruntime": "1.18.0"}}
    rec = dict(backend="onnxruntime", device="cpu", precision="fp32", threads=2)
    table = merge_results(
        [
            ("a.json", result(cpu_a, [record("dense", 2.0, **rec)], "2026-01-01T00:00:00Z")),
            ("b.json", result(cpu_b, [record("dense", 3.0, **rec)], "2026-01-01T00:00:00Z")),
        ]
    )
    assert [c.label for c in table.columns] == [
        "AMD EPYC 7763 64-Core, 2 threads [aaaaaaaaaaaa]",
        "AMD EPYC 7763 64-Core, 2 threads [bbbbbbbbbbbb]",
    ]
    assert [table.cell("dense", c).record.p50_ms for c in table.columns] == [2.0, 3.0]
    # One machine without NVML facts that ran on CPU and CUDA: the record device tells apart.
    both = [record("dense", 2.0, **rec), record("dense", 1.0, backend="onnxruntime", threads=2)]
    table = merge_results([("c.json", result(cpu_a, both, "2026-01-01T00:00:00Z"))])
    assert [c.label for c in table.columns] == [
        "AMD EPYC 7763 64-Core, 2 threads (cpu)",
        "AMD EPYC 7763 64-Core, 2 threads (cuda)",
    ]


def test_repeated_measurement_keeps_the_newer_file() -> None:
    old = result(JETSON, [record("dense", 3.0), record("shrunk", 2.4)], "2026-05-01T09:00:00Z")
    new = result(JETSON, [record("shrunk", 2.0)], "2026-05-03T09:00:00Z")
    for files in ([("old.json", old), ("new.json", new)], [("new.json", new), ("old.json", old)]):
        table = merge_results(files)
        (column,) = table.columns
        shrunk = table.cell("shrunk", column)
        assert shrunk.record.p50_ms == 2.0 and shrunk.source == Path("new.json")
        assert shrunk.speedup == pytest.approx(1.5)
        (note,) = table.notes
        assert "new.json" in note and "old.json" in note and "kept the newer, new.json" in note


def test_baseline_option_batch_filter_and_missing_baseline() -> None:
    files = [
        (
            "orin.json",
            result(
                JETSON, [*JETSON_RECORDS, record("dense", 9.0, batch=8)], "2026-05-02T10:00:00Z"
            ),
        )
    ]
    by_ticket = merge_results(files, baseline="ticket")
    assert by_ticket.models[0] == "ticket"
    batch1 = next(c for c in by_ticket.columns if c.batch == 1)
    assert by_ticket.cell("dense", batch1).speedup == pytest.approx(2.5 / 3.0)
    only8 = merge_results(files, batch=8)
    assert [c.batch for c in only8.columns] == [8] and only8.models == ("dense",)
    with pytest.raises(DeployInputError, match=r"no records for batch 3.*\[1, 8\]"):
        merge_results(files, batch=3)
    no_base = merge_results(files, baseline="resnet56")
    assert no_base.baseline is None
    assert all(cell.speedup is None for cell in no_base.cells.values())
    assert any("'resnet56'" in note and "dense" in note for note in no_base.notes)


def test_device_labels() -> None:
    assert device_label(SERVER, "cuda") == "H100 80GB HBM3"
    assert device_label(SERVER, "cpu", 8) == "Intel Xeon Platinum 8480+, 8 threads"
    assert device_label(JETSON, "cuda") == "Jetson AGX Orin MAXN"
    assert device_label(JETSON, "cpu") == "Jetson AGX Orin MAXN CPU, 4 threads"
    assert device_label({"cpu_model": "x86_64"}, "cpu") == "x86_64, default threads"


def test_pareto_front() -> None:
    points = [(1.0, 90.0), (2.0, 95.0), (1.5, 89.0), (3.0, 95.0), (0.5, 80.0), (2.0, 95.0)]
    # (1.5, 89) is slower and worse than (1, 90); (3, 95) is slower than (2, 95) for no gain;
    # the two equal (2, 95) points are both kept.
    assert pareto_front(points) == [4, 0, 1, 5]
    assert pareto_front([]) == []
    assert pareto_front([(1.0, float("nan")), (2.0, 50.0)]) == [1]
    assert pareto_front([(1.0, 50.0), (1.0, 60.0)]) == [1]


def _write_two_machines(root: Path) -> None:
    write_results(root / "server" / "bench-server.json", SERVER_RECORDS, SERVER)
    write_results(root / "jetson" / "bench-orin.json", JETSON_RECORDS, JETSON)
    (root / "notes.json").write_text(json.dumps({"comment": "not a result file"}))


def test_build_report_writes_markdown_html_and_plots(tmp_path: Path) -> None:
    results, out = tmp_path / "results", tmp_path / "report"
    _write_two_machines(results)
    files = build_report([results], out)
    assert files.paths() == [
        out / "report.md",
        out / "report.html",
        out / ACCURACY_PLOT,
        out / SPEEDUP_PLOT,
    ]
    for plot in (files.accuracy_plot, files.speedup_plot):
        assert plot is not None and plot.read_bytes().startswith(PNG_MAGIC)
    markdown = files.markdown.read_text()
    for text in (
        "dense (baseline)",
        "shrunk",
        "ticket",
        "H100 80GB HBM3",
        "Jetson AGX Orin MAXN",
        "0.400 ms (2.00x) · 95.5% · 60.00 mJ",  # shrunk on the H100
        "2.000 ms (1.50x) · 95.5% · 30.00 mJ",  # shrunk on the Orin
        "1.000 ms (4.00x)",  # shrunk on the Xeon CPU
        SERVER["fingerprint_id"],
        JETSON["fingerprint_id"],
        "bench-orin.json",
        f"skipped {results / 'notes.json'}: not a result file",
        f"![accuracy vs latency]({ACCURACY_PLOT})",
    ):
        assert text in markdown, text
    page = files.html.read_text()
    assert page.count("data:image/png;base64,") == 2
    assert "0.400 ms (2.00x) · 95.5% · 60.00 mJ" in page and "Jetson AGX Orin MAXN" in page
    assert "http" not in page.replace('lang="en"', "") and "<script" not in page
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_report_without_matplotlib_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results, out = tmp_path / "results", tmp_path / "report"
    _write_two_machines(results)
    out.mkdir()
    (out / SPEEDUP_PLOT).write_bytes(PNG_MAGIC)  # left by an earlier run
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as on a bare Jetson
    files = build_report([results], out, baseline="dense")
    assert files.paths() == [out / "report.md", out / "report.html"]
    assert "matplotlib is not installed, so the plots were skipped" in files.markdown.read_text()
    assert "data:image/png" not in files.html.read_text()
    assert not (out / SPEEDUP_PLOT).exists()


def test_corrupt_or_foreign_files_are_named(tmp_path: Path) -> None:
    results = tmp_path / "results"
    write_results(results / "good.json", JETSON_RECORDS, JETSON)
    text = (results / "good.json").read_text()
    (results / "truncated.json").write_text(text[: len(text) // 2])
    with pytest.raises(DeployInputError, match="truncated.json is not valid JSON"):
        build_report([results], tmp_path / "out")
    foreign = tmp_path / "package.json"
    foreign.write_text('{"name": "x"}')
    with pytest.raises(DeployInputError, match="package.json: schema is None"):
        build_report([foreign], tmp_path / "out")
    with pytest.raises(DeployInputError, match="results path not found"):
        build_report([tmp_path / "absent"], tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DeployInputError, match="no result files"):
        build_report([empty], tmp_path / "out")


def test_speedups_never_cross_fingerprints() -> None:
    """The baseline measured on one machine and a variant on another: two columns, and no
    speed-up for the variant, since its column has no baseline of its own."""
    cpu_a = {"fingerprint_id": "aaaaaaaaaaaa", "cpu_model": "AMD EPYC 7763 64-Core Processor"}
    cpu_b = cpu_a | {"fingerprint_id": "bbbbbbbbbbbb", "libraries": {"onnxruntime": "1.18.0"}}
    rec = dict(backend="onnxruntime", device="cpu", precision="fp32", threads=2)
    table = merge_results(
        [
            ("a.json", result(cpu_a, [record("dense", 2.0, **rec)], "2026-01-01T00:00:00Z")),
            ("b.json", result(cpu_b, [record("shrunk", 1.0, **rec)], "2026-01-01T00:00:00Z")),
        ]
    )
    assert len(table.columns) == 2
    assert {c.fingerprint_id for c in table.columns} == {"aaaaaaaaaaaa", "bbbbbbbbbbbb"}
    (b_column,) = [c for c in table.columns if c.fingerprint_id == "bbbbbbbbbbbb"]
    assert table.cell("shrunk", b_column).speedup is None
    assert table.cell("dense", b_column) is None


def test_measurement_warnings_of_the_files_are_in_the_report(tmp_path: Path) -> None:
    results = tmp_path / "results"
    warning = "machine busy: 1-minute load average 7.00 on 2 CPUs around the timed runs"
    write_results(results / "orin.json", JETSON_RECORDS, JETSON, [warning])
    write_results(results / "server.json", SERVER_RECORDS, SERVER)
    files = build_report([results], tmp_path / "report")
    markdown = files.markdown.read_text()
    section = markdown.split("## Measurement warnings\n\n", 1)[1]
    assert section.splitlines()[0] == f"- `{results / 'orin.json'}`: {warning}"
    assert "<h2>Measurement warnings</h2>" in files.html.read_text()
    # A file whose every measurement a newer one replaced no longer speaks for the table.
    newer = result(JETSON, JETSON_RECORDS, "2100-01-01T00:00:00Z")
    older = result(JETSON, JETSON_RECORDS, "2000-01-01T00:00:00Z")
    older = dataclasses.replace(older, warnings=(warning,))
    table = merge_results([("old.json", older), ("new.json", newer)])
    assert table.warnings == ()
