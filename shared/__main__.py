"""``python -m shared`` is ``featcache-inspect``."""

from .inspection import main

main()
