"""``python -m featcache.shared.inspection`` is ``featcache-inspect``."""

from .cli import main

main()
