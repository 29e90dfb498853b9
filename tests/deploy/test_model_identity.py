"""Results name a model by what it is, not by its file name: the variant and spec hash that
`compressor export` writes into the ONNX metadata, else the file's SHA-256. A run's files
are all called model.onnx; a report of them must still show each model once, and say so when
the same one was measured twice."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from deploy.cli import main
from deploy.errors import DeployInputError
from deploy.files import file_sha256
from deploy.onnx_info import model_identity
from deploy.records import ModelIdentity
from deploy.results.files import read_results
from tests.deploy.conftest import build_classifier

FAST = ["--warmup", "1", "--iterations", "5", "--threads", "1", "--repeats", "1"]


def exported(path: Path, variant: str, spec: str, *, channels: int = 4) -> Path:
    """A classifier with the metadata `compressor export` writes (variant, spec_sha256)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    build_classifier(path, channels=channels)
    proto = onnx.load(path)
    onnx.helper.set_model_props(proto, {"variant": variant, "spec_sha256": spec * 64})
    onnx.save(proto, path)
    return path


def bench(model: Path, output: Path, *extra: str) -> None:
    assert main(["bench", str(model), *FAST, "--output", str(output), *extra]) == 0


def report(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[list[str], str]:
    """The report's table rows (model column) and what `deploy report` said on stderr."""
    capsys.readouterr()
    out = Path(args[args.index("--out") + 1])
    assert main(["report", *args]) == 0
    err = capsys.readouterr().err
    markdown = (out / "report.md").read_text()
    table = markdown.split("## Devices")[0]
    rows = [line.split(" | ")[0].removeprefix("| ") for line in table.splitlines()[6:] if line]
    return rows, err


def test_a_runs_model_onnx_files_are_named_by_their_variant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    bench(exported(run / "dense" / "model.onnx", "dense", "a", channels=8), tmp_path / "r/d.json")
    bench(exported(run / "shrunk" / "model.onnx", "shrunk", "b"), tmp_path / "r/s.json")
    (record,) = read_results(tmp_path / "r/s.json").records
    assert record.model == "shrunk"
    sha = record.identity.file_sha256
    assert record.identity == ModelIdentity(
        variant="shrunk", spec_sha256="b" * 64, file_sha256=sha, source_sha256=sha
    )
    rows, err = report(capsys, str(tmp_path / "r"), "--out", str(tmp_path / "rep"))
    assert rows == ["dense (baseline)", "shrunk"]
    assert err == ""
    markdown = (tmp_path / "rep" / "report.md").read_text()
    assert f"- shrunk: variant shrunk, spec sha256 {'b' * 16}, file sha256 " in markdown


def test_two_models_of_one_name_stay_two_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two runs' shrunk models (different specs), both runs/*/shrunk/model.onnx."""
    first = exported(tmp_path / "run1" / "shrunk" / "model.onnx", "shrunk", "1", channels=2)
    second = exported(tmp_path / "run2" / "shrunk" / "model.onnx", "shrunk", "2", channels=6)
    bench(first, tmp_path / "r" / "one.json")
    bench(second, tmp_path / "r" / "two.json")
    rows, err = report(capsys, str(tmp_path / "r"), "--out", str(tmp_path / "rep"))
    assert sorted(rows) == ["shrunk [spec 11111111]", "shrunk [spec 22222222]"]
    assert "measured twice" not in err
    capsys.readouterr()
    args = ["report", str(tmp_path / "r"), "--out", str(tmp_path / "rep"), "--baseline", "shrunk"]
    assert main(args) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        "deploy: error: --baseline 'shrunk' names several different models; pass one of "
        "['shrunk [spec 11111111]', 'shrunk [spec 22222222]']"
    )
    assert main([*args[:-1], "shrunk [spec 11111111]"]) == 0


def test_foreign_files_of_one_name_are_told_apart_by_their_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a = build_classifier(tmp_path / "a" / "model.onnx", channels=2)
    b = build_classifier(tmp_path / "b" / "model.onnx", channels=6)
    bench(a, tmp_path / "r" / "a.json")
    bench(b, tmp_path / "r" / "b.json")
    (record,) = read_results(tmp_path / "r" / "a.json").records
    assert record.model == "model"  # no metadata of ours: the file stem
    assert record.identity.spec_sha256 is None and len(record.identity.file_sha256) == 64
    rows, _ = report(capsys, str(tmp_path / "r"), "--out", str(tmp_path / "rep"))
    files = (tmp_path / "r" / "a.json", tmp_path / "r" / "b.json")
    hashes = {read_results(path).records[0].identity.file_sha256 for path in files}
    assert sorted(rows) == sorted(f"model [sha256 {h[:8]}]" for h in hashes)


