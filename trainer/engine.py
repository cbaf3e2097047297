"""Many heads trained as one: parameters stacked on a leading head axis, one batch fed to all.

A :class:`HeadGroup` holds ``K`` heads of one kind and shape. Its forward pass is a few ``einsum``
over the head axis, its optimizer is AdamW written out on the stacked tensors (each head with its own
learning rate and weight decay, the same update Keras' ``AdamW`` makes for a single head), and its
loss is the sum of the heads' mean cross-entropies, so every head gets exactly the gradient it would
get alone. A head whose validation accuracy stopped improving is frozen (its update is masked), and
the weights of its best epoch are kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..shared.backbones import import_tensorflow
from .logreg import LogregGroup
from .pooling import GEM_EPS, GEM_MIN_P, MULTISCALE, region_matrix
from .sweep import HeadConfig

tf = import_tensorflow()

BETA_1, BETA_2, EPSILON = 0.9, 0.999, 1e-7  # Keras' Adam defaults
BIAS_NAMES = ("b", "b1", "b2", "p")  # never weight-decayed (nor GeM's power: decay would pull it to 0)
GEM_P0 = 3.0  # GeM's initial power (Radenovic et al., 2018)
GEM_LR_SCALE = 10.0  # GeM's power learns at 10x the head's lr (as Radenovic et al.'s code does): else it barely moves
CROP_MARGIN = 1  # "crop": a (h-1)x(w-1) window of the grid, ~ a shift of 1/7 of the image on 7x7
POSITION_DROP = 0.25  # "drop": the fraction of grid positions zeroed (the rest scaled by 1/keep)
AUGMENT_STREAMS = {"flip": 1, "crop": 2, "drop": 3}  # folded into the step seed: one stream each


def _glorot(
    rng: np.random.Generator, k: int, fan_in: int, fan_out: int, shape: tuple[int, ...] | None = None
) -> np.ndarray:
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, (k, *(shape or (fan_in, fan_out)))).astype(np.float32)


def pooled_width(pool: str, hidden: int) -> int:
    """Width of a map head's pooled vector: ``hidden``, or one ``hidden`` per region for multiscale."""
    return hidden * (sum(s * s for s in MULTISCALE) if pool == "multiscale" else 1)


def init_params(
    kind: str, k: int, in_dim: int, hidden: int, n_classes: int, seed: int, pool: str = "attention"
) -> dict[str, np.ndarray]:
    """Initial parameters of ``k`` heads (Glorot-uniform kernels, zero biases), deterministic in ``seed``.

    linear: ``W (k, C, n)``, ``b (k, n)``; mlp: ``W1 (k, C, h)``, ``b1``, ``W2 (k, h, n)``, ``b2``;
    map: ``W1 (k, C, h)``, ``b1``, then by ``pool``: attention ``a (k, h)``, gem ``p (k,)`` (the power,
    from :data:`GEM_P0`), mean nothing, multiscale nothing; ``W2 (k, D, n)`` (``D`` =
    :func:`pooled_width`), ``b2``.
    """
    rng = np.random.default_rng(seed)
    zeros = lambda *s: np.zeros((k, *s), np.float32)  # noqa: E731
    if kind == "linear":
        return {"W": _glorot(rng, k, in_dim, n_classes), "b": zeros(n_classes)}
    p = {"W1": _glorot(rng, k, in_dim, hidden), "b1": zeros(hidden)}
    width = hidden
    if kind == "map":
        if pool == "attention":
            p["a"] = _glorot(rng, k, hidden, 1, (hidden,))
        elif pool == "gem":
            p["p"] = np.full(k, GEM_P0, np.float32)
        width = pooled_width(pool, hidden)
    p.update(W2=_glorot(rng, k, width, n_classes), b2=zeros(n_classes))
    return p


def _coins(seed: Any, stream: str, n: Any) -> Any:
    return tf.random.stateless_uniform(
        [n], seed=tf.random.experimental.stateless_fold_in(seed, AUGMENT_STREAMS[stream])
    )


