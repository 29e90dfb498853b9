"""Property-based hostile input: recipes, stored-model specs and CLI arguments.

Whatever a user (or a corrupted file) hands the compressor, the answer is either a result or
one of the project's own errors: never a raw exception, a traceback, a hang or a huge
allocation. Budgets are small so the file runs in seconds; each property states the
invariant a user relies on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from compressor.cli import build_parser, main
from compressor.errors import ConfigError, InputError
from compressor.models.spec import ModelSpec, build_model
from compressor.models.store import load_model, save_model
from compressor.recipe.sections import _SECTIONS, Recipe, load_recipe, recipe_from_dict

FAST = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --- values of every wrong type and range ------------------------------------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**13), max_value=10**13),
    st.sampled_from([0, 1, -1, 2, 10**12, 2**63, -(2**63)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 0.5, 1.0, -0.5, 1e300, float("nan"), float("inf")]),
    st.text(max_size=12),
    st.sampled_from(["", "digits", "imagefolder", "grasp", "cosine", "cpu", "std", "x:y"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
SECTION_FIELDS = {
    name: [f.name for f in dataclasses.fields(cls)] for name, cls in _SECTIONS.items()
}


@st.composite
def recipe_dicts(draw: st.DrawFn) -> object:
    """Mostly-plausible recipes: real section and field names, hostile values, a few typos."""
    if draw(st.integers(0, 19)) == 0:
        return draw(VALUES)  # not even a mapping
    out: dict[object, object] = {}
    for key in draw(st.lists(st.sampled_from(["version", "name", "seed"]), max_size=3)):
        out[key] = draw(SCALARS)
    for section in draw(st.lists(st.sampled_from(sorted(SECTION_FIELDS)), max_size=4)):
        if draw(st.integers(0, 9)) == 0:
            out[section] = draw(SCALARS)
            continue
        fields = SECTION_FIELDS[section]
        keys = draw(st.lists(st.sampled_from(fields), max_size=4))
        body: dict[object, object] = {key: draw(VALUES) for key in keys}
        if draw(st.integers(0, 9)) == 0:
            body[draw(st.text(max_size=8))] = draw(SCALARS)  # an unknown key
        out[section] = body
    if draw(st.integers(0, 9)) == 0:
        out[draw(st.text(max_size=8))] = draw(SCALARS)
    return out


@FAST
@given(recipe_dicts())
def test_any_recipe_mapping_is_a_recipe_or_a_config_error(data: object) -> None:
    try:
        recipe = recipe_from_dict(data)  # type: ignore[arg-type]
    except (ConfigError, InputError) as exc:
        assert str(exc).strip()  # a message to print, not a blank line
        return
    assert isinstance(recipe, Recipe)


@FAST
@given(
    st.one_of(
        st.text(max_size=200).map(str.encode),
        recipe_dicts().map(lambda d: yaml.safe_dump(d, allow_unicode=True).encode()),
        recipe_dicts().map(lambda d: json.dumps(d, allow_nan=True).encode()),
        st.binary(max_size=64),  # not UTF-8 at all
    )
)
def test_any_recipe_file_is_a_recipe_or_a_config_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_bytes(content)
    try:
        recipe = load_recipe(path)
    except (ConfigError, InputError) as exc:
        assert str(exc).strip()
        return
    assert isinstance(recipe, Recipe)


# --- stored-model specs ------------------------------------------------------------------------

SIZES = ("attrs", "tensors")
HUGE_SIZES = st.sampled_from([0, 1, 3, -1, -(10**6), 10**6, 10**12, 2**62, 2**64])


@pytest.fixture(scope="module")
def stored_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pruned and shrunk resnet8: its spec has removed blocks and per-layer shapes."""
    from compressor.prune.layers import LayerPruneConfig, prune_at_init
    from compressor.prune.shrink import ShrinkConfig, shrink_channels_

    spec = ModelSpec(model="resnet8", kwargs={"num_classes": 3, "in_channels": 1, "width": 0.5})
    torch.manual_seed(0)
    images, labels = torch.randn(12, 1, 8, 8), torch.arange(12) % 3
    prune = LayerPruneConfig(criterion="snip", blocks=1)
    model, result = prune_at_init(build_model(spec), spec, images, labels, prune)
    shrink_channels_(model.eval(), images, ShrinkConfig(round_to=2), (images, labels))
    return save_model(model, result.spec.with_shapes(model), tmp_path_factory.mktemp("m") / "m")


