"""Per-node times: onnxruntime's profiler on real ONNX files, trtexec's exported profile and
layer information, per-block sums, `deploy bench --profile` and the report's section.

The trtexec files under data/trtexec_profile were written to the formats of NVIDIA's
sampleReporting.cpp (exportJSONProfile) and IEngineInspector's JSON, laid out as the files
recorded in NVIDIA's trt-engine-explorer tests; data/trtexec_profile/README.md says how.
"""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploy.cli import main
from deploy.errors import DeployInputError
from deploy.files import file_sha256
from deploy.profiling.blocks_file import BlockEntry, BlocksFile, write_blocks
from deploy.profiling.node_times import (
    block_times,
    format_node_times,
    onnxruntime_node_times,
    parse_onnxruntime_profile,
    parse_trtexec_layer_info,
    parse_trtexec_profile,
    read_trtexec_node_times,
    top_nodes,
    trtexec_node_times,
    trtexec_profile_args,
)
from deploy.results.node_profile import NodeProfile, read_node_profiles, write_node_profiles
from deploy.results.report import build_report

DATA = Path(__file__).parent / "data" / "trtexec_profile"
PROFILE = DATA / "resblocks_trt10.3.profile.json"
LAYERS = DATA / "resblocks_trt10.3.layers.json"
LAYER_NAMES = DATA / "resblocks_trt10.3.layer_names.json"
FAST = ["--warmup", "1", "--threads", "1", "--repeats", "1"]


def _conv(name: str, source: str, target: str, cin: int, cout: int, rng) -> tuple:
    weight = numpy_helper.from_array(
        (0.1 * rng.standard_normal((cout, cin, 3, 3))).astype(np.float32), f"{name}.w"
    )
    node = helper.make_node("Conv", [source, weight.name], [target], name=name, pads=[1, 1, 1, 1])
    return node, weight


