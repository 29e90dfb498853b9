"""`compressor`: the whole pipeline (`run`) and each stage as a subcommand.

Every stage reads and writes files (stored models, ONNX, JSON), so any one of them can be
re-run alone. User mistakes end in one line on stderr and a non-zero exit code:
2 for a bad recipe or argument, 1 for anything else the project reports; never a traceback.
`run` exits 3 when it finished and wrote every file but the accuracy check marked a variant
not comparable (more than report.max_accuracy_drop points below dense, or at chance);
`lint` exits 1 when it found an error. `compressor bench` is `deploy bench` (deploy.cli) under
this name. The parser is compressor.cli_parser (`build_parser`, also re-exported here).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from compressor.cli_parser import (
    EXIT_CONFIG,
    EXIT_ERROR,
    EXIT_NOT_COMPARABLE,
    build_parser,
    printable,
)
from compressor.errors import CompressorError, ConfigError

__all__ = ["EXIT_CONFIG", "EXIT_ERROR", "EXIT_NOT_COMPARABLE", "build_parser", "main"]


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
    if args.command == "export":  # the FP32 file and its INT8, FP16 and BF16 siblings
        siblings = (".int8", ".fp16", ".bf16")
        writes = [out, *(out.with_name(f"{out.stem}{s}.onnx") for s in siblings)]
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
    if args.json:  # the same findings, for scripts: stdout holds this object alone
        print(json.dumps({"schema": LINT_SCHEMA, **report.to_dict()}, indent=2, sort_keys=True))
    else:
        print(report.format())
    return EXIT_ERROR if report.errors else 0


LINT_SCHEMA = "compressor.lint/1"  # `compressor lint --json`: ReadinessReport.to_dict()


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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `compressor` console script; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # deploy's own command, under this program's name
        from deploy.cli import main as deploy_main

        return deploy_main(argv, prog="compressor")
    from deploy.signals import stop_on_termination

    stop_on_termination()
    parser = build_parser()
    args = parser.parse_args(argv)
    from deploy.errors import DeployConfigError, DeployError
    from export.errors import ExportConfigError, ExportError

    try:
        return _COMMANDS[args.command](args)
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
    """Line breaks inside a message become spaces; a stray \r in a path is shown, not obeyed;
    a message that starts with the program's name does not get it twice."""
    text = printable(" ".join(re.split(r"[ \t\n]+", str(exc).strip())))
    return text.removeprefix("compressor: ")


_COMMANDS = {
    "run": cmd_run,
    "lottery": cmd_lottery,
    "blocks": cmd_blocks,
    "prune": cmd_prune,
    "train": cmd_train,
    "shrink": cmd_shrink,
    "export": cmd_export,
    "bundle": cmd_bundle,
    "lint": cmd_lint,
}


if __name__ == "__main__":
    sys.exit(main())
