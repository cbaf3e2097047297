"""Many heads trained as one: parameters stacked on a leading head axis, one batch fed to all.

A :class:`HeadGroup` holds ``K`` heads of one kind and shape. Its forward pass is a few ``einsum``
over the head axis, its optimizer is AdamW written out on the stacked tensors (each head with its own
learning rate and weight decay, the same update Keras' ``AdamW`` makes for a single head), and its
loss is the sum of the heads' mean cross-entropies, so every head gets exactly the gradient it would
get alone. A head whose validation accuracy stopped improving is frozen (its update is masked), and
the weights of its best epoch are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..shared.backbones import import_tensorflow
from .heads import HEAD_KINDS, NO_AUGMENT, SGD
from .sweep import HeadConfig

tf = import_tensorflow()

BETA_1, BETA_2, EPSILON = 0.9, 0.999, 1e-7  # Keras' Adam defaults


class HeadGroup:
    """``K`` heads of one (kind, hidden) trained together. Inputs: pooled ``(B, C)`` for linear and
    mlp heads, maps ``(B, h, w, C)`` for map heads; logits ``(K, B, n_classes)``. The kind's module
    (:mod:`featcache.trainer.heads`) gives the initial parameters (``HeadKind.init``) and the forward
    pass (``HeadKind.stacked_logits``, which reads :attr:`params`, :attr:`k`, :attr:`hidden`,
    :attr:`pool`, :attr:`augment` and :attr:`dropout`); this class trains them."""

    def __init__(self, configs: Sequence[HeadConfig], in_dim: int, n_classes: int, seed: int):
        kinds = {c.group for c in configs}
        if len(kinds) != 1:
            raise ValueError(f"a HeadGroup holds one kind and width, got {sorted(kinds)}")
        self.configs = list(configs)
        c0 = configs[0]
        self.kind, self.hidden, self.pool = c0.kind, c0.hidden, c0.pool
        self.augment = set() if c0.map_augment == NO_AUGMENT else set(c0.map_augment.split("+"))
        self.k = len(configs)
        self.n_classes = n_classes
        vec = lambda f: tf.constant([float(getattr(c, f)) for c in configs], tf.float32)  # noqa: E731
        self.lr, self.wd, self.dropout, self.smoothing = (
            vec("lr"),
            vec("weight_decay"),
            vec("dropout"),
            vec("label_smoothing"),
        )
        spec = HEAD_KINDS[self.kind]
        assert spec.init is not None and spec.stacked_logits is not None, "an SGD kind states both"
        self._logits = spec.stacked_logits
        assert spec.weights is not None, "an SGD kind states its weights"
        self.no_decay, self.lr_scale = spec.weights.NO_DECAY, spec.weights.LR_SCALE
        init = spec.init(c0, self.k, in_dim, n_classes, np.random.default_rng(seed)).arrays()
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
        """Logits ``(K, B, n_classes)`` (the kind's ``stacked_logits``); ``training`` turns on dropout and
        the maps' augmentations, drawn from ``seed`` (a stateless ``(2,)`` seed: the same seed, the same draw)."""
        return self._logits(self, x, training, seed)

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
            step = tf.reshape(alpha * self.lr_scale.get(name, 1.0), shape) * m / (tf.sqrt(v) + EPSILON)
            if name not in self.no_decay:  # decoupled weight decay, before the Adam step (as Keras does)
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


def make_group(configs: Sequence[HeadConfig], in_dim: int, n_classes: int, seed: int) -> Any:
    """The group that trains ``configs`` (heads of one kind and width) together: a :class:`HeadGroup`
    for an SGD kind, the kind's own ``HeadKind.group`` for a closed-form one (``heads.logreg.LogregGroup``:
    HeadGroup's interface after training, ``fit(x (n, V, C), y)`` instead of ``train_step``)."""
    kind = HEAD_KINDS[configs[0].kind]
    group = HeadGroup if kind.fit == SGD else kind.group
    assert group is not None, "register() checks that a closed-form kind states its group"
    return group(configs, in_dim, n_classes, seed)
