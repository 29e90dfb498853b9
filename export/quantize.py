"""FP32 ONNX -> INT8 QDQ ONNX: the explicit quantization TensorRT 10/11 builds INT8 engines from.

TensorRT 11 has no INT8 calibrators: INT8 means QuantizeLinear/DequantizeLinear pairs in the
ONNX. Its parser accepts only signed INT8 with zero point 0, per-tensor activations and
per-output-channel weights, and DequantizeLinear of INT8 (not INT32: biases stay float).
onnxruntime's quantize_static in QDQ format writes exactly that with QInt8 activations and
weights, ActivationSymmetric/WeightSymmetric and QuantizeBias=False; `_check_tensorrt_qdq`
re-reads the file to prove it.

Calibration and quantize_static live in export/quantize_ort.py; where the Q/DQ pairs go
(TensorRT's fusion rules by default) in export/qdq_placement.py.

INT8 accuracy is measured, by default, with Q/DQ run as written (onnxruntime graph
optimizations off): int8 products summed in float, the arithmetic of TensorRT's INT8 kernels.
onnxruntime's fused CPU int8 kernels lose accuracy with 8-bit weights on x86 CPUs without VNNI
(16-bit intermediate sums saturate: why onnxruntime documents reduce_range for them). Measured
on this AVX2 machine: -2 to -3 top-1 points on the default pipeline's ResNet-56 variants where
the simulation shows -0.3, and exact agreement with the simulation once weights are 7-bit.
That says nothing about TensorRT, so the result reports it apart (int8_top1_onnxruntime).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from deploy.evaluate import LabelledData, class_scores
from deploy.files import file_sha256, work_directory
from deploy.lazy import lazy_import
from deploy.runners import OnnxRuntimeRunner
from export.errors import ExportError, ExportInputError
from export.metadata import MetadataValue, check_out_path, load_source, save_onnx, set_metadata
from export.qdq_placement import PlacementPlan, QdqCounts, count_qdq
from export.quantize_config import QuantizeConfig
from export.quantize_inputs import (
    calibration_subset,
    checked_eval,
    checked_images,
    checked_user_metadata,
    image_input,
)
from export.quantize_ort import quantize_with_onnxruntime

_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class QuantizeResult:
    """What `quantize_qdq` wrote and what INT8 costs on the evaluation images."""

    path: Path
    calibration_method: str
    calibration_samples: int  # images actually used
    fp32_top1: float | None  # fractions; None without evaluation data
    int8_top1: float | None  # Q/DQ run as written: the arithmetic of TensorRT's INT8 kernels
    top1_agreement: float | None  # fraction of eval images whose FP32 and INT8 argmax agree
    max_abs_diff: float | None  # largest |INT8 - FP32| over every logit
    qdq_nodes: int  # QuantizeLinear + DequantizeLinear
    int8_top1_onnxruntime: float | None = None  # onnxruntime's own CPU int8 kernels, here
    eval_samples: int = 0
    sha256: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    qdq_placement: str = ""  # "tensorrt" or "all"
    qdq_counts: QdqCounts = field(default_factory=lambda: QdqCounts(0, 0, {}))
    float_classifier: str | None = None  # the classifier node left in float, if any


def quantize_qdq(
    fp32_onnx: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    calibration_images: np.ndarray,
    config: QuantizeConfig = QuantizeConfig(),  # noqa: B008 - frozen, so sharing is safe
    *,
    eval_images: np.ndarray | None = None,
    eval_labels: np.ndarray | None = None,
    metadata: Mapping[str, MetadataValue] | None = None,
) -> QuantizeResult:
    """Calibrate on `calibration_images`, write the INT8 QDQ model to `out_path` atomically.

    Images are N x C x H x W floats preprocessed like the model's input. With `eval_images`
    and `eval_labels` both models are evaluated and the numbers land in the result and in the
    file's metadata. Intermediate files live in a temp folder next to `out_path` that is
    removed even on failure; `out_path` appears only when everything succeeded.
    """
    source, out_path = Path(fp32_onnx), Path(out_path)
    model = load_source(source, "quantize_qdq")
    if any(node.op_type in _QDQ_OPS for node in model.graph.node):
        raise ExportInputError(f"quantize_qdq: {source} already has Q/DQ nodes; give the FP32 file")
    spec = image_input(model, source)
    check_out_path(out_path, source)
    calib = checked_images(calibration_images, spec, "calibration_images")
    calib = calibration_subset(calib, config.calibration_samples, spec.shape[0])
    evaluation = checked_eval(eval_images, eval_labels, spec)
    user_metadata = checked_user_metadata(metadata)
    with work_directory(out_path) as work:
        int8_file = work / "int8.onnx"
        plan = quantize_with_onnxruntime(source, int8_file, calib, spec, config, work)
        quantized = onnx.load(str(int8_file))
        qdq_nodes = _check_tensorrt_qdq(quantized, source)
        counts = count_qdq(quantized)
        numbers = _evaluate(source, int8_file, evaluation, config) if evaluation else {}
        props = {prop.key: prop.value for prop in model.metadata_props}
        props.update(user_metadata)
        props.update(_our_metadata(source, len(calib), config, numbers, len(evaluation or ())))
        props.update(_placement_metadata(plan, counts))
        final = set_metadata(quantized, props, replace=True)
        save_onnx(quantized, out_path)
    return QuantizeResult(
        path=out_path,
        calibration_method=config.calibration_method,
        calibration_samples=len(calib),
        fp32_top1=numbers.get("fp32_top1"),
        int8_top1=numbers.get("int8_top1"),
        top1_agreement=numbers.get("top1_agreement"),
        max_abs_diff=numbers.get("max_abs_diff"),
        int8_top1_onnxruntime=numbers.get("int8_top1_onnxruntime"),
        qdq_nodes=qdq_nodes,
        eval_samples=len(evaluation or ()),
        sha256=file_sha256(out_path),
        metadata=final,
        qdq_placement=plan.placement,
        qdq_counts=counts,
        float_classifier=None if plan.classifier_quantized else plan.classifier,
    )


def _check_tensorrt_qdq(model: onnx.ModelProto, source: Path) -> int:
    """Prove the graph is what TensorRT's parser accepts; returns the Q/DQ node count."""
    inits = {init.name: init for init in model.graph.initializer}
    count, problems = 0, []
    for node in model.graph.node:
        if node.op_type not in _QDQ_OPS:
            continue
        count += 1
        zero_point = inits.get(node.input[2]) if len(node.input) > 2 else None
        if zero_point is not None and (
            zero_point.data_type != onnx.TensorProto.INT8
            or np.any(onnx.numpy_helper.to_array(zero_point) != 0)
        ):
            problems.append(f"{node.name}: zero point not int8 0")
        weight = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if weight is not None and weight.data_type != onnx.TensorProto.INT8:
            problems.append(f"{node.name}: dequantizes {weight.data_type=}, not int8")
    if count == 0 or problems:
        raise ExportError(
            f"quantize_qdq: the quantized {source.name} is not TensorRT-ready "
            f"({problems[:3] or 'no Q/DQ nodes: no op of op_types was found'})"
        )
    return count


