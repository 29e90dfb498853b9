"""The `compressor` command line's parser: its commands and flags, with no behaviour of its
own (compressor.cli runs them). `build_parser()` is also what a CLI reference is generated
from: every command is here with every flag, `bench` included (its flags are `deploy
bench`'s, added by `deploy.cli_parser.add_bench_arguments`; `compressor bench` runs
through `deploy.cli.main`, which builds the same parser under the name "compressor").
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from deploy.cli_parser import BENCH_DESCRIPTION, add_bench_arguments, add_version

EXIT_ERROR, EXIT_CONFIG, EXIT_NOT_COMPARABLE = 1, 2, 3
_RESUME_HELP = "continue from what an interrupted run left in --out"
_JSON_HELP = "print the result as one JSON object on stdout instead of text"


class Parser(argparse.ArgumentParser):
    """argparse with its error on one line: a mistyped argument may hold a newline or \\r."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {printable(message)}\n")


def output_path(text: str) -> str:
    """An empty --out would mean the current directory, whose files a stage may overwrite."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a file or folder, got an empty path")
    return text


def printable(text: str) -> str:
    """Control characters shown escaped (as repr does), everything else as typed."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def build_parser() -> argparse.ArgumentParser:
    """Every `compressor` command and flag; `args.command` names the command parsed."""
    parser = Parser(
        prog="compressor",
        description="Layer pruning at initialization -> training -> channel shrinking -> "
        "ONNX -> measured latency. With no recipe, the embedded default (ResNet-56 on the "
        "bundled 8x8 digits, offline).",
    )
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_command(
        sub,
        "run",
        "run the whole pipeline: dense, ticket, shrunk ticket, report",
        out="runs/default",
    ).add_argument("--resume", action="store_true", help=_RESUME_HELP)
    _add_lottery(sub)
    _add_stage_commands(sub)
    _add_bundle(sub)
    _add_lint(sub)
    bench = sub.add_parser(
        "bench",
        help="benchmark an ONNX file (same as `deploy bench`)",
        description=BENCH_DESCRIPTION,
    )
    add_bench_arguments(bench)
    return parser


def _add_command(
    sub: Any, name: str, help_text: str, *, model: bool = False, out: str | None = None
) -> argparse.ArgumentParser:
    """A command that takes an optional recipe (and a stored model, and --out)."""
    p = sub.add_parser(name, help=help_text, description=_sentence(help_text))
    if model:
        p.add_argument("model", help="stored model directory (spec.json + weights.safetensors)")
    p.add_argument("recipe", nargs="?", default=None, help="recipe YAML (default: embedded)")
    if out is not None:
        p.add_argument(
            "--out", default=out, type=output_path, help=f"output location (default: {out})"
        )
    return p


def _sentence(text: str) -> str:
    """A help line as a description: capitalised, with a full stop."""
    return f"{text[:1].upper()}{text[1:]}."


def _add_stage_commands(sub: Any) -> None:
    """The stages one at a time, as `run` runs them."""
    _add_command(sub, "blocks", "list the model's residual blocks and which can be removed")
    _add_command(
        sub, "prune", "layer pruning at init: store the ticket (theta_0 weights)", out="runs/prune"
    )
    _add_command(sub, "train", "train a stored model", model=True, out="runs/train").add_argument(
        "--resume", action="store_true", help=_RESUME_HELP
    )
    _add_command(
        sub,
        "shrink",
        "shrink channels of a trained model and fine-tune",
        model=True,
        out="runs/shrink",
    ).add_argument("--resume", action="store_true", help=_RESUME_HELP)
    _add_command(
        sub,
        "export",
        "export a stored model to ONNX with parity check",
        model=True,
        out="model.onnx",
    )


