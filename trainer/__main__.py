"""``python -m trainer`` is ``featcache-train``."""

from .cli import main

main()
