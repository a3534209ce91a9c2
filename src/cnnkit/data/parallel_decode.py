"""Decoding many image files into one uint8 array, in parallel processes.

Each worker process opens the source itself and decodes contiguous chunks of files into one
array per chunk, so inter-process traffic is a list of names in and one array out per chunk.
A file that cannot be decoded is left out and reported; it stops nothing (unless strict).

Decoded images go to an ``ImageOutput`` in order: by default one array allocated once for all
files (``MemoryOutput``), or a data store's file, written as decoding goes (``data.store``), so
that memory stays at a constant. Images are written at a moving cursor (failures leave no gaps),
and at most a few chunks, each capped in bytes, are in flight between the processes.
"""

from __future__ import annotations

import itertools
import multiprocessing
import multiprocessing.pool
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cnnkit.data.decode import decode_image
from cnnkit.data.errors import DataError, ImageDecodeError
from cnnkit.data.readers import ImageReader, display_name, open_reader
from cnnkit.data.skipped import SkippedFile, strict_error
from cnnkit.progress import ProgressBar

# Below this many images, starting processes (and re-reading a zip's directory in each)
# costs more than it saves.
PARALLEL_THRESHOLD = 2000
_CHUNK_RANGE = (32, 1000)
# Caps a chunk's decoded size (and so what a result pickles and unpickles) for large images.
_CHUNK_BYTES = 8 * 2**20
# Chunks submitted but not yet collected: enough to keep every worker busy, few enough that
# results finished ahead of a slow chunk cannot pile up in this process.
_CHUNKS_IN_FLIGHT_PER_WORKER = 2


@dataclass(frozen=True)
class DecodeJob:
    """What every worker needs to decode its share: picklable for 'spawn' start methods.

    Attributes:
        kind: reader kind (``readers.FOLDER`` or ``readers.ZIP``).
        path: the folder or zip file.
        image_size: square output side, or ``None`` to keep sizes (which must then all agree).
        expected_shape: (H, W, 3) every image must have when ``image_size`` is ``None``.
        reference_name: the image that set ``expected_shape``, named in mismatch errors.
    """

    kind: str
    path: str
    image_size: int | None
    expected_shape: tuple[int, ...] | None = None
    reference_name: str = ""

    def display_name(self, name: str) -> str:
        """How to name member ``name`` in messages: a path for folders, member in zip for zips."""
        return display_name(self.kind, self.path, name)


@dataclass
class DecodedImages:
    """The result of decoding a list of files.

    Attributes:
        images: (K, H, W, 3) uint8, the K files that decoded, in the order given.
        kept: boolean mask over the files given: which of them are in ``images``.
        failures: ``(name, reason)`` of each file that did not decode, in the order given.
    """

    images: Any  # what the output's finish() returned: an array for MemoryOutput
    kept: np.ndarray
    failures: list[tuple[str, str]]


class ImageOutput(Protocol):
    """Where decoded images go, in the order they are kept."""

    def allocate(self, count: int, image_shape: tuple[int, ...]) -> None:
        """At most ``count`` images of ``image_shape`` will come (called once, before ``write``)."""

    def write(self, images: np.ndarray) -> None:
        """Append ``images`` (K, H, W, 3) after those written before."""

    def finish(self) -> Any:
        """The images written, as the caller will hold them."""


class MemoryOutput:
    """Images into one array, allocated once and cut to the images kept at the end."""

    def __init__(self) -> None:
        self.output: np.ndarray | None = None
        self.cursor = 0

    def allocate(self, count: int, image_shape: tuple[int, ...]) -> None:
        # np.empty reserves without touching: slots never written cost no resident memory.
        self.output = np.empty((count, *image_shape), dtype=np.uint8)

    def write(self, images: np.ndarray) -> None:
        self.output[self.cursor : self.cursor + len(images)] = images
        self.cursor += len(images)

    def finish(self) -> np.ndarray:
        if self.output is None:
            return np.empty((0, 0, 0, 3), dtype=np.uint8)
        if self.cursor < len(self.output):
            # realloc shrinks in place on the usual allocators (no copy, the tail is returned);
            # refcheck=False is safe as no view of the array has been handed out yet.
            self.output.resize((self.cursor, *self.output.shape[1:]), refcheck=False)
        return self.output


