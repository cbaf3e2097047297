"""``featcache-train runs``: every sweep under a runs folder, newest first.

A sweep is a run directory ``YYYYmmdd-HHMMSS[-N]`` (format 2, docs/run-format.md; named by
:func:`featcache.trainer.rundir.commit`), read through :func:`~featcache.trainer.rundir.load_results`.
Any other folder is listed as unfinished with the reason: a hidden staging folder
(``.featcache-run-<pid>-...``) is a sweep still running, or one killed whose leftovers the next sweep
removes; a folder without a readable ``results.json`` is not a run (a run of format 1 says so).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..shared.cache import describe, pid_alive
from ..shared.errors import FeatcacheError
from .rundir import RESULTS, STAGING_PREFIX, load_results, staging_pid

RUN_NAME_FORMAT = "%Y%m%d-%H%M%S"


def _started(run_dir: Path) -> str:
    """When the sweep started: from the directory's name, else its modification time (local, ISO)."""
    try:
        t = time.strptime(run_dir.name[:15], RUN_NAME_FORMAT)
    except ValueError:
        t = time.localtime(run_dir.stat().st_mtime)
    return time.strftime("%Y-%m-%d %H:%M:%S", t)


def _staging_state(d: Path) -> str:
    """Why a staging folder is there: a sweep still running, or the leftovers of one killed."""
    pid = staging_pid(d)
    if pid is not None and pid_alive(pid):
        return f"a sweep in progress (process {pid})"
    return "left by a killed sweep; the next sweep in this runs folder removes it"


def list_runs(runs_dir: str | Path, cache: str | Path | None = None) -> list[dict[str, Any]]:
    """One dict per run directory under ``runs_dir``, newest first: ``run``, ``started``, ``finished``
    and, for finished sweeps, ``cache``, ``fingerprint`` (one line), ``weights_sha256``,
    ``random_weights``, ``heads``, ``best``, ``val_acc``, ``test_acc``, ``wall_seconds`` (``cache`` and
    the weights: the best head's, in a sweep on several caches, whose paths ``caches`` lists). With
    ``cache``, only the sweeps trained on that cache (compared as resolved paths; one of several counts)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise FeatcacheError(f"{runs_dir}: no such runs folder (featcache-train writes one sweep per sub-folder)")
    want = str(Path(cache).resolve()) if cache is not None else None
    out = []
    for d in sorted((p for p in runs_dir.iterdir() if p.is_dir()), key=lambda p: p.name, reverse=True):
        entry: dict[str, Any] = {"run": str(d), "started": _started(d), "finished": (d / RESULTS).is_file()}
        if d.name.startswith(STAGING_PREFIX):
            entry.update(finished=False, problem=_staging_state(d))
        elif entry["finished"]:
            try:
                r = load_results(d)
            except FeatcacheError as exc:
                entry.update(finished=False, problem=str(exc))
            else:
                best = next(h for h in r["heads"] if h["name"] == r["best"])
                fingerprint = r["cache"]["fingerprint"]
                entry.update(
                    cache=r["cache"]["path"],
                    fingerprint=describe(fingerprint),
                    weights_sha256=fingerprint.get("weights_sha256"),
                    random_weights=bool(r.get("random_weights")),
                    heads=len(r["heads"]),
                    best=r["best"],
                    val_acc=best["val_acc"],
                    test_acc=best["test_acc"],
                    wall_seconds=r["wall_seconds"],
                )
                if "caches" in r:
                    entry["caches"] = [c["path"] for c in r["caches"].values()]
        if want is not None and want not in entry.get("caches", [entry.get("cache")]):
            continue
        out.append(entry)
    out.sort(key=lambda e: e["started"], reverse=True)
    return out


def format_runs(runs: list[dict[str, Any]]) -> str:
    """The list as a table for people."""
    lines = [f"{'started':<19}  {'heads':>5}  {'val acc':>7}  {'test acc':>8}  {'wall s':>7}  best head / cache"]
    for e in runs:
        if not e["finished"]:
            why = e.get("problem", "no results.json: stopped, or still running")
            lines.append(f"{e['started']:<19}  {'-':>5}  {'-':>7}  {'-':>8}  {'-':>7}  UNFINISHED {e['run']} ({why})")
            continue
        test = "-" if e["test_acc"] is None else f"{e['test_acc']:.4f}"
        weights = "RANDOM weights" if e["random_weights"] else f"weights {str(e['weights_sha256'])[:12]}"
        lines.append(
            f"{e['started']:<19}  {e['heads']:>5}  {e['val_acc']:>7.4f}  {test:>8}  {e['wall_seconds']:>7.1f}  "
            f"{e['best']}\n{'':<55}{e['cache']} ({weights}) -> {e['run']}"
            + (f"\n{'':<55}(best of {len(e['caches'])} caches: {', '.join(e['caches'])})" if "caches" in e else "")
        )
    return "\n".join(lines)
