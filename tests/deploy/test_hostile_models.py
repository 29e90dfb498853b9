"""Hostile model files: damaged ONNX files, pickles offered as models, engines whose sidecar
is missing, garbage or about other bytes.

Each is refused with the project's own error, as one line, before a runner exists and before
TensorRT would be imported (none is installed here, so an error about TensorRT missing would
mean the file went unchecked); no pickle is ever loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import pickle
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deploy.cli
from deploy.errors import DeployError, DeployInputError, EngineMismatchError
from deploy.model_files import pickle_kind
from deploy.onnx_info import inspect_onnx
from deploy.tensorrt.engine import BuildOptions, GpuIdentity, plan_build, save_engine, sidecar_path
from deploy.tensorrt.sidecar import load_engine_info, verify_engine_file
from tests.deploy.hostile import (
    armed_pickle,
    armed_torch_save_archive,
    damaged_copies,
    run_deploy,
)

FAST = ["--warmup", "0", "--iterations", "2", "--threads", "1"]
BACKENDS = ("onnxruntime", "tensorrt", "trtexec", "torch")
TENSORRT_MISSING = "needs the 'tensorrt' package"
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture()
def no_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if `deploy bench` gets as far as building a runner."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a runner was created for {args}")

    monkeypatch.setattr(deploy.cli, "make_runner", refuse)
    monkeypatch.setattr("deploy.tensorrt.runner.TensorRTRunner._activate", refuse)


# --- damaged ONNX files ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        "truncated_half",
        "truncated_to_10_bytes",
        "truncated_by_one_byte",
        "bit_flipped",
        "empty",
        "text",
        "zip",
        "npz",
    ],
)
@pytest.mark.parametrize("command", ["bench", "bench-tensorrt", "bench-trtexec", "build"])
def test_a_damaged_onnx_file_is_named_before_any_runner_or_tensorrt(
    case: str, command: str, classifier: Path, tmp_path: Path, no_runner: None
) -> None:
    model = damaged_copies(classifier, tmp_path / "models")[case]
    argv = {
        "bench": ["bench", str(model), *FAST],
        "bench-tensorrt": ["bench", str(model), "--backend", "tensorrt", *FAST],
        "bench-trtexec": ["bench", str(model), "--backend", "trtexec", *FAST],
        "build": ["build", str(model)],
    }[command]
    outcome = run_deploy(argv, tmp_path)
    line = outcome.error_line()
    assert outcome.code == 1
    assert str(model) in line and ("not a readable ONNX file" in line or "empty" in line)
    assert TENSORRT_MISSING not in line and "trtexec not found" not in line
    assert not (tmp_path / "results").exists() and not (tmp_path / "engines").exists()


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    cut=st.integers(min_value=0),
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=4),
)
def test_any_truncation_or_flipped_bytes_read_or_refuse(
    classifier: Path, tmp_path_factory: pytest.TempPathFactory, cut: int, flips: list
) -> None:
    """inspect_onnx on a damaged copy gives facts or a DeployInputError; `deploy bench` on it
    exits 0, 1 or 2 with one error line (ONNX has no checksum: a flipped weight can run)."""
    data = bytearray(classifier.read_bytes())
    for index, value in flips:
        data[index % len(data)] = value
    folder = tmp_path_factory.mktemp("damaged")
    model = folder / "model.onnx"
    model.write_bytes(bytes(data[: len(data) - cut % len(data)]))
    with contextlib.suppress(DeployInputError):
        inspect_onnx(model)
    outcome = run_deploy(["bench", str(model), *FAST, "--output", "r.json"], folder)
    assert outcome.code in (0, 1, 2)
    if outcome.code:
        outcome.error_line()
        assert not (folder / "r.json").exists()


# --- pickles offered as models -------------------------------------------------------------


def test_the_armed_pickles_do_run_code_when_unpickled(tmp_path: Path) -> None:
    """The payload the next tests rely on: loading it really creates the marker file."""
    marker = tmp_path / "MARKER"
    pickle.loads(armed_pickle(tmp_path / "model.pt", marker).read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("suffix", [".pt", ".pth", ".pkl", ".pt2", ".onnx"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_pickle_is_refused_by_every_backend_and_never_loaded(
    protocol: int, suffix: str, backend: str, tmp_path: Path
) -> None:
    if backend == "torch":
        pytest.importorskip("torch")  # without it the answer is "install torch", also fine
    marker = tmp_path / "MARKER"
    model = armed_pickle(tmp_path / f"model{suffix}", marker, protocol)
    argv = ["bench", str(model), "--backend", backend, "--allow-pickle", *FAST]
    outcome = run_deploy(argv, tmp_path)
    line = outcome.error_line()
    assert outcome.code == 1, line
    assert "is a Python pickle" in line and "does not load pickles" in line
    assert "export the model to ONNX" in line
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".pt2", ".onnx"])
@pytest.mark.parametrize("command", ["bench-torch", "bench-tensorrt", "build"])
def test_a_torch_save_archive_is_refused_and_never_loaded(
    suffix: str, command: str, tmp_path: Path
) -> None:
    if command == "bench-torch":
        pytest.importorskip("torch")
    marker = tmp_path / "MARKER"
    model = armed_torch_save_archive(tmp_path / f"weights{suffix}", marker)
    argv = {
        "bench-torch": ["bench", str(model), "--backend", "torch", "--allow-pickle"],
        "bench-tensorrt": ["bench", str(model), "--backend", "tensorrt"],
        "build": ["build", str(model)],
    }[command]
    line = run_deploy(argv, tmp_path).error_line()
    assert "torch.save archive" in line and "does not load pickles" in line
    assert not marker.exists()


def test_pickle_sniffing_leaves_model_files_alone(classifier: Path, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    program = torch.export.export(torch.nn.Linear(3, 2), (torch.zeros(1, 3),))
    torch.export.save(program, tmp_path / "linear.pt2")
    assert pickle_kind(tmp_path / "linear.pt2") is None  # torch.export: --allow-pickle decides
    assert pickle_kind(classifier) is None
    torch.save(torch.nn.Linear(3, 2).state_dict(), tmp_path / "weights.pt")
    assert pickle_kind(tmp_path / "weights.pt") == (
        "a torch.save archive (a zip holding a pickle, data.pkl)"
    )


# --- engines and their sidecars ----------------------------------------------------------------


@pytest.fixture()
def engine(models: dict[str, Path], tmp_path: Path) -> Path:
    """An engine file (stand-in bytes) with a real sidecar, as `deploy build` writes them."""
    info = inspect_onnx(models["fp32"])
    options = BuildOptions(precision="fp32", max_batch=8)
    path = tmp_path / "engines" / "model.fp32.b8.engine"
    save_engine(
        path,
        b"ftrt stand-in for a serialized TensorRT engine" * 4,
        plan=plan_build(info, options, "10.3.0"),
        options=options,
        gpu=GpuIdentity("NVIDIA L4", (8, 9)),
        onnx_path=models["fp32"],
        inputs=info.inputs,
        outputs=info.outputs,
    )
    return path


def _truncate(engine: Path) -> None:
    engine.write_bytes(engine.read_bytes()[:-7])


def _swap(engine: Path) -> None:
    engine.write_bytes(b"ftrt another build's engine" * 4)


def _append(engine: Path) -> None:
    engine.write_bytes(engine.read_bytes() + b"\x00")


def _drop_sidecar(engine: Path) -> None:
    sidecar_path(engine).unlink()


def _garble_sidecar(engine: Path) -> None:
    sidecar_path(engine).write_text('{"schema": "deploy.engine/1", "tensorrt_ver')


def _pickle_engine(engine: Path) -> None:  # a pickle whose sidecar hash matches it
    armed_pickle(engine, engine.parent / "MARKER")
    sidecar = json.loads(sidecar_path(engine).read_text())
    sidecar["engine_sha256"] = hashlib.sha256(engine.read_bytes()).hexdigest()
    sidecar_path(engine).write_text(json.dumps(sidecar))


@pytest.mark.parametrize(
    ("damage", "error", "message"),
    [
        (_truncate, EngineMismatchError, "is not the engine its sidecar .* describes"),
        (_swap, EngineMismatchError, "changed, truncated or swapped after the build"),
        (_append, EngineMismatchError, "its SHA-256 is .*, the sidecar records"),
        (_drop_sidecar, EngineMismatchError, "has no sidecar .*deploy build"),
        (_garble_sidecar, DeployInputError, "is not readable JSON"),
        (_pickle_engine, DeployInputError, "is a Python pickle .* not a TensorRT engine"),
    ],
)
def test_an_engine_that_its_sidecar_does_not_vouch_for_is_refused_before_tensorrt(
    engine: Path, damage, error: type, message: str, tmp_path: Path, no_runner: None
) -> None:  # noqa: ANN001
    damage(engine)
    with pytest.raises(error, match=message):
        verify_engine_file(engine)
    for backend in ("tensorrt", "trtexec"):
        if damage is _drop_sidecar and backend == "trtexec":
            continue  # trtexec may load an engine without a sidecar (trtexec checks it)
        outcome = run_deploy(["bench", str(engine), "--backend", backend, *FAST], tmp_path)
        line = outcome.error_line()
        assert outcome.code == 1 and TENSORRT_MISSING not in line
        assert "trtexec not found" not in line
    assert not (engine.parent / "MARKER").exists()


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed, so it would run the stand-in")
def test_a_sound_engine_gets_as_far_as_tensorrt(engine: Path, tmp_path: Path) -> None:
    """The control: the same engine undamaged passes every file check."""
    assert verify_engine_file(engine).precision == "fp32"
    line = run_deploy(["bench", str(engine), "--backend", "tensorrt"], tmp_path).error_line()
    assert TENSORRT_MISSING in line


def test_a_damaged_engine_at_the_build_output_is_rebuilt_not_reused(
    engine: Path, models: dict[str, Path], tmp_path: Path
) -> None:
    """`deploy build` reuses an engine whose sidecar says it came from this ONNX file with
    these options; a truncated one must not pass (the rebuild then stops: no TensorRT here)."""
    argv = ["build", str(models["fp32"]), "--batch", "1,8", "--output", str(engine)]
    outcome = run_deploy(argv, tmp_path)
    assert outcome.code == 0 and f"reusing {engine}" in outcome.out  # the control
    _truncate(engine)
    outcome = run_deploy(argv, tmp_path)
    assert "reusing" not in outcome.out
    assert outcome.code == 1 and TENSORRT_MISSING in outcome.error_line()


SIDECAR_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=8),
    st.lists(st.one_of(st.integers(), st.text(max_size=3), st.none()), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    key=st.sampled_from(
        [
            "schema",
            "engine_sha256",
            "tensorrt_version",
            "gpu_name",
            "compute_capability",
            "precision",
            "inputs",
            "outputs",
            "build_options",
            "profile",
            "source_onnx",
        ]
    ),
    value=SIDECAR_VALUES,
    delete=st.booleans(),
)
def test_a_mangled_sidecar_reads_or_is_refused(
    engine: Path, key: str, value: object, delete: bool
) -> None:
    sidecar = json.loads(sidecar_path(engine).read_text())
    original = json.loads(json.dumps(sidecar))
    if delete:
        sidecar.pop(key)
    else:
        sidecar[key] = value
    sidecar_path(engine).write_text(json.dumps(sidecar))
    try:
        info = load_engine_info(engine)
    except DeployError as exc:
        assert isinstance(exc, DeployInputError) and "\n" not in str(exc)
    else:  # what was accepted is what readers rely on
        assert all(isinstance(d, int) for d in info.compute_capability)
        assert all(isinstance(s.name, str) for s in (*info.inputs, *info.outputs))
    finally:
        sidecar_path(engine).write_text(json.dumps(original))
