"""trtexec: command lines per TensorRT version, and parsing of its output.

The output fixtures under data/trtexec were written from trtexec's printing code (see the
README there), not captured from a device; no machine here runs TensorRT.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from deploy.bench import LatencyRecord
from deploy.errors import DeployConfigError, DeployError, DeployInputError, MissingDependencyError
from deploy.tensorrt.trtexec import (
    TRTEXEC_LOCATIONS,
    error_lines,
    find_trtexec,
    parse_banner,
    parse_export_times,
    parse_summary,
    record_from_trtexec,
    run_trtexec,
    trtexec_command,
    trtexec_version,
)
from tests.deploy.conftest import build_classifier
from tests.deploy.test_trt_engine import saved_engine

DATA = Path(__file__).parent / "data" / "trtexec"
FIXTURES = ("trt8.6_orin_fp16", "trt10.3_l4_int8", "trt11.1_h100_fp16")


def log(name: str) -> str:
    return (DATA / f"{name}.log").read_text()


# --- command lines ---------------------------------------------------------------------------


def test_8_6_fp16_uses_mempoolsize_and_no_deprecated_flags(models: dict[str, Path]) -> None:
    args = trtexec_command(
        "8.6.1",
        onnx=models["fp32"],
        precision="fp16",
        workspace_mib=1024,
        warmup_ms=200,
        duration_s=0,
        iterations=30,
        avg_runs=10,
        export_times="times.json",
    )
    assert args == [
        f"--onnx={models['fp32']}",
        "--fp16",
        "--memPoolSize=workspace:1024",
        "--shapes=input:1x1x8x8",
        "--warmUp=200",
        "--duration=0",
        "--iterations=30",
        "--avgRuns=10",
        "--exportTimes=times.json",
    ]
    # 8.6 trtexec: --explicitBatch "has no effect", --workspace is deprecated by --memPoolSize.
    assert not [a for a in args if a.startswith(("--explicitBatch", "--workspace", "--strongly"))]


def test_10_x_int8_from_a_qdq_onnx_with_opt_in_switches(models: dict[str, Path]) -> None:
    args = trtexec_command(
        "10.3.0",
        onnx=models["int8"],  # precision None: the graph's own (Q/DQ nodes -> int8)
        batch=8,
        percentiles=(90, 95, 99.9),
        use_cuda_graph=True,
        spin_wait=True,
        no_data_transfers=True,
    )
    assert args == [
        f"--onnx={models['int8']}",
        "--int8",
        "--shapes=input:8x1x8x8",
        "--percentile=90,95,99.9",
        "--useCudaGraph",
        "--noDataTransfers",
        "--useSpinWait",
    ]


@pytest.mark.parametrize("version", ["10.3.0", "10.12.0"])
def test_10_x_strongly_typed_replaces_precision_flags(
    models: dict[str, Path], version: str
) -> None:
    args = trtexec_command(version, onnx=models["fp16"], strongly_typed=True)
    assert "--stronglyTyped" in args and "--fp16" not in args
    assert "--fp16" in trtexec_command(version, onnx=models["fp32"], precision="fp16")


def test_11_x_has_no_precision_flags_and_opts_out_of_its_defaults(
    models: dict[str, Path],
) -> None:
    defaults = trtexec_command(
        "11.1.0",
        onnx=models["fp16"],
        batch=32,
        timing_cache="h100.cache",
        use_cuda_graph=True,  # already the default in 11: no flag
        spin_wait=True,
        no_data_transfers=False,  # 11 leaves transfers out unless asked
    )
    assert defaults == [
        f"--onnx={models['fp16']}",
        "--timingCacheFile=h100.cache",
        "--shapes=input:32x1x8x8",
        "--includeDataTransfers",
    ]
    opted_out = trtexec_command(
        "11.1.0", onnx=models["int8"], use_cuda_graph=False, spin_wait=False, no_data_transfers=True
    )
    assert opted_out[-2:] == ["--noCudaGraph", "--noSpinWait"]
    removed = ("--fp16", "--int8", "--bf16", "--best", "--stronglyTyped", "--useCudaGraph")
    assert not set(removed) & set(defaults + opted_out)


def test_11_x_fp16_from_an_fp32_onnx_is_impossible(models: dict[str, Path]) -> None:
    with pytest.raises(DeployConfigError, match="pass the FP16 ONNX"):
        trtexec_command("11.1.0", onnx=models["fp32"], precision="fp16")
    with pytest.raises(DeployConfigError, match="int8 needs Q/DQ nodes"):
        trtexec_command("11.1.0", onnx=models["fp32"], precision="int8")


def test_a_profiled_run_is_separate_before_11_so_the_summary_is_printed(
    models: dict[str, Path],
) -> None:
    old = trtexec_command("10.3.0", onnx=models["fp32"], export_profile="layers.json")
    assert old[-2:] == ["--separateProfileRun", "--exportProfile=layers.json"]
    new = trtexec_command("11.1.0", onnx=models["fp32"], export_profile="layers.json")
    assert "--separateProfileRun" not in new and new[-1] == "--exportProfile=layers.json"


def test_a_profile_builds_a_dynamic_engine_and_runs_the_batch(models: dict[str, Path]) -> None:
    profile = {"input": ((1, 1, 8, 8), (8, 1, 8, 8), (32, 1, 8, 8))}
    args = trtexec_command(
        "10.3.0", onnx=models["fp32"], profile=profile, batch=16, save_engine="model.engine"
    )
    assert args == [
        f"--onnx={models['fp32']}",
        "--saveEngine=model.engine",
        "--minShapes=input:1x1x8x8",
        "--optShapes=input:8x1x8x8",
        "--maxShapes=input:32x1x8x8",
        "--shapes=input:16x1x8x8",
    ]
    with pytest.raises(DeployConfigError, match=r"run shape \[64, 1, 8, 8\].*outside the profile"):
        trtexec_command("10.3.0", onnx=models["fp32"], profile=profile, batch=64)


def test_dynamic_spatial_dims_need_shapes(models: dict[str, Path]) -> None:
    with pytest.raises(DeployConfigError, match="give its full shape in shapes"):
        trtexec_command("10.3.0", onnx=models["dynamic_hw"])
    args = trtexec_command(
        "10.3.0", onnx=models["dynamic_hw"], shapes={"input": (1, 1, 16, 16)}, batch=2
    )
    assert "--shapes=input:2x1x16x16" in args


def test_loading_an_engine_takes_shapes_from_its_sidecar(
    models: dict[str, Path], tmp_path: Path
) -> None:
    engine = saved_engine(models, tmp_path)
    args = trtexec_command("10.3.0", engine=engine, batch=4, use_cuda_graph=True)
    assert args == [f"--loadEngine={engine}", "--shapes=input:4x1x8x8", "--useCudaGraph"]
    bare = tmp_path / "bare.engine"
    bare.write_bytes(b"engine without sidecar")
    assert trtexec_command("10.3.0", engine=bare) == [f"--loadEngine={bare}"]
    with pytest.raises(DeployConfigError, match="no sidecar naming its inputs"):
        trtexec_command("10.3.0", engine=bare, batch=4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"onnx": "a.onnx", "engine": "a.engine"}, "exactly one of an ONNX file or an engine"),
        ({}, "exactly one of an ONNX file or an engine"),
        ({"engine": "a.engine", "save_engine": "b.engine"}, r"\['save_engine'\] only apply"),
        ({"engine": "a.engine", "workspace_mib": 64}, "only apply when trtexec builds"),
    ],
)
def test_impossible_combinations_are_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(DeployConfigError, match=message):
        trtexec_command("10.3.0", **kwargs)


def test_precision_and_device_combinations(models: dict[str, Path]) -> None:
    with pytest.raises(DeployConfigError, match="bf16 needs TensorRT 9 or newer"):
        trtexec_command("8.6.1", onnx=models["fp32"], precision="bf16")
    assert "--bf16" in trtexec_command("10.3.0", onnx=models["fp32"], precision="bf16")
    with pytest.raises(DeployConfigError, match="DLA runs FP16 or INT8 only"):
        trtexec_command("8.6.1", onnx=models["fp32"], dla_core=0)
    args = trtexec_command("8.6.1", onnx=models["fp32"], precision="fp16", dla_core=0)
    assert {"--fp16", "--allowGPUFallback", "--useDLACore=0"} <= set(args)
    with pytest.raises(DeployConfigError, match="is an int8 graph"):
        trtexec_command("10.3.0", onnx=models["int8"], precision="fp16")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"iterations": 0}, "--iterations must be a number >= 1"),
        ({"warmup_ms": -5}, "--warmUp must be a number >= 0"),
        ({"percentiles": (50, 101)}, r"percentiles must lie in \[0, 100\]"),
        ({"batch": 0}, "batch must be an integer >= 1"),
        ({"shapes": {"images": (1, 1, 8, 8)}}, r"shapes names \['images'\]"),
    ],
)
def test_bad_run_settings_are_config_errors(
    models: dict[str, Path], kwargs: dict, message: str
) -> None:
    with pytest.raises(DeployConfigError, match=message):
        trtexec_command("10.3.0", onnx=models["fp32"], **kwargs)


def test_fractional_times_keep_their_value(models: dict[str, Path]) -> None:
    args = trtexec_command("10.3.0", onnx=models["fp32"], warmup_ms=12.5, duration_s=0.25)
    assert args[-2:] == ["--warmUp=12.5", "--duration=0.25"]


# --- finding and running trtexec -------------------------------------------------------------


def test_missing_trtexec_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    if any(path.exists() for path in TRTEXEC_LOCATIONS):
        pytest.skip("trtexec is installed at its NVIDIA location on this machine")
    monkeypatch.setenv("PATH", "")
    with pytest.raises(MissingDependencyError) as error:
        find_trtexec()
    message = str(error.value)
    assert "trtexec not found on PATH or at /usr/src/tensorrt/bin/trtexec" in message
    assert "pass --trtexec PATH" in message


def test_a_trtexec_path_that_does_not_exist_is_named(tmp_path: Path) -> None:
    with pytest.raises(DeployInputError, match=f"trtexec not found at {tmp_path / 'trtexec'}"):
        find_trtexec(tmp_path / "trtexec")


def test_a_binary_without_the_banner_is_not_taken_for_trtexec() -> None:
    true = shutil.which("true")
    assert true is not None
    with pytest.raises(DeployError, match=r"printed no '\[TensorRT vNNNN\]' banner"):
        trtexec_version(true)


def test_a_failing_trtexec_is_reported_with_its_command(models: dict[str, Path]) -> None:
    false = shutil.which("false")
    assert false is not None
    with pytest.raises(DeployError) as error:
        run_trtexec(models["fp32"], trtexec=false, trt_version="10.3.0", iterations=5)
    message = str(error.value)
    assert "trtexec exited with status 1: no output" in message
    assert f"command: {false} --onnx={models['fp32']}" in message and "--iterations=5" in message


# Failure output written from trtexec.cpp / sampleEngines.cpp (v10.3.0 and v11.1): errors go
# through logging.h with "[E] ", TensorRT's own with "[E] [TRT] ", the help text has no prefix.
BUILD_FAILURE_10_3 = """\
&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec --onnx=model.onnx --int8
[11/20/2026-14:02:51] [I] Start parsing network model.
[11/20/2026-14:02:51] [I] Finished parsing network model. Parse time: 0.0213307
[11/20/2026-14:02:53] [E] Engine could not be created from network
[11/20/2026-14:02:53] [E] Building engine failed
[11/20/2026-14:02:53] [E] Failed to create engine from model or file.
[11/20/2026-14:02:53] [E] Engine set up failed
&&&& FAILED TensorRT.trtexec [TensorRT v100300] # trtexec --onnx=model.onnx --int8
"""
UNKNOWN_OPTION_11_1 = (
    "&&&& RUNNING TensorRT.trtexec [TensorRT v110100] [b106] # trtexec --onnx=model.onnx --fp16\n"
    "=== Model Options ===\n"
    "  --onnx=<file>               ONNX model\n"
    "[11/21/2026-08:40:19] [E] Unknown option: --fp16 \n"  # the empty value follows a space
)


def test_the_last_error_lines_of_a_failed_run_are_kept() -> None:
    assert error_lines(BUILD_FAILURE_10_3) == [
        "Building engine failed",
        "Failed to create engine from model or file.",
        "Engine set up failed",
    ]
    assert error_lines(UNKNOWN_OPTION_11_1) == ["Unknown option: --fp16"]
    assert error_lines("segfault\n\ncore dumped\n") == ["segfault", "core dumped"]
    assert error_lines("") == []


# --- parsing recorded output -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("&&&& RUNNING TensorRT.trtexec [TensorRT v8601] # trtexec --help", "8.6.1"),
        ("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec", "10.3.0"),
        ("&&&& RUNNING TensorRT.trtexec [TensorRT v110100] [b106] # trtexec", "11.1.0"),
        ("[11/20/2026-09:14:07] [I] TensorRT version: 10.12.0", "10.12.0"),
    ],
)
def test_the_banner_gives_the_version(text: str, version: str) -> None:
    assert str(parse_banner(text)) == version


def test_fixture_banners_match_their_versions() -> None:
    assert [str(parse_banner(log(name))) for name in FIXTURES] == ["8.6.1", "10.3.0", "11.1.0"]


def test_summary_numbers_8_6() -> None:
    summary = parse_summary(log("trt8.6_orin_fp16"))
    assert summary["throughput_qps"] == 1559.24
    assert summary["latency_ms"] == {
        "min": 0.424835,
        "max": 0.466644,
        "mean": 0.44531,
        "median": 0.445503,
        "p90": 0.458862,
        "p95": 0.461792,
        "p99": 0.466644,
    }
    assert summary["gpu_compute_time_ms"]["median"] == 0.410141
    assert summary["h2d_latency_ms"]["mean"] == 0.021106
    assert summary["d2h_latency_ms"]["p99"] == 0.0145111
    assert summary["enqueue_time_ms"]["max"] == 0.228775
    assert summary["total_host_walltime_s"] == 0.0192402
    assert summary["total_gpu_compute_time_s"] == 0.0123171
    assert summary["warnings"] == ["gpu_compute_unstable"]
    assert summary["gpu_compute_cv_percent"] == 2.71159
    assert (summary["gpu_name"], summary["compute_capability"]) == ("Orin", "8.7")
    assert (summary["warmup_queries"], summary["timing_queries"]) == (311, 30)
    assert summary["settings"]["CUDA Graph"] == "Disabled"
    assert summary["tensorrt_version"] == "8.6.1"


def test_summary_numbers_10_3_without_warnings() -> None:
    summary = parse_summary(log("trt10.3_l4_int8"))
    assert summary["throughput_qps"] == 6008.74
    assert summary["gpu_compute_time_ms"]["median"] == 0.137169
    assert summary["latency_ms"]["p99"] == 0.164841
    assert summary["warnings"] == [] and summary["warning_lines"] == []
    assert summary["settings"] == {
        "Data transfers": "Enabled",
        "Spin-wait": "Enabled",
        "CUDA Graph": "Enabled",
        "Separate profiling": "Disabled",
    }
    assert summary["gpu_name"] == "NVIDIA L4"


def test_summary_warnings_11_1() -> None:
    summary = parse_summary(log("trt11.1_h100_fp16"))
    assert summary["warnings"] == ["h2d_bound"]
    assert summary["warning_lines"][0].startswith("Throughput may be bound by host-to-device")
    assert summary["throughput_qps"] == 8145.57
    assert summary["settings"]["Data transfers"] == "Enabled"  # --includeDataTransfers
    assert "Separate profiling" not in summary["settings"]  # no such line in 11.x


def test_warnings_on_stderr_before_stdout_are_still_found() -> None:
    lines = log("trt8.6_orin_fp16").splitlines()
    warnings = [line for line in lines if "] [W] " in line]
    rest = [line for line in lines if "] [W] " not in line]
    summary = parse_summary("\n".join(warnings + rest))
    assert summary["warnings"] == ["gpu_compute_unstable"]


def test_output_without_a_summary_is_an_input_error() -> None:
    with pytest.raises(DeployInputError, match="no '=== Performance summary ===' block"):
        parse_summary("&&&& FAILED TensorRT.trtexec [TensorRT v100300] # trtexec --onnx=x")


@pytest.mark.parametrize(("name", "count"), list(zip(FIXTURES, (30, 50, 40), strict=True)))
def test_export_times_parse_every_timed_query(name: str, count: int) -> None:
    iterations = parse_export_times(DATA / f"{name}.times.json")
    assert len(iterations) == count
    first = iterations[0]
    assert first.start_compute_ms >= 200  # warm-up (--warmUp=200) queries are not exported
    assert first.latency_ms == pytest.approx(first.h2d_ms + first.compute_ms + first.d2h_ms, 1e-4)


def test_export_times_values_10_3() -> None:
    first = parse_export_times(DATA / "trt10.3_l4_int8.times.json")[0]
    data = json.loads((DATA / "trt10.3_l4_int8.times.json").read_text())[0]
    assert first.compute_ms == data["computeMs"] and first.h2d_ms == data["h2dMs"]
    assert first.end_d2h_ms == data["endD2hMs"]


def test_export_times_errors_name_the_problem(tmp_path: Path) -> None:
    entry = json.loads((DATA / "trt10.3_l4_int8.times.json").read_text())[0]
    del entry["latencyMs"]
    with pytest.raises(DeployInputError, match=r"entry 0 lacks \['latencyMs'\]"):
        parse_export_times([entry])
    with pytest.raises(DeployInputError, match="holds no iterations"):
        parse_export_times([])
    (tmp_path / "cut.json").write_text('[\n  { "startEnqMs" : 1.2')
    with pytest.raises(DeployInputError, match="not readable JSON"):
        parse_export_times(tmp_path / "cut.json")


@pytest.mark.parametrize(
    ("name", "batch", "precision"),
    [
        ("trt8.6_orin_fp16", 1, "fp16"),
        ("trt10.3_l4_int8", 8, "int8"),
        ("trt11.1_h100_fp16", 32, "fp16"),
    ],
)
def test_records_from_recorded_runs_agree_with_trtexecs_summary(
    name: str, batch: int, precision: str
) -> None:
    text = log(name)
    running = next(line for line in text.splitlines() if line.startswith("&&&& RUNNING"))
    command = running.split(" # ", 1)[1].split()
    record = record_from_trtexec(
        text,
        DATA / f"{name}.times.json",
        model="resnet20",
        batch=batch,
        precision=precision,
        command=command,
    )
    summary = parse_summary(text)
    latency = summary["latency_ms"]
    assert (record.backend, record.device, record.batch, record.precision) == (
        "trtexec",
        "cuda",
        batch,
        precision,
    )
    assert record.iterations == summary["timing_queries"]
    assert record.warmup_iters == summary["warmup_queries"]
    # Same queries: our statistics over the exported JSON match trtexec's own summary.
    assert record.p50_ms == pytest.approx(latency["median"], rel=1e-4)
    assert record.mean_ms == pytest.approx(latency["mean"], rel=1e-4)
    assert record.min_ms == pytest.approx(latency["min"], rel=1e-4)
    assert record.max_ms == pytest.approx(latency["max"], rel=1e-4)
    assert record.gpu_compute_ms == pytest.approx(summary["gpu_compute_time_ms"]["median"], 1e-4)
    assert record.throughput_ips == pytest.approx(batch / (record.mean_ms / 1e3))
    details = record.details
    assert details["trtexec_version"] == summary["tensorrt_version"]
    assert details["throughput_qps"] == summary["throughput_qps"]
    assert details["enqueue_median_ms"] == summary["enqueue_time_ms"]["median"]
    assert details["warnings"] == summary["warnings"]
    assert details["command"].startswith(command[0]) and "--exportTimes=" in details["command"]
    assert LatencyRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record


def test_record_details_say_what_ran_10_3() -> None:
    record = record_from_trtexec(
        log("trt10.3_l4_int8"),
        DATA / "trt10.3_l4_int8.times.json",
        model="resnet20",
        batch=8,
        precision="int8",
        command=["trtexec"],
    )
    details = record.details
    assert (details["cuda_graph"], details["spin_wait"], details["data_transfers"]) == (
        True,
        True,
        True,
    )
    assert details["gpu_name"] == "NVIDIA L4" and details["h2d_median_ms"] == 0.0141907
    assert record.gpu_compute_ms == pytest.approx(0.137169, rel=1e-4)


def test_verbose_metric_explanations_after_the_summary_are_not_numbers() -> None:
    """trtexec --verbose explains each metric right after the summary, reusing its labels."""
    text = log("trt10.3_l4_int8")
    explained = text + (
        "\n[11/23/2026-10:00:00] [I] \n"
        "[11/23/2026-10:00:00] [I] === Explanations of the performance metrics ===\n"
        "[11/23/2026-10:00:00] [I] Total Host Walltime: the host walltime from when the first "
        "query (after warmups) is enqueued to when the last query is completed.\n"
        "[11/23/2026-10:00:00] [I] Throughput: the observed throughput computed by dividing "
        "the number of queries by the Total Host Walltime.\n"
    )
    assert parse_summary(explained)["throughput_qps"] == parse_summary(text)["throughput_qps"]


def test_a_fixed_batch_model_refuses_another_batch(tmp_path: Path) -> None:
    fixed = build_classifier(tmp_path / "fixed.onnx", batch=1)
    assert "--onnx=" + str(fixed) in trtexec_command("10.3", onnx=fixed, batch=1)
    with pytest.raises(DeployConfigError, match="fixed batch size of 1, cannot run batch 8"):
        trtexec_command("10.3", onnx=fixed, batch=8)


def test_a_relative_trtexec_path_is_run_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--trtexec ./trtexec` must run that file, not whatever `trtexec` PATH finds."""
    import os
    import stat

    script = tmp_path / "trtexec"
    script.write_text("#!/bin/sh\necho '&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # x'\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", os.defpath)
    found = find_trtexec("./trtexec")
    assert found == script.resolve()
    assert str(trtexec_version(found)) == "10.3.0"
