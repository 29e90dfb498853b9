"""INT8 Q/DQ placement side by side: ours "all" and "tensorrt", and NVIDIA ModelOpt's, on the
same FP32 files with the same calibration images: Q/DQ counts per op type fed, the pairs the
lint says TensorRT cannot fuse, and test accuracy on onnxruntime CPU.

    python benchmarks/bench_qdq_placement.py [--run-dir runs/default]
        [--modelopt-python VENV/bin/python]

Uses the dense/ticket/shrunk model.onnx of a `compressor run` directory (the embedded default
is run first when the directory has no report) and writes its INT8 files and a JSON of the
table under RUN_DIR/qdq_placement/. Calibration: the recipe's export.calibration_samples
training images, evenly spaced, for both quantizers (ModelOpt's "max" is our "minmax" with
symmetric ranges). ModelOpt keeps the float parts FP32 (--high_precision_dtype fp32) so that
the comparison is about placement only; it raises the opset to 19.

ModelOpt pins older onnx (~1.21) and onnxruntime (~1.24) than this project, so it lives in a
venv of its own, called as a subprocess. Made with (a CPU torch first, so pip does not fetch
a CUDA build; any torch >= 2.8 works; the measured run used ModelOpt 0.47.0 and the local CPU
wheel of torch 2.13.0):

    python3.11 -m venv VENV
    VENV/bin/pip install torch==2.13.0   # a CPU build here (what install.sh installs)
    VENV/bin/pip install 'nvidia-modelopt[onnx]'

Without --modelopt-python (or when it cannot run ModelOpt) one line says so and the table has
our two placements only. Accuracy is measured twice per file, on this venv's onnxruntime:
with its CPU kernels (graph optimizations on) and with Q/DQ computed as written (TensorRT's
INT8 arithmetic).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from compressor.data.splits import load_data
from compressor.recipe.sections import load_recipe, recipe_from_dict
from compressor.workflows.pipeline import VARIANTS, run_pipeline
from deploy.evaluate import LabelledData, top1_accuracy
from deploy.runners import OnnxRuntimeRunner
from export.onnx_graph import OnnxGraph
from export.qdq_placement import count_qdq
from export.quantize import QuantizeConfig, quantize_qdq
from export.quantize_inputs import calibration_subset, image_input
from export.readiness import check_readiness

PLACEMENT_CODES = ("qdq-before-activation", "qdq-residual-both-inputs", "qdq-output")
MODELOPT_METHODS = {"minmax": "max", "entropy": "entropy"}  # percentile: none in ModelOpt


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--run-dir",
        default="runs/default",
        help="a `compressor run` folder (dense/ticket/shrunk model.onnx); made when it has none",
    )
    parser.add_argument("--recipe", default=None, help="recipe used if the run must be made")
    parser.add_argument("--modelopt-python", default=None, help="python of ModelOpt's venv")
    args = parser.parse_args()
    run_dir = Path(args.run_dir)
    if not (run_dir / "report.json").is_file():
        print(f"no report in {run_dir}: running the pipeline first", file=sys.stderr)
        run_pipeline(load_recipe(args.recipe), run_dir)
    recipe = recipe_from_dict(json.loads((run_dir / "report.json").read_text())["recipe"])
    data = load_data(recipe.data)
    test = LabelledData(images=data.test.images.numpy(), labels=data.test.labels.numpy())
    train = data.train.images.numpy()
    method, samples = recipe.export.calibration_method, recipe.export.calibration_samples
    out = run_dir / "qdq_placement"
    out.mkdir(exist_ok=True)
    modelopt, modelopt_note = _modelopt(args.modelopt_python, method)
    rows = []
    for variant in VARIANTS:
        fp32 = run_dir / variant / "model.onnx"
        files = {"fp32": fp32}
        for placement in ("all", "tensorrt"):
            files[placement] = out / f"{variant}.{placement}.onnx"
            files[placement].unlink(missing_ok=True)
            config = QuantizeConfig(
                calibration_method=method, calibration_samples=samples, qdq_placement=placement
            )
            quantize_qdq(fp32, files[placement], train, config)
        if modelopt is not None:
            target = out / f"{variant}.modelopt.onnx"
            calib = calibration_subset(train, samples, None)
            problem = _run_modelopt(modelopt, fp32, target, calib, MODELOPT_METHODS[method])
            if problem is None:
                files["modelopt"] = target
            else:
                modelopt_note = problem
        for name, path in files.items():
            rows.append(_row(variant, name, path, test))
        print(f"{variant}: done", file=sys.stderr)
    (out / "bench_qdq_placement.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"files and results: {out}")
    print(f"calibration: {method} on {samples} training images; test: {len(test)} images")
    print(modelopt_note)
    print(_table(rows))
    return 0


def _modelopt(python: str | None, method: str) -> tuple[str | None, str]:
    """The ModelOpt python to call and its versions, or None and why not."""
    if not python:
        return None, "ModelOpt: not compared (no --modelopt-python; see this file's docstring)"
    if method not in MODELOPT_METHODS:
        return None, f"ModelOpt: not compared (it has no '{method}' calibration)"
    probe = (
        "import modelopt, onnx, onnxruntime; print(modelopt.__version__, onnx.__version__, "
        "onnxruntime.__version__)"
    )
    try:
        done = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"ModelOpt: not compared ({python} cannot run: {exc})"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"ModelOpt: not compared ({python} cannot import it: {last})"
    versions = done.stdout.split()
    return python, "ModelOpt {} (onnx {}, onnxruntime {}) via {}".format(*versions, python)


def _run_modelopt(
    python: str, fp32: Path, target: Path, calib: np.ndarray, method: str
) -> str | None:
    """ModelOpt's INT8 of `fp32` at `target`, working in a temp folder; None or the problem."""
    input_name = image_input(onnx.load(str(fp32)), fp32).name
    with tempfile.TemporaryDirectory() as work:
        source = Path(work) / "model.onnx"
        shutil.copyfile(fp32, source)  # ModelOpt writes its opset-19 clone beside its input
        np.savez(Path(work) / "calib.npz", **{input_name: calib})
        command = [
            python, "-m", "modelopt.onnx.quantization", "--onnx_path", str(source),
            "--quantize_mode", "int8", "--calibration_method", method,
            "--calibration_data_path", str(Path(work) / "calib.npz"),
            "--calibration_eps", "cpu", "--high_precision_dtype", "fp32",
            "--output_path", str(Path(work) / "int8.onnx"),
        ]  # fmt: skip
        try:
            done = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            return f"ModelOpt: {fp32} took over 900 s"
        log = target.with_suffix(".log")
        log.write_text(done.stdout + done.stderr)
        if done.returncode != 0 or not (Path(work) / "int8.onnx").is_file():
            return f"ModelOpt: failed on {fp32} (exit {done.returncode}); its log: {log}"
        shutil.move(str(Path(work) / "int8.onnx"), target)
    return None


