"""The cells of the lottery grid: one trained network each, named by a key, finished when its
`result.json` exists. Below both the runner, which trains them, and the summary, which
reads them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compressor.errors import ConfigError, InputError
from compressor.recipe.experiment import ExperimentConfig


@dataclass(frozen=True)
class Cell:
    kind: str  # dense | init | scratch | filter | after | lmc
    seed: int
    criterion: str | None = None
    blocks: int = 0
    rewind: float | None = None
    twin_of: str | None = None  # lmc: the key of the cell this one is a twin of

    @property
    def key(self) -> str:
        if self.kind == "lmc":
            return f"lmc-{self.twin_of}"
        if self.kind == "dense":
            return f"dense-s{self.seed}"
        middle = f"{self.criterion}-p{self.blocks}"
        if self.kind == "after":
            middle += f"-r{round(100 * (self.rewind or 0.0))}"
        return f"{self.kind}-{middle}-s{self.seed}"

    def rewind_epoch(self, epochs: int) -> int:
        """The epoch an Algorithm 1 cell rewinds to (0 for every other kind)."""
        return round((self.rewind or 0.0) * epochs) if self.kind == "after" else 0

    def epochs_to_train(self, epochs: int) -> int:
        return epochs - self.rewind_epoch(epochs)


def plan(config: ExperimentConfig) -> list[Cell]:
    """Every cell, in the order they run: the dense networks first (the others need them)."""
    cells = [Cell("dense", s) for s in config.seeds]
    for s in config.seeds:
        cells += [Cell("init", s, c, p) for c in config.at_init for p in config.blocks]
        cells += [Cell("scratch", s, c, p) for c in config.scratch for p in config.blocks]
        cells += [
            Cell("filter", s, c, p) for c in config.filter_criteria for p in config.filter_blocks
        ]
        cells += [
            Cell("after", s, c, p, r)
            for c in config.after_training
            for p in config.after_training_blocks
            for r in config.rewind
        ]
    if config.lmc_seeds and (
        config.lmc_criterion not in config.at_init
        or not set(config.lmc_blocks) <= set(config.blocks)
    ):
        raise ConfigError(
            f"experiment.lmc_criterion/lmc_blocks: the twins' tickets ({config.lmc_criterion} "
            f"at p={list(config.lmc_blocks)}) must be cells of the grid (at_init "
            f"{list(config.at_init)}, blocks {list(config.blocks)}); or set lmc_seeds: []"
        )
    for s in config.lmc_seeds:
        if s not in config.seeds:
            raise ConfigError(f"experiment.lmc_seeds: seed {s} is not in experiment.seeds")
        cells.append(Cell("lmc", s, twin_of=f"dense-s{s}"))
        cells += [
            Cell(
                "lmc",
                s,
                config.lmc_criterion,
                p,
                twin_of=Cell("init", s, config.lmc_criterion, p).key,
            )
            for p in config.lmc_blocks
        ]
    keys = [cell.key for cell in cells]
    if len(set(keys)) != len(keys):
        raise ConfigError(
            f"experiment.rewind: {list(config.rewind)} give the same cell names at whole "
            "percent; use rewind points at least 1% apart"
        )
    return cells


def cell_result(out_dir: str | Path, key: str) -> dict[str, Any] | None:
    path = Path(out_dir) / "cells" / key / "result.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise InputError(f"{path} is not valid JSON; delete it to recompute that cell") from exc
