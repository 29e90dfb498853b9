"""The device check: what a session lent a GPU runs, as one command, into one result file.

    python benchmarks/device_check.py --out DIR [--budget-seconds 450] [--dry-run]

The lent machine has CUDA PyTorch, onnxruntime (CPU), nvidia-ml-py, torchvision and timm, and
no TensorRT and no network. In order, each step with its own share of the time budget and
recorded even when it fails or is skipped (with the reason):

1. `gpu`: the tests marked `gpu` (pytest -m gpu);
2. `amp_run`: the default recipe with `compressor run` on CUDA (AMP is on by default there):
   accuracies, training time, the pipeline's own latency records;
3. `cuda_latency`: torch-CUDA latency of the run's dense, ticket and shrunk models, eager and
   replayed as a CUDA graph, batch 1 and 8, timed in blocks of iterations per model in
   rotated order, three runs each (p50 and the run-to-run CV of the medians);
4. `energy`: NVML power while each model runs alone (CUDA graph, batch 8), energy per
   inference;
5. `latency_table`: the torch-CUDA per-block latency table of ResNet-56 and its prediction
   error over random block subsets (benchmarks/bench_latency_table.py --backend torch).

Everything goes to DIR/device_check.json; the summary table is printed last. `--dry-run` runs
the same steps on the CPU with the quick recipe and few iterations, so the script itself is
tested where no GPU is (steps that need CUDA or NVML are recorded as skipped, with the reason).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout, installed or not
BATCHES = (1, 8)
VARIANTS = ("dense", "ticket", "shrunk")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the result file")
    parser.add_argument("--budget-seconds", type=float, default=450.0, help="for all steps")
    parser.add_argument("--dry-run", action="store_true", help="CPU, quick recipe, few iterations")
    parser.add_argument(
        "--run-dir", type=Path, help="where the pipeline run goes (default: OUT/run)"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    deadline = started + args.budget_seconds
    result: dict[str, Any] = {"schema": "device_check/1", "dry_run": args.dry_run}
    result["environment"] = _environment()
    cuda = result["environment"].get("cuda_available", False)

    # Shares of what is left: the tests and the training are bounded by their own timeouts.
    result["gpu"] = _gpu_tests(args.out / "gpu_tests.log", _left(deadline, 0.2), args.dry_run)
    run_dir = args.run_dir or args.out / "run"
    log = args.out / "amp_run.log"
    result["amp_run"] = _amp_run(run_dir, log, _left(deadline, 0.75), args.dry_run, cuda)
    if result["amp_run"].get("status") == "ok":
        iterations = 20 if args.dry_run else 300
        result["cuda_latency"] = _latency(run_dir, iterations, cuda, deadline)
        result["energy"] = _energy(run_dir, 0.5 if args.dry_run else 2.0, cuda, deadline)
    else:
        reason = "the training step did not finish, so there are no models to time"
        result["cuda_latency"] = result["energy"] = {"status": "skipped", "reason": reason}
    result["latency_table"] = _latency_table(
        args.out / "latency_table.log", max(_left(deadline, 1.0), 30.0), args.dry_run
    )
    result["seconds"] = round(time.monotonic() - started, 1)
    path = args.out / "device_check.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"results written to {path}")
    print(_summary(result))
    return 0 if all(_status(result[k]) in ("ok", "skipped") for k in _STEPS) else 1


_STEPS = ("gpu", "amp_run", "cuda_latency", "energy", "latency_table")


def _status(step: dict[str, Any]) -> str:
    return str(step.get("status"))


def _left(deadline: float, share: float) -> float:
    return max(10.0, (deadline - time.monotonic()) * share)


def _environment() -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine()}
    try:
        import torch

        env["torch"] = torch.__version__
        env["cuda_available"] = torch.cuda.is_available()
        if env["cuda_available"]:
            env["gpu"] = torch.cuda.get_device_name(0)
            env["cuda"] = torch.version.cuda
    except Exception as exc:  # a broken torch install is itself a finding
        env["torch_error"] = f"{type(exc).__name__}: {exc}"
    for name in ("onnx", "onnxruntime", "torch_pruning", "safetensors", "onnxscript", "pynvml"):
        try:
            module = __import__(name)
            env[name] = getattr(module, "__version__", "present")
        except Exception as exc:  # recorded: the steps that need it then say so
            env[name] = f"missing ({type(exc).__name__})"
    return env


def _run(command: list[str], timeout: float, log: Path) -> dict[str, Any]:
    """A child process with a time limit; its output goes to `log`, its tail to the result."""
    tick = time.monotonic()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else exc.stdout
        output, code = (output or "") + f"\n[timed out after {timeout:.0f} s]", None
    log.write_text(output)
    return {
        "exit_code": code,
        "seconds": round(time.monotonic() - tick, 1),
        "tail": output.strip().splitlines()[-5:],
        "log": str(log),
    }


def _latency_table(log: Path, timeout: float, dry_run: bool) -> dict[str, Any]:
    """The torch table's prediction error (CUDA on the lent GPU); its summary lines kept."""
    size = ["--subsets", "2", "--iterations", "10", "--batch", "1"] if dry_run else [
        "--subsets", "10", "--iterations", "150"
    ]  # fmt: skip
    command = [sys.executable, "benchmarks/bench_latency_table.py", "--backend", "torch", *size]
    outcome = _run(command, timeout, log)
    outcome["status"] = "ok" if outcome["exit_code"] == 0 else "failed"
    return outcome


