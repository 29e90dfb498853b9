"""onnxruntime's part of `quantize_qdq`: pre-processing, calibration, and quantize_static
with the Q/DQ placement's node lists, then the placement's clean-up pass.

Calibration ranges are computed here with onnxruntime's calibrators and handed to
quantize_static through its calibration cache, because quantize_static does not pass the
histogram size on: its entropy default (128 bins = 128 quantized bins) leaves the full range
as the only candidate, so "entropy" silently equals "minmax".

TensorRT's parser accepts only signed INT8 with zero point 0, per-tensor activations and
per-output-channel weights, and DequantizeLinear of INT8 (not INT32: biases stay float):
QInt8 activations and weights, ActivationSymmetric/WeightSymmetric and QuantizeBias=False.
"""

from __future__ import annotations

import contextlib
import errno
import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from deploy.errors import DiskFullError
from deploy.lazy import lazy_import
from deploy.paths import disk_full_error, format_size
from deploy.runners import TensorSpec
from export.errors import ExportError, first_line
from export.qdq_placement import PlacementPlan, plan_placement, remove_fused_input_qdq_
from export.quantize_config import QuantizeConfig

_ORT_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
# Symmetric signed INT8 (zero point 0) and float biases: what TensorRT's parser takes.
_TENSORRT_OPTIONS = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}


def quantize_with_onnxruntime(
    source: Path, out: Path, calib: np.ndarray, spec: TensorSpec, config: QuantizeConfig, work: Path
) -> PlacementPlan:
    """Pre-process, calibrate, quantize_static with the ranges from the cache file and the
    placement's node lists, then remove the pairs the placement leaves out."""
    q = lazy_import("onnxruntime.quantization", "INT8 quantization (quantize_qdq)")
    method = getattr(q.CalibrationMethod, _ORT_METHODS[config.calibration_method])
    options: dict[str, Any] = {"symmetric": True}  # TensorRT: zero point 0
    if config.calibration_method == "entropy":
        options.update(num_bins=config.entropy_bins, num_quantized_bins=128)
    if config.calibration_method == "percentile":
        options["percentile"] = config.percentile
    step = spec.shape[0] or config.calibration_batch_size
    batches = iter([{spec.name: calib[i : i + step]} for i in range(0, len(calib), step)])
    model, ranges = str(source), str(work / "ranges.json")
    try:
        if config.preprocess:
            model = str(work / "preprocessed.onnx")
            q.quant_pre_process(str(source), model)
        plan, model = _placement(Path(model), source, config, work)
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print
            calibrator = q.create_calibrator(
                model,
                list(config.op_types),
                augmented_model_path=str(work / "augmented.onnx"),
                calibrate_method=method,
                providers=["CPUExecutionProvider"],
                extra_options=options,
            )
            calibrator.collect_data(_Batches(batches))
            q.save_tensors_data(calibrator.compute_data(), ranges)
        q.quantize_static(
            model,
            str(out),
            None,  # no data reader: the ranges come from the cache file written above
            quant_format=q.QuantFormat.QDQ,
            op_types_to_quantize=list(config.op_types),
            per_channel=config.per_channel,
            activation_type=q.QuantType.QInt8,
            weight_type=q.QuantType.QInt8,
            calibrate_method=method,
            calibration_cache_path=ranges,
            nodes_to_quantize=None
            if plan.nodes_to_quantize is None
            else list(plan.nodes_to_quantize),
            nodes_to_exclude=list(plan.nodes_to_exclude) or None,
            extra_options={**_TENSORRT_OPTIONS, **plan.extra_options},
        )
        if plan.fused_add_inputs:
            quantized = onnx.load(str(out))
            if remove_fused_input_qdq_(quantized, plan):
                onnx.save(quantized, str(out))
    except ExportError:
        raise
    except Exception as exc:  # onnxruntime raises many types, C++-backed ones included
        full = disk_full_error(exc, out) or _nearly_full(work, source)
        if full is not None:  # protobuf then reports a truncated file as "corrupt"
            raise full from exc
        hint = "; retry with QuantizeConfig(preprocess=False)" if config.preprocess else ""
        raise ExportError(
            f"quantize_qdq: onnxruntime could not quantize {source}: {first_line(exc)}{hint}"
        ) from exc
    return plan


def _placement(
    model: Path, source: Path, config: QuantizeConfig, work: Path
) -> tuple[PlacementPlan, str]:
    """The placement's plan for the graph onnxruntime quantizes, and that graph's path (a
    copy when nodes had to be named so they can be listed)."""
    proto = onnx.load(str(model))
    plan = plan_placement(proto, config.op_types, config.qdq_placement, config.quantize_classifier)
    if plan.nodes_to_quantize == ():
        left = f" (the classifier '{plan.classifier}' left in float)" if plan.classifier else ""
        raise ExportError(
            f"quantize_qdq: the quantized {source.name} is not TensorRT-ready: no node of "
            f"op_types {list(config.op_types)} is quantized under qdq_placement "
            f"'{config.qdq_placement}'{left}; add op types, or set quantize_classifier"
        )
    if plan.renamed_nodes:
        model = work / "named.onnx"
        onnx.save(proto, str(model))
    return plan, str(model)


def _nearly_full(work: Path, source: Path) -> DiskFullError | None:
    """A failed quantization in a folder without room for its intermediate files (three
    copies of the model) ran out of space, whatever onnxruntime's message says."""
    try:
        free = shutil.disk_usage(work).free
        needed = 3 * source.stat().st_size + (16 << 20)
    except OSError:
        return None
    if free >= needed:
        return None
    return DiskFullError(
        f"quantize_qdq: no space left on the disk of {work.parent} ({format_size(free)} free, "
        f"about {format_size(needed)} needed for the intermediate files of {source.name}); "
        "free some space and rerun",
        errno.ENOSPC,
    )


class _Batches:
    """onnxruntime's CalibrationDataReader protocol: get_next() until None."""

    def __init__(self, feeds: Iterator[dict[str, np.ndarray]]) -> None:
        self._feeds = feeds

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)