def _mutate_spec(data: st.DataObject, document: dict) -> None:
    """One hostile edit of a real spec.json document, in place."""
    spec = document.get("spec")
    shapes = spec.get("shapes") if isinstance(spec, dict) else None
    if not isinstance(shapes, dict):  # an earlier edit broke the structure: the test already
        return
    layers = sorted(
        k
        for k, v in shapes.items()
        if isinstance(v, dict) and all(isinstance(v.get(t), dict) and v[t] for t in SIZES)
    )
    if not layers:
        return
    layer = data.draw(st.sampled_from(layers))
    edit = data.draw(st.integers(0, 8))
    if edit == 0:  # channel counts, negative or astronomical, in the architecture's kwargs
        key = data.draw(st.sampled_from(["num_classes", "in_channels", "width", "depth"]))
        if not isinstance(spec.get("kwargs"), dict):
            spec["kwargs"] = {}
        spec["kwargs"][key] = data.draw(st.one_of(HUGE_SIZES, SCALARS))
    elif edit == 1:
        attrs = shapes[layer]["attrs"]
        key = data.draw(st.sampled_from(sorted(attrs) or ["out_channels"]))
        attrs[key] = data.draw(st.one_of(HUGE_SIZES, SCALARS))
    elif edit == 2:
        tensors = shapes[layer]["tensors"]
        key = data.draw(st.sampled_from(sorted(tensors)))
        tensors[key] = data.draw(st.lists(HUGE_SIZES, max_size=5) | VALUES)
    elif edit == 3:  # an unknown layer kind, or another model
        spec["model"] = data.draw(st.sampled_from(["vgg16", "", "resnet56", "resnet8 "]) | SCALARS)
    elif edit == 4:
        spec["removed_blocks"] = data.draw(
            st.lists(st.sampled_from(["layer1.0", "layer2.0", "fc", "", "x" * 300])) | VALUES
        )
    elif edit == 5:  # a key of the document or of the spec goes missing
        where = data.draw(st.sampled_from([document, spec]))
        where.pop(data.draw(st.sampled_from(sorted(where))))
    elif edit == 6:
        where = data.draw(st.sampled_from([document, spec, shapes, shapes[layer]]))
        where[data.draw(st.sampled_from(sorted(where)) | st.text(max_size=6))] = data.draw(VALUES)
    elif edit == 7:
        shapes[data.draw(st.text(max_size=8))] = data.draw(VALUES)
    else:
        spec["factory"] = data.draw(st.sampled_from(["os:system", "x.py:build", "", ":"]))


@settings(FAST, max_examples=80)
@given(data=st.data())
def test_any_edited_spec_is_refused_in_one_line_before_any_big_allocation(
    stored_model: Path, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    import resource
    import shutil
    import time

    directory = tmp_path_factory.mktemp("edited")
    shutil.copy(stored_model / "weights.safetensors", directory / "weights.safetensors")
    document = json.loads((stored_model / "spec.json").read_text())
    for _ in range(data.draw(st.integers(1, 3))):
        _mutate_spec(data, document)
    text = json.dumps(document)
    if data.draw(st.integers(0, 5)) == 0:
        text = text[: data.draw(st.integers(0, len(text)))]  # truncated as well
    (directory / "spec.json").write_text(text)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    try:
        load_model(directory)
    except (InputError, ConfigError) as exc:
        assert "\n" not in str(exc) and str(exc)
    else:  # an edit that changed nothing the architecture depends on (e.g. info)
        pass
    assert time.perf_counter() - start < 20
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert grown_mib < 256, f"loading an edited spec raised the peak memory by {grown_mib} MiB"


# --- command lines -----------------------------------------------------------------------------

HEAVY = {"run", "lottery", "blocks", "prune", "train", "shrink", "export"}  # train with no recipe
FLAGS = ["--out", "--resume", "--plan", "--cifar10", "--eval-samples", "--trt-version",
         "--profile", "--bogus", "-h", "--"]  # fmt: skip
ARG_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=10
)


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory: pytest.TempPathFactory, stored_model: Path) -> dict[str, Path]:
    """Files a command line may name: recipes that fail validation, models good and broken."""
    root = tmp_path_factory.mktemp("cli")
    files = {
        "unknown_key.yaml": "trian: {epochs: 1}\n",
        "not_yaml.yaml": "model: [unclosed\n",
        "bad_value.yaml": "train: {epochs: 1, batch_size: -3}\n",
        "no_folder.yaml": f"data: {{name: imagefolder, root: {root / 'absent'}}}\n",
        "broken.onnx": "not a protobuf",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    (root / "binary.yaml").write_bytes(b"\xff\xfe\x00\x81")
    broken = root / "broken_model"
    broken.mkdir()
    (broken / "spec.json").write_text("{")
    (broken / "weights.safetensors").write_bytes(b"\x00" * 8)
    paths = {name: root / name for name in [*files, "binary.yaml", "broken_model"]}
    return {**paths, "model": stored_model, "missing": root / "missing", "dir": root}


@st.composite
def command_lines(draw: st.DrawFn, files: dict[str, Path]) -> list[str]:
    command = draw(st.sampled_from([*sorted(HEAVY), "bundle", "lint", "bench", "nope", "-h"]))
    token = st.one_of(
        st.sampled_from(FLAGS),
        st.sampled_from(sorted(str(p) for p in files.values())),
        st.sampled_from(["0", "-1", "1x1x8x8", "x:1,2", "8.6", "99999999999999999999"]),
        ARG_TEXT,
    )
    return [command, *draw(st.lists(token, max_size=6))]


def _would_train_for_real(argv: list[str]) -> bool:
    """No recipe given to a stage command means the embedded default: minutes of training."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            args = build_parser().parse_args(argv)
    except SystemExit:
        return False
    if args.command not in HEAVY or (args.command == "lottery" and args.plan):
        return False
    return args.recipe is None or os.path.isdir(args.recipe)


@settings(FAST, max_examples=120)
@given(data=st.data())
def test_any_command_line_ends_in_an_exit_code_and_at_most_one_error_line(
    cli_files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    data: st.DataObject,
) -> None:
    argv = data.draw(command_lines(cli_files))
    assume(not _would_train_for_real(argv))
    monkeypatch.chdir(tmp_path)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: 2 for usage errors, 0 for --help
            code = 0 if exc.code is None else exc.code
    lines = err.getvalue().strip().splitlines()
    assert code in (0, 1, 2), (argv, code, lines)
    assert "Traceback" not in err.getvalue()
    errors = [line for line in lines if "error:" in line]
    if code == 0:
        assert not errors, (argv, lines)
    else:
        assert len(errors) == 1 and lines[-1] == errors[0], (argv, lines)
