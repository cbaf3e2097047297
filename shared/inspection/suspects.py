"""Rows whose given label looks wrong, and classes that sit on top of each other, from pooled vectors.

Numpy only (no TensorFlow, no scikit-learn), so ``featcache-inspect`` can run it anywhere.

**Label noise** follows the confident-learning idea (Northcutt, Jiang and Chuang, 2021): every labelled
row gets the probability of its *given* label from a classifier that never saw that row. Here the
classifier is a multinomial logistic regression with a strong ridge, cross-validated over ``folds``
stratified folds, on the pooled vectors standardised and projected on their top ``PCA_DIMS`` principal
components (the fit is ~10x cheaper, and dropping the minor directions regularises it). A row is the
more suspect the lower that out-of-fold probability; its suggested label is the classifier's most
probable other class. On natural images (CIFAR-10 through MobileNetV2, 5% of labels flipped) it ranks
~78% of the flipped rows in its top 10% at 1,000 rows and ~84% at 5,000, where a plain 10-nearest-
neighbour disagreement score finds ~70% and ~71% (docs/report.md, bench/label_noise.py).

**Class overlap**: the cosine between class centroids (of the vectors minus the global mean, so that
the all-positive ReLU features do not make every pair look alike) and the confusion matrix of a
nearest-centroid classifier: pairs of classes that it mixes up are pairs the features hardly separate.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_FOLDS = 5
PCA_DIMS = 128
PCA_FIT_ROWS = 5000  # principal components are estimated on at most this many rows
SUBSPACE_OVERSAMPLE = 16  # extra directions and rounds of the randomised eigensolver
SUBSPACE_ROUNDS = 4
RIDGE = 400.0  # ridge on the weights: RIDGE / rows, per mean cross-entropy (tuned on CIFAR-10, 1,000-5,000 rows)
ITERATIONS = 150  # accelerated gradient steps per fold
STD_FLOOR = 1e-6  # ReLU features have channels that are zero everywhere: those stay zero
# Labelled rows the classifier is cross-validated on. Beyond, a random sample of this many (every class
# keeps at least MIN_PER_CLASS rows when it has them) is cross-validated, and every other row is scored
# by the mean of the folds' classifiers, none of which saw it: still out of sample, and the cost past
# the fit is one (n, PCA_DIMS) projection and a product with each fold's weights.
FIT_MAX_ROWS = 20_000
MIN_PER_CLASS = 50
NEIGHBOURS = 10  # neighbours whose labels are compared with each row's (LabelNoise.agree)
BLOCK_ROWS = 65_536


def standardize(x: np.ndarray) -> np.ndarray:
    """``(n, d)`` -> float32 with zero mean and unit std per column (constant columns become 0)."""
    x = np.asarray(x, dtype=np.float32)
    mean = x.mean(axis=0)
    std = np.maximum(x.std(axis=0), STD_FLOOR)
    return (x - mean) / std


def pca_basis(x: np.ndarray, dims: int, seed: int = 0, fit_rows: int = PCA_FIT_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Top ``dims`` principal axes of ``x`` ``(n, d)``: ``(mean (d,), axes (d, dims))`` float32, by
    decreasing variance.

    Estimated from at most ``fit_rows`` rows chosen with ``seed`` (the covariance of a few thousand rows
    is enough to find the directions). The ``d x d`` covariance is not fully diagonalised (``eigh`` of
    1280 x 1280 takes seconds): a few rounds of randomised subspace iteration find its top eigenvectors
    (Halko, Martinsson and Tropp, 2011) in a fraction of that.
    """
    x = np.asarray(x, dtype=np.float32)
    rng = np.random.default_rng(seed)
    fit = x if len(x) <= fit_rows else x[rng.choice(len(x), fit_rows, replace=False)]
    mean = fit.mean(axis=0)
    centred = fit - mean
    cov = centred.T @ centred / max(len(fit) - 1, 1)
    d = cov.shape[0]
    dims = min(dims, d)
    if dims + SUBSPACE_OVERSAMPLE >= d:
        values, vectors = np.linalg.eigh(cov.astype(np.float64))
        return mean, vectors[:, np.argsort(values)[::-1][:dims]].astype(np.float32)
    q = rng.standard_normal((d, dims + SUBSPACE_OVERSAMPLE)).astype(np.float32)
    for _ in range(SUBSPACE_ROUNDS):
        q, _ = np.linalg.qr(cov @ q)
    values, vectors = np.linalg.eigh((q.T @ cov @ q).astype(np.float64))
    top = np.argsort(values)[::-1][:dims]
    return mean, (q @ vectors[:, top].astype(np.float32)).astype(np.float32)


