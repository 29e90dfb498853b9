"""The library surface: every public name importable, cheap imports, the README's Python
example run as a user would run it."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The names the README and issue 15 promise; __all__ may hold more.
PROMISED = {
    "compressor": {
        "create_model",
        "prune_at_init",
        "shrink_channels_",
        "train",
        "load_recipe",
        "run_pipeline",
        "save_model",
        "load_model",
    },
    "export": {"export_onnx"},
    "deploy": {"make_runner", "benchmark", "benchmark_side_by_side"},
}


@pytest.mark.parametrize("package", sorted(PROMISED))
def test_every_public_name_imports(package: str) -> None:
    module = importlib.import_module(package)
    assert PROMISED[package] <= set(module.__all__)
    assert module.__all__ == sorted(set(module.__all__))
    for name in module.__all__:
        assert getattr(module, name) is not None, name
        assert name in dir(module)


def test_train_is_the_function_not_the_subpackage() -> None:
    """A subpackage named like an API function would replace it once imported."""
    import compressor
    import compressor.training.loop  # noqa: F401  what any caller of the pipeline imports

    assert callable(compressor.train) and compressor.train.__module__ == "compressor.training.loop"


def test_unknown_name_says_which_package() -> None:
    import deploy

    with pytest.raises(AttributeError, match="module 'deploy' has no attribute 'benchmarks'"):
        deploy.benchmarks  # noqa: B018


def test_importing_the_packages_loads_no_torch_or_onnxruntime() -> None:
    code = (
        "import sys, compressor, export, deploy\n"
        "from compressor.errors import ConfigError\n"
        "from deploy.errors import DeployError\n"
        "print(sorted(m for m in ('torch', 'onnxruntime', 'onnx') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )
    assert result.stdout.strip() == "[]"


def _readme_python_example() -> str:
    section = (ROOT / "README.md").read_text().split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return code


def test_the_readme_python_example_runs_and_learns(tmp_path: Path) -> None:
    code = _readme_python_example()
    assert len([line for line in code.splitlines() if line.strip()]) <= 12
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    accuracy = float(re.search(r"test accuracy ([\d.]+)%", summary).group(1))
    assert accuracy > 50.0, summary  # 10 classes: chance is 10%
    assert re.search(r"removed \('[\w.]+', '[\w.]+', '[\w.]+'\)", summary), summary
    assert (tmp_path / "out" / "ticket" / "model" / "weights.safetensors").is_file()
    assert (tmp_path / "out" / "ticket.onnx").is_file()
