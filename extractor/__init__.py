"""Stage 1 of featcache: compute backbone features for a set of images once, into an HDF5 cache.

``source`` (listing) -> ``pipeline`` (tf.data decode/resize/preprocess) -> ``mapper`` (backbone)
-> ``sink`` (writer thread, shards) composed by ``runner``; ``cli`` is ``featcache-extract``.
Importing this package does not import TensorFlow; running a job does.
"""
