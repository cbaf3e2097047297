"""Layer taps: which of a backbone's layers a cache stores the spatial means of (``taps=``), and its last
block's input (``keep_top_input=``), as the fingerprint records them. A spec names its defaults
(``BackboneSpec.taps``, ``top_input``, ``top_layers``); other names are looked up in the built model.
"""

from __future__ import annotations

from typing import Any

from ..errors import FeatcacheError
from .spec import BackboneSpec, ResolvedWeights, build_backbone

TAPS_DEFAULT, TAPS_NONE = "default", "none"


def tap_names(spec: BackboneSpec, value: str) -> tuple[str, ...]:
    """The layer names ``taps=value`` asks for: ``"default"`` (the spec's own, none for a backbone that
    names none), ``"none"``, or names joined by commas."""
    if value == TAPS_DEFAULT:
        return tuple(n for n, _ in spec.taps)
    if value == TAPS_NONE:
        return ()
    names = tuple(n.strip() for n in value.split(","))
    if not all(names) or len(set(names)) != len(names):
        raise FeatcacheError(
            f"taps={value!r}: expected {TAPS_DEFAULT!r}, {TAPS_NONE!r} or distinct layer names joined by commas"
        )
    return names


def resolve_taps(spec: BackboneSpec, weights: ResolvedWeights, value: str) -> tuple[tuple[str, int], ...]:
    """``taps=value`` as ``((layer, width), ...)``. Layers the spec lists take their widths from it (no
    TensorFlow); any other name is looked up in the built backbone, whose output there must be
    ``(B, h, w, C)`` maps: else a one-line :class:`FeatcacheError` naming ``taps=``."""
    names = tap_names(spec, value)
    known = dict(spec.taps)
    if spec.top_input is not None:
        known.setdefault(spec.top_input[0], spec.top_input[1][-1])
    if all(n in known for n in names):
        return tuple((n, known[n]) for n in names)
    model = build_backbone(spec, weights)
    out = []
    for n in names:
        try:
            shape = tuple(model.get_layer(n).output.shape)
        except ValueError:
            raise FeatcacheError(
                f"taps={value!r}: backbone {spec.name!r} has no layer {n!r} (its taps by default: "
                f"{', '.join(tap_names(spec, TAPS_DEFAULT)) or 'none'})"
            ) from None
        if len(shape) != 4 or shape[-1] is None:
            raise FeatcacheError(f"taps={value!r}: layer {n!r} gives {shape}, not (batch, h, w, C) maps")
        out.append((n, int(shape[-1])))
    return tuple(out)


def top_input_entry(spec: BackboneSpec) -> dict[str, Any]:
    """The fingerprint's ``top_input`` value: the layer whose output is kept, its shape, the layers it
    feeds; a one-line :class:`FeatcacheError` for a backbone whose last block is not named."""
    if spec.top_input is None or not spec.top_layers:
        raise FeatcacheError(
            f"keep_top_input=True: backbone {spec.name!r} names no last block (BackboneSpec.top_input, top_layers)"
        )
    layer, shape = spec.top_input
    return {"layer": layer, "shape": [int(v) for v in shape], "dtype": "float16", "top": list(spec.top_layers)}


def taps_entry(taps: tuple[tuple[str, int], ...]) -> dict[str, Any]:
    """The fingerprint's ``taps`` value: the tapped layers in order, their widths, how they are pooled."""
    return {
        "layers": [n for n, _ in taps],
        "widths": [int(w) for _, w in taps],
        "pool": "spatial mean of the float32 output",
    }
