"""Decoded-image stores: one folder per source and image size in the cache, built once, read ever after.

A store ``<cache>/<kind>-<key>/`` (the key: the source's content and the image size) holds
    images.npy   uint8 (N, H, W, 3): every split's images, one split after another
    labels.npy   int64 (N,)
    names.bin    each image's path in its source, NUL-separated (absent for CIFAR-10: no files)
    meta.json    the format version, class names, each split's rows, the skipped files and the
                 folder each split came from; written last
It is built in a sibling ``<kind>-<key>.partial-<pid>-<random>/``: images are appended to
``images.npy`` as they are decoded (never held in memory whole), and the folder is renamed into
place only once complete, so a folder under the store's name is always whole. An interrupted
build leaves only a partial folder, which nothing reads and the next build removes.

One process builds a store while others wanting it wait: the builder holds an exclusive
``flock`` on ``<kind>-<key>.lock`` (released by the kernel if the builder dies, so a crash
leaves no stale lock); under torchrun every rank asks, one decodes, all read the same files.

Reading: a store of at most ``in_memory_limit()`` bytes is read whole into a tensor (as fast as
before stores existed); a larger one is left on disk and read batch by batch (``StoredImages``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cnnkit.data.dataset import ImageData
from cnnkit.data.skipped import SkippedFile
from cnnkit.data.stored_images import ImageFile, StoredImages
from cnnkit.fileio import DiskFullError, atomic_write_text

# Bump when decoding (resize policy, colour handling) or the layout changes, so that stores
# written by older code are never mistaken for current ones. 1-4 were single .npz files (no
# longer read); 5: the store folder.
STORE_FORMAT_VERSION = 5
SPLITS = ("train", "validation", "test")
# Stores up to this size are read whole into memory: CIFAR-10 (176 MiB with its test split)
# stays a tensor, as fast as ever, and the bound on a training process's memory stays small.
# Larger ones are read batch by batch. CNNKIT_IN_MEMORY_MB overrides it.
IN_MEMORY_BYTES = 256 * 2**20
IMAGES_FILE, LABELS_FILE, NAMES_FILE, META_FILE = "images.npy", "labels.npy", "names.bin", "meta.json"
# images.npy's header, padded to a fixed size so that it can be rewritten in place once the
# number of images that decoded is known.
_HEADER_BYTES = 128
_NPY_MAGIC = b"\x93NUMPY\x01\x00"


@dataclass
class CachedSplits:
    """What a store holds for one source: its splits and the files skipped while decoding it.

    ``skipped`` paths and ``folders`` are relative to the source, so that a moved folder still
    names its files.
    """

    train: ImageData
    test: ImageData | None
    skipped: list[SkippedFile] = field(default_factory=list)
    validation: ImageData | None = None
    folders: dict[str, str] = field(default_factory=dict)

    def split(self, name: str) -> ImageData | None:
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]

    @property
    def image_count(self) -> int:
        return sum(len(split) for split in (self.train, self.validation, self.test) if split is not None)


def store_path(cache_dir: Path, kind: str, content_hash: str, image_size: int | None) -> Path:
    """The store folder for a source of ``kind`` with ``content_hash``, decoded at ``image_size``."""
    key = hashlib.blake2b(
        f"{STORE_FORMAT_VERSION}|{kind}|{content_hash}|{image_size}".encode(), digest_size=16
    ).hexdigest()
    return cache_dir / f"{kind}-{key}"


def in_memory_limit() -> int:
    """Bytes of images up to which a store is read whole into memory (``CNNKIT_IN_MEMORY_MB``)."""
    configured = os.environ.get("CNNKIT_IN_MEMORY_MB")
    if not configured:
        return IN_MEMORY_BYTES
    try:
        return round(float(configured) * 2**20)
    except ValueError:
        raise ValueError(f"CNNKIT_IN_MEMORY_MB must be a number of MiB. Received: {configured!r}") from None


Builder = Callable[["StoreWriter | None"], CachedSplits]


def load_or_build(
    folder: Path, build: Builder, progress: bool = True, in_memory: bool | None = None
) -> tuple[CachedSplits, bool]:
    """The store at ``folder``, built by ``build(writer)`` first if missing; and whether it existed.

    ``build`` decodes the source, sending images to the writer's outputs (or returning them in
    memory, which the writer then stores); given ``None`` (the cache folder is not writable) it
    returns them in memory and nothing is stored. ``in_memory``: read the pixels whole into a
    tensor (True), leave them on disk (False), or decide by size (None, ``in_memory_limit``).
    """
    found = open_store(folder, in_memory)
    if found is not None:
        return found, True
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        lock = _lock(folder, progress)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(folder, 0) from error
        # A read-only or foreign cache folder costs speed next time, not this load.
        print(
            f"Could not create the data store in {folder.parent} ({error}); decoding into memory without it.",
            file=sys.stderr,
        )
        return build(None), False
    try:
        found = open_store(folder, in_memory, report=False)  # built by whoever held the lock
        if found is not None:
            return found, True
        _remove_leftovers(folder)
        _build(folder, build, progress)
    finally:
        _unlock(lock)
    built = open_store(folder, in_memory)
    if built is None:
        raise OSError(f"The data store {folder} was written but cannot be read back")
    return built, False


def open_store(folder: Path, in_memory: bool | None = None, report: bool = True) -> CachedSplits | None:
    """The splits in the complete store ``folder``; ``None`` when there is none or it is damaged.

    A damaged store (edited, truncated) is reported (unless not ``report``) and left for the
    next build to replace.
    """
    if not (folder / META_FILE).is_file():
        return None
    try:
        return _read_store(folder, in_memory)
    except (OSError, ValueError, KeyError, TypeError, EOFError) as error:
        if report:
            print(f"Ignoring unreadable data store {folder} ({error}); rebuilding it.", file=sys.stderr)
        return None


class StoreWriter:
    """Writes one store into a partial folder: images as they come, labels, names and meta at the end.

    ``begin(count)`` announces how many images at most will come; ``output(split)`` gives the
    ``parallel_decode.ImageOutput`` a split's decoder writes to. Splits the builder returns in
    memory instead (CIFAR-10) are written by ``finish``.
    """

    def __init__(self, folder: Path, final: Path, progress: bool) -> None:
        self.folder = folder
        self.final = final
        self.progress = progress
        self.capacity = 0
        self.image_shape: tuple[int, int, int] | None = None
        self.rows = 0
        self.ranges: dict[str, tuple[int, int]] = {}
        self._file = None

    def begin(self, count: int) -> None:
        """At most ``count`` images will be written."""
        self.capacity = count

    def output(self, split: str) -> SplitOutput:
        """Where the decoder of ``split`` writes its images (after those of earlier splits)."""
        return SplitOutput(self, split)

    def open_images(self, image_shape: tuple[int, ...], verb: str = "Decoding") -> None:
        """Create images.npy for ``capacity`` images of ``image_shape``, its space reserved now, so
        that a disk too small fails before any work rather than hours into it."""
        if self._file is not None:
            if tuple(image_shape) != self.image_shape:
                raise ValueError(f"Images of {image_shape} cannot join a store of {self.image_shape} images")
            return
        self.image_shape = tuple(int(side) for side in image_shape)
        total = _HEADER_BYTES + self.capacity * int(np.prod(self.image_shape))
        if self.progress:
            print(
                f"{verb} {self.capacity:,} images into a {format_bytes(total)} store at {self.final}",
                file=sys.stderr,
            )
        self._file = open(self.folder / IMAGES_FILE, "w+b", buffering=0)  # noqa: SIM115 (closed in finish)
        self._file.write(_npy_header((self.capacity, *self.image_shape)))
        try:
            os.posix_fallocate(self._file.fileno(), 0, total)
        except AttributeError:  # not on every platform: only the early check is lost
            pass
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            # A file system that cannot reserve space (EOPNOTSUPP): only the early check is lost.

    def append(self, images: np.ndarray) -> None:
        """Write ``images`` (K, H, W, 3) after those already written."""
        if self.rows + len(images) > self.capacity:
            raise ValueError(f"More images than announced: {self.rows + len(images)} > {self.capacity}")
        buffer = memoryview(np.ascontiguousarray(images)).cast("B")
        while buffer:
            written = self._file.write(buffer)
            buffer = buffer[written:]
        self.rows += len(images)

    def finish(self, splits: CachedSplits) -> None:
        """Write what decoding left for the end, then ``meta.json``: the store is complete."""
        pending = [name for name in SPLITS if splits.split(name) is not None and name not in self.ranges]
        if pending:  # splits built in memory: written now
            self.capacity = self.rows + sum(len(splits.split(name)) for name in pending)
            self.open_images(tuple(splits.train.images.shape[1:]), verb="Writing")
            for name in pending:
                start = self.rows
                self.append(splits.split(name).images.numpy())
                self.ranges[name] = (start, self.rows)
        self._close_images()
        labels = np.zeros(self.rows, dtype=np.int64)
        names: list[str] = [""] * self.rows
        has_names = splits.train.names is not None
        for name, (start, stop) in self.ranges.items():
            split = splits.split(name)
            if split is None or len(split) != stop - start:
                held = 0 if split is None else len(split)
                raise ValueError(f"The {name} split holds {held} images, not the {stop - start} written")
            labels[start:stop] = split.labels.numpy()
            if has_names:
                names[start:stop] = split.names
        _write_array(self.folder / LABELS_FILE, labels)
        if has_names:
            _write_bytes(self.folder / NAMES_FILE, _encode_strings(names))
        meta = {
            "version": STORE_FORMAT_VERSION,
            "count": self.rows,
            "image_shape": list(self.image_shape),
            "class_names": list(splits.train.class_names),
            "splits": {name: list(bounds) for name, bounds in self.ranges.items()},
            "names": has_names,
            "skipped": [[file.path, file.reason] for file in splits.skipped],
            "folders": dict(splits.folders),
        }
        atomic_write_text(self.folder / META_FILE, json.dumps(meta, ensure_ascii=False) + "\n")

    def abort(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def _close_images(self) -> None:
        """Cut images.npy to the images written (files that failed to decode leave no gap) and sync."""
        if self._file is None:
            raise ValueError("No images were written to the store")
        self._file.seek(0)
        self._file.write(_npy_header((self.rows, *self.image_shape)))
        self._file.truncate(_HEADER_BYTES + self.rows * int(np.prod(self.image_shape)))
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None


class SplitOutput:
    """A ``parallel_decode.ImageOutput`` appending one split's images to the store being written."""

    def __init__(self, writer: StoreWriter, split: str) -> None:
        self.writer = writer
        self.split = split
        self.start: int | None = None

    def allocate(self, count: int, image_shape: tuple[int, ...]) -> None:
        self.writer.open_images(image_shape)
        self.start = self.writer.rows

    def write(self, images: np.ndarray) -> None:
        self.writer.append(images)

    def finish(self) -> StoredImages | np.ndarray:
        """The split's images as written: a view of the partial store (read by nobody once the
        store is complete: ``load_or_build`` reopens it under its own name)."""
        if self.start is None:  # nothing decoded: the caller reports the empty classes
            return np.empty((0, 0, 0, 3), dtype=np.uint8)
        stop = self.writer.rows
        self.writer.ranges[self.split] = (self.start, stop)
        writer = self.writer
        file = ImageFile(writer.folder / IMAGES_FILE, _HEADER_BYTES, writer.capacity, writer.image_shape)
        return StoredImages.from_range(file, self.start, stop)


