"""The whole pipeline on a tiny recipe, and the CLI's behaviour on good and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from compressor.cli import main
from compressor.recipe.sections import recipe_from_dict

TINY = {
    "name": "tiny",
    "model": {"name": "resnet8", "width": 0.5},
    "data": {"name": "digits", "image_size": 8},
    "prune": {"criterion": "grasp", "blocks": 1},
    "train": {"epochs": 2, "batch_size": 64, "lr": 0.05, "progress": "none"},
    "shrink": {"ratio": 0.5, "round_to": 4, "fine_tune_epochs": 1},
    "bench": {"batch_sizes": [1, 2], "warmup_iters": 1, "iterations": 5},
}


def write_recipe(tmp_path: Path, changes: dict, *, blocks: int, epochs: int = 2) -> Path:
    """TINY with `changes`, exporting FP32 only and timing onnxruntime only: for tests that
    run the whole pipeline on other models or launchers."""
    recipe = {
        **TINY,
        "prune": {"criterion": "snip", "blocks": blocks},
        "train": {**TINY["train"], "epochs": epochs},
        "export": {"int8": False, "fp16": False, "bf16": False},
        "bench": {
            "backends": ["onnxruntime"],
            "batch_sizes": [1],
            "iterations": 5,
            "warmup_iters": 1,
        },
        **changes,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(recipe))
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:  # noqa: ANN001
    from compressor.workflows.pipeline import run_pipeline

    out = tmp_path_factory.mktemp("run")
    run_pipeline(recipe_from_dict(TINY), out, log=lambda _: None)
    return out


def test_report_has_three_variants_with_the_documented_fields(tiny_run: Path) -> None:
    report = json.loads((tiny_run / "report.json").read_text())
    assert [v["name"] for v in report["variants"]] == ["dense", "ticket", "shrunk"]
    dense, ticket, shrunk = report["variants"]
    for v in report["variants"]:
        assert 0.0 <= v["accuracy"] <= 1.0
        assert v["accuracy"] > 0.2  # 10 classes: chance is 0.1, even after 2 epochs
        assert v["parity_max_abs_diff"] <= 1e-4 and v["parity_top1_agreement"] == 1.0
        assert Path(v["onnx"]).is_file()
        assert v["epoch_seconds"] > 0 and v["train_seconds"] > 0
        keys = {(r["backend"], r["batch"]) for r in v["latency"]}
        assert {("onnxruntime", 1), ("onnxruntime", 2), ("torch", 1), ("torch", 2)} <= keys
        for r in v["latency"]:
            assert 0 < r["p50_ms"] <= r["p99_ms"]
            assert r["throughput_ips"] > 0
    assert dense["removed_blocks"] == [] and len(ticket["removed_blocks"]) == 1
    assert shrunk["removed_blocks"] == ticket["removed_blocks"]
    assert ticket["macs"] < dense["macs"] and shrunk["macs"] < ticket["macs"]
    assert shrunk["params"] < ticket["params"] < dense["params"]
    assert report["environment"]["cpu_model"]
    assert (tiny_run / "report.md").read_text().count("| shrunk |") >= 1
    assert (tiny_run / "accuracy_vs_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_onnx_metadata_names_the_architecture(tiny_run: Path) -> None:
    report = json.loads((tiny_run / "report.json").read_text())
    ticket = report["variants"][1]
    model = onnx.load(ticket["onnx"])
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["spec_sha256"] == ticket["spec_sha256"]
    assert float(meta["accuracy"]) == pytest.approx(ticket["accuracy"])
    assert json.loads(meta["spec"])["removed_blocks"] == ticket["removed_blocks"]
    # The removed block is physically absent: fewer Conv nodes than the dense graph.
    dense = onnx.load(report["variants"][0]["onnx"])
    convs = lambda m: sum(n.op_type == "Conv" for n in m.graph.node)  # noqa: E731
    assert convs(dense) - convs(model) == 2


def test_resume_reuses_finished_stages(tiny_run: Path) -> None:
    from compressor.workflows.pipeline import run_pipeline

    before = (tiny_run / "dense" / "model" / "weights.safetensors").read_bytes()
    logs: list[str] = []
    run_pipeline(recipe_from_dict(TINY), tiny_run, resume=True, log=logs.append)
    assert any("reusing finished stage" in line for line in logs)
    assert (tiny_run / "dense" / "model" / "weights.safetensors").read_bytes() == before


def test_rerun_without_resume_refuses_to_overwrite(tiny_run: Path, capsys) -> None:  # noqa: ANN001
    recipe = tiny_run / "recipe.yaml"
    recipe.write_text(json.dumps(TINY))
    code = main(["run", str(recipe), "--out", str(tiny_run)])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip().splitlines() == [
        f"compressor: error: {tiny_run} already holds a run; pass --resume to continue it or "
        "choose another --out"
    ]
    # Nothing of the finished run was touched.
    assert json.loads((tiny_run / "recipe.json").read_text())["name"] == "tiny"
    assert (tiny_run / "report.json").is_file()


def test_resume_with_another_recipe_is_refused(tiny_run: Path) -> None:
    from compressor.errors import ConfigError
    from compressor.workflows.pipeline import run_pipeline

    changed = recipe_from_dict({**TINY, "train": {**TINY["train"], "epochs": 3}})
    with pytest.raises(ConfigError, match=r"recipe differs.*\['train'\]"):
        run_pipeline(changed, tiny_run, resume=True, log=lambda _: None)


def test_resume_accepts_a_changed_export_section(tiny_run: Path) -> None:
    """Export and benchmark run again on resume, so their settings may change; training's not."""
    from compressor.workflows.pipeline import run_pipeline

    changed = recipe_from_dict({**TINY, "export": {"fp16": False}})
    logs: list[str] = []
    result = run_pipeline(changed, tiny_run, resume=True, log=logs.append)
    assert any("reusing finished stage" in line for line in logs)
    assert "fp16" not in result.report["variants"][0] and "int8" in result.report["variants"][0]
    run_pipeline(recipe_from_dict(TINY), tiny_run, resume=True, log=lambda _: None)  # restore


