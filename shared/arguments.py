"""Checking the Python API's arguments where they enter: one line naming the argument, never a raw
``TypeError`` from deep inside the library or a value silently cast.

Each public function (``featcache.extract``, ``open_cache``, ``train``, the :class:`FeatureCache`
methods, ``trainer.api``) passes each argument through one of these checkers before using it; the
library below trusts what it is given. Every failure is a :class:`FeatcacheError` reading
``name=value: expected ...``, the way a Python caller spells the argument (the command-line tools
rewrite ``name=`` into the flag: :func:`featcache.shared.cli.flag_spelling`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np

from .errors import FeatcacheError

# How much of a bad value a message shows.
SHOWN = 60


def show(value: Any) -> str:
    """``repr(value)``, cut to :data:`SHOWN` characters."""
    text = repr(value)
    return text if len(text) <= SHOWN else text[: SHOWN - 3] + "..."


def bad(name: str, value: Any, expected: str) -> FeatcacheError:
    """The error for argument ``name`` given ``value``: ``name=value: expected``."""
    return FeatcacheError(f"{name}={show(value)}: {expected}")


def is_int(value: Any) -> bool:
    """An integer, not a bool (numpy integers included)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


@overload
def path_arg(name: str, value: Any, *, optional: Literal[False] = False) -> Path: ...
@overload
def path_arg(name: str, value: Any, *, optional: bool) -> Path | None: ...
def path_arg(name: str, value: Any, *, optional: bool = False) -> Path | None:
    """``value`` (a ``str`` or ``os.PathLike``) as a :class:`Path`; None only when ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, str | os.PathLike) and not isinstance(value, bytes) and str(value) != "":
        return Path(value)
    raise bad(name, value, "expected a path (str or pathlib.Path)")


@overload
def int_arg(name: str, value: Any, *, minimum: int | None = None, optional: Literal[False] = False) -> int: ...
@overload
def int_arg(name: str, value: Any, *, minimum: int | None = None, optional: bool) -> int | None: ...
def int_arg(name: str, value: Any, *, minimum: int | None = None, optional: bool = False) -> int | None:
    """``value`` as an ``int`` of at least ``minimum``; None only when ``optional``."""
    if value is None and optional:
        return None
    if not is_int(value):
        raise bad(name, value, "expected an integer" + (f" >= {minimum}" if minimum is not None else ""))
    if minimum is not None and value < minimum:
        raise bad(name, value, f"must be at least {minimum}")
    return int(value)


@overload
def bool_arg(name: str, value: Any, *, optional: Literal[False] = False) -> bool: ...
@overload
def bool_arg(name: str, value: Any, *, optional: bool) -> bool | None: ...
def bool_arg(name: str, value: Any, *, optional: bool = False) -> bool | None:
    """``value``, which must be True or False (None only when ``optional``): ``"no"`` is not False."""
    if value is None and optional:
        return None
    if isinstance(value, bool | np.bool_):
        return bool(value)
    raise bad(name, value, "expected True or False")


def progress_arg(value: Any) -> bool:
    """``progress=`` of an API call: True or False, or None (the default) for "when standard error is a
    terminal", so that a script or a notebook's log gets no progress bars it did not ask for."""
    if value is None:
        import sys

        try:
            return sys.stderr.isatty()
        except (AttributeError, ValueError):
            return False
    return bool(bool_arg("progress", value))


def choice_arg(name: str, value: Any, choices: Collection[Any], *, optional: bool = False) -> Any:
    """``value``, which must be one of ``choices`` (None only when ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, str | int) and not isinstance(value, bool) and value in choices:
        return value
    raise bad(name, value, f"choose one of {', '.join(map(str, choices))}")


@overload
def str_arg(name: str, value: Any, *, optional: Literal[False] = False) -> str: ...
@overload
def str_arg(name: str, value: Any, *, optional: bool) -> str | None: ...
def str_arg(name: str, value: Any, *, optional: bool = False) -> str | None:
    """``value``, a non-empty ``str`` (None only when ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, str) and value:
        return value
    raise bad(name, value, "expected a non-empty string")


def callable_arg(name: str, value: Any) -> Callable | None:
    """``value``, a callable or None."""
    if value is None or callable(value):
        return value
    raise bad(name, value, "expected a function (or None)")


def dict_arg(name: str, value: Any) -> dict:
    if isinstance(value, dict):
        return value
    raise bad(name, value, "expected a dict")


def keywords(call: str, given: Iterable[str], known: Collection[str]) -> None:
    """Refuse keyword arguments of ``call`` not in ``known`` (for functions taking ``**options``)."""
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise FeatcacheError(f"{call}: unknown argument {unknown[0]}=...; it takes {', '.join(known)}")


def positions_arg(name: str, value: Any, size: int) -> np.ndarray:
    """``value`` (a sequence or 1-D array of integers) as ``(n,)`` int64 listing positions, each in
    ``[0, size)``: a position no input has is an error, not an empty result."""
    array = np.asarray(value) if not isinstance(value, str | bytes | dict) else np.asarray([value])
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise bad(name, value, "expected a 1-D sequence of integer listing positions")
    array = array.astype(np.int64)
    out = (array < 0) | (array >= size)
    if out.any():
        raise bad(
            name,
            value,
            f"position {int(array[out][0])} is out of range: the cache's listing positions are 0..{size - 1}",
        )
    return array


@overload
def dtype_arg(name: str, value: Any, choices: Collection[str], *, optional: Literal[False] = False) -> str: ...
@overload
def dtype_arg(name: str, value: Any, choices: Collection[str], *, optional: bool) -> str | None: ...
def dtype_arg(name: str, value: Any, choices: Collection[str], *, optional: bool = False) -> str | None:
    """``value`` (a name such as ``"float32"``, or a numpy dtype or type) as the dtype's name, which
    must be one of ``choices``: an integer dtype would cast features silently."""
    if value is None and optional:
        return None
    try:
        dtype = None if value is None or isinstance(value, bool | int | float) else np.dtype(value).name
    except TypeError:
        dtype = None
    if dtype in choices:
        return dtype
    raise bad(name, value, f"choose one of {', '.join(choices)}")
