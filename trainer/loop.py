"""The training loop: every head of a sweep trained in one pass over the cache, early stopping per
head, and each head's best epoch restored at the end. Closed-form heads (``logreg``, see ``heads``)
are fitted once before the epochs, on every train view, and take no part in them; they need every
train row in memory, so a streamed sweep leaves them out and says so.

Heads are grouped by kind and width (one trainable group each, see ``engine.make_group``); each epoch
draws one shuffled batch order, and every batch is read once and fed to every group. After each epoch
every head is evaluated on val; a head that has not improved its val accuracy (ties: a lower val loss)
for ``patience`` epochs is frozen, and at the end each head gets back the weights of its best epoch.
On a cache with views (``Settings.views``), each epoch feeds every train row to the pooled heads
through one of its views, and at the end they are also scored with test-time augmentation (see
``views``). Batches come from each split's :class:`~featcache.trainer.feed.Feed`, held in memory or
streamed from the shards, the same batches either way. Nothing here writes files: see ``rundir``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from ..shared.errors import FeatcacheError
from .data import Dataset
from .feed import Batch, Feed, Need, asked, standardizer
from .heads import closed_form
from .settings import Settings
from .sweep import HeadConfig
from .views import accuracy as view_accuracy
from .views import epoch_views, pick_views, tta_probs

EVAL_BATCH = {"pooled": 4096, "maps": 64}  # rows per evaluation batch, by input
SPLITS = ("train", "val", "test")


def batches(x: np.ndarray, y: np.ndarray, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for i in range(0, len(y), size):
        yield x[i : i + size], y[i : i + size]


@dataclass
class GroupState:
    """One group of ``k`` heads and what the loop tracks for it. ``feeds``: split -> its batches (in
    memory or streamed, :class:`~featcache.trainer.feed.Feed`, shared by the groups), of which the
    group reads the maps or the pooled vectors (``n_views`` > 1: and the views, for TTA); the
    ``best_*`` and ``stale`` arrays are ``(k,)``; ``history[i]`` holds head ``i``'s per-epoch metrics."""

    group: Any
    feeds: dict[str, Feed]
    eval_batch: int
    reads_maps: bool = False
    n_views: int = 1  # views per row this (pooled) group trains on and is scored with TTA on; 1: none
    # the columns of the feeds' pooled vectors this group reads (None: all): the pooled maps' C when the
    # feeds carry the layer taps after them and the group's feature set is "pooled"
    cols: int | None = None
    history: list[list[dict[str, float]]] = field(default_factory=list)
    best_acc: np.ndarray = field(default_factory=lambda: np.zeros(0))
    best_loss: np.ndarray = field(default_factory=lambda: np.zeros(0))
    best_epoch: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    stale: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    seconds: float = 0.0
    cv: Any = None  # a closed-form group picked by cross-validation: its trainer.cv.CVResult

    def __post_init__(self) -> None:
        k = self.group.k
        self.history = [[] for _ in range(k)]
        self.best_acc, self.best_loss = np.full(k, -1.0), np.full(k, np.inf)
        self.best_epoch, self.stale = np.zeros(k, int), np.zeros(k, int)

    @property
    def need(self) -> Need:
        """What the group reads of a split's rows when it is evaluated."""
        return Need(pooled=False, maps=True) if self.reads_maps else Need(pooled=True)

    @property
    def closed_form(self) -> bool:
        return getattr(self.group, "closed_form", False)

    def x(self, batch: Batch) -> np.ndarray:
        """The group's inputs in ``batch``: maps ``(b, h, w, C)``, standardised pooled ``(b, C)``, or for
        a closed-form group (which normalises its own features) the pooled vectors as cached."""
        return asked(batch.maps) if self.reads_maps else self.as_cached(asked(batch.pooled))

    def as_cached(self, x: np.ndarray) -> np.ndarray:
        """``x`` (pooled vectors or views, as the feeds give them) for this group: its columns
        (:attr:`cols`), with the standardisation undone for a closed-form group."""
        mean_std = self.feeds["train"].mean_std
        x = x * mean_std[1] + mean_std[0] if self.closed_form and mean_std is not None else x
        return x if self.cols is None else x[..., : self.cols]

    def active(self, patience: int) -> np.ndarray:
        """``(k,)`` bool: the heads still training (fewer than ``patience`` epochs without progress;
        never a closed-form head, fitted before the epochs)."""
        return np.zeros(self.group.k, bool) if self.closed_form else self.stale < patience

    def fit(self, train: Any) -> None:
        """Fit a closed-form group on every train view (or the pooled vectors) of ``train`` (the
        in-memory :class:`~featcache.trainer.data.Split`) and record it as its epoch 1."""
        t0 = time.perf_counter()
        x = train.views if self.n_views > 1 else train.pooled[:, None]
        self.group.fit(x if self.cols is None else x[..., : self.cols], train.y)
        self.end_epoch(1, np.ones(self.group.k, bool), np.stack(self.evaluate("train")), self.evaluate("val"))
        self.seconds += time.perf_counter() - t0

    def fit_cv(self, train: Any, val: Any, folds: int) -> None:
        """Cross-validate a closed-form group over the rows of ``train`` and ``val`` (in-memory splits)
        in ``folds`` folds, then fit it on all of them (:mod:`~featcache.trainer.cv`); its epoch 1 records
        the train rows' metrics and the val rows' out-of-fold ones."""
        from .cv import cross_validate
        from .engine import make_group

        t0 = time.perf_counter()
        parts = [s.views if self.n_views > 1 else s.pooled[:, None] for s in (train, val)]
        x, y = np.concatenate(parts), np.concatenate([train.y, val.y])
        x = x if self.cols is None else x[..., : self.cols]  # a pooled group beside taps groups: its columns
        g = self.group
        ids = np.concatenate([train.id, val.id])
        self.cv = cross_validate(lambda: make_group(g.configs, g.in_dim, g.n_classes, 0), x, y, ids, folds, len(val))
        g.fit(x, y, warm=self.cv.last)  # the head kept, started from the last fold's solutions
        picked = np.take_along_axis(self.cv.val, np.broadcast_to(val.y[None, :, None], (g.k, len(val.y), 1)), 2)
        val_metrics = -np.log(np.maximum(picked[..., 0], 1e-12)).mean(1), view_accuracy(self.cv.val, val.y)
        self.end_epoch(1, np.ones(g.k, bool), np.stack(self.evaluate("train")), val_metrics)
        self.seconds += time.perf_counter() - t0

    def evaluate(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Mean loss and accuracy ``(k,)`` of every head on ``split`` (no dropout)."""
        return self.group.evaluate((self.x(b), b.y) for b in self.feeds[split].eval_batches(self.eval_batch, self.need))

    def probabilities(self, split: str, head: int) -> np.ndarray:
        """Head ``head``'s class probabilities ``(n, n_classes)`` on ``split``."""
        return self.predictions(split)[head]

    def predictions(self, split: str) -> np.ndarray:
        """Every head's class probabilities ``(k, n, n_classes)`` on ``split`` (val of a cross-validated
        group: the out-of-fold ones)."""
        if split == "val" and self.cv is not None:
            return self.cv.val
        parts = [self.group.predict(self.x(b)) for b in self.feeds[split].eval_batches(self.eval_batch, self.need)]
        return np.concatenate(parts, axis=1) if parts else np.zeros((self.group.k, 0, self.group.n_classes))

    def predict_all(self, x: np.ndarray) -> np.ndarray:
        """Every head's class probabilities ``(k, n, n_classes)`` on inputs ``x`` (in memory)."""
        parts = [self.group.predict(x[i : i + self.eval_batch]) for i in range(0, len(x), self.eval_batch)]
        return np.concatenate(parts, axis=1) if parts else np.zeros((self.group.k, 0, self.group.n_classes))

    def tta_probabilities(self, split: str) -> np.ndarray | None:
        """Every head's mean class probabilities over the views ``(k, n, n_classes)``, or None without views."""
        if self.n_views == 1:
            return None
        if split == "val" and self.cv is not None:
            return self.cv.val_tta
        need = Need(pooled=False, views=self.n_views)
        batches = self.feeds[split].eval_batches(self.eval_batch, need)
        parts = [tta_probs(self.group.predict, self.as_cached(asked(b.views))) for b in batches]
        return np.concatenate(parts, axis=1) if parts else np.zeros((self.group.k, 0, self.group.n_classes))

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
    states: list[Any]  # GroupState, and TopState for top heads (trainer.heads.top)
    mean_std: tuple[np.ndarray, np.ndarray] | None

    def locate(self, name: str) -> tuple[GroupState, int]:
        """The group holding head ``name`` and its position in it."""
        return next((s, k) for s in self.states for k, c in enumerate(s.group.configs) if c.name == name)


def make_feeds(ds: Dataset, configs: list[HeadConfig], settings: Settings) -> dict[str, Feed]:
    """Every split's :class:`Feed`, carrying what the heads of ``configs`` read: pooled vectors (and
    views, when ``settings.views`` and the cache has them) for pooled heads, maps for map heads."""
    pooled = any(not c.reads_maps for c in configs)
    maps = any(c.reads_maps for c in configs)
    n_views = 1
    if pooled and settings.views:
        n_views = ds.train.views.shape[1] if ds.train.views is not None else 1
        if ds.streamed and ds.cache is not None:
            n_views = ds.cache.views
    need = Need(pooled=pooled, views=n_views, maps=maps)
    return {n: Feed(ds.cache, n, getattr(ds, n), need, ds.streamed, settings.seed, settings.batch_size) for n in SPLITS}


def _build_states(ds: Dataset, configs: list[HeadConfig], seed: int, feeds: dict[str, Feed]) -> list[GroupState]:
    from .engine import make_group

    by_group: dict[tuple[Any, ...], list[HeadConfig]] = {}
    for c in configs:
        by_group.setdefault(c.group, []).append(c)
    n_views = feeds["train"].need.views
    states = []
    for g, cs in enumerate(by_group.values()):
        maps = cs[0].reads_maps
        width = ds.channels if maps else ds.width(cs[0].features)
        group = make_group(cs, width, len(ds.classes), seed + g)
        batch = EVAL_BATCH["maps" if maps else "pooled"]
        cols = width if ds.taps and not maps and width < ds.channels + ds.taps else None
        states.append(GroupState(group, feeds, batch, maps, 1 if maps else n_views, cols))
    return states


def _train_epoch(
    states: list[GroupState],
    active: list[np.ndarray],
    feed: Feed,
    epoch: int,
    settings: Settings,
    step: int,
    bar: tqdm,
    which: np.ndarray | None = None,
) -> tuple[list[np.ndarray], int]:
    """One pass over the train split in epoch ``epoch``'s order; returns each group's ``(2, k)`` mean
    train loss and accuracy and the next step number (dropout seeds are ``(seed, step)``). ``which``
    ``(n,)``: the view each train row goes through in a group with views
    (:func:`featcache.trainer.views.epoch_views`)."""
    sums = [np.zeros((2, s.group.k)) for s in states]
    for batch in feed.train_batches(epoch):
        picked = None if which is None else which[batch.pos]  # (b,) each row's view this epoch
        for s, on, total in zip(states, active, sums, strict=True):
            if on.any():
                t0 = time.perf_counter()
                if s.n_views == 1:
                    x = s.x(batch)
                else:
                    x = s.as_cached(pick_views(asked(batch.views), np.arange(len(batch.pos)), asked(picked)))
                loss, correct = s.group.train_step(x, batch.y, on, (settings.seed, step))
                s.seconds += time.perf_counter() - t0
                total += [loss * len(batch.pos), correct]
        step += 1
        bar.update(1)
    return [t / len(feed) for t in sums], step


def _finish(s: GroupState, y_val: np.ndarray, y_test: np.ndarray) -> list[dict[str, Any]]:
    """Restore each head's best weights and describe it, with its test metrics (None without test
    rows) and, in a group with views, its val and test accuracy with TTA and whether val prefers it
    (a cross-validated group: whether the CV mean prefers it; its rows carry ``cv``)."""
    s.group.restore_best()
    tloss, tacc = s.evaluate("test")
    has_test = len(y_test) > 0
    tta = {}
    if s.n_views > 1:  # mean probabilities over every view; trusted where better on val
        tta = {
            n: view_accuracy(asked(s.tta_probabilities(n)), y) for n, y in (("val", y_val), ("test", y_test)) if len(y)
        }
    rows = [
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
            "views": s.n_views if tta else 1,
            "val_acc_tta": float(tta["val"][k]) if tta else None,
            "test_acc_tta": float(tta["test"][k]) if "test" in tta else None,
            "use_tta": bool(tta) and bool(tta["val"][k] > s.best_acc[k]),  # chosen on val only
        }
        for k, cfg in enumerate(s.group.configs)
    ]
    if s.cv is not None:
        for k, row in enumerate(rows):
            row["cv"] = cv = s.cv.row(k)
            row["use_tta"] = bool(tta) and cv["acc_tta"] > cv["acc"]  # chosen on the CV means
    return rows


