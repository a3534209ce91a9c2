"""Images kept on disk in a store's ``images.npy``, read batch by batch: uint8 (N, H, W, 3) that
never lives in memory whole.

``StoredImages`` answers what training, evaluation and reports ask of an image tensor (``shape``,
``len``, ``numel``, indexing) and reads only the rows asked for. Reads are ``os.preadv`` calls
straight into a fresh array, one per run of consecutive rows. Nothing is memory-mapped: the pages
an epoch touches stay in the OS page cache (shared, evicted under pressure) and never count as
this process's resident memory, whereas a NumPy memmap keeps every page it has touched mapped and
counted until ``madvise`` drops it (both measured in docs/benchmarks.md, issue 12).
"""

from __future__ import annotations

import os
import threading
import weakref
from pathlib import Path

import numpy as np
import torch

# Buffers one preadv call takes at most (the POSIX IOV_MAX on Linux and macOS).
_IOVEC_LIMIT = 1024
# Larger contiguous reads go in pieces: Linux returns at most ~2 GiB from one read.
_READ_PIECE_BYTES = 256 * 2**20


class ImageFile:
    """A store's images file: uint8 rows of ``image_shape`` from byte ``offset`` on.

    Opened on first read in each process (a descriptor inherited over ``fork`` is shared with
    the parent, which is harmless for ``pread`` but closed twice), and closed with the object.
    """

    def __init__(self, path: Path, offset: int, count: int, image_shape: tuple[int, int, int]) -> None:
        self.path = Path(path)
        self.offset = offset
        self.count = count
        self.image_shape = tuple(int(side) for side in image_shape)
        self.row_bytes = int(np.prod(self.image_shape))
        self._descriptor: int | None = None
        self._owner_pid = -1
        self._lock = threading.Lock()
        self._closer: weakref.finalize | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(_descriptor=None, _owner_pid=-1, _lock=None, _closer=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def descriptor(self) -> int:
        """This process's read-only descriptor of the file."""
        with self._lock:
            if self._descriptor is None or self._owner_pid != os.getpid():
                self._descriptor = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                self._owner_pid = os.getpid()
                self._closer = weakref.finalize(self, _close_in, self._descriptor, self._owner_pid)
            return self._descriptor

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """The images at file rows ``rows`` (any order, repeats allowed) as a new (K, H, W, 3) array.

        Rows are read in ascending order, consecutive ones in one call, each straight into its
        place in the output: sorted reads let the kernel's read-ahead work, and no second copy
        puts them back in the order asked for.
        """
        output = np.empty((len(rows), *self.image_shape), dtype=np.uint8)
        if len(rows) == 0:
            return output
        descriptor = self.descriptor()
        flat = output.reshape(len(rows), self.row_bytes)
        steps = np.diff(rows)
        if steps.size == 0 or bool((steps == 1).all()):  # a slice: one read of one buffer
            buffer = memoryview(output).cast("B")
            for start in range(0, len(buffer), _READ_PIECE_BYTES):
                piece = buffer[start : start + _READ_PIECE_BYTES]
                self._read(descriptor, [piece], int(rows[0]) * self.row_bytes + start)
            return output
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        breaks = (np.flatnonzero(np.diff(ordered) != 1) + 1).tolist()
        order_list = order.tolist()
        for start, stop in zip([0, *breaks], [*breaks, len(rows)], strict=True):
            for first in range(start, stop, _IOVEC_LIMIT):
                last = min(first + _IOVEC_LIMIT, stop)
                buffers = [flat[position].data for position in order_list[first:last]]
                self._read(descriptor, buffers, int(ordered[first]) * self.row_bytes)
        return output

    def _read(self, descriptor: int, buffers: list, position: int) -> None:
        expected = sum(len(buffer) for buffer in buffers)
        offset = self.offset + position
        if hasattr(os, "preadv"):
            received = os.preadv(descriptor, buffers, offset)
        else:  # Windows: one copy more
            received = 0
            for buffer in buffers:
                data = os.pread(descriptor, len(buffer), offset + received)
                buffer[: len(data)] = data
                received += len(data)
        if received != expected:
            # A regular file reads short only at its end: the store was cut after it was written.
            raise OSError(
                f"The data store file {self.path} is shorter than its header says; delete its folder "
                "to rebuild it"
            )


def _close_in(descriptor: int, owner_pid: int) -> None:
    if os.getpid() == owner_pid:
        os.close(descriptor)


class StoredImages:
    """Rows of a store's images file, seen as a uint8 ``(N, H, W, 3)`` tensor that is read on demand.

    Indexing reads: an integer gives one ``(H, W, 3)`` tensor, a slice, a list, an index array
    or a 1-D integer tensor a new ``(K, H, W, 3)`` tensor. Selecting without reading:
    ``subset`` (rows) and ``crop`` (a window of every image) give views that hold only an index.
    """

    dtype = torch.uint8

    def __init__(
        self,
        file: ImageFile,
        rows: np.ndarray,
        window: tuple[int, int, int, int] | None = None,
    ) -> None:
        self.file = file
        self.rows = np.asarray(rows, dtype=np.int64)
        height, width = file.image_shape[:2]
        self.window = window or (0, 0, height, width)  # top, left, height, width

    @classmethod
    def from_range(cls, file: ImageFile, start: int, stop: int) -> StoredImages:
        """The file's rows ``start`` to ``stop`` (exclusive)."""
        return cls(file, np.arange(start, stop, dtype=np.int64))

    @property
    def shape(self) -> torch.Size:
        _, _, height, width = self.window
        return torch.Size((len(self.rows), height, width, 3))

    def __len__(self) -> int:
        return len(self.rows)

    def dim(self) -> int:
        return 4

    def numel(self) -> int:
        return int(np.prod(self.shape))

    def element_size(self) -> int:
        return 1

    @property
    def resident_bytes(self) -> int:
        """What this view holds in memory: its row index, not its pixels."""
        return int(self.rows.nbytes)

    def __repr__(self) -> str:
        return f"StoredImages(shape={tuple(self.shape)}, file={str(self.file.path)!r})"

    def __getitem__(self, key: object) -> torch.Tensor:
        if isinstance(key, torch.Tensor) and key.dim() == 0:
            key = int(key)
        if isinstance(key, int | np.integer):
            index = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= index < len(self):
                raise IndexError(f"index {int(key)} is out of range for {len(self)} images")
            return self._read(self.rows[index : index + 1])[0]
        return self._read(self.rows[self._positions(key)])

    def subset(self, selection: slice | torch.Tensor | np.ndarray | list[int]) -> StoredImages:
        """A view of the rows at ``selection`` (a slice or integer indices): no pixels are read."""
        return StoredImages(self.file, self.rows[self._positions(selection)], self.window)

    def crop(self, top: int, left: int, height: int, width: int) -> StoredImages:
        """A view of the ``height`` x ``width`` window at (``top``, ``left``) of every image."""
        own_top, own_left, own_height, own_width = self.window
        if top < 0 or left < 0 or top + height > own_height or left + width > own_width:
            raise ValueError(
                f"Cannot crop {height}x{width} at ({top}, {left}) from {own_height}x{own_width} images."
            )
        return StoredImages(self.file, self.rows, (own_top + top, own_left + left, height, width))

    def numpy(self) -> np.ndarray:
        """Every image, read into one array (as large as ``numel()``: for sets that fit in memory)."""
        return self._read(self.rows).numpy()

    def _positions(self, key: object) -> np.ndarray | slice:
        """``key`` as positions into ``self.rows``: a slice, or an int64 array within bounds."""
        if isinstance(key, slice):
            return key
        if isinstance(key, torch.Tensor):
            key = key.detach().cpu().numpy()
        positions = np.asarray(key)
        if not np.issubdtype(positions.dtype, np.integer) or positions.ndim != 1:
            raise TypeError(
                "StoredImages take an integer, a slice, or a 1-D sequence of integer indices. "
                f"Received: {type(key).__name__} of {positions.dtype}, {positions.ndim}-D"
            )
        positions = positions.astype(np.int64, copy=False)
        positions = np.where(positions < 0, positions + len(self), positions)
        if positions.size and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError(f"indices out of range for {len(self)} images")
        return positions

    def _read(self, rows: np.ndarray) -> torch.Tensor:
        images = self.file.read_rows(rows)
        top, left, height, width = self.window
        if (height, width) != self.file.image_shape[:2]:
            images = np.ascontiguousarray(images[:, top : top + height, left : left + width])
        return torch.from_numpy(images)


def is_stored(images: object) -> bool:
    """Whether ``images`` are read from disk on demand (``StoredImages``) rather than held in memory."""
    return isinstance(images, StoredImages)


def select_rows(images: torch.Tensor | StoredImages, selection: slice | torch.Tensor):
    """The rows of ``images`` at ``selection``: a tensor view or copy in memory, a view on disk."""
    if isinstance(images, StoredImages):
        return images.subset(selection)
    return images[selection]


def resident_bytes(images: torch.Tensor | StoredImages) -> int:
    """Bytes ``images`` hold in this process's memory (a stored set: only its row index)."""
    if isinstance(images, StoredImages):
        return images.resident_bytes
    return images.numel() * images.element_size()
