"""Decoding many image files into one uint8 array, in parallel processes.

Each worker process opens the source itself and decodes contiguous chunks of files into one
array per chunk, so inter-process traffic is a list of names in and one array out per chunk.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnkit.data.decode import decode_image
from cnnkit.data.errors import DataError
from cnnkit.data.readers import ZIP, ImageReader, open_reader
from cnnkit.progress import ProgressBar

# Below this many images, starting processes (and re-reading a zip's directory in each)
# costs more than it saves.
PARALLEL_THRESHOLD = 2000
_CHUNK_RANGE = (32, 1000)


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
        return f"{name} in {self.path}" if self.kind == ZIP else str(Path(self.path) / name)


def decode_images(
    job: DecodeJob, names: list[str], workers: int, progress: bool, description: str
) -> np.ndarray:
    """Decode the files ``names`` of ``job``'s source into one (N, H, W, 3) uint8 array.

    The first image fixes the shape unless ``job.expected_shape`` is set; any image of
    another shape raises ``DataError`` naming it (only possible when ``job.image_size`` is None).
    """
    if not names:
        raise ValueError("names must not be empty. Received: names=[]")
    sequential = workers == 1 or len(names) < PARALLEL_THRESHOLD
    reader = open_reader(job.kind, Path(job.path))
    try:
        first = _decode_one(reader, job, names[0])
        if job.expected_shape is None:
            job = DecodeJob(job.kind, job.path, job.image_size, first.shape, job.display_name(names[0]))
        output = np.empty((len(names), *first.shape), dtype=np.uint8)
        output[0] = first
        chunks = _chunk_bounds(1, len(names), workers)
        with ProgressBar(len(names), description, unit="it", enabled=progress) as bar:
            bar.update(1)
            if sequential:
                for start, stop in chunks:
                    output[start:stop] = _decode_range(reader, job, names[start:stop])
                    bar.update(stop - start)
            else:
                # Workers open their own handles; this process's stays unused meanwhile.
                _decode_in_pool(job, names, chunks, workers, output, bar)
    finally:
        reader.close()
    return output


def _decode_in_pool(
    job: DecodeJob,
    names: list[str],
    chunks: list[tuple[int, int]],
    workers: int,
    output: np.ndarray,
    bar: ProgressBar,
) -> None:
    context = _multiprocessing_context()
    tasks = [names[start:stop] for start, stop in chunks]
    # Leaving the with block terminates the workers, also when one raises DataError.
    with context.Pool(min(workers, len(tasks)), _initialize_worker, (job,)) as pool:
        for (start, stop), array in zip(chunks, pool.imap(_decode_chunk, tasks), strict=True):
            output[start:stop] = array
            bar.update(stop - start)


def _chunk_bounds(start: int, stop: int, workers: int) -> list[tuple[int, int]]:
    # Several chunks per worker keep the progress bar moving and the load balanced at the end.
    lowest, highest = _CHUNK_RANGE
    size = max(lowest, min(highest, (stop - start) // (workers * 8) or 1))
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


def _decode_range(reader: ImageReader, job: DecodeJob, names: list[str]) -> np.ndarray:
    output = np.empty((len(names), *job.expected_shape), dtype=np.uint8)
    for index, name in enumerate(names):
        output[index] = _decode_one(reader, job, name)
    return output


# One reader and job per worker process, set by the pool initializer.
_worker_state: dict[str, object] = {}


def _initialize_worker(job: DecodeJob) -> None:
    # A forked worker must not use the parent's zip handle: their seeks would interleave.
    _worker_state["job"] = job
    _worker_state["reader"] = open_reader(job.kind, Path(job.path))


def _decode_chunk(names: list[str]) -> np.ndarray:
    reader = _worker_state["reader"]
    job = _worker_state["job"]
    return _decode_range(reader, job, names)  # type: ignore[arg-type]