def conv_relu_add(path: Path, channels: int = 16, size: int = 32) -> Path:
    """x -> Conv -> Relu, + x: three named nodes."""
    node, weight = _conv("conv", "x", "c", channels, channels, np.random.default_rng(0))
    nodes = [
        node,
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Add", ["r", "x"], ["y"], name="add"),
    ]
    shape = ["N", channels, size, size]
    graph = helper.make_graph(
        nodes,
        "conv_relu_add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def resblocks(folder: Path, channels: int = 8, size: int = 16) -> Path:
    """stem conv+relu, two residual blocks b0 and b1 (conv1, relu1, conv2, add, relu2), then
    head/pool and head/flatten; blocks.json beside it lists b0 and b1 by their tensors. The
    names are those of the trtexec fixtures."""
    rng = np.random.default_rng(1)
    nodes, weights = [], []
    node, weight = _conv("stem/conv", "x", "stem_c", 3, channels, rng)
    nodes += [node, helper.make_node("Relu", ["stem_c"], ["stem_out"], name="stem/relu")]
    weights.append(weight)
    source = "stem_out"
    for b in ("b0", "b1"):
        conv1, w1 = _conv(f"{b}/conv1", source, f"{b}_c1", channels, channels, rng)
        conv2, w2 = _conv(f"{b}/conv2", f"{b}_r1", f"{b}_c2", channels, channels, rng)
        nodes += [
            conv1,
            helper.make_node("Relu", [f"{b}_c1"], [f"{b}_r1"], name=f"{b}/relu1"),
            conv2,
            helper.make_node("Add", [f"{b}_c2", source], [f"{b}_a"], name=f"{b}/add"),
            helper.make_node("Relu", [f"{b}_a"], [f"{b}_out"], name=f"{b}/relu2"),
        ]
        weights += [w1, w2]
        source = f"{b}_out"
    nodes += [
        helper.make_node("GlobalAveragePool", [source], ["pool"], name="head/pool"),
        helper.make_node("Flatten", ["pool"], ["logits"], name="head/flatten"),
    ]
    graph = helper.make_graph(
        nodes,
        "resblocks",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", channels])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    path = folder / "model.onnx"
    onnx.save(model, path)
    entries = tuple(
        BlockEntry(name=b, input=i, output=o, stage=0, index=n, macs=1, params=1)
        for n, (b, i, o) in enumerate((("b0", "stem_out", "b0_out"), ("b1", "b0_out", "b1_out")))
    )
    write_blocks(folder / "blocks.json", BlocksFile(file_sha256(path), "x", entries))
    return path


@pytest.fixture(scope="module")
def resblocks_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return resblocks(tmp_path_factory.mktemp("resblocks"))


# --- onnxruntime ---------------------------------------------------------------------------


def test_onnxruntime_profiles_every_node_of_the_graph_as_written(tmp_path: Path) -> None:
    model = conv_relu_add(tmp_path / "tiny.onnx")
    profile = onnxruntime_node_times(model, 2, 1, iterations=10, optimize=False)
    assert [(n.name, n.op_type) for n in profile.nodes] == [
        ("conv", "Conv"),
        ("relu", "Relu"),
        ("add", "Add"),
    ]
    assert all(n.mean_ms > 0 and n.count == 10 for n in profile.nodes)
    assert sum(n.share for n in profile.nodes) == pytest.approx(1.0)
    assert profile.total_ms == pytest.approx(sum(n.mean_ms for n in profile.nodes))
    assert (profile.backend, profile.precision, profile.batch) == ("onnxruntime", "fp32", 2)
    assert profile.run_ms is not None and profile.run_ms > 0
    assert top_nodes(profile, 1)[0].name == "conv"  # a 3x3 conv outweighs relu and add


def test_onnxruntime_profiles_the_optimized_graph_the_benchmark_times(tmp_path: Path) -> None:
    model = conv_relu_add(tmp_path / "tiny.onnx")
    profile = onnxruntime_node_times(model, 1, 1, iterations=5)
    assert "Conv" in {n.op_type for n in profile.nodes}
    assert all(n.mean_ms >= 0 for n in profile.nodes) and profile.total_ms > 0
    assert sum(n.share for n in profile.nodes) == pytest.approx(1.0)


def _event(cat: str, name: str, ts: int, dur: int, op: str | None = None) -> dict:
    event = {"cat": cat, "pid": 1, "tid": 1, "ts": ts, "dur": dur, "ph": "X", "name": name}
    if op is not None:
        event["args"] = {"op_name": op}
    return event


def test_the_warm_up_call_is_left_out_of_the_times() -> None:
    trace = [
        _event("Session", "session_initialization", 0, 50),
        _event("Node", "conv_kernel_time", 100, 900, "Conv"),  # warm-up: slow
        _event("Session", "model_run", 99, 905),
        _event("Node", "conv_kernel_time", 2000, 10, "Conv"),
        _event("Session", "model_run", 1999, 12),
        _event("Node", "conv_kernel_time", 3000, 30, "Conv"),
        _event("Session", "model_run", 2999, 32),
    ]
    nodes, total, run_ms = parse_onnxruntime_profile(json.dumps(trace), "trace.json")
    assert [(n.name, n.mean_ms, n.median_ms, n.count) for n in nodes] == [("conv", 0.02, 0.02, 2)]
    assert total == pytest.approx(0.02) and run_ms == pytest.approx(0.022)


@pytest.mark.parametrize(
    "text",
    ['[{"cat": "Node", "name": "conv_kernel_time", "ts": 1, "du', "{}", "[]"],
    ids=["truncated", "not-a-list", "no-nodes"],
)
def test_a_bad_onnxruntime_trace_is_one_line_naming_it(text: str) -> None:
    with pytest.raises(DeployInputError, match="trace.json") as caught:
        parse_onnxruntime_profile(text, "trace.json")
    assert "\n" not in str(caught.value)


# --- trtexec -------------------------------------------------------------------------------


def test_trtexec_profile_layers_and_their_times() -> None:
    layers = parse_trtexec_profile(PROFILE.read_text(), PROFILE)
    names = [layer.name for layer in layers]
    assert names[1:3] == ["stem/conv + stem/relu", "b0/conv1 + b0/relu1"]
    assert "head/flatten" not in names  # it took no time, as trtexec's printed profile omits
    conv = layers[2]
    assert (conv.mean_ms, conv.median_ms, conv.count) == (0.0160254, 0.015936, 1000)
    assert sum(layer.share for layer in layers) == pytest.approx(1.0)
    # trtexec's own percentages agree with the shares (the dropped layer took nothing)
    records = json.loads(PROFILE.read_text())[1:]
    assert conv.share * 100 == pytest.approx(records[2]["percentage"], rel=1e-4)


def test_trtexec_layer_information_detailed_and_names_only() -> None:
    detailed = parse_trtexec_layer_info(LAYERS.read_text(), LAYERS)
    fused = detailed["b0/conv2 + b0/add + b0/relu2"]
    assert fused.layer_type == "Convolution"
    assert fused.onnx_nodes == ("b0/conv2", "b0/add", "b0/relu2")
    assert detailed["head/flatten"].layer_type == "NoOp"
    reformat = detailed["Reformatting CopyNode for Input Tensor 0 to stem/conv + stem/relu"]
    assert reformat.onnx_nodes == ()
    names_only = parse_trtexec_layer_info(LAYER_NAMES.read_text(), LAYER_NAMES)
    assert list(names_only) == list(detailed)
    assert {info.layer_type for info in names_only.values()} == {""}


def test_the_two_trtexec_files_make_one_profile() -> None:
    profile = read_trtexec_node_times(PROFILE, LAYERS, model="resblocks", precision="fp32", batch=1)
    assert (profile.backend, profile.source) == ("trtexec", "trtexec --exportProfile")
    assert top_nodes(profile, 1)[0].name == "b0/conv2 + b0/add + b0/relu2"
    assert {n.op_type for n in profile.nodes} == {"Reformat", "Convolution", "Pooling"}
    table = format_node_times(profile, k=3)
    lines = table.splitlines()
    assert lines[0].startswith("resblocks on trtexec fp32, batch 1:")
    assert "b0/conv2 + b0/add + b0/relu2" in lines[2] and "20.3%" in lines[2]
    assert lines[-1].startswith("  ... 4 more nodes:")


@pytest.mark.parametrize("which", ["profile", "layers"])
def test_a_truncated_trtexec_file_is_one_line_naming_it(tmp_path: Path, which: str) -> None:
    source = PROFILE if which == "profile" else LAYERS
    cut = tmp_path / source.name
    text = source.read_text()
    cut.write_text(text[: len(text) // 2])
    paths = (cut, LAYERS) if which == "profile" else (PROFILE, cut)
    with pytest.raises(DeployInputError, match="truncated") as caught:
        read_trtexec_node_times(*paths, model="m", precision="fp32", batch=1)
    assert str(cut) in str(caught.value) and "\n" not in str(caught.value)


def test_a_file_that_is_no_trtexec_profile_is_refused(tmp_path: Path) -> None:
    times = tmp_path / "times.json"  # --exportTimes, passed by mistake
    times.write_text('[\n  { "startEnqMs" : 1.2, "endEnqMs" : 1.3 }\n]\n')
    with pytest.raises(DeployInputError, match=r"not a trtexec --exportProfile file"):
        read_trtexec_node_times(times, model="m", precision="fp32", batch=1)
    with pytest.raises(DeployInputError, match='no "Layers" list'):
        parse_trtexec_layer_info("[]", "layers.json")


def test_profile_arguments_per_tensorrt_version() -> None:
    old = trtexec_profile_args("p.json", "l.json", trt_version="10.3")
    assert old == [
        "--exportProfile=p.json",
        "--exportLayerInfo=l.json",
        "--profilingVerbosity=detailed",
        "--separateProfileRun",
    ]
    assert "--separateProfileRun" not in trtexec_profile_args("p", "l", trt_version="11.1")
    assert "--separateProfileRun" not in trtexec_profile_args("p", "l", separate_run=False)


def test_trtexec_profiles_in_a_run_of_its_own(resblocks_onnx: Path, tmp_path: Path) -> None:
    """A stand-in trtexec writes the recorded files where it is told to."""
    script = tmp_path / "trtexec"
    script.write_text(
        f"#!{sys.executable}\n"
        "import shutil, sys\n"
        "args = dict(a.split('=', 1) for a in sys.argv[1:] if '=' in a)\n"
        f"shutil.copy({str(PROFILE)!r}, args['--exportProfile'])\n"
        f"shutil.copy({str(LAYERS)!r}, args['--exportLayerInfo'])\n"
        f"open({str(tmp_path / 'argv')!r}, 'w').write(' '.join(sys.argv[1:]))\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    profile = trtexec_node_times(resblocks_onnx, 1, trtexec=script, trt_version="10.3.0")
    argv = (tmp_path / "argv").read_text().split()
    assert "--profilingVerbosity=detailed" in argv and "--separateProfileRun" not in argv
    assert f"--onnx={resblocks_onnx}" in argv and "--duration=0" in argv
    assert (profile.model, profile.precision, len(profile.nodes)) == ("model", "fp32", 7)


# --- blocks --------------------------------------------------------------------------------


def test_block_times_from_trtexec_metadata_and_from_names(resblocks_onnx: Path) -> None:
    blocks = resblocks_onnx.with_name("blocks.json")
    expected = {"b0": 0.0160254 + 0.0182894, "b1": 0.0157061 + 0.0179916}
    for layers in (LAYERS, LAYER_NAMES):  # metadata, then the fused names alone
        profile = read_trtexec_node_times(PROFILE, layers, model="m", precision="fp32", batch=1)
        assert block_times(profile, blocks, resblocks_onnx) == pytest.approx(expected)


def test_block_times_from_onnxruntime_add_up_the_blocks_nodes(resblocks_onnx: Path) -> None:
    blocks = resblocks_onnx.with_name("blocks.json")
    plain = onnxruntime_node_times(resblocks_onnx, 1, 1, iterations=5, optimize=False)
    times = block_times(plain, blocks, resblocks_onnx)
    for block in ("b0", "b1"):
        inside = [n.mean_ms for n in plain.nodes if n.name.startswith(f"{block}/")]
        assert len(inside) == 5 and times[block] == pytest.approx(sum(inside))
    fused = onnxruntime_node_times(resblocks_onnx, 1, 1, iterations=5)  # NCHWc nodes
    times = block_times(fused, blocks, resblocks_onnx)
    assert times["b0"] > 0 and times["b1"] > 0
    assert sum(times.values()) <= fused.total_ms


def test_a_blocks_file_of_another_model_is_refused(resblocks_onnx: Path, tmp_path: Path) -> None:
    other = conv_relu_add(tmp_path / "other.onnx")
    profile = read_trtexec_node_times(PROFILE, model="m", precision="fp32", batch=1)
    with pytest.raises(DeployInputError, match="describes another ONNX file"):
        block_times(profile, resblocks_onnx.with_name("blocks.json"), other)


# --- the profile file, the command line and the report ---------------------------------------


def test_profile_files_round_trip_and_refuse_damage(tmp_path: Path) -> None:
    profile = read_trtexec_node_times(
        PROFILE, LAYERS, model="m", precision="fp32", batch=4, model_path="m.onnx"
    )
    path = write_node_profiles(tmp_path / "run.profile.json", [profile])
    assert read_node_profiles(path) == [profile]
    assert NodeProfile.from_dict(json.loads(json.dumps(profile.to_dict()))) == profile
    text = path.read_text()
    path.write_text(text[: len(text) // 3])
    with pytest.raises(DeployInputError, match="run.profile.json") as caught:
        read_node_profiles(path)
    assert "\n" not in str(caught.value)


def test_bench_profile_writes_the_profile_and_prints_the_table(
    resblocks_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "run.json"
    args = ["bench", str(resblocks_onnx), "--profile", "--iterations", "20", "--output"]
    code = main([*args, str(output), *FAST, "--batch", "1,2", "--name", "dense"])
    stdout = capsys.readouterr().out
    assert code == 0
    profiles = read_node_profiles(tmp_path / "run.profile.json")
    assert [(p.model, p.batch, p.backend) for p in profiles] == [
        ("dense", 1, "onnxruntime"),
        ("dense", 2, "onnxruntime"),
    ]
    assert all(p.nodes[0].count == 20 for p in profiles)
    assert all(set(p.block_ms or {}) == {"b0", "b1"} for p in profiles)  # blocks.json beside
    assert "dense on onnxruntime fp32, batch 1:" in stdout and "mean ms" in stdout
    assert f"per-node times written to {tmp_path / 'run.profile.json'}" in stdout

    report = build_report([tmp_path], tmp_path / "report", baseline=None)
    markdown = report.markdown.read_text()
    assert "## Where the time goes" in markdown
    assert "dense on onnxruntime fp32, batch 2:" in markdown and "removable blocks" in markdown
    assert not any("profile.json" in note for note in report.notes)
    assert "Where the time goes" in report.html.read_text()

    # Timed again without --profile: the profile left beside is of the earlier run.
    assert main(["bench", str(resblocks_onnx), "--iterations", "5", "--output", str(output)]) == 0
    report = build_report([tmp_path], tmp_path / "report", baseline=None)
    assert "Where the time goes" not in report.markdown.read_text()
    assert any("another version of its result file" in note for note in report.notes)


def test_bench_trtexec_profile_reads_what_a_second_run_exports(
    resblocks_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stand-in trtexec: --help prints the banner, the timed run prints a recorded log and
    its times, the profiling run copies the recorded profile and layer information."""
    timed = Path(__file__).parent / "data" / "trtexec" / "trt10.3_l4_int8"
    script = tmp_path / "trtexec"
    script.write_text(
        f"#!{sys.executable}\n"
        "import shutil, sys\n"
        "args = dict(a.split('=', 1) for a in sys.argv[1:] if '=' in a)\n"
        "if '--help' in sys.argv:\n"
        "    print('&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec --help')\n"
        "elif '--exportTimes' in args:\n"
        f"    print(open({str(timed) + '.log'!r}).read())\n"
        f"    shutil.copy({str(timed) + '.times.json'!r}, args['--exportTimes'])\n"
        "else:\n"
        f"    shutil.copy({str(PROFILE)!r}, args['--exportProfile'])\n"
        f"    shutil.copy({str(LAYERS)!r}, args['--exportLayerInfo'])\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    output = tmp_path / "trt.json"
    code = main(
        ["bench", str(resblocks_onnx), "--backend", "trtexec", "--trtexec", str(script)]
        + ["--profile", "--output", str(output), "--power", "none"]
    )
    stdout = capsys.readouterr().out
    assert code == 0
    (profile,) = read_node_profiles(tmp_path / "trt.profile.json")
    assert (profile.backend, profile.batch, profile.source) == (
        "trtexec",
        1,
        "trtexec --exportProfile",
    )
    assert profile.block_ms == pytest.approx({"b0": 0.0343148, "b1": 0.0336977})
    assert "model on trtexec fp32, batch 1:" in stdout


@pytest.mark.parametrize("backend", ["torch", "tensorrt"])
def test_profile_names_the_backends_that_profile(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model.pt2"
    model.write_bytes(b"not read")
    code = main(
        [
            "bench",
            str(model),
            "--backend",
            backend,
            "--profile",
            "--output",
            str(tmp_path / "o.json"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0
    assert err.startswith("deploy: error: --profile:") and "onnxruntime or trtexec" in err
