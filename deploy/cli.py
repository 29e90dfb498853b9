"""`deploy` command line: build, benchmark and compare models on this device.

    deploy bench MODEL [--backend onnxruntime|tensorrt|trtexec|torch] [--precision P]
                 [--batch 1,8,32] [--data eval.npz] [--power auto] [--output PATH] ...
    deploy build MODEL.onnx [--precision P] [--batch 1,8,32] [--output ENGINE]
    deploy report RESULTS... [--out DIR] [--baseline dense]
    deploy compare BASELINE.json NEW.json [--allow-cross-device] [--json]
    deploy info [--json]
    deploy --version

Every error `deploy` raises on purpose becomes one line on stderr, "deploy: error: ...", with
exit code 2 for usage and configuration mistakes and 1 for everything else (missing or
corrupt files), so scripts on a device can tell them apart and users see no traceback.
With --json, stdout holds one JSON object and nothing else; warnings stay on stderr.
The parser is deploy.cli_parser; report, compare and info live in deploy.cli_results, the
engine build in deploy.cli_build.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from deploy.bench import BenchConfig, LatencyRecord, benchmark
from deploy.cli_build import build_command, build_from_args
from deploy.cli_options import (
    cuda_buffers_option,
    float_option,
    optional_int,
    parse_shapes,
    power_option,
    precision_option,
    stability_limits,
    threads_option,
    timing_config,
)
from deploy.cli_parser import CLI_BACKENDS, UsageError, build_parser
from deploy.cli_results import compare_command, info_command, report_command
from deploy.errors import DeployConfigError, DeployError, DeployInputError, MeasurementError
from deploy.evaluate import load_labelled, top1_accuracy
from deploy.files import output_lock
from deploy.machine.cpus import default_threads, format_cpu_list, parse_cpu_list, pin_process
from deploy.machine.fingerprint import clock_warnings, require_locked_clocks, summary_line
from deploy.machine.power import open_power_sampler
from deploy.model_files import refuse_pickle
from deploy.onnx_info import inspect_onnx, model_identity
from deploy.paths import check_replaceable_output
from deploy.profiling.bench_profile import check_profile_request, profile_bench
from deploy.records import ModelIdentity
from deploy.results.files import default_results_path, format_table, read_results
from deploy.runners import Runner, make_runner
from deploy.session import BenchSession
from deploy.signals import exit_code, signal_name, stop_on_termination
from deploy.tensorrt.engine import load_engine_info
from deploy.tensorrt.runner import TensorRTRunner
from deploy.tensorrt.trtexec import run_trtexec


def main(argv: Sequence[str] | None = None, prog: str = "deploy") -> int:
    """Entry point of the `deploy` console script; returns the process exit code.

    `prog` names the program in usage, errors and --version: `compressor bench` runs
    through here as prog "compressor".
    """

    stop_on_termination()
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
        return _COMMANDS[args.command](args)
    except DeployConfigError as exc:
        _report(exc, prog)
        return 2
    except DeployError as exc:
        _report(exc, prog)
        return 1
    except KeyboardInterrupt as exc:
        print(
            f"{prog}: interrupted ({signal_name(exc)}); nothing half-written was kept",
            file=sys.stderr,
        )
        return exit_code(exc)
    except SystemExit as exc:  # --help and --version exit through argparse
        return exc.code if isinstance(exc.code, int) else 0


def _bench(args: argparse.Namespace) -> int:
    backend = args.backend
    if backend not in CLI_BACKENDS:
        raise DeployConfigError(
            f"--backend '{backend}' is unknown; choose from {', '.join(CLI_BACKENDS)}"
        )
    precision = precision_option(args.precision)
    power_source = power_option(args.power)
    threads = threads_option(args.threads)
    cuda_buffers_option(args.cuda_buffers)
    limits = stability_limits(args)
    config = _bench_config(args)
    expected = _expected_top1(args)
    data = load_labelled(args.data) if args.data is not None else None
    if data is not None and backend == "trtexec":
        print(
            "deploy: warning: trtexec does not hand back outputs, so --data gives no accuracy; "
            "use --backend tensorrt for accuracy",
            file=sys.stderr,
        )
    name = args.name
    if name is not None and not name.isprintable():  # a newline would break every table
        raise DeployConfigError(f"--name must be one line of printable text, got {name!r}")
    output = args.output or default_results_path()
    check_replaceable_output(
        output, (args.model,), read_results, is_input="the model being timed", kind="result file"
    )
    if args.profile:
        check_profile_request(backend, output)
    with output_lock(output, "--output"):  # a second writer of it is refused
        pinned = format_cpu_list(pin_process(parse_cpu_list(args.cpus))) if args.cpus else None
        if threads is None and backend in ("onnxruntime", "torch"):  # CPU backends: explicit
            threads = default_threads()
        session = BenchSession(threads, pinned, limits)
        _clock_check(session.fingerprint, args.require_locked_clocks)
        monitor = session.monitor
        if backend == "trtexec":
            identity = _bench_identity(args.model)
            name = name or identity.variant or args.model.stem
            monitor.sample("start")
            records = _bench_trtexec(args, config, precision, name)
            monitor.sample("end")
        else:
            runner = _cli_runner(args, config, precision, threads)
            identity = _bench_identity(args.model)  # after the runner checked the file
            name = name or identity.variant or args.model.stem
            power = open_power_sampler(power_source)
            with runner:
                records = benchmark(runner, config, name, power=power, monitor=monitor)
                if data is not None:
                    accuracy = top1_accuracy(runner, data, batch_size=max(config.batch_sizes))
                    records = [
                        replace(r, accuracy=accuracy.top1, accuracy_samples=accuracy.samples)
                        for r in records
                    ]
        records = [record.with_identity(identity) for record in records]
        written = session.finish(records, output)
        path, warnings = written.path, written.warnings
        print(summary_line(session.fingerprint))
        print(format_table(records))
        print(f"results written to {path}")
        for line in warnings:
            print(f"deploy: warning: {line}", file=sys.stderr)
        if args.profile:  # a pass of its own, after the timed runs: never in their numbers
            print(profile_bench(args, config, records, threads, path))
        _check_expected_top1(args, records, expected)
        if args.strict and warnings:
            raise MeasurementError(
                f"--strict: {len(warnings)} measurement warning(s) above; the results are kept in "
                f"{path} (with the warnings) but should not be trusted as they stand"
            )
        return 0


def _bench_config(args: argparse.Namespace) -> BenchConfig:
    return timing_config(
        args,
        shapes=parse_shapes(args.shapes) if args.shapes else {},
        power_seconds=float_option("--power-seconds", args.power_seconds, positive=True),
    )


def _bench_identity(model: Path) -> ModelIdentity:
    """The model a benchmark timed: an ONNX file's metadata and hash; for an engine built
    by deploy, the ONNX file it was built from (its sidecar names it and its hash) while
    that file is still there unchanged, else that file's hash; any other file's own hash."""
    if model.suffix.lower() in (".engine", ".plan", ".trt"):
        try:
            source = load_engine_info(model).sidecar.get("source_onnx", {})
        except DeployError:  # no sidecar (trtexec's own engine): the engine's bytes
            return model_identity(model)
        onnx_path, sha = Path(str(source.get("path", ""))), source.get("sha256")
        if onnx_path.suffix == ".onnx" and onnx_path.is_file():
            identity = model_identity(onnx_path)
            if identity.file_sha256 == sha:
                return identity
        return ModelIdentity(file_sha256=sha if isinstance(sha, str) else None)
    return model_identity(model)


def _check_expected_top1(
    args: argparse.Namespace,
    records: list[LatencyRecord],
    expected: tuple[float, float] | None,
) -> None:
    """--expect-top1: a model that computes something else is broken, not slow."""
    measured = records[0].accuracy if records else None
    if expected is None or measured is None:
        return
    target, tolerance = expected
    if abs(measured - target) > tolerance:
        raise DeployError(
            f"top-1 {measured:.4f} on {args.data} is {100 * abs(measured - target):.2f} "
            f"points from the expected {target:.4f} (tolerance {100 * tolerance:.2f}): "
            f"{args.model.name} on {args.backend} computes something else; "
            "it is broken, not slow"
        )


def _expected_top1(args: argparse.Namespace) -> tuple[float, float] | None:
    if args.expect_top1 is None:
        return None
    if args.data is None:
        raise DeployConfigError("--expect-top1 needs --data, the labelled file to measure on")
    values = []
    options = (("--expect-top1", args.expect_top1), ("--top1-tolerance", args.top1_tolerance))
    for flag, text in options:
        try:
            value = float(text)
        except ValueError:
            raise DeployConfigError(
                f"{flag}: expected a fraction such as 0.98, got {text!r}"
            ) from None
        if not 0 <= value <= 1:
            raise DeployConfigError(f"{flag}: must be a fraction from 0 to 1, got {text!r}")
        values.append(value)
    return values[0], values[1]


def _cli_runner(
    args: argparse.Namespace, config: BenchConfig, precision: str | None, threads: int | None
) -> Runner:
    """The runner for `deploy bench`, after checking the file suits the backend and precision."""
    if args.backend == "torch":
        from deploy.runners.torch_runner import TorchRunner, load_exported_program

        module, shapes = load_exported_program(args.model, allow_pickle=args.allow_pickle)
        if precision not in (None, "fp32"):
            raise DeployConfigError(
                f"--precision {precision}: the torch backend runs the .pt2 file as saved (fp32)"
            )
        return TorchRunner(
            module,
            input_shape=shapes,
            input_names=tuple(shapes),
            device=args.device,
            threads=threads,
        )
    if args.backend == "tensorrt":
        return _tensorrt_runner(args, config, precision)
    _check_onnx_path(args.model)
    info = inspect_onnx(args.model)
    _check_file_precision(info.precision, precision, args.model, args.backend)
    return make_runner(args.backend, args.model, threads=threads)


def _check_onnx_path(model: Path) -> None:
    """onnxruntime takes ONNX files; say which backend other model files need."""
    if model.is_dir():
        raise DeployInputError(f"{model} is a directory; pass an ONNX file")
    if model.is_file():  # a pickle renamed .pt2 is no torch.export file: say what it is
        refuse_pickle(model)
    hint = {
        ".engine": "a TensorRT engine: use --backend tensorrt (or trtexec)",
        ".plan": "a TensorRT engine: use --backend tensorrt (or trtexec)",
        ".trt": "a TensorRT engine: use --backend tensorrt (or trtexec)",
        ".pt2": "a torch.export file: use --backend torch --allow-pickle",
    }.get(model.suffix.lower())
    if hint:
        raise DeployConfigError(f"{model.name} is {hint}; onnxruntime runs ONNX files")


def _check_file_precision(have: str, want: str | None, model: Path, backend: str) -> None:
    if want is None or want == have:
        return
    hint = {
        "int8": "pass the QDQ ONNX (`compressor export` writes model.int8.onnx)",
        "fp16": "pass the FP16 ONNX (`compressor export` writes model.fp16.onnx)",
        "fp32": "pass the FP32 ONNX",
    }.get(want, f"build a TensorRT engine for {want} instead (--backend tensorrt)")
    raise DeployConfigError(
        f"--precision {want}: {model.name} is {'an' if have[0] in 'fi' else 'a'} {have} graph "
        f"and {backend} runs what the file "
        f"holds; {hint}, or leave --precision out"
    )


def _tensorrt_runner(
    args: argparse.Namespace, config: BenchConfig, precision: str | None
) -> Runner:
    """A TensorRT runner for an engine file, building the engine first from an ONNX file."""

    engine = args.model
    if args.model.suffix == ".onnx":
        engine = build_from_args(args, config, precision, output=None).engine_path
    elif precision is not None:
        built = load_engine_info(engine).precision
        if built != precision:
            raise DeployConfigError(
                f"--precision {precision}: {engine.name} was built for {built}; rebuild it "
                f"with `deploy build --precision {precision}` or leave --precision out"
            )
    return TensorRTRunner(engine, cuda_graph=args.cuda_graph, cuda_buffers=args.cuda_buffers)


def _bench_trtexec(
    args: argparse.Namespace, config: BenchConfig, precision: str | None, name: str
) -> list[LatencyRecord]:
    """trtexec times the model itself (its own warm-up and iterations); one record per batch."""

    return run_trtexec(
        args.model,
        name=name,
        batch_sizes=config.batch_sizes,
        precision=precision,
        trtexec=args.trtexec,
        iterations=config.iterations,
        duration_s=max(config.min_seconds, 0) or None,
        shapes=config.shapes or None,
        timing_cache=args.timing_cache,
        workspace_mib=optional_int("--workspace-mib", args.workspace_mib),
        dla_core=optional_int("--dla-core", args.dla_core, minimum=0),
        use_cuda_graph=True if args.cuda_graph else None,
    )


def _profile_blocks(args: argparse.Namespace) -> int:
    from deploy.profiling.command import profile_blocks_command

    return profile_blocks_command(args)


def _clock_check(fingerprint: dict, required: bool) -> None:
    """Warn (stderr) when clocks are not locked; with --require-locked-clocks, refuse."""
    if required:
        require_locked_clocks(fingerprint)
    for line in clock_warnings(fingerprint):
        print(f"deploy: warning: {line}", file=sys.stderr)


def _report(exc: BaseException, prog: str) -> None:
    """One line, "deploy: error: ...", the program named once: a usage error's message
    names the command's own --help instead (see deploy.cli_parser.Parser)."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, UsageError):
        message = message.removeprefix(f"{prog}: ")  # a library message never names it again
    print(f"{prog}: error: {message}", file=sys.stderr)


_COMMANDS = {
    "bench": _bench,
    "build": build_command,
    "report": report_command,
    "compare": compare_command,
    "info": info_command,
    "profile-blocks": _profile_blocks,
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
