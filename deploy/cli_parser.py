"""The `deploy` command line's parser: its commands and flags, with no behaviour of its own.

`deploy.cli.main` parses with it and runs the command; the flags' values are checked there
(deploy.cli_options), so every mistake is reported the same one-line way. `build_parser`
is also what a CLI reference is generated from, and `add_bench_arguments` gives
`compressor bench` the very same flags.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
from pathlib import Path
from typing import Any

from deploy.errors import DeployConfigError
from deploy.machine.power import SOURCES as POWER_SOURCES
from deploy.onnx_info import PRECISIONS

CLI_BACKENDS = ("onnxruntime", "tensorrt", "trtexec", "torch")
PROFILE_BACKENDS = ("onnxruntime", "tensorrt", "trtexec")  # deploy.profiling.profile_blocks
PROFILE_ITERATIONS = 300  # profile-blocks' default --iterations
DISTRIBUTION = "layer-lottery-deploy"  # the name pip knows both commands by


class UsageError(DeployConfigError):
    """argparse found a malformed command line."""


class Parser(argparse.ArgumentParser):
    """ArgumentParser that raises instead of printing usage and exiting, so `main` reports
    every mistake the same one-line way ("deploy: error: ..."): the message names the
    command's own --help, not the program a second time."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def choices(values: tuple[str, ...]) -> str:
    """A metavar that lists a flag's values in --help ("{a,b,c}"). The values are checked by
    the command (deploy.cli_options), not by argparse, so a wrong one gets the project's own
    one-line message rather than argparse's."""
    return "{" + ",".join(values) + "}"


def package_version() -> str:
    """This distribution's version: from the installed metadata, else (a source tree run
    with PYTHONPATH, not installed) from the pyproject.toml beside the packages."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        pass
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    try:
        text = pyproject.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return "unknown (not installed)"
    project = re.search(r"^\[project\]$(.*?)(?=^\[|\Z)", text, re.MULTILINE | re.DOTALL)
    found = (
        re.search(r'^version\s*=\s*"([^"]+)"', project.group(1), re.MULTILINE) if project else None
    )
    return f"{found.group(1)} (source tree, not installed)" if found else "unknown (not installed)"


def add_version(parser: argparse.ArgumentParser) -> None:
    """--version, printed as "deploy 0.1.0" (the program's name, then the version)."""
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {package_version()}",
        help="print the version and exit",
    )  # fmt: skip


