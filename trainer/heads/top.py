"""The ``top`` head: the backbone's last block fine-tuned from the cache, without running the backbone.

A cache extracted with ``keep_top_input=True`` holds, per row, the input of the backbone's last block
(``top_input``; MobileNetV2: the 7x7x320 output of ``block_16_project_BN``). A ``top`` head holds copies
of that block's layers (``BackboneSpec.top_layers``; MobileNetV2: ``Conv_1``, ``Conv_1_bn``, ReLU6) with
the backbone's weights, then global average pooling, dropout (grid key ``dropout``) and a dense softmax.
The dense layer starts as the linear probe of the block's pooled output (:func:`probe_dense`; without
val rows it is warmed :data:`WARM_EPOCHS` epochs with the block frozen, as issue #29's probe was), then
everything trains with AdamW (``lr``, ``weight_decay``, ``label_smoothing``) on the cached input with a
random half of the rows mirrored each epoch, the epoch best on val kept (patience and epochs from the
sweep's settings). Measured on CIFAR-10 dev (docs/quality.md, "The top head"): the probe start took val
accuracy from 0.710 (warmed dense, 17 epochs) to 0.724 in 12 epochs (0.715 after the first).
Its BatchNormalization layers stay in inference mode with the backbone's statistics (``trainable =
False``: Keras 3 would otherwise run them on batch statistics, ../shared/README.md), so the block
computes what the backbone computes until it learns.

Export splices the fine-tuned block back: the backbone up to the top input, then this head
(:func:`featcache.trainer.keras_heads.full_model`), so the exported model still takes an image. This kind
has its own training (:func:`train_top`, run beside the SGD loop by ``run.train_all``) and its own Keras
model (:func:`build_model`): the engine's stacked group and ``keras_heads.head_model`` are not for it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ...shared.backbones import (
    RANDOM_PREFIX,
    BackboneSpec,
    ResolvedWeights,
    build_backbone,
    get_backbone,
    import_tensorflow,
    resolve_weights,
)
from ...shared.cache import schema
from ...shared.errors import FeatcacheError
from .base import TOP_INPUT, HeadKind, Shapes, Weights
from .linear import CLASSIFY

if TYPE_CHECKING:
    from ..data import Dataset
    from ..settings import Settings
    from ..sweep import HeadConfig

WARM_EPOCHS = 5  # epochs of the dense layer alone, the block frozen, before everything trains (no val rows)
BATCH_SIZE = 64  # rows per step of a top head at most (train_top)
MIRROR = True  # train on the cached top input and its mirror (train_top)
PROBE = True  # start the dense layer at the linear probe of the block's pooled output (probe_dense)
DENSE = CLASSIFY


@dataclass(frozen=True)
class TopWeights(Weights):
    """The dense layer's ``W (C, n)`` and ``b (n,)``, and ``block``: each copied layer's weights, keyed
    ``"<layer>/<k>"`` as heads.npz stores them (shaped as the backbone's)."""

    W: np.ndarray
    b: np.ndarray
    block: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def of(cls, arrays: Mapping[str, Any] | Weights) -> TopWeights:
        if isinstance(arrays, TopWeights):
            return arrays
        items = arrays.arrays() if isinstance(arrays, Weights) else arrays
        block = {k: np.asarray(v) for k, v in items.items() if "/" in k}
        return cls(np.asarray(items["W"]), np.asarray(items["b"]), block)

    def arrays(self) -> dict[str, np.ndarray]:
        return {**self.block, "W": self.W, "b": self.b}


def shapes(cfg: HeadConfig, channels: int, classes: int) -> Shapes:
    """The dense layer's (the block's layers, ``"<layer>/<k>"``, are shaped as the backbone's)."""
    return {"W": (channels, classes), "b": (classes,)}


def require_top_input(cache: Any) -> None:
    """One line naming the extraction's option when ``cache`` has no top input."""
    if schema.top_input_of(cache.fingerprint) is None:
        raise FeatcacheError(
            f"{cache.path}: head 'top' fine-tunes the backbone's last block from the cache's top_input, which it "
            "was extracted without: extract it again with keep_top_input=True (featcache-extract --keep-top-input)"
        )


@functools.lru_cache(maxsize=4)
def _block_configs(spec: BackboneSpec) -> tuple[tuple[str, str], ...]:
    """``(class name, JSON config)`` of each layer of the spec's last block, from a randomly initialised
    build (the layers' shapes and options; their weights come from the run or the backbone)."""
    import json

    import_tensorflow()
    model = build_backbone(spec, ResolvedWeights("random", None, f"{RANDOM_PREFIX}0", 0))
    return tuple(
        (type(model.get_layer(n)).__name__, json.dumps(model.get_layer(n).get_config())) for n in spec.top_layers
    )


def block_spec(fingerprint: dict[str, Any], backbone: str | None = None) -> BackboneSpec:
    """The registered backbone of a cache with this fingerprint that names its last block."""
    spec = get_backbone(backbone or fingerprint["backbone"])
    if spec.top_input is None or not spec.top_layers:
        raise FeatcacheError(f"backbone {spec.name!r} names no last block: no 'top' head for it")
    return spec


def build_model(
    spec: BackboneSpec,
    in_shape: tuple[int, ...],
    n_classes: int,
    dropout: float,
    params: Mapping[str, np.ndarray] | TopWeights | None = None,
    source: Any = None,
) -> Any:
    """The top head as a Keras model from ``in_shape`` (the top input) to class probabilities: copies of
    the spec's last block, pooling, dropout, dense. Weights from ``params`` (:class:`TopWeights`, or
    :func:`head_weights`'s dict) or, for the block, from the built backbone ``source`` (the dense layer
    then stays initialised)."""
    import json

    import_tensorflow()
    import keras

    inp = keras.Input(in_shape, name="top_input")
    x = inp
    block = []
    for class_name, config in _block_configs(spec):
        layer = getattr(keras.layers, class_name).from_config(json.loads(config))
        x = layer(x)
        block.append(layer)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    dense = keras.layers.Dense(n_classes, activation="softmax", name=DENSE)
    model = keras.Model(inp, dense(x), name="head_top")
    try:
        w = None if params is None else TopWeights.of(params)
        for layer in block:
            if source is not None:
                layer.set_weights(source.get_layer(layer.name).get_weights())
            elif w is not None:
                layer.set_weights([w.block[f"{layer.name}/{k}"] for k in range(len(layer.weights))])
        if w is not None:
            dense.set_weights([w.W, w.b])
    except (KeyError, ValueError) as exc:
        raise FeatcacheError(
            f"head 'top': its parameters do not fit backbone {spec.name!r}'s last block ({exc})"
        ) from None
    for layer in block:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False  # inference mode, the backbone's statistics (module docstring)
    return model


def head_weights(model: Any) -> dict[str, np.ndarray]:
    """The head's parameters for heads.npz (:class:`TopWeights`): each block layer's weights as
    ``"<layer>/<k>"``, the dense layer's as ``W`` and ``b``."""
    block: dict[str, np.ndarray] = {}
    for layer in model.layers:
        if layer.name != DENSE and layer.weights and layer.name not in ("pool", "dropout"):
            for k, w in enumerate(layer.get_weights()):
                block[f"{layer.name}/{k}"] = np.asarray(w)
    kernel, bias = (np.asarray(w) for w in model.get_layer(DENSE).get_weights())
    return TopWeights(kernel, bias, block).arrays()


@dataclass
class TopGroup:
    """One top head, with the interface the loop's groups offer the run (configs, k, head_weights)."""

    configs: list[HeadConfig]
    model: Any
    n_classes: int
    kind: str = "top"
    k: int = 1

    def head_weights(self, i: int) -> dict[str, np.ndarray]:
        return head_weights(self.model)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict(np.asarray(x, np.float32), batch_size=256, verbose=0)[None]


@dataclass
class TopState:
    """A trained top head as the run reads a :class:`~featcache.trainer.loop.GroupState`: its val and
    test probabilities (computed once, best weights restored), no views."""

    group: TopGroup
    probs: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0
    n_views: int = 1
    reads_maps: bool = False
    closed_form: bool = False

    def predictions(self, split: str) -> np.ndarray:
        return self.probs[split][None]

    def probabilities(self, split: str, head: int) -> np.ndarray:
        return self.probs[split]

    def tta_probabilities(self, split: str) -> None:
        return None


def _weights_of(fp: dict[str, Any], spec: BackboneSpec) -> ResolvedWeights:
    """The weights the cache was made with (checked by sha256), to copy the block from."""
    recorded = str(fp["weights_sha256"])
    if recorded.startswith(RANDOM_PREFIX):
        return resolve_weights(spec, "random", int(recorded[len(RANDOM_PREFIX) :]))
    w = resolve_weights(spec, fp["weights_path"] if fp.get("weights_source") == "file" else "imagenet")
    if w.sha256 != recorded:
        raise FeatcacheError(f"{w.path}: weights sha256 {w.sha256[:12]} is not the cache's {recorded[:12]}")
    return w


def _loss_acc(probs: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    p = np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)
    return float(-np.log(p).mean()), float((probs.argmax(-1) == y).mean())


def mirrored(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``x (n, h, w, c)`` with the rows where ``rows (n,)`` is True flipped left-right (the width axis):
    the top input of an image is close to the mirror of its mirror's, the block's 1x1 convolution and
    the pooling after it commute with the flip, so this is the ``--views`` mirror at a copy's cost."""
    out = np.array(x, copy=True)
    out[rows] = out[rows, :, ::-1]
    return out


def probe_dense(model: Any, x: dict[str, np.ndarray], y: dict[str, np.ndarray], n_classes: int) -> float:
    """Set the dense layer of a top ``model`` to the linear probe of its pooled features: the L-BFGS
    logistic regression (:func:`~featcache.trainer.heads.logreg.fit_path`, ``C`` in ``logreg.DEFAULT_CS``) on
    the standardised outputs of its ``pool`` layer for ``x["train"]``, the ``C`` best on ``x["val"]``
    (ties: the smaller), the standardisation folded into the weights. Fine-tuning then starts from the
    probe (LP-FT, Kumar et al., 2022) instead of a dense layer warmed for :data:`WARM_EPOCHS` epochs.
    Returns the ``C``."""
    import keras

    from .logreg import DEFAULT_CS, fit_path

    pool = keras.Model(model.inputs[0], model.get_layer("pool").output)
    f = {s: np.asarray(pool.predict(x[s], batch_size=256, verbose=0), np.float64) for s in ("train", "val")}
    mean, std = f["train"].mean(axis=0), np.maximum(f["train"].std(axis=0), 1e-6)
    fits = fit_path(((f["train"] - mean) / std).astype(np.float32), y["train"], n_classes, DEFAULT_CS, dtype=np.float32)
    best = max(
        fits, key=lambda t: (float((t.predict_proba((f["val"] - mean) / std).argmax(1) == y["val"]).mean()), -t.c)
    )
    w = best.W / std[:, None]
    model.get_layer(DENSE).set_weights([w.astype(np.float32), (best.b - mean @ w).astype(np.float32)])
    return best.c


def train_top(
    ds: Dataset, configs: list[HeadConfig], settings: Settings, mirror: bool = MIRROR, probe: bool = PROBE
) -> tuple[list[dict[str, Any]], list[TopState]]:
    """Train every top head of ``configs`` on ``ds`` (its splits' ``top`` inputs loaded); the rows for
    results.json (as the loop's) and the trained states. Batches of ``settings.batch_size`` rows, at most
    :data:`BATCH_SIZE` (the pooled heads' default 256 gives the block too few steps an epoch to move);
    with ``mirror`` each epoch flips a random half of the train rows (:func:`mirrored`), drawn from
    ``settings.seed``. ``train_acc`` is the epoch's running accuracy under dropout (fit's)."""
    import_tensorflow()
    import keras

    cache = ds.cache
    assert cache is not None, "top heads read their inputs from the cache"
    fp = cache.fingerprint
    from ..identity import importable_backbone  # a cache may be someone else's: nothing it names is imported

    spec = block_spec(fp, importable_backbone(fp, str(cache.path)))
    backbone = build_backbone(spec, _weights_of(fp, spec))
    n = len(ds.classes)
    x = {s: np.asarray(getattr(ds, s).top, np.float32) for s in ("train", "val", "test")}
    y = {s: getattr(ds, s).y for s in ("train", "val", "test")}
    onehot = np.eye(n, dtype=np.float32)[y["train"]]
    batch = min(settings.batch_size, BATCH_SIZE)
    rows, states = [], []
    for cfg in configs:
        t0 = time.perf_counter()
        keras.utils.set_random_seed(settings.seed)
        rng = np.random.default_rng(settings.seed)
        model = build_model(spec, x["train"].shape[1:], n, cfg.dropout, source=backbone)
        block = [la for la in model.layers if la.name in spec.top_layers]
        warm_epochs = WARM_EPOCHS
        if probe and len(y["val"]):
            probe_dense(model, x, y, n)
            warm_epochs = 0
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
        history: list[dict[str, float]] = []
        best = (-1.0, np.inf, 0, None)
        stale = 0
        for epoch in range(1, settings.epochs + 1):
            warm = epoch <= warm_epochs
            if epoch in (1, warm_epochs + 1):  # the block frozen while the dense layer warms, then all
                for layer in block:
                    layer.trainable = not warm and not isinstance(layer, keras.layers.BatchNormalization)
                model.compile(keras.optimizers.AdamW(cfg.lr, weight_decay=cfg.weight_decay), loss, metrics=["accuracy"])
            xe = mirrored(x["train"], rng.random(len(onehot)) < 0.5) if mirror else x["train"]
            fitted = model.fit(xe, onehot, batch_size=batch, epochs=1, verbose=0, shuffle=True).history
            vloss, vacc = _loss_acc(model.predict(x["val"], batch_size=256, verbose=0), y["val"])
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": float(fitted["loss"][-1]),
                    "train_acc": float(fitted["accuracy"][-1]),
                    "val_loss": vloss,
                    "val_acc": vacc,
                }
            )
            if vacc > best[0] or (vacc == best[0] and vloss < best[1]):
                best, stale = (vacc, vloss, epoch, model.get_weights()), 0
            elif not warm:
                stale += 1
                if stale >= settings.patience:
                    break
        model.set_weights(best[3])
        state = TopState(TopGroup([cfg], model, n))
        state.probs = {s: model.predict(x[s], batch_size=256, verbose=0) for s in ("val", "test")}
        state.seconds = time.perf_counter() - t0
        has_test = len(y["test"]) > 0
        tloss, tacc = _loss_acc(state.probs["test"], y["test"]) if has_test else (None, None)
        rows.append(
            {
                "name": cfg.name,
                "config": cfg.to_json(),
                "epochs": history,
                "best_epoch": int(best[2]),
                "val_acc": float(best[0]),
                "val_loss": float(best[1]),
                "test_acc": tacc,
                "test_loss": tloss,
                "group_wall_seconds": round(state.seconds, 3),
                "group_size": 1,
                "views": 1,
                "val_acc_tta": None,
                "test_acc_tta": None,
                "use_tta": False,
            }
        )
        states.append(state)
    return rows, states


KIND = HeadKind(
    "top",
    TOP_INPUT,
    ("dropout",),
    "the backbone's last block (MobileNetV2: Conv_1, its BatchNorm, ReLU6) copied with its weights and "
    "fine-tuned from the cached top input, then pooling, dropout, dense (needs a cache extracted with "
    "--keep-top-input; builds the backbone once to copy the block)",
    weights=TopWeights,
    shapes=shapes,
)