def flip_maps(x: Any, seed: Any) -> Any:
    """``(B, h, w, C)`` maps, each mirrored left-right (``x[:, :, ::-1]``) with probability 1/2, seeded."""
    flip = _coins(seed, "flip", tf.shape(x)[0]) < 0.5
    return tf.where(flip[:, None, None, None], tf.reverse(x, [2]), x)


def crop_maps(x: Any, seed: Any, margin: int = CROP_MARGIN) -> Any:
    """``(B, h, w, C)`` -> ``(B, h - margin, w - margin, C)``: a window of each map at a random offset
    (uniform over the ``(margin + 1)^2`` offsets), seeded. The head pools the window as it pools the
    whole grid at evaluation (every pooling here is defined for any grid size)."""
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
    m = tf.maximum(f, GEM_EPS)
    top = tf.reduce_max(m, axis=2, keepdims=True)
    pk = tf.maximum(p, GEM_MIN_P)[:, None, None, None]
    return tf.reduce_mean((m / top) ** pk, axis=2) ** (1.0 / pk[:, :, 0]) * top[:, :, 0]


class HeadGroup:
    """``K`` heads of one (kind, hidden) trained together. Inputs: pooled ``(B, C)`` for linear and
    mlp heads, maps ``(B, h, w, C)`` for map heads; logits ``(K, B, n_classes)``."""

    def __init__(self, configs: Sequence[HeadConfig], in_dim: int, n_classes: int, seed: int):
        kinds = {c.group for c in configs}
        if len(kinds) != 1:
            raise ValueError(f"a HeadGroup holds one kind and width, got {sorted(kinds)}")
        self.configs = list(configs)
        c0 = configs[0]
        self.kind, self.hidden, self.pool = c0.kind, c0.hidden, c0.pool
        self.augment = set() if c0.map_augment == "none" else set(c0.map_augment.split("+"))
        self.k = len(configs)
        self.n_classes = n_classes
        vec = lambda f: tf.constant([float(getattr(c, f)) for c in configs], tf.float32)  # noqa: E731
        self.lr, self.wd, self.dropout, self.smoothing = (
            vec("lr"),
            vec("weight_decay"),
            vec("dropout"),
            vec("label_smoothing"),
        )
        init = init_params(self.kind, self.k, in_dim, self.hidden, n_classes, seed, self.pool)
        self.names = list(init)
        self.params = {n: tf.Variable(v, name=n) for n, v in init.items()}
        self.m = {n: tf.Variable(tf.zeros_like(v)) for n, v in init.items()}
        self.v = {n: tf.Variable(tf.zeros_like(v)) for n, v in init.items()}
        self.best = {n: tf.Variable(v) for n, v in init.items()}
        self.steps = tf.Variable(0, dtype=tf.int64)
        self._train_step = tf.function(self._train_step_impl, reduce_retracing=True)
        self._eval_step = tf.function(self._eval_impl, reduce_retracing=True)
        self._apply = tf.function(self._apply_impl, jit_compile=True)

    # -- model --------------------------------------------------------------------------------------
    def logits(self, x: Any, training: bool = False, seed: Any = None) -> Any:
        """Logits ``(K, B, n_classes)``; ``training`` turns on dropout and the maps' augmentations,
        drawn from ``seed`` (a stateless ``(2,)`` seed: the same seed, the same draw)."""
        p = self.params
        if self.kind == "linear":
            return self._wide_matmul(x, p["W"]) + p["b"][:, None, :]
        if self.kind == "mlp":
            h = tf.nn.relu(self._wide_matmul(x, p["W1"]) + p["b1"][:, None, :])
        else:
            h = self.map_features(x, training, seed)
        if training:
            keep = 1.0 - self.dropout[:, None, None]
            mask = tf.cast(tf.random.stateless_uniform(tf.shape(h), seed=seed) < keep, tf.float32)
            h = h * mask / keep
        return tf.einsum("kbh,khn->kbn", h, p["W2"]) + p["b2"][:, None, :]

    def map_features(self, x: Any, training: bool = False, seed: Any = None) -> Any:
        """Maps ``(B, h, w, C)`` -> pooled ``(K, B, D)``: (in training, flipped and cropped), a 1x1
        convolution with ReLU to ``hidden`` channels per position, (in training, positions dropped),
        then the head's pooling over the positions."""
        p = self.params
        x = tf.cast(x, tf.float32)
        if training and "flip" in self.augment:
            x = flip_maps(x, seed)
        if training and "crop" in self.augment:
            x = crop_maps(x, seed)
        b, rows, cols = tf.shape(x)[0], x.shape[1], x.shape[2]
        flat = tf.reshape(x, [-1, tf.shape(x)[-1]])  # (B*P, C)
        f = tf.reshape(self._wide_matmul(flat, p["W1"]), [self.k, b, -1, self.hidden])  # (K, B, P, h)
        f = tf.nn.relu(f + p["b1"][:, None, None, :])
        if training and "drop" in self.augment:
            fold = tf.random.experimental.stateless_fold_in(seed, AUGMENT_STREAMS["drop"])
            keep = tf.random.stateless_uniform([self.k, b, tf.shape(f)[2], 1], seed=fold) >= POSITION_DROP
            f = f * tf.cast(keep, tf.float32) / (1.0 - POSITION_DROP)
        if self.pool == "attention":
            att = tf.nn.softmax(tf.einsum("kbph,kh->kbp", f, p["a"]), axis=-1)
            return tf.einsum("kbp,kbph->kbh", att, f)
        if self.pool == "gem":
            return gem_pool(f, p["p"])
        regions = tf.constant(region_matrix(rows, cols, (1,) if self.pool == "mean" else MULTISCALE))
        return tf.reshape(tf.einsum("kbph,pr->kbrh", f, regions), [self.k, b, -1])  # (K, B, R*h), channel fastest

    @staticmethod
    def _wide_matmul(x: Any, w: Any) -> Any:
        """``einsum("bc,kcn->kbn")`` as one ``(B, C) @ (C, K*n)`` matrix product: ~15% faster on CPU."""
        k, c, n = w.shape
        wide = tf.reshape(tf.transpose(w, [1, 0, 2]), [c, k * n])
        return tf.transpose(tf.reshape(tf.matmul(x, wide), [-1, k, n]), [1, 0, 2])

    def _losses(self, logits: Any, y: Any) -> tuple[Any, Any]:
        """Per-head mean cross-entropy (with each head's label smoothing) and correct count: ``(K,)`` each."""
        onehot = tf.one_hot(y, self.n_classes)[None]  # (1, B, n)
        s = self.smoothing[:, None, None]
        target = onehot * (1.0 - s) + s / self.n_classes
        loss = -tf.reduce_sum(target * tf.nn.log_softmax(logits, axis=-1), axis=-1)  # (K, B)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y[None]), tf.float32), -1)
        return tf.reduce_mean(loss, axis=-1), correct

    # -- training -------------------------------------------------------------------------------------
    def _train_step_impl(self, x: Any, y: Any, active: Any, seed: Any) -> tuple[Any, Any]:
        with tf.GradientTape() as tape:
            loss, correct = self._losses(self.logits(x, training=True, seed=seed), y)
            total = tf.reduce_sum(loss)
        grads = tape.gradient(total, [self.params[n] for n in self.names])
        self._apply(grads, active)
        return loss, correct

    def _apply_impl(self, grads: list[Any], active: Any) -> None:
        """The AdamW update of every head, compiled with XLA: its shapes never change, and fused it
        makes one pass over the parameters instead of a dozen (the update is memory-bound)."""
        self.steps.assign_add(1)
        t = tf.cast(self.steps, tf.float32)
        alpha = self.lr * tf.sqrt(1.0 - BETA_2**t) / (1.0 - BETA_1**t)  # (K,)
        on = tf.cast(active, tf.float32)
        for name, g in zip(self.names, grads, strict=False):
            var, m, v = self.params[name], self.m[name], self.v[name]
            shape = [-1] + [1] * (len(var.shape) - 1)
            m.assign_add((g - m) * (1.0 - BETA_1))
            v.assign_add((tf.square(g) - v) * (1.0 - BETA_2))
            step = tf.reshape(alpha * (GEM_LR_SCALE if name == "p" else 1.0), shape) * m / (tf.sqrt(v) + EPSILON)
            if name not in BIAS_NAMES:  # decoupled weight decay, before the Adam step (as Keras does)
                step += var * tf.reshape(self.wd * self.lr, shape)
            # a frozen head keeps its weights (its moments may drift: it is never unfrozen)
            var.assign_sub(step * tf.reshape(on, shape))

    def train_step(
        self, x: np.ndarray, y: np.ndarray, active: np.ndarray, seed: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """One AdamW step of every active head on batch ``x``, ``y``; returns each head's (loss, correct)."""
        loss, correct = self._train_step(
            tf.convert_to_tensor(x),
            tf.convert_to_tensor(y, tf.int32),
            tf.convert_to_tensor(active),
            tf.constant(seed, tf.int64),
        )
        return loss.numpy(), correct.numpy()

    def _eval_impl(self, x: Any, y: Any) -> tuple[Any, Any]:
        loss, correct = self._losses(self.logits(x), y)
        return loss * tf.cast(tf.shape(y)[0], tf.float32), correct

    def evaluate(self, batches: Any) -> tuple[np.ndarray, np.ndarray]:
        """Mean loss and accuracy ``(K,)`` of every head over ``(x, y)`` batches (no dropout)."""
        loss, correct, n = np.zeros(self.k), np.zeros(self.k), 0
        for x, y in batches:
            lb, cb = self._eval_step(tf.convert_to_tensor(x), tf.convert_to_tensor(y, tf.int32))
            loss += lb.numpy()
            correct += cb.numpy()
            n += len(y)
        return (loss / n, correct / n) if n else (np.full(self.k, np.nan), np.full(self.k, np.nan))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities ``(K, B, n_classes)``."""
        return tf.nn.softmax(self.logits(tf.convert_to_tensor(x)), axis=-1).numpy()

    # -- best weights ---------------------------------------------------------------------------------
    def keep_best(self, improved: np.ndarray) -> None:
        """Remember the current weights of the heads in ``improved`` ``(K,)`` bool."""
        for name in self.names:
            var = self.params[name]
            mask = tf.reshape(tf.constant(improved), [-1] + [1] * (len(var.shape) - 1))
            self.best[name].assign(tf.where(mask, var, self.best[name]))

    def restore_best(self) -> None:
        for name in self.names:
            self.params[name].assign(self.best[name])

    def head_weights(self, i: int) -> dict[str, np.ndarray]:
        """Head ``i``'s parameters (without the head axis)."""
        return {name: self.params[name][i].numpy() for name in self.names}


# The trainable group of each head kind (see kinds.py): a class with HeadGroup's interface (train_step,
# evaluate, predict, keep_best, restore_best, head_weights, configs, k, kind); a closed-form kind's
# group has fit(x (n, V, C), y) instead of train_step (logreg.LogregGroup).
GROUPS: dict[str, Callable[..., Any]] = {"linear": HeadGroup, "mlp": HeadGroup, "map": HeadGroup, "logreg": LogregGroup}


def make_group(configs: Sequence[HeadConfig], in_dim: int, n_classes: int, seed: int) -> Any:
    """The group that trains ``configs`` (heads of one kind and width) together."""
    return GROUPS[configs[0].kind](configs, in_dim, n_classes, seed)