def format_bytes(count: int) -> str:
    """``count`` bytes for people: 146.5 MiB, 4.58 GiB."""
    if count < 2**10:
        return f"{count} bytes"
    if count < 2**20:
        return f"{count / 2**10:.1f} KiB"
    if count < 2**30:
        return f"{count / 2**20:.1f} MiB"
    return f"{count / 2**30:,.2f} GiB"


def _build(final: Path, build: Builder, progress: bool) -> None:
    """Run ``build`` into a partial folder and rename it to ``final``; remove it on any failure."""
    partial = final.with_name(f"{final.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")
    partial.mkdir()
    writer = StoreWriter(partial, final, progress)
    try:
        splits = build(writer)
        writer.finish(splits)
        _sync_folder(partial)
        os.rename(partial, final)
        _sync_folder(final.parent)
    except BaseException as error:
        writer.abort()
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            needed = _HEADER_BYTES + writer.capacity * int(np.prod(writer.image_shape or 0))
            raise _disk_full(final, needed) from error
        raise


def _disk_full(final: Path, needed: int) -> DiskFullError:
    free = shutil.disk_usage(final.parent).free if final.parent.exists() else 0
    size = f" of {format_bytes(needed)}" if needed else ""
    return DiskFullError(
        errno.ENOSPC,
        f"No space left for the data store{size} at {final} ({format_bytes(free)} free); nothing "
        "was kept: free some space or point CNNKIT_HOME at a larger disk",
    )


