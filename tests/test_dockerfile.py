"""The Dockerfile's structure, checked without a Docker engine (CI has none).

A small line-based parser (continuation lines joined, comments dropped, as Docker does) feeds
checks that each return the problems they find, so the same checks run on the repository's
Dockerfile (no problems) and on bad text (each problem named). What is checked: every base
image comes from a build argument or an earlier stage; the server and Jetson image arguments
default to nvcr.io images with explicit tags that are not `latest`; TARGET picks the final
base; a non-root USER comes after the installs and before CMD; the copied project is
pip-installed without touching the base's torch; both console scripts run in a smoke check;
every RUN is valid shell; .dockerignore keeps .venv, .git and runs out of the context.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMAGE_ARGS = ("SERVER_IMAGE", "JETSON_IMAGE")
TARGETS = {"server": "SERVER_IMAGE", "jetson": "JETSON_IMAGE"}
IGNORED_PATHS = (".venv", ".git", "runs")
_VAR = re.compile(r"\$\{(\w+)(?::[-+][^}]*)?\}|\$(\w+)")


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, ARG, RUN, ...
    value: str  # everything after the keyword, continuation lines joined
    line: int  # 1-based line where the instruction starts


@dataclass(frozen=True)
class Stage:
    image: str  # the FROM reference as written, e.g. ${SERVER_IMAGE} or base-${TARGET}
    name: str | None
    instructions: tuple[Instruction, ...]


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order. A line ending in a backslash continues on the next one; comment
    and blank lines inside a continuation are dropped, as Docker drops them."""
    instructions: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not parts:
            start = number
            raw = raw.lstrip()
        body = raw.rstrip()
        if body.endswith("\\"):
            parts.append(body[:-1])
            continue
        parts.append(body)
        keyword, _, value = "".join(parts).partition(" ")
        instructions.append(Instruction(keyword.upper(), value.strip(), start))
        parts = []
    if parts:
        raise ValueError(f"line {start}: continuation runs past the end of the file")
    return instructions


def arg_defaults(instructions: list[Instruction] | tuple[Instruction, ...]) -> dict[str, str]:
    """ARG name -> default ('' when it has none); later declarations win."""
    defaults: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ARG":
            name, _, default = ins.value.partition("=")
            defaults[name.strip()] = default.strip().strip("\"'")
    return defaults


def split_stages(instructions: list[Instruction]) -> tuple[list[Instruction], list[Stage]]:
    """Instructions before the first FROM (global ARGs) and the stages."""
    first = next((i for i, ins in enumerate(instructions) if ins.keyword == "FROM"), None)
    if first is None:
        return instructions, []
    starts = [i for i, ins in enumerate(instructions) if ins.keyword == "FROM"] + [None]
    stages = []
    for begin, end in zip(starts, starts[1:], strict=False):
        words = [w for w in instructions[begin].value.split() if not w.startswith("--")]
        name = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
        stages.append(Stage(words[0], name, tuple(instructions[begin + 1 : end])))
    return instructions[:first], stages


def substitute(value: str, variables: dict[str, str]) -> str:
    """Replace $NAME / ${NAME} from `variables`; unknown names are left as written."""
    return _VAR.sub(lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), value)


def _tag(image: str) -> str | None:
    last = image.split("@")[0].rsplit("/", 1)[-1]
    return last.partition(":")[2] or None


def check_base_images(text: str) -> list[str]:
    """Every FROM names a build argument or an earlier stage, never a fixed image."""
    global_part, stages = split_stages(parse_dockerfile(text))
    global_args = arg_defaults(global_part)
    problems, names = [], set()
    for stage in stages:
        used = {a or b for a, b in _VAR.findall(stage.image)}
        if stage.image not in names and not (used and used <= global_args.keys()):
            problems.append(f"FROM {stage.image} is a fixed image, not a build argument or stage")
        if stage.name:
            names.add(stage.name)
    return problems or ([] if stages else ["no FROM instruction"])


def check_image_defaults(text: str) -> list[str]:
    """The server and Jetson image arguments default to nvcr.io images with a real tag."""
    global_part, _ = split_stages(parse_dockerfile(text))
    defaults = arg_defaults(global_part)
    problems = []
    for name in IMAGE_ARGS:
        image = defaults.get(name, "")
        if not image:
            problems.append(f"no global ARG {name} with a default image")
            continue
        if not image.startswith("nvcr.io/"):
            problems.append(f"ARG {name}={image} is not an NVIDIA NGC (nvcr.io) image")
        tag = _tag(image)
        if tag is None or tag == "latest":
            problems.append(f"ARG {name}={image} needs an explicit tag other than 'latest'")
    return problems


