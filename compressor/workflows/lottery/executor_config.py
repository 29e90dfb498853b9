"""How `compressor lottery` runs its cells: one after another in this process, or as Ray tasks.

A leaf module, so that the CLI can check the flags before anything heavy is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from compressor.errors import ConfigError
from deploy.config_fields import check_fields, one_of, whole

EXECUTORS = ("local", "ray")
DEFAULT_RETRIES = 2


@dataclass(frozen=True)
class ExecutorConfig:
    """`executor`: "local" (this process, the default) or "ray".

    With Ray, `workers` caps the cells trained at once (default: what the cluster's
    resources allow: one per GPU, or one per `threads` CPU cores), `address` joins a
    running cluster (`ray start --head`, KubeRay, a Slurm job's head node) instead of
    starting one on this machine, `threads` are the CPU threads each cell trains with on
    a CPU (default: the recipe's train.threads, else this machine's cores shared by the
    workers), and `retries` is how many times a cell whose worker died (killed, out of
    memory, a lost node) is started again, from its own checkpoint (default 2).
    """

    executor: str = field(default="local", metadata=one_of(EXECUTORS))
    workers: int | None = field(default=None, metadata=whole(1, optional=True))
    address: str | None = None
    threads: int | None = field(default=None, metadata=whole(1, optional=True))
    retries: int | None = field(default=None, metadata=whole(0, optional=True))

    def __post_init__(self) -> None:
        check_fields(self, ConfigError, "--{name} ")
        if self.executor == "local":
            given = [
                flag
                for flag, value in (
                    ("--workers", self.workers),
                    ("--address", self.address),
                    ("--threads", self.threads),
                    ("--retries", self.retries),
                )
                if value is not None
            ]
            if given:
                verb, them = ("applies", "it") if len(given) == 1 else ("apply", "them")
                raise ConfigError(
                    f"{', '.join(given)} {verb} only to --executor ray; add --executor ray, "
                    f"or leave {them} out"
                )

    @property
    def max_retries(self) -> int:
        return DEFAULT_RETRIES if self.retries is None else self.retries