def test_the_same_model_measured_twice_is_said_and_the_newer_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = exported(tmp_path / "dense" / "model.onnx", "dense", "c")
    old, new = tmp_path / "r" / "old.json", tmp_path / "r" / "new.json"
    bench(model, old)
    bench(model, new)
    document = json.loads(old.read_text())
    document["created"] = "2000-01-01T00:00:00Z"  # measured long before new.json
    old.write_text(json.dumps(document))
    rows, err = report(capsys, str(tmp_path / "r"), "--out", str(tmp_path / "rep"))
    assert rows == ["dense (baseline)"]
    (line,) = err.splitlines()
    sha = read_results(new).records[0].identity.file_sha256
    assert line == (
        f"deploy: note: dense on onnxruntime fp32 batch 1 (fingerprint "
        f"{json.loads(new.read_text())['fingerprint']['fingerprint_id']}) was measured twice, "
        f"in {new} and {old} (the same file, sha256 {sha[:8]}): kept the newer, {new}; "
        f"{old} is not in the table"
    )
    assert line.removeprefix("deploy: note: ") in (tmp_path / "rep" / "report.md").read_text()


def test_a_name_given_with_name_keeps_the_identity(tmp_path: Path) -> None:
    model = exported(tmp_path / "model.onnx", "ticket", "d")
    bench(model, tmp_path / "r.json", "--name", "my-ticket")
    (record,) = read_results(tmp_path / "r.json").records
    assert record.model == "my-ticket"
    assert (record.identity.variant, record.identity.spec_sha256) == ("ticket", "d" * 64)


def test_a_malformed_identity_in_a_result_file_is_named(tmp_path: Path) -> None:
    model = build_classifier(tmp_path / "m.onnx")
    bench(model, tmp_path / "r.json")
    document = json.loads((tmp_path / "r.json").read_text())
    document["records"][0]["details"]["model_identity"] = {"variant": ["not", "text"]}
    (tmp_path / "r.json").write_text(json.dumps(document))
    with pytest.raises(DeployInputError, match=r"records\[0\]: model identity 'variant' must"):
        read_results(tmp_path / "r.json")


def test_metadata_that_cannot_name_a_model_is_ignored(tmp_path: Path) -> None:
    """A variant with a line break (a hostile or broken file) falls back to the file stem."""
    model = exported(tmp_path / "odd.onnx", "two\nlines", "e")
    bench(model, tmp_path / "r.json")
    (record,) = read_results(tmp_path / "r.json").records
    assert record.model == "odd" and record.identity.variant is None
    assert record.identity.spec_sha256 == "e" * 64


def test_two_trainings_of_one_spec_stay_two_rows_and_precisions_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two runs of the same recipe with other weights (same variant and spec) are two models;
    an INT8 sibling written from one of them (metadata source_onnx_sha256) is that model."""
    first = exported(tmp_path / "run1" / "dense" / "model.onnx", "dense", "f", channels=2)
    second = exported(tmp_path / "run2" / "dense" / "model.onnx", "dense", "f", channels=6)
    first_sha, second_sha = file_sha256(first), file_sha256(second)
    sibling = tmp_path / "run1" / "dense" / "model.int8.onnx"
    proto = onnx.load(first)
    onnx.helper.set_model_props(
        proto, {"variant": "dense", "spec_sha256": "f" * 64, "source_onnx_sha256": first_sha}
    )
    onnx.save(proto, sibling)  # the metadata an INT8 sibling carries
    assert model_identity(sibling).key == model_identity(first).key
    assert model_identity(second).key != model_identity(first).key
    bench(first, tmp_path / "r" / "one.json")
    bench(second, tmp_path / "r" / "two.json")
    rows, err = report(capsys, str(tmp_path / "r"), "--out", str(tmp_path / "rep"))
    expected = [f"dense [spec ffffffff, onnx {sha[:8]}]" for sha in (first_sha, second_sha)]
    assert sorted(rows) == sorted(expected), rows
    assert "measured twice" not in err