def build_parser(prog: str = "deploy") -> argparse.ArgumentParser:
    """Every `deploy` command and flag (`prog="compressor"` for `compressor bench`)."""
    parser = Parser(prog=prog, description="Build, benchmark and compare models on devices.")
    add_version(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_bench(commands)
    _add_build(commands)
    _add_report(commands)
    _add_compare(commands)
    _add_profile_blocks(commands)
    info = commands.add_parser(
        "info",
        help="describe this device (the fingerprint results carry) and clock warnings",
        description="Print this device's fingerprint, the facts every result file carries "
        "(CPU, GPU, driver, libraries, Jetson power mode, clocks), and warn when clocks are "
        "not locked.",
    )
    info.add_argument("--json", action="store_true", help=_JSON_HELP)
    return parser


_JSON_HELP = "print the result as one JSON object on stdout instead of text"
BENCH_HELP = "time a model on one backend and write a result file"
BENCH_DESCRIPTION = (
    "Time a model at one or more batch sizes and write a result file. onnxruntime "
    "runs ONNX files; tensorrt runs engines (or builds one from an ONNX file first); "
    "trtexec times an ONNX file or engine with NVIDIA's trtexec; torch runs "
    "torch.export (.pt2) files."
)


def _add_bench(commands: Any) -> None:
    bench = commands.add_parser("bench", help=BENCH_HELP, description=BENCH_DESCRIPTION)
    add_bench_arguments(bench)


def add_bench_arguments(bench: argparse.ArgumentParser) -> None:
    """The flags of `deploy bench`, which `compressor bench` shares."""
    bench.add_argument("model", type=Path, help="the model file to time")
    bench.add_argument(
        "--backend",
        default="onnxruntime",
        metavar=choices(CLI_BACKENDS),
        help="what runs the model (default onnxruntime)",
    )
    bench.add_argument(
        "--precision",
        default=None,
        metavar=choices(PRECISIONS),
        help="onnxruntime and torch run what the file holds (checked), tensorrt/trtexec "
        "build for it (default: the file's precision)",
    )
    bench.add_argument("--batch", default="1", help="batch sizes, comma-separated (default 1)")
    _timing_group(bench)
    _stability_group(bench)
    _accuracy_group(bench)
    _power_group(bench)
    _backend_group(bench)
    _tensorrt_build_group(bench)
    bench.add_argument("--output", type=Path, default=None, help="result file path")
    bench.add_argument(
        "--name",
        default=None,
        help="model name in results (default: the variant in the ONNX metadata, else the "
        "file stem); results tell models apart by their metadata or file hash either way",
    )
    bench.add_argument(
        "--profile",
        action="store_true",
        help="per-node times, in a pass of their own after the timed run, written to "
        "<output stem>.profile.json (onnxruntime and trtexec)",
    )


def _add_profile_blocks(commands: Any) -> None:
    profile = commands.add_parser(
        "profile-blocks",
        help="time every removable block of a dense ONNX file alone: a latency table",
        description=(
            "Cut each block listed in blocks.json (written by compressor beside the dense "
            "model.onnx) out of the ONNX file, time the blocks, a per-call baseline, the whole "
            "network and the network without the blocks side by side, and write a latency "
            "table with this device's fingerprint. `compressor` prunes to a latency budget "
            "with it (prune.latency_table), so a table measured on a Jetson drives pruning "
            "on the training machine."
        ),
    )
    profile.add_argument("model", type=Path, help="the dense ONNX file")
    profile.add_argument(
        "--blocks",
        type=Path,
        default=None,
        help="the blocks file (default beside the model: blocks.json for model.onnx, as in a "
        "run, <stem>.blocks.json for any other name, as in a bundle)",
    )
    profile.add_argument(
        "--backend",
        default="onnxruntime",
        metavar=choices(PROFILE_BACKENDS),
        help="what times the blocks (default onnxruntime)",
    )
    profile.add_argument(
        "--precision",
        default=None,
        metavar=choices(PRECISIONS),
        help="tensorrt/trtexec build for it; onnxruntime runs the file's own (default: the "
        "file's precision)",
    )
    profile.add_argument("--batch", default="1", help="batch sizes, comma-separated (default 1)")
    _timing_group(profile)
    # Blocks take microseconds: 100 iterations are over before the clocks settle.
    profile.set_defaults(iterations=str(PROFILE_ITERATIONS))
    _stability_group(profile)
    profile.add_argument("--trtexec", type=Path, default=None, help="path of the trtexec binary")
    profile.add_argument(
        "--output",
        type=Path,
        default=Path("latency_table.json"),
        help="the table to write (default ./latency_table.json)",
    )


def _timing_group(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("timing")
    group.add_argument(
        "--threads",
        default=None,
        help="intra-op threads of CPU backends (default: one per CPU this process may use)",
    )
    group.add_argument(
        "--cpus",
        default=None,
        help="pin the benchmark to these CPUs, e.g. 0-3 or 0,2 (Linux); --threads then "
        "defaults to their number",
    )
    group.add_argument("--warmup", default="20", help="untimed iterations first (default 20)")
    group.add_argument("--iterations", default="100", help="timed iterations, at least")
    group.add_argument(
        "--repeats",
        default="3",
        help="independent timed runs the iterations are split into; the spread of their "
        "medians is the run-to-run CV (default 3)",
    )
    group.add_argument("--min-seconds", default="0", help="time at least this long per batch")
    group.add_argument("--max-seconds", default="300", help="stop timing a batch after this")
    group.add_argument("--seed", default="0", help="seed of the random inputs (default 0)")
    group.add_argument(
        "--shapes",
        default=None,
        help="sizes of dynamic input dims: name:1x3x224x224[,name2:...]; axis 0 follows --batch",
    )


def _stability_group(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("measurement warnings")
    group.add_argument(
        "--max-cv", default="0.10", help="warn above this per-iteration CV (default 0.10)"
    )
    group.add_argument(
        "--max-run-cv", default="0.05", help="warn above this run-to-run CV (default 0.05)"
    )
    group.add_argument(
        "--max-load",
        default="0.5",
        help="warn above this load average per CPU besides the benchmark's own (default 0.5)",
    )
    group.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when there are measurement warnings (results are still written)",
    )
    group.add_argument(
        "--require-locked-clocks",
        action="store_true",
        help="refuse to time when the device's clocks are not locked (Jetson: jetson_clocks)",
    )


def _accuracy_group(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("accuracy")
    group.add_argument(
        "--data",
        type=Path,
        default=None,
        help="labelled evaluation file (.npz with images and labels): adds top-1 accuracy",
    )
    group.add_argument(
        "--expect-top1",
        default=None,
        help="with --data: fail (exit 1, results still written) when top-1 is further than "
        "--top1-tolerance from this fraction, e.g. the accuracy a bundle's manifest expects",
    )
    group.add_argument(
        "--top1-tolerance", default="0.01", help="allowed |top-1 - expected| (default 0.01)"
    )


def _power_group(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("energy")
    group.add_argument(
        "--power",
        default="auto",
        metavar=choices(POWER_SOURCES),
        help="power sampling for energy per inference: auto (NVML or tegrastats when "
        "present; default), nvml, tegrastats, none",
    )
    group.add_argument(
        "--power-seconds", default="2", help="seconds each model runs alone while power is sampled"
    )


def _backend_group(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("backends")
    group.add_argument(
        "--device",
        default="auto",
        metavar="{auto,cpu,cuda,cuda:N}",
        help="torch backend: where the model runs (default auto: CUDA when available)",
    )
    group.add_argument(
        "--allow-pickle",
        action="store_true",
        help="torch backend: load a .pt2 file, which torch reads with pickle (trusted files only)",
    )
    group.add_argument("--cuda-graph", action="store_true", help="tensorrt: replay a CUDA graph")
    group.add_argument(
        "--cuda-buffers",
        default="auto",
        metavar="{auto,torch,cuda-python}",
        help="tensorrt: where the GPU buffers, stream and events come from (default auto: "
        "torch when it sees a GPU, else cuda-python, so a device needs no torch)",
    )
    group.add_argument(
        "--engine-dir",
        type=Path,
        default=Path("engines"),
        help="tensorrt: where engines built from ONNX files go (default ./engines)",
    )
    group.add_argument("--trtexec", type=Path, default=None, help="path of the trtexec binary")


def _tensorrt_build_group(parser: argparse.ArgumentParser) -> None:
    """The engine-build flags `deploy bench` (for ONNX files) and `deploy build` share."""
    group = parser.add_argument_group("TensorRT engine build")
    group.add_argument("--workspace-mib", default=None, help="TensorRT builder workspace (MiB)")
    group.add_argument("--timing-cache", type=Path, default=None, help="TensorRT timing cache file")
    group.add_argument("--dla-core", default=None, help="run on this DLA core (Jetson)")


def _add_build(commands: Any) -> None:
    build = commands.add_parser(
        "build",
        help="build a TensorRT engine from an ONNX file",
        description="Build a TensorRT engine (with its sidecar JSON) from an ONNX file.",
    )
    build.add_argument("model", type=Path, help="the ONNX file (FP16 / QDQ ONNX for fp16/int8)")
    build.add_argument(
        "--precision",
        default=None,
        metavar=choices(PRECISIONS),
        help="what the engine computes in (default: the file's precision)",
    )
    build.add_argument(
        "--batch", default="1", help="batch sizes the engine must run; the profile spans them"
    )
    build.add_argument("--shapes", default=None, help="sizes of other dynamic dims (see bench)")
    _tensorrt_build_group(build)
    build.add_argument(
        "--output",
        type=Path,
        default=None,
        help="engine path (default: MODEL's folder, <stem>.<precision>.b<max batch>.engine)",
    )
    build.set_defaults(engine_dir=None)


def _add_report(commands: Any) -> None:
    report = commands.add_parser(
        "report",
        help="merge result files from several devices into one report",
        description=(
            "Merge result files (or directories of them) into report.md, report.html and "
            "plots; measurements from different device fingerprints stay in separate columns."
        ),
    )
    report.add_argument("results", type=Path, nargs="+", help="result files or directories")
    report.add_argument("--out", type=Path, default=Path("report"), help="output directory")
    report.add_argument(
        "--baseline",
        default=None,
        help="model the speed-ups are over (default: dense, when the files have it)",
    )
    report.add_argument("--batch", default=None, help="only this batch size")


def _add_compare(commands: Any) -> None:
    compare = commands.add_parser(
        "compare",
        help="speed-ups of one result file over another, measured on the same device",
        description=(
            "Print, per model x backend x device x precision x batch in both files, the "
            "speed-up of NEW over BASELINE (baseline p50 / new p50) with medians, p90/p99 and "
            "both run-to-run CVs. Files from different device fingerprints are refused unless "
            "--allow-cross-device is given."
        ),
    )
    compare.add_argument("baseline", type=Path, help="result file to compare against")
    compare.add_argument("new", type=Path, help="result file whose speed-up is shown")
    compare.add_argument(
        "--allow-cross-device",
        action="store_true",
        help="compute speed-ups between different fingerprints (labelled as cross-device)",
    )
    compare.add_argument("--batch", default=None, help="only this batch size")
    compare.add_argument("--json", action="store_true", help=_JSON_HELP)
