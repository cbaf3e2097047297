"""``featcache-inspect``: look at a cache without TensorFlow.

``cli`` is the command; ``verify`` (checks and repairs), ``similarity`` (neighbours), ``export``
(CSV/NPZ out) and ``picture`` (PNG overlays) hold what its sub-commands do. It reads caches through
:mod:`featcache.shared.cache` only.
"""
