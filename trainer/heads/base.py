"""The contract every head kind fills, the typed weights it states, and the registry of kinds.

A head kind is one module of this package (``linear``, ``mlp``, ``map``, ``logreg``, ``top``) that
declares one :class:`HeadKind`: its name, what it reads from the cache, its grid keys and help, how it
is fitted, its weights as a :class:`Weights` dataclass (whose fields are the parameter names in a run's
``heads.npz``, docs/run-format.md) and its functions: the stacked initial parameters and forward pass
the SGD engine trains (``engine.HeadGroup``), the Keras layers a run exports, and the forward pass in
numpy. The registry (:data:`HEAD_KINDS`) is filled by ``heads/__init__`` in simplicity order; the grid,
the loop, the run directory, predict and export read it, so adding a kind is its module and one
:func:`register` line there (scikit-learn's estimator contract: one interface, every kind fills it).

Two ways of fitting: ``sgd`` kinds train by epochs of minibatches with early stopping on val, all of
them in one pass over the data (``engine``); ``closed-form`` kinds (the L-BFGS logistic regression)
are fitted once, before the epochs, on every train view, by their own group, and bring their own
feature normalisation (they read the pooled vectors as cached, not the sweep's standardised ones).

No TensorFlow here nor in a kind module's top level: the command line and the sweep validation read
the registry; a kind's TensorFlow and Keras functions import it when called (:func:`tensorflow`,
:func:`keras`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np

if TYPE_CHECKING:
    from ..sweep import HeadConfig

POOLED, MAPS, TOP_INPUT = "pooled", "maps", "top_input"
# What a pooled head reads (grid key ``features``): the pooled maps alone, or with the cache's layer taps
# (the pooled outputs of earlier layers, docs/cache-format.md) concatenated after them.
TAPS = "taps"
FEATURE_SETS = {
    POOLED: "the pooled maps (C channels)",
    TAPS: "the pooled maps and the cache's layer taps concatenated (C + T; the cache must be extracted with taps)",
}
SGD, CLOSED_FORM = "sgd", "closed-form"
# The grid keys every SGD kind reads (the optimiser's and the loss's); ``shape_keys`` add the rest.
SGD_KEYS = ("lr", "weight_decay", "label_smoothing")

Shapes = dict[str, tuple[int, ...]]


class Weights:
    """Base of a kind's weights: a frozen dataclass whose fields are its parameters' names in
    ``heads.npz`` (``None``: a parameter this head's config does not have). One head's arrays, or,
    from a kind's ``init``, ``K`` heads' stacked on a leading head axis. ``NO_DECAY``: the parameters the
    SGD engine never weight-decays (biases); ``LR_SCALE``: those it steps at a multiple of the head's lr."""

    NO_DECAY: ClassVar[tuple[str, ...]] = ()
    LR_SCALE: ClassVar[Mapping[str, float]] = {}

    @classmethod
    def of(cls, arrays: Mapping[str, Any] | Weights) -> Self:
        """The typed weights of ``arrays`` (a heads.npz dict, as ``rundir.head_params`` or a group's
        ``head_weights`` gives it); a missing parameter is a ``TypeError`` naming it."""
        if isinstance(arrays, cls):
            return arrays
        items = arrays.arrays() if isinstance(arrays, Weights) else arrays
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: np.asarray(v) for k, v in items.items() if k in names})

    def arrays(self) -> dict[str, np.ndarray]:
        """The parameters by name (as heads.npz stores them), the absent ones left out."""
        return {f.name: v for f in fields(self) if (v := getattr(self, f.name)) is not None}  # type: ignore[arg-type]


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax along ``axis`` in ``z``'s float dtype (shifted by the max: no overflow)."""
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def tensorflow() -> Any:
    """TensorFlow, imported with featcache's defaults (for a kind's stacked forward pass)."""
    from ...shared.backbones import import_tensorflow

    return import_tensorflow()


def keras() -> Any:
    """Keras, imported after TensorFlow's defaults are set (for a kind's exported layers)."""
    tensorflow()
    import keras as k

    return k


