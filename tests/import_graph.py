"""The project's import graph, read from the source: every `import` counts, at module level,
inside a function or under `if TYPE_CHECKING:`, because each of them ties two modules
together the same way (an import inside a function is a cycle put off until it runs).

A module is a dotted name ("compressor.prune.criteria"; a package is its `__init__`). An
edge a -> b means a imports b or a name from b. Importing `pkg.mod` does not count as an
import of `pkg` itself: Python runs the parent's `__init__` first, but the packages'
`__init__` files sit on top of everything (they are the public API) and are excluded by
the rule that nothing below imports them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

Graph = dict[str, set[str]]


def module_files(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of `packages` under `root`."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def import_graph(root: Path, packages: Iterable[str]) -> Graph:
    files = module_files(root, packages)

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: Graph = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(filter(None, (resolve(alias.name) for alias in node.names)))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in node.names:
                    full = f"{base}.{alias.name}"  # `from pkg import module`
                    target = full if full in files else resolve(base)
                    if target:
                        targets.add(target)
        targets.discard(module)
        graph[module] = targets
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """Each strongly connected component of more than one node, sorted (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def folder_graph(graph: Graph) -> Graph:
    """The graph between folders: `compressor.prune.criteria` counts as `compressor.prune`,
    a top-level module (`deploy.bench`) as itself; edges within one folder are dropped."""

    def folder(module: str) -> str:
        return ".".join(module.split(".")[:2])

    folders: Graph = {}
    for source, targets in graph.items():
        for target in targets:
            if folder(source) != folder(target):
                folders.setdefault(folder(source), set()).add(folder(target))
    return folders


def describe(graph: Graph, component: list[str]) -> str:
    """One line per edge inside a cycle, for a failure message a reader can act on."""
    members = set(component)
    return "; ".join(
        f"{source} -> {target}"
        for source in component
        for target in sorted(graph.get(source, ()) & members)
    )
