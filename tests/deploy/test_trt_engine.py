"""Engine build planning, sidecars and compatibility checks, on real ONNX files.

`plan_build` and the sidecar code need no TensorRT, so they run everywhere. Building and
running engines needs TensorRT and a GPU: those tests are marked and skip with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deploy.errors import (
    DeployConfigError,
    DeployInputError,
    EngineMismatchError,
    MissingDependencyError,
)
from deploy.onnx_info import inspect_onnx
from deploy.runners import make_runner
from deploy.tensorrt.engine import (
    BuildOptions,
    GpuIdentity,
    build_engine,
    check_engine_compatible,
    load_engine_info,
    plan_build,
    save_engine,
    sidecar_path,
)

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
REPO_ROOT = Path(__file__).resolve().parents[2]


def plan(models: dict[str, Path], model: str, version: str, **options: object):  # noqa: ANN201
    return plan_build(inspect_onnx(models[model]), BuildOptions(**options), version)


# --- precision routes per TensorRT version ------------------------------------------------


@pytest.mark.parametrize(
    ("version", "model", "precision", "network_flags", "builder_flags", "strongly_typed"),
    [
        ("8.6.1", "fp32", "fp32", ("EXPLICIT_BATCH",), (), False),
        ("8.6.1", "fp32", "fp16", ("EXPLICIT_BATCH",), ("FP16",), False),
        ("8.6.1", "int8", "int8", ("EXPLICIT_BATCH",), ("INT8",), False),
        ("10.3.0", "fp32", "fp16", (), ("FP16",), False),
        ("10.3.0", "fp16", "fp16", (), ("FP16",), False),
        ("10.3.0", "fp32", "bf16", (), ("BF16",), False),
        ("10.3.0", "int8", "int8", (), ("INT8",), False),
        ("10.12", "fp32", "fp16", (), ("FP16",), False),
        ("11.1.0", "fp16", "fp16", (), (), True),
        ("11.1.0", "int8", "int8", (), (), True),
        ("11.1.0", "fp32", "fp32", (), (), True),
    ],
)
def test_plan_flags_per_version_and_precision(
    models: dict[str, Path],
    version: str,
    model: str,
    precision: str,
    network_flags: tuple[str, ...],
    builder_flags: tuple[str, ...],
    strongly_typed: bool,
) -> None:
    result = plan(models, model, version, precision=precision)
    assert result.network_flags == network_flags
    assert result.builder_flags == builder_flags
    assert result.strongly_typed is strongly_typed
    assert result.precision == precision and result.tensorrt_version.startswith(version[:4])


def test_fp16_on_tensorrt_11_needs_the_fp16_onnx(models: dict[str, Path]) -> None:
    with pytest.raises(DeployConfigError) as error:
        plan(models, "fp32", "11.1.0", precision="fp16")
    message = str(error.value)
    assert "TensorRT 11 builds only strongly typed networks" in message
    assert "model.onnx is an fp32 graph" in message
    assert "pass the FP16 ONNX (`compressor export` writes model.fp16.onnx)" in message


@pytest.mark.parametrize("version", ["8.6.1", "10.3.0", "10.12", "11.1.0"])
def test_int8_without_qdq_nodes_is_refused_on_every_version(
    models: dict[str, Path], version: str
) -> None:
    with pytest.raises(DeployConfigError, match="int8 needs Q/DQ nodes.*pass the QDQ ONNX"):
        plan(models, "fp32", version, precision="int8")


def test_a_qdq_graph_cannot_be_built_as_fp16(models: dict[str, Path]) -> None:
    with pytest.raises(DeployConfigError, match="is an int8 graph.*ask for precision int8"):
        plan(models, "int8", "10.3.0", precision="fp16")


def test_an_fp16_graph_is_not_recorded_as_fp32(models: dict[str, Path]) -> None:
    with pytest.raises(DeployConfigError, match="is an fp16 graph"):
        plan(models, "fp16", "11.1.0", precision="fp32")
    with pytest.raises(DeployConfigError, match="is an fp16 graph"):
        plan(models, "fp16", "10.3.0", precision="fp32")


def test_deprecated_precision_flags_are_noted_from_10_12(models: dict[str, Path]) -> None:
    assert plan(models, "fp32", "10.11.0", precision="fp16").notes == ()
    (note,) = plan(models, "fp32", "10.12.0", precision="fp16").notes
    assert "BuilderFlag.FP16 is deprecated since TensorRT 10.12" in note


def test_strong_typing_on_10_x_is_opt_in_and_needs_the_matching_graph(
    models: dict[str, Path],
) -> None:
    result = plan(models, "fp16", "10.3.0", precision="fp16", strongly_typed=True)
    assert result.network_flags == ("STRONGLY_TYPED",) and result.builder_flags == ()
    with pytest.raises(DeployConfigError, match="was asked for a strongly typed network"):
        plan(models, "fp32", "10.3.0", precision="fp16", strongly_typed=True)
    with pytest.raises(DeployConfigError, match="strongly_typed needs TensorRT 9 or newer"):
        plan(models, "fp32", "8.6.1", strongly_typed=True)
    with pytest.raises(DeployConfigError, match="builds only strongly typed networks"):
        plan(models, "fp32", "11.1.0", strongly_typed=False)


def test_bf16_needs_tensorrt_9_and_an_ampere_gpu(models: dict[str, Path]) -> None:
    with pytest.raises(DeployConfigError, match="bf16 needs TensorRT 9 or newer, this is 8.6.1"):
        plan(models, "fp32", "8.6.1", precision="bf16")
    assert plan(models, "fp32", "10.3.0", precision="bf16").min_compute_capability == (8, 0)
    assert plan(models, "fp32", "10.3.0", precision="fp16").min_compute_capability is None


def test_dla_runs_fp16_or_int8_with_gpu_fallback(models: dict[str, Path]) -> None:
    with pytest.raises(DeployConfigError, match="DLA runs FP16 or INT8 only"):
        plan(models, "fp32", "10.3.0", dla_core=0)
    result = plan(models, "fp32", "8.6.1", precision="fp16", dla_core=1)
    assert result.builder_flags == ("FP16", "GPU_FALLBACK") and result.dla_core == 1
    no_fallback = plan(models, "int8", "11.1.0", precision="int8", dla_core=0, gpu_fallback=False)
    assert no_fallback.builder_flags == ()


@pytest.mark.parametrize("version", ["7.1.3", "8.4.3", "not-a-version"])
def test_unsupported_tensorrt_versions_are_refused(models: dict[str, Path], version: str) -> None:
    with pytest.raises(DeployConfigError, match="TensorRT"):
        plan(models, "fp32", version)


# --- optimization profiles ------------------------------------------------------------------


def test_a_dynamic_batch_gets_its_profile_from_the_batch_sizes(models: dict[str, Path]) -> None:
    result = plan(models, "fp32", "10.3.0", min_batch=1, opt_batch=8, max_batch=32)
    assert result.profile == {"input": ((1, 1, 8, 8), (8, 1, 8, 8), (32, 1, 8, 8))}
    assert plan(models, "fp32", "10.3.0", max_batch=16).profile["input"][1] == (16, 1, 8, 8)


def test_dynamic_spatial_dims_need_an_explicit_profile(models: dict[str, Path]) -> None:
    with pytest.raises(DeployConfigError, match=r"dynamic dims at axes \[0, 2, 3\]"):
        plan(models, "dynamic_hw", "10.3.0")
    ranges = ((1, 1, 8, 8), (4, 1, 16, 16), (8, 1, 32, 32))
    assert plan(models, "dynamic_hw", "10.3.0", profile={"input": ranges}).profile == {
        "input": ranges
    }


def test_profile_mistakes_name_the_input(models: dict[str, Path]) -> None:
    with pytest.raises(DeployConfigError, match=r"profile names \['images'\]"):
        plan(models, "fp32", "10.3.0", profile={"images": ((1, 1, 8, 8),) * 3})
    with pytest.raises(DeployConfigError, match=r"changes fixed axes \[2, 3\]"):
        plan(models, "fp32", "10.3.0", profile={"input": ((1, 1, 9, 9),) * 3})
    with pytest.raises(DeployConfigError, match="min <= opt <= max"):
        BuildOptions(profile={"input": ((4, 1, 8, 8), (1, 1, 8, 8), (8, 1, 8, 8))})


def test_a_static_model_needs_no_profile(models: dict[str, Path]) -> None:
    assert plan(models, "fixed_batch", "11.1.0", max_batch=8).profile == {}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"precision": "int4"}, "precision must be one of"),
        ({"min_batch": 0}, "min_batch must be an integer >= 1"),
        ({"max_batch": 4, "opt_batch": 8}, "opt_batch 8 is above max_batch 4"),
        ({"builder_optimization_level": 6}, "builder_optimization_level must be 0-5"),
        ({"strongly_typed": "yes"}, "strongly_typed must be"),
        ({"dla_core": -1}, "dla_core must be an integer >= 0"),
    ],
)
def test_build_options_are_validated(options: dict[str, object], message: str) -> None:
    with pytest.raises(DeployConfigError, match=message):
        BuildOptions(**options)


def test_build_options_round_trip_through_dicts(tmp_path: Path) -> None:
    options = BuildOptions(
        precision="fp16",
        workspace_mib=512,
        max_batch=32,
        timing_cache=tmp_path / "cache.bin",
        profile={"input": ((1, 1, 8, 8), (8, 1, 8, 8), (32, 1, 8, 8))},
    )
    data = json.loads(json.dumps(options.to_dict()))
    assert BuildOptions.from_dict(data) == options
    with pytest.raises(DeployConfigError, match=r"unknown build options \['fp16'\]"):
        BuildOptions.from_dict({"fp16": True})


# --- building without TensorRT: the errors a user sees first ---------------------------------


def test_a_file_that_is_not_onnx_is_refused_before_tensorrt(tmp_path: Path) -> None:
    engine_by_mistake = tmp_path / "model.engine"
    engine_by_mistake.write_bytes(b"ftrt\x00\x00\x01serialized engine, not protobuf" * 8)
    with pytest.raises(DeployInputError, match="not a readable ONNX file"):
        build_engine(engine_by_mistake, tmp_path / "out.engine")
    with pytest.raises(DeployInputError, match="ONNX file not found"):
        build_engine(tmp_path / "absent.onnx", tmp_path / "out.engine")
    assert not (tmp_path / "out.engine").exists()


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed, so it is not missing")
def test_building_without_tensorrt_says_what_to_install(
    models: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(MissingDependencyError) as error:
        build_engine(models["fp32"], tmp_path / "model.engine")
    assert "building a TensorRT engine needs the 'tensorrt' package" in str(error.value)
    assert "NVIDIA container" in str(error.value)


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed, so it is not missing")
def test_the_tensorrt_runner_without_tensorrt_says_what_to_install(
    models: dict[str, Path], tmp_path: Path
) -> None:
    from deploy.tensorrt.runner import TensorRTRunner

    engine = saved_engine(models, tmp_path)  # a sound file: only TensorRT is missing
    with pytest.raises(MissingDependencyError, match="the TensorRT runner needs the 'tensorrt'"):
        TensorRTRunner(engine)
    with pytest.raises(MissingDependencyError, match="the TensorRT runner needs the 'tensorrt'"):
        make_runner("tensorrt", engine, cuda_graph=True)
    with pytest.raises(DeployInputError, match="TensorRT engine not found"):  # the file first
        TensorRTRunner(tmp_path / "absent.engine")


def test_runner_settings_are_checked_before_tensorrt_is_imported(
    models: dict[str, Path], tmp_path: Path
) -> None:
    from deploy.tensorrt.runner import TensorRTRunner

    engine = saved_engine(models, tmp_path)
    with pytest.raises(DeployConfigError, match="cuda_buffers must be one of auto, torch, cuda"):
        TensorRTRunner(engine, cuda_buffers="cupy")  # type: ignore[arg-type]
    with pytest.raises(DeployConfigError, match="device must be 'cuda' or 'cuda:N', got 'gpu'"):
        TensorRTRunner(engine, device="gpu")


def test_trtexec_is_not_a_runner() -> None:
    with pytest.raises(DeployConfigError, match="backend 'trtexec' is not a runner.*run_trtexec"):
        make_runner("trtexec", "model.onnx")


# --- sidecar and compatibility ---------------------------------------------------------------

L4 = GpuIdentity("NVIDIA L4", (8, 9), "550.54.15", "torch")


def saved_engine(models: dict[str, Path], tmp_path: Path, version: str = "10.3.0.26") -> Path:
    """An engine file with a real sidecar; the engine bytes stand in for TensorRT's output."""
    info = inspect_onnx(models["fp32"])
    options = BuildOptions(precision="fp16", max_batch=32)
    engine = tmp_path / "engines" / "model.fp16.engine"
    save_engine(
        engine,
        b"stand-in for a serialized TensorRT engine",
        plan=plan_build(info, options, version),
        options=options,
        gpu=L4,
        onnx_path=models["fp32"],
        inputs=info.inputs,
        outputs=info.outputs,
    )
    return engine


