"""TensorBoard event files for a sweep: ``RUN/tensorboard/<head>/`` per head and ``RUN/tensorboard/grid``.

Written with TensorFlow's own ``tf.summary.write`` and the scalar and text plugins' metadata, as
``tf.summary.scalar``/``text`` would write them (those two need the ``tensorboard`` package; writing does not;
``pip install tensorboard`` and ``tensorboard --logdir runs/`` to look). Per head, per epoch: ``loss/train``,
``loss/val``, ``accuracy/train``, ``accuracy/val`` (a logistic regression's one L-BFGS fit is its
epoch 1), and the head's settings as text. The grid (every head's settings beside its val and test
accuracy) goes to TensorBoard's HParams dashboard when the ``tensorboard`` package is installed, and
always as a text table under ``grid``, so the comparison is there either way.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from ..shared.backbones import import_tensorflow

TENSORBOARD_DIR = "tensorboard"
GRID = "grid"
SCALARS = (
    ("loss/train", "train_loss"),
    ("loss/val", "val_loss"),
    ("accuracy/train", "train_acc"),
    ("accuracy/val", "val_acc"),
)
_UNSAFE = re.compile(r"[^A-Za-z0-9._+:=-]")


def head_dir(name: str) -> str:
    """A head's folder name under ``tensorboard/``: its name, with anything but letters, digits and
    ``._+:=-`` replaced by ``_`` and then a short hash of the name (so that ``a b`` and ``a_b`` stay apart)."""
    safe = _UNSAFE.sub("_", name)
    return safe if safe == name else f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _hparams(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if isinstance(v, bool | int | float | str)}


def _grid_table(heads: list[dict[str, Any]]) -> str:
    keys = sorted({k for h in heads for k in _hparams(h["config"])})
    rows = ["| head | " + " | ".join(keys) + " | val acc | test acc |", "|" + "---|" * (len(keys) + 3)]
    for h in heads:
        cfg = _hparams(h["config"])
        test = "" if h.get("test_acc") is None else f"{h['test_acc']:.4f}"
        rows.append(
            f"| {h['name']} | " + " | ".join(str(cfg.get(k, "")) for k in keys) + f" | {h['val_acc']:.4f} | {test} |"
        )
    return "\n".join(rows)


def _metadata(tf: Any, plugin: str, data_class: int) -> bytes:
    """A serialized ``SummaryMetadata`` naming TensorBoard's ``plugin`` and its data class (1: scalar,
    2: tensor), which is what tells TensorBoard how to draw the value."""
    meta = tf.compat.v1.SummaryMetadata()
    meta.plugin_data.plugin_name = plugin
    meta.data_class = data_class
    return meta.SerializeToString()


def write_events(run_dir: Path, results: dict[str, Any]) -> Path:
    """Write the sweep ``results`` (``results.json``'s content) as event files under ``run_dir/tensorboard``;
    return that folder."""
    tf = import_tensorflow()
    root = Path(run_dir) / TENSORBOARD_DIR
    scalar, text = _metadata(tf, "scalars", 1), _metadata(tf, "text", 2)
    try:
        from tensorboard.plugins.hparams import api as hp  # optional: the HParams dashboard
    except ImportError:
        hp = None
    for h in results["heads"]:
        writer = tf.summary.create_file_writer(str(root / head_dir(h["name"])))
        with writer.as_default():
            for e in h["epochs"]:
                for tag, key in SCALARS:
                    if e.get(key) is not None:
                        tf.summary.write(tag, tf.constant(float(e[key]), tf.float32), int(e["epoch"]), metadata=scalar)
            tf.summary.write("config", tf.constant(_grid_table([h])), 0, metadata=text)
            if hp is not None:
                hp.hparams(_hparams(h["config"]), trial_id=h["name"])
                tf.summary.write("hparams/val_accuracy", tf.constant(float(h["val_acc"])), 0, metadata=scalar)
        writer.close()
    writer = tf.summary.create_file_writer(str(root / GRID))
    with writer.as_default():
        tf.summary.write(GRID, tf.constant(_grid_table(results["heads"])), 0, metadata=text)
    writer.close()
    return root


__all__ = ["GRID", "TENSORBOARD_DIR", "head_dir", "write_events"]
