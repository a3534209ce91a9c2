"""Errors raised by the data layer."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data: a missing path, an unreadable layout, a corrupt archive or image.

    A subclass of ``ValueError`` so that callers validating arguments generically still catch it;
    the message is one line naming the offending file and what is allowed instead.
    """


class DownloadError(DataError):
    """A download failed for a network reason (no connection, HTTP error, timeout)."""
