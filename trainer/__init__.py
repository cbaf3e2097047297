"""Stage 2 of featcache: sweeps of cheap heads trained from a cache, never touching the backbone.

One job per module: ``settings`` (every default, and the one check of every value), ``heads`` (one
module per head kind: its parameters, typed weights, forward pass and Keras layers, and the registry of
kinds; ``kinds`` re-exports the registry for older importers), ``sweep`` (the grid as data), ``data``
(splits from the cache), ``engine`` (heads of one SGD kind stacked and trained as one), ``loop``
(epochs, early stopping, best-epoch restore),
``report`` (ranking), ``plot``, ``rundir`` (writing and reading a run directory, docs/run-format.md),
``identity`` (what a run trained on), ``run`` (one sweep end to end), ``predict`` (predict and export
from a run), ``keras_heads`` (a trained head as a Keras model), ``views`` (augmented views and TTA),
``selection``, ``baselines`` and ``pooling`` (the one-SE pick, the k-NN and ensemble beside the grid,
poolings), ``html_report`` and ``history`` (``featcache-train report`` and ``runs``),
``api`` (the Python API) and ``cli`` (``featcache-train``, a thin layer over ``api``). It reads
caches through :mod:`shared` only and never imports :mod:`extractor`.
"""
