"""Export a model once before training it, so an export problem costs seconds, not the run.

Export comes last in `compressor run`, after every training; a model torch cannot export, or
whose ONNX graph computes something else, used to fail there, minutes or hours in. The probe
exports the model as it is (untrained) with the recipe's export settings, checks onnxruntime
against torch on a few validation images, and raises the export's own error, prefixed to say
that nothing was trained yet. No INT8 or FP16: those are built from the FP32 file and checked
on their own later.

The file goes to a folder in the system's temporary directory, never the run directory: it is
deleted when the probe passes and kept when it fails, so the graph that failed can be opened.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from compressor.data.splits import DataSplits
from compressor.recipe.sections import ExportSection
from export import ExportError, export_onnx

__all__ = ["PROBE_IMAGES", "probe_export"]

PROBE_IMAGES = 8  # validation images in the parity check: a shape or op fault shows on any


def probe_export(
    model: nn.Module,
    data: DataSplits,
    section: ExportSection,
    what: str,
    log: Callable[[str], None],
) -> float:
    """Export `model` to a temporary ONNX file and check parity; returns the seconds taken.

    Top-1 agreement is not required here: an untrained network's logits can be near ties
    that float rounding flips, which says nothing about the export. The tolerance on the
    difference is the recipe's (export.parity_atol, export.parity_rtol). The global torch
    RNG is restored afterwards, so a run with the probe trains exactly as one without it.
    """
    config = dataclasses.replace(section.export_config(), require_top1_agreement=0.0)
    folder = Path(tempfile.mkdtemp(prefix="compressor-export-probe-"))
    started = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[]):
            result = export_onnx(
                model,
                data.val.images[:2],
                folder / f"{what.replace(' ', '_')}.onnx",
                config,
                parity_inputs=data.val.images[:PROBE_IMAGES],
            )
    except ExportError as exc:  # the folder stays: the message may point at the file in it
        raise type(exc)(
            f"export check of the {what} model before training failed (nothing was trained; "
            f"fix this first): {exc}"
        ) from exc
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    seconds = time.perf_counter() - started
    log(
        f"[export] {what} model exports to ONNX (checked before training in {seconds:.1f}s: "
        f"parity {result.parity_max_abs_diff:.2e}, allowed {result.parity_tolerance:.2e})"
    )
    return seconds