def _gpu_tests(log: Path, timeout: float, dry_run: bool) -> dict[str, Any]:
    if dry_run:
        return {"status": "skipped", "reason": "--dry-run: the gpu tests need CUDA"}
    outcome = _run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs"], timeout, log)
    # pytest: 0 all passed, 5 none collected; anything else is a failure to look at.
    outcome["status"] = "ok" if outcome["exit_code"] in (0, 5) else "failed"
    return outcome


def _amp_run(run_dir: Path, log: Path, timeout: float, dry_run: bool, cuda: bool) -> dict[str, Any]:
    if not cuda and not dry_run:
        return {"status": "skipped", "reason": "no CUDA device: AMP training needs one"}
    recipe = ROOT / "recipes" / ("quick.yaml" if dry_run else "default.yaml")
    command = [sys.executable, "-m", "compressor", "run", str(recipe), "--out", str(run_dir)]
    outcome = _run(command, timeout, log)
    report_path = run_dir / "report.json"
    if not report_path.is_file():
        outcome["status"] = "failed"
        return outcome
    report = json.loads(report_path.read_text())
    outcome["status"] = "ok"
    outcome["recipe"] = recipe.name
    outcome["train_device"] = report["environment"].get("train_device")
    outcome["variants"] = {
        v["name"]: {
            "accuracy": v["accuracy"],
            "train_seconds": v["train_seconds"],
            "epoch_seconds": v["epoch_seconds"],
            "comparable": v.get("comparable", True),
        }
        for v in report["variants"]
    }
    outcome["pipeline_latency"] = [
        {"variant": v["name"], **{k: r[k] for k in ("backend", "device", "batch", "p50_ms")}}
        for v in report["variants"]
        for r in v["latency"]
    ]
    return outcome


def _load_variants(run_dir: Path) -> dict[str, Any]:
    from compressor.models.store import load_model

    return {name: load_model(run_dir / name / "model").model for name in VARIANTS}


def _latency(run_dir: Path, iterations: int, cuda: bool, deadline: float) -> dict[str, Any]:
    import torch

    device = torch.device("cuda" if cuda else "cpu")
    models = {k: m.to(device).eval() for k, m in _load_variants(run_dir).items()}
    shape = json.loads((run_dir / "recipe.json").read_text())
    size = int(shape["data"].get("image_size", 16))
    channels = _channels(models["dense"])
    rows = []
    for batch in BATCHES:
        for mode in ("eager", "cuda_graph"):
            if mode == "cuda_graph" and not cuda:
                rows.append({"batch": batch, "mode": mode, "status": "skipped",
                             "reason": "CUDA graphs need CUDA"})  # fmt: skip
                continue
            if time.monotonic() > deadline:
                rows.append({"batch": batch, "mode": mode, "status": "skipped",
                             "reason": "time budget spent"})  # fmt: skip
                continue
            example = torch.randn(batch, channels, size, size, device=device)
            calls = {k: _callable(m, example, mode) for k, m in models.items()}
            runs = _timed_blocks(calls, iterations, sync=torch.cuda.synchronize if cuda else None)
            for name, medians in runs.items():
                rows.append(
                    {
                        "variant": name,
                        "batch": batch,
                        "mode": mode,
                        "p50_ms": statistics.median(medians),
                        "run_medians_ms": medians,
                        "run_cv": statistics.pstdev(medians) / statistics.fmean(medians),
                    }
                )
    for row in rows:
        if "p50_ms" in row and row["variant"] != "dense":
            dense = next(
                r["p50_ms"]
                for r in rows
                if r.get("variant") == "dense" and r["batch"] == row["batch"]
                and r["mode"] == row["mode"]
            )  # fmt: skip
            row["speedup_vs_dense"] = dense / row["p50_ms"]
    return {
        "status": "ok",
        "device": str(device),
        "method": "device-resident input; blocks of 25 iterations per model, order rotated "
        "each round; 3 runs; host time with a device sync after each call",
        "rows": rows,
    }


