"""`compressor`: the whole pipeline (`run`) and each stage as a subcommand.

Every stage reads and writes files (stored models, ONNX, JSON), so any one of them can be
re-run alone. User mistakes end in one line on stderr and a non-zero exit code:
2 for a bad recipe or argument, 1 for anything else the project reports; never a traceback.
`run` exits 3 when it finished and wrote every file but the accuracy check marked a variant
not comparable (more than report.max_accuracy_drop points below dense, or at chance).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

from compressor.errors import CompressorError, ConfigError

EXIT_ERROR, EXIT_CONFIG, EXIT_NOT_COMPARABLE = 1, 2, 3


def _recipe(args: argparse.Namespace):  # noqa: ANN202
    """The recipe, after checking that what the command writes overwrites nothing it must not."""
    from compressor.outdir import check_outputs
    from compressor.recipe.sections import load_recipe

    recipe = load_recipe(args.recipe)
    out = getattr(args, "out", None)
    if out is None or args.command in ("blocks", "bundle", "lint"):
        return recipe
    out = Path(out)
    inputs = tuple(
        p for p in (args.recipe, getattr(args, "model", None), recipe.model.weights) if p
    )
    if args.command == "export":  # the FP32 file and its INT8 and FP16 siblings
        writes = [out, *(out.with_name(f"{out.stem}{s}.onnx") for s in (".int8", ".fp16"))]
        for path in writes:
            _check_onnx_output(path)
    elif args.command == "prune":  # a stored model
        writes = [out / name for name in ("spec.json", "weights.safetensors", "prune.json")]
    elif args.command in ("train", "shrink"):
        writes = [out / "model", out / "train", out / "shrink.json"]
    elif args.command == "run":
        names = ("recipe.json", "report.json", "report.md", "latency.json", "dense", "ticket")
        writes = [out / name for name in (*names, "shrunk", "accuracy_vs_latency.png")]
    else:  # lottery: a folder per cell (named by its key), the summary files
        writes = [out / name for name in ("recipe.json", "summary.json", "summary.md")]
    stage = "pruned at init" if args.command == "prune" else None
    own = out / "model" if args.command in ("train", "shrink") else None
    check_outputs(writes, inputs=inputs, replaces_model_of_stage=stage, own_model=own)
    return recipe


def _check_onnx_output(path: Path) -> None:
    """An ONNX output may replace an ONNX file, nothing else (a checkpoint, weights, a link)."""
    from deploy.model_files import pickle_kind
    from deploy.paths import check_output_path

    check_output_path(path, "--out")
    if path.is_file() and (path.suffix != ".onnx" or pickle_kind(path) is not None):
        raise ConfigError(
            f"--out {path} exists and is not an ONNX file; it is never replaced: "
            "choose a .onnx path"
        )


def cmd_run(args: argparse.Namespace) -> int:
    from compressor.workflows.pipeline import run_pipeline

    recipe = _recipe(args)
    result = run_pipeline(recipe, args.out, resume=args.resume)
    if result is None:  # a torchrun process other than rank 0: rank 0 prints the report
        return 0
    print(Path(result.report_md).read_text())
    print(f"report: {result.report_json}")
    if result.not_comparable:
        from compressor.workflows.accuracy_check import not_comparable_message

        print(f"compressor: {not_comparable_message(result.not_comparable)}", file=sys.stderr)
        return EXIT_NOT_COMPARABLE
    return 0


def cmd_lottery(args: argparse.Namespace) -> int:
    import dataclasses

    from compressor.data.config import DataConfig
    from compressor.recipe.resume import started_recipe
    from compressor.recipe.sections import recipe_from_dict
    from compressor.workflows.lottery.executor_config import ExecutorConfig
    from compressor.workflows.lottery.experiment import plan, run_experiment
    from compressor.workflows.lottery.recipes import lottery_recipe

    started = started_recipe(Path(args.out)) if args.summary_only else None
    if args.recipe is None and started is not None:
        recipe = recipe_from_dict(started)  # --summary-only: the grid's own recipe
    elif args.recipe is None:
        recipe = lottery_recipe(args.cifar10)
    else:
        recipe = _recipe(args)
        if args.cifar10 is not None:
            recipe = dataclasses.replace(recipe, data=DataConfig(name="cifar10", root=args.cifar10))
    executor = ExecutorConfig(args.executor, args.workers, args.address, args.threads, args.retries)
    if args.plan:
        cells = plan(recipe.experiment)
        kinds: dict[str, int] = {}
        for cell in cells:
            kinds[cell.kind] = kinds.get(cell.kind, 0) + 1
        total = sum(cell.epochs_to_train(recipe.train.epochs) for cell in cells)
        print(
            f"{len(cells)} networks to train ({', '.join(f'{n} {k}' for k, n in kinds.items())}), "
            f"{total} epochs in all; runtime = {total} x one dense epoch's time, at most"
        )
        return 0
    summary = run_experiment(
        recipe, args.out, resume=args.resume, executor=executor, summary_only=args.summary_only
    )
    print(summary.read_text())
    print(f"summary: {summary} (summary.json, delta_vs_p.png, savings_vs_p.png beside it)")
    return 0


def cmd_blocks(args: argparse.Namespace) -> int:
    from compressor.workflows.stages import list_blocks

    print(list_blocks(_recipe(args)))
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from compressor.workflows.stages import prune_stage

    print(json.dumps(prune_stage(_recipe(args), Path(args.out)), indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from compressor.workflows.stages import train_stage

    print(json.dumps(train_stage(args.model, _recipe(args), Path(args.out), args.resume), indent=2))
    return 0


def cmd_shrink(args: argparse.Namespace) -> int:
    from compressor.workflows.stages import shrink_stage

    print(
        json.dumps(shrink_stage(args.model, _recipe(args), Path(args.out), args.resume), indent=2)
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from compressor.workflows.stages import export_stage

    print(json.dumps(export_stage(args.model, _recipe(args), Path(args.out)), indent=2))
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from compressor.workflows.bundle import write_bundle

    out = write_bundle(args.run_dir, args.out, eval_samples=args.eval_samples)
    print(f"bundle written to {out}; copy it to the device and run ./run_on_device.sh there")
    return 0


def cmd_lint(args: argparse.Namespace) -> int:
    from export.readiness import check_readiness

    profiles = _profiles(args.profile) if args.profile else None
    report = check_readiness(args.onnx, trt_version=args.trt_version, profiles=profiles)
    print(report.format())
    return 1 if report.errors else 0


def _profiles(text: str) -> dict[str, tuple[tuple[int, ...], ...]]:
    """ "input:1x3x32x32,8x3x32x32,32x3x32x32" (min,opt,max; inputs separated by ';')."""
    profiles = {}
    for item in text.split(";"):
        name, sep, shapes = item.strip().rpartition(":")
        parts = shapes.split(",")
        try:
            dims = tuple(tuple(int(d) for d in part.lower().split("x")) for part in parts)
        except ValueError:
            dims = ()
        if not sep or not name or len(dims) != 3:
            raise ConfigError(
                f"--profile: expected name:MIN,OPT,MAX with shapes like 1x3x32x32, got {item!r}"
            )
        profiles[name] = dims
    return profiles


class _Parser(argparse.ArgumentParser):
    """argparse with its error on one line: a mistyped argument may hold a newline or \\r."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {_printable(message)}\n")