def _add_lottery(sub: Any) -> None:
    lottery = _add_command(
        sub,
        "lottery",
        "the layer-lottery experiment: criteria x blocks removed x seeds, baselines, "
        "robustness, LMC and CKA, in one resumable grid (default: ResNet-32 on the digits)",
        out="runs/lottery",
    )
    lottery.add_argument("--resume", action="store_true", help="continue or grow the grid in --out")
    lottery.add_argument(
        "--cifar10",
        metavar="DIR",
        default=None,
        help="the CIFAR-10 python batches folder: the paper-scale recipe (without a recipe) "
        "or the recipe's data replaced by it",
    )
    lottery.add_argument(
        "--plan", action="store_true", help="print the cells and epochs to train, then stop"
    )
    lottery.add_argument(
        "--summary-only",
        action="store_true",
        help="write the summary of the finished grid in --out again, training nothing "
        "(without RECIPE: the grid's own recipe.json)",
    )
    scale = lottery.add_argument_group(
        "scale-out",
        "cells as Ray tasks across GPUs or nodes (pip install 'layer-lottery-deploy[ray]'); "
        "--out must be on a file system every node shares",
    )
    scale.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local: the cells one after another in this process (default); ray: each cell "
        "a Ray task, one GPU each on GPU machines",
    )
    scale.add_argument(
        "--workers",
        type=int,
        metavar="N",
        default=None,
        help="most cells trained at once (default: one per GPU, or the cores / --threads)",
    )
    scale.add_argument(
        "--address",
        metavar="ADDR",
        default=None,
        help="join the Ray cluster at ADDR (e.g. 10.0.0.1:6379, or 'auto') instead of "
        "starting one on this machine",
    )
    scale.add_argument(
        "--threads",
        type=int,
        metavar="N",
        default=None,
        help="CPU threads per cell on CPU workers (default: train.threads, else cores / workers)",
    )
    scale.add_argument(
        "--retries",
        type=int,
        metavar="N",
        default=None,
        help="times a cell whose worker died is started again, from its checkpoint (default 2)",
    )


def _add_bundle(sub: Any) -> None:
    bundle = sub.add_parser(
        "bundle",
        help="write a folder to copy to a Jetson or GPU server: ONNX, INT8 and FP16 ONNX, "
        "an evaluation file, a manifest, deploy and a script",
        description="Write a folder to copy to a Jetson or GPU server from a finished "
        "`compressor run`: each variant's FP32, INT8 QDQ and FP16 ONNX files, a small labelled "
        "evaluation file, a manifest with the files' hashes and the accuracy each reached "
        "here, a copy of the torch-free deploy package, and run_on_device.sh, which benchmarks "
        "every file there and fails when its accuracy is not the manifest's.",
    )
    bundle.add_argument("run_dir", help="a finished `compressor run` output directory")
    bundle.add_argument(
        "--out", default="bundle", type=output_path, help="folder to write (default: bundle)"
    )
    bundle.add_argument(
        "--eval-samples", type=int, default=360, help="test images in eval.npz (default 360)"
    )


def _add_lint(sub: Any) -> None:
    lint = sub.add_parser(
        "lint",
        help="check an ONNX file for what TensorRT's parser would refuse (no TensorRT needed)",
        description="Check an ONNX file against what a TensorRT version parses and builds: "
        "unsupported operators and data types, dynamic inputs without a profile, DLA and "
        "strong-typing limits. No TensorRT is needed. Exit code 1 when there is an error "
        "finding, 0 otherwise (warnings may still cost speed).",
    )
    lint.add_argument("onnx", help="the ONNX file")
    lint.add_argument(
        "--trt-version",
        default="10",
        metavar="VERSION",
        help="the TensorRT version to check against: 8.6, 10, 10.x or 11 (default 10)",
    )
    lint.add_argument(
        "--profile",
        default=None,
        help="shapes of dynamic inputs: name:MIN,OPT,MAX e.g. input:1x1x16x16,8x1x16x16,"
        "32x1x16x16 (several inputs separated by ';')",
    )
    lint.add_argument("--json", action="store_true", help=_JSON_HELP)