def project(x: np.ndarray, mean: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """``(n, d)`` on ``axes`` ``(d, k)`` -> ``(n, k)`` float32."""
    return (np.asarray(x, dtype=np.float32) - mean) @ axes


def pca_2d(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """The rows of ``x`` ``(n, d)`` on their first two principal axes: ``(n, 2)`` float32."""
    if len(x) < 2:
        return np.zeros((len(x), 2), np.float32)
    mean, axes = pca_basis(x, 2, seed)
    out = project(x, mean, axes)
    return np.pad(out, ((0, 0), (0, 2 - out.shape[1])))


def softmax(z: np.ndarray, axis: int = 1) -> np.ndarray:
    """Softmax of logits along ``axis`` (rows of ``(n, k)`` by default)."""
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def fit_softmax(
    x: np.ndarray, y: np.ndarray, n_classes: int, l2: float | None = None, iterations: int = ITERATIONS
) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression by Nesterov-accelerated gradient descent: ``(W (d, k), b (k,))``.

    Minimises the mean cross-entropy plus ``l2 / 2 * |W|^2`` (default ``RIDGE / n``: a fixed total
    penalty, so the fit trusts the data more as rows are added) with the step ``1 / L``, where ``L``
    bounds the gradient's Lipschitz constant (``|X|_2^2 / (2 n) + l2``, ``|X|_2`` by power iteration).
    Computed class-major (``(k, n)`` logits): numpy reduces a few long rows much faster than many
    short ones.
    """
    n, d = x.shape
    l2 = RIDGE / n if l2 is None else l2
    xt = np.ascontiguousarray(np.concatenate([x, np.ones((n, 1), np.float32)], axis=1).T)  # (d + 1, n)
    target = np.zeros((n_classes, n), np.float32)
    target[y, np.arange(n)] = 1.0
    v = np.random.default_rng(0).normal(size=d + 1).astype(np.float32)
    for _ in range(30):
        v = xt @ (v @ xt)
        v /= np.linalg.norm(v) or 1.0
    lipschitz = float(np.linalg.norm(v @ xt) ** 2) / (2 * n) + l2
    step = 1.0 / lipschitz
    reg = np.full((1, d + 1), l2, np.float32)
    reg[0, -1] = 0.0  # the bias is not penalised
    w = np.zeros((n_classes, d + 1), np.float32)
    prev = w
    for t in range(1, iterations + 1):
        look = w + (t - 1) / (t + 2) * (w - prev)
        residual = softmax(look @ xt, axis=0)
        residual -= target
        grad = (residual @ xt.T) / n + reg * look
        prev, w = w, look - step * grad
    return np.ascontiguousarray(w[:, :-1].T), w[:, -1].copy()


def stratified_folds(y: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """Fold number ``(n,)`` of each row: every class spread evenly over the folds, at random by ``seed``."""
    order = np.random.default_rng(seed).permutation(len(y))
    order = order[np.argsort(y[order], kind="stable")]
    fold = np.empty(len(y), np.int64)
    starts = np.searchsorted(y[order], y[order], side="left")
    fold[order] = (np.arange(len(y)) - starts) % folds
    return fold


def out_of_fold_probs(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    models: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> np.ndarray:
    """Class probabilities ``(n, k)`` of every row from a classifier trained on the other folds; each
    fold's ``(W, b)`` is appended to ``models`` when given."""
    fold = stratified_folds(y, folds, seed)
    probs = np.zeros((len(y), n_classes), np.float32)
    for f in range(folds):
        held = fold == f
        if not held.any() or held.all():
            probs[held] = 1.0 / n_classes
            continue
        w, b = fit_softmax(x[~held], y[~held], n_classes)
        probs[held] = softmax(x[held] @ w + b)
        if models is not None:
            models.append((w, b))
    return probs


def fit_sample(y: np.ndarray, rows: int, seed: int = 0) -> np.ndarray:
    """Sorted positions of ``rows`` of the labels ``y`` chosen at random, every class keeping at least
    :data:`MIN_PER_CLASS` rows (all of them when it has fewer)."""
    rng = np.random.default_rng(seed)
    chosen = np.zeros(len(y), bool)
    chosen[rng.choice(len(y), min(rows, len(y)), replace=False)] = True
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        short = min(MIN_PER_CLASS, len(members)) - int(chosen[members].sum())
        if short > 0:
            chosen[rng.choice(members[~chosen[members]], short, replace=False)] = True
    return np.flatnonzero(chosen)


def _projected(pooled: np.ndarray, seed: int) -> np.ndarray:
    """:func:`standardize` then the top :data:`PCA_DIMS` principal axes, block by block: ``(n, dims)``
    float32 without a standardised ``(n, d)`` copy (what :func:`label_noise` does at once on few rows)."""
    n, d = pooled.shape
    total = np.zeros(d)
    square = np.zeros(d)
    for start in range(0, n, BLOCK_ROWS):
        block = np.asarray(pooled[start : start + BLOCK_ROWS], dtype=np.float64)
        total += block.sum(axis=0)
        square += (block**2).sum(axis=0)
    mean = total / n
    std = np.maximum(np.sqrt(np.maximum(square / n - mean**2, 0)), STD_FLOOR).astype(np.float32)
    mean = mean.astype(np.float32)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, min(PCA_FIT_ROWS, n), replace=False))
    centre, axes = pca_basis((pooled[sample] - mean) / std, PCA_DIMS, seed)
    out = np.empty((n, axes.shape[1]), np.float32)
    for start in range(0, n, BLOCK_ROWS):
        out[start : start + BLOCK_ROWS] = project((pooled[start : start + BLOCK_ROWS] - mean) / std, centre, axes)
    return out