def _resolve(image: str, stages: list[Stage], variables: dict[str, str], depth: int = 0) -> str:
    """The concrete image a FROM reference ends at, following stage names."""
    image = substitute(image, variables)
    stage = next((s for s in stages if s.name == image), None)
    if stage is None or depth > len(stages):
        return image
    return _resolve(stage.image, stages, variables, depth + 1)


def check_target_selection(text: str) -> list[str]:
    """The final stage's base is chosen by TARGET, and each target ends at its image."""
    global_part, stages = split_stages(parse_dockerfile(text))
    defaults = arg_defaults(global_part)
    if defaults.get("TARGET") != "server":
        return ["no global ARG TARGET defaulting to 'server'"]
    if not stages or "TARGET" not in {a or b for a, b in _VAR.findall(stages[-1].image)}:
        return ["the final stage's FROM does not depend on ${TARGET}"]
    problems = []
    for target, image_arg in TARGETS.items():
        got = _resolve(stages[-1].image, stages, {**defaults, "TARGET": target})
        if got != defaults.get(image_arg):
            problems.append(f"TARGET={target} builds on {got}, not on ${{{image_arg}}}")
    return problems


def _pip_installs(stage: Stage) -> list[Instruction]:
    return [i for i in stage.instructions if i.keyword == "RUN" and "pip install" in i.value]


def check_user(text: str) -> list[str]:
    """A non-root USER after the last pip install and before CMD/ENTRYPOINT, and no later USER
    switching back."""
    _, stages = split_stages(parse_dockerfile(text))
    if not stages:
        return ["no FROM instruction"]
    final = stages[-1]
    users = [i for i in final.instructions if i.keyword == "USER"]
    if not users:
        return ["the final stage sets no USER: the container would run as root"]
    user = users[-1]
    who = substitute(user.value, arg_defaults(final.instructions)).split(":")[0]
    problems = []
    if who in {"root", "0"} or "$" in who:
        problems.append(f"USER {user.value} (line {user.line}) is root or unresolved: {who}")
    installs = _pip_installs(final)
    if installs and installs[-1].line > user.line:
        problems.append(f"pip install on line {installs[-1].line} runs after USER")
    for ins in final.instructions:
        if ins.keyword in {"CMD", "ENTRYPOINT"} and ins.line < user.line:
            problems.append(f"{ins.keyword} on line {ins.line} comes before USER")
    return problems


def check_project_install(text: str) -> list[str]:
    """pyproject.toml is copied before the source (cache order) and the copied source is
    pip-installed with --no-deps, so the base image's torch stays."""
    _, stages = split_stages(parse_dockerfile(text))
    final = stages[-1] if stages else Stage("", None, ())
    copies = [i for i in final.instructions if i.keyword == "COPY"]
    source = next((c for c in copies if c.value.split()[0] == "."), None)
    if source is None:
        return ["the final stage never copies the project source (COPY . ...)"]
    problems = []
    if not any("pyproject.toml" in c.value and c.line < source.line for c in copies):
        problems.append("pyproject.toml is not copied before the source (dependency cache)")
    dest = source.value.split()[-1]
    targets = {".", "./", dest, dest.rstrip("/")}
    installs = [
        i
        for i in _pip_installs(final)
        if i.line > source.line and targets & set(i.value.split("pip install", 1)[1].split())
    ]
    if not installs:
        problems.append("no RUN pip-installs the copied source")
    elif not any("--no-deps" in i.value for i in installs):
        problems.append("the project's pip install lacks --no-deps (could replace torch)")
    return problems


def console_scripts() -> list[str]:
    """Names under [project.scripts] in pyproject.toml."""
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return re.findall(r"^\s*([\w.-]+)\s*=", section, flags=re.MULTILINE)


