"""The recipe (a cache's fingerprint as a typed object): built in one place, parsed in one place, and
build -> parse -> build is the identity for every option that enters a fingerprint. No TensorFlow."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest

from featcache.shared.backbones import Augment, ResolvedWeights, get_backbone, make_fingerprint
from featcache.shared.cache._fingerprint import Recipe
from featcache.shared.errors import FeatcacheError

WEIGHTS = {
    "imagenet": ResolvedWeights("imagenet", "/keras/mobilenet_v2_notop.h5", "ab" * 32),
    "file": ResolvedWeights("file", "/w/mine.h5", "cd" * 32),
    "random": ResolvedWeights("random", None, "random:7", 7),
}
AUGMENTS = {
    "one view": Augment(),
    "two views, centre-crop": Augment(views=2, resize="centre-crop"),
    "four views, crops": Augment(views=4, crop_scale=(0.5, 1.0), crop_ratio=(4 / 5, 5 / 4), resize="pad"),
}


def _specs():
    spec = get_backbone("mobilenet_v2")
    model_file = dataclasses.replace(
        spec, name="/models/net.keras", identity=(("model_file", "/models/net.keras"), ("layer", "out_relu"))
    )
    return {"registered": spec, "model file": model_file}


CASES = list(
    itertools.product(
        _specs(), WEIGHTS, AUGMENTS, ("float16", "float32"), ("float32", "mixed_float16"), ("float32", "uint8")
    )
)


@pytest.mark.parametrize(("spec", "weights", "augment", "maps", "compute", "feed"), CASES)
def test_build_parse_build_is_the_identity(spec, weights, augment, maps, compute, feed):
    env = {"tensorflow": "2.21.0", "keras": "3.15.0", "onednn": True}
    fp = make_fingerprint(
        _specs()[spec],
        WEIGHTS[weights],
        maps_dtype=maps,
        compute_dtype=compute,
        environment=env,
        augment=AUGMENTS[augment],
        feed_dtype=feed,
    )
    recipe = Recipe.parse(json.loads(json.dumps(fp)), "manifest.json")  # as read back from a file
    assert recipe.fingerprint() == fp
    assert Recipe.parse(recipe.fingerprint(), "again") == recipe
    # the typed fields say what the dict says (read independently of the recipe)
    assert recipe.views == (fp["augment"]["views"] if "augment" in fp else 1)
    assert recipe.resize_policy == AUGMENTS[augment].resize == fp["resize"].split(",")[-1]
    assert recipe.fed_as == feed
    assert recipe.random_seed == (7 if weights == "random" else None)
    assert (recipe.model_file is not None) == (spec == "model file") == ("model_file" in fp)


def test_the_builder_writes_what_caches_have_always_recorded():
    """An independent statement of a one-view, float32-fed fingerprint: the keys caches made before the
    recipe existed carry, with their values (so that those caches keep their identity)."""
    spec = get_backbone("mobilenet_v2")
    fp = make_fingerprint(spec, WEIGHTS["imagenet"], maps_dtype="float16", feed_dtype="float32")
    assert fp == {
        "backbone": "mobilenet_v2",
        "weights_source": "imagenet",
        "weights_path": "/keras/mobilenet_v2_notop.h5",
        "weights_sha256": "ab" * 32,
        "random_weights": False,
        "input_size": [224, 224],
        "output_shape": [7, 7, 1280],
        "pooled_width": 1280,
        "resize": "jpeg-dct-prescale-to-2x,bilinear,antialias,squash",
        "preprocessing": spec.preprocessing,
        "compute_dtype": "float32",
        "maps_dtype": "float16",
        "tensorflow": None,
        "keras": None,
        "onednn": None,
    }


def test_keys_it_does_not_know_are_kept():
    fp = make_fingerprint(get_backbone("mobilenet_v2"), WEIGHTS["file"], maps_dtype="float16")
    newer = {**fp, "taps_of_a_newer_featcache": ["block_13_expand_relu"]}
    assert Recipe.parse(newer, "x").fingerprint() == newer


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda fp: fp.pop("backbone"), r"m\.json: fingerprint\.backbone: expected a str, got missing"),
        (lambda fp: fp.update(weights_sha256=3), r"fingerprint\.weights_sha256: expected a str, got int 3"),
        (lambda fp: fp.update(output_shape=[7, 7]), r"fingerprint\.output_shape: expected 3 positive integers"),
        (lambda fp: fp.update(input_size=[224, True]), r"fingerprint\.input_size: expected 2 positive integers"),
        (lambda fp: fp.update(augment={"views": 1}), r"fingerprint\.augment: expected views > 1"),
        (lambda fp: fp.update(augment={"views": 2, "crop_scale": [0.3], "crop_ratio": [1, 1]}), r"augment"),
        (lambda fp: fp.update(feed_dtype=8), r"fingerprint\.feed_dtype: expected a str, got int 8"),
        (lambda fp: fp.update(random_weights="yes"), r"fingerprint\.random_weights: expected a bool"),
    ],
)
def test_a_damaged_fingerprint_is_one_line_naming_the_key(edit, message):
    fp = make_fingerprint(get_backbone("mobilenet_v2"), WEIGHTS["file"], maps_dtype="float16")
    edit(fp)
    with pytest.raises(FeatcacheError, match=message):
        Recipe.parse(fp, "m.json")
    with pytest.raises(FeatcacheError, match="m.json: the fingerprint is not an object"):
        Recipe.parse([fp], "m.json")
