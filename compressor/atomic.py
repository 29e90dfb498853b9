"""Atomic file writes for `compressor`: the shared implementation plus torch checkpoints.

Every file the project writes (checkpoints, metrics, specs, results) is written atomically,
so a crash or Ctrl-C mid-write cannot leave a truncated checkpoint that a later `--resume`
would trip over. The implementation lives in `deploy.files` (the lowest layer), so that
`deploy` on a device writes its results the same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from deploy.files import atomic_write_bytes, atomic_write_text

__all__ = ["atomic_torch_save", "atomic_write_bytes", "atomic_write_text"]


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """`torch.save(obj, path)` atomically; torch is imported here so this module stays light.

    Serialised in memory first: torch writing straight to a file that hits a full disk
    reports "[enforce fail at inline_container.cc] unexpected pos", where the write of the
    bytes reports the disk (DiskFullError, naming the folder and its free space).
    """
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getbuffer())
