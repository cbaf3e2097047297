"""Stage 1 of featcache: compute backbone features for a set of images once, into an HDF5 cache.

``source`` (listing) -> ``pipeline`` (tf.data decode/resize/preprocess) -> ``mapper`` (backbone)
-> ``sink`` (writer thread, shards) composed by ``runner``; ``cli`` is ``featcache-extract``.
Many workers on one cache: ``launch`` (one process per part or GPU) and ``ray_runner`` (parts as
Ray tasks), each worker a ``runner`` run of one ``--part``.
Importing this package does not import TensorFlow; running a job does.
"""
