"""``python -m featcache.trainer`` is ``featcache-train``."""

from .cli import main

main()
