"""The docs site: `mkdocs build --strict` passes (every link and heading it names exists), and
its CLI reference, generated from the parsers, shows every command and every flag of both
CLIs with its help and choices."""

from __future__ import annotations

import argparse
import html
import re
import subprocess
import sys
from pathlib import Path

import pytest

from compressor.cli_parser import build_parser as compressor_parser
from deploy.cli_parser import build_parser as deploy_parser

ROOT = Path(__file__).resolve().parents[1]


def _commands(parser: argparse.ArgumentParser):
    """(prog, parser) of the command and of every subcommand below it."""
    yield parser.prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in {id(p): p for p in action.choices.values()}.values():
                yield from _commands(sub)


COMMANDS = dict(_commands(compressor_parser())) | dict(_commands(deploy_parser()))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("mkdocs", reason="MkDocs is not installed (bash install.sh --test)")
    pytest.importorskip("material", reason="mkdocs-material is not installed (install.sh --test)")
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def _section(page: str, prog: str) -> str:
    """The text under the heading of one command, up to the next heading, without the usage
    block (so each flag must be in the argument tables) and tags removed."""
    start = page.index(f'id="{prog.replace(" ", "-")}"')
    end = re.compile(r"<h[1-6] id=").search(page, start + 1)
    raw = re.sub(r"<pre.*?</pre>", "", page[start : end.start() if end else len(page)], flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", raw)).split())


def test_every_nav_page_is_built(site: Path) -> None:
    nav = re.findall(r"([\w/-]+)\.md\s*$", (ROOT / "mkdocs.yml").read_text(), flags=re.M)
    assert len(nav) > 15
    for name in nav:
        page = f"{name}.html" if Path(name).name == "index" else f"{name}/index.html"
        assert (site / page).is_file(), name


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_cli_reference_shows_every_flag(site: Path, prog: str) -> None:
    page = (site / "reference/cli/index.html").read_text()
    section = _section(page, prog)
    parser = COMMANDS[prog]
    actions = [a for a in parser._actions if not isinstance(a, argparse._SubParsersAction)]
    delegate = re.search(r"Takes the arguments of ([\w -]+?), which parses it", section)
    if delegate:  # `compressor bench`: listed under `deploy bench`, which parses it
        section = _section(page, delegate.group(1))
    assert actions or delegate, f"{prog} shows no arguments"
    for action in actions:
        for option in action.option_strings:
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", section), option
        if not action.option_strings:
            assert re.search(rf"\b{re.escape(action.dest)}\b", section), action.dest
        if action.help and action.help is not argparse.SUPPRESS:
            expected = " ".join(action.help.split("%(")[0].replace("`", "").split())
            assert expected in section, (action.option_strings or action.dest, expected)
        for choice in action.choices or ():
            assert str(choice) in section, (action.option_strings, choice)


def test_readme_sections_are_included_not_copied(site: Path) -> None:
    python_page = (site / "guide/python/index.html").read_text()
    assert "prune_at_init" in python_page and "register_criterion" in python_page
    assert "When Layers Play the Lottery" in (site / "index.html").read_text()


def test_readme_links_into_the_docs_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    links = re.findall(r"\]\((docs/[^)#]*)", readme)
    assert len(links) > 15
    for link in links:
        assert (ROOT / link).exists(), link
