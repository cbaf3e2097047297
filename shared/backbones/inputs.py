"""How images become a backbone's inputs: the resize policies, the dtype images are fed to the device in,
and the views of each image (:class:`Augment`). What is stated here goes into the fingerprint
(:func:`.fingerprint.make_fingerprint`); the extractor's pipeline does it (``extractor/pipeline.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..cache import FEED_DTYPES
from ..errors import FeatcacheError

# How images become backbone inputs: decoded to RGB uint8 (a JPEG whose short side is at least 4, 8
# or 16 times the target is decoded scaled down by 2, 4 or 8 in the DCT domain), resized to the
# backbone's input size without keeping the aspect ratio (Keras' image_dataset_from_directory
# default), bilinear with antialiasing so that large images are averaged, not aliased.
RESIZE = "jpeg-dct-prescale-to-2x,bilinear,antialias,squash"
# The resize policies (see featcache.extractor.pipeline.resize); the fingerprint's ``resize`` ends in
# the policy's name, so caches made before the choice existed (all squash) keep their identity.
RESIZE_POLICIES = ("squash", "centre-crop", "pad")
PAD_VALUE = 127.5  # what "pad" fills with: mid-grey, 0 after MobileNet's [-1, 1] scaling
DEFAULT_RESIZE = "squash"
# A new cache's images go to the device as uint8 (4x fewer bytes than float32; cast and preprocessed
# there). An existing cache keeps what its fingerprint records (see fingerprint.feed_dtype).
DEFAULT_FEED_DTYPE = "uint8"


def check_feed_dtype(value: str) -> str:
    """``value`` if it is one of :data:`FEED_DTYPES`, else a one-line :class:`FeatcacheError`."""
    if value not in FEED_DTYPES:
        raise FeatcacheError(f"feed_dtype={value!r}: choose from {', '.join(FEED_DTYPES)}")
    return value


DEFAULT_CROP_SCALE = (0.35, 1.0)  # area fraction of a random-resized-crop view
DEFAULT_CROP_RATIO = (3 / 4, 4 / 3)  # its aspect ratio (width / height)
AUGMENT_VERSION = 1  # bump when make_view's recipe changes: old and new views must not mix


@dataclass(frozen=True)
class Augment:
    """How each image becomes its views (see :func:`featcache.extractor.pipeline.make_view`):
    ``views`` per image (view 0 the plain image, 1 its mirror, 2+ random-resized crops), the crops'
    area fraction and aspect-ratio ranges, and the ``resize`` policy of every view."""

    views: int = 1
    crop_scale: tuple[float, float] = DEFAULT_CROP_SCALE
    crop_ratio: tuple[float, float] = DEFAULT_CROP_RATIO
    resize: str = DEFAULT_RESIZE

    def __post_init__(self) -> None:
        if self.views < 1:
            raise FeatcacheError(f"views={self.views}: at least 1 (the plain image)")
        if self.resize not in RESIZE_POLICIES:
            raise FeatcacheError(f"resize={self.resize!r}: choose from {', '.join(RESIZE_POLICIES)}")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise FeatcacheError(f"crop_scale={self.crop_scale}: need 0 < low <= high <= 1")
        lo, hi = self.crop_ratio
        if not 0 < lo <= hi:
            raise FeatcacheError(f"crop_ratio={self.crop_ratio}: need 0 < low <= high")

    def resize_key(self) -> str:
        """The fingerprint's ``resize`` value."""
        return RESIZE.rsplit(",", 1)[0] + "," + self.resize

    def fingerprint(self) -> dict[str, Any] | None:
        """The fingerprint's ``augment`` value: None for one view (the key is then left out, as in
        caches made before views existed)."""
        if self.views == 1:
            return None
        return {
            "version": AUGMENT_VERSION,
            "views": self.views,
            "view_1": "horizontal flip",
            "view_2_up": "random-resized crop, squashed, flipped with p=0.5",
            "crop_scale": [float(v) for v in self.crop_scale],
            "crop_ratio": [float(v) for v in self.crop_ratio],
            "seed": "siphash(id:view)",
            "maps": "view 0",
        }
