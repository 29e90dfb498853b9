"""`deploy build`, and the engine build `deploy bench --backend tensorrt` runs for an ONNX
file: both build (or reuse) an engine from the same flags."""

from __future__ import annotations

import argparse
from pathlib import Path

from deploy.cli_options import optional_int, parse_batch_sizes, parse_shapes, precision_option
from deploy.errors import DeployError, DeployInputError
from deploy.files import file_sha256
from deploy.onnx_info import inspect_onnx
from deploy.paths import check_output_path, same_file
from deploy.records import BenchConfig
from deploy.tensorrt.engine import BuildOptions, build_engine, load_engine_info
from deploy.tensorrt.sidecar import EngineInfo, sidecar_path


def build_command(args: argparse.Namespace) -> int:
    """`deploy build`: one engine (and its sidecar) for the batch sizes asked."""
    config = BenchConfig(
        batch_sizes=parse_batch_sizes(args.batch),
        shapes=parse_shapes(args.shapes) if args.shapes else {},
    )
    info = build_from_args(args, config, precision_option(args.precision), args.output)
    print(f"engine written to {info.engine_path} (sidecar {info.sidecar_path})")
    return 0


def build_from_args(
    args: argparse.Namespace, config: BenchConfig, precision: str | None, output: Path | None
) -> EngineInfo:
    """Build (or reuse) an engine whose profile spans the requested batch sizes.

    An engine already at the output path is reused when its sidecar says it was built from
    this very ONNX file (same SHA-256) with the same options; another or a damaged engine of
    ours is rebuilt; a file without a sidecar (a result file, a model) is never replaced.
    """

    info = inspect_onnx(args.model)
    precision = precision or info.precision  # plan_build checks the pair per TensorRT version
    smallest, largest = min(config.batch_sizes), max(config.batch_sizes)
    profile = None
    if config.shapes:
        profile = {
            name: (
                (smallest, *shape[1:]),
                (largest, *shape[1:]),
                (largest, *shape[1:]),
            )
            for name, shape in config.shapes.items()
        }
    options = BuildOptions(
        precision=precision,
        workspace_mib=optional_int("--workspace-mib", args.workspace_mib),
        min_batch=smallest,
        max_batch=largest,
        profile=profile,
        timing_cache=args.timing_cache,
        dla_core=optional_int("--dla-core", args.dla_core, minimum=0),
    )
    if output is None:
        dla = "" if options.dla_core is None else f".dla{options.dla_core}"
        folder = args.engine_dir if args.engine_dir is not None else args.model.parent
        output = folder / f"{args.model.stem}.{precision}.b{largest}{dla}.engine"
    check_output_path(output, "--output")  # a link, FIFO or unwritable folder: before building
    if same_file(output, args.model):
        raise DeployInputError(f"--output {output} is the ONNX file itself; choose another path")
    if output.is_file() and not sidecar_path(output).is_file():
        raise DeployInputError(
            f"--output {output} exists and is not an engine built by deploy (no sidecar "
            f"{sidecar_path(output).name} beside it); it is never replaced: choose another path"
        )
    if output.is_file():
        try:
            existing = load_engine_info(output)
        except DeployError:  # ours but damaged or stale: rebuilt
            existing = None
        if (
            existing is not None
            and existing.sidecar.get("source_onnx", {}).get("sha256") == file_sha256(args.model)
            and existing.sidecar.get("build_options") == options.to_dict()
        ):
            print(f"reusing {output} (built from this ONNX file with these options)")
            return existing
    return build_engine(args.model, output, options, log=print)
