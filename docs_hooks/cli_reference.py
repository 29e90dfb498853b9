"""MkDocs hook: the CLI reference, generated from the command-line parsers at build time.

docs/reference/cli.md holds the hand-written part and the line `<!-- cli-reference -->`;
when the site is built, that line becomes every command of `compressor` and `deploy`, each
with its usage and every argument's help, choices and default, read from the argparse
parser objects themselves (their actions and subparsers), so the page follows the code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # this checkout's parsers, whichever venv builds the site
    sys.path.insert(0, str(ROOT))

MARKER = "<!-- cli-reference -->"
PARSERS = ("compressor.cli_parser:build_parser", "deploy.cli_parser:build_parser")
# Commands another command parses (`compressor bench ...` is handed to `deploy bench`): a
# pointer to that command's section instead of a second copy of its tables.
DELEGATES = {"compressor bench": "deploy bench"}
USAGE_WIDTH = 100  # usage lines wrapped here, whatever the terminal that builds the site


def on_page_markdown(markdown: str, *, page: Any, config: Any, files: Any) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, cli_reference())


def cli_reference() -> str:
    lines: list[str] = []
    for target in PARSERS:
        module, function = target.split(":")
        lines += command_markdown(getattr(importlib.import_module(module), function)(), level=2)
    return "\n".join(lines)


def anchor(prog: str) -> str:
    return prog.replace(" ", "-")


def subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, Any]]:
    """(name, help, parser) of each subcommand, in the order they were added, aliases once."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    yield name, helps.get(name) or "", sub


def command_markdown(parser: argparse.ArgumentParser, level: int) -> list[str]:
    """A heading for the command, its description and usage, argument tables, subcommands."""
    prog = parser.prog
    lines = [f"{'#' * level} `{prog}` {{#{anchor(prog)}}}", ""]
    if parser.description:
        lines += [cell(parser.description), ""]
    if prog in DELEGATES:  # its arguments are listed once, under the command that parses them
        other = DELEGATES[prog]
        link = f"[`{other}`](#{anchor(other)})"
        return [*lines, f"Takes the arguments of {link}, which parses it.", ""]
    if parser._actions:
        lines += ["```text", usage(parser), "```", ""]
    for group in parser._action_groups:
        actions = [
            a
            for a in group._group_actions
            if a.help is not argparse.SUPPRESS and not isinstance(a, argparse._SubParsersAction)
        ]
        if actions:
            title = f"**{group.title}**" if group.title else "**arguments**"
            described = f"{title}: {cell(group.description)}" if group.description else title
            lines += [described, "", "| argument | help | choices | default |", "|---|---|---|---|"]
            lines += [argument_row(parser, a) for a in actions]
            lines.append("")
    subs = list(subcommands(parser))
    if subs:
        lines += ["| command | what it does |", "|---|---|"]
        for _, text, sub in subs:
            lines.append(f"| [`{sub.prog}`](#{anchor(sub.prog)}) | {cell(text)} |")
        lines.append("")
        for _, _, sub in subs:
            lines += command_markdown(sub, level + 1)
    return lines


def usage(parser: argparse.ArgumentParser) -> str:
    try:
        formatter = parser.formatter_class(prog=parser.prog, width=USAGE_WIDTH)
    except TypeError:  # a formatter class that takes no width
        formatter = parser._get_formatter()
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, "")
    return formatter.format_help().strip()


def argument_row(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = parser._get_formatter()
    if action.option_strings:
        metavar = ""
        if action.nargs != 0:
            metavar = " " + formatter._format_args(action, action.dest.upper())
        names = ", ".join(f"`{option}{metavar}`" for option in action.option_strings)
    else:
        names = f"`{formatter._format_args(action, action.dest)}`"
    help_text = formatter._expand_help(action) if action.help else ""
    choices = ""
    if action.choices is not None:
        choices = ", ".join(f"`{choice}`" for choice in action.choices)
    elif isinstance(action.metavar, str) and action.metavar.startswith("{"):
        # Flags whose values the CLI checks itself (its own one-line error) show them as a
        # metavar, "{auto,cpu,cuda,cuda:N}".
        choices = ", ".join(f"`{choice}`" for choice in action.metavar.strip("{}").split(","))
    return f"| {names} | {cell(help_text)} | {choices} | {default(action)} |"


def default(action: argparse.Action) -> str:
    value = action.default
    if value is None or value is argparse.SUPPRESS or action.nargs == 0:
        return ""  # flags (store_true, help, version) and arguments without a default
    if isinstance(value, (list, tuple)):
        value = " ".join(str(v) for v in value)
    return f"`{value}`"


def cell(text: str) -> str:
    """Help text as one Markdown table cell: one line, shown as written. Outside `code`
    spans, characters Markdown or HTML would act on are escaped; inside, none need to be."""
    parts = " ".join(str(text).split()).split("`")
    for i in range(0, len(parts), 2):  # the even parts lie outside code spans
        for char, escaped in (("&", "&amp;"), ("<", "&lt;"), ("*", "\\*"), ("_", "\\_")):
            parts[i] = parts[i].replace(char, escaped)
    return "`".join(parts).replace("|", "\\|")
