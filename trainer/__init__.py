"""Stage 2 of featcache: sweeps of cheap heads trained from a cache, never touching the backbone.

``sweep`` (the grid as data) -> ``data`` (splits from the cache) -> ``engine`` (heads of one kind
stacked and trained as one) composed by ``run`` (epochs, early stopping, results); ``keras_heads``
turns a trained head into a Keras model (alone, or stacked onto its backbone for export); ``cli`` is
``featcache-train``. It reads caches through :mod:`shared` only and never imports :mod:`extractor`.
"""
