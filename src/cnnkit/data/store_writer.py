"""``StoreWriter``: one store written into its partial folder, images as they are decoded.

``data.store`` runs the build (under the lock, renamed into place when complete); this is what
writes the files, checksums included (``data.store_format``).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import struct
import sys
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cnnkit.data.store_format import (
    IMAGES_FILE,
    LABELS_FILE,
    META_FILE,
    NAMES_FILE,
    SPLITS,
    STORE_FORMAT_VERSION,
    ChunkedCrc,
    StoreMeta,
    encode_strings,
    file_stamp,
    format_bytes,
)
from cnnkit.data.stored_images import ImageFile, StoredImages
from cnnkit.fileio import atomic_write_text

if TYPE_CHECKING:
    from cnnkit.data.store import CachedSplits

# images.npy's header, padded to a fixed size so that it can be rewritten in place once the
# number of images that decoded is known.
HEADER_BYTES = 128
_NPY_MAGIC = b"\x93NUMPY\x01\x00"


class StoreWriter:
    """Writes one store into a partial folder: images as they come, labels, names and meta at the end.

    ``begin(count)`` announces how many images at most will come; ``output(split)`` gives the
    ``parallel_decode.ImageOutput`` a split's decoder writes to. Splits the builder returns in
    memory instead (CIFAR-10) are written by ``finish``.
    """

    def __init__(
        self, folder: Path, final: Path, progress: bool, source: str = "", image_size: int | None = None
    ) -> None:
        self.folder = folder
        self.final = final
        self.progress = progress
        self.source = source
        self.image_size = image_size
        # CRC32 of the pixels as they are appended (0.4 s a GiB): no second pass over the file.
        self.checksums = ChunkedCrc()
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
        total = HEADER_BYTES + self.capacity * int(np.prod(self.image_shape))
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
        self.checksums.update(buffer)
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
        # One class index an image, or (multi-label) a multi-hot row an image.
        label_shape = tuple(splits.train.labels.shape[1:])
        labels = np.zeros((self.rows, *label_shape), dtype=np.int64)
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
        labels_bytes = _npy_bytes(labels)
        _write_bytes(self.folder / LABELS_FILE, labels_bytes)
        names_bytes = encode_strings(names) if has_names else None
        if names_bytes is not None:
            _write_bytes(self.folder / NAMES_FILE, names_bytes)
        meta = StoreMeta(
            version=STORE_FORMAT_VERSION,
            count=self.rows,
            image_shape=self.image_shape,
            class_names=list(splits.train.class_names),
            splits=dict(self.ranges),
            names=has_names,
            skipped=[(file.path, file.reason) for file in splits.skipped],
            folders=dict(splits.folders),
            source=self.source,
            image_size=self.image_size,
            built=time.time(),
            checksums={
                "chunk_bytes": self.checksums.chunk_bytes,
                "images": self.checksums.checksums(),
                "labels": zlib.crc32(labels_bytes),
                "names": zlib.crc32(names_bytes) if names_bytes is not None else None,
            },
            stamp=file_stamp(self.folder / IMAGES_FILE),
        )
        atomic_write_text(self.folder / META_FILE, meta.to_json())

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
        self._file.truncate(HEADER_BYTES + self.rows * int(np.prod(self.image_shape)))
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
        file = ImageFile(writer.folder / IMAGES_FILE, HEADER_BYTES, writer.capacity, writer.image_shape)
        return StoredImages.from_range(file, self.start, stop)


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """A .npy (version 1.0) header for uint8 ``shape``, padded to ``HEADER_BYTES``."""
    text = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {tuple(shape)!r}, }}".encode("latin1")
    length = HEADER_BYTES - len(_NPY_MAGIC) - 2
    return _NPY_MAGIC + struct.pack("<H", length) + text.ljust(length - 1) + b"\n"


def _npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as the bytes of a .npy file (kept to checksum them as written)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
