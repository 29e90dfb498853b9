"""The `deploy profile-blocks` command: flags in, a latency table out, one summary printed."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from deploy.cli_options import (
    precision_option,
    stability_limits,
    threads_option,
    timing_config,
)
from deploy.errors import DeployConfigError, MeasurementError
from deploy.files import file_sha256, output_lock
from deploy.machine.cpus import default_threads, format_cpu_list, parse_cpu_list, pin_process
from deploy.machine.fingerprint import clock_warnings, require_locked_clocks, summary_line
from deploy.machine.stability import timing_warnings
from deploy.onnx_files import check_onnx_file
from deploy.paths import check_replaceable_output
from deploy.profiling.blocks_file import check_blocks_match, default_blocks_path, read_blocks
from deploy.profiling.profile_blocks import profile_blocks
from deploy.profiling.table import LatencyTable, read_table, write_table
from deploy.records import LatencyRecord
from deploy.session import BenchSession

# Turns of this many iterations: a subgraph of microseconds would otherwise spend most of
# the profile in the lead-in before each turn (deploy/timed_runs.py).
PROFILE_BLOCK_ITERS = 100
SHOWN_WARNINGS = 5  # of dozens of timed subgraphs; all are in the table


def profile_blocks_command(args: argparse.Namespace) -> int:
    if args.shapes:
        raise DeployConfigError(
            "--shapes: profile-blocks takes the shapes from the model; only the batch varies "
            "(--batch)"
        )
    precision = precision_option(args.precision)
    threads = threads_option(args.threads)
    limits = stability_limits(args)
    config = timing_config(args, block_iters=PROFILE_BLOCK_ITERS)
    check_onnx_file(args.model)  # a model that is no ONNX file is named as such first
    blocks_path = args.blocks or default_blocks_path(args.model)
    blocks = read_blocks(blocks_path)
    check_blocks_match(blocks, blocks_path, args.model, file_sha256(args.model))
    check_replaceable_output(
        args.output,
        (args.model, blocks_path),
        read_table,
        is_input="an input of the profile",
        kind="latency table",
    )
    with output_lock(args.output, "--output"):
        pinned = format_cpu_list(pin_process(parse_cpu_list(args.cpus))) if args.cpus else None
        if threads is None and args.backend == "onnxruntime":
            threads = default_threads()
        session = BenchSession(threads, pinned, limits)
        if args.require_locked_clocks:
            require_locked_clocks(session.fingerprint)
        for line in clock_warnings(session.fingerprint):
            print(f"deploy: warning: {line}", file=sys.stderr)
        session.monitor.sample("start")
        table = profile_blocks(
            args.model,
            blocks,
            config,
            session.fingerprint,
            backend=args.backend,
            precision=precision,
            threads=threads,
            monitor=session.monitor,
            trtexec=str(args.trtexec) if args.trtexec else None,
            log=lambda line: print(line, file=sys.stderr),
        )
        session.monitor.sample("end")
        records = [LatencyRecord.from_dict(r) for r in table.records]
        warnings = timing_warnings(records, session.monitor.samples, limits)
        table = dataclasses.replace(table, warnings=warnings)
        write_table(args.output, table)
    print(summary_line(session.fingerprint))
    print(format_latency_table(table))
    print(f"latency table written to {args.output}")
    for line in warnings[:SHOWN_WARNINGS]:
        print(f"deploy: warning: {line}", file=sys.stderr)
    if len(warnings) > SHOWN_WARNINGS:
        print(
            f"deploy: warning: ... and {len(warnings) - SHOWN_WARNINGS} more, in the table's "
            '"warnings"',
            file=sys.stderr,
        )
    if args.strict and warnings:
        raise MeasurementError(
            f"--strict: {len(warnings)} measurement warning(s) above; the table is kept in "
            f"{args.output} (with the warnings) but should not be trusted as it stands"
        )
    return 0


def format_latency_table(table: LatencyTable) -> str:
    """Per batch: the network, its skeleton, and each block's cost beside its MACs."""
    lines = []
    for batch, t in sorted(table.batches.items()):
        lines.append(
            f"batch {batch}, {table.backend} {table.precision}: network {t.network_ms:.4f} ms, "
            f"without all {len(t.blocks)} blocks {t.skeleton_ms:.4f} ms, scale {t.scale:.2f}"
        )
        lines.append(f"  {'block':<16} {'cost ms':>9} {'alone ms':>9} {'MMACs':>8}  share")
        for name, b in t.blocks.items():
            share = b.cost_ms / t.network_ms
            lines.append(
                f"  {name:<16} {b.cost_ms:>9.4f} {b.alone_ms:>9.4f} {b.macs / 1e6:>8.2f}  "
                f"{100 * share:4.1f}%"
            )
    return "\n".join(lines)


__all__ = ["format_latency_table", "profile_blocks_command"]
