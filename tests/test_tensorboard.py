"""Every sweep writes TensorBoard event files in its run directory: per head, the per-epoch losses and
accuracies that results.json records, read back with TensorFlow's own event parser; and the grid."""

from __future__ import annotations

import numpy as np

from featcache.trainer.events import GRID, SCALARS, TENSORBOARD_DIR, head_dir
from featcache.trainer.run import run_sweep
from featcache.trainer.settings import Settings
from featcache.trainer.sweep import expand


def read_events(folder):
    """``{tag: {step: value}}`` of the event files in ``folder``, and the text summaries' strings."""
    import tensorflow as tf

    scalars: dict[str, dict[int, float]] = {}
    texts: dict[str, str] = {}
    for f in sorted(folder.glob("events.out.tfevents.*")):
        for raw in tf.data.TFRecordDataset(str(f)):
            event = tf.compat.v1.Event.FromString(raw.numpy())
            for v in event.summary.value:
                tensor = tf.make_ndarray(v.tensor)
                if v.metadata.plugin_data.plugin_name == "text":
                    texts[v.tag] = tensor.item().decode()
                elif v.metadata.plugin_data.plugin_name == "scalars":
                    scalars.setdefault(v.tag, {})[event.step] = float(tensor)
    return scalars, texts


def test_a_sweep_writes_each_heads_curves_and_the_grid(tiny_cache, tmp_path):
    configs = expand({"head": ["logreg", "linear"], "c": [0.1, 1.0]})
    run_dir, results = run_sweep(
        tiny_cache, configs, Settings(epochs=3, batch_size=64, seed=0), tmp_path, ["t"], print, False
    )
    assert results["tensorboard"] == TENSORBOARD_DIR
    metrics = results["best_test_metrics"]  # beside accuracy: per-class precision/recall/F1 and macro-F1
    assert list(metrics["per_class"]) == results["classes"] and 0 <= metrics["macro_f1"] <= 1
    root = run_dir / TENSORBOARD_DIR
    for h in results["heads"]:
        scalars, texts = read_events(root / head_dir(h["name"]))
        for tag, key in SCALARS:
            want = {e["epoch"]: e[key] for e in h["epochs"]}
            assert set(scalars[tag]) == set(want), (h["name"], tag)
            np.testing.assert_allclose([scalars[tag][s] for s in want], list(want.values()), rtol=1e-6)
        assert h["name"] in texts["config"]
    _, texts = read_events(root / GRID)
    grid = texts[GRID]
    assert all(f"| {h['name']} |" in grid for h in results["heads"]) and "val acc" in grid


def test_head_folders_stay_apart_when_names_differ_only_in_unsafe_characters():
    names = ["a b", "a_b", "a/b", "mobilenet_v2:linear-lr0.001"]
    dirs = [head_dir(n) for n in names]
    assert len(set(dirs)) == len(names) and dirs[1] == "a_b" and dirs[3] == names[3]
    assert all("/" not in d and " " not in d for d in dirs)