def test_sidecar_is_written_next_to_the_engine_and_read_back(
    models: dict[str, Path], tmp_path: Path
) -> None:
    engine = saved_engine(models, tmp_path)
    assert sidecar_path(engine) == engine.with_name("model.fp16.engine.json")
    assert not list(engine.parent.glob(".*.tmp"))  # atomic writes leave no temp files
    info = load_engine_info(engine)
    assert (info.tensorrt_version, info.gpu_name, info.compute_capability) == (
        "10.3.0.26",
        "NVIDIA L4",
        (8, 9),
    )
    assert info.precision == "fp16"
    assert [(s.name, s.shape, s.dtype) for s in info.inputs] == [
        ("input", (None, 1, 8, 8), "float32")
    ]
    assert info.profile == {
        "input": {"min": [1, 1, 8, 8], "opt": [32, 1, 8, 8], "max": [32, 1, 8, 8]}
    }
    sidecar = info.sidecar
    assert sidecar["schema"] == "deploy.engine/1" and sidecar["driver"] == "550.54.15"
    assert sidecar["builder_flags"] == ["FP16"] and sidecar["build_options"]["max_batch"] == 32
    assert sidecar["source_onnx"]["sha256"] == _sha256(models["fp32"])
    assert sidecar["engine_sha256"] == _sha256(engine)


