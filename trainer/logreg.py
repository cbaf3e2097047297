"""``head_proba``, which ``html_report.py`` imports from here: the logistic-regression head now lives in
:mod:`featcache.trainer.heads.logreg`. Kept only so that ``html_report.py``, changed on another branch
at the moment, needs no edit; import from ``heads.logreg`` in new code, and remove this module once it does."""

from __future__ import annotations

from .heads.logreg import head_proba

__all__ = ["head_proba"]
