"""The backbone zoo end to end, with RANDOM weights (no ImageNet files here): shapes, dtypes, pooling,
fingerprints, the preprocessing each spec feeds; a user's own .keras model as a backbone; the listing.

Random weights make the features meaningless (a random MobileNetV2/V3 even gives the same vector for
every image), so these tests check plumbing, not feature quality: tests/test_sanity.py checks that
with real weights the input path gives the right ImageNet classes.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cachefiles import read_shards
from conftest import extract, make_sample

from featcache.shared import backbones
from featcache.shared.cache._reader import FeatureCache
from featcache.shared.cache.fsutil import sha256_file
from featcache.shared.errors import FeatcacheError

N_IMAGES = 8


@pytest.fixture(scope="module")
def eight_images(tmp_path_factory) -> Path:
    """2 classes x 4 small synthetic images (80-256 px, JPEG and PNG)."""
    out = tmp_path_factory.mktemp("eight")
    make_sample(out, per_class=4, classes=2, seed=3)
    return out


def _capturing(monkeypatch, name: str) -> list:
    """Re-register ``name`` so that the model the extractor builds is kept for inspection."""
    spec = backbones.get_backbone(name)
    built: list = []

    def build(weights):
        built.append(spec.build(weights))
        return built[-1]

    monkeypatch.setitem(backbones._REGISTRY, name, dataclasses.replace(spec, build=build))
    return built


PREPROCESSING_LAYERS = ("Rescaling", "Normalization")


@pytest.mark.parametrize("name", backbones.names())
def test_each_backbone_extracts_eight_images_with_random_weights(tmp_path, eight_images, monkeypatch, name):
    """RANDOM weights: builds ``name``, extracts 8 images through the extractor, checks the cache's
    maps ``(8, h, w, C)`` float32, pooled ``(8, C)`` float32 equal to the mean of the maps, the
    fingerprint naming the backbone with its sizes, and that a model preprocessing inside is fed RGB
    as is (no double preprocessing) while the others get their own ``preprocess_input``."""
    spec = backbones.get_backbone(name)
    built = _capturing(monkeypatch, name)
    report = extract(eight_images, tmp_path / "c", backbone=name, maps_dtype="float32", shard_size=8, batch_size=4)
    assert report.rows == N_IMAGES and report.failed == 0 and report.random_weights

    rows = read_shards(tmp_path / "c")
    h, w, c = spec.output_shape
    assert rows["maps"].shape == (N_IMAGES, h, w, c) and rows["maps"].dtype == np.float32
    assert rows["pooled"].shape == (N_IMAGES, c) and rows["pooled"].dtype == np.float32
    assert np.isfinite(rows["maps"]).all()
    np.testing.assert_allclose(rows["pooled"], rows["maps"].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)

    fp = FeatureCache(tmp_path / "c").fingerprint
    assert fp["backbone"] == name and fp["random_weights"] is True
    assert fp["input_size"] == list(spec.input_size) and fp["output_shape"] == [h, w, c]
    assert fp["pooled_width"] == c and fp["preprocessing"] == spec.preprocessing

    (model,) = built
    assert tuple(model.input_shape[1:3]) == spec.input_size
    inside = [layer for layer in model.layers[:4] if type(layer).__name__ in PREPROCESSING_LAYERS]
    feeds_as_is = spec.preprocess == backbones.PREPROCESS_SCHEMES["raw"][0]
    assert bool(inside) == feeds_as_is, f"{name}: model preprocesses inside: {inside}; spec feeds {spec.preprocess}"


def test_keras_applications_name_their_imagenet_files_as_keras_does():
    """Every registered Keras application names its no-top and with-top ImageNet files under Keras'
    server, and says what it feeds; the MobileNetV2 file keeps the name the README documents."""
    for name in backbones.names():
        spec = backbones.get_backbone(name)
        if name == "tiny":
            assert spec.imagenet_file is None
            continue
        for file_name, url in (spec.imagenet_file, spec.top_file):
            assert url == backbones.KERAS_WEIGHTS_URL + url.split("/")[-2] + "/" + file_name
            assert file_name.endswith(".h5")
        assert spec.imagenet_file[0] != spec.top_file[0]
    assert backbones.get_backbone("mobilenet_v2").imagenet_file[0] == backbones.MOBILENET_V2_WEIGHTS_FILE


# A user's model: input 48x64 (not square, not 224: proves the size is read from the model), a named
# 4-D layer "features" (6x8x5), then a 2-D head.
USER_INPUT = (48, 64)


def _user_model(path: Path) -> Path:
    import keras

    keras.utils.set_random_seed(5)
    inp = keras.Input((*USER_INPUT, 3))
    x = keras.layers.Conv2D(5, 8, strides=8, activation="relu", name="features")(inp)
    out = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D(name="gap")(x))
    keras.Model(inp, out).save(path)
    return path


@pytest.fixture(scope="module")
def user_model(tmp_path_factory) -> Path:
    return _user_model(tmp_path_factory.mktemp("user") / "mine.keras")


def test_user_model_layer_output_becomes_the_maps(tmp_path, eight_images, user_model):
    """A saved .keras model with layer= and preprocess='unit': the rows equal the named layer of the
    model loaded by Keras, called on each image decoded and resized as the extractor does, rounded, over 255;
    the fingerprint holds the file's sha256, the layer and the model's input size."""
    import keras

    from featcache.extractor.pipeline import decode_resize

    extract(
        eight_images,
        tmp_path / "c",
        backbone=str(user_model),
        layer="features",
        preprocess="unit",
        weights="imagenet",
        maps_dtype="float32",
    )
    rows = read_shards(tmp_path / "c")
    model = keras.models.load_model(user_model)
    sub = keras.Model(model.inputs[0], model.get_layer("features").output)
    images = np.stack([decode_resize((eight_images / i).read_bytes(), USER_INPUT).numpy() for i in rows["id"]])
    direct = sub(np.clip(np.round(images), 0, 255) / 255.0).numpy()  # the uint8 feed rounds the resized image
    assert rows["maps"].shape == (N_IMAGES, 6, 8, 5)
    assert direct.std(axis=0).mean() > 1e-3  # features differ across images: the rows are not all alike
    np.testing.assert_allclose(rows["maps"], direct, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rows["pooled"], direct.mean(axis=(1, 2)), rtol=1e-4, atol=1e-5)

    fp = FeatureCache(tmp_path / "c").fingerprint
    assert fp["backbone"] == "mine.keras[features]" and fp["layer"] == "features"
    assert fp["weights_sha256"] == sha256_file(user_model) and fp["weights_source"] == "file"
    assert fp["model_file"] == str(user_model.resolve())
    assert fp["input_size"] == list(USER_INPUT) and fp["output_shape"] == [6, 8, 5] and fp["pooled_width"] == 5
    assert fp["preprocessing"] == backbones.PREPROCESS_SCHEMES["unit"][1] and fp["random_weights"] is False


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layer": "gap", "preprocess": "raw"}, "layer 'gap' gives output of shape (None, 5), not (batch, h, w, C)"),
        ({"preprocess": "raw"}, "layer 'head' gives output of shape (None, 3), not (batch, h, w, C)"),
        ({"layer": "features"}, "say what the model expects with preprocess="),
        ({"layer": "nope", "preprocess": "raw"}, "no layer named 'nope'"),
        ({"layer": "features", "preprocess": "bgr"}, "unknown preprocess='bgr'"),
    ],
)
def test_user_model_refusals_are_one_line(user_model, kwargs, message):
    with pytest.raises(FeatcacheError) as err:
        backbones.get_backbone(str(user_model), **kwargs)
    text = str(err.value)
    assert text.startswith(str(user_model)) and message in text and "\n" not in text


def test_user_model_weights_are_its_own(user_model, tmp_path):
    spec = backbones.get_backbone(str(user_model), layer="features", preprocess="raw")
    assert backbones.resolve_weights(spec, "auto").sha256 == sha256_file(user_model)
    with pytest.raises(FeatcacheError, match="carries its own weights"):
        backbones.resolve_weights(spec, "random")
    with pytest.raises(FeatcacheError, match="a folder"):
        backbones.get_backbone(str(tmp_path), preprocess="raw")
    with pytest.raises(FeatcacheError, match="apply to a model file"):
        backbones.get_backbone("mobilenet_v2", layer="block_13_expand_relu")


def test_backbone_list_prints_every_backbone_and_whether_its_weights_are_cached(tmp_path):
    """``featcache-extract --backbone list`` needs no SOURCE; a file in Keras' cache ($KERAS_HOME) shows
    as cached, the others as not."""
    models = tmp_path / "keras" / "models"
    models.mkdir(parents=True)
    (models / backbones.get_backbone("resnet50").imagenet_file[0]).write_bytes(b"x")
    env = {"KERAS_HOME": str(tmp_path / "keras"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    p = subprocess.run(
        [sys.executable, "-m", "featcache.extractor", "--backbone", "list"], capture_output=True, text=True, env=env
    )
    assert p.returncode == 0, p.stderr
    lines = {line.split()[0]: line for line in p.stdout.splitlines()[1:] if line.split()}
    for name in backbones.names():
        spec = backbones.get_backbone(name)
        fields = lines[name].split()
        assert fields[1:4] == [
            "x".join(map(str, spec.input_size)),
            "x".join(map(str, spec.output_shape)),
            str(spec.channels),
        ]
        assert spec.preprocessing in lines[name]
    assert f"  {backbones.IMAGENET_CACHED}  " in lines["resnet50"]
    assert backbones.IMAGENET_NOT_CACHED in lines["mobilenet_v2"] and backbones.IMAGENET_NONE in lines["tiny"]