def train(ds: Dataset, configs: list[HeadConfig], settings: Settings, progress: bool = True) -> TrainOutput:
    """Train every head of ``configs`` on ``ds`` (with maps loaded when a head reads them, unless
    ``ds.streamed``: then every epoch reads its inputs from the shards)."""
    from .engine import tf

    tf.config.experimental.enable_op_determinism()
    tf.random.set_seed(settings.seed)
    if ds.streamed and any(closed_form(c.kind) for c in configs):
        left = [c for c in configs if closed_form(c.kind)]
        ds.notes.append(f"{len(left)} closed-form heads ({left[0].kind}) need every train row in memory: left out")
        configs = [c for c in configs if not closed_form(c.kind)]
        if not configs:
            raise FeatcacheError(
                f"{ds.cache.path if ds.cache is not None else 'the cache'}: its inputs are streamed and the sweep "
                "has only closed-form heads, which need every train row in memory; add SGD heads (head=...) "
                "or raise max_memory_gb"
            )
    feeds = make_feeds(ds, configs, settings)
    need = feeds["train"].need
    mean_std = standardizer(feeds["train"]) if settings.standardize else None
    for f in feeds.values():
        f.mean_std = mean_std
    states = _build_states(ds, configs, settings.seed, feeds)
    from .cv import folds_for

    folds = folds_for(settings.folds, len(ds.val), len(ds.train) + len(ds.val))
    for s in states:
        if s.closed_form and folds:
            s.fit_cv(ds.train, ds.val, folds)
        elif s.closed_form:
            s.fit(ds.train)
    n_batches = -(-len(ds.train) // settings.batch_size)
    bar = tqdm(total=settings.epochs * n_batches, unit="batch", disable=not progress, leave=False, dynamic_ncols=True)
    step = 0
    try:
        for epoch in range(1, settings.epochs + 1):
            active = [s.active(settings.patience) for s in states]
            if not any(a.any() for a in active):
                break
            which = epoch_views(len(ds.train), need.views, settings.seed, epoch) if need.views > 1 else None
            train_means, step = _train_epoch(states, active, feeds["train"], epoch, settings, step, bar, which)
            for s, on, means in zip(states, active, train_means, strict=True):
                t0 = time.perf_counter()
                s.end_epoch(epoch, on, means, s.evaluate("val"))
                s.seconds += time.perf_counter() - t0
            bar.set_postfix(epoch=epoch, best_val=f"{max(s.best_acc.max() for s in states):.3f}")
    finally:
        bar.close()
    return TrainOutput([row for s in states for row in _finish(s, ds.val.y, ds.test.y)], states, mean_std)
