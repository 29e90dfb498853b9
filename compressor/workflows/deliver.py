"""The delivery end: export a model to checked ONNX, and time variants side by side."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.data.splits import DataSplits
from compressor.errors import ConfigError, UnsupportedModelError
from compressor.models.blocks import BlockInfo, discover_blocks
from compressor.models.spec import ModelSpec
from compressor.prune.latency import blocks_file
from compressor.recipe.sections import BenchSection, ExportSection
from compressor.training.checks import check_model_fits
from deploy.bench import BenchConfig, LatencyRecord, benchmark_side_by_side
from deploy.evaluate import LabelledData, top1_accuracy
from deploy.files import file_sha256
from deploy.lazy import lazy_import
from deploy.machine.cpus import default_threads
from deploy.machine.state import MachineMonitor
from deploy.onnx_info import inspect_onnx, model_identity
from deploy.profiling.blocks_file import default_blocks_path, write_blocks
from deploy.results.files import format_table
from deploy.runners import OnnxRuntimeRunner
from deploy.runners.torch_runner import TorchRunner
from deploy.session import BenchSession
from deploy.tensorrt.engine import BuildOptions, build_engine
from deploy.tensorrt.runner import TensorRTRunner
from deploy.tensorrt.version import parse_trt_version
from export.bf16 import BF16, convert_bf16
from export.config import ExportResult
from export.emulation import onnxruntime_or_emulation
from export.errors import BlockBoundaryError, ExportError
from export.fp16 import FP16, convert_fp16
from export.onnx_export import export_onnx
from export.quantize import QuantizeConfig, quantize_qdq
from export.readiness import check_readiness
from export.trt_ops import max_opset


def export_variant(
    model: nn.Module,
    spec: ModelSpec,
    info: dict[str, Any],
    data: DataSplits,
    section: ExportSection,
    onnx_path: Path,
    log: Callable[[str], None],
) -> ExportResult:
    """ONNX with parity checked on the real validation images and the spec in its metadata."""
    model = model.cpu().eval()
    check_model_fits(model, data, torch.device("cpu"))  # not the exporter's traceback
    config = section.export_config()  # opset, exporter, parity_atol and parity_rtol
    metadata = {
        "variant": info.get("variant"),
        "spec_sha256": spec.sha256(),
        "spec": spec.to_dict(),
        "accuracy": info.get("accuracy"),  # None for an untrained ticket: left out
        "params": info.get("params"),
        "macs": info.get("macs"),
        "dataset": data.name,
        "input_mean": list(data.mean),
        "input_std": list(data.std),
        "class_names": list(data.class_names),
    }
    metadata = {
        k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items() if v is not None
    }
    blocks = removable_blocks(model, data.val.images[:1])

    def export(names: list[str]) -> ExportResult:
        return export_onnx(
            model,
            data.val.images[:2],
            onnx_path,
            config,
            parity_inputs=data.val.images,
            metadata=metadata,
            blocks=names,
        )

    try:  # with blocks.json beside it, `deploy profile-blocks` can time its blocks
        result = export([b.name for b in blocks])
        if blocks:
            write_blocks(default_blocks_path(onnx_path), blocks_file(blocks, result))
    except BlockBoundaryError as exc:
        log(f"[export] no blocks.json for {onnx_path}: {exc}")
        result = export([])
    log(
        f"[export] {info.get('variant', onnx_path.stem)}: {result.path} parity max abs diff "
        f"{result.parity_max_abs_diff:.2e}, top-1 agreement {result.parity_top1_agreement:.4f}"
    )
    return result


def removable_blocks(model: nn.Module, example: torch.Tensor) -> list[BlockInfo]:
    """The blocks blocks.json lists; none for a model whose blocks cannot be read."""
    try:
        return [b for b in discover_blocks(model, example) if b.removable]
    except UnsupportedModelError:
        return []


def export_precisions(
    onnx_path: Path,
    data: DataSplits,
    section: ExportSection,
    max_batch: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """INT8 QDQ, FP16 and BF16 siblings of an FP32 ONNX file, each with its test accuracy
    measured by onnxruntime (BF16: on its float32 emulation, `export.emulation`, as
    onnxruntime's CPU provider has no BF16 kernels), and a TensorRT-readiness check of every
    file; returns the report entries.

    The files are what TensorRT 10/11 consume for INT8, FP16 and BF16 (see
    ../shared/TENSORRT.md); their accuracy here is what a device's engine should reproduce.
    The readiness check assumes a dynamic batch from 1 to `max_batch`, the largest the
    benchmark times.
    """
    test = LabelledData(images=data.test.images.numpy(), labels=data.test.labels.numpy())
    entries: dict[str, Any] = {}
    files = {"fp32": onnx_path}
    if section.int8:
        files["int8"] = onnx_path.with_name(f"{onnx_path.stem}.int8.onnx")
        entries["int8"] = _int8_sibling(onnx_path, files["int8"], data, test, section, log)
    for precision in ("fp16", "bf16"):
        if getattr(section, precision):
            files[precision] = onnx_path.with_name(f"{onnx_path.stem}.{precision}.onnx")
            entries[precision] = _float_sibling(
                precision, onnx_path, files[precision], data, test, log
            )
    shape = tuple(data.test.images.shape[1:])
    profile = ((1, *shape), (max_batch, *shape), (max_batch, *shape))
    entries["readiness"] = {}
    for precision, path in files.items():
        readiness = check_readiness(
            path, trt_version=section.trt_version, profiles={"input": profile}
        )
        entries["readiness"][precision] = readiness.to_dict()
        for finding in readiness.errors:
            log(f"[readiness] {path.parent.name}/{path.name}: {finding.message}")
    return entries


def _int8_sibling(
    onnx_path: Path,
    path: Path,
    data: DataSplits,
    test: LabelledData,
    section: ExportSection,
    log: Callable[[str], None],
) -> dict[str, Any]:
    result = quantize_qdq(
        onnx_path,
        path,
        data.train.images.numpy(),
        QuantizeConfig(
            calibration_method=section.calibration_method,
            calibration_samples=section.calibration_samples,
            qdq_placement=section.qdq_placement,
            quantize_classifier=section.quantize_classifier,
        ),
        eval_images=test.images,
        eval_labels=test.labels,
    )
    log(
        f"[export] {onnx_path.parent.name} int8: {path} top-1 {result.int8_top1:.4f} "
        f"(onnxruntime int8 kernels {result.int8_top1_onnxruntime:.4f}, fp32 "
        f"{result.fp32_top1:.4f}), {result.calibration_method} calibration on "
        f"{result.calibration_samples} images"
    )
    return {
        "onnx": str(path),
        "sha256": file_sha256(path),
        # Q/DQ computed as written (exact int8 products): the arithmetic of TensorRT INT8.
        "accuracy": result.int8_top1,
        # onnxruntime's fused CPU int8 kernels, which lose accuracy on x86 without VNNI.
        "accuracy_onnxruntime_cpu": result.int8_top1_onnxruntime,
        "fp32_accuracy_onnxruntime": result.fp32_top1,
        "top1_agreement": result.top1_agreement,
        "max_abs_diff": result.max_abs_diff,
        "calibration_method": result.calibration_method,
        "calibration_samples": result.calibration_samples,
        "qdq_nodes": result.qdq_nodes,
        "qdq_placement": result.qdq_placement,
        "qdq_counts": result.qdq_counts.to_dict(),
        "float_classifier": result.float_classifier,
    }


# The low-precision float writers, by precision: the converter and the type it writes.
_FLOAT_WRITERS = {"fp16": (convert_fp16, FP16), "bf16": (convert_bf16, BF16)}


def _float_sibling(
    precision: str,
    onnx_path: Path,
    path: Path,
    data: DataSplits,
    test: LabelledData,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The FP16 or BF16 file, parity-checked on the validation images, its test top-1 measured
    on onnxruntime, or on its float32 emulation where onnxruntime has no kernels (BF16)."""
    convert, fmt = _FLOAT_WRITERS[precision]
    try:
        result = convert(onnx_path, path, parity_inputs=data.val.images.numpy())
    except ExportError as exc:  # its advice is the Python API's; a recipe can skip the file
        raise type(exc)(f"{exc}; in the recipe, export.{precision}: false skips it") from exc
    with onnxruntime_or_emulation(path, fmt.onnx_type) as (runner, method):
        accuracy = top1_accuracy(runner, test, batch_size=64).top1
    log(
        f"[export] {onnx_path.parent.name} {precision}: {path} top-1 {accuracy:.4f} ({method}), "
        f"max abs diff {result.max_abs_diff:.2e} (allowed {result.tolerance:.2e}), top-1 "
        f"agreement {result.top1_agreement:.4f}"
    )
    return {
        "onnx": str(path),
        "sha256": file_sha256(path),
        "accuracy": accuracy,
        "accuracy_method": method,  # "onnxruntime" or "float32-emulation"
        "max_abs_diff": result.max_abs_diff,
        "parity_tolerance": result.tolerance,
        "parity_method": result.parity_method,
        "top1_agreement": result.top1_agreement,
        "opset": result.opset,
        "float32_nodes": result.float32_nodes,
    }


def time_variants(
    models: Mapping[str, nn.Module],
    onnx_paths: Mapping[str, Path],
    input_shape: tuple[int | None, ...],
    config: BenchConfig,
    *,
    backends: tuple[str, ...] = ("onnxruntime", "torch"),
    threads: int | None = None,
    monitor: MachineMonitor | None = None,
) -> list[LatencyRecord]:
    """Interleaved timing of all variants per backend, so load on the machine hits all alike.

    onnxruntime runs the ONNX files on the CPU; torch runs the modules on the CPU, and again
    on CUDA when present. `threads` None: one per usable CPU (the runners decide). With a
    `monitor`, the machine is sampled around every timed phase (`deploy.machine.stability`
    reads it).
    """
    records: list[LatencyRecord] = []
    if "onnxruntime" in backends:
        runners = {n: OnnxRuntimeRunner(p, threads=threads) for n, p in onnx_paths.items()}
        records += benchmark_side_by_side(runners, config, monitor=monitor)
    if "torch" in backends:
        for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
            runners = {
                n: TorchRunner(m, device=device, input_shape=input_shape, threads=threads)
                for n, m in models.items()
            }
            records += benchmark_side_by_side(runners, config, monitor=monitor)
    return records


def time_tensorrt(
    onnx_paths: Mapping[str, Path],
    precisions: tuple[str, ...],
    config: BenchConfig,
    log: Callable[[str], None],
    monitor: MachineMonitor | None = None,
) -> list[LatencyRecord]:
    """Build a TensorRT engine per variant and precision, then time each precision's engines
    interleaved. FP16, BF16 and INT8 engines come from the `.fp16.onnx` / `.bf16.onnx` /
    `.int8.onnx` files (what strongly typed TensorRT 11 needs; TensorRT 10 takes them too).
    """

    records: list[LatencyRecord] = []
    suffix = {"fp32": "", "bf16": ".bf16", "fp16": ".fp16", "int8": ".int8"}
    for precision in precisions:
        runners = {}
        for name, fp32 in onnx_paths.items():
            source = fp32.with_name(f"{fp32.stem}{suffix[precision]}.onnx")
            if precision == "bf16" and source.is_file():
                trt = lazy_import("tensorrt", "building TensorRT engines")
                source = bf16_source(fp32, source, trt.__version__)
            if not source.is_file():
                raise ConfigError(
                    f"bench.trt_precisions: {precision} builds from {source.name}, which was not "
                    f"written for {name}; set export.{precision}: true, or drop {precision} "
                    "from bench.trt_precisions"
                )
            engine = fp32.with_name(f"{fp32.stem}.{precision}.engine")
            options = BuildOptions(precision=precision, max_batch=max(config.batch_sizes))
            build_engine(source, engine, options, log=log)
            runners[name] = TensorRTRunner(engine)
        records += benchmark_side_by_side(runners, config, monitor=monitor)
    return records


def bf16_source(fp32: Path, bf16: Path, trt_version: str) -> Path:
    """The file a bf16 engine builds from on TensorRT `trt_version`.

    The BF16 graph is opset 22, the first whose Conv takes bfloat16. TensorRT 11 needs it
    (strongly typed only); a 10.x release documenting an older opset may refuse to parse it,
    and builds the FP32 graph with the BF16 builder flag instead, as before BF16 files existed.
    """
    version = parse_trt_version(trt_version)
    documented = max_opset((version.major, version.minor))
    return bf16 if version.major >= 11 or inspect_onnx(bf16).opset <= documented else fp32


def benchmark_variants(
    models: dict[str, nn.Module],
    onnx_paths: dict[str, Path],
    data: DataSplits,
    bench: BenchSection,
    out_dir: Path,
    log: Callable[[str], None],
) -> tuple[list[LatencyRecord], dict[str, Any], list[str]]:
    """The pipeline's benchmark: the recipe's backends and batches, written to latency.json.

    Returns the records, the device fingerprint and the measurement warnings
    (`deploy.machine.stability.timing_warnings`), which latency.json carries too.
    """
    # CPU runners get an explicit thread count either way; the fingerprint must say which.
    threads = bench.threads if bench.threads is not None else default_threads()
    session = BenchSession(threads)
    config = BenchConfig(
        batch_sizes=tuple(bench.batch_sizes),
        warmup_iters=bench.warmup_iters,
        iterations=bench.iterations,
    )
    records = time_variants(
        models,
        onnx_paths,
        (None, *data.val.images.shape[1:]),
        config,
        backends=tuple(b for b in bench.backends if b != "tensorrt"),
        threads=threads,
        monitor=session.monitor,
    )
    if "tensorrt" in bench.backends:
        records += time_tensorrt(onnx_paths, bench.trt_precisions, config, log, session.monitor)
    # Named by the ONNX metadata (variant, spec hash), as `deploy bench` names them, so
    # `deploy report` keeps two runs' "shrunk" apart when their specs differ.
    ids = {name: model_identity(path) for name, path in onnx_paths.items()}
    records = [r.with_identity(ids[r.model]) if r.model in ids else r for r in records]
    written = session.finish(records, out_dir / "latency.json")
    log(format_table(records))
    log(
        f"[bench] variants took turns in blocks of {config.block_iters} iterations, each "
        f"after {1000 * config.lead_in_seconds:g} ms untimed (details.timing in the records)"
    )
    log(f"[bench] results written to {written.path}")
    for line in written.warnings:
        log(f"[bench] warning: {line}")
    return records, session.fingerprint, written.warnings