def check_smoke(text: str, scripts: list[str]) -> list[str]:
    """Each console script is run (--help) in a RUN after the project is installed."""
    _, stages = split_stages(parse_dockerfile(text))
    final = stages[-1] if stages else Stage("", None, ())
    installs = _pip_installs(final)
    after = [
        i
        for i in final.instructions
        if i.keyword == "RUN" and (not installs or i.line > installs[-1].line)
    ]
    return [
        f"no RUN smoke-checks `{name} --help` after the install"
        for name in scripts
        if not any(re.search(rf"(?<![\w./-]){re.escape(name)}\s+--help", i.value) for i in after)
    ]


def check_cmd(text: str) -> list[str]:
    _, stages = split_stages(parse_dockerfile(text))
    final = stages[-1].instructions if stages else ()
    return [] if any(i.keyword in {"CMD", "ENTRYPOINT"} for i in final) else ["no CMD"]


def check_dockerignore(text: str) -> list[str]:
    entries = set()
    for line in text.splitlines():
        entry = line.strip()
        if entry and not entry.startswith(("#", "!")):
            entries.add(entry.removeprefix("**/").strip("/"))
    return [f".dockerignore does not exclude {p}" for p in IGNORED_PATHS if p not in entries]


def dockerfile_problems(text: str, scripts: list[str]) -> list[str]:
    return [
        *check_base_images(text),
        *check_image_defaults(text),
        *check_target_selection(text),
        *check_user(text),
        *check_project_install(text),
        *check_smoke(text, scripts),
        *check_cmd(text),
    ]


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


BAD_DOCKERFILE = """\
FROM ubuntu:latest
COPY . /src
USER root
RUN pip install /src
CMD ["bash"]
"""


def test_the_dockerfile_has_no_problems(dockerfile: str) -> None:
    assert console_scripts() == ["compressor", "deploy"]
    assert dockerfile_problems(dockerfile, console_scripts()) == []


def test_the_dockerignore_keeps_venv_git_and_runs_out() -> None:
    assert check_dockerignore((ROOT / ".dockerignore").read_text()) == []


def test_server_and_jetson_images_are_pinned_ngc_tags(dockerfile: str) -> None:
    defaults = arg_defaults(split_stages(parse_dockerfile(dockerfile))[0])
    for name in IMAGE_ARGS:
        assert re.fullmatch(r"nvcr\.io/nvidia/[\w.-]+:[\w.-]+", defaults[name]), defaults[name]
        assert _tag(defaults[name]) != "latest"
    assert "latest" not in {_tag(s.image) for s in split_stages(parse_dockerfile(dockerfile))[1]}


def test_every_run_is_valid_shell(dockerfile: str) -> None:
    if shutil.which("sh") is None:
        pytest.skip("no sh on this machine to check RUN syntax with")
    runs = [i for i in parse_dockerfile(dockerfile) if i.keyword == "RUN"]
    assert runs
    for run in runs:
        checked = subprocess.run(["sh", "-n", "-c", run.value], capture_output=True, text=True)
        assert checked.returncode == 0, f"line {run.line}: {checked.stderr}"


def test_a_bad_dockerfile_is_caught_by_every_check() -> None:
    problems = dockerfile_problems(BAD_DOCKERFILE, ["compressor", "deploy"])
    text = "\n".join(problems)
    assert "FROM ubuntu:latest is a fixed image" in text
    assert "no global ARG SERVER_IMAGE" in text and "no global ARG JETSON_IMAGE" in text
    assert "no global ARG TARGET" in text
    assert "USER root (line 3) is root" in text
    assert "pip install on line 4 runs after USER" in text
    assert "pyproject.toml is not copied before the source" in text
    assert "lacks --no-deps" in text
    assert "`compressor --help`" in text and "`deploy --help`" in text
    assert check_dockerignore(".venv\n# runs\n") == [
        ".dockerignore does not exclude .git",
        ".dockerignore does not exclude runs",
    ]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("ARG SERVER_IMAGE=nvcr.io/nvidia/pytorch:latest", "other than 'latest'"),
        ("ARG SERVER_IMAGE=nvcr.io/nvidia/pytorch", "other than 'latest'"),
        ("ARG SERVER_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime", "not an NVIDIA NGC"),
    ],
)
def test_a_bad_image_default_is_named(dockerfile: str, line: str, expected: str) -> None:
    bad = re.sub(r"^ARG SERVER_IMAGE=.*$", line, dockerfile, count=1, flags=re.MULTILINE)
    assert bad != dockerfile
    problems = check_image_defaults(bad)
    assert len(problems) == 1 and expected in problems[0]