def _output(text: str) -> str:
    """An empty --out would mean the current directory, whose files a stage may overwrite."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a file or folder, got an empty path")
    return text


def _printable(text: str) -> str:
    """Control characters shown escaped (as repr does), everything else as typed."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="compressor",
        description="Layer pruning at initialization -> training -> channel shrinking -> "
        "ONNX -> measured latency. With no recipe, the embedded default (ResNet-56 on the "
        "bundled 8x8 digits, offline).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_command(
        sub,
        "run",
        "run the whole pipeline: dense, ticket, shrunk ticket, report",
        cmd_run,
        out="runs/default",
    ).add_argument("--resume", action="store_true", help=_RESUME_HELP)
    _add_lottery(sub)
    _add_stage_commands(sub)
    _add_bundle(sub)
    _add_lint(sub)
    # Parsed by `deploy` (see main); listed here so --help shows it.
    sub.add_parser("bench", help="benchmark an ONNX file (same as `deploy bench`)", add_help=False)
    return parser


_RESUME_HELP = "continue from what an interrupted run left in --out"


def _add_command(  # noqa: ANN202
    sub: Any, name: str, help_text: str, func: Any, *, model: bool = False, out: str | None = None
):
    """A command that takes an optional recipe (and a stored model, and --out)."""
    p = sub.add_parser(name, help=help_text, description=help_text)
    if model:
        p.add_argument("model", help="stored model directory (spec.json + weights.safetensors)")
    p.add_argument("recipe", nargs="?", default=None, help="recipe YAML (default: embedded)")
    if out is not None:
        p.add_argument("--out", default=out, type=_output, help=f"output location (default: {out})")
    p.set_defaults(func=func)
    return p


