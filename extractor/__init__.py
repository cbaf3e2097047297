"""Stage 1 of featcache: compute backbone features for a set of images once, into an HDF5 cache.

``sources`` (listing) -> ``inputs`` (bounded, regular-file reads) -> ``pipeline`` (tf.data
decode/resize/views/preprocess) -> ``mapper`` (backbone) -> ``sink`` (writer thread, shards) composed
by ``runner``; ``api`` is :func:`featcache.extract` and ``cli`` (``featcache-extract``) a thin layer
over it.
Many workers on one cache: ``launch`` (one process per part or GPU) and ``ray_runner`` (Ray actors
pulling small parts from a queue), each part a ``runner`` run of one ``--part``.
Importing this package does not import TensorFlow; running a job does.
"""
