"""What a run trained on, and the check that a cache is still that one.

A run records the cache's fingerprint (backbone, weights, preprocessing), its classes, the identity of
its input listing, its shards (file -> sha256) and, when the cache states one, its generation.
``predict`` refuses a cache that no longer matches: a cache replaced by another with the same
fingerprint but other classes would otherwise get predictions under the wrong class names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..shared.cache import FeatureCache
from ..shared.errors import FeatcacheError


def cache_identity(cache: FeatureCache) -> dict[str, Any]:
    """The JSON-ready identity of ``cache`` as a run records it (``results.json``'s ``cache``)."""
    m = cache.manifest
    return {
        "path": str(cache.path.resolve()),
        "fingerprint": cache.fingerprint,
        "classes": list(cache.classes),
        "listing_sha256": m.source.get("listing_sha256"),
        "num_inputs": m.num_inputs,
        "generation": getattr(cache, "generation", None),
        "shards": {s.file: s.sha256 for s in m.shards},
    }


def _classes(c: list[str]) -> str:
    return f"{len(c)} classes ({', '.join(c[:4])}{', ...' if len(c) > 4 else ''})"


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """How ``current`` (a :func:`cache_identity`) differs from the ``recorded`` one; empty when it is
    the same cache. Shards added since (an unfinished cache finished later) are not a difference."""
    out = []
    if recorded["classes"] != current["classes"]:
        out.append(f"the run has {_classes(recorded['classes'])}, the cache {_classes(current['classes'])}")
    if recorded["listing_sha256"] != current["listing_sha256"] or recorded["num_inputs"] != current["num_inputs"]:
        out.append("it was extracted from another input listing")
    if None not in (recorded["generation"], current["generation"]) and recorded["generation"] != current["generation"]:
        out.append(f"it is generation {current['generation']}, the run used generation {recorded['generation']}")
    changed = sorted(f for f, h in recorded["shards"].items() if current["shards"].get(f) != h)
    if changed:
        out.append(f"{len(changed)} shard(s) the run read are missing or rewritten (first: {changed[0]})")
    return out


def check_cache(cache: FeatureCache, recorded: dict[str, Any], run_dir: Path) -> None:
    """Raise unless ``cache`` is (still) the cache the run in ``run_dir`` was trained on."""
    cache.check_fingerprint(recorded["fingerprint"])
    diff = differences(recorded, cache_identity(cache))
    if diff:
        raise FeatcacheError(
            f"{cache.path}: not the cache the run {run_dir} was trained on: {'; '.join(diff)}. Train again on the "
            f"cache as it is now (featcache-train {cache.path}), or predict the images themselves with source=FOLDER "
            "(their features are made anew as the run's were)"
        )


def importable_backbone(fp: dict[str, Any], where: str, backbone: str | None = None) -> str:
    """The backbone name that may be handed to the registry (which imports a ``module:attribute``) for
    a run's recorded cache fingerprint ``fp``: the recorded name when it is registered; else only a
    ``backbone`` the caller names (``where`` names the record in errors). A run directory may be someone
    else's: nothing it names is imported on its word."""
    from ..shared.backbones import names

    name = str(fp["backbone"])
    if backbone is not None:
        if backbone in names() and backbone != name:
            raise FeatcacheError(f"backbone={backbone!r}: the run's cache was made with backbone {name!r} ({where})")
        return backbone
    if name not in names():
        raise FeatcacheError(
            f"{where}: the cache was made with backbone {name!r}, which is not registered; featcache imports "
            "nothing named in a run directory: pass backbone=MODULE:ATTRIBUTE (the spec it was made with)"
        )
    return name
