"""``python -m featcache.extractor`` is ``featcache-extract``."""

from .cli import main

main()