def _evaluate(
    fp32: Path, int8: Path, data: LabelledData, config: QuantizeConfig
) -> dict[str, float]:
    """Top-1 with the project's evaluator: FP32, INT8 as TensorRT computes it, and INT8 on
    onnxruntime's CPU kernels; agreement and logit difference are FP32 vs the first INT8."""
    results = []
    runners = (
        OnnxRuntimeRunner(fp32),
        OnnxRuntimeRunner(int8, optimize=False),  # the arithmetic TensorRT's INT8 does
        OnnxRuntimeRunner(int8),  # onnxruntime's own CPU int8 kernels
    )
    for runner in runners:
        with runner:
            scores = class_scores(runner, data, batch_size=config.eval_batch_size)
        results.append((float(np.mean(scores.argmax(axis=1) == data.labels)), scores))
    (fp32_top1, reference), (int8_top1, logits), (kernels_top1, _) = results
    return {
        "fp32_top1": fp32_top1,
        "int8_top1": int8_top1,
        "int8_top1_onnxruntime": kernels_top1,
        "top1_agreement": float(np.mean(reference.argmax(1) == logits.argmax(1))),
        "max_abs_diff": float(np.max(np.abs(reference - logits))),
    }


def _our_metadata(
    source: Path, samples: int, config: QuantizeConfig, numbers: dict[str, float], evals: int
) -> dict[str, str]:
    props = {
        "precision": "int8",
        "quantization": "qdq",
        "quantization.scheme": "int8 symmetric; weights "
        + ("per-channel" if config.per_channel else "per-tensor"),
        "quantization.calibration_method": config.calibration_method,
        "quantization.calibration_samples": str(samples),
        "quantization.op_types": ",".join(config.op_types),
        "quantization.onnxruntime_version": _ort_version(),
        "source_onnx_sha256": file_sha256(source),
    }
    if numbers:
        props["quantization.eval_samples"] = str(evals)
        props.update({f"quantization.{key}": f"{value:.6g}" for key, value in numbers.items()})
    return props


def _placement_metadata(plan: PlacementPlan, counts: QdqCounts) -> dict[str, str]:
    """Where the pairs went and how many feed each op type, readable from the file alone."""
    classifier = (
        "none found"
        if plan.classifier is None
        else ("int8" if plan.classifier_quantized else f"float ({plan.classifier})")
    )
    return {
        "quantization.qdq_placement": plan.placement,
        "quantization.classifier": classifier,
        "quantization.qdq_counts": json.dumps(counts.to_dict(), sort_keys=True),
    }


def _ort_version() -> str:
    return str(getattr(lazy_import("onnxruntime", "INT8 quantization"), "__version__", "unknown"))
