"""The ``mlp`` head: one hidden ReLU layer (grid key ``hidden``), dropout (``dropout``), a softmax layer,
on the pooled vector (``(C,)``, standardised by the sweep).

Weights ``W1 (C, h)``, ``b1 (h,)``, ``W2 (h, n)``, ``b2 (n,)``; stacked ``K`` at a time for training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .base import (
    POOLED,
    HeadKind,
    Shapes,
    Weights,
    glorot,
    keras,
    keras_dense,
    softmax,
    stacked_dense,
    stacked_dropout,
    tensorflow,
    zeros,
)
from .linear import CLASSIFY

if TYPE_CHECKING:
    from ..sweep import HeadConfig


@dataclass(frozen=True)
class MlpWeights(Weights):
    """``W1 (C, h)``, ``b1 (h,)``, ``W2 (h, n)``, ``b2 (n,)`` float32."""

    NO_DECAY = ("b1", "b2")

    W1: np.ndarray
    b1: np.ndarray
    W2: np.ndarray
    b2: np.ndarray


def shapes(cfg: HeadConfig, channels: int, classes: int) -> Shapes:
    h = int(cfg.hidden)
    return {"W1": (channels, h), "b1": (h,), "W2": (h, classes), "b2": (classes,)}


def init(cfg: HeadConfig, k: int, in_dim: int, n_classes: int, rng: np.random.Generator) -> MlpWeights:
    """``K`` heads: Glorot-uniform kernels, zero biases (drawn ``W1`` then ``W2``)."""
    w1 = glorot(rng, k, in_dim, cfg.hidden)
    return MlpWeights(w1, zeros(k, cfg.hidden), glorot(rng, k, cfg.hidden, n_classes), zeros(k, n_classes))


def classify(group: Any, h: Any, training: bool, seed: Any) -> Any:
    """Hidden ``h (K, B, D)`` -> logits ``(K, B, n)``: (in training, each head's dropout,) then ``W2``,
    ``b2``: the last layers an mlp and a map head share."""
    tf = tensorflow()
    if training:
        h = stacked_dropout(h, group.dropout, seed)
    return tf.einsum("kbh,khn->kbn", h, group.params["W2"]) + group.params["b2"][:, None, :]


def stacked_logits(group: Any, x: Any, training: bool = False, seed: Any = None) -> Any:
    """``x (B, C)`` -> logits ``(K, B, n)``: ReLU hidden layer, dropout in training, softmax layer."""
    tf = tensorflow()
    p = group.params
    return classify(group, tf.nn.relu(stacked_dense(x, p["W1"]) + p["b1"][:, None, :]), training, seed)


def keras_head(x: Any, cfg: HeadConfig, w: Any, n_classes: int) -> Any:
    """``Dense`` ReLU (``hidden``), ``Dropout``, ``Dense`` softmax (``classify``)."""
    w = MlpWeights.of(w)
    hidden = keras_dense(x, cfg.hidden, w.W1, w.b1, "hidden", "relu")
    return keras_dense(keras().layers.Dropout(cfg.dropout)(hidden), n_classes, w.W2, w.b2, CLASSIFY, "softmax")


def probs(cfg: HeadConfig, w: Any, x: np.ndarray) -> np.ndarray:
    """Class probabilities ``(B, n)`` float64 of pooled ``x (B, C)`` (no dropout: inference)."""
    w = MlpWeights.of(w)
    return softmax(np.maximum(np.asarray(x, np.float64) @ w.W1 + w.b1, 0) @ w.W2 + w.b2)


KIND = HeadKind(
    "mlp",
    POOLED,
    ("hidden", "dropout", "features"),
    "one hidden ReLU layer on pooled vectors",
    weights=MlpWeights,
    shapes=shapes,
    init=init,
    stacked_logits=stacked_logits,
    keras_head=keras_head,
    probs=probs,
)