def decode_images(
    job: DecodeJob,
    names: list[str],
    workers: int,
    progress: bool,
    description: str,
    strict: bool = False,
    output: ImageOutput | None = None,
) -> DecodedImages:
    """Decode the files ``names`` of ``job``'s source into ``output``: by default one (K, H, W, 3)
    uint8 array (``MemoryOutput``).

    Files that fail to decode are left out and listed in ``failures``; with ``strict`` the
    first one raises instead. Without ``job.image_size`` or ``job.expected_shape``, the first
    decodable image fixes the shape, and any image of another shape raises ``DataError`` naming it.
    """
    if not names:
        raise ValueError("names must not be empty. Received: names=[]")
    collector = _Collector(job, names, strict, output or MemoryOutput())
    sequential = workers == 1 or len(names) < PARALLEL_THRESHOLD
    reader = open_reader(job.kind, Path(job.path))
    try:
        with ProgressBar(len(names), description, unit="images", enabled=progress, show_rate=True) as bar:
            job, start = _fix_shape(reader, job, names, collector, bar)
            if start < len(names) and sequential:
                _decode_sequentially(reader, job, names, start, collector, bar)
            elif start < len(names):
                # Workers open their own handles; this process's stays unused meanwhile.
                _decode_in_pool(job, names, start, workers, collector, bar)
    finally:
        reader.close()
    return collector.finish()


class _Collector:
    """Sends decoded images to the output in file order, and notes which files were kept."""

    def __init__(self, job: DecodeJob, names: list[str], strict: bool, output: ImageOutput) -> None:
        self.job = job
        self.names = names
        self.strict = strict
        self.output = output
        self.kept = np.zeros(len(names), dtype=bool)
        self.failures: list[tuple[str, str]] = []

    def allocate(self, shape: tuple[int, ...]) -> None:
        self.output.allocate(len(self.names), shape)

    def add(self, index: int, image: np.ndarray) -> None:
        self.output.write(image[None])
        self.kept[index] = True

    def add_chunk(self, start: int, stop: int, images: np.ndarray, failed: list[tuple[int, str]]) -> None:
        for offset, reason in failed:
            self.fail(start + offset, reason)
        self.kept[start:stop] = True
        for offset, _ in failed:
            self.kept[start + offset] = False
        self.output.write(images)

    def fail(self, index: int, reason: str) -> None:
        if self.strict:
            raise strict_error(SkippedFile(self.job.display_name(self.names[index]), reason))
        self.failures.append((self.names[index], reason))

    def finish(self) -> DecodedImages:
        return DecodedImages(self.output.finish(), self.kept, self.failures)


def _fix_shape(
    reader: ImageReader, job: DecodeJob, names: list[str], collector: _Collector, bar: ProgressBar
) -> tuple[DecodeJob, int]:
    """Allocate the output; return the job with its expected shape and the next index to decode."""
    if job.image_size is not None and job.expected_shape is None:
        job = replace(job, expected_shape=(job.image_size, job.image_size, 3))
    if job.expected_shape is not None:
        collector.allocate(job.expected_shape)
        return job, 0
    # Without a target size the first image that decodes sets the shape for all the others.
    # The bar moves only after the output is allocated: a store says its size first.
    for index, name in enumerate(names):
        try:
            first = _decode_one(reader, job, name)
        except ImageDecodeError as error:
            collector.fail(index, error.reason)
            continue
        job = replace(job, expected_shape=first.shape, reference_name=job.display_name(name))
        collector.allocate(first.shape)
        collector.add(index, first)
        bar.update(index + 1)
        return job, index + 1
    bar.update(len(names))
    return job, len(names)


def _decode_sequentially(
    reader: ImageReader,
    job: DecodeJob,
    names: list[str],
    start: int,
    collector: _Collector,
    bar: ProgressBar,
) -> None:
    for index in range(start, len(names)):
        try:
            image = _decode_one(reader, job, names[index])
        except ImageDecodeError as error:
            collector.fail(index, error.reason)
        else:
            collector.add(index, image)
        bar.update(1)


