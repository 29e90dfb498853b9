"""Helpers of the hostile-input tests: run `deploy` in-process, check its one-line errors, and
make the hostile files (pickles that leave a marker when loaded, damaged ONNX files).
"""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import pickle
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deploy.cli import main


@dataclass(frozen=True)
class Outcome:
    code: int
    out: str
    err: str

    def error_line(self) -> str:
        """The one `deploy: error:` line; fails unless stderr holds exactly one error line,
        no traceback and nothing but warnings besides."""
        assert "Traceback" not in self.err, self.err
        errors = [line for line in self.err.splitlines() if line.startswith("deploy: error: ")]
        others = [
            line
            for line in self.err.splitlines()
            if not line.startswith(("deploy: error: ", "deploy: warning: "))
        ]
        assert len(errors) == 1 and not others, self.err
        return errors[0]


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """contextlib.chdir, which Python 3.10 lacks."""
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def run_deploy(argv: Sequence[str], cwd: Path) -> Outcome:
    """`deploy ARGV` in this process, in `cwd`, with stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    with working_directory(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return Outcome(code, out.getvalue(), err.getvalue())


class LeavesMarker:
    """Unpickling this touches `marker`: proof, if the file appears, that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def armed_pickle(path: Path, marker: Path, protocol: int = pickle.DEFAULT_PROTOCOL) -> Path:
    """A raw pickle (what pickle.dump and old torch.save write) that touches `marker`."""
    path.write_bytes(pickle.dumps(LeavesMarker(marker), protocol=protocol))
    return path


def armed_torch_save_archive(path: Path, marker: Path) -> Path:
    """torch.save's zip layout (PyTorch 1.6+): `<name>/data.pkl` holding the armed pickle."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(LeavesMarker(marker), protocol=2))
        archive.writestr("archive/version", "3\n")
    return path


def rgb_classifier(path: Path, *, size: int = 224, classes: int = 3) -> Path:
    """Input [N, 3, size, size] -> GlobalAveragePool -> Flatten -> Gemm: tiny weights, big input."""
    weights = [
        numpy_helper.from_array(np.eye(classes, 3, dtype=np.float32), "fc_w"),
        numpy_helper.from_array(np.zeros(classes, np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "rgb_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def damaged_copies(source: Path, folder: Path) -> dict[str, Path]:
    """ONNX files broken the ways files break: cut short, bit-flipped, empty, or another
    format under the .onnx name (text, a zip, an npz)."""
    data = source.read_bytes()
    flipped = bytearray(data)
    for index in range(3, len(flipped), 11):
        flipped[index] ^= 0xFF
    cases = {
        "truncated_half": data[: len(data) // 2],
        "truncated_to_10_bytes": data[:10],
        "truncated_by_one_byte": data[:-1],
        "bit_flipped": bytes(flipped),
        "empty": b"",
        "text": b"this is a README, not a model\n",
    }
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, content in cases.items():
        paths[name] = folder / f"{name}.onnx"
        paths[name].write_bytes(content)
    paths["zip"] = folder / "zip.onnx"
    with zipfile.ZipFile(paths["zip"], "w") as archive:
        archive.writestr("model.onnx", data)
    paths["npz"] = folder / "npz.onnx"
    with open(paths["npz"], "wb") as handle:
        np.savez(handle, weights=np.zeros(4, np.float32))
    return paths
