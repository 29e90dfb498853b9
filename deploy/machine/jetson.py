"""Jetson facts: board model, L4T / JetPack release, nvpmodel power mode, jetson_clocks state.

Read from /proc/device-tree/model, /etc/nv_tegra_release, `nvpmodel -q`,
`jetson_clocks --show` and the CUDA toolkit's version file. Every probe takes its paths or
command runner as arguments so tests feed it recorded text; a missing tool or file gives None
fields, never an error.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

JETSON_FIELDS = (
    "jetson_model",
    "l4t_release",
    "jetpack",
    "power_mode",
    "power_mode_id",
    "jetson_clocks",
    "jetson_clocks_locked",
)

CommandRunner = Callable[[Sequence[str]], "str | None"]
COMMAND_TIMEOUT_S = 5.0  # nvpmodel and jetson_clocks answer in well under a second

# L4T release -> JetPack release, exact entries from NVIDIA's JetPack archive
# (https://developer.nvidia.com/embedded/jetpack-archive), as tabulated in jetson-stats
# (jtop/core/jetson_variables.py, NVIDIA_JETPACK). Releases missing here fall back to the
# major line (R35 -> "5.x", R36 -> "6.x") rather than a guessed minor: L4T 35.1 was JetPack
# 5.0.2 and 35.2.1 was 5.1, so minors do not line up.
L4T_TO_JETPACK = {
    "35.1.0": "5.0.2",
    "35.2.1": "5.1",
    "35.3.1": "5.1.1",
    "35.4.1": "5.1.2",
    "35.5.0": "5.1.3",
    "35.6.0": "5.1.4",
    "36.2.0": "6.0 DP",
    "36.3.0": "6.0",
    "36.4.0": "6.1",
    "36.4.3": "6.2",
    "36.4.4": "6.2.1",
}
L4T_MAJOR_TO_JETPACK = {"32": "4.x", "34": "5.x", "35": "5.x", "36": "6.x", "38": "7.x"}

_L4T_LINE = re.compile(r"R(\d+)\s*\(release\),\s*REVISION:\s*(\d+(?:\.\d+)*)")
_POWER_MODE = re.compile(r"NV Power Mode:\s*(\S+)(?:\s*\(ID:\s*(\d+)\))?")
_KEY_VALUE = re.compile(r"(\w+)=(\S+)")


@dataclass(frozen=True)
class PowerMode:
    """`nvpmodel -q`: the mode's name and number."""

    name: str
    mode_id: int | None


@dataclass(frozen=True)
class JetsonClocks:
    """`jetson_clocks --show` per clock domain; None where the output has no such line.

    locked: the floor is raised to the ceiling (CPU/GPU MinFreq == MaxFreq; EMC FreqOverride=1),
    which is what `jetson_clocks` sets. at_max: the clock reads its maximum right now.
    """

    cpu: bool | None
    gpu: bool | None
    emc: bool | None
    cpu_at_max: bool | None
    gpu_at_max: bool | None
    emc_at_max: bool | None

    @property
    def locked(self) -> bool:
        states = [s for s in (self.cpu, self.gpu, self.emc) if s is not None]
        return bool(states) and all(states)


