"""``python -m extractor`` is ``featcache-extract``."""

from .cli import main

main()
