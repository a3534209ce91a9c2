"""Errors raised by the data layer."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data: a missing path, an unreadable layout, a corrupt archive or image.

    A subclass of ``ValueError`` so that callers validating arguments generically still catch it;
    the message is one line naming the offending file and what is allowed instead.
    """


class DownloadError(DataError):
    """A download failed for a network reason (no connection, HTTP error, timeout)."""


class ImageDecodeError(DataError):
    """One file that cannot be read or decoded as an image: loaders skip it and record ``reason``.

    Attributes:
        name: the file as named in the message (a path, or ``member in archive.zip``).
        reason: a short one-line cause for lists of skipped files, e.g. ``empty file (0 bytes)``.
    """

    def __init__(self, name: str, reason: str, message: str | None = None) -> None:
        super().__init__(message or f"Cannot decode {name} as an image ({reason})")
        self.name = name
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        # Rebuilt from all three when it crosses a process boundary: the default would pass
        # the message alone to __init__.
        return type(self), (self.name, self.reason, str(self))
