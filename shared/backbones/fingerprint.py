"""The fingerprint of a backbone's features: everything they are a function of (the backbone, its
weights, how images become its inputs, the taps), built through the cache's :class:`Recipe`."""

from __future__ import annotations

from typing import Any

from ..cache import ENVIRONMENT_KEYS, UNRECORDED_FEED_DTYPE, Recipe, Views
from .inputs import Augment
from .spec import BackboneSpec, ResolvedWeights
from .taps import taps_entry, top_input_entry


def make_fingerprint(
    spec: BackboneSpec,
    weights: ResolvedWeights,
    *,
    maps_dtype: str,
    compute_dtype: str = "float32",
    environment: dict[str, Any] | None = None,
    augment: Augment | None = None,
    feed_dtype: str = UNRECORDED_FEED_DTYPE,
    taps: tuple[tuple[str, int], ...] = (),
    top_input: bool = False,
) -> dict[str, Any]:
    """The fingerprint of features computed by ``spec`` with ``weights`` (and ``augment``'s resize
    policy and views; the ``augment`` key only with more than one view; the ``feed_dtype`` key only
    when images were rounded to uint8, so float32-fed caches, old and new, agree; the ``taps`` key
    only with taps (:func:`.taps.resolve_taps`), ``top_input`` only when kept (:func:`.taps.top_input_entry`))."""
    augment = augment or Augment()
    identity = dict(spec.identity)
    recipe = Recipe(
        backbone=spec.name,
        weights_source=weights.source,
        weights_path=weights.path,
        weights_sha256=weights.sha256,
        random_weights=weights.random,
        input_size=tuple(spec.input_size),  # type: ignore[arg-type]
        output_shape=tuple(spec.output_shape),  # type: ignore[arg-type]
        pooled_width=spec.channels,
        resize=augment.resize_key(),
        preprocessing=spec.preprocessing,
        compute_dtype=compute_dtype,
        maps_dtype=maps_dtype,
        model_file=identity.pop("model_file", None),
        layer=identity.pop("layer", None),
        augment=Views.parse(augment.fingerprint(), "views"),
        feed_dtype=None if feed_dtype == UNRECORDED_FEED_DTYPE else feed_dtype,
        environment=tuple((key, (environment or {}).get(key)) for key in ENVIRONMENT_KEYS),
        other=(
            *identity.items(),
            *((("taps", taps_entry(taps)),) if taps else ()),
            *((("top_input", top_input_entry(spec)),) if top_input else ()),
        ),
    )
    return recipe.fingerprint()