def _decode_in_pool(
    job: DecodeJob, names: list[str], start: int, workers: int, collector: _Collector, bar: ProgressBar
) -> None:
    bounds = _chunk_bounds(start, len(names), workers, int(np.prod(job.expected_shape)))
    chunks = (names[begin:end] for begin, end in bounds)
    # Leaving the with block terminates the workers, also when a DataError is raised here.
    with worker_pool(min(workers, len(bounds)), _initialize_worker, (job,)) as pool:
        results = in_order(pool, _decode_chunk, chunks, workers * _CHUNKS_IN_FLIGHT_PER_WORKER)
        for (begin, end), (images, failed) in zip(bounds, results, strict=True):
            collector.add_chunk(begin, end, images, failed)
            bar.update(end - begin)


def worker_pool(
    workers: int, initializer: Callable[..., None], initargs: tuple = ()
) -> multiprocessing.pool.Pool:
    """A pool of ``workers`` processes, each set up by ``initializer(*initargs)`` (forked where the
    platform can: no re-import of torch in each); use it in a ``with`` block, which ends them."""
    return _multiprocessing_context().Pool(workers, initializer, initargs)


def in_order(
    pool: multiprocessing.pool.Pool, function: Callable, arguments: Iterable, in_flight: int
) -> Iterator:
    """``function(argument)`` of each of ``arguments``, computed in ``pool``'s processes and yielded
    in order, each as soon as it and those before it are done. At most ``in_flight`` are submitted
    and not yet yielded: enough to keep every worker busy, few enough that results finished ahead
    of a slow one cannot pile up here. A worker's exception is raised here, at its place."""
    arguments = iter(arguments)
    pending: deque = deque()

    def submit_next() -> None:
        for argument in itertools.islice(arguments, 1):
            pending.append(pool.apply_async(function, (argument,)))

    for _ in range(max(1, in_flight)):
        submit_next()
    while pending:
        result = pending.popleft().get()
        submit_next()
        yield result


def _chunk_bounds(start: int, stop: int, workers: int, image_bytes: int) -> list[tuple[int, int]]:
    # Several chunks per worker keep the progress bar moving and the load balanced at the end.
    lowest, highest = _CHUNK_RANGE
    size = max(lowest, min(highest, (stop - start) // (workers * 8) or 1))
    size = max(1, min(size, _CHUNK_BYTES // max(image_bytes, 1)))
    return [(begin, min(begin + size, stop)) for begin in range(start, stop, size)]


def _multiprocessing_context() -> multiprocessing.context.BaseContext:
    # Forking skips re-importing torch in every worker; spawn is the portable fallback.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method)


def _decode_one(reader: ImageReader, job: DecodeJob, name: str) -> np.ndarray:
    image = decode_image(reader.read(name), job.image_size, job.display_name(name))
    if job.expected_shape is not None and image.shape != job.expected_shape:
        height, width = image.shape[:2]
        expected_height, expected_width = job.expected_shape[:2]
        raise DataError(
            f"{job.display_name(name)} is {width}x{height} but {job.reference_name} is "
            f"{expected_width}x{expected_height}: images differ in size; pass image_size "
            "to resize all of them to one square size"
        )
    return image


# One reader and job per worker process, set by the pool initializer.
_worker_state: dict[str, object] = {}


def _initialize_worker(job: DecodeJob) -> None:
    # A forked worker must not use the parent's zip handle: their seeks would interleave.
    _worker_state["job"] = job
    _worker_state["reader"] = open_reader(job.kind, Path(job.path))


def _decode_chunk(names: list[str]) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Decode ``names`` in a worker: the images that decoded, and ``(offset, reason)`` of the rest."""
    reader = _worker_state["reader"]
    job = _worker_state["job"]
    output = np.empty((len(names), *job.expected_shape), dtype=np.uint8)  # type: ignore[union-attr]
    count = 0
    failed = []
    for offset, name in enumerate(names):
        try:
            output[count] = _decode_one(reader, job, name)  # type: ignore[arg-type]
        except ImageDecodeError as error:
            failed.append((offset, error.reason))
        else:
            count += 1
    # Pickling a view sends only its own bytes.
    return output[:count], failed
