"""The head kinds a sweep can train, as a registry: what each reads from the cache and which grid keys
shape it. Adding a kind is one :func:`register` call here plus its trainable group (``engine``) and
its Keras model (``keras_heads``); the grid, the loop and the run directory need no change.

No TensorFlow here: the command line and the sweep validation read this registry.
"""

from __future__ import annotations

from dataclasses import dataclass

POOLED, MAPS = "pooled", "maps"


@dataclass(frozen=True)
class HeadKind:
    """``inputs``: ``"pooled"`` (``(C,)`` vectors) or ``"maps"`` (``(h, w, C)`` feature maps).
    ``shape_keys``: the grid keys (beyond lr, weight_decay and label_smoothing, which every kind uses)
    that this kind reads; other keys are neutralised for it, so a grid never holds two equal heads."""

    name: str
    inputs: str
    shape_keys: tuple[str, ...]
    help: str


HEAD_KINDS: dict[str, HeadKind] = {}


def register(kind: HeadKind) -> HeadKind:
    """Add ``kind`` to the registry (a later registration of the same name replaces it)."""
    if kind.inputs not in (POOLED, MAPS):
        raise ValueError(f"head kind {kind.name!r}: inputs must be {POOLED!r} or {MAPS!r}, got {kind.inputs!r}")
    HEAD_KINDS[kind.name] = kind
    return kind


def reads_maps(kind: str) -> bool:
    """Whether heads of ``kind`` train on the feature maps (else on the pooled vectors)."""
    return HEAD_KINDS[kind].inputs == MAPS


register(HeadKind("linear", POOLED, (), "softmax on pooled vectors"))
register(HeadKind("mlp", POOLED, ("hidden", "dropout"), "one hidden ReLU layer on pooled vectors"))
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
