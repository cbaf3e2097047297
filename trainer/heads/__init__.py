"""The head kinds, one module each, and their registry.

Every kind fills one contract (:mod:`.base`: its declaration, typed weights, stacked initial
parameters and forward pass for the SGD engine, Keras layers for export, numpy forward pass) in its
own module: :mod:`.linear`, :mod:`.mlp`, :mod:`.map` (with its poolings and augmentations),
:mod:`.logreg` (the L-BFGS path) and :mod:`.top` (the backbone's last block fine-tuned). Beside the
grid: :mod:`.knn` (the k-NN baseline) and :mod:`.ensemble` (the mean of the best heads, and its export).

Importing this package registers the kinds, in simplicity order (the one-SE rule prefers the
earlier kind among tied heads); it imports no TensorFlow.
"""

from __future__ import annotations

from . import linear, logreg, map, mlp, top
from .base import (
    CLOSED_FORM,
    FEATURE_SETS,
    HEAD_KINDS,
    MAPS,
    POOLED,
    SGD,
    SGD_KEYS,
    TAPS,
    TOP_INPUT,
    HeadKind,
    Weights,
    closed_form,
    reads_maps,
    reads_top_input,
    register,
)
from .map import MAP_AUGMENTS, MAP_POOLS, NO_AUGMENT

for _module in (logreg, linear, mlp, map, top):  # registry order is simplicity order
    register(_module.KIND)

__all__ = [
    "CLOSED_FORM",
    "FEATURE_SETS",
    "HEAD_KINDS",
    "MAPS",
    "MAP_AUGMENTS",
    "MAP_POOLS",
    "NO_AUGMENT",
    "POOLED",
    "SGD",
    "SGD_KEYS",
    "TAPS",
    "TOP_INPUT",
    "HeadKind",
    "Weights",
    "closed_form",
    "reads_maps",
    "reads_top_input",
    "register",
]
