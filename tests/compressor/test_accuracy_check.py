"""The accuracy check: a collapsed variant's speed-up is never presented as a win, the run
still writes every file, and `compressor run` exits 3 naming the variants and why."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from compressor.cli import EXIT_NOT_COMPARABLE, main
from compressor.errors import ConfigError
from compressor.recipe.sections import Recipe, recipe_from_dict
from compressor.workflows.accuracy_check import mark_comparable_
from compressor.workflows.report import write_report
from tests.compressor.test_pipeline_cli import write_recipe


def _latency(p50: float) -> list[dict]:
    fields = ("mean_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms")
    return [
        {"backend": "onnxruntime", "device": "cpu", "precision": "fp32", "batch": 1}
        | dict.fromkeys(fields, p50)
        | {"std_ms": 0.01, "throughput_ips": 1000 / p50}
    ]


def _report(dense: float, ticket: float, shrunk: float) -> dict:
    """A report as the pipeline builds it, with the accuracies given."""
    variants = []
    for name, accuracy, p50 in (("dense", dense, 2.0), ("ticket", ticket, 1.0),
                                ("shrunk", shrunk, 0.4)):  # fmt: skip
        variants.append(
            {"name": name, "accuracy": accuracy, "val_accuracy": accuracy, "params": 1000,
             "macs": 10000, "removed_blocks": [] if name == "dense" else ["layer1.0"],
             "epoch_seconds": 1.0, "parity_max_abs_diff": 1e-6, "latency": _latency(p50)}
        )  # fmt: skip
    speedups = []
    for v in variants[1:]:
        speedups += [
            {"variant": v["name"], "backend": "onnxruntime", "device": "cpu",
             "precision": "fp32", "batch": 1,
             "latency_speedup_p50": 2.0 / v["latency"][0]["p50_ms"]},
            {"variant": v["name"], "epoch_time_speedup": 1.5,
             "accuracy_delta": v["accuracy"] - dense},
        ]  # fmt: skip
    return {
        "recipe": Recipe().to_dict(),
        "variants": variants,
        "speedups": speedups,
        "environment": {"cpu_model": "test CPU", "threads": 2, "fingerprint_id": "abc"},
    }


def test_a_variant_far_below_dense_is_not_comparable_in_every_file(tmp_path: Path) -> None:
    report = _report(0.94, 0.92, 0.79)
    failed = mark_comparable_(report, num_classes=10, max_drop_points=5.0)
    assert list(failed) == ["shrunk"]
    assert "15.00 points below dense (79.00% vs 94.00%" in failed["shrunk"]
    json_path, md_path, plot_path = write_report(report, tmp_path)
    saved = json.loads(json_path.read_text())
    flags = {v["name"]: v["comparable"] for v in saved["variants"]}
    assert flags == {"dense": True, "ticket": True, "shrunk": False}
    assert {s["variant"] for s in saved["speedups"] if not s["comparable"]} == {"shrunk"}
    assert saved["accuracy_check"]["not_comparable"] == ["shrunk"]
    md = md_path.read_text()
    assert "## Accuracy check: NOT COMPARABLE" in md and "**shrunk**: 15.00 points" in md
    shrunk_lines = [line for line in md.splitlines() if "shrunk" in line]
    assert not any("x faster" in line or "5.00x" in line for line in shrunk_lines)
    assert "| shrunk | 0.7900 |" in md and "| not comparable |" in md
    assert "- ticket: onnxruntime cpu fp32 batch 1: 2.00x" in md  # a real win stays one
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_dense_baseline_at_chance_makes_every_speed_up_not_comparable() -> None:
    report = _report(0.1028, 0.95, 0.95)
    failed = mark_comparable_(report, num_classes=10, max_drop_points=5.0)
    assert list(failed) == ["dense", "ticket", "shrunk"]
    assert (
        failed["dense"] == "at chance: 10.28% test accuracy, within 2 points of 10.00% (10 classes)"
    )
    assert failed["ticket"] == "the dense baseline is at chance"
    assert not any(s["comparable"] for s in report["speedups"])


def test_within_two_points_of_chance_is_at_chance_and_the_drop_is_in_points() -> None:
    edge = mark_comparable_(_report(0.60, 0.12, 0.1225), num_classes=10, max_drop_points=100)
    assert list(edge) == ["ticket"]  # 12.00% is within 2 points of 10%; 12.25% is not
    ok = mark_comparable_(_report(0.90, 0.851, 0.90), num_classes=10, max_drop_points=5)
    assert ok == {}  # 4.9 points below dense: within 5 points


def test_an_old_report_without_the_check_still_renders(tmp_path: Path) -> None:
    md = write_report(_report(0.94, 0.92, 0.79), tmp_path)[1].read_text()
    assert "NOT COMPARABLE" not in md and "- shrunk: onnxruntime cpu fp32 batch 1: 5.00x" in md


@pytest.mark.parametrize("value", [-1, 101, True, "5%", None])
def test_report_max_accuracy_drop_is_validated(value: object) -> None:
    with pytest.raises(ConfigError, match=r"report\.max_accuracy_drop: must be a number"):
        recipe_from_dict({"report": {"max_accuracy_drop": value}})


def test_the_report_section_is_left_out_of_recorded_recipes_at_its_default() -> None:
    assert "report" not in Recipe().to_dict()  # recipe.json of older runs compares equal
    with pytest.raises(ConfigError, match=r"report.*max_drop"):
        recipe_from_dict({"report": {"max_drop": 5}})
    changed = recipe_from_dict({"report": {"max_accuracy_drop": 2.5}})
    assert changed.to_dict()["report"] == {"max_accuracy_drop": 2.5}


def test_run_with_a_collapsed_baseline_writes_everything_and_exits_3(
    tmp_path: Path,
    capsys,  # noqa: ANN001
) -> None:
    """Weight decay 15 drives every weight to zero: one class for every image, a real
    collapse of the kind that used to be reported as "+0.00, 5.57x faster"."""
    train = {"epochs": 1, "batch_size": 64, "lr": 0.05, "momentum": 0.0, "nesterov": False,
             "weight_decay": 15.0, "progress": "none"}  # fmt: skip
    recipe = write_recipe(tmp_path, {"train": train}, blocks=1)
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out)]) == EXIT_NOT_COMPARABLE == 3
    captured = capsys.readouterr()
    message = captured.err.strip().splitlines()[-1]
    assert message.startswith("compressor: accuracy check: not comparable")
    assert "dense (at chance: 10.28% test accuracy" in message and "shrunk (" in message
    assert "NOT COMPARABLE" in captured.out  # the report is printed first, as always
    for name in ("report.json", "report.md", "accuracy_vs_latency.png"):
        assert (out / name).is_file()
    for variant in ("dense", "ticket", "shrunk"):
        assert (out / variant / "model.onnx").is_file()
        assert (out / variant / "model" / "spec.json").is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["accuracy_check"]["not_comparable"] == ["dense", "ticket", "shrunk"]
    assert all(s["comparable"] is False for s in report["speedups"])
    assert "x faster" not in (out / "report.md").read_text()


def test_resume_accepts_another_report_section(tmp_path: Path) -> None:
    """The check runs again on every resume, so its threshold may change; training's may not."""
    from compressor.workflows.pipeline import _check_out_dir

    (tmp_path / "recipe.json").write_text(json.dumps(Recipe().to_dict()))  # an older run's
    _check_out_dir(tmp_path, recipe_from_dict({"report": {"max_accuracy_drop": 50}}), True)
    default = Recipe()
    off = dataclasses.replace(default.train, bn_recalibration_batches=0)
    with pytest.raises(ConfigError, match=r"recipe differs.*\['train'\]"):
        _check_out_dir(tmp_path, dataclasses.replace(default, train=off), True)
