"""Stage 2 of featcache: train many cheap heads on a cache's features (not built yet).

It reads caches through :mod:`shared` only and never imports :mod:`extractor`.
"""
