"""The ``linear`` head: one softmax layer on the pooled vector (``(C,)``, standardised by the sweep).

Weights ``W (C, n)``, ``b (n,)``; the SGD engine trains ``K`` of them stacked (``W (K, C, n)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .base import POOLED, HeadKind, Shapes, Weights, glorot, keras_dense, softmax, stacked_dense, zeros

if TYPE_CHECKING:
    from ..sweep import HeadConfig

CLASSIFY = "classify"  # the exported softmax layer's name (every kind's last layer)


@dataclass(frozen=True)
class LinearWeights(Weights):
    """``W (C, n)`` and ``b (n,)`` float32."""

    NO_DECAY = ("b",)

    W: np.ndarray
    b: np.ndarray


def shapes(cfg: HeadConfig, channels: int, classes: int) -> Shapes:
    return {"W": (channels, classes), "b": (classes,)}


def init(cfg: HeadConfig, k: int, in_dim: int, n_classes: int, rng: np.random.Generator) -> LinearWeights:
    """``K`` heads: a Glorot-uniform ``W (K, C, n)``, zero ``b (K, n)``."""
    return LinearWeights(glorot(rng, k, in_dim, n_classes), zeros(k, n_classes))


def stacked_logits(group: Any, x: Any, training: bool = False, seed: Any = None) -> Any:
    """``x (B, C)`` -> logits ``(K, B, n)`` of the group's stacked heads."""
    p = group.params
    return stacked_dense(x, p["W"]) + p["b"][:, None, :]


def keras_head(x: Any, cfg: HeadConfig, w: Any, n_classes: int) -> Any:
    """A ``Dense`` softmax layer (``classify``) on ``x``."""
    w = LinearWeights.of(w)
    return keras_dense(x, n_classes, w.W, w.b, CLASSIFY, "softmax")


def probs(cfg: HeadConfig, w: Any, x: np.ndarray) -> np.ndarray:
    """Class probabilities ``(B, n)`` float64 of pooled ``x (B, C)`` (standardised as the head's input)."""
    w = LinearWeights.of(w)
    return softmax(np.asarray(x, np.float64) @ w.W + w.b)


KIND = HeadKind(
    "linear",
    POOLED,
    ("features",),
    "softmax on pooled vectors",
    weights=LinearWeights,
    shapes=shapes,
    init=init,
    stacked_logits=stacked_logits,
    keras_head=keras_head,
    probs=probs,
)
