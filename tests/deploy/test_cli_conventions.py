"""The `deploy` command line as other tools behave: --version, one "deploy: error:" per
mistake, choices in --help, a description for every command, --json for scripts."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
from pathlib import Path

import pytest

from deploy import cli_parser
from deploy.cli import main
from deploy.cli_parser import build_parser, package_version

FAST = ["--warmup", "1", "--iterations", "5", "--threads", "1"]


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_version_is_the_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out == f"deploy {importlib.metadata.version('layer-lottery-deploy')}\n"


def test_version_from_a_source_tree_without_installation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(cli_parser.importlib.metadata, "version", not_installed)
    text = (Path(cli_parser.__file__).parents[1] / "pyproject.toml").read_text()
    version = re.search(r'^version = "(.+)"', text, re.MULTILINE).group(1)
    assert package_version() == f"{version} (source tree, not installed)"


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        ([], "deploy: error: the following arguments are required: COMMAND (see `deploy --help`)"),
        (
            ["bench"],
            "deploy: error: the following arguments are required: model "
            "(see `deploy bench --help`)",
        ),
        (["frobnicate"], "deploy: error: argument COMMAND: invalid choice: 'frobnicate'"),
        (["info", "--bogus"], "deploy: error: unrecognized arguments: --bogus"),
    ],
)
def test_usage_errors_name_the_program_once(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (printed,) = captured.err.splitlines()
    assert printed.startswith(line)
    assert printed.count("deploy:") == 1 and "error: deploy" not in printed


def test_every_command_has_a_help_line_and_a_description() -> None:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {choice.dest: choice.help for choice in action._choices_actions}
    for name, sub in subcommands(parser).items():
        assert helps.get(name), f"deploy {name} has no help line"
        assert sub.description, f"deploy {name} has no description"


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("bench", "--backend {onnxruntime,tensorrt,trtexec,torch}"),
        ("bench", "--precision {fp32,fp16,bf16,int8}"),
        ("bench", "--power {auto,nvml,tegrastats,none}"),
        ("bench", "--device {auto,cpu,cuda,cuda:N}"),
        ("build", "--precision {fp32,fp16,bf16,int8}"),
        ("profile-blocks", "--backend {onnxruntime,tensorrt,trtexec}"),
        ("profile-blocks", "--precision {fp32,fp16,bf16,int8}"),
        ("bench", "--cuda-buffers {auto,torch,cuda-python}"),
    ],
)
def test_help_shows_the_choices(
    command: str, shown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--help"]) == 0
    assert shown in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--backend", "tflite", "--backend 'tflite' is unknown; choose from onnxruntime, "),
        ("--precision", "fp8", "--precision: choose from fp32, fp16, bf16, int8, got 'fp8'"),
        ("--power", "watts", "--power: choose from auto, nvml, tegrastats, none, got 'watts'"),
        ("--cuda-buffers", "cupy", "--cuda-buffers: choose from auto, torch, cuda-python, "),
    ],
)
def test_a_bad_choice_is_one_line_of_our_own(
    flag: str,
    value: str,
    message: str,
    classifier: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["bench", str(classifier), *FAST, flag, value]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"deploy: error: {message}")
    assert not (tmp_path / "results").exists()  # refused before anything was timed


def test_info_json_is_the_fingerprint(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)  # stdout holds the object and nothing else
    assert document["schema"] == "deploy.info/1"
    assert sorted(document) == ["fingerprint", "schema", "summary", "warnings"]
    assert document["fingerprint"]["fingerprint_id"] in document["summary"]
    assert isinstance(document["warnings"], list)


def test_compare_json_parses_and_matches_the_text(
    onnx_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    for path in (old, new):
        bench = ["bench", str(onnx_models["dense"]), *FAST, "--batch", "1,2"]
        assert main([*bench, "--output", str(path)]) == 0
    capsys.readouterr()
    assert main(["compare", str(old), str(new), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["schema"] == "deploy.compare/1"
    assert document["baseline"]["path"] == str(old) and document["new"]["path"] == str(new)
    assert document["cross_device"] is False
    assert [(p["model"], p["backend"], p["batch"]) for p in document["pairs"]] == [
        ("dense", "onnxruntime", 1),
        ("dense", "onnxruntime", 2),
    ]
    pair = document["pairs"][0]
    assert pair["speedup"] == pytest.approx(
        pair["baseline_figures"]["p50_ms"] / pair["new_figures"]["p50_ms"]
    )
    assert pair["new_figures"]["model_identity"]["file_sha256"]
    assert document["only_in_baseline"] == document["only_in_new"] == []
    assert main(["compare", str(old), str(new), "--json", "--batch", "2"]) == 0
    assert [p["batch"] for p in json.loads(capsys.readouterr().out)["pairs"]] == [2]


def test_json_errors_stay_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--json"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("deploy: error: results file not found: ")