def _add_stage_commands(sub: Any) -> None:
    """The stages one at a time, as `run` runs them."""
    _add_command(
        sub, "blocks", "list the model's residual blocks and which can be removed", cmd_blocks
    )
    _add_command(
        sub,
        "prune",
        "layer pruning at init: store the ticket (theta_0 weights)",
        cmd_prune,
        out="runs/prune",
    )
    _add_command(
        sub, "train", "train a stored model", cmd_train, model=True, out="runs/train"
    ).add_argument("--resume", action="store_true", help=_RESUME_HELP)
    _add_command(
        sub,
        "shrink",
        "shrink channels of a trained model and fine-tune",
        cmd_shrink,
        model=True,
        out="runs/shrink",
    ).add_argument("--resume", action="store_true", help=_RESUME_HELP)
    _add_command(
        sub,
        "export",
        "export a stored model to ONNX with parity check",
        cmd_export,
        model=True,
        out="model.onnx",
    )


def _add_lottery(sub: Any) -> None:
    lottery = _add_command(
        sub,
        "lottery",
        "the layer-lottery experiment: criteria x blocks removed x seeds, baselines, "
        "robustness, LMC and CKA, in one resumable grid (default: ResNet-32 on the digits)",
        cmd_lottery,
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
    )
    bundle.add_argument("run_dir", help="a finished `compressor run` output directory")
    bundle.add_argument(
        "--out", default="bundle", type=_output, help="folder to write (default: bundle)"
    )
    bundle.add_argument(
        "--eval-samples", type=int, default=360, help="test images in eval.npz (default 360)"
    )
    bundle.set_defaults(func=cmd_bundle)


def _add_lint(sub: Any) -> None:
    lint = sub.add_parser(
        "lint",
        help="check an ONNX file for what TensorRT's parser would refuse (no TensorRT needed)",
    )
    lint.add_argument("onnx", help="the ONNX file")
    lint.add_argument("--trt-version", default="10", help="TensorRT version: 8.6, 10, 10.x, 11")
    lint.add_argument(
        "--profile",
        default=None,
        help="shapes of dynamic inputs: name:MIN,OPT,MAX e.g. input:1x1x16x16,8x1x16x16,"
        "32x1x16x16 (several inputs separated by ';')",
    )
    lint.set_defaults(func=cmd_lint)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from deploy.cli import main as deploy_main

        return deploy_main(argv)
    from deploy.signals import stop_on_termination

    stop_on_termination()
    parser = build_parser()
    args = parser.parse_args(argv)
    from deploy.errors import DeployConfigError, DeployError
    from export.errors import ExportConfigError, ExportError

    try:
        return args.func(args)
    except (ConfigError, DeployConfigError, ExportConfigError) as exc:
        print(f"compressor: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_CONFIG
    except (CompressorError, DeployError, ExportError) as exc:
        print(f"compressor: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as exc:
        from deploy.signals import exit_code, signal_name

        resumable = args.command in ("run", "lottery", "train", "shrink")
        advice = "rerun with --resume to continue" if resumable else "nothing half-written was kept"
        print(f"compressor: interrupted ({signal_name(exc)}); {advice}", file=sys.stderr)
        return exit_code(exc)


def _one_line(exc: BaseException) -> str:
    """Line breaks inside a message become spaces; a stray \\r in a path is shown, not obeyed."""
    return _printable(" ".join(re.split(r"[ \t\n]+", str(exc).strip())))


if __name__ == "__main__":
    sys.exit(main())
