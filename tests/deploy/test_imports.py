"""`deploy` must import and benchmark on a device that has no torch (Jetson, server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

IMPORT_EVERYTHING = """
import importlib, json, pkgutil, sys
import deploy
names = sorted(m.name for m in pkgutil.walk_packages(deploy.__path__, "deploy."))
for name in names:
    importlib.import_module(name)
print(json.dumps({"modules": names, "torch_loaded": "torch" in sys.modules}))
"""

# Makes `import torch` fail as on a machine without it, then uses deploy end to end.
WITHOUT_TORCH = """
import sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError("No module named 'torch'", name=name)
        return None

sys.meta_path.insert(0, NoTorch())
import importlib, pkgutil
import deploy
for info in pkgutil.walk_packages(deploy.__path__, "deploy."):
    importlib.import_module(info.name)
from deploy.errors import MissingDependencyError
from deploy.runners import make_runner
try:
    make_runner("torch", object(), input_shape=(None, 1))
except MissingDependencyError as exc:
    print("MISSING:", exc)
from deploy.cli import main
sys.exit(main(["bench", sys.argv[1], "--iterations", "3", "--warmup", "1", "--output", "r.json"]))
"""


def _python(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_importing_every_deploy_module_does_not_load_torch(tmp_path: Path) -> None:
    result = _python(IMPORT_EVERYTHING, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {"deploy.cli", "deploy.__main__", "deploy.bench", "deploy.runners.torch_runner"} <= set(
        report["modules"]
    )
    assert report["torch_loaded"] is False


def test_deploy_benchmarks_without_torch_and_says_what_torch_runner_needs(
    classifier: Path, tmp_path: Path
) -> None:
    result = _python(WITHOUT_TORCH, str(classifier), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "MISSING: the torch runner needs the 'torch' package" in result.stdout
    assert "results written to r.json" in result.stdout
    assert (tmp_path / "r.json").is_file()


# `compressor` where the pipeline extra is missing: the console script's entry point.
COMPRESSOR_WITHOUT_TORCH = """
import sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoTorch())
from compressor.entry import main
sys.exit(main(sys.argv[1:]))
"""


def test_compressor_without_torch_names_the_pipeline_extra_in_one_line(tmp_path: Path) -> None:
    recipe = REPO_ROOT / "recipes" / "quick.yaml"
    result = _python(COMPRESSOR_WITHOUT_TORCH, "run", str(recipe), "--out", "run", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("compressor: error: the pipeline needs the 'torch' package")
    assert "pip install 'layer-lottery-deploy[pipeline]'" in result.stderr
    assert "bash install.sh" in result.stderr
    # Commands that need no torch still work there.
    assert _python(COMPRESSOR_WITHOUT_TORCH, "--help", cwd=tmp_path).returncode == 0
