"""Is a resume the same run? The recipe a run was started with (its recipe.json) against the
one it is resumed with, section by section; each workflow says which parts may change."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from compressor.configs import changed_keys
from compressor.errors import InputError
from compressor.recipe.sections import Recipe

RECIPE_FILE = "recipe.json"


def started_recipe(out_dir: Path) -> dict[str, Any] | None:
    """The recipe.json a run in `out_dir` was started with; None when there is none."""
    path = out_dir / RECIPE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise InputError(f"{path} is not valid JSON; choose another --out") from exc


def recipe_changes(
    before: Mapping[str, Any],
    recipe: Recipe,
    *,
    free_sections: Collection[str] = (),
    free_fields: Mapping[str, Collection[str]] | None = None,
    defaults: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[str]:
    """What differs: whole sections ("prune"), then "section.field" for the sections in
    `free_fields`, which are compared field by field and whose listed fields may change.

    `defaults` fills a section a recipe leaves out at its defaults (recipe.json omits it).
    """
    now = json.loads(json.dumps(recipe.to_dict()))  # tuples -> lists, as on disk
    free_fields = free_fields or {}
    changed = changed_keys(before, now, free={*free_sections, *free_fields})
    for section, free in free_fields.items():
        default = (defaults or {}).get(section, {})
        old = {**default, **before.get(section, {})}
        new = {**default, **now.get(section, {})}
        changed += [f"{section}.{key}" for key in changed_keys(old, new, free=free)]
    return changed
