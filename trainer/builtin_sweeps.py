"""The built-in sweeps, ``--sweep NAME`` (``train(sweep="thorough")``) beside ``--sweep FILE``.

Each is what a sweep file holds (grids and settings), as data, stated once here: the command line's
help, the docs (docs/cli-reference.md, docs/trainer.md) and the check of a ``sweep`` value read
:data:`BUILTIN_SWEEPS`, and its grids go through the same checks as a file's
(:func:`featcache.trainer.sweep.resolve_sweep`). A name in :data:`BUILTIN_SWEEPS` is the built-in
sweep even when a file of that name is in the current folder (give ``./NAME`` for the file).

* ``default``: what ``featcache-train CACHE`` runs with no grid option (:data:`DEFAULT_GRID`): seconds.
* ``thorough``: what the benchmarks on both dev sets (docs/quality.md, "Defaults chosen on two
  domains") show is worth minutes. To extend it (a feature set of layer taps for the pooled kinds, a
  head fine-tuned from a cached top input), add a grid to :data:`THOROUGH_GRIDS`; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

# The logistic-regression path as the default sweep has it (square-rooted features, C 1e-4..1 in half
# decades, one warm-started path, the pick by cross-validation when val is small) and four SGD linear
# heads. Measured on both dev sets (docs/quality.md): power 1 and C beyond 1e-4..1 picked nothing better
# (the picks sat at C 0.001-0.00316, power 0.5 and 1 within a standard error), and the MLPs, picked on
# val, came out 1.3-2 points below the cross-validated logistic regression on test: gone, which keeps a
# thorough sweep within a tenth of the fine-tuning recipe's time.
THOROUGH_GRIDS: list[dict[str, Any]] = [
    {"head": ["logreg"], "power": [0.5]},
    # SGD linear heads: a few learning rates and weight decays, stacked (one pass over the data)
    {"head": ["linear"], "lr": [1e-3, 3e-3], "weight_decay": [0.0, 1e-2]},
    # no map heads: on both dev sets they tied the pooled heads at 10-100x their cost (docs/quality.md)
]
# Grids a built-in sweep adds only when the cache holds what they read (dataset name -> grid): the
# logistic-regression path on the pooled vectors and the layer taps together. Measured on CIFAR-10 dev
# with --views 2 (docs/quality.md, "--sweep thorough on CIFAR-10 dev with taps"): picked by CV, 0.770
# test accuracy against scikit-learn's LR 0.728 and the default's 0.734, the whole sweep 78 s on 2
# quiet cores; on ants/bees (220 training images) its CV mean was below the pooled path's and the pick
# kept the default's head. No top head: fine-tuned from its linear probe it reached 0.72 val on
# CIFAR-10 dev, below both paths' CV means, at minutes a head.
THOROUGH_IF_CACHED: dict[str, dict[str, Any]] = {
    "taps": {"head": ["logreg"], "power": [0.5], "features": ["taps"]},
}


@dataclass(frozen=True)
class BuiltinSweep:
    """``grids``: grid tables as a sweep file's ``[[grid]]`` (missing keys take the default grid's
    values); ``settings``: sweep-file settings (``epochs``, ``patience``, ...); ``help``: one line."""

    name: str
    help: str
    grids: list[dict[str, Any]] = field(default_factory=lambda: [{}])
    settings: dict[str, Any] = field(default_factory=dict)
    if_cached: dict[str, dict[str, Any]] = field(default_factory=dict)

    def grids_for(self, datasets: Collection[str]) -> list[dict[str, Any]]:
        """The grids to run on a cache whose shards hold ``datasets`` (``schema.row_layout``'s names):
        :attr:`grids`, then each :attr:`if_cached` grid whose dataset is there."""
        return [*self.grids, *(g for name, g in self.if_cached.items() if name in datasets)]


BUILTIN_SWEEPS: dict[str, BuiltinSweep] = {
    s.name: s
    for s in (
        BuiltinSweep(
            "default",
            "what no grid option gives, seconds",
        ),
        BuiltinSweep(
            "thorough",
            "what the benchmarks on two domains show is worth minutes",
            THOROUGH_GRIDS,
            if_cached=THOROUGH_IF_CACHED,
        ),
    )
}


def heads(sweep: BuiltinSweep, expand: Callable[[dict[str, Any]], list[Any]]) -> dict[str, int]:
    """How many heads of each kind ``sweep`` trains (kind -> count, in grid order), its grids expanded by
    ``expand`` (:func:`featcache.trainer.sweep.expand`, which reads this module: passed in)."""
    out: dict[str, int] = {}
    for config in dict.fromkeys(c for g in sweep.grids for c in expand(g)):
        out[config.kind] = out.get(config.kind, 0) + 1
    return out


def builtin_help(expand: Callable[[dict[str, Any]], list[Any]]) -> str:
    """The built-in sweeps as one sentence for ``--help``: ``name (what it is: its heads); ...``."""

    def extra(s: BuiltinSweep) -> str:
        counts = [(name, len(expand(g))) for name, g in s.if_cached.items()]
        return "".join(f"; {n} more on a cache with {name}" for name, n in counts)

    return "; ".join(
        f"{s.name} ({s.help}: {', '.join(f'{n} {k}' for k, n in heads(s, expand).items())} heads{extra(s)})"
        for s in BUILTIN_SWEEPS.values()
    )


def builtin(name: Any) -> BuiltinSweep | None:
    """The built-in sweep called ``name`` (a str or a Path of one part), or None."""
    text = str(name)
    return BUILTIN_SWEEPS.get(text) if "/" not in text and "\\" not in text else None
