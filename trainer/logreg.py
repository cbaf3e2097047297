"""Multinomial logistic regression by L-BFGS, in numpy: scikit-learn's objective, a whole
regularisation path in one pass.

For each ``C`` the objective is scikit-learn's (``LogisticRegression(C=C)``, lbfgs solver, loss
scaled by the number of rows as scikit-learn >= 1.2 does)::

    f(W, b) = mean_i cross_entropy(softmax(x_i W + b), y_i) + ||W||^2 / (2 C n)

with the bias not penalised. The ``C`` values are solved from the most regularised to the least,
each warm-started from the previous solution, so the slow, weakly regularised fits start close to
their optimum. Stopping follows scikit-learn's: the largest absolute gradient entry below ``tol``
(its default 1e-4) or a relative change of ``f`` below :data:`FTOL`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MEMORY = 10  # L-BFGS correction pairs, as scipy's default
FTOL = 64 * np.finfo(np.float64).eps  # scikit-learn's ftol for lbfgs
ARMIJO = 1e-4
MAX_BACKTRACKS = 30
DEFAULT_CS = tuple(float(c) for c in np.geomspace(1e-4, 1.0, 9))  # half-decade steps


@dataclass
class Fit:
    """One ``C``'s solution: ``W (C_in, K)`` and ``b (K,)`` float64, with how it ended."""

    c: float
    W: np.ndarray
    b: np.ndarray
    iterations: int
    converged: bool

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float64) @ self.W + self.b

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities ``(n, K)`` float64."""
        return softmax(self.logits(x))


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _objective(theta: np.ndarray, x: np.ndarray, onehot: np.ndarray, l2: float) -> tuple[float, np.ndarray]:
    """``f`` and its gradient at ``theta = [W; b]`` flattened, ``(C_in + 1) * K``."""
    n, k = onehot.shape
    wb = theta.reshape(-1, k)
    w, b = wb[:-1], wb[-1]
    z = x @ w + b
    z -= z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1, keepdims=True))
    logp = z - log_norm
    f = -(onehot * logp).sum() / n + 0.5 * l2 * np.sum(w * w)
    d = (np.exp(logp) - onehot) / n  # (n, K)
    grad = np.vstack([x.T @ d + l2 * w, d.sum(axis=0, keepdims=True)])
    return float(f), grad.ravel()


def lbfgs(fun, theta: np.ndarray, tol: float, max_iter: int) -> tuple[np.ndarray, int, bool]:  # noqa: ANN001
    """Minimise ``fun(theta) -> (f, grad)`` from ``theta``; returns (theta, iterations, converged)."""
    f, g = fun(theta)
    s_hist: list[np.ndarray] = []
    y_hist: list[np.ndarray] = []
    for it in range(1, max_iter + 1):
        if np.max(np.abs(g)) <= tol:
            return theta, it - 1, True
        # two-loop recursion: d = -H g
        q = g.copy()
        alphas = []
        for s, y in zip(reversed(s_hist), reversed(y_hist), strict=True):
            a = s @ q / (y @ s)
            alphas.append(a)
            q -= a * y
        if s_hist:
            q *= (s_hist[-1] @ y_hist[-1]) / (y_hist[-1] @ y_hist[-1])
        else:
            q /= max(np.linalg.norm(g), 1.0)
        for (s, y), a in zip(zip(s_hist, y_hist, strict=True), reversed(alphas), strict=True):
            q += s * (a - (y @ q) / (y @ s))
        d = -q
        slope = g @ d
        if slope >= 0:  # not a descent direction (numerical trouble): restart from steepest descent
            s_hist.clear(), y_hist.clear()
            d, slope = -g, -(g @ g)
        step = 1.0
        for _ in range(MAX_BACKTRACKS):
            new = theta + step * d
            f_new, g_new = fun(new)
            if f_new <= f + ARMIJO * step * slope:
                break
            step *= 0.5
        else:
            return theta, it, False
        s, y = new - theta, g_new - g
        if s @ y > 1e-12:
            s_hist.append(s)
            y_hist.append(y)
            if len(s_hist) > MEMORY:
                s_hist.pop(0), y_hist.pop(0)
        done = abs(f - f_new) <= FTOL * max(abs(f), abs(f_new), 1.0)
        theta, f, g = new, f_new, g_new
        if done:
            return theta, it, True
    return theta, max_iter, bool(np.max(np.abs(g)) <= tol)


def fit_path(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    cs: Sequence[float] = DEFAULT_CS,
    tol: float = 1e-4,
    max_iter: int = 3000,
) -> list[Fit]:
    """One :class:`Fit` per ``C`` of ``cs`` (returned in the order given), solved from the smallest
    ``C`` up, each warm-started from the last. ``x (n, C_in)`` (standardise it first: the penalty
    treats every feature alike), ``y (n,)`` int labels in ``[0, n_classes)``."""
    x = np.asarray(x, np.float64)
    onehot = np.eye(n_classes)[np.asarray(y)]
    theta = np.zeros((x.shape[1] + 1) * n_classes)
    fits: dict[float, Fit] = {}
    for c in sorted(set(float(c) for c in cs)):
        l2 = 1.0 / (c * len(x))
        theta, iters, ok = lbfgs(lambda t: _objective(t, x, onehot, l2), theta, tol, max_iter)  # noqa: B023
        wb = theta.reshape(-1, n_classes)
        fits[c] = Fit(c, wb[:-1].copy(), wb[-1].copy(), iters, ok)
    return [fits[float(c)] for c in cs]
