"""Per-node times: where one inference call spends its time, node by node.

- onnxruntime: `onnxruntime_node_times` profiles in a session of its own, after the timed
  benchmark and never during it: a profiled session writes an event per node per call,
  which the timed numbers must not pay for. The first call is a warm-up, left out.
- trtexec: `trtexec_profile_args` are the flags that make trtexec write its per-layer
  profile and layer information; `read_trtexec_node_times` reads the two files;
  `trtexec_node_times` runs trtexec once more, only to profile.
- `block_times` adds the nodes up per removable block of a blocks.json.

The formats of the profilers' files are in deploy.profiling.profile_files; the records
(NodeProfile, its file, the table) in deploy.results.node_profile, which `deploy report`
reads without importing any profiler.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deploy.bench import make_inputs
from deploy.errors import DeployError, DeployInputError, first_line
from deploy.lazy import lazy_import
from deploy.machine.cpus import default_threads
from deploy.onnx_files import check_onnx_file
from deploy.onnx_info import inspect_onnx
from deploy.profiling.blocks_file import BlocksFile, read_blocks
from deploy.profiling.profile_files import (
    WARMUP_CALLS,
    LayerInfo,
    parse_onnxruntime_profile,
    parse_trtexec_layer_info,
    parse_trtexec_profile,
    read_text,
    read_trtexec_node_times,
)
from deploy.results.node_profile import NodeProfile, NodeTime, format_node_times, top_nodes
from deploy.runners.onnxruntime import SPIN_DURATION_US
from deploy.tensorrt.trtexec import (
    find_trtexec,
    run_trtexec_process,
    trtexec_command,
    trtexec_version,
)
from deploy.tensorrt.version import TrtVersion, capabilities

ORT_SOURCE = "onnxruntime profiler"
DEFAULT_ITERATIONS = 50  # profiled calls: each adds an event per node to the trace
MAX_TRACE_BYTES = 512 << 20
# onnxruntime's NCHWc layout pass (CPU, ORT_ENABLE_ALL) names each node it makes after the
# tensor that node produces plus this suffix ("relu_out_nchwc" for a fused Conv+Relu).
NCHWC_SUFFIX = "_nchwc"

# --- onnxruntime ---------------------------------------------------------------------------


def onnxruntime_node_times(
    model_path: str | os.PathLike[str],
    batch: int,
    threads: int | None,
    iterations: int = DEFAULT_ITERATIONS,
    *,
    name: str | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    optimize: bool = True,
) -> NodeProfile:
    """Profile `model_path` with onnxruntime: `iterations` calls at `batch` after one warm-up,
    on the CPU provider with the timed runner's settings (threads, spinning, optimization)."""
    model_path = Path(model_path)
    ort = lazy_import("onnxruntime", "per-node times with onnxruntime (--profile)")
    info = inspect_onnx(model_path)
    feed = make_inputs(info.inputs, batch, shapes, seed)
    with tempfile.TemporaryDirectory(prefix="ort-profile-") as folder:
        options = _session_options(ort, threads, optimize)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "profile")
        try:
            session = ort.InferenceSession(
                str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
            for _ in range(WARMUP_CALLS + iterations):
                session.run(None, feed)
            trace = Path(session.end_profiling())
        except Exception as exc:  # onnxruntime raises its own C++-backed error types
            raise DeployError(
                f"onnxruntime cannot profile {model_path}: {first_line(exc)}"
            ) from exc
        text = read_text(trace, "onnxruntime profile", MAX_TRACE_BYTES)
    nodes, total, run_ms = parse_onnxruntime_profile(text, trace, skip_calls=WARMUP_CALLS)
    return NodeProfile(
        model=name or model_path.stem,
        backend="onnxruntime",
        precision=info.precision,
        batch=batch,
        nodes=nodes,
        total_ms=total,
        source=ORT_SOURCE,
        model_path=str(model_path),
        run_ms=run_ms,
    )


def _session_options(ort: Any, threads: int | None, optimize: bool) -> Any:
    """The settings deploy.runners.onnxruntime times with, so the profile is of the same run."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads if threads is not None else default_threads())
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    options.add_session_config_entry("session.intra_op.spin_duration_us", str(SPIN_DURATION_US))
    options.log_severity_level = 4
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    return options


# --- trtexec -------------------------------------------------------------------------------


def trtexec_profile_args(
    profile_path: str | os.PathLike[str],
    layer_info_path: str | os.PathLike[str],
    *,
    trt_version: str | TrtVersion | None = None,
    separate_run: bool = True,
) -> list[str]:
    """trtexec flags that write per-layer times and layer information; append them to a
    trtexec_command(...) made without its `export_profile`.

    `separate_run` profiles after the timed run, so the timing is not perturbed: the flag
    before TensorRT 11, which always does it (and warns that --separateProfileRun is
    deprecated). --profilingVerbosity applies when trtexec builds the engine; an engine built
    without it lists layer names only.
    """
    args = [
        f"--exportProfile={profile_path}",
        f"--exportLayerInfo={layer_info_path}",
        "--profilingVerbosity=detailed",
    ]
    v11 = trt_version is not None and capabilities(trt_version).trtexec_defaults_v11
    if separate_run and not v11:
        args.append("--separateProfileRun")
    return args


def trtexec_node_times(
    model: str | os.PathLike[str],
    batch: int,
    *,
    name: str | None = None,
    precision: str | None = None,
    trtexec: str | os.PathLike[str] | None = None,
    trt_version: str | None = None,
    iterations: int = DEFAULT_ITERATIONS,
    timeout_s: float = 900,
    **options: Any,
) -> NodeProfile:
    """Profile `model` (ONNX or engine) in a trtexec run of its own at `batch`; `options` are
    trtexec_command's (shapes, timing_cache, workspace_mib, dla_core, ...)."""
    model = Path(model)
    source = {"onnx": model} if model.suffix == ".onnx" else {"engine": model}
    if precision is None and "onnx" in source:
        precision = inspect_onnx(model).precision
    path = find_trtexec(trtexec)
    version = capabilities(trt_version).version if trt_version else trtexec_version(path)
    with tempfile.TemporaryDirectory(prefix="trtexec-profile-") as folder:
        profile, layers = Path(folder) / "profile.json", Path(folder) / "layers.json"
        command = [
            str(path),
            *trtexec_command(
                version,
                **source,
                precision=precision,
                batch=batch,
                iterations=iterations,
                duration_s=0,
                **options,
            ),
            # A run of its own that only profiles: no timed run to keep apart from it.
            *trtexec_profile_args(profile, layers, trt_version=version, separate_run=False),
        ]
        run_trtexec_process(command, timeout_s, "trtexec (profiling)")
        return read_trtexec_node_times(
            profile,
            layers if layers.is_file() else None,
            model=name or model.stem,
            precision=precision or "unknown",
            batch=batch,
            model_path=model,
        )


# --- blocks --------------------------------------------------------------------------------


def block_times(
    profile: NodeProfile,
    blocks: BlocksFile | str | os.PathLike[str],
    onnx_path: str | os.PathLike[str],
) -> dict[str, float]:
    """ms per call of each removable block in `blocks` (a blocks.json or its path): the nodes
    between the block's `input` and `output` tensors in `onnx_path`, found by walking
    producers back from `output` until `input`.

    A profiled node counts for the block whose ONNX nodes it computes: its `onnx_nodes`
    (TensorRT's layer metadata), else its name, the parts of a TensorRT name fused with
    " + ", or the tensor an onnxruntime NCHWc node is named after. A node that computes
    nodes of several blocks is split evenly among them; layout conversions and nodes outside
    every block count for none, so the blocks add up to at most `profile.total_ms`.
    """
    if not isinstance(blocks, BlocksFile):
        blocks = read_blocks(blocks)
    owner_of_node, owner_of_tensor = _block_members(blocks, Path(onnx_path))
    times = {block.name: 0.0 for block in blocks.blocks}
    for node in profile.nodes:
        owners = _owners(node, owner_of_node, owner_of_tensor)
        for owner in owners:
            if owner is not None:
                times[owner] += node.mean_ms / len(owners)
    return times


def _owners(
    node: NodeTime, by_node: Mapping[str, str | None], by_tensor: Mapping[str, str | None]
) -> list[str | None]:
    """The blocks (None: no block) of the ONNX nodes a profiled node computes: its
    `onnx_nodes`, else its own name, else the node making the tensor an onnxruntime NCHWc
    node is named after, else the parts of a TensorRT fused name ("a + b + PWN(c, d)")."""
    if node.onnx_nodes:
        return [by_node[name] for name in node.onnx_nodes if name in by_node]
    if node.name in by_node:
        return [by_node[node.name]]
    stem = node.name.removesuffix(NCHWC_SUFFIX)
    if stem != node.name and stem in by_tensor:
        return [by_tensor[stem]]
    parts = {part.strip() for part in re.split(r" \+ |PWN\(|\)|, ", node.name)}
    return [by_node[part] for part in sorted(parts) if part in by_node]


def _block_members(
    blocks: BlocksFile, onnx_path: Path
) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """ONNX node name -> its block (None: outside every block), and the same per tensor a
    node produces."""
    graph = check_onnx_file(onnx_path).graph
    producer = {t: i for i, node in enumerate(graph.node) for t in node.output if t}
    owner: dict[int, str] = {}
    for block in blocks.blocks:
        if block.output not in producer:
            raise DeployInputError(
                f"block {block.name}: no node of {onnx_path.name} makes tensor {block.output}; "
                "the blocks file describes another ONNX file"
            )
        stack, seen, reached = [block.output], set(), False
        while stack:
            tensor = stack.pop()
            if tensor == block.input:
                reached = True
                continue
            if tensor in seen or tensor not in producer:
                continue
            seen.add(tensor)
            owner.setdefault(producer[tensor], block.name)
            stack.extend(graph.node[producer[tensor]].input)
        if not reached:
            raise DeployInputError(
                f"block {block.name}: tensor {block.input} is not upstream of {block.output} "
                f"in {onnx_path.name}; the blocks file describes another ONNX file"
            )
    by_node = {node.name: owner.get(i) for i, node in enumerate(graph.node) if node.name}
    by_tensor = {tensor: owner.get(i) for tensor, i in producer.items()}
    return by_node, by_tensor


__all__ = [
    "LayerInfo",
    "NodeProfile",
    "NodeTime",
    "block_times",
    "format_node_times",
    "onnxruntime_node_times",
    "parse_onnxruntime_profile",
    "parse_trtexec_layer_info",
    "parse_trtexec_profile",
    "read_trtexec_node_times",
    "top_nodes",
    "trtexec_node_times",
    "trtexec_profile_args",
]