def test_a_matching_device_passes_the_check(models: dict[str, Path], tmp_path: Path) -> None:
    sidecar = load_engine_info(saved_engine(models, tmp_path)).sidecar
    check_engine_compatible(sidecar, "10.3.0.26", "NVIDIA L4", (8, 9))
    check_engine_compatible(sidecar, "10.3.0", " nvidia l4 ", [8, 9])  # no build number: same


def test_another_tensorrt_version_names_both_sides(models: dict[str, Path], tmp_path: Path) -> None:
    sidecar = load_engine_info(saved_engine(models, tmp_path)).sidecar
    with pytest.raises(EngineMismatchError) as error:
        check_engine_compatible(sidecar, "10.12.0", "NVIDIA L4", (8, 9))
    message = str(error.value)
    assert "model.fp16.engine was built with TensorRT 10.3.0.26 on NVIDIA L4" in message
    assert "this device has TensorRT 10.12.0 on NVIDIA L4" in message
    assert "the TensorRT version differs" in message
    assert "rebuild the engine on this device with `deploy build`" in message


def test_another_gpu_names_both_sides(models: dict[str, Path], tmp_path: Path) -> None:
    sidecar = load_engine_info(saved_engine(models, tmp_path)).sidecar
    with pytest.raises(EngineMismatchError) as error:
        check_engine_compatible(sidecar, "10.3.0.26", "Orin", (8, 7))
    message = str(error.value)
    assert "on NVIDIA L4 (compute capability 8.9)" in message
    assert "on Orin (compute capability 8.7)" in message and "the GPU differs" in message
    with pytest.raises(EngineMismatchError, match="TensorRT version and GPU differ"):
        check_engine_compatible(sidecar, "8.6.1", "Orin", (8, 7))


