"""blocks.json: the removable blocks of a dense ONNX file, as pairs of ONNX tensor names.

`compressor` writes it beside the dense model.onnx (it alone knows the blocks);
`deploy profile-blocks` reads it where only `deploy` is installed, so a latency table can be
measured on the device and carried back to the training machine.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deploy.errors import DeployInputError
from deploy.files import atomic_write_text
from deploy.paths import read_regular_bytes

BLOCKS_FORMAT = "layer-lottery.blocks"
BLOCKS_VERSION = 1
MAX_BLOCKS_BYTES = 16 << 20


@dataclass(frozen=True)
class BlockEntry:
    """One removable block: the subgraph of the dense file from `input` to `output`."""

    name: str  # the module's qualified name, as prune.json and the spec name it
    input: str  # ONNX tensor names in the dense file
    output: str
    stage: int  # 0-based stage (container) in forward order
    index: int  # position among all blocks in forward order
    macs: int  # multiply-accumulates for one sample
    params: int


@dataclass(frozen=True)
class BlocksFile:
    model_sha256: str  # of the dense ONNX the tensor names belong to
    input_name: str  # the network's input
    blocks: tuple[BlockEntry, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": BLOCKS_FORMAT,
            "version": BLOCKS_VERSION,
            "model_sha256": self.model_sha256,
            "input_name": self.input_name,
            "blocks": [asdict(b) for b in self.blocks],
        }


def read_format_file(
    path: Path, what: str, form: str, version: int, source: str, max_bytes: int
) -> dict[str, Any]:
    """The JSON object of a file that names its `format` and `version` (blocks files and
    latency tables); a missing, non-JSON, foreign or newer file is one line naming it and
    `source`, where the right file comes from."""
    try:
        data = json.loads(read_regular_bytes(path, what, max_bytes=max_bytes))
    except FileNotFoundError:
        raise DeployInputError(f"{what} {path} not found; {source}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DeployInputError(f"{what} {path} is not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != form:
        raise DeployInputError(f'{path} is not a {what} (no "format": "{form}"); {source}')
    if data.get("version") != version:
        raise DeployInputError(
            f"{what} {path} has version {data.get('version')!r}; this deploy reads version "
            f"{version}"
        )
    return data


def default_blocks_path(model: Path) -> Path:
    """Where a model's blocks file is written and looked for: `blocks.json` beside a run's
    `model.onnx`, `<stem>.blocks.json` beside any other name (a bundle's dense.onnx, an
    export to `resnet56.onnx`), so files exported into one folder keep their own."""
    if model.name == "model.onnx":
        return model.with_name("blocks.json")
    return model.with_name(f"{model.stem}.blocks.json")


def check_blocks_match(blocks: BlocksFile, path: Path, model: Path, model_sha256: str) -> None:
    """Refuse a blocks file written for another export: its tensor names belong to that
    file, and cutting this one by them builds wrong subgraphs."""
    if blocks.model_sha256 != model_sha256:
        raise DeployInputError(
            f"blocks file {path} was written for another ONNX file (SHA-256 "
            f"{blocks.model_sha256[:12]}..., {model.name} has {model_sha256[:12]}...); use the "
            "blocks file written with this export, or export the model again"
        )


def write_blocks(path: str | os.PathLike[str], blocks: BlocksFile) -> Path:
    return atomic_write_text(path, json.dumps(blocks.to_dict(), indent=2) + "\n")


def read_blocks(path: str | os.PathLike[str]) -> BlocksFile:
    """A blocks.json, each field checked; a wrong file is one line naming what is wrong."""
    path = Path(path)
    data = read_format_file(
        path,
        "blocks file",
        BLOCKS_FORMAT,
        BLOCKS_VERSION,
        "`compressor run` and `compressor export` write blocks.json beside the dense model.onnx",
        MAX_BLOCKS_BYTES,
    )
    entries = data.get("blocks")
    if not isinstance(entries, list) or not entries:
        raise DeployInputError(f'blocks file {path}: "blocks" must be a non-empty list')
    blocks = tuple(_entry(path, i, entry) for i, entry in enumerate(entries))
    names = [b.name for b in blocks]
    if len(set(names)) != len(names):
        raise DeployInputError(f"blocks file {path}: block names repeat")
    return BlocksFile(
        model_sha256=_text(path, "model_sha256", data.get("model_sha256")),
        input_name=_text(path, "input_name", data.get("input_name")),
        blocks=blocks,
    )


def _entry(path: Path, position: int, entry: Any) -> BlockEntry:
    where = f"blocks file {path}: blocks[{position}]"
    if not isinstance(entry, dict):
        raise DeployInputError(f"{where} must be an object")
    texts = {
        k: _text(path, f"blocks[{position}].{k}", entry.get(k)) for k in ("name", "input", "output")
    }
    numbers = {}
    for key in ("stage", "index", "macs", "params"):
        value = entry.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise DeployInputError(f"{where}.{key} must be a whole number >= 0, got {value!r}")
        numbers[key] = value
    return BlockEntry(**texts, **numbers)


def _text(path: Path, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise DeployInputError(f"blocks file {path}: {key} must be a non-empty string")
    return value


__all__ = [
    "BlockEntry",
    "BlocksFile",
    "default_blocks_path",
    "read_blocks",
    "read_format_file",
    "write_blocks",
]
