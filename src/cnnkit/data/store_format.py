"""What a store folder holds and how it is checked: its file names, the format version, ``meta.json``
read back with its shape checked, and the checksums that let a damaged store be noticed.

Torch-free (``cnnkit cache`` lists stores with it); ``data.store`` builds and reads the stores.

Checksums: CRC32 of each ``CHUNK_BYTES`` piece of ``images.npy``'s pixels (after its header, whose
shape is checked on its own), and of ``labels.npy`` and ``names.bin`` whole, written into
``meta.json`` as the store is built. CRC32 is no defence against someone forging a store, but it
catches bytes written over a file, a cut, or a disk that returns other bytes than it was given, and
it is fast: 2.6 GiB/s here (zlib 1.2.13; blake2b: 0.84 GiB/s), so checking CIFAR-10's 176 MiB
costs 66 ms beside the 56 ms of reading it from the page cache.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cnnkit.fileio import json_text

# Bump when decoding (resize policy, colour handling) or the layout changes, so that stores
# written by older code are never mistaken for current ones. 1-4 were single .npz files; 5: the
# store folder; 6: checksums (and the source, image size and build time) in meta.json. The version
# is part of a store's folder name (``store.store_path``), so an older store is never opened: the
# first load after an upgrade decodes into a new store, and the old one stays until
# ``cnnkit cache clear`` removes it (it lists such stores as "old format").
STORE_FORMAT_VERSION = 6
SPLITS = ("train", "validation", "test")
IMAGES_FILE, LABELS_FILE, NAMES_FILE, META_FILE = "images.npy", "labels.npy", "names.bin", "meta.json"
# Written after a store that changed on disk (see ``file_stamp``) was checked whole and found intact.
VERIFIED_FILE = "verified.json"
# 4 MiB: a 4.58 GiB store keeps 1,172 checksums (13 KB of meta.json), and a damaged chunk is named.
CHUNK_BYTES = 4 * 2**20
_STAMP_FIELDS = 4


class StoreDamage(ValueError):
    """A store that is not what it claims to be (a checksum, a length, meta.json's shape): the
    message says what, in a few words, for the line that announces the rebuild."""


@dataclass(frozen=True)
class StoreMeta:
    """``meta.json``: what a complete store holds. ``checksums``: ``chunk_bytes``, ``images`` (one
    CRC32 per chunk), ``labels`` and ``names`` (None without names). ``stamp``: ``file_stamp`` of
    images.npy when it was written."""

    version: int
    count: int
    image_shape: tuple[int, int, int]
    class_names: list[str]
    splits: dict[str, tuple[int, int]]
    names: bool
    skipped: list[tuple[str, str]]
    folders: dict[str, str]
    source: str
    image_size: int | None
    built: float
    checksums: dict[str, Any]
    stamp: list[int]

    def to_json(self) -> str:
        return json_text(asdict(self), ensure_ascii=False) + "\n"


def read_meta(folder: Path) -> StoreMeta:
    """The checked ``meta.json`` of the store ``folder``.

    Raises:
        StoreDamage: not JSON, another format version, or a field missing or of the wrong type.
        OSError: the file cannot be read.
    """
    try:
        values = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise StoreDamage(f"{META_FILE} is not valid JSON") from None
    if not isinstance(values, dict):
        raise StoreDamage(f"{META_FILE} holds {_kind(values)}, not an object")
    version = values.get("version")
    if version != STORE_FORMAT_VERSION:
        raise StoreDamage(f"{META_FILE} is of format {version!r}, expected {STORE_FORMAT_VERSION}")
    count = _field(values, "count", _natural)
    image_shape = _field(values, "image_shape", lambda v: _list_of(v, _positive) and len(v) == 3)
    splits = _field(values, "splits", lambda v: isinstance(v, dict) and "train" in v)
    for name, bounds in splits.items():
        if name not in SPLITS or not (_list_of(bounds, _natural) and len(bounds) == 2):
            raise StoreDamage(f"{META_FILE}'s split {name!r} is not [start, stop]")
        if not bounds[0] <= bounds[1] <= count:
            raise StoreDamage(f"{META_FILE}'s split {name!r} {bounds} is outside its {count} images")
    checksums = _field(values, "checksums", lambda v: isinstance(v, dict))
    chunk_bytes = _field(checksums, "chunk_bytes", _positive)
    chunks = math.ceil(count * image_shape[0] * image_shape[1] * 3 / chunk_bytes)
    _field(checksums, "images", lambda v: _list_of(v, _natural) and len(v) == chunks)
    _field(checksums, "labels", _natural)
    return StoreMeta(
        version=version,
        count=count,
        image_shape=tuple(image_shape),
        class_names=_field(values, "class_names", lambda v: bool(v) and _list_of(v, _text)),
        splits={name: tuple(bounds) for name, bounds in splits.items()},
        names=_field(values, "names", lambda v: isinstance(v, bool)),
        skipped=[tuple(pair) for pair in _field(values, "skipped", lambda v: _list_of(v, _text_pair))],
        folders=_field(values, "folders", lambda v: isinstance(v, dict) and _list_of([*v.values()], _text)),
        source=_field(values, "source", _text),
        image_size=_field(values, "image_size", lambda v: v is None or _positive(v)),
        built=_field(values, "built", lambda v: isinstance(v, int | float) and not isinstance(v, bool)),
        checksums=checksums | {"names": _field(checksums, "names", lambda v: v is None or _natural(v))},
        stamp=_field(values, "stamp", lambda v: _list_of(v, _natural) and len(v) == _STAMP_FIELDS),
    )


def read_version(folder: Path) -> int | None:
    """The format version ``meta.json`` names, whatever else it holds; None when it names none."""
    with contextlib.suppress(OSError, ValueError, RecursionError):
        values = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        version = values.get("version") if isinstance(values, dict) else None
        return version if _natural(version) else None
    return None


class ChunkedCrc:
    """CRC32 of each ``chunk_bytes`` piece of a byte stream that arrives in pieces of any size."""

    def __init__(self, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.chunk_bytes = chunk_bytes
        self.done: list[int] = []
        self._crc = 0
        self._filled = 0

    def update(self, data: memoryview) -> None:
        """Add ``data`` (a byte view) to the stream."""
        while len(data):
            take = min(len(data), self.chunk_bytes - self._filled)
            self._crc = zlib.crc32(data[:take], self._crc)
            self._filled += take
            data = data[take:]
            if self._filled == self.chunk_bytes:
                self.done.append(self._crc)
                self._crc, self._filled = 0, 0

    def checksums(self) -> list[int]:
        """One CRC32 per chunk so far, the last one possibly short."""
        return self.done + ([self._crc] if self._filled else [])


def check_chunks(data: memoryview, expected: list[int], chunk_bytes: int) -> None:
    """Raise ``StoreDamage`` naming the first chunk of ``images.npy``'s pixels ``data`` whose
    CRC32 is not the one written."""
    for index, start in enumerate(range(0, len(data), chunk_bytes)):
        if zlib.crc32(data[start : start + chunk_bytes]) != expected[index]:
            raise _chunk_damage(index, len(expected))


def check_file_chunks(path: Path, offset: int, expected: list[int], chunk_bytes: int) -> None:
    """``check_chunks`` over the file ``path`` from ``offset`` on, read one chunk at a time (the
    memory of one chunk, whatever the file's size)."""
    buffer = bytearray(chunk_bytes)
    with open(path, "rb", buffering=0) as file:
        file.seek(offset)
        for index, checksum in enumerate(expected):
            received = file.readinto(buffer)
            if received == 0 or zlib.crc32(memoryview(buffer)[:received]) != checksum:
                raise _chunk_damage(index, len(expected))
        if file.read(1):
            raise StoreDamage(f"{IMAGES_FILE} is longer than its checksums")


def check_bytes(data: bytes, expected: int | None, name: str) -> None:
    """Raise ``StoreDamage`` when the CRC32 of the file ``name``'s ``data`` is not ``expected``."""
    if zlib.crc32(data) != expected:
        raise StoreDamage(f"{name} checksum")


def file_stamp(path: Path) -> list[int]:
    """Size, modification and change times (ns) and inode of ``path``: any write to the file
    changes them (the change time cannot be set back), so an unchanged stamp means unchanged
    bytes short of the disk itself failing."""
    status = path.stat()
    return [status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino]


def read_verified_stamp(folder: Path) -> list[int] | None:
    """The stamp of images.npy when it was last checked whole (``VERIFIED_FILE``), if any."""
    with contextlib.suppress(OSError, ValueError, RecursionError):
        stamp = json.loads((folder / VERIFIED_FILE).read_text(encoding="ascii"))
        if _list_of(stamp, _natural) and len(stamp) == _STAMP_FIELDS:
            return stamp
    return None


def format_bytes(count: int) -> str:
    """``count`` bytes for people: 146.5 MiB, 4.58 GiB."""
    if count < 2**10:
        return f"{count} bytes"
    if count < 2**20:
        return f"{count / 2**10:.1f} KiB"
    if count < 2**30:
        return f"{count / 2**20:.1f} MiB"
    return f"{count / 2**30:,.2f} GiB"


def folder_bytes(folder: Path) -> int:
    """Bytes the files in ``folder`` (and below) take; files vanishing meanwhile count 0."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def encode_strings(strings: list[str]) -> bytes:
    """``names.bin``'s bytes for ``strings``."""
    # One UTF-8 byte string joined by NUL (which no file name holds); surrogateescape round-trips
    # file names that are not valid UTF-8.
    return "\0".join(strings).encode("utf-8", "surrogateescape")


def decode_strings(data: bytes) -> list[str]:
    """The strings ``encode_strings`` wrote."""
    return data.decode("utf-8", "surrogateescape").split("\0") if data else []


def _chunk_damage(index: int, chunks: int) -> StoreDamage:
    return StoreDamage(f"{IMAGES_FILE} chunk {index + 1} of {chunks} checksum")


def _field(values: dict, key: str, check) -> Any:
    if key not in values:
        raise StoreDamage(f"{META_FILE} lacks {key!r}")
    if not check(values[key]):
        raise StoreDamage(f"{META_FILE}'s {key!r} is not what a store holds: {_kind(values[key])}")
    return values[key]


def _kind(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else f"{type(value).__name__} {text[:37]}..."


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _positive(value: Any) -> bool:
    return _natural(value) and value > 0


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _text_pair(value: Any) -> bool:
    return _list_of(value, _text) and len(value) == 2


def _list_of(value: Any, check) -> bool:
    return isinstance(value, list) and all(check(item) for item in value)


# What ``try_lock`` returns when another process holds the lock.
LOCK_BUSY = object()


def try_lock(store: Path) -> int | object | None:
    """The store's builder lock (the file ``<store>.lock``) taken without waiting: its descriptor
    (closing it releases the lock), ``LOCK_BUSY`` when another process holds it, None where there
    is no ``flock`` (Windows)."""
    try:
        import fcntl
    except ImportError:
        return None
    descriptor = os.open(store.with_name(store.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return LOCK_BUSY
    return descriptor