def neighbour_agreement(pooled: np.ndarray, labels: np.ndarray, k: int = NEIGHBOURS, keep: Any = None) -> np.ndarray:
    """Fraction ``(n,)`` of each row's ``k`` nearest other rows (cosine of the pooled vectors, through
    :func:`.knn.nearest_all`: exact up to its ``EXACT_MAX_ROWS``, the neighbour index above) that carry
    its label; NaN for a row with no comparable neighbour (or a non-finite vector). ``keep``: the cache's
    kept index (:class:`.knn.Keep`), used when ``pooled`` is every row of the cache, all finite."""
    from . import knn

    n = len(pooled)
    out = np.full(n, np.nan)
    finite = np.flatnonzero(np.isfinite(pooled).all(axis=1))
    if len(finite) < 2:
        return out
    unit = np.empty((len(finite), pooled.shape[1]), np.float32)
    for start in range(0, len(finite), BLOCK_ROWS):
        block = np.asarray(pooled[finite[start : start + BLOCK_ROWS]], dtype=np.float32)
        norm = np.linalg.norm(block, axis=1, keepdims=True)
        unit[start : start + BLOCK_ROWS] = block / np.where(norm > 0, norm, 1.0)
    rows, _ = knn.nearest_all(unit, k, keep=keep if len(finite) == n else None)
    found = rows >= 0
    same = found & (labels[finite][np.maximum(rows, 0)] == labels[finite][:, None])
    with np.errstate(invalid="ignore"):
        out[finite] = np.where(found.any(axis=1), same.sum(axis=1) / found.sum(axis=1), np.nan)
    return out


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the block with one BLAS thread, when threadpoolctl is installed (it comes with scikit-learn).

    The fit is ~1,500 small matrix products; waking BLAS threads for each costs more than it saves,
    and on a busy machine far more (measured on 2 cores shared with other jobs: the report of a 15-row
    cache took 12 s with OpenBLAS' threads, under 1 s with one). Without threadpoolctl this does nothing.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@dataclass
class LabelNoise:
    """Out-of-fold verdicts on ``n`` labelled rows (positions into the arrays given to :func:`label_noise`).

    ``probs (n, k)`` out-of-fold class probabilities; ``given (n,)`` the given labels; ``suggested (n,)``
    the most probable other class; ``score (n,)`` ``1 - probs[given]`` (higher: more suspect);
    ``order (n,)`` positions, most suspect first.
    """

    probs: np.ndarray
    given: np.ndarray
    suggested: np.ndarray
    score: np.ndarray
    order: np.ndarray
    # fraction of each row's NEIGHBOURS nearest rows with its label (neighbour_agreement), when computed
    agree: np.ndarray | None = None
    # rows the classifier was cross-validated on (the others scored by its folds' models): all, or a sample
    fitted: int = 0

    @property
    def accuracy(self) -> float:
        """How often the out-of-fold classifier agrees with the given label."""
        return float((self.probs.argmax(axis=1) == self.given).mean()) if len(self.given) else float("nan")


def label_noise(
    pooled: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    *,
    neighbours: bool = False,
    keep: Any = None,
) -> LabelNoise:
    """Rank labelled rows by how unlikely their given label is (see the module docstring).

    ``pooled (n, d)`` float; ``labels (n,)`` ints in ``0..n_classes-1`` (unlabelled rows must be left out).
    Beyond :data:`FIT_MAX_ROWS` rows the classifier is cross-validated on a sample and scores the rest
    (see there). ``neighbours``: also :func:`neighbour_agreement` (``LabelNoise.agree``), through the
    neighbour index past its exact size.
    """
    labels = np.asarray(labels, dtype=np.int64)
    folds = min(folds, max(2, len(labels)))
    if len(labels) <= FIT_MAX_ROWS:
        x = standardize(pooled)
        with one_blas_thread():
            if x.shape[1] > PCA_DIMS and len(x) > 1:  # not whitened: that would blow up the noisy minor axes
                x = project(x, *pca_basis(x, PCA_DIMS, seed))
            probs = out_of_fold_probs(x, labels, n_classes, folds, seed)
        fitted = len(labels)
    else:
        x = _projected(pooled, seed) if pooled.shape[1] > PCA_DIMS else standardize(pooled)
        sample = fit_sample(labels, FIT_MAX_ROWS, seed)
        rest = np.ones(len(labels), bool)
        rest[sample] = False
        probs = np.empty((len(labels), n_classes), np.float32)
        models: list[tuple[np.ndarray, np.ndarray]] = []
        with one_blas_thread():
            probs[sample] = out_of_fold_probs(x[sample], labels[sample], n_classes, folds, seed, models)
        unseen = np.flatnonzero(rest)
        for start in range(0, len(unseen), BLOCK_ROWS):
            at = unseen[start : start + BLOCK_ROWS]
            probs[at] = np.mean([softmax(x[at] @ w + b) for w, b in models], axis=0)
        fitted = len(sample)
    agree = neighbour_agreement(pooled, labels, keep=keep) if neighbours else None
    rows = np.arange(len(labels))
    p_given = probs[rows, labels]
    others = probs.copy()
    others[rows, labels] = -1.0
    score = 1.0 - p_given
    order = np.lexsort((rows, -score))
    return LabelNoise(probs, labels, others.argmax(axis=1), score, order, agree, fitted)


@dataclass
class ClassOverlap:
    """``cosine (k, k)`` between centred class centroids, ``confusion (k, k)`` counts of a nearest-centroid
    classifier (rows: given class, columns: nearest centroid); classes without rows have NaN cosines."""

    cosine: np.ndarray
    confusion: np.ndarray

    def worst_pairs(self, top: int = 10) -> list[tuple[int, int, float, float]]:
        """``(a, b, cosine, mixed)`` for pairs ``a < b``, most mixed first: ``mixed`` is the fraction of
        the two classes' rows that the nearest-centroid classifier puts in the other one."""
        k = len(self.cosine)
        totals = self.confusion.sum(axis=1)
        pairs = []
        for a in range(k):
            for b in range(a + 1, k):
                both = totals[a] + totals[b]
                mixed = (self.confusion[a, b] + self.confusion[b, a]) / both if both else 0.0
                pairs.append((a, b, float(self.cosine[a, b]), float(mixed)))
        pairs.sort(key=lambda p: (-p[3], -np.nan_to_num(p[2], nan=-2.0)))
        return pairs[:top]


def class_overlap(pooled: np.ndarray, labels: np.ndarray, n_classes: int) -> ClassOverlap:
    """Centroid cosines and nearest-centroid confusion of labelled rows (``labels`` in ``0..n_classes-1``)."""
    x = np.asarray(pooled, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    x = x - x.mean(axis=0) if len(x) else x
    counts = np.bincount(labels, minlength=n_classes)
    sums = np.zeros((n_classes, x.shape[1]), np.float64)
    np.add.at(sums, labels, x)
    centroids = sums / np.maximum(counts, 1)[:, None]
    norms = np.linalg.norm(centroids, axis=1)
    unit = centroids / np.where(norms > 0, norms, 1.0)[:, None]
    cosine = unit @ unit.T
    cosine[counts == 0] = np.nan
    cosine[:, counts == 0] = np.nan
    confusion = np.zeros((n_classes, n_classes), np.int64)
    present = np.flatnonzero(counts > 0)
    if len(x) and len(present):
        xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        nearest = present[np.argmax(xn @ unit[present].T.astype(np.float32), axis=1)]
        np.add.at(confusion, (labels, nearest), 1)
    return ClassOverlap(cosine, confusion)


def knn_disagreement(unit: np.ndarray, labels: np.ndarray, k: int = 10, block: int = 2048) -> np.ndarray:
    """Fraction ``(n,)`` of each row's ``k`` nearest rows (cosine of ``unit``, unit-norm rows) whose label
    differs from its own: the plain baseline that :func:`label_noise` is measured against."""
    n = len(unit)
    k = min(k, n - 1)
    out = np.zeros(n, np.float32)
    if k <= 0:
        return out
    for i in range(0, n, block):
        sims = unit[i : i + block] @ unit.T
        sims[np.arange(len(sims)), np.arange(i, i + len(sims))] = -np.inf
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        out[i : i + block] = (labels[top] != labels[i : i + block, None]).mean(axis=1)
    return out
