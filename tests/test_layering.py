"""Imports point down: no cycle between modules or between folders, the three packages in
their order (compressor -> export -> deploy), and no module over 500 lines.

Every import counts, inside functions and under TYPE_CHECKING too (tests/import_graph.py).
The last tests plant a cycle in a copy of the tree, so the checks are shown to fail.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.import_graph import cycles, describe, folder_graph, import_graph, module_files

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("compressor", "export", "deploy")
MAX_MODULE_LINES = 500
# Which packages each package may import (ARCHITECTURE.md): deploy needs no torch, export
# never needs the pruning code.
MAY_IMPORT = {
    "compressor": {"compressor", "export", "deploy"},
    "export": {"export", "deploy"},
    "deploy": {"deploy"},
}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(ROOT, PACKAGES)


def test_no_import_cycle_between_modules(graph: dict[str, set[str]]) -> None:
    assert [describe(graph, c) for c in cycles(graph)] == []


def test_folders_import_downwards_only(graph: dict[str, set[str]]) -> None:
    folders = folder_graph(graph)
    assert [describe(folders, c) for c in cycles(folders)] == []


def _upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{source} -> {target}"
        for source, targets in graph.items()
        for target in targets
        if target.split(".")[0] not in MAY_IMPORT[source.split(".")[0]]
    )


def test_packages_import_only_the_packages_below(graph: dict[str, set[str]]) -> None:
    assert _upward_imports(graph) == []


def test_no_module_imports_its_own_packages_api(graph: dict[str, set[str]]) -> None:
    """The packages' __init__ files are the public API on top: a module below that imported
    one would tie itself to everything the API imports."""
    wrong = sorted(
        f"{source} -> {target}"
        for source, targets in graph.items()
        for target in targets
        if target in PACKAGES and source.split(".")[0] == target and source != target
    )
    assert wrong == []


def test_no_module_over_the_size_limit() -> None:
    sizes = {
        name: len(path.read_text().splitlines())
        for name, path in module_files(ROOT, PACKAGES).items()
    }
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package)
    return tmp_path


def test_a_cycle_through_an_import_inside_a_function_is_found(tree_copy: Path) -> None:
    registry = tree_copy / "compressor" / "prune" / "registry.py"
    registry.write_text(
        registry.read_text() + "\n\ndef _late():\n    from compressor.prune.criteria import x\n"
    )
    graph = import_graph(tree_copy, PACKAGES)
    found = cycles(graph)
    assert len(found) == 1
    assert {"compressor.prune.criteria", "compressor.prune.registry"} <= set(found[0])
    assert "compressor.prune.registry -> compressor.prune.criteria" in describe(graph, found[0])


def test_a_type_checking_import_between_folders_is_found(tree_copy: Path) -> None:
    store = tree_copy / "compressor" / "models" / "store.py"
    store.write_text(
        store.read_text()
        + "\n\nfrom typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
        + "    from compressor.workflows.stages import dense_model\n"
    )
    graph = import_graph(tree_copy, PACKAGES)
    folders = folder_graph(graph)
    assert any("compressor.models" in c and "compressor.workflows" in c for c in cycles(folders))
    assert cycles(graph) != []  # workflows.stages imports models.store: a module cycle too


def test_an_upward_package_import_is_found(tree_copy: Path) -> None:
    stats = tree_copy / "deploy" / "stats.py"
    stats.write_text(stats.read_text() + "\n\nfrom export import config  # noqa\n")
    assert _upward_imports(import_graph(tree_copy, PACKAGES)) == ["deploy.stats -> export.config"]
