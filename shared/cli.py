"""What every featcache command does the same way: one-line errors and warnings, exit codes.

A :class:`~featcache.shared.errors.FeatcacheError` (or an ``OSError``: disk full, permission denied) is printed
as ``error: <file>: <reason>`` and exits 2, with no traceback unless ``--debug``; Ctrl-C exits 130
after saying what the interrupted command keeps (each command states its own message).

Library code speaks of keyword arguments (``overwrite=True``, ``part='1/3'``, ``weights=PATH``)
because that is what a Python caller passes; :func:`flag_spelling` turns those tokens into the
command's own flags (``--overwrite``, ``--part 1/3``, ``--weights PATH``) for a command-line user.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import warnings
from collections.abc import Callable, Iterable
from typing import Annotated, Any

import typer

from .errors import FeatcacheError
from .quiet import VERBOSE_ENV, hide_native_info
from .version import __version__

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
# What the extractor says on Ctrl-C (the default, for its commands): its shards are committed one by one.
RESUME_MESSAGE = "interrupted: finished shards are kept; run the same command again to resume"

# ``name=value``: a keyword argument as library messages write it. The value is a quoted string, or
# a bare token (True, 3, 1e-4, PATH, 0/4) up to a space or the punctuation that ends a clause
# (a trailing ':' or '.' is the sentence's, not the value's).
_KEYWORD = re.compile(r"(?<![\w.-])([a-z_][a-z0-9_]*)=('[^']*'|\"[^\"]*\"|[^\s,;()]*[^\s,;():.])")


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    print(f"warning: {message}", file=sys.stderr)


def _flag(param: Any, value: str) -> str:
    """The command-line spelling of the option ``param`` set to ``value`` (as written in a library message)."""
    if getattr(param, "is_bool_flag", False):
        if value == "True":
            return param.opts[0]
        if value == "False" and param.secondary_opts:
            return param.secondary_opts[0]
        return param.opts[0] if value != "False" else f"{param.opts[0]}=False"
    if value[:1] in "'\"" and value[-1:] == value[:1] and len(value) >= 2:
        inner = value[1:-1]
        value = inner if inner and shlex.quote(inner) == inner else value
    return f"{param.opts[0]} {value}"


def flag_spelling(message: str, params: Iterable[Any]) -> str:
    """``message`` with every ``name=value`` token that names one of ``params``' options rewritten as
    the flag (``overwrite=True`` -> ``--overwrite``, ``progress=False`` -> ``--no-progress``,
    ``part='1/3'`` -> ``--part 1/3``, ``weights=PATH`` -> ``--weights PATH``). Names the command does
    not have (another stage's arguments) are left as they are."""
    options = {p.name: p for p in params if p.name and p.opts and p.opts[0].startswith("-")}
    if not options:
        return message

    def rewrite(m: re.Match[str]) -> str:
        param = options.get(m[1])
        return m[0] if param is None else _flag(param, m[2])

    return _KEYWORD.sub(rewrite, message)


_RST_ROLE = re.compile(r":(?:func|class|meth|mod|data|attr):`~?([^`]+)`")


def plain(text: str) -> str:
    """``text`` (a docstring) as a terminal shows it: reStructuredText's ``code`` and :role:`x` markup
    become plain words, so ``--help`` never prints markup meant for the API docs."""
    return _RST_ROLE.sub(r"\1", text).replace("``", "")


def shown_default(help: str, default: object) -> str:
    """``help`` ending with the default as click prints it (``[default: 0.001]``), for options whose
    Python default is None (so that "not given" can be told apart) but whose effective default is known."""
    return f"{help}  [default: {default}]"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"featcache {__version__}")
        raise typer.Exit()


# ``--version`` on every command: eager, so that it answers before arguments are checked.
VersionOpt = Annotated[
    bool,
    typer.Option("--version", callback=_show_version, is_eager=True, help="Print featcache's version and exit."),
]


def _verbose(value: bool) -> None:
    if value:
        os.environ[VERBOSE_ENV] = "1"  # the command's worker processes inherit it
    else:
        hide_native_info()


# ``--verbose`` on the commands that import TensorFlow: its start-up lines are hidden unless given.
VerboseOpt = Annotated[
    bool,
    typer.Option(
        "--verbose",
        callback=_verbose,
        help="Show TensorFlow's start-up INFO lines and tf.function retracing warnings (hidden by default; "
        "warnings and errors are always shown).",
    ),
]


def run_cli(
    job: Callable[[], None],
    *,
    ctx: typer.Context | None = None,
    debug: bool = False,
    params: Iterable[Any] | None = None,
    interrupted: str = RESUME_MESSAGE,
) -> None:
    """Run ``job`` the way a command-line user expects; ``interrupted`` is printed on Ctrl-C.

    ``params`` are the command's parameters (``.name``, ``.opts``, ``.secondary_opts``,
    ``.is_bool_flag``), used to spell library messages' ``name=value`` tokens as flags; by default
    those of ``ctx``, the typer context of the command being run (none: messages are left as written)."""
    if params is None:
        params = list(ctx.command.params) if ctx is not None else []
    if not debug:
        warnings.showwarning = _one_line_warning
    try:
        job()
    except FeatcacheError as exc:
        if debug:
            raise
        message = flag_spelling(str(exc), params)
        typer.echo(f"error: {message}", err=True)
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
