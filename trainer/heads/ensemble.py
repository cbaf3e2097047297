"""The ensemble beside the grid: the mean class probabilities of the best heads by val accuracy
(:func:`ensemble`, ``k`` picked on val), and its export as one Keras model (:func:`ensemble_model`: one
backbone, each member a branch). Which of a run's ensembles can be exported is ``predict.ensemble_members``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ...shared.backbones import BackboneSpec, ResolvedWeights, build_backbone
from ...shared.errors import FeatcacheError
from ..selection import Candidate
from .base import keras

if TYPE_CHECKING:
    from ..sweep import HeadConfig


def ensemble(
    cands: Sequence[Candidate], y_val: np.ndarray, max_k: int = 10, name: str = "ensemble"
) -> tuple[Candidate, list[str]]:
    """The mean probabilities of the top-``k`` candidates by val accuracy, ``k`` in ``1..max_k`` with
    the best val accuracy of the mean (the smallest such ``k``); returns it and its members' names.
    Its cost is the sum of its members'."""
    order = sorted(range(len(cands)), key=lambda i: -cands[i].val_acc(y_val))[:max_k]
    best_k, best_acc = 1, -1.0
    total = np.zeros_like(cands[order[0]].val, dtype=np.float64)
    for k, i in enumerate(order, 1):
        total += cands[i].val
        acc = float(np.mean(total.argmax(1) == y_val))
        if acc > best_acc:
            best_k, best_acc = k, acc
    members = [cands[i] for i in order[:best_k]]
    mean = lambda split: np.mean([getattr(c, split) for c in members], axis=0)  # noqa: E731
    out = Candidate(f"{name} of top {best_k}", mean("val"), mean("test"), sum(c.cost for c in members), {"k": best_k})
    return out, [c.name for c in members]


def ensemble_model(
    spec: BackboneSpec,
    weights: ResolvedWeights,
    members: list[tuple[HeadConfig, Any, bool]],
    resize: str,
    classes: list[str],
) -> Any:
    """The mean of several heads' class probabilities on one image, as ``keras_heads.full_model`` builds
    one head's (an image as decoded, resized with ``resize`` and preprocessed inside; the
    ``{probabilities, class}`` output): one backbone, shared by every member, each member a branch
    (``member<i>``) on the pooled vector or the maps. ``members``: ``(config, head model, flip)``; a member
    with ``flip`` is the mean of its probabilities on the image and on its mirror (the backbone then runs
    once more, on the mirror)."""
    from ..keras_heads import CLASS, PROBABILITIES, image_input

    k = keras()
    if spec.rescale is None:
        raise FeatcacheError(
            f"backbone {spec.name!r} states no affine preprocessing: cannot build a self-contained model"
        )
    image, x = image_input(spec, resize)
    backbone = build_backbone(spec, weights)
    maps = backbone(x, training=False)
    mirrored = backbone(k.ops.flip(x, axis=2), training=False) if any(f for _, _, f in members) else None
    pool = k.layers.GlobalAveragePooling2D(name="pool")
    pooled = {id(maps): pool(maps)}
    if mirrored is not None:
        pooled[id(mirrored)] = pool(mirrored)
    ys = []
    for i, (cfg, head, flip) in enumerate(members):
        head.name = f"member{i}_{cfg.kind}"  # one model may not hold two sub-models of one name
        views = [maps, mirrored] if flip else [maps]
        out = [head(f if cfg.reads_maps else pooled[id(f)]) for f in views]
        ys.append(out[0] if len(out) == 1 else k.layers.Average(name=f"member{i}_tta")(out))
    y = k.layers.Average(name=PROBABILITIES)(ys) if len(ys) > 1 else k.layers.Identity(name=PROBABILITIES)(ys[0])
    names = k.layers.StringLookup(vocabulary=list(classes), invert=True, num_oov_indices=0, name="class_names")
    return k.Model(
        image, {PROBABILITIES: y, CLASS: names(k.ops.argmax(y, axis=-1))}, name=f"featcache_{spec.name}_ensemble"
    )