def test_stages_one_by_one(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(json.dumps(TINY))
    assert main(["prune", str(recipe), "--out", str(tmp_path / "p")]) == 0
    pruned = json.loads(capsys.readouterr().out)
    assert len(pruned["removed_blocks"]) == 1
    assert main(["train", str(tmp_path / "p"), str(recipe), "--out", str(tmp_path / "t")]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["accuracy"] > 0.2
    assert main(["shrink", trained["model"], str(recipe), "--out", str(tmp_path / "s")]) == 0
    shrunk = json.loads(capsys.readouterr().out)
    assert shrunk["macs"] < trained["macs"]
    onnx_path = tmp_path / "s.onnx"
    assert main(["export", shrunk["model"], str(recipe), "--out", str(onnx_path)]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["parity_max_abs_diff"] <= 1e-4 and onnx_path.is_file()
    assert exported["int8"]["onnx"] == str(tmp_path / "s.int8.onnx")
    assert Path(exported["fp16"]["onnx"]).is_file()
    assert (
        exported["bf16"]["onnx"] == str(tmp_path / "s.bf16.onnx")
        and exported["bf16"]["opset"] == 22
    )
    assert main(["blocks", str(recipe)]) == 0
    assert "resnet8: 1 of 3 residual blocks are removable" in capsys.readouterr().out
    # Another input size than the model was trained on is refused, not silently exported;
    # an --out in a folder that does not exist yet is created.
    other = tmp_path / "other.yaml"
    other.write_text(json.dumps({**TINY, "data": {"name": "digits", "image_size": 12}}))
    assert main(["export", shrunk["model"], str(other), "--out", str(tmp_path / "x.onnx")]) == 1
    assert "trained on digits 1x8x8 inputs but this recipe's data is digits 1x12x12" in (
        capsys.readouterr().err
    )
    nested = tmp_path / "new" / "dir" / "s.onnx"
    assert main(["export", shrunk["model"], str(recipe), "--out", str(nested)]) == 0
    assert nested.is_file()


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "compressor", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


@pytest.mark.parametrize(
    "recipe,expected,code",
    [
        ({"prune": {"blocks": 30}}, "remove 30 blocks: resnet56 has only 25 removable blocks", 1),
        ({"prune": {"criterion": "magnitude", "blocks": 1}}, "unknown criterion 'magnitude'", 2),
        ({"data": {"name": "cifar10", "root": "no/such/dir"}}, "no/such/dir", 1),
        ({"trian": {"epochs": 1}}, "unknown key(s) ['trian']", 2),
        (  # refused before any training, not after it
            {"bench": {"backends": ["onnxruntime", "tensorrt"]}},
            "bench.backends: tensorrt needs the 'tensorrt' package, which is not installed",
            1,
        ),
        ({"bench": {"trt_precisions": ["fp8"]}}, "bench.trt_precisions: unknown", 2),
        ({"export": {"calibration_method": "kl"}}, "export.calibration_method: must be one", 2),
        ({"export": {"trt_version": "7"}}, "export.trt_version: unknown TensorRT version", 2),
    ],
)
def test_bad_input_is_one_line_and_an_exit_code(
    tmp_path: Path, recipe: dict, expected: str, code: int
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(recipe))
    result = _cli("run", str(path), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == code, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    # Progress lines ([data], [prune]) may come first; the error is the one last line.
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("compressor: error:")
    assert sum("error" in line for line in lines) == 1


def test_unreadable_onnx_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"this is not a protobuf")
    result = _cli("bench", str(bad), cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "broken.onnx" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_int8_fp16_and_bf16_files_come_with_their_measured_accuracy(tiny_run: Path) -> None:
    from deploy.onnx_info import inspect_onnx

    report = json.loads((tiny_run / "report.json").read_text())
    for v in report["variants"]:
        int8, fp16, bf16 = v["int8"], v["fp16"], v["bf16"]
        assert inspect_onnx(int8["onnx"]).precision == "int8" and int8["qdq_nodes"] > 0
        assert inspect_onnx(fp16["onnx"]).precision == "fp16"
        assert Path(bf16["onnx"]) == tiny_run / v["name"] / "model.bf16.onnx"
        assert inspect_onnx(bf16["onnx"]).precision == "bf16" and bf16["opset"] == 22
        # onnxruntime's FP32 accuracy on the test split is the run's own test accuracy.
        assert int8["fp32_accuracy_onnxruntime"] == pytest.approx(v["accuracy"], abs=1e-9)
        assert abs(fp16["accuracy"] - v["accuracy"]) <= 0.01
        assert abs(int8["accuracy"] - v["accuracy"]) <= 0.05  # 2-epoch toy model
        # onnxruntime's CPU provider has no BF16 kernels: the float32 emulation ran.
        assert bf16["accuracy_method"] == bf16["parity_method"] == "float32-emulation"
        assert bf16["max_abs_diff"] <= bf16["parity_tolerance"]
        assert abs(bf16["accuracy"] - v["accuracy"]) <= 0.02  # 8 significant bits
        assert set(v["readiness"]) == {"fp32", "int8", "fp16", "bf16"}
        assert all(r["counts"]["error"] == 0 for r in v["readiness"].values())
    markdown = (tiny_run / "report.md").read_text()
    assert "INT8 QDQ" in markdown and "| BF16 |" in markdown


def test_bundle_runs_on_a_device_without_the_project(tiny_run: Path, tmp_path: Path) -> None:
    """The bundle's own copy of `deploy` benchmarks its files and reproduces the accuracy."""
    import hashlib
    import os

    from compressor.workflows.bundle import write_bundle

    bundle = write_bundle(tiny_run, tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert {m["precision"] for m in manifest["models"]} == {"fp32", "int8", "fp16", "bf16"}
    assert len(manifest["models"]) == 12
    bf16 = [m for m in manifest["models"] if m["precision"] == "bf16"]
    assert all(m["expected_top1_onnxruntime_cpu"] is None for m in bf16)
    assert {m["file"] for m in bf16} <= set(manifest["files"])
    assert "shrunk.bf16.onnx" in (bundle / "README.md").read_text()
    for name, sha in manifest["files"].items():
        assert hashlib.sha256((bundle / name).read_bytes()).hexdigest() == sha
    assert (bundle / "deploy" / "cli.py").is_file() and os.access(
        bundle / "run_on_device.sh", os.X_OK
    )
    shrunk_int8 = next(
        m for m in manifest["models"] if (m["variant"], m["precision"]) == ("shrunk", "int8")
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-I", "-c", "import sys; sys.path.insert(0, '.'); import runpy; "
         "runpy.run_module('deploy', run_name='__main__')",
         "bench", shrunk_int8["file"], "--precision", "int8", "--data", "eval.npz",
         "--warmup", "1", "--iterations", "3", "--output", "r.json"],
        cwd=bundle, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads((bundle / "r.json").read_text())["records"][0]
    assert record["precision"] == "int8"
    expected = shrunk_int8["expected_top1_onnxruntime_cpu"]  # same machine, same kernels
    assert record["accuracy"] == pytest.approx(expected, abs=1e-9)
    # The dense network's blocks are timed on the device from the bundle alone (dense.blocks.json).
    assert "dense.blocks.json" in manifest["files"]
    profiled = subprocess.run(
        [sys.executable, "-I", "-c", "import sys; sys.path.insert(0, '.'); import runpy; "
         "runpy.run_module('deploy', run_name='__main__')",
         "profile-blocks", "dense.onnx", "--warmup", "1", "--iterations", "5", "--repeats", "1",
         "--output", "table.json"],
        cwd=bundle, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert profiled.returncode == 0, profiled.stderr
    table = json.loads((bundle / "table.json").read_text())
    assert table["batches"]["1"]["blocks"] and table["backend"] == "onnxruntime"
    (bundle / "table.json").unlink()  # the device script checks every file it did not make
    with pytest.raises(Exception, match="not empty"):
        write_bundle(tiny_run, bundle)
    # The device script, on the CPU backend: every file's top-1 meets the manifest's.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["BACKEND"] = "onnxruntime"
    script = subprocess.run(
        ["./run_on_device.sh", "--warmup", "1", "--iterations", "3", "--threads", "1"],
        cwd=bundle, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert script.returncode == 0, script.stderr[-2000:]
    # BF16 files are skipped on onnxruntime (no BF16 CPU kernels), the other nine measured.
    assert len(list((bundle / "results").glob("*.onnxruntime.json"))) == 9
    assert script.stdout.count("onnxruntime has no BF16 CPU kernels") == 3
    assert (bundle / "report" / "report.md").is_file()


def test_lint_reports_on_exported_files(tiny_run: Path, capsys) -> None:  # noqa: ANN001
    report = json.loads((tiny_run / "report.json").read_text())
    int8 = report["variants"][2]["int8"]["onnx"]
    profile = "input:1x1x8x8,2x1x8x8,2x1x8x8"
    assert main(["lint", int8, "--trt-version", "10", "--profile", profile]) == 0
    assert main(["lint", int8, "--profile", "input:1x1x8x8"]) == 2
    assert "--profile" in capsys.readouterr().err


def test_bundle_uses_the_run_directory_it_is_given(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From another working directory, and from a copy whose files were changed."""
    import shutil

    from compressor.errors import InputError
    from compressor.workflows.bundle import write_bundle

    monkeypatch.chdir(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    assert (write_bundle(copy, tmp_path / "b1") / "manifest.json").is_file()
    shutil.copyfile(copy / "dense" / "model.onnx", copy / "shrunk" / "model.onnx")
    with pytest.raises(InputError, match=r"shrunk fp32: .*copy/shrunk/model.onnx does not match"):
        write_bundle(copy, tmp_path / "b2")
    (copy / "ticket" / "model.int8.onnx").unlink()
    shutil.copyfile(tiny_run / "shrunk" / "model.onnx", copy / "shrunk" / "model.onnx")
    with pytest.raises(InputError, match=r"ticket int8: .*copy/ticket/model.int8.onnx is missing"):
        write_bundle(copy, tmp_path / "b3")
    assert not (tmp_path / "b2").exists() and not (tmp_path / "b3").exists()


def test_bundle_refuses_names_a_shell_would_run(tiny_run: Path, tmp_path: Path) -> None:
    """A variant named with `;` and a command (folder and report.json agree) never reaches
    run_on_device.sh: refused at bundle time, nothing written."""
    import shutil

    from compressor.errors import InputError
    from compressor.workflows.bundle import write_bundle

    copy = Path(shutil.copytree(tiny_run, tmp_path / "copy"))
    hostile = "shrunk;touch PWNED"  # the script runs in the bundle's folder
    report = json.loads((copy / "report.json").read_text())
    next(v for v in report["variants"] if v["name"] == "shrunk")["name"] = hostile
    (copy / "report.json").write_text(json.dumps(report))
    (copy / "shrunk").rename(copy / hostile)
    with pytest.raises(InputError, match=r"variant name 'shrunk;touch .*' .* letters, digits"):
        write_bundle(copy, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()
    assert not list(tmp_path.glob(".bundle.*"))


def test_the_bundle_script_stops_on_a_file_that_does_not_match_its_manifest(
    tiny_run: Path, tmp_path: Path
) -> None:
    import os

    import numpy as np
    import onnx
    from onnx import numpy_helper

    from compressor.workflows.bundle import write_bundle

    bundle = write_bundle(tiny_run, tmp_path / "bundle")
    model = onnx.load(bundle / "dense.onnx")
    weight = next(w for w in model.graph.initializer if w.data_type == onnx.TensorProto.FLOAT)
    scaled = (numpy_helper.to_array(weight) * np.float32(1.01)).astype(np.float32)
    weight.CopyFrom(numpy_helper.from_array(scaled, weight.name))
    onnx.save(model, bundle / "dense.onnx")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["BACKEND"] = "onnxruntime"
    script = subprocess.run(
        ["./run_on_device.sh"], cwd=bundle, env=env, capture_output=True, text=True, timeout=300
    )
    assert script.returncode == 2, script.stderr[-2000:]
    assert "do not match manifest.json" in script.stderr and "dense.onnx" in script.stderr
    assert not (bundle / "results").exists()  # nothing was built or timed


def test_a_tensorrt_precision_without_its_file_names_the_export_flag(tmp_path: Path) -> None:
    """bf16 engines build from model.bf16.onnx; a run with export.bf16 off has none, and says
    which setting to change before any TensorRT build starts."""
    from compressor.errors import ConfigError
    from compressor.workflows.deliver import time_tensorrt
    from deploy.bench import BenchConfig

    model = tmp_path / "dense" / "model.onnx"
    model.parent.mkdir()
    model.write_bytes(b"never read")
    with pytest.raises(ConfigError, match=r"bf16 builds from model.bf16.onnx.*export.bf16: true"):
        time_tensorrt({"dense": model}, ("bf16",), BenchConfig(batch_sizes=(1,)), print)
