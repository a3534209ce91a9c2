"""Decoded-image stores: one folder per source and image size in the cache, built once, read ever after.

A store ``<cache>/<kind>-<key>/`` (the key: the source's content and the image size) holds
    images.npy   uint8 (N, H, W, 3): every split's images, one split after another
    labels.npy   int64 (N,), or (N, labels) multi-hot for multi-label data
    names.bin    each image's path in its source, NUL-separated (absent for CIFAR-10: no files)
    meta.json    the format version, class names, each split's rows, the skipped files, the
                 folder each split came from, the source, the checksums; written last
                 (``data.store_format``: its shape, checked when read, and the checksums)
It is built in a sibling ``<kind>-<key>.partial-<pid>-<random>/``: images are appended to
``images.npy`` as they are decoded (never held in memory whole), and the folder is renamed into
place only once complete, so a folder under the store's name is always whole. An interrupted
build leaves only a partial folder, which nothing reads and the next build removes.

One process builds a store while others wanting it wait: the builder holds an exclusive
``flock`` on ``<kind>-<key>.lock`` (released by the kernel if the builder dies, so a crash
leaves no stale lock); under torchrun every rank asks, one decodes, all read the same files.

Reading: a store of at most ``in_memory_limit()`` bytes is read whole into a tensor (as fast as
before stores existed); a larger one is left on disk and read batch by batch (``StoredImages``).
A damaged store (a checksum, a length, meta.json's shape) is never read as pixels: it is rebuilt
from its source with one line saying so. What is checked when is said at ``_read_store``.

The key of a folder's store is its files' names, sizes and modification times (``cache.
hash_listing``), not their bytes: a file rewritten with the same size and time is not noticed.
``load_or_build(..., refresh=True)`` (``cnnkit train --no-cache``) rebuilds a store regardless,
and ``data.cache_admin`` lists and removes stores (``cnnkit cache``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cnnkit.data.dataset import ImageData
from cnnkit.data.skipped import SkippedFile
from cnnkit.data.store_format import (
    IMAGES_FILE,
    LABELS_FILE,
    LOCK_BUSY,
    META_FILE,
    NAMES_FILE,
    SPLITS,
    STORE_FORMAT_VERSION,
    VERIFIED_FILE,
    StoreDamage,
    StoreMeta,
    check_bytes,
    check_chunks,
    check_file_chunks,
    decode_strings,
    file_stamp,
    format_bytes,
    read_meta,
    read_verified_stamp,
    try_lock,
)
from cnnkit.data.store_writer import HEADER_BYTES, SplitOutput, StoreWriter
from cnnkit.data.stored_images import ImageFile, StoredImages
from cnnkit.fileio import DiskFullError, atomic_write_text, json_text

# Re-exported: the writer's classes and the version are reached through this module.
__all__ = [
    "STORE_FORMAT_VERSION",
    "CachedSplits",
    "SplitOutput",
    "StoreWriter",
    "format_bytes",
    "in_memory_limit",
    "load_or_build",
    "open_store",
    "store_path",
]

# Stores up to this size are read whole into memory: CIFAR-10 (176 MiB with its test split)
# stays a tensor, as fast as ever, and the bound on a training process's memory stays small.
# Larger ones are read batch by batch. CNNKIT_IN_MEMORY_MB overrides it.
IN_MEMORY_BYTES = 256 * 2**20


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
    folder: Path,
    build: Builder,
    progress: bool = True,
    in_memory: bool | None = None,
    source: str = "",
    image_size: int | None = None,
    refresh: bool = False,
) -> tuple[CachedSplits, bool]:
    """The store at ``folder``, built by ``build(writer)`` first if missing; and whether it existed.

    ``build`` decodes the source, sending images to the writer's outputs (or returning them in
    memory, which the writer then stores); given ``None`` (the cache folder is not writable) it
    returns them in memory and nothing is stored. ``in_memory``: read the pixels whole into a
    tensor (True), leave them on disk (False), or decide by size (None, ``in_memory_limit``).
    ``source`` (a description) and ``image_size`` are recorded for ``cnnkit cache list``.
    ``refresh``: build the store again even if one exists (a folder's key is its files' names,
    sizes and times: a file rewritten with the same ones leaves an outdated store), unless one
    was built since this call began (under torchrun every rank refreshes: one builds, all read).
    A damaged store is rebuilt, with one line saying so.
    """
    asked = time.time()
    found = None if refresh else open_store(folder, in_memory)
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
        if not refresh or _built_since(folder, asked):
            found = open_store(folder, in_memory, report=False)  # built by whoever held the lock
            if found is not None:
                return found, True
        elif progress and (folder / META_FILE).exists():
            print(f"Rebuilding the data store at {folder} from its source, as asked.", file=sys.stderr)
        _remove_leftovers(folder)
        _build(folder, build, progress, source, image_size)
    finally:
        _unlock(lock)
    built = open_store(folder, in_memory)
    if built is None:
        raise OSError(f"The data store {folder} was written but cannot be read back")
    return built, False


def open_store(folder: Path, in_memory: bool | None = None, report: bool = True) -> CachedSplits | None:
    """The splits in the complete store ``folder``; ``None`` when there is none or it is damaged.

    A damaged store (a checksum, a cut file, meta.json of the wrong shape) is reported in one
    line (unless not ``report``) and left for the next build to replace: its pixels are never
    returned. Opening a store marks it used now (its folder's modification time, which
    ``cnnkit cache clear --older-than`` reads).
    """
    if not (folder / META_FILE).is_file():
        return None
    try:
        splits = _read_store(folder, in_memory)
    except StoreDamage as damage:
        if report:
            print(f"The data store at {folder} is damaged ({damage}); rebuilding it.", file=sys.stderr)
        return None
    except (OSError, ValueError, KeyError, TypeError, EOFError) as error:
        if report:
            reason = " ".join(f"{type(error).__name__}: {error}".split())[:200]
            print(f"The data store at {folder} cannot be read ({reason}); rebuilding it.", file=sys.stderr)
        return None
    with contextlib.suppress(OSError):  # a read-only cache only loses the time of use
        os.utime(folder)
    return splits


def _built_since(folder: Path, moment: float) -> bool:
    """Whether the store at ``folder`` is complete and was built at ``moment`` or later."""
    try:
        return read_meta(folder).built >= moment
    except (OSError, ValueError):
        return False


def _build(final: Path, build: Builder, progress: bool, source: str, image_size: int | None) -> None:
    """Run ``build`` into a partial folder and rename it to ``final``; remove it on any failure."""
    partial = final.with_name(f"{final.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")
    partial.mkdir()
    writer = StoreWriter(partial, final, progress, source, image_size)
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
            needed = HEADER_BYTES + writer.capacity * int(np.prod(writer.image_shape or 0))
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
    descriptor = try_lock(folder)
    if descriptor is LOCK_BUSY:
        if progress:
            print(
                f"Another process is decoding this data into {folder}; waiting for it to finish.",
                file=sys.stderr,
            )
        import fcntl  # there is a lock to wait for, so there is flock

        descriptor = os.open(folder.with_name(folder.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o666)
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
    """The store's splits, after checking what is cheap to check (see ``_read_pixels``).

    Raises:
        StoreDamage: a checksum, a length or meta.json's shape is wrong.
    """
    meta = read_meta(folder)
    count, image_shape = meta.count, meta.image_shape
    offset = _check_images_file(folder / IMAGES_FILE, count, image_shape)
    labels_bytes = (folder / LABELS_FILE).read_bytes()
    check_bytes(labels_bytes, meta.checksums["labels"], LABELS_FILE)
    labels = torch.from_numpy(np.load(io.BytesIO(labels_bytes), allow_pickle=False))
    if labels.shape not in ((count,), (count, len(meta.class_names))):
        raise StoreDamage(f"{LABELS_FILE} holds {tuple(labels.shape)} labels for {count} images")
    names = None
    if meta.names:
        names_bytes = (folder / NAMES_FILE).read_bytes()
        check_bytes(names_bytes, meta.checksums["names"], NAMES_FILE)
        names = decode_strings(names_bytes)
        if len(names) != count:
            raise StoreDamage(f"{NAMES_FILE} holds {len(names)} names for {count} images")
    file = ImageFile(folder / IMAGES_FILE, offset, count, image_shape)
    if in_memory is None:
        in_memory = count * file.row_bytes <= in_memory_limit()
    pixels = _read_pixels(folder, file, meta, in_memory)
    splits: dict[str, ImageData | None] = dict.fromkeys(SPLITS)
    for name, (start, stop) in meta.splits.items():
        images = pixels[start:stop] if pixels is not None else StoredImages.from_range(file, start, stop)
        split_names = names[start:stop] if names is not None else None
        # ImageData checks dtypes, shapes and label ranges: a mangled store fails here.
        splits[name] = ImageData(images, labels[start:stop], meta.class_names, split_names)
    skipped = [SkippedFile(path, reason) for path, reason in meta.skipped]
    return CachedSplits(splits["train"], splits["test"], skipped, splits["validation"], meta.folders)


def _read_pixels(folder: Path, file: ImageFile, meta: StoreMeta, in_memory: bool) -> torch.Tensor | None:
    """The pixels as one tensor (``in_memory``), else None (read batch by batch), once checked.

    A store read whole is checked whole, every time: CRC32 runs at 2.6 GiB/s, so CIFAR-10's
    176 MiB costs 66 ms beside the 56 ms of reading it from the page cache.
    A store read batch by batch (over 256 MiB) is checked whole only when images.npy changed on
    disk since it was written or last checked (its ``file_stamp``: size, times, inode; writing
    random bytes over it changes them), in one pass of one chunk's memory, at 1.7 GiB/s from the
    page cache (a 4.58 GiB store: 2.7 s; its disk's read time when not cached), after which the
    new stamp is kept in ``verified.json`` so that it is paid once. Checking it at every start
    would add seconds to what is otherwise a 0.0 s start; checking the chunks batches read would
    read a 4 MiB chunk for each 49 KB image of a shuffled batch. So a large store whose disk
    returns other bytes than it was given, with the file untouched, is not noticed.
    """
    path = file.path
    checksums = meta.checksums
    if in_memory:
        pixels = file.read_rows(np.arange(meta.count))
        check_chunks(memoryview(pixels.reshape(-1)), checksums["images"], checksums["chunk_bytes"])
        return torch.from_numpy(pixels)
    stamp = file_stamp(path)
    if stamp not in (meta.stamp, read_verified_stamp(folder)):
        check_file_chunks(path, file.offset, checksums["images"], checksums["chunk_bytes"])
        with contextlib.suppress(OSError):  # a read-only cache checks again next time
            atomic_write_text(folder / VERIFIED_FILE, json_text(stamp) + "\n")
    return None


def _check_images_file(path: Path, count: int, image_shape: tuple[int, ...]) -> int:
    """The offset of the pixels in images.npy, after checking its header and length."""
    try:
        with open(path, "rb") as file:
            version = np.lib.format.read_magic(file)
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(file)
            offset = file.tell()
    except (ValueError, SyntaxError, EOFError):  # numpy's words for a mangled header
        raise StoreDamage(f"{IMAGES_FILE}'s header is not that of a .npy file") from None
    if version != (1, 0) or dtype != np.uint8 or fortran_order or tuple(shape) != (count, *image_shape):
        raise StoreDamage(f"{IMAGES_FILE} holds {dtype} {shape}, expected uint8 {(count, *image_shape)}")
    expected = offset + count * int(np.prod(image_shape))
    if path.stat().st_size != expected:
        raise StoreDamage(f"{IMAGES_FILE} is {path.stat().st_size:,} bytes, expected {expected:,}")
    return offset


def _sync_folder(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
