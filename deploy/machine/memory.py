"""How much memory is free, so that a request which cannot fit is refused before it is made.

A batch of 1,000,000 images of 3x224x224 float32 is 602 GB. numpy asks the kernel for it,
Linux overcommits, and the process is OOM-killed half way through filling it: no message,
no result file, and perhaps other processes killed with it. Comparing the size with the
memory the kernel says is available first turns that into one line that names the numbers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["available_memory_bytes", "format_bytes", "tensor_bytes"]

_MEMINFO = Path("/proc/meminfo")


def available_memory_bytes() -> int | None:
    """Memory a new allocation can get without swapping, in bytes; None when unknown.

    Linux: MemAvailable from /proc/meminfo (free memory plus the page cache it can drop).
    Elsewhere: free physical pages x page size (os.sysconf), which undercounts the cache.
    """
    try:
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # the kernel writes kB (KiB)
    except (OSError, ValueError, IndexError):
        pass
    try:
        pages, page_size = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):  # Windows has no sysconf; macOS lacks the name
        return None
    return pages * page_size if pages > 0 and page_size > 0 else None


def tensor_bytes(shape: Sequence[int], itemsize: int) -> int:
    """Bytes of an array of `shape`, in Python integers (no int64 overflow for absurd shapes)."""
    return math.prod(int(d) for d in shape) * int(itemsize)


def format_bytes(count: int) -> str:
    """1536 -> '1.5 KiB'; 602_112_000_000 -> '560.8 GiB'."""
    value, units = float(count), ["bytes", "KiB", "MiB", "GiB", "TiB"]
    while value >= 1024 and len(units) > 1:
        value /= 1024
        units.pop(0)
    return f"{count} bytes" if units[0] == "bytes" else f"{value:.1f} {units[0]}"
