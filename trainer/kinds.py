"""The head kinds a sweep can train, as a registry: what each reads from the cache, which grid keys
it reads and how it is fitted. Adding a kind is one :func:`register` call here plus its trainable
group (``engine``, or ``closed_form`` for a kind fitted without SGD) and its Keras model
(``keras_heads``); the grid, the loop and the run directory need no change.

Two ways of fitting: ``sgd`` kinds train by epochs of minibatches with early stopping on val, all
of them in one pass over the data; ``closed-form`` kinds (the L-BFGS logistic regression) are fitted
once, before the epochs, on every train view, and bring their own feature normalisation (they read
the pooled vectors as cached, not the sweep's standardised ones).

No TensorFlow here: the command line and the sweep validation read this registry.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class HeadKind:
    """``inputs``: ``"pooled"`` (``(C,)`` vectors), ``"maps"`` (``(h, w, C)`` feature maps) or
    ``"top_input"`` (the input of the backbone's last block, kept by the extractor: the ``top`` kind).
    ``shape_keys``: the grid keys (beyond :data:`SGD_KEYS`, which every SGD kind reads) that shape
    this kind; the keys a kind does not read are neutralised for it, so a grid never holds two equal
    heads. ``fit``: :data:`SGD` or :data:`CLOSED_FORM` (see the module docstring)."""

    name: str
    inputs: str
    shape_keys: tuple[str, ...]
    help: str
    fit: str = SGD

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


# Registry order is simplicity order: the one-SE rule prefers the earlier kind among tied heads.
register(
    HeadKind(
        "logreg",
        POOLED,
        ("c", "power", "features"),
        "multinomial logistic regression by L-BFGS (scikit-learn's objective) on pooled vectors",
        fit=CLOSED_FORM,
    )
)
register(HeadKind("linear", POOLED, ("features",), "softmax on pooled vectors"))
register(HeadKind("mlp", POOLED, ("hidden", "dropout", "features"), "one hidden ReLU layer on pooled vectors"))
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

register(HeadKind("map", MAPS, ("hidden", "dropout", "pool", "map_augment"), "1x1 conv + pooling on the 7x7 maps"))
register(
    HeadKind(
        "top",
        TOP_INPUT,
        ("dropout",),
        "the backbone's last block (MobileNetV2: Conv_1, its BatchNorm, ReLU6) copied with its weights and "
        "fine-tuned from the cached top input, then pooling, dropout, dense (needs a cache extracted with "
        "--keep-top-input; builds the backbone once to copy the block)",
    )
)