def run_command(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT_S) -> str | None:
    """stdout of a short command, or None when it is missing, fails or times out."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        completed = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if completed.returncode != 0:
        return None
    return completed.stdout or None


def jetson_info(root: Path = Path("/"), run: CommandRunner = run_command) -> dict[str, Any]:
    """JETSON_FIELDS (plus cuda_version) on a Jetson; {} anywhere else.

    A Jetson is a machine with /etc/nv_tegra_release (L4T, also in l4t containers) or a
    device-tree model naming a Jetson. `root` stands for "/" and `run` runs a command; tests
    point both at recorded output.
    """
    model = read_device_tree_model(root / "proc/device-tree/model")
    release = _read_text(root / "etc/nv_tegra_release")
    if release is None and (model is None or "jetson" not in model.lower()):
        return {}
    l4t = parse_l4t_release(release) if release else None
    mode = parse_nvpmodel(run(["nvpmodel", "-q"]))
    clocks = parse_jetson_clocks(run(["jetson_clocks", "--show"]))
    return {
        "jetson_model": model or "unknown Jetson",
        "l4t_release": l4t,
        "jetpack": jetpack_for_l4t(l4t),
        "power_mode": mode.name if mode else None,
        "power_mode_id": mode.mode_id if mode else None,
        "jetson_clocks": (asdict(clocks) | {"locked": clocks.locked}) if clocks else None,
        "jetson_clocks_locked": clocks.locked if clocks else None,
        "cuda_version": jetson_cuda_version(root),
    }


def read_device_tree_model(path: Path) -> str | None:
    """The NUL-terminated board name, e.g. "NVIDIA Jetson AGX Orin Developer Kit"."""
    text = _read_text(path)
    if text is None:
        return None
    return text.replace("\x00", "").strip() or None


def parse_l4t_release(text: str) -> str | None:
    """'# R36 (release), REVISION: 4.0, GCID: ...' -> 'R36.4.0'."""
    match = _L4T_LINE.search(text)
    return f"R{match.group(1)}.{match.group(2)}" if match else None


def jetpack_for_l4t(l4t: str | None) -> str | None:
    """'R36.4.0' -> '6.1'; a release missing from the table -> its major line ('6.x')."""
    if not l4t:
        return None
    version = l4t.lstrip("R")
    parts = version.split(".")
    full = ".".join((parts + ["0", "0"])[:3])
    return L4T_TO_JETPACK.get(full) or L4T_MAJOR_TO_JETPACK.get(parts[0])


def parse_nvpmodel(text: str | None) -> PowerMode | None:
    """`nvpmodel -q`: 'NV Power Mode: MAXN' then the mode number on the next line."""
    if not text:
        return None
    lines = [line.strip() for line in text.splitlines()]
    for index, line in enumerate(lines):
        match = _POWER_MODE.search(line)
        if not match:
            continue
        mode_id = match.group(2)
        if mode_id is None:
            following = next((x for x in lines[index + 1 :] if x), "")
            mode_id = following if following.isdigit() else None
        return PowerMode(name=match.group(1), mode_id=int(mode_id) if mode_id else None)
    return None


def parse_jetson_clocks(text: str | None) -> JetsonClocks | None:
    """`jetson_clocks --show` lines 'cpuN: Online=1 ... MinFreq= MaxFreq= CurrentFreq=',
    'GPU MinFreq= MaxFreq= CurrentFreq=', 'EMC MinFreq= MaxFreq= CurrentFreq= FreqOverride='.

    Other lines (SOC family, DLA/PVA, fan, power mode) are ignored; offline CPUs are skipped.
    """
    if not text:
        return None
    cpus: list[dict[str, int]] = []
    gpu: dict[str, int] | None = None
    emc: dict[str, int] | None = None
    for line in text.splitlines():
        line = line.strip()
        values = {k: int(v) for k, v in _KEY_VALUE.findall(line) if v.isdigit()}
        if not {"MinFreq", "MaxFreq", "CurrentFreq"} <= set(values):
            continue
        if re.match(r"cpu\d+:", line):
            if values.get("Online", 1) == 1:
                cpus.append(values)
        elif line.startswith("GPU "):
            gpu = values
        elif line.startswith("EMC "):
            emc = values
    if not cpus and gpu is None and emc is None:
        return None
    emc_locked = None
    if emc is not None:
        override = emc.get("FreqOverride")
        emc_locked = override == 1 if override is not None else emc["MinFreq"] == emc["MaxFreq"]
    return JetsonClocks(
        cpu=all(c["MinFreq"] == c["MaxFreq"] for c in cpus) if cpus else None,
        gpu=gpu["MinFreq"] == gpu["MaxFreq"] if gpu else None,
        emc=emc_locked,
        cpu_at_max=all(c["CurrentFreq"] == c["MaxFreq"] for c in cpus) if cpus else None,
        gpu_at_max=gpu["CurrentFreq"] == gpu["MaxFreq"] if gpu else None,
        emc_at_max=emc["CurrentFreq"] == emc["MaxFreq"] if emc else None,
    )


def jetson_cuda_version(root: Path = Path("/")) -> str | None:
    """The CUDA toolkit JetPack installed (/usr/local/cuda/version.json or version.txt)."""
    text = _read_text(root / "usr/local/cuda/version.json")
    if text is not None:
        try:
            version = json.loads(text)["cuda"]["version"]
        except (ValueError, KeyError, TypeError):
            version = None
    else:
        legacy = _read_text(root / "usr/local/cuda/version.txt") or ""  # JetPack 4
        found = re.search(r"CUDA Version\s+(\S+)", legacy)
        version = found.group(1) if found else None
    if not isinstance(version, str):
        return None
    return ".".join(version.split(".")[:2])


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:  # absent, unreadable, a directory
        return None
