"""Errors a user is meant to read.

Every featcache error is a :class:`FeatcacheError` whose message is one line naming the file and
the reason; the command-line tools print it without a traceback (unless ``--debug``) and exit 2.
"""

from __future__ import annotations


class FeatcacheError(Exception):
    """A problem with the user's input or cache, explained in one line."""


class NotACacheError(FeatcacheError):
    """The path holds no readable featcache manifest."""


class CacheLockedError(FeatcacheError):
    """Another live process is writing the cache."""


class FingerprintMismatchError(FeatcacheError):
    """Features would be mixed from different backbones, weights or preprocessing."""


class SourceMismatchError(FeatcacheError):
    """A resumed run would read a different input listing than the one the cache was made from."""


class WeightsUnavailableError(FeatcacheError):
    """The requested backbone weights cannot be found or downloaded."""


class BadInputError(FeatcacheError):
    """An input image (or the listing naming it) cannot be used."""
