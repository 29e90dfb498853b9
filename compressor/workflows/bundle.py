"""`compressor bundle`: one folder to copy to a Jetson (or any GPU box) and measure there.

The folder holds what a device needs and nothing that needs torch: each variant's FP32, INT8
QDQ, FP16 and BF16 ONNX files, a small labelled evaluation file, a manifest with the files' hashes
and the accuracy each one reached here (so a device can tell a broken engine from a slow one),
a copy of the torch-free `deploy` package, and a script that builds and times every file.
It is written to a temporary folder and renamed at the end, so a failed bundle leaves nothing
that looks complete.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import deploy
from compressor.atomic import atomic_write_text
from compressor.data.splits import load_data
from compressor.errors import InputError
from compressor.recipe.sections import recipe_from_dict
from compressor.workflows.report import model_label
from deploy.evaluate import save_labelled
from deploy.files import atomic_copy, file_sha256, work_directory
from deploy.paths import check_output_path
from deploy.profiling.blocks_file import default_blocks_path

SCHEMA = "compressor.bundle/1"
PRECISION_SUFFIX = {
    "fp32": ".onnx",
    "int8": ".int8.onnx",
    "fp16": ".fp16.onnx",
    "bf16": ".bf16.onnx",
}


def write_bundle(run_dir: str | Path, out_dir: str | Path, *, eval_samples: int = 360) -> Path:
    """Bundle a finished `compressor run` directory into `out_dir` (which must not exist)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    report = _read_report(run_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"{out_dir} already exists and is not empty; choose another --out")
    if eval_samples < 1:
        raise InputError(f"--eval-samples must be >= 1, got {eval_samples}")
    recipe = recipe_from_dict(report["recipe"])
    data = load_data(recipe.data)
    for variant in report["variants"]:
        _check_name(variant.get("name"), "variant name")
    if out_dir.is_symlink() or not out_dir.exists():
        check_output_path(out_dir, "--out")  # a link or special file; a read-only folder
    with work_directory(out_dir) as staging:
        files: dict[str, Any] = {}
        models = []
        for variant in report["variants"]:
            for precision, entry in _precision_files(variant, run_dir).items():
                name = f"{variant['name']}{PRECISION_SUFFIX[precision]}"
                atomic_copy(entry["path"], staging / name)
                files[name] = file_sha256(staging / name)
                blocks = default_blocks_path(Path(entry["path"]))
                if precision == "fp32" and blocks.is_file():  # for `deploy profile-blocks`
                    atomic_copy(blocks, staging / f"{variant['name']}.blocks.json")
                models.append(
                    {
                        "variant": variant["name"],
                        "precision": precision,
                        "file": name,
                        "expected_top1": entry["accuracy"],
                        "expected_top1_onnxruntime_cpu": entry["accuracy_ort"],
                    }
                )
        count = min(eval_samples, len(data.test))
        save_labelled(
            staging / "eval.npz",
            data.test.images[:count].numpy(),
            data.test.labels[:count].numpy(),
            data.class_names,
        )
        _copy_deploy_package(staging / "deploy")
        script = staging / "run_on_device.sh"
        atomic_write_text(script, _script(report, models))
        script.chmod(0o755)
        atomic_write_text(staging / "README.md", _readme(report, models, count))
        for path in sorted(p for p in staging.rglob("*") if p.is_file()):
            files[path.relative_to(staging).as_posix()] = file_sha256(path)
        manifest = {
            "schema": SCHEMA,
            "recipe": report["recipe"]["name"],
            "dataset": report["recipe"]["data"]["name"],
            "input_shape": [None, *data.test.images.shape[1:]],
            "class_names": list(data.class_names),
            "eval_samples": count,
            "models": models,
            "files": files,
            "measured_on": report["environment"].get("cpu_model"),
            "batch_sizes": report["recipe"]["bench"]["batch_sizes"],
            "onnx_opset": report["recipe"]["export"]["opset"],
        }
        atomic_write_text(staging / "manifest.json", json.dumps(manifest, indent=2) + "\n")
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above); os.replace needs it gone
        os.replace(staging, out_dir)
    return out_dir


# Names that reach run_on_device.sh and file names: letters, digits, '.', '_', '-'. Anything
# else (a ';', a space, '$(...)') could be read by the shell as a command.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        raise InputError(
            f"{what} {name!r} in report.json cannot go into a bundle: use letters, digits, "
            "'.', '_' and '-' only (it becomes a file name and a shell word on the device)"
        )
    return name


