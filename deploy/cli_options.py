"""The `deploy` flags' values as numbers and shapes, each mistake one DeployConfigError
naming the flag: argparse's own type errors would print usage and exit instead."""

from __future__ import annotations

import os
from typing import Any

from deploy.errors import DeployConfigError
from deploy.machine.power import SOURCES as POWER_SOURCES
from deploy.machine.stability import StabilityLimits
from deploy.onnx_info import PRECISIONS
from deploy.records import BenchConfig
from deploy.tensorrt.cuda_buffers import CUDA_BUFFERS


def precision_option(text: str | None) -> str | None:
    if text is None:
        return None
    if text not in PRECISIONS:
        raise DeployConfigError(f"--precision: choose from {', '.join(PRECISIONS)}, got {text!r}")
    return text


def cuda_buffers_option(text: str) -> str:
    """--cuda-buffers, checked before an engine is built (which can take minutes)."""
    if text not in CUDA_BUFFERS:
        raise DeployConfigError(
            f"--cuda-buffers: choose from {', '.join(CUDA_BUFFERS)}, got {text!r}"
        )
    return text


def power_option(text: str) -> str:
    """--power, checked before anything is timed (the sampler opens after the warm-up)."""
    choice = text.strip().lower()
    if choice not in POWER_SOURCES:
        raise DeployConfigError(f"--power: choose from {', '.join(POWER_SOURCES)}, got {text!r}")
    return choice


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


def int_option(flag: str, text: str, *, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise DeployConfigError(f"{flag}: expected an integer, got {text!r}") from None
    if value < minimum:
        raise DeployConfigError(f"{flag}: must be >= {minimum}, got {value}")
    return value


def threads_option(text: str | None) -> int | None:
    """--threads, at most 4 per CPU: beyond that the scheduler is timed, not the model, and
    onnxruntime's spinning workers make each iteration take minutes (it looks hung)."""
    if text is None:
        return None
    value = int_option("--threads", text, minimum=1)
    cpus = os.cpu_count() or 1
    if value > 4 * cpus:
        raise DeployConfigError(
            f"--threads {value}: this machine has {cpus} CPUs, and more than 4 threads per CPU "
            f"({4 * cpus}) times the scheduler, not the model; use at most {4 * cpus}"
        )
    return value


def fraction_option(flag: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DeployConfigError(f"{flag}: expected a number such as 0.1, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise DeployConfigError(f"{flag}: must be a finite number >= 0, got {text!r}")
    return value


def float_option(flag: str, text: str, *, positive: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DeployConfigError(f"{flag}: expected a number of seconds, got {text!r}") from None
    if not value >= 0 or value == float("inf") or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise DeployConfigError(f"{flag}: must be a finite number {bound}, got {text!r}")
    return value


def optional_int(flag: str, text: str | None, *, minimum: int = 1) -> int | None:
    return None if text is None else int_option(flag, text, minimum=minimum)


def timing_config(args: Any, **more: Any) -> BenchConfig:
    """The BenchConfig of the timing flags `deploy bench` and `profile-blocks` share (batch,
    warm-up, iterations, seconds, seed, repeats), plus a command's own fields."""
    return BenchConfig(
        batch_sizes=parse_batch_sizes(args.batch),
        warmup_iters=int_option("--warmup", args.warmup, minimum=0),
        iterations=int_option("--iterations", args.iterations, minimum=1),
        min_seconds=float_option("--min-seconds", args.min_seconds),
        max_seconds=float_option("--max-seconds", args.max_seconds),
        seed=int_option("--seed", args.seed, minimum=0),
        repeats=int_option("--repeats", args.repeats, minimum=1),
        **more,
    )


def stability_limits(args: Any) -> StabilityLimits:
    """The measurement-warning limits of the flags `deploy bench` and `profile-blocks` share."""
    return StabilityLimits(
        max_cv=fraction_option("--max-cv", args.max_cv),
        max_run_cv=fraction_option("--max-run-cv", args.max_run_cv),
        max_load=fraction_option("--max-load", args.max_load),
    )
