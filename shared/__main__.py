"""``python -m featcache.shared`` is ``featcache-inspect``."""

from .inspection.cli import main

main()
