"""The training loop: every head of a sweep trained in one pass over the cache, early stopping per
head, and each head's best epoch restored at the end. Closed-form heads (``logreg``, see ``kinds``)
are fitted once before the epochs, on every train view, and take no part in them.

Heads are grouped by kind and width (one trainable group each, see ``engine.make_group``); each epoch
draws one shuffled batch order, and every batch is read once and fed to every group. After each epoch
every head is evaluated on val; a head that has not improved its val accuracy (ties: a lower val loss)
for ``patience`` epochs is frozen, and at the end each head gets back the weights of its best epoch.
On a cache with views (``Settings.views``), each epoch feeds every train row to the pooled heads
through one of its views, and at the end they are also scored with test-time augmentation (see
``views``). Nothing here writes files: see ``rundir``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from .data import Dataset, standardizer
from .kinds import closed_form
from .settings import Settings
from .sweep import HeadConfig
from .views import accuracy as view_accuracy
from .views import epoch_views, pick_views, tta_probs

EVAL_BATCH = {"pooled": 4096, "maps": 256}  # rows per evaluation batch, by input
SPLITS = ("train", "val", "test")


def batches(x: np.ndarray, y: np.ndarray, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for i in range(0, len(y), size):
        yield x[i : i + size], y[i : i + size]


@dataclass
class GroupState:
    """One group of ``k`` heads and what the loop tracks for it. ``inputs``: split -> the group's
    inputs (standardised pooled ``(n, C)`` float32, or maps ``(n, h, w, C)`` float16); the ``best_*``
    and ``stale`` arrays are ``(k,)``; ``history[i]`` holds head ``i``'s per-epoch metrics."""

    group: Any
    inputs: dict[str, np.ndarray]
    eval_batch: int
    views: dict[str, np.ndarray] | None = None  # split -> standardised (n, V, C) views, for pooled groups
    history: list[list[dict[str, float]]] = field(default_factory=list)
    best_acc: np.ndarray = field(default_factory=lambda: np.zeros(0))
    best_loss: np.ndarray = field(default_factory=lambda: np.zeros(0))
    best_epoch: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    stale: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    seconds: float = 0.0

    def __post_init__(self) -> None:
        k = self.group.k
        self.history = [[] for _ in range(k)]
        self.best_acc, self.best_loss = np.full(k, -1.0), np.full(k, np.inf)
        self.best_epoch, self.stale = np.zeros(k, int), np.zeros(k, int)

    @property
    def closed_form(self) -> bool:
        return getattr(self.group, "closed_form", False)

    def active(self, patience: int) -> np.ndarray:
        """``(k,)`` bool: the heads still training (fewer than ``patience`` epochs without progress;
        never a closed-form head, fitted before the epochs)."""
        return np.zeros(self.group.k, bool) if self.closed_form else self.stale < patience

    def fit(self, y_train: np.ndarray, y_val: np.ndarray) -> None:
        """Fit a closed-form group on every train view (or the pooled vectors) and record it as its
        epoch 1."""
        t0 = time.perf_counter()
        x = self.views["train"] if self.views is not None else self.inputs["train"][:, None]
        self.group.fit(x, y_train)
        train = np.stack(self.evaluate("train", y_train))
        self.end_epoch(1, np.ones(self.group.k, bool), train, self.evaluate("val", y_val))
        self.seconds += time.perf_counter() - t0

    def evaluate(self, split: str, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean loss and accuracy ``(k,)`` of every head on ``split`` (no dropout)."""
        return self.group.evaluate(batches(self.inputs[split], y, self.eval_batch))

    def probabilities(self, split: str, head: int) -> np.ndarray:
        """Head ``head``'s class probabilities ``(n, n_classes)`` on ``split``."""
        return self.predict_all(self.inputs[split])[head]

    def predict_all(self, x: np.ndarray) -> np.ndarray:
        """Every head's class probabilities ``(k, n, n_classes)`` on inputs ``x``."""
        parts = [self.group.predict(x[i : i + self.eval_batch]) for i in range(0, len(x), self.eval_batch)]
        return np.concatenate(parts, axis=1) if parts else np.zeros((self.group.k, 0, self.group.n_classes))

    def tta_probabilities(self, split: str) -> np.ndarray | None:
        """Every head's mean class probabilities over the views ``(k, n, n_classes)``, or None without views."""
        return None if self.views is None else tta_probs(self.predict_all, self.views[split])

    def end_epoch(self, epoch: int, active: np.ndarray, train: np.ndarray, val: tuple[np.ndarray, np.ndarray]) -> None:
        """Record epoch ``epoch``: ``train`` ``(2, k)`` mean loss and accuracy, ``val`` (loss, acc);
        heads in ``active`` that improved keep these weights as their best."""
        vloss, vacc = val
        improved = active & ((vacc > self.best_acc) | ((vacc == self.best_acc) & (vloss < self.best_loss)))
        self.group.keep_best(improved)
        self.best_acc = np.where(improved, vacc, self.best_acc)
        self.best_loss = np.where(improved, vloss, self.best_loss)
        self.best_epoch = np.where(improved, epoch, self.best_epoch)
        self.stale = np.where(improved, 0, self.stale + active)
        for k in np.flatnonzero(active):
            self.history[k].append(
                {
                    "epoch": epoch,
                    "train_loss": float(train[0, k]),
                    "train_acc": float(train[1, k]),
                    "val_loss": float(vloss[k]),
                    "val_acc": float(vacc[k]),
                }
            )


@dataclass
class TrainOutput:
    """``heads``: one JSON-ready row per head (group order); ``states``: the trained groups (best
    weights restored); ``mean_std``: the train split's pooled mean and std ``(C,)`` or None."""

    heads: list[dict[str, Any]]
    states: list[GroupState]
    mean_std: tuple[np.ndarray, np.ndarray] | None

    def locate(self, name: str) -> tuple[GroupState, int]:
        """The group holding head ``name`` and its position in it."""
        return next((s, k) for s in self.states for k, c in enumerate(s.group.configs) if c.name == name)


def _inputs(ds: Dataset, reads_maps: bool, mean_std: tuple[np.ndarray, np.ndarray] | None) -> dict[str, np.ndarray]:
    out = {}
    for name in SPLITS:
        s = getattr(ds, name)
        out[name] = s.maps if reads_maps else s.pooled if mean_std is None else (s.pooled - mean_std[0]) / mean_std[1]
    return out


def _views(ds: Dataset, mean_std: tuple[np.ndarray, np.ndarray] | None) -> dict[str, np.ndarray] | None:
    """Every split's standardised views ``(n, V, C)``, or None when ``ds`` has none loaded."""
    if ds.train.views is None:
        return None
    return {
        n: v if mean_std is None else (v - mean_std[0]) / mean_std[1]
        for n in SPLITS
        if (v := getattr(ds, n).views) is not None
    }


def _build_states(
    ds: Dataset,
    configs: list[HeadConfig],
    seed: int,
    mean_std: tuple[np.ndarray, np.ndarray] | None,
    views: dict[str, np.ndarray] | None = None,
    raw_views: dict[str, np.ndarray] | None = None,
) -> list[GroupState]:
    """One state per group; closed-form groups read the pooled vectors and views as cached
    (``raw_views``), SGD pooled groups the standardised ones."""
    from .engine import make_group

    by_group: dict[tuple[str, int], list[HeadConfig]] = {}
    for c in configs:
        by_group.setdefault(c.group, []).append(c)
    in_dim, n_classes = ds.train.pooled.shape[1], len(ds.classes)
    states = []
    for g, cs in enumerate(by_group.values()):
        maps, raw = cs[0].reads_maps, closed_form(cs[0].kind)
        group = make_group(cs, in_dim, n_classes, seed + g)
        inputs = _inputs(ds, maps, None if raw else mean_std)
        group_views = None if maps else raw_views if raw else views
        states.append(GroupState(group, inputs, EVAL_BATCH["maps" if maps else "pooled"], group_views))
    return states


def _train_epoch(
    states: list[GroupState],
    active: list[np.ndarray],
    y: np.ndarray,
    order: np.ndarray,
    settings: Settings,
    step: int,
    bar: tqdm,
    which: np.ndarray | None = None,
) -> tuple[list[np.ndarray], int]:
    """One pass over ``order`` in batches; returns each group's ``(2, k)`` mean train loss and accuracy
    and the next step number (dropout seeds are ``(seed, step)``). ``which`` ``(n,)``: the view each
    train row goes through in a group with views (:func:`featcache.trainer.views.epoch_views`)."""
    sums = [np.zeros((2, s.group.k)) for s in states]
    for b in range(0, len(order), settings.batch_size):
        idx = np.sort(order[b : b + settings.batch_size])
        for s, on, total in zip(states, active, sums, strict=True):
            if on.any():
                t0 = time.perf_counter()
                x = s.inputs["train"][idx] if s.views is None else pick_views(s.views["train"], idx, which)
                loss, correct = s.group.train_step(x, y[idx], on, (settings.seed, step))
                s.seconds += time.perf_counter() - t0
                total += [loss * len(idx), correct]
        step += 1
        bar.update(1)
    return [t / len(order) for t in sums], step


def _finish(s: GroupState, y_val: np.ndarray, y_test: np.ndarray) -> list[dict[str, Any]]:
    """Restore each head's best weights and describe it, with its test metrics (None without test
    rows) and, in a group with views, its val and test accuracy with TTA and whether val prefers it."""
    s.group.restore_best()
    tloss, tacc = s.evaluate("test", y_test)
    has_test = len(y_test) > 0
    tta = {}
    if s.views is not None:  # mean probabilities over every view; trusted where better on val
        tta = {n: view_accuracy(s.tta_probabilities(n), y) for n, y in (("val", y_val), ("test", y_test)) if len(y)}
    return [
        {
            "name": cfg.name,
            "config": cfg.to_json(),
            "epochs": s.history[k],
            "best_epoch": int(s.best_epoch[k]),
            "val_acc": float(s.best_acc[k]),
            "val_loss": float(s.best_loss[k]),
            "test_acc": float(tacc[k]) if has_test else None,
            "test_loss": float(tloss[k]) if has_test else None,
            "group_wall_seconds": round(s.seconds, 3),
            "group_size": s.group.k,
            "views": s.views["train"].shape[1] if tta else 1,
            "val_acc_tta": float(tta["val"][k]) if tta else None,
            "test_acc_tta": float(tta["test"][k]) if "test" in tta else None,
            "use_tta": bool(tta) and bool(tta["val"][k] > s.best_acc[k]),  # chosen on val only
        }
        for k, cfg in enumerate(s.group.configs)
    ]


def train(ds: Dataset, configs: list[HeadConfig], settings: Settings, progress: bool = True) -> TrainOutput:
    """Train every head of ``configs`` on ``ds`` (with maps loaded when a head reads them)."""
    from .engine import tf

    tf.config.experimental.enable_op_determinism()
    tf.random.set_seed(settings.seed)
    mean_std = standardizer(ds.train) if settings.standardize else None
    views = _views(ds, mean_std) if settings.views else None
    n_views = 1 if views is None else views["train"].shape[1]
    states = _build_states(ds, configs, settings.seed, mean_std, views, _views(ds, None) if settings.views else None)
    for s in states:
        if s.closed_form:
            s.fit(ds.train.y, ds.val.y)
    rng = np.random.default_rng(settings.seed)
    n_batches = -(-len(ds.train) // settings.batch_size)
    bar = tqdm(total=settings.epochs * n_batches, unit="batch", disable=not progress, leave=False, dynamic_ncols=True)
    step = 0
    try:
        for epoch in range(1, settings.epochs + 1):
            active = [s.active(settings.patience) for s in states]
            if not any(a.any() for a in active):
                break
            which = epoch_views(len(ds.train), n_views, settings.seed, epoch) if views else None
            train_means, step = _train_epoch(
                states, active, ds.train.y, rng.permutation(len(ds.train)), settings, step, bar, which
            )
            for s, on, means in zip(states, active, train_means, strict=True):
                t0 = time.perf_counter()
                s.end_epoch(epoch, on, means, s.evaluate("val", ds.val.y))
                s.seconds += time.perf_counter() - t0
            bar.set_postfix(epoch=epoch, best_val=f"{max(s.best_acc.max() for s in states):.3f}")
    finally:
        bar.close()
    return TrainOutput([row for s in states for row in _finish(s, ds.val.y, ds.test.y)], states, mean_std)
