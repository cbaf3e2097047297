"""``featcache-inspect``: look at a cache without TensorFlow.

``cli`` is the command; ``verify`` (checks and repairs), ``similarity`` (neighbours), ``export``
(CSV/NPZ out), ``picture`` (PNG overlays), ``compact`` (rewriting mostly-dead shards), ``report`` and
``html`` (the self-contained HTML report) and ``suspects`` (label-noise scores) hold what its
sub-commands do. It reads caches through
:mod:`featcache.shared.cache` only.
"""
