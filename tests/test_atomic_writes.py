"""Every file the project writes goes through `deploy.files` (temporary file, fsync, rename).

A reader of the source can miss one `open(path, "w")` among 15,000 lines; this test cannot.
It parses every module of the three packages and fails on any call that writes a file in
place, naming the file and line, so a new one is either made atomic or argued for below.
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from deploy.files import atomic_write_text, remove_stale_temporaries

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("compressor", "export", "deploy")
# Calls that write in place, by the name they are called with.
WRITERS = {
    "write_text",
    "write_bytes",
    "savefig",
    "save",
    "savez",
    "savez_compressed",
    "copyfile",
    "copy",
    "copy2",
    "copytree",
    "rename",
    "replace",
    "tofile",
}
# Where a writer call is fine, and why. (file, function called, first argument's source)
ALLOWED = {
    ("deploy/files.py", "replace", "tmp_name"): "the atomic rename itself",
    ("compressor/atomic.py", "save", "obj"): "torch.save into atomic_file's handle",
    ("deploy/evaluate.py", "savez", "handle"): "np.savez into atomic_file's handle",
    ("compressor/workflows/report.py", "savefig", "buffer"): "rendered to memory, then atomic",
    ("compressor/workflows/report_budget.py", "savefig", "buffer"): (
        "rendered to memory, then atomic"
    ),
    ("deploy/results/report_plots.py", "savefig", "buffer"): "rendered to memory, then atomic",
    ("compressor/workflows/lottery/summary.py", "savefig", "buffer"): (
        "rendered to memory, then atomic"
    ),
    ("compressor/data/corruptions.py", "save", "buffer"): "JPEG round trip in memory",
    ("compressor/workflows/bundle.py", "replace", "staging"): (
        "a finished staging dir renamed into place"
    ),
    ("export/quantize_ort.py", "save", "quantized"): "an intermediate in work_directory",
    ("export/quantize_ort.py", "save", "proto"): "an intermediate in work_directory",
    ("export/low_precision.py", "replace", "written"): "written by save_onnx (fsynced) beside",
    ("compressor/workflows/bundle.py", "copytree", "source"): "copy_function=atomic_copy",
    ("compressor/models/store.py", "save", "state"): "safetensors.torch.save returns bytes",
    ("compressor/training/loop.py", "save", "state"): "safetensors.torch.save returns bytes",
}


def _calls_that_write(path: Path) -> list[tuple[int, str, str]]:
    """(line, called name, first argument) of every call that may write a file in place."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        first = ast.unparse(node.args[0]) if node.args else ""
        if name == "open" and _opens_for_writing(node):
            found.append((node.lineno, "open", first))
        elif name == "fdopen" and _opens_for_writing(node):
            found.append((node.lineno, "fdopen", first))
        elif name == "save_model" and isinstance(func, ast.Attribute):
            if ast.unparse(func.value) == "onnx":  # onnx.save_model(proto, path)
                found.append((node.lineno, name, first))
        elif name in WRITERS and not (name == "replace" and _is_str_replace(node)):
            if name == "copy" and not isinstance(func, ast.Attribute):
                continue
            found.append((node.lineno, name, first))
    return sorted(found)


def _opens_for_writing(node: ast.Call) -> bool:
    modes = [a for a in node.args[1:2]] + [k.value for k in node.keywords if k.arg == "mode"]
    for mode in modes:
        if isinstance(mode, ast.Constant) and isinstance(mode.value, str):
            return any(flag in mode.value for flag in "wax+")
    return False


def _is_str_replace(node: ast.Call) -> bool:
    """`text.replace(a, b)` and `dataclasses.replace(x, ...)` are not file renames."""
    func = node.func
    return not (isinstance(func, ast.Attribute) and ast.unparse(func.value) == "os")


def _module_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_no_module_writes_a_file_in_place() -> None:
    offenders = []
    for path in _module_files():
        relative = path.relative_to(ROOT).as_posix()
        for line, name, first in _calls_that_write(path):
            if name in ("fdopen",) and relative == "deploy/files.py":
                continue  # atomic_file's own temporary
            if (relative, name, first) in ALLOWED:
                continue
            if name in ("save", "copy") and not first:
                continue  # e.g. state.copy(), list.copy(): not files
            offenders.append(f"{relative}:{line}: {name}({first}, ...)")
    assert not offenders, "write these through deploy.files (atomic):\n" + "\n".join(offenders)


def test_the_scan_sees_a_plain_write(tmp_path: Path) -> None:
    """The scan must be able to fail: a module with each kind of in-place write is caught."""
    module = tmp_path / "bad.py"
    module.write_text(
        textwrap.dedent(
            """
            import shutil, torch
            open(p, "w").write("x")
            p.write_text("x")
            torch.save(obj, p)
            fig.savefig(p)
            shutil.copyfile(a, b)
            os.replace(a, b)
            open(p).read()  # reading is fine
            "a".replace("a", "b")  # so is a string method
            """
        )
    )
    names = [name for _, name, _ in _calls_that_write(module)]
    assert names == ["open", "write_text", "save", "savefig", "copyfile", "replace"]


def test_allow_list_has_no_stale_entries() -> None:
    """An allowed call that no longer exists would silently allow a new one in its place."""
    present = {
        (path.relative_to(ROOT).as_posix(), name, first)
        for path in _module_files()
        for _, name, first in _calls_that_write(path)
    }
    assert set(ALLOWED) <= present, sorted(set(ALLOWED) - present)


def test_a_writer_killed_mid_file_leaves_the_old_file_and_a_temporary(tmp_path: Path) -> None:
    """SIGKILL between write and rename: the target is intact; the sweep removes the rest."""
    target = tmp_path / "out" / "result.json"
    atomic_write_text(target, '{"old": true}')
    script = textwrap.dedent(
        f"""
        import os, signal
        from deploy.files import atomic_file
        with atomic_file({str(target)!r}) as handle:
            handle.write(b'{{"new": tr')
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], env=env, check=False)
    assert done.returncode == -signal.SIGKILL
    assert target.read_text() == '{"old": true}'
    leftovers = sorted(p.name for p in target.parent.iterdir() if p != target)
    assert len(leftovers) == 1 and leftovers[0].startswith(".result.json.")
    assert remove_stale_temporaries(tmp_path) == [target.parent / leftovers[0]]
    assert sorted(p.name for p in target.parent.iterdir()) == ["result.json"]


@pytest.mark.parametrize(
    "name", ["user.tmp", ".hidden", "weights.safetensors", ".cache.tmp", ".notes.draft.tmp"]
)
def test_the_sweep_leaves_other_files_alone(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("mine")
    assert remove_stale_temporaries(tmp_path) == []
    assert (tmp_path / name).read_text() == "mine"


def test_the_sweep_leaves_a_directory_with_its_own_lock_to_its_owner(tmp_path: Path) -> None:
    """A nested run (its own .lock) may be writing that temporary right now."""
    nested = tmp_path / "train"
    nested.mkdir()
    (nested / ".lock").write_text("{}")
    theirs = nested / ".checkpoint.pt.k2v9x0ab.tmp"
    ours = tmp_path / ".spec.json.k2v9x0ab.tmp"
    theirs.write_text("being written")
    ours.write_text("left by a killed writer")
    assert remove_stale_temporaries(tmp_path, skip_dirs_with=".lock") == [ours]
    assert theirs.exists()
