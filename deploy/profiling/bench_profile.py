"""`deploy bench --profile`: per-node times in a pass of their own after the timed runs.

onnxruntime profiles each batch size in a session of its own (deploy.profiling.node_times);
trtexec runs once more per batch size, only to write its per-layer profile and layer
information. Nothing here runs while the benchmark is timing, so the result file's numbers
are those of an unprofiled run. The profiles go to <output stem>.profile.json beside the
result file, where `deploy report` finds them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from deploy.cli_options import optional_int
from deploy.errors import DeployConfigError, DeployInputError
from deploy.files import file_sha256
from deploy.onnx_info import inspect_onnx
from deploy.paths import check_output_path
from deploy.profiling.blocks_file import default_blocks_path
from deploy.profiling.node_times import (
    block_times,
    onnxruntime_node_times,
    trtexec_node_times,
)
from deploy.records import BenchConfig, LatencyRecord
from deploy.results.node_profile import (
    format_node_times,
    read_node_profiles,
    write_node_profiles,
)

PROFILE_BACKENDS = ("onnxruntime", "trtexec")
# Profiled calls per batch, at most: onnxruntime's trace holds an event (~1 kB) per node per
# call, so a ResNet at --iterations 10000 would write hundreds of MB for no better numbers.
MAX_PROFILE_ITERATIONS = 200
SHOWN_NODES = 10


def profile_path(output: Path) -> Path:
    """Where the profiles of the result file `output` go: <stem>.profile.json beside it."""
    return output.with_suffix(".profile.json")


def check_profile_request(backend: str, output: Path) -> Path:
    """Before anything is timed: the backend can profile and the profile file can be written."""
    if backend not in PROFILE_BACKENDS:
        raise DeployConfigError(
            f"--profile: per-node times come from onnxruntime's profiler or trtexec's "
            f"--exportProfile, and --backend {backend} has neither; use --backend "
            "onnxruntime or trtexec"
        )
    path = check_output_path(profile_path(output), "--profile file")
    if path.exists():  # replaced only when it is a profile: never a model or other file
        try:
            read_node_profiles(path)
        except DeployInputError:
            raise DeployInputError(
                f"--profile would replace {path}, which is not a per-node profile; choose "
                "another --output (the profile goes to <output stem>.profile.json)"
            ) from None
    return path


def profile_bench(
    args: argparse.Namespace,
    config: BenchConfig,
    records: Sequence[LatencyRecord],
    threads: int | None,
    output: Path,
) -> str:
    """Profile the model `deploy bench` just timed, at each batch it timed; write the
    profiles beside `output` and return the tables to print."""
    iterations = min(config.iterations, MAX_PROFILE_ITERATIONS)
    model = Path(args.model)
    blocks: Path | None = default_blocks_path(model)  # as `compressor` or a bundle has it
    profiles = []
    for record in records:
        if args.backend == "trtexec":
            profile = trtexec_node_times(
                model,
                record.batch,
                name=record.model,
                precision=record.precision,
                trtexec=args.trtexec,
                iterations=iterations,
                shapes=config.shapes or None,
                timing_cache=args.timing_cache,
                workspace_mib=optional_int("--workspace-mib", args.workspace_mib),
                dla_core=optional_int("--dla-core", args.dla_core, minimum=0),
            )
        else:
            profile = onnxruntime_node_times(
                model,
                record.batch,
                threads,
                iterations,
                name=record.model,
                shapes=config.shapes,
                seed=config.seed,
            )
        if blocks is not None and model.suffix == ".onnx" and blocks.is_file():
            try:
                profile = dataclasses.replace(profile, block_ms=block_times(profile, blocks, model))
            except DeployInputError as exc:  # a blocks.json of another file: said once
                print(f"deploy: warning: no per-block times: {exc}", file=sys.stderr)
                blocks = None
        if model.suffix == ".onnx":
            profile = dataclasses.replace(profile, removed_blocks=removed_blocks(model))
        profiles.append(profile)
    path = write_node_profiles(profile_path(output), profiles, results_sha256=file_sha256(output))
    tables = [format_node_times(profile, SHOWN_NODES) for profile in profiles]
    return "\n".join([*tables, f"per-node times written to {path}"])


def removed_blocks(model: Path) -> tuple[str, ...]:
    """The dense network's blocks a `compressor` model lacks, from the spec in its ONNX
    metadata (none for any other file)."""
    try:
        spec = json.loads(inspect_onnx(model).metadata.get("spec", "{}"))
    except ValueError:
        return ()
    removed = spec.get("removed_blocks") if isinstance(spec, dict) else None
    return tuple(str(b) for b in removed) if isinstance(removed, list) else ()


__all__ = ["PROFILE_BACKENDS", "check_profile_request", "profile_bench", "profile_path"]