# A kind's functions (``cfg``: the head's HeadConfig; ``w``: its Weights):
#   shapes(cfg, channels, classes) -> the heads.npz parameter shapes of one head;
#   init(cfg, k, in_dim, n_classes, rng) -> K stacked heads' initial Weights (SGD kinds);
#   stacked_logits(group, x, training, seed) -> logits (K, B, n) in TensorFlow, from the group's stacked
#       parameters (``group``: an engine.HeadGroup; SGD kinds);
#   keras_head(x, cfg, w, n_classes) -> class probabilities, Keras layers from the (standardised) input;
#   probs(cfg, w, x) -> class probabilities (B, n) in numpy, from the input the Keras head takes.
ShapesFn = Callable[["HeadConfig", int, int], Shapes]
InitFn = Callable[["HeadConfig", int, int, int, np.random.Generator], Weights]
StackedFn = Callable[[Any, Any, bool, Any], Any]
KerasFn = Callable[[Any, "HeadConfig", Any, int], Any]
ProbsFn = Callable[["HeadConfig", Any, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class HeadKind:
    """``inputs``: ``"pooled"`` (``(C,)`` vectors), ``"maps"`` (``(h, w, C)`` feature maps) or
    ``"top_input"`` (the input of the backbone's last block, kept by the extractor: the ``top`` kind).
    ``shape_keys``: the grid keys (beyond :data:`SGD_KEYS`, which every SGD kind reads) that shape
    this kind; the keys a kind does not read are neutralised for it, so a grid never holds two equal
    heads. ``fit``: :data:`SGD` or :data:`CLOSED_FORM` (see the module docstring). ``weights``: the
    kind's :class:`Weights`; the functions are described above; ``group``: a closed-form kind's group
    class (the interface of ``engine.HeadGroup`` after training, with ``fit`` instead of epochs)."""

    name: str
    inputs: str
    shape_keys: tuple[str, ...]
    help: str
    fit: str = SGD
    weights: type[Weights] | None = None
    shapes: ShapesFn | None = None
    init: InitFn | None = None
    stacked_logits: StackedFn | None = None
    keras_head: KerasFn | None = None
    probs: ProbsFn | None = None
    group: Callable[..., Any] | None = None

    @property
    def keys(self) -> tuple[str, ...]:
        """Every grid key (beyond ``head``) this kind reads."""
        return (SGD_KEYS if self.fit == SGD else ()) + self.shape_keys


HEAD_KINDS: dict[str, HeadKind] = {}


def register(kind: HeadKind) -> HeadKind:
    """Add ``kind`` to the registry (a later registration of the same name replaces it)."""
    if kind.inputs not in (POOLED, MAPS, TOP_INPUT):
        raise ValueError(
            f"head kind {kind.name!r}: inputs must be {POOLED!r}, {MAPS!r} or {TOP_INPUT!r}, got {kind.inputs!r}"
        )
    if kind.fit not in (SGD, CLOSED_FORM):
        raise ValueError(f"head kind {kind.name!r}: fit must be {SGD!r} or {CLOSED_FORM!r}, got {kind.fit!r}")
    if kind.fit == SGD and kind.inputs != TOP_INPUT and (kind.init is None or kind.stacked_logits is None):
        raise ValueError(f"head kind {kind.name!r}: an SGD kind states its init and stacked_logits")
    if kind.fit == CLOSED_FORM and kind.group is None:
        raise ValueError(f"head kind {kind.name!r}: a closed-form kind states its group")
    HEAD_KINDS[kind.name] = kind
    return kind


def reads_maps(kind: str) -> bool:
    """Whether heads of ``kind`` train on the feature maps (else on the pooled vectors)."""
    return HEAD_KINDS[kind].inputs == MAPS


def reads_top_input(kind: str) -> bool:
    """Whether heads of ``kind`` fine-tune the backbone's last block from the cached top input."""
    return HEAD_KINDS[kind].inputs == TOP_INPUT


def closed_form(kind: str) -> bool:
    """Whether heads of ``kind`` are fitted once without SGD (and normalise their own features)."""
    return HEAD_KINDS[kind].fit == CLOSED_FORM


def glorot(
    rng: np.random.Generator, k: int, fan_in: int, fan_out: int, shape: tuple[int, ...] | None = None
) -> np.ndarray:
    """``k`` Glorot-uniform kernels ``(k, *shape)`` float32 (``shape`` defaults to ``(fan_in, fan_out)``)."""
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, (k, *(shape or (fan_in, fan_out)))).astype(np.float32)


def zeros(k: int, *shape: int) -> np.ndarray:
    """``k`` zero biases ``(k, *shape)`` float32."""
    return np.zeros((k, *shape), np.float32)


def stacked_dense(x: Any, w: Any) -> Any:
    """``einsum("bc,kcn->kbn")`` of ``x (B, C)`` and ``K`` kernels ``w (K, C, n)``, as one
    ``(B, C) @ (C, K*n)`` matrix product: ~15% faster on CPU."""
    tf = tensorflow()
    k, c, n = w.shape
    wide = tf.reshape(tf.transpose(w, [1, 0, 2]), [c, k * n])
    return tf.transpose(tf.reshape(tf.matmul(x, wide), [-1, k, n]), [1, 0, 2])


def stacked_dropout(h: Any, rate: Any, seed: Any) -> Any:
    """``h (K, B, D)`` with each head's ``rate (K,)`` of its units dropped (inverted dropout, the rest
    scaled by ``1/keep``), drawn from the stateless ``seed``."""
    tf = tensorflow()
    keep = 1.0 - rate[:, None, None]
    mask = tf.cast(tf.random.stateless_uniform(tf.shape(h), seed=seed) < keep, tf.float32)
    return h * mask / keep


def keras_dense(x: Any, units: int, kernel: np.ndarray, bias: np.ndarray, name: str, activation: str) -> Any:
    """A Keras ``Dense`` layer named ``name`` on ``x``, holding ``kernel (C, units)`` and ``bias``."""
    layer = keras().layers.Dense(units, activation=activation, name=name)
    y = layer(x)
    layer.set_weights([kernel, bias])
    return y
