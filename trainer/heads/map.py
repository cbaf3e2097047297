"""The ``map`` head: on the cached feature maps ``(h, w, C)``, a 1x1 convolution with ReLU to ``hidden``
channels per position, the head's pooling over the positions (grid key ``pool``), dropout and a softmax
layer; in training only, its maps' augmentations (grid key ``map_augment``).

Weights ``W1 (C, h)``, ``b1 (h,)``, then by pooling: attention ``a (h,)``, gem ``p ()`` (the learned
power), mean and multiscale nothing; ``W2 (D, n)`` (``D`` = :func:`pooled_width`), ``b2 (n,)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..pooling import GEM_EPS, GEM_MIN_P, MULTISCALE, gem, region_matrix
from .base import MAPS, HeadKind, Shapes, Weights, glorot, keras, keras_dense, softmax, stacked_dense, tensorflow, zeros
from .linear import CLASSIFY
from .mlp import classify

if TYPE_CHECKING:
    from ..sweep import HeadConfig

# How a map head pools its projected ``(h, w, hidden)`` grid into one vector (grid key ``pool``):
MAP_POOLS = {
    "attention": "softmax attention over positions",
    "mean": "the mean over positions",
    "gem": "generalised mean, its power p learned from 3",
    "multiscale": "the mean concatenated with the 2x2 and 3x3 region means",
}
# Train-time augmentations of the maps a map head can use (grid key ``map_augment``; "none", or
# names joined by "+"), never applied at evaluation:
MAP_AUGMENTS = {
    "flip": "mirror the grid left-right, half the rows; only multiscale sees it, the other poolings ignore where",
    "crop": "pool a random (h-1)x(w-1) window",
    "drop": "drop a quarter of the positions",
}
NO_AUGMENT = "none"

GEM_P0 = 3.0  # GeM's initial power (Radenovic et al., 2018)
GEM_LR_SCALE = 10.0  # GeM's power learns at 10x the head's lr (as Radenovic et al.'s code does): else it barely moves
CROP_MARGIN = 1  # "crop": a (h-1)x(w-1) window of the grid, ~ a shift of 1/7 of the image on 7x7
POSITION_DROP = 0.25  # "drop": the fraction of grid positions zeroed (the rest scaled by 1/keep)
AUGMENT_STREAMS = {"flip": 1, "crop": 2, "drop": 3}  # folded into the step seed: one stream each


@dataclass(frozen=True, kw_only=True)
class MapWeights(Weights):
    """``W1 (C, h)``, ``b1 (h,)``, ``W2 (D, n)``, ``b2 (n,)`` float32; ``a (h,)`` for attention pooling,
    ``p ()`` for GeM (else None). Fields in heads.npz's order. GeM's power is never weight-decayed (decay
    would pull it to 0) and learns at :data:`GEM_LR_SCALE` times the head's lr."""

    NO_DECAY = ("b1", "b2", "p")
    LR_SCALE = {"p": GEM_LR_SCALE}

    W1: np.ndarray
    b1: np.ndarray
    a: np.ndarray | None = None
    p: np.ndarray | None = None
    W2: np.ndarray
    b2: np.ndarray


def pooled_width(pool: str, hidden: int) -> int:
    """Width of a map head's pooled vector: ``hidden``, or one ``hidden`` per region for multiscale."""
    return hidden * (sum(s * s for s in MULTISCALE) if pool == "multiscale" else 1)


def _scales(pool: str) -> tuple[int, ...]:
    """The region scales of a region pooling (``mean``: the whole grid; ``multiscale``)."""
    return (1,) if pool == "mean" else MULTISCALE


def shapes(cfg: HeadConfig, channels: int, classes: int) -> Shapes:
    h, pool = int(cfg.hidden), cfg.pool
    out: Shapes = {"W1": (channels, h), "b1": (h,), "W2": (pooled_width(pool, h), classes), "b2": (classes,)}
    if pool == "attention":
        out["a"] = (h,)
    elif pool == "gem":
        out["p"] = ()
    return out


def init(cfg: HeadConfig, k: int, in_dim: int, n_classes: int, rng: np.random.Generator) -> MapWeights:
    """``K`` heads: Glorot-uniform kernels (drawn ``W1``, ``a``, ``W2``), zero biases, GeM's power
    from :data:`GEM_P0`."""
    h = cfg.hidden
    w1 = glorot(rng, k, in_dim, h)
    a = glorot(rng, k, h, 1, (h,)) if cfg.pool == "attention" else None
    p = np.full(k, GEM_P0, np.float32) if cfg.pool == "gem" else None
    w2 = glorot(rng, k, pooled_width(cfg.pool, h), n_classes)
    return MapWeights(W1=w1, b1=zeros(k, h), a=a, p=p, W2=w2, b2=zeros(k, n_classes))


