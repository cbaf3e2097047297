"""Write docs/cli-reference.md: every command and every option of the three CLIs, from the code.

    .venv/bin/python docs/cli_reference.py            # rewrite docs/cli-reference.md
    .venv/bin/python docs/cli_reference.py --check    # exit 1 when it is out of date (tests/test_docs.py)

The tables are made from the typer apps themselves (each option's flags, default and help text), so
the reference cannot miss an option or disagree with ``--help``; the other doc pages explain.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import typer

from featcache.extractor.cli import app as extract_app
from featcache.shared.cli import plain
from featcache.shared.inspection.cli import app as inspect_app
from featcache.trainer.cli import app as train_app

OUT = Path(__file__).resolve().parent / "cli-reference.md"
APPS = (("featcache-extract", extract_app), ("featcache-train", train_app), ("featcache-inspect", inspect_app))


def _cell(text: str) -> str:
    return " ".join(plain(text).split()).replace("|", "\\|")


def _flags(p: Any) -> str:
    if p.param_type_name == "argument":
        return f"`{p.name.upper()}`" + ("..." if p.nargs != 1 else "")
    flags = [*p.opts, *p.secondary_opts]
    return " / ".join(f"`{f}`" for f in flags)


def _default(p: Any) -> str:
    if p.param_type_name == "argument":
        return "required" if p.required else "optional"
    if p.show_default is False or p.default is None or p.is_flag and p.default is False and not p.secondary_opts:
        return ""
    if p.is_flag and p.secondary_opts:
        return f"`{p.opts[0] if p.default else p.secondary_opts[0]}`"
    return f"`{p.default}`"


def _command(name: str, cmd: Any, out: list[str]) -> None:
    out += [f"### `{name}`", "", _cell((cmd.help or "").split("\n\n")[0]), ""]
    rows = [p for p in cmd.params if p.name not in ("help",) and not getattr(p, "hidden", False)]
    if rows:
        out += ["| argument or option | default | what it does |", "|---|---|---|"]
        out += [f"| {_flags(p)} | {_default(p)} | {_cell(p.help or '')} |" for p in rows]
        out.append("")


def render() -> str:
    out = [
        "# Command-line reference",
        "",
        "Every command and option of `featcache-extract`, `featcache-train` and `featcache-inspect`, generated",
        "from the code by `docs/cli_reference.py` (tests/test_docs.py fails when it is out of date). The other",
        "pages explain what the options are for; `COMMAND --help` prints the same text.",
        "",
    ]
    for name, app in APPS:
        cmd = typer.main.get_command(app)
        out += [f"## `{name}`", ""]
        if getattr(cmd, "commands", None):
            _command(name, cmd, out)
            for sub, c in cmd.commands.items():
                _command(f"{name} {sub}", c, out)
        else:
            _command(name, cmd, out)
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 when docs/cli-reference.md is out of date")
    args = ap.parse_args()
    text = render()
    if args.check:
        current = OUT.read_text() if OUT.is_file() else ""
        if current != text:
            print(f"{OUT} is out of date: run .venv/bin/python docs/cli_reference.py", file=sys.stderr)
            sys.exit(1)
        return
    OUT.write_text(text)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