def test_a_swapped_target_or_late_user_is_caught(dockerfile: str) -> None:
    server_image = arg_defaults(split_stages(parse_dockerfile(dockerfile))[0])["SERVER_IMAGE"]
    swapped = dockerfile.replace("FROM ${JETSON_IMAGE} AS", "FROM ${SERVER_IMAGE} AS", 1)
    assert check_target_selection(swapped) == [
        f"TARGET=jetson builds on {server_image}, not on ${{JETSON_IMAGE}}"
    ]
    no_user = re.sub(r"^USER .*$", "", dockerfile, flags=re.MULTILINE)
    assert check_user(no_user) == ["the final stage sets no USER: the container would run as root"]
    fixed_base = dockerfile.replace("FROM base-${TARGET} AS app", "FROM base-server AS app")
    assert check_target_selection(fixed_base) == [
        "the final stage's FROM does not depend on ${TARGET}"
    ]


def test_the_parser_joins_continuations_and_drops_comments() -> None:
    text = "# syntax=docker/dockerfile:1\nRUN a \\\n    # a comment inside\n\n    && b\nUSER app\n"
    assert parse_dockerfile(text) == [
        Instruction("RUN", "a     && b", 2),
        Instruction("USER", "app", 6),
    ]
    with pytest.raises(ValueError, match="past the end"):
        parse_dockerfile("RUN a \\\n")


def _python_one_liners(dockerfile: str) -> list[str]:
    """The code of every `python3 -c '...'` in a RUN, in order."""
    runs = [i.value for i in parse_dockerfile(dockerfile) if i.keyword == "RUN"]
    return [code for run in runs for code in re.findall(r"python3 -c '([^']*)'", run)]


def _stage_env(dockerfile: str, name: str) -> dict[str, str]:
    """The ENV values a base stage sets (KEY=value or KEY="value" pairs)."""
    stage = next(s for s in split_stages(parse_dockerfile(dockerfile))[1] if s.name == name)
    pairs = " ".join(i.value for i in stage.instructions if i.keyword == "ENV")
    return {key: value for key, value in re.findall(r'(\w+)="?([^"\s]*(?: [^"\s=]+)*)"?', pairs)}


@pytest.mark.parametrize(
    ("stage", "wanted", "unwanted"),
    [
        ("base-server", {"torch-pruning", "onnxscript", "pyyaml", "nvidia-ml-py"}, {"torch"}),
        ("base-jetson", {"torch-pruning", "onnxscript", "pyyaml", "onnx"}, {"nvidia-ml-py"}),
    ],
)
def test_the_image_installs_the_pipeline_from_the_extras(
    dockerfile: str, stage: str, wanted: set[str], unwanted: set[str], tmp_path: Path
) -> None:
    """The Dockerfile's own dependency list, run on this pyproject.toml: core dependencies
    plus its extras (the pipeline), never torch (the base image's CUDA build stays)."""
    env = _stage_env(dockerfile, stage)
    assert env["LLD_EXTRAS"].split()[0] == "pipeline"
    listing = next(code for code in _python_one_liners(dockerfile) if "tomllib" in code)
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    result = subprocess.run(
        [sys.executable, "-c", listing],
        cwd=tmp_path,
        env={**os.environ, "LLD_EXTRAS": env["LLD_EXTRAS"]},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    names = {re.match(r"[A-Za-z0-9._-]+", line).group().lower() for line in result.stdout.split()}
    assert wanted <= names and not unwanted & names, names


def test_the_image_check_of_installed_requirements_runs_here(dockerfile: str) -> None:
    """The post-install check (every requirement of the image's extras satisfied) is real
    Python: it passes in this venv, which holds the pipeline, and names what a venv lacks."""
    check = next(code for code in _python_one_liners(dockerfile) if "unsatisfied" in code)
    run = functools.partial(
        subprocess.run, [sys.executable, "-c", check], capture_output=True, text=True
    )
    assert run(env={**os.environ, "LLD_EXTRAS": "pipeline"}).returncode == 0
    missing = run(env={**os.environ, "LLD_EXTRAS": "pipeline energy"})
    if importlib.util.find_spec("codecarbon") is None:
        assert missing.returncode != 0 and "codecarbon" in missing.stderr
