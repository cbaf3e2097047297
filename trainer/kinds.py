"""The names ``data.py`` and ``html_report.py`` import from the head-kind registry, which now lives in
:mod:`featcache.trainer.heads` (one module per kind). Kept only so that those two files, changed on
other branches at the moment, need no edit; import from ``heads`` in new code, and remove this module
once they do."""

from __future__ import annotations

from .heads import HEAD_KINDS, TAPS, closed_form, reads_maps

__all__ = ["HEAD_KINDS", "TAPS", "closed_form", "reads_maps"]