def _read_report(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "report.json"
    if not path.is_file():
        raise InputError(
            f"{run_dir} has no report.json; bundle a finished `compressor run` directory"
        )
    try:
        report = json.loads(path.read_text())
    except ValueError as exc:
        raise InputError(f"{path} is not valid JSON; rerun `compressor run`") from exc
    if not isinstance(report, dict) or report.get("schema") != "compressor.report/1":
        raise InputError(f"{path} is not a compressor report (schema compressor.report/1)")
    return report


def _precision_files(variant: dict[str, Any], run_dir: Path) -> dict[str, dict[str, Any]]:
    """FP32 always, INT8, FP16 and BF16 when the run made them; each file must still match
    its hash.

    Files are found by the run directory's layout (`<variant>/model[.int8|.fp16|.bf16].onnx`),
    not by the paths in report.json, which are relative to wherever `compressor run` was
    started. A BF16 file has no onnxruntime CPU accuracy (no BF16 kernels there): None.
    """
    entries = {
        "fp32": {
            "sha": variant["onnx_sha256"],
            "accuracy": variant["accuracy"],
            "accuracy_ort": variant["accuracy"],
        }
    }
    for precision in ("int8", "fp16", "bf16"):
        extra = variant.get(precision)
        if extra:
            entries[precision] = {
                "sha": extra["sha256"],
                "accuracy": extra["accuracy"],
                # INT8 on onnxruntime's CPU kernels differs from TensorRT's arithmetic; BF16
                # does not load there (its accuracy is the float32 emulation's).
                "accuracy_ort": None
                if precision == "bf16"
                else extra.get("accuracy_onnxruntime_cpu", extra["accuracy"]),
            }
    for precision, entry in entries.items():
        path = run_dir / variant["name"] / f"model{PRECISION_SUFFIX[precision]}"
        if not path.is_file():
            raise InputError(
                f"{variant['name']} {precision}: {path} is missing; rerun `compressor run`"
            )
        if file_sha256(path) != entry["sha"]:
            raise InputError(
                f"{variant['name']} {precision}: {path} does not match the hash in report.json "
                "(changed since the run); rerun `compressor run`"
            )
        entry["path"] = path
    return entries


def _copy_deploy_package(target: Path) -> None:
    """The torch-free `deploy` package, so `python3 -m deploy` works from the bundle."""
    source = Path(deploy.__file__).parent
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(source, target, ignore=ignore, copy_function=atomic_copy)


# Checks every file against manifest.json before anything is built or timed: a file damaged
# in the copy (or edited) would otherwise be measured and reported as if it were ours.
_VERIFY = """python3 - <<'VERIFY' || exit 2
import hashlib, json, sys
files = json.load(open("manifest.json"))["files"]
bad = []
for name, want in sorted(files.items()):
    digest = hashlib.sha256()
    try:
        with open(name, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        bad.append(f"{name} ({exc.strerror})")
        continue
    if digest.hexdigest() != want:
        bad.append(name)
if bad:
    sys.exit("run_on_device.sh: these files do not match manifest.json (changed or damaged "
             "in the copy): " + ", ".join(bad) + "; copy the bundle again")
print(f"run_on_device.sh: {len(files)} files match manifest.json")
VERIFY"""


def _script(report: dict[str, Any], models: list[dict[str, Any]]) -> str:
    batches = ",".join(str(int(b)) for b in report["recipe"]["bench"]["batch_sizes"])
    lines = [
        "#!/usr/bin/env bash",
        "# Build a TensorRT engine for every model file here and time it; results go to",
        "# results/. BACKEND=trtexec uses NVIDIA's trtexec instead of the TensorRT Python API;",
        "# BACKEND=onnxruntime times on the CPU (no TensorRT needed). Each file's top-1 on",
        "# eval.npz is checked against manifest.json (within 1 point); the script carries on",
        "# and exits 1 at the end if any file missed it. Every file is first checked against",
        "# manifest.json's SHA-256 (exit 2 on a mismatch, before anything runs).",
        "set -uo pipefail",
        'cd "$(dirname "$0")"',
        'BACKEND="${BACKEND:-tensorrt}"',
        f'BATCH="${{BATCH:-{batches}}}"',
        _VERIFY,
        "mkdir -p results",
        "python3 -m deploy info || exit 1",
        "FAILED=0",
    ]
    for model in models:
        file = _check_name(model["file"], "file")  # safe inside double quotes too
        variant = shlex.quote(model["variant"])
        trt = float(model["expected_top1"])
        if model["expected_top1_onnxruntime_cpu"] is None:  # BF16: no onnxruntime CPU kernels
            expect = repr(trt)
            lines.append(
                'if [ "$BACKEND" = onnxruntime ]; then echo "run_on_device.sh: skipping '
                f'{file}: onnxruntime has no BF16 CPU kernels (TensorRT runs it)"; else'
            )
        else:  # onnxruntime's int8 CPU kernels differ from TensorRT's (docs/guide/precisions.md)
            ort = float(model["expected_top1_onnxruntime_cpu"])
            expect = f'$([ "$BACKEND" = onnxruntime ] && echo {ort!r} || echo {trt!r})'
        lines.append(
            f'python3 -m deploy bench {shlex.quote(file)} --backend "$BACKEND" '
            f'--precision {shlex.quote(model["precision"])} --batch "$BATCH" --data eval.npz '
            f'--expect-top1 "{expect}" '
            f'--name {variant} --output "results/{file}.$BACKEND.json" '
            '"$@" || FAILED=1'
        )
        if model["expected_top1_onnxruntime_cpu"] is None:
            lines.append("fi")
    lines.append("python3 -m deploy report results --out report || FAILED=1")
    lines.append('exit "$FAILED"')
    return "\n".join(lines) + "\n"


def _readme(report: dict[str, Any], models: list[dict[str, Any]], samples: int) -> str:
    rows = "\n".join(
        f"| {m['variant']} | {m['precision']} | `{m['file']}` | {100 * m['expected_top1']:.2f}% "
        f"| {_percent_or_na(m['expected_top1_onnxruntime_cpu'])} |"
        for m in models
    )
    return f"""# Deployment bundle: {report["recipe"]["name"]}

Made by `compressor bundle` from a run of `{model_label(report["recipe"]["model"])}` on
`{report["recipe"]["data"]["name"]}`. Copy this folder to the device (for example
`scp -r bundle/ jetson:~/bundle`) and run the steps below there. Nothing here needs torch.

| variant | precision | file | expected top-1 ({samples} images) | onnxruntime CPU kernels |
|---|---|---|---|---|
{rows}

"Expected top-1" was measured here with onnxruntime on the CPU; for INT8 it is the Q/DQ
graph computed as written (exact int8 products), which is what TensorRT's INT8 kernels do;
for BF16, which onnxruntime's CPU provider cannot run, it is the file's float32 emulation
(every BF16 tensor rounded to bfloat16, ops computed in float32).
The last column is onnxruntime's own fused int8 CPU kernels, which lose accuracy on x86
CPUs without VNNI. An engine whose top-1 on `eval.npz` is far from the expected column is
broken, not slow: `run_on_device.sh` checks each file (`deploy bench --expect-top1`, within
1 point) and exits 1 at the end if any missed.
`manifest.json` holds every file's SHA-256; `run_on_device.sh` checks them all before it
builds or times anything and stops (exit 2) naming any file that was changed in the copy.

## On a Jetson (TensorRT from JetPack)

These files are ONNX opset {report["recipe"]["export"]["opset"]}. JetPack 6 (TensorRT 10) reads
opset 18; JetPack 5 (TensorRT 8.5) reads up to 17: bundle a run of `recipes/jetpack5.yaml`
for it.

```bash
sudo nvpmodel -m 0          # MAXN on Orin; `nvpmodel -q` shows the mode
sudo jetson_clocks          # lock clocks; `deploy bench` warns when they are not
python3 -m pip install numpy onnx 'cuda-python==12.*'  # GPU buffers without torch
./run_on_device.sh          # TensorRT Python API; BACKEND=trtexec ./run_on_device.sh for trtexec
```

Energy per inference is added when `tegrastats` is on PATH (it is on JetPack). Then copy
`results/` back and merge it with other devices' results:
`python3 -m deploy report results/ other-device-results/ --out report/`.

To prune to a latency budget measured on this device, time the dense network's blocks here
(`dense.blocks.json` names them) and copy the table back for `prune.latency_table`:
`python3 -m deploy profile-blocks dense.onnx --batch 1 --output latency_table.json`.

## On a GPU server

Inside an NVIDIA container that ships TensorRT (`nvcr.io/nvidia/tensorrt:<yy.mm>-py3` or
`nvcr.io/nvidia/pytorch:<yy.mm>-py3`, run with `--gpus all`): `pip install onnx nvidia-ml-py`,
then `./run_on_device.sh`. NVML gives power and energy.

## INT8, FP16 and BF16 on TensorRT 10 and 11

The `.int8.onnx` files carry Q/DQ nodes (explicit quantization, calibrated here); the
`.fp16.onnx` files are FP16 graphs and the `.bf16.onnx` files BF16 graphs (inputs and outputs
stay float32). TensorRT 11 builds only strongly typed networks, so these files are how it
gets INT8, FP16 and BF16; TensorRT 10 accepts them too. BF16 needs an Ampere or newer GPU
(compute capability 8.0+; Jetson Orin has it, Xavier does not) and is not run on DLA. The
`.bf16.onnx` files are opset 22, the first whose Conv and pooling ops take bfloat16: TensorRT
10.15+ and 11 document it; on an older 10.x, build BF16 from the FP32 file (`--precision
bf16` sets the BF16 builder flag there). With `BACKEND=onnxruntime` the script skips them.
"""


def _percent_or_na(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"
