"""The most one source image may cost, wherever featcache reads one (the extractor's inputs, the
inspector's thumbnails and pictures): its bytes read, and the pixels its header declares, checked
before anything is decoded (a 1 MB PNG can declare 20000x20000 pixels, 1.2 GB once decoded)."""

from __future__ import annotations

DEFAULT_MAX_INPUT_BYTES = 64 * 1024 * 1024
# Pillow's Image.MAX_IMAGE_PIXELS: a 24-bit image of 1 GiB / 4 (its decompression-bomb warning).
DEFAULT_MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3