# -- the stacked forward pass (TensorFlow) -------------------------------------------------------------
def _coins(seed: Any, stream: str, n: Any) -> Any:
    tf = tensorflow()
    return tf.random.stateless_uniform(
        [n], seed=tf.random.experimental.stateless_fold_in(seed, AUGMENT_STREAMS[stream])
    )


def flip_maps(x: Any, seed: Any) -> Any:
    """``(B, h, w, C)`` maps, each mirrored left-right (``x[:, :, ::-1]``) with probability 1/2, seeded."""
    tf = tensorflow()
    flip = _coins(seed, "flip", tf.shape(x)[0]) < 0.5
    return tf.where(flip[:, None, None, None], tf.reverse(x, [2]), x)


def crop_maps(x: Any, seed: Any, margin: int = CROP_MARGIN) -> Any:
    """``(B, h, w, C)`` -> ``(B, h - margin, w - margin, C)``: a window of each map at a random offset
    (uniform over the ``(margin + 1)^2`` offsets), seeded. The head pools the window as it pools the
    whole grid at evaluation (every pooling here is defined for any grid size)."""
    tf = tensorflow()
    b, h, w = tf.shape(x)[0], x.shape[1], x.shape[2]
    u = tf.random.stateless_uniform(
        [2, b], seed=tf.random.experimental.stateless_fold_in(seed, AUGMENT_STREAMS["crop"])
    )
    off = tf.cast(tf.floor(u * (margin + 1)), tf.int32)  # (2, B) in [0, margin]
    rows = off[0][:, None] + tf.range(h - margin)[None]  # (B, h - margin)
    cols = off[1][:, None] + tf.range(w - margin)[None]
    return tf.gather(tf.gather(x, rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1)


def gem_pool(f: Any, p: Any) -> Any:
    """``f (K, B, P, h)`` non-negative, ``p (K,)`` -> ``(K, B, h)``: ``mean_P(max(f, eps)^p)^(1/p)``,
    computed relative to each channel's max over positions as :func:`featcache.trainer.pooling.gem` does
    (``p`` used clamped to >= :data:`GEM_MIN_P`)."""
    tf = tensorflow()
    m = tf.maximum(f, GEM_EPS)
    top = tf.reduce_max(m, axis=2, keepdims=True)
    pk = tf.maximum(p, GEM_MIN_P)[:, None, None, None]
    return tf.reduce_mean((m / top) ** pk, axis=2) ** (1.0 / pk[:, :, 0]) * top[:, :, 0]


def map_features(group: Any, x: Any, training: bool = False, seed: Any = None) -> Any:
    """Maps ``(B, h, w, C)`` -> pooled ``(K, B, D)``: (in training, flipped and cropped), a 1x1
    convolution with ReLU to ``hidden`` channels per position, (in training, positions dropped),
    then the head's pooling over the positions."""
    tf = tensorflow()
    p = group.params
    x = tf.cast(x, tf.float32)
    if training and "flip" in group.augment:
        x = flip_maps(x, seed)
    if training and "crop" in group.augment:
        x = crop_maps(x, seed)
    b, rows, cols = tf.shape(x)[0], x.shape[1], x.shape[2]
    flat = tf.reshape(x, [-1, tf.shape(x)[-1]])  # (B*P, C)
    f = tf.reshape(stacked_dense(flat, p["W1"]), [group.k, b, -1, group.hidden])  # (K, B, P, h)
    f = tf.nn.relu(f + p["b1"][:, None, None, :])
    if training and "drop" in group.augment:
        fold = tf.random.experimental.stateless_fold_in(seed, AUGMENT_STREAMS["drop"])
        keep = tf.random.stateless_uniform([group.k, b, tf.shape(f)[2], 1], seed=fold) >= POSITION_DROP
        f = f * tf.cast(keep, tf.float32) / (1.0 - POSITION_DROP)
    if group.pool == "attention":
        att = tf.nn.softmax(tf.einsum("kbph,kh->kbp", f, p["a"]), axis=-1)
        return tf.einsum("kbp,kbph->kbh", att, f)
    if group.pool == "gem":
        return gem_pool(f, p["p"])
    regions = tf.constant(region_matrix(rows, cols, _scales(group.pool)))
    return tf.reshape(tf.einsum("kbph,pr->kbrh", f, regions), [group.k, b, -1])  # (K, B, R*h), channel fastest


def stacked_logits(group: Any, x: Any, training: bool = False, seed: Any = None) -> Any:
    """Maps ``(B, h, w, C)`` -> logits ``(K, B, n)``: :func:`map_features`, dropout in training, softmax layer."""
    return classify(group, map_features(group, x, training, seed), training, seed)


# -- the exported layers (Keras) ------------------------------------------------------------------------
def _attention_pool(f: Any, a: np.ndarray) -> Any:
    """``(B, P, h)`` -> ``(B, h)``: softmax over positions of ``f @ a``, the weighted sum of ``f``."""
    layers = keras().layers
    positions = f.shape[1]
    score = layers.Dense(1, use_bias=False, name="attention")
    att = layers.Softmax(axis=1)(layers.Reshape((positions, 1))(layers.Reshape((positions,))(score(f))))
    score.set_weights([a[:, None]])
    return layers.Flatten()(layers.Dot(axes=(1, 1))([att, f]))


def _gem_pool(f: Any, p: np.ndarray) -> Any:
    """``(B, P, h)`` -> ``(B, h)``: GeM with the head's learned power (fixed here), in ``keras.ops``
    (which a ``.keras`` file stores and loads like layers), computed as :func:`gem_pool` does."""
    ops = keras().ops
    power = max(float(p), GEM_MIN_P)
    m = ops.maximum(f, GEM_EPS)
    top = ops.max(m, axis=1, keepdims=True)
    return ops.power(ops.mean(ops.power(m / top, power), axis=1), 1.0 / power) * top[:, 0]


def _region_pool(f: Any, regions: np.ndarray) -> Any:
    """``(B, P, h)`` -> ``(B, R * h)`` (channel fastest): the region means of ``regions (P, R)``, as a
    fixed Dense over the position axis."""
    layers = keras().layers
    mix = layers.Dense(regions.shape[1], use_bias=False, trainable=False, name="regions")
    r = layers.Permute((2, 1))(mix(layers.Permute((2, 1))(f)))  # (B, R, h)
    mix.set_weights([regions])
    return layers.Flatten()(r)


def keras_head(x: Any, cfg: HeadConfig, w: Any, n_classes: int) -> Any:
    """1x1 conv + ReLU, the head's pooling (``cfg.pool``), dropout, softmax. The maps' augmentations
    are train-time only: nothing of them is in the model."""
    w = MapWeights.of(w)
    layers = keras().layers
    rows, cols = x.shape[1], x.shape[2]
    conv = layers.Conv2D(cfg.hidden, 1, activation="relu", name="project")
    f = layers.Reshape((rows * cols, cfg.hidden))(conv(x))
    conv.set_weights([w.W1[None, None], w.b1])
    if cfg.pool == "attention":
        assert w.a is not None, "an attention head has a"
        pooled = _attention_pool(f, w.a)
    elif cfg.pool == "gem":
        assert w.p is not None, "a GeM head has p"
        pooled = _gem_pool(f, w.p)
    else:
        pooled = _region_pool(f, region_matrix(rows, cols, _scales(cfg.pool)))
    return keras_dense(layers.Dropout(cfg.dropout)(pooled), n_classes, w.W2, w.b2, CLASSIFY, "softmax")


# -- the forward pass in numpy ----------------------------------------------------------------------------
def probs(cfg: HeadConfig, w: Any, x: np.ndarray) -> np.ndarray:
    """Class probabilities ``(B, n)`` float64 of maps ``x (B, h, w, C)`` (no dropout, no augmentation)."""
    w = MapWeights.of(w)
    n, rows, cols, c = x.shape
    f = np.maximum(np.asarray(x, np.float64).reshape(n, -1, c) @ w.W1 + w.b1, 0)  # (B, P, h)
    if cfg.pool == "attention":
        pooled = np.einsum("bp,bph->bh", softmax(f @ w.a, axis=1), f)
    elif cfg.pool == "gem":
        pooled = gem(f.reshape(n, rows, cols, -1), max(float(np.asarray(w.p)), GEM_MIN_P)).astype(np.float64)
    else:
        pooled = np.einsum("bph,pr->brh", f, region_matrix(rows, cols, _scales(cfg.pool))).reshape(n, -1)
    return softmax(pooled @ w.W2 + w.b2)


KIND = HeadKind(
    "map",
    MAPS,
    ("hidden", "dropout", "pool", "map_augment"),
    "1x1 conv + pooling on the 7x7 maps",
    weights=MapWeights,
    shapes=shapes,
    init=init,
    stacked_logits=stacked_logits,
    keras_head=keras_head,
    probs=probs,
)
