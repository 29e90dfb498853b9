"""The embedded default recipe end to end: INT8 QDQ and FP16 stay within a point of FP32.

This is the one test that trains ResNet-56 for the default 15 + 15 + 5 epochs (about two
minutes on 2 CPU cores); only the latency benchmark is cut short, since timings are the
benchmarks' business, not the tests'.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from compressor.recipe.sections import BenchSection, load_recipe
from compressor.workflows.pipeline import run_pipeline


@pytest.mark.slow
def test_default_recipe_int8_and_fp16_within_one_point_of_fp32(tmp_path: Path) -> None:
    recipe = load_recipe(None)
    recipe = dataclasses.replace(
        recipe,
        train=dataclasses.replace(recipe.train, progress="none"),
        bench=BenchSection(backends=("onnxruntime",), batch_sizes=(1,), warmup_iters=1,
                           iterations=3),
    )  # fmt: skip
    report = run_pipeline(recipe, tmp_path, log=lambda _: None).report
    for variant in report["variants"]:
        assert variant["accuracy"] > 0.95, variant["name"]
        assert abs(variant["int8"]["accuracy"] - variant["accuracy"]) <= 0.01, variant["name"]
        assert abs(variant["fp16"]["accuracy"] - variant["accuracy"]) <= 0.01, variant["name"]
        assert variant["int8"]["top1_agreement"] >= 0.98
        assert all(r["counts"]["error"] == 0 for r in variant["readiness"].values())
