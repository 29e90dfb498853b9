"""The layering rule from ARCHITECTURE.md: export may use deploy, never compressor."""

from __future__ import annotations

import ast
from pathlib import Path

import export

EXPORT_DIR = Path(export.__file__).parent


def _imported_modules(source: Path) -> set[str]:
    tree = ast.parse(source.read_text(), filename=str(source))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_export_never_imports_compressor() -> None:
    offenders = {
        source.name: sorted(
            name for name in _imported_modules(source) if name.split(".")[0] == "compressor"
        )
        for source in sorted(EXPORT_DIR.glob("*.py"))
    }
    assert {name: found for name, found in offenders.items() if found} == {}
    assert "deploy.runners" in _imported_modules(EXPORT_DIR / "parity.py")
