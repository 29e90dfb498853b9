"""The recipes `compressor lottery` runs when given none: the paper's grid on the digits
(ResNet-32, an hour on two CPU cores) and at paper scale on CIFAR-10 (`--cifar10 DIR`).

recipes/lottery.yaml and recipes/lottery-cifar10.yaml are these, written out (a test
keeps them equal).
"""

from __future__ import annotations

from typing import Any

from compressor.recipe.sections import recipe_from_dict

_GRID = {
    "seeds": [0, 1, 2],
    "blocks": [1, 2, 3, 4, 5],
    "at_init": ["snip", "grasp", "random"],
    "scratch": ["grasp"],
    "filter_criteria": ["snip", "grasp"],
    "filter_blocks": [1],
    "after_training": ["hrank", "expectabs", "kl", "pls", "cka", "random"],
    "after_training_blocks": [3],
    "lmc_criterion": "grasp",
    "lmc_blocks": [3],
    "lmc_seeds": [0],
    "xi": 1.0,
}

DIGITS: dict[str, Any] = {
    "version": 1,
    "name": "lottery",
    "seed": 0,
    "model": {"name": "resnet32", "width": 1.0},
    "data": {"name": "digits", "image_size": 16},
    "prune": {"criterion": "grasp", "blocks": 1, "samples_per_class": 10},
    "train": {
        "epochs": 15,
        "batch_size": 128,
        "lr": 0.05,
        "warmup_epochs": 2,
        "schedule": "cosine",
        "weight_decay": 0.0005,
        "progress": "none",
    },
    # Declared, not measured: a round 10 W for two vCPUs of a server (no power counter
    # is readable on the VM this was measured on).
    # The CO2 savings in percent do not depend on it.
    "experiment": {**_GRID, "rewind": [0.5], "power_watts": 10.0},
}

CIFAR10: dict[str, Any] = {
    "version": 1,
    "name": "lottery-cifar10",
    "seed": 0,
    "model": {"name": "resnet32", "width": 1.0},
    "data": {"name": "cifar10", "root": "data/cifar-10-batches-py"},
    "prune": {"criterion": "grasp", "blocks": 1, "samples_per_class": 10},
    "train": {
        "epochs": 160,
        "batch_size": 128,
        "lr": 0.1,
        "warmup_epochs": 1,
        "schedule": "cosine",
        "weight_decay": 0.0005,
        "progress": "log",
    },
    "experiment": {**_GRID, "rewind": [0.0, 0.25, 0.5, 0.75], "robustness_samples": 10000},
}


def lottery_recipe(cifar10: str | None = None) -> Any:
    """The digits recipe, or the CIFAR-10 one reading the batches from `cifar10`."""
    if cifar10 is None:
        return recipe_from_dict(DIGITS)
    return recipe_from_dict({**CIFAR10, "data": {"name": "cifar10", "root": cifar10}})
