"""The `compressor` command line as other tools behave: --version, `compressor bench` under
its own name, a description for every command, `lint --json`, and the parser a CLI
reference is generated from."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
from pathlib import Path

import onnx
import pytest

from compressor.cli import main
from compressor.cli_parser import build_parser
from deploy.cli_parser import build_parser as build_deploy_parser
from tests.deploy.conftest import build_classifier


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def flags(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def test_version_is_the_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out == f"compressor {importlib.metadata.version('layer-lottery-deploy')}\n"


def test_every_command_has_a_help_line_and_a_description() -> None:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {choice.dest: choice.help for choice in action._choices_actions}
    assert set(subcommands(parser)) >= {"run", "lint", "bundle", "bench"}
    for name, sub in subcommands(parser).items():
        assert helps.get(name), f"compressor {name} has no help line"
        assert sub.description, f"compressor {name} has no description"


def test_bench_help_says_compressor_bench(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: compressor bench ")
    assert "deploy bench" not in out.splitlines()[0]
    assert "--backend {onnxruntime,tensorrt,trtexec,torch}" in " ".join(out.split())


def test_bench_mistake_names_compressor_once(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        "compressor: error: the following arguments are required: model "
        "(see `compressor bench --help`)"
    )


def test_the_reference_parser_lists_every_bench_flag() -> None:
    """The docs hook reads compressor.cli_parser.build_parser(): its `bench` has every flag
    that `deploy bench` (which runs it) takes."""
    ours = subcommands(build_parser())["bench"]
    theirs = subcommands(build_deploy_parser())["bench"]
    assert ours.prog == "compressor bench"
    assert flags(ours) == flags(theirs)
    assert {"--backend", "--precision", "--power", "--data", "--output"} <= flags(ours)


def test_lint_json_parses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = build_classifier(tmp_path / "m.onnx")
    assert main(["lint", str(model), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)  # stdout is the object and nothing else
    assert document["schema"] == "compressor.lint/1"
    assert document["ok"] is True and document["trt_version"] == "10"
    assert set(document["counts"]) == {"error", "warning", "info"}
    assert isinstance(document["findings"], list)


def test_lint_json_with_errors_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = build_classifier(tmp_path / "m.onnx")
    proto = onnx.load(model)
    proto.graph.node[1].domain = "com.example"  # a custom op: TensorRT needs a plugin
    proto.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    onnx.save(proto, model)
    assert main(["lint", str(model), "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["ok"] is False and document["counts"]["error"] >= 1
    assert [f["code"] for f in document["findings"] if f["severity"] == "error"] == ["custom-op"]