def test_a_missing_or_broken_sidecar_is_an_error(models: dict[str, Path], tmp_path: Path) -> None:
    engine = tmp_path / "copied.engine"
    engine.write_bytes(b"engine without its sidecar")
    with pytest.raises(
        EngineMismatchError, match="has no sidecar copied.engine.json.*deploy build"
    ):
        load_engine_info(engine)
    sidecar_path(engine).write_text("{not json")
    with pytest.raises(DeployInputError, match="not readable JSON"):
        load_engine_info(engine)
    sidecar_path(engine).write_text(json.dumps({"schema": "deploy.engine/0"}))
    with pytest.raises(DeployInputError, match="has schema 'deploy.engine/0'"):
        load_engine_info(engine)


def test_engine_modules_import_without_torch_or_tensorrt() -> None:
    code = (
        "import sys, deploy.tensorrt.engine, deploy.tensorrt.trtexec, deploy.tensorrt.runner\n"
        "print(sorted(m for m in ('torch', 'tensorrt') if m in sys.modules))"
    )
    env = os.environ | {"PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- on a device with TensorRT and a GPU -----------------------------------------------------


def _buffers_missing(source: str) -> str:
    """Why the runner cannot take GPU buffers from `source` here ('' when it can)."""
    if source == "torch":
        if importlib.util.find_spec("torch") is None:
            return "torch is not installed"
        import torch

        return "" if torch.cuda.is_available() else "torch sees no CUDA GPU"
    try:
        from deploy.tensorrt.cuda_python import cuda_runtime

        err, count = cuda_runtime().cudaGetDeviceCount()
    except MissingDependencyError:
        return "cuda-python is not installed"
    return "" if int(err) == 0 and count > 0 else "cuda-python sees no GPU"


def _device_missing(source: str = "any") -> str:
    """Why engines cannot be built and run here ('' when they can)."""
    missing = [] if HAS_TENSORRT else ["TensorRT is not installed"]
    sources = ("torch", "cuda-python") if source == "any" else (source,)
    reasons = [_buffers_missing(s) for s in sources]
    if all(reasons):
        missing.append(" and ".join(reasons))
    return "; ".join(missing)


needs_device = pytest.mark.skipif(bool(_device_missing()), reason=_device_missing() or "ok")


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize(
    "buffers",
    [
        pytest.param(source, marks=pytest.mark.skipif(bool(why), reason=why or "ok"))
        for source, why in (
            ("torch", _device_missing("torch")),
            ("cuda-python", _device_missing("cuda-python")),
        )
    ],
)
@pytest.mark.parametrize(
    ("model", "precision", "atol"), [("fp32", "fp32", 1e-4), ("fp16", "fp16", 2e-2)]
)
def test_built_engine_matches_onnxruntime(
    models: dict[str, Path], tmp_path: Path, model: str, precision: str, atol: float, buffers: str
) -> None:
    """Both sources of GPU buffers give onnxruntime's outputs, with and without CUDA graphs."""
    from deploy.tensorrt.runner import TensorRTRunner

    engine = tmp_path / f"{model}.engine"
    info = build_engine(models[model], engine, BuildOptions(precision=precision, max_batch=8))
    assert info.precision == precision and sidecar_path(engine).is_file()
    feed = {"input": np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)}
    with make_runner("onnxruntime", models["fp32"]) as reference:
        expected = reference.infer(feed)["logits"]
    for cuda_graph in (False, True):
        with TensorRTRunner(engine, cuda_graph=cuda_graph, cuda_buffers=buffers) as runner:
            assert runner.precision == precision
            outputs = [runner.infer(feed)["logits"] for _ in range(3)]  # 3rd replays the graph
            assert len(runner.take_gpu_times_ms()) == 3 and runner.last_gpu_ms > 0
            details = runner.record_details()
            assert details["cuda_buffers"].startswith(buffers)
            assert details["cuda_graph"] is cuda_graph, details.get("cuda_graph_fallback")
        for got in outputs:
            np.testing.assert_allclose(got.astype(np.float32), expected, atol=atol, rtol=atol)


@pytest.mark.tensorrt
@pytest.mark.gpu
@needs_device
def test_a_batch_above_the_profile_max_is_a_clear_error(
    models: dict[str, Path], tmp_path: Path
) -> None:
    from deploy.tensorrt.runner import TensorRTRunner

    engine = tmp_path / "small.engine"
    build_engine(models["fp32"], engine, BuildOptions(max_batch=4))
    with TensorRTRunner(engine) as runner, pytest.raises(DeployInputError) as error:
        runner.infer({"input": np.zeros((8, 1, 8, 8), np.float32)})
    assert "batch 8 is above the engine's profile max 4 for input 'input'" in str(error.value)
    assert "rebuild it with `deploy build --batch` including that batch" in str(error.value)


def test_tensorrt_8_5_builds_but_has_no_optimization_level(models: dict[str, Path]) -> None:
    assert plan(models, "fp32", "8.5.2").network_flags == ("EXPLICIT_BATCH",)
    with pytest.raises(DeployConfigError, match="needs TensorRT 8.6 or newer"):
        plan(models, "fp32", "8.5.2", builder_optimization_level=3)
