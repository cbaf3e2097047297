"""What every featcache command does the same way: one-line errors and warnings, exit codes.

A :class:`~featcache.shared.errors.FeatcacheError` (or an ``OSError``: disk full, permission denied) is printed
as ``error: <file>: <reason>`` and exits 2, with no traceback unless ``--debug``; Ctrl-C exits 130
after saying what the interrupted command keeps (each command states its own message).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable

import typer

from .errors import FeatcacheError

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
# What the extractor says on Ctrl-C (the default, for its commands): its shards are committed one by one.
RESUME_MESSAGE = "interrupted: finished shards are kept; run the same command again to resume"


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    print(f"warning: {message}", file=sys.stderr)


def run_cli(job: Callable[[], None], *, debug: bool = False, interrupted: str = RESUME_MESSAGE) -> None:
    """Run ``job`` the way a command-line user expects; ``interrupted`` is printed on Ctrl-C."""
    if not debug:
        warnings.showwarning = _one_line_warning
    try:
        job()
    except FeatcacheError as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_ERROR) from None
    except OSError as exc:  # a disk or permission problem: the file and the reason, not a traceback
        if debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        typer.echo(f"error: {where}{exc.strerror or exc}", err=True)
        raise typer.Exit(EXIT_ERROR) from None
    except KeyboardInterrupt:
        typer.echo(interrupted, err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