def _row(variant: str, name: str, path: Path, test: LabelledData) -> dict[str, Any]:
    model = onnx.load(str(path))
    counts = count_qdq(model)
    graph = OnnxGraph(model)
    activations = sorted(  # tensors quantized other than weights: where the placement differs
        node.input[0]
        for node in graph.nodes
        if node.op_type == "QuantizeLinear" and not graph.is_weight(node.input[0])
    )
    report = check_readiness(path, trt_version="10")
    flagged = {code: sum(f.code == code for f in report.findings) for code in PLACEMENT_CODES}
    with OnnxRuntimeRunner(path) as runner:
        kernels = top1_accuracy(runner, test, batch_size=64).top1
    written = kernels
    if counts.quantize or counts.dequantize:
        with OnnxRuntimeRunner(path, optimize=False) as runner:
            written = top1_accuracy(runner, test, batch_size=64).top1
    return {
        "variant": variant,
        "file": name,
        "path": str(path),
        "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        **counts.to_dict(),
        "quantized_activations": activations,
        "lint_unfusable": flagged,
        "lint_errors": len(report.errors),
        "top1_onnxruntime_kernels": kernels,
        "top1_as_written": written,
    }


def _table(rows: list[dict[str, Any]]) -> str:
    ops = sorted({op for row in rows for op in row["by_op_type"]})
    head = ["variant", "file", "Q", "DQ", "act. Q", *[f"{op} Q/DQ" for op in ops]]
    head += ["lint unfusable", "top-1 ORT kernels", "top-1 as written", "vs fp32"]
    lines = [head]
    fp32 = {
        row["variant"]: row["top1_onnxruntime_kernels"] for row in rows if row["file"] == "fp32"
    }
    for row in rows:
        by_type = row["by_op_type"]
        cells = [row["variant"], row["file"], str(row["Q"]), str(row["DQ"])]
        cells.append(str(len(row["quantized_activations"])))
        cells += [f"{by_type[op]['Q']}/{by_type[op]['DQ']}" if op in by_type else "-" for op in ops]
        unfusable = sum(row["lint_unfusable"].values())
        delta = 100 * (row["top1_onnxruntime_kernels"] - fp32[row["variant"]])
        cells += [
            str(unfusable),
            f"{100 * row['top1_onnxruntime_kernels']:.2f}%",
            f"{100 * row['top1_as_written']:.2f}%",
            "-" if row["file"] == "fp32" else f"{delta:+.2f} pts",
        ]
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
            for line in lines]  # fmt: skip
    notes = (
        "Q/DQ per op type: the nodes feeding that op type (a pair shared by a Conv and an Add "
        "counts under both); '(output)': the graph output. Our weights are stored int8 (DQ "
        "only); ModelOpt's are float with a Q/DQ pair each. act. Q: QuantizeLinear nodes on "
        "activations (not weights). lint unfusable: " + ", ".join(PLACEMENT_CODES) + " findings."
    )
    return "\n".join(text) + "\n" + notes + _same_as_modelopt(rows)


def _same_as_modelopt(rows: list[dict[str, Any]]) -> str:
    """Whether "tensorrt" quantizes the very activation tensors ModelOpt does."""
    found = {(row["variant"], row["file"]): set(row["quantized_activations"]) for row in rows}
    lines = []
    for variant in dict.fromkeys(row["variant"] for row in rows):
        ours, theirs = found.get((variant, "tensorrt")), found.get((variant, "modelopt"))
        if ours is not None and theirs is not None:
            lines.append(
                f"{variant}: tensorrt and ModelOpt quantize {len(ours & theirs)} activation "
                f"tensors alike; only tensorrt: {sorted(ours - theirs) or 'none'}; only "
                f"ModelOpt: {sorted(theirs - ours) or 'none'}"
            )
    return "".join("\n" + line for line in lines)


if __name__ == "__main__":
    sys.exit(main())