def _channels(model: Any) -> int:
    import torch

    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    return int(first.in_channels)


def _callable(model: Any, example: Any, mode: str) -> Any:
    """A no-argument call of the model on `example`: eager, or a captured CUDA graph."""
    import torch

    if mode == "eager":

        def eager() -> None:
            with torch.inference_mode():
                model(example)

        return eager
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(3):  # warm-up on a side stream, as capture requires
            model(example)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        model(example)
    return graph.replay


def _timed_blocks(calls: dict[str, Any], iterations: int, sync: Any, block: int = 25) -> dict:
    """Per model, the median latency (ms) of each of three runs; blocks of `block` calls per
    model in an order rotated each round, the first 3 calls of a block untimed."""
    names = list(calls)
    for call in calls.values():
        for _ in range(10):
            call()
    if sync:
        sync()
    medians: dict[str, list[float]] = {name: [] for name in names}
    for _run_index in range(3):
        times: dict[str, list[float]] = {name: [] for name in names}
        rounds = max(1, iterations // 3 // block)
        for round_index in range(rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                for i in range(block):
                    tick = time.perf_counter_ns()
                    calls[name]()
                    if sync:
                        sync()
                    if i >= 3:
                        times[name].append((time.perf_counter_ns() - tick) / 1e6)
        for name in names:
            medians[name].append(statistics.median(times[name]))
    return medians


def _energy(run_dir: Path, seconds: float, cuda: bool, deadline: float) -> dict[str, Any]:
    if not cuda:
        return {"status": "skipped", "reason": "no CUDA device: NVML power needs one"}
    if time.monotonic() + 3 * (seconds + 1) > deadline:
        return {"status": "skipped", "reason": "time budget spent"}
    import torch

    from deploy.machine.power import energy_from_trace, open_power_sampler

    try:
        sampler = open_power_sampler("nvml")
    except Exception as exc:  # missing nvidia-ml-py or driver: recorded, not fatal
        return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    models = {k: m.to("cuda").eval() for k, m in _load_variants(run_dir).items()}
    size = int(json.loads((run_dir / "recipe.json").read_text())["data"].get("image_size", 16))
    rows = []
    for name, model in models.items():
        example = torch.randn(8, _channels(model), size, size, device="cuda")
        call = _callable(model, example, "cuda_graph")
        calls = 0
        sampler.start()
        try:
            tick = time.monotonic()
            while time.monotonic() - tick < seconds:
                call()
                calls += 1
            torch.cuda.synchronize()
        finally:
            trace = sampler.stop()
        energy = energy_from_trace(trace, calls)
        rows.append(
            {
                "variant": name,
                "batch": 8,
                "inferences": calls,
                "avg_power_w": energy.avg_power_w,
                "energy_mj_per_inference": energy.energy_mj_per_inference,
                "source": energy.source,
            }
        )
    return {"status": "ok", "rows": rows}


def _summary(result: dict[str, Any]) -> str:
    lines = [f"device check ({result['environment'].get('gpu', 'no GPU')}, "
             f"{result['seconds']} s)"]  # fmt: skip
    for step in _STEPS:
        info = result[step]
        lines.append(f"  {step}: {_status(info)}" + (f" ({info['reason']})" if "reason" in info
                                                     else ""))  # fmt: skip
    run = result["amp_run"]
    for name, v in run.get("variants", {}).items():
        lines.append(
            f"  {name:<7} accuracy {100 * v['accuracy']:.2f}%  train {v['train_seconds']:.1f} s"
        )
    latency = result["cuda_latency"]
    for row in latency.get("rows", []):
        if "p50_ms" in row:
            speed = f"  {row['speedup_vs_dense']:.2f}x" if "speedup_vs_dense" in row else ""
            lines.append(
                f"  {row['variant']:<7} b{row['batch']} {row['mode']:<10} p50 "
                f"{row['p50_ms']:.3f} ms  run CV {100 * row['run_cv']:.1f}%{speed}"
            )
    for row in result["energy"].get("rows", []):
        lines.append(
            f"  {row['variant']:<7} b8 energy {row['energy_mj_per_inference']:.3f} mJ/inference"
            f" at {row['avg_power_w']:.0f} W"
        )
    table = result["latency_table"].get("tail", [])
    lines += [f"  {line}" for line in table if "random block subsets" in line]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
