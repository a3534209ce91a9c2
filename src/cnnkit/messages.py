"""Messages that echo a user's value stay short, whatever the value.

A YAML alias bomb (``b: &b [*a, *a, ...]`` nested nine levels) loads cheaply, as shared
references, but its ``repr`` is hundreds of megabytes: a "Received: epochs=..." built from it
took seconds and GBs. ``short_repr`` builds a representation piece by piece and stops at its
limit, so it costs no more than the limit whatever the value holds; ``shorten`` cuts a finished
message. Torch-free and dependency-free: any layer may use it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

REPR_LIMIT = 200
MESSAGE_LIMIT = 500
_ELLIPSIS = "…"
# Containers rendered element by element; anything else (numbers, paths, a Recipe) by its own repr.
_SEQUENCES = {list: ("[", "]"), tuple: ("(", ")"), set: ("{", "}"), frozenset: ("frozenset({", "})")}


def short_repr(value: Any, limit: int = REPR_LIMIT) -> str:
    """``repr(value)``, or its first ``limit`` characters and ``…`` when it is longer.

    Lists, tuples, sets and dicts are rendered element by element and only until ``limit`` is
    reached, so a huge or deeply shared value (a YAML alias bomb) costs about ``limit``
    characters of work; a value that references itself shows ``[...]`` as ``repr`` does.
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1. Received: limit={limit!r}")
    pieces: list[str] = []
    length = 0
    generator = _pieces(value, limit, set())
    for piece in generator:
        pieces.append(piece)
        length += len(piece)
        if length > limit:
            generator.close()
            return "".join(pieces)[:limit] + f"{_ELLIPSIS} (cut at {limit} characters)"
    return "".join(pieces)


def shorten(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text``, or its first ``limit`` characters followed by ``… (N characters cut)``."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}{_ELLIPSIS} ({len(text) - limit} characters cut)"


def _pieces(value: Any, limit: int, active: set[int]) -> Iterator[str]:
    """``repr(value)`` in pieces, lazily; ``active`` holds the containers being rendered (cycles)."""
    kind = type(value)
    if kind is str:
        # Only what can show: repr of a long string would copy all of it first.
        yield repr(value[: limit + 1])
    elif kind in (bytes, bytearray):
        yield repr(value[: limit + 1])
    elif kind is int:
        try:
            yield repr(value)
        except ValueError:  # more digits than Python converts (sys.set_int_max_str_digits)
            yield f"<an integer of {value.bit_length()} bits>"
    elif kind in _SEQUENCES or kind is dict:
        if id(value) in active:
            yield "{...}" if kind is dict else "[...]"
            return
        active.add(id(value))
        try:
            yield from _container_pieces(value, limit, active)
        finally:
            active.discard(id(value))
    else:
        yield repr(value)


def _container_pieces(value: Any, limit: int, active: set[int]) -> Iterator[str]:
    kind = type(value)
    if not value:
        yield {list: "[]", tuple: "()", set: "set()", frozenset: "frozenset()", dict: "{}"}[kind]
        return
    opening, closing = ("{", "}") if kind is dict else _SEQUENCES[kind]
    yield opening
    for index, item in enumerate(value.items() if kind is dict else value):
        if index:
            yield ", "
        if kind is dict:
            yield from _pieces(item[0], limit, active)
            yield ": "
            item = item[1]
        yield from _pieces(item, limit, active)
    if kind is tuple and len(value) == 1:
        yield ","
    yield closing
