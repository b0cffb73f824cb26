"""``docs/reference/cli.md``, generated from the command line's parser (itself generated from
:class:`fastif_engine.config.CleanConfig` for ``fastif clean``), so the reference cannot drift.

    python -m flows.reference            # rewrite docs/reference/cli.md
"""
from __future__ import annotations

import argparse
from pathlib import Path

from flows.cli import build_parser

PAGE = Path(__file__).resolve().parent.parent / "docs" / "reference" / "cli.md"


def _row(action: argparse.Action) -> str:
    names = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.dest}`"
    if isinstance(action, argparse.BooleanOptionalAction):
        names = f"`{action.option_strings[0]}` / `{action.option_strings[1]}`"
    help_text = (action.help or "").replace("%%", "%").replace("|", "\\|")
    if action.choices and not isinstance(action, argparse._SubParsersAction):
        help_text += (" " if help_text else "") + "one of " + ", ".join(f"`{c}`" for c in action.choices)
    if action.required:
        help_text = "**required.** " + help_text
    elif action.default is not None and action.default is not False and action.default != argparse.SUPPRESS \
            and "default" not in help_text:
        help_text += f" (default {action.default})"
    return f"| {names} | {help_text.strip()} |"


def _command(parser: argparse.ArgumentParser, title: str, summary: str | None = None) -> list[str]:
    out = [f"## `{title}`", "", summary or parser.description or "", ""]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions
                   if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
        if not actions:
            continue
        if group.title not in ("options", "optional arguments", "positional arguments"):
            out += [f"### {group.title}", ""]
        out += ["| option | meaning |", "|---|---|", *(_row(a) for a in actions), ""]
    return out


def _subcommands(parser: argparse.ArgumentParser):
    """(name, parser, one-line help) of each subcommand of ``parser``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, sub, helps.get(name)


def markdown() -> str:
    parser = build_parser()
    lines = ["# Command line reference", "",
             "Generated from the parser by `python -m flows.reference` (a test fails when this page is stale).",
             "Every `fastif clean` option is also a YAML key of `--config` and a keyword of",
             "`fastif_engine.clean()`, spelt with `_` (`--flag-by` → `flag_by`).", ""]
    lines += _command(parser, "fastif")
    for name, sub, summary in _subcommands(parser):
        nested = list(_subcommands(sub))
        for inner, leaf, inner_summary in nested:
            lines += _command(leaf, f"fastif {name} {inner}", inner_summary)
        if not nested:
            lines += _command(sub, f"fastif {name}", summary)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(markdown())
    print(f"wrote {PAGE}")
