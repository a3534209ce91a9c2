"""The images ``predict_paths`` classifies, decoded a chunk at a time, ahead of the model.

With many images, worker processes (``data.parallel_decode``'s pool: each opens its own zip
handles) decode the next chunks into one array each while the model classifies this one, so
decoding stays off the critical path; with few, this thread decodes chunk by chunk (starting
processes would cost more). Either way a chunk arrives whole and in order, a bad input as its
one-line reason in its place, in the same words.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from cnnkit.data.bounded_read import READ_ERRORS, describe_read_error
from cnnkit.data.decode import decode_image
from cnnkit.data.parallel_decode import PARALLEL_THRESHOLD, in_order, worker_pool
from cnnkit.inference.image_inputs import InputItem, ItemReader
from cnnkit.runtime.constants import available_cores

# Chunks a worker has been given and the model has not taken yet: the next one decodes while
# another waits, so a model faster than one worker's decoding never waits for a whole chunk.
_CHUNKS_AHEAD_PER_WORKER = 2
# Reading and decoding a 32-px JPEG from a zip costs ~0.13 ms of one core, the default network
# ~0.65 ms an image on 2 cores (AMD EPYC, bf16, one view): a worker per two cores keeps ahead and
# leaves the model the rest. On 2 cores the model takes both and stays the bottleneck: there the
# worker measured within the machine's noise (~10 %) of decoding in this thread.
_MAX_WORKERS = 4


@dataclass(frozen=True)
class DecodedChunk:
    """Consecutive items and their images.

    Attributes:
        items: the inputs, in order.
        images: uint8 ``(K, size, size, 3)``: those of the items that decoded, in order.
        errors: offset in ``items`` -> why that item has no image.
    """

    items: list[InputItem]
    images: np.ndarray
    errors: dict[int, str]


def decode_workers(count: int) -> int:
    """Decoding processes for ``count`` images: none below ``PARALLEL_THRESHOLD``, else one for
    every two cores (at least one, at most ``_MAX_WORKERS``)."""
    if count < PARALLEL_THRESHOLD:
        return 0
    return max(1, min(_MAX_WORKERS, available_cores() // 2))


def decoded_chunks(
    items: list[InputItem], image_size: int, resize_size: int, chunk_size: int, workers: int
) -> Iterator[DecodedChunk]:
    """``items`` in chunks of ``chunk_size``, decoded to ``image_size`` squares (resized to
    ``resize_size`` first, see ``decode_image``), lazily and in order: by ``workers`` processes
    (0: in this thread). Closing the iterator ends the workers."""
    chunks = [items[start : start + chunk_size] for start in range(0, len(items), chunk_size)]
    sizes = (image_size, resize_size)
    if workers < 1 or len(chunks) < 2:  # one chunk: nothing to decode ahead of
        with ItemReader() as reader:
            for chunk in chunks:
                yield DecodedChunk(chunk, *decode_chunk(chunk, reader, *sizes))
        return
    with worker_pool(min(workers, len(chunks)), _start_worker, sizes) as pool:
        decoded = in_order(pool, _decode_in_worker, chunks, workers * _CHUNKS_AHEAD_PER_WORKER)
        for chunk, (images, errors) in zip(chunks, decoded, strict=True):
            yield DecodedChunk(chunk, images, errors)


def decode_chunk(
    items: list[InputItem], reader: ItemReader, image_size: int, resize_size: int
) -> tuple[np.ndarray, dict[int, str]]:
    """The images of ``items`` that decode, in one array, and the reason of each that does not."""
    images = np.empty((len(items), image_size, image_size, 3), dtype=np.uint8)
    errors: dict[int, str] = {}
    count = 0
    for offset, item in enumerate(items):
        image = decode_item(item, reader, image_size, resize_size)
        if isinstance(image, str):
            errors[offset] = image
        else:
            images[count] = image
            count += 1
    return images[:count], errors  # a slice pickles only its own bytes


def decode_item(item: InputItem, reader: ItemReader, image_size: int, resize_size: int) -> np.ndarray | str:
    """The decoded image, or the one-line reason there is none."""
    if item.error is not None:
        return item.error
    try:
        data = reader.read(item)
    except READ_ERRORS as error:  # damaged, encrypted, too large: this image's error, not the run's
        return describe_read_error(error)
    try:
        return decode_image(data, image_size, item.path, resize_size)
    except ValueError as error:  # decode_image's DataError, naming the file
        return str(error)
    except Exception as error:
        # Pillow's rarer format plugins raise other types on corrupt files: one bad image among
        # thousands must not end the run.
        return f"Cannot decode {item.path} as an image ({type(error).__name__}: {error})"


# A worker's reader (its own zip handles) and the sizes, set by the pool's initializer.
_worker_state: dict[str, object] = {}


def _start_worker(image_size: int, resize_size: int) -> None:
    _worker_state.update(reader=ItemReader(), sizes=(image_size, resize_size))


def _decode_in_worker(items: list[InputItem]) -> tuple[np.ndarray, dict[int, str]]:
    return decode_chunk(items, _worker_state["reader"], *_worker_state["sizes"])  # type: ignore[arg-type,misc]