def _lock(folder: Path, progress: bool) -> int | None:
    """Take the store's exclusive lock, waiting (and saying so) while another process holds it;
    return what ``_unlock`` releases. None where there is no ``flock`` (Windows): builds may
    then race, and the first rename wins."""
    try:
        import fcntl
    except ImportError:
        return None
    descriptor = os.open(folder.with_name(folder.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if progress:
            print(
                f"Another process is decoding this data into {folder}; waiting for it to finish.",
                file=sys.stderr,
            )
        started = time.perf_counter()
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        except BaseException:
            os.close(descriptor)
            raise
        if progress:
            print(f"It finished after {time.perf_counter() - started:.1f}s.", file=sys.stderr)
    return descriptor


def _unlock(descriptor: int | None) -> None:
    if descriptor is not None:
        os.close(descriptor)  # closing releases the flock (the lock file stays: removing it would race)


def _remove_leftovers(final: Path) -> None:
    """Under the lock: partial folders of dead builds, and a damaged store, are removed."""
    for partial in final.parent.glob(f"{final.name}.partial-*"):
        shutil.rmtree(partial, ignore_errors=True)
    if final.exists():
        doomed = final.with_name(f"{final.name}.partial-damaged-{secrets.token_hex(4)}")
        os.rename(final, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def _read_store(folder: Path, in_memory: bool | None) -> CachedSplits:
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    if meta.get("version") != STORE_FORMAT_VERSION:
        raise ValueError(f"format {meta.get('version')}, expected {STORE_FORMAT_VERSION}")
    count, image_shape = int(meta["count"]), tuple(int(side) for side in meta["image_shape"])
    offset = _check_images_file(folder / IMAGES_FILE, count, image_shape)
    labels = torch.from_numpy(np.load(folder / LABELS_FILE, allow_pickle=False))
    if labels.shape != (count,):
        raise ValueError(f"{LABELS_FILE} holds {tuple(labels.shape)} labels for {count} images")
    names = _decode_strings((folder / NAMES_FILE).read_bytes()) if meta["names"] else None
    if names is not None and len(names) != count:
        raise ValueError(f"{NAMES_FILE} holds {len(names)} names for {count} images")
    file = ImageFile(folder / IMAGES_FILE, offset, count, image_shape)
    if in_memory is None:
        in_memory = count * file.row_bytes <= in_memory_limit()
    pixels = torch.from_numpy(file.read_rows(np.arange(count))) if in_memory else None
    splits: dict[str, ImageData | None] = dict.fromkeys(SPLITS)
    for name, (start, stop) in meta["splits"].items():
        images = pixels[start:stop] if pixels is not None else StoredImages.from_range(file, start, stop)
        split_names = names[start:stop] if names is not None else None
        # ImageData checks dtypes, shapes and label ranges: a mangled store fails here.
        splits[name] = ImageData(images, labels[start:stop], meta["class_names"], split_names)
    if splits["train"] is None:
        raise ValueError("no training split")
    skipped = [SkippedFile(path, reason) for path, reason in meta["skipped"]]
    return CachedSplits(splits["train"], splits["test"], skipped, splits["validation"], meta["folders"])


def _check_images_file(path: Path, count: int, image_shape: tuple[int, ...]) -> int:
    """The offset of the pixels in images.npy, after checking its header and length."""
    with open(path, "rb") as file:
        if np.lib.format.read_magic(file) != (1, 0):
            raise ValueError(f"{IMAGES_FILE} is not a version 1.0 .npy file")
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(file)
        offset = file.tell()
    if dtype != np.uint8 or fortran_order or tuple(shape) != (count, *image_shape):
        raise ValueError(f"{IMAGES_FILE} holds {dtype} {shape}, expected uint8 {(count, *image_shape)}")
    expected = offset + count * int(np.prod(image_shape))
    if path.stat().st_size != expected:
        raise ValueError(f"{IMAGES_FILE} is {path.stat().st_size:,} bytes, expected {expected:,}")
    return offset


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """A .npy (version 1.0) header for uint8 ``shape``, padded to ``_HEADER_BYTES``."""
    text = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {tuple(shape)!r}, }}".encode("latin1")
    length = _HEADER_BYTES - len(_NPY_MAGIC) - 2
    return _NPY_MAGIC + struct.pack("<H", length) + text.ljust(length - 1) + b"\n"


def _write_array(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as file:
        np.save(file, array, allow_pickle=False)
        file.flush()
        os.fsync(file.fileno())


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _sync_folder(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _encode_strings(strings: list[str]) -> bytes:
    # One UTF-8 byte string joined by NUL (which no file name holds); surrogateescape round-trips
    # file names that are not valid UTF-8.
    return "\0".join(strings).encode("utf-8", "surrogateescape")


def _decode_strings(data: bytes) -> list[str]:
    return data.decode("utf-8", "surrogateescape").split("\0") if data else []
