"""The docs a command-line user reads agree with the code: the generated option reference is current,
and no ``--help`` prints markup meant for the API docs or typer's odd default spelling."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from featcache.extractor.cli import app as extract_app
from featcache.shared.inspection.cli import app as inspect_app
from featcache.trainer.cli import app as train_app

REPO = Path(__file__).resolve().parents[1]
APPS = {"featcache-extract": extract_app, "featcache-train": train_app, "featcache-inspect": inspect_app}


def test_the_option_reference_is_generated_from_the_current_code():
    p = subprocess.run([sys.executable, "docs/cli_reference.py", "--check"], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    text = (REPO / "docs" / "cli-reference.md").read_text()
    for name, app in APPS.items():  # an independent walk: every option's flag is in the reference
        cmd = typer.main.get_command(app)
        for c in [cmd, *getattr(cmd, "commands", {}).values()]:
            for p in c.params:
                for flag in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]:
                    if flag.startswith("--") and flag != "--help":
                        assert f"`{flag}`" in text, (name, c.name, flag)


def _helps() -> list[tuple[str, list[str]]]:
    out = []
    for name, app in APPS.items():
        cmd = typer.main.get_command(app)
        out.append((name, []))
        out += [(name, [sub]) for sub in getattr(cmd, "commands", {})]
    return out


@pytest.mark.parametrize(("name", "args"), _helps(), ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_help_has_no_markup_and_plain_defaults(name, args):
    r = CliRunner().invoke(APPS[name], [*args, "--help"], terminal_width=200)
    assert r.exit_code == 0, r.output
    for bad in ("``", ":func:", ":class:", "default: ("):
        assert bad not in r.output, (name, args, bad)


def test_the_training_options_are_shown_by_the_top_level_help():
    r = CliRunner().invoke(train_app, ["--help"], terminal_width=200)
    assert r.exit_code == 0
    head = r.output.index("Training options")
    assert head < r.output.index("Commands") and "--epochs" in r.output[head:] and "--head" in r.output[head:]
    assert "[default: logreg,linear]" in r.output
