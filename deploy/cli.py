"""`deploy` command line: benchmark an ONNX file on this device and save a result file.

    deploy bench MODEL.onnx [--batch 1,8,32] [--threads N] [--warmup N] [--iterations N]
                 [--min-seconds S] [--shapes name:1x3x224x224,...] [--output PATH] [--name NAME]

Every error `deploy` raises on purpose becomes one line on stderr, "deploy: error: ...", with
exit code 2 for usage and configuration mistakes and 1 for everything else (missing or
corrupt files), so scripts on a device can tell them apart and users see no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from deploy.bench import BenchConfig, benchmark
from deploy.errors import DeployConfigError, DeployError
from deploy.fingerprint import device_fingerprint, summary_line
from deploy.results import default_results_path, format_table, write_results
from deploy.runners import BACKENDS, make_runner

# Backends `deploy bench` can drive from the command line: torch needs an in-memory module,
# which only the Python API can pass, and TensorRT has no runner yet.
_CLI_BACKENDS = ("onnxruntime",)


class _UsageError(DeployConfigError):
    """argparse found a malformed command line."""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser that raises instead of printing usage and exiting, so `main` reports
    every mistake the same one-line way."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{self.prog}: {message} (see --help)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `deploy` console script; returns the process exit code."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        return args.handler(args)
    except DeployConfigError as exc:
        _report(exc)
        return 2
    except DeployError as exc:
        _report(exc)
        return 1
    except KeyboardInterrupt:
        print("deploy: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # --help and --version exit through argparse
        return exc.code if isinstance(exc.code, int) else 0


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="deploy", description="Benchmark models on this device.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    bench = commands.add_parser(
        "bench",
        help="time an ONNX model and write a result file",
        description="Time an ONNX model at one or more batch sizes and write a result file.",
    )
    bench.add_argument("model", type=Path, help="the ONNX file to time")
    bench.add_argument("--backend", default="onnxruntime", help="runtime (default onnxruntime)")
    bench.add_argument("--batch", default="1", help="batch sizes, comma-separated (default 1)")
    bench.add_argument("--threads", default=None, help="intra-op threads (default: backend's)")
    bench.add_argument("--warmup", default="20", help="untimed iterations first (default 20)")
    bench.add_argument("--iterations", default="100", help="timed iterations, at least")
    bench.add_argument("--min-seconds", default="0", help="time at least this long per batch")
    bench.add_argument("--max-seconds", default="300", help="stop timing a batch after this")
    bench.add_argument("--seed", default="0", help="seed of the random inputs (default 0)")
    bench.add_argument(
        "--shapes",
        default=None,
        help="sizes of dynamic input dims: name:1x3x224x224[,name2:...]; axis 0 follows --batch",
    )
    bench.add_argument("--output", type=Path, default=None, help="result file path")
    bench.add_argument("--name", default=None, help="model name in results (default: file stem)")
    bench.set_defaults(handler=_bench)
    return parser


def _bench(args: argparse.Namespace) -> int:
    if args.backend not in _CLI_BACKENDS:
        known = "is not available yet in `deploy bench`" if args.backend else "is empty"
        if args.backend not in BACKENDS and args.backend not in ("tensorrt", "trtexec"):
            known = "is unknown"
        raise DeployConfigError(
            f"--backend '{args.backend}' {known}; available: {', '.join(_CLI_BACKENDS)}"
        )
    threads = None if args.threads is None else _int_option("--threads", args.threads, minimum=1)
    config = BenchConfig(
        batch_sizes=parse_batch_sizes(args.batch),
        warmup_iters=_int_option("--warmup", args.warmup, minimum=0),
        iterations=_int_option("--iterations", args.iterations, minimum=1),
        min_seconds=_float_option("--min-seconds", args.min_seconds),
        max_seconds=_float_option("--max-seconds", args.max_seconds),
        seed=_int_option("--seed", args.seed, minimum=0),
        shapes=parse_shapes(args.shapes) if args.shapes else {},
    )
    name = args.name or args.model.stem
    output = args.output or default_results_path()
    runner = make_runner(args.backend, args.model, threads=threads)
    with runner:
        records = benchmark(runner, config, name)
    fingerprint = device_fingerprint(threads=threads)
    path = write_results(output, records, fingerprint)
    print(summary_line(fingerprint))
    print(format_table(records))
    print(f"results written to {path}")
    return 0


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """ "1,8,32" -> (1, 8, 32); anything but distinct positive integers is a config error."""
    sizes = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise DeployConfigError(
                f"--batch: batch sizes must be positive integers separated by commas "
                f"(e.g. 1,8,32), got {part!r} in {text!r}"
            )
        if int(part) not in sizes:
            sizes.append(int(part))
    return tuple(sizes)


def parse_shapes(text: str) -> dict[str, tuple[int, ...]]:
    """ "input:1x3x224x224,mask:1x224" -> {"input": (1, 3, 224, 224), "mask": (1, 224)}."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in text.split(","):
        name, sep, dims = item.strip().rpartition(":")
        parts = dims.lower().split("x")
        if not sep or not name or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            raise DeployConfigError(
                f"--shapes: expected name:DxDx... with positive integer dims "
                f"(e.g. input:1x3x224x224), got {item.strip()!r}"
            )
        if name in shapes:
            raise DeployConfigError(f"--shapes: input '{name}' is given twice")
        shapes[name] = tuple(int(p) for p in parts)
    return shapes


def _int_option(flag: str, text: str, *, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise DeployConfigError(f"{flag}: expected an integer, got {text!r}") from None
    if value < minimum:
        raise DeployConfigError(f"{flag}: must be >= {minimum}, got {value}")
    return value


def _float_option(flag: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DeployConfigError(f"{flag}: expected a number of seconds, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise DeployConfigError(f"{flag}: must be a finite number >= 0, got {text!r}")
    return value


def _report(exc: BaseException) -> None:
    message = " ".join(str(exc).split()) or type(exc).__name__
    print(f"deploy: error: {message}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
