"""Reading the next batch of images while the current one is computed.

Training and prediction walk their batches in an order known in advance. Images in memory are
gathered where they are needed (a copy of a few megabytes; a thread would only add a hand-off);
images in a store on disk (``StoredImages``) are read one batch ahead by a background thread,
whose reads (``os.preadv``) release the GIL, so reading overlaps the model's work.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

from cnnkit.data.stored_images import StoredImages


def prefetched(images: torch.Tensor | StoredImages, keys: Iterable[object]) -> Iterator[torch.Tensor]:
    """``images[key]`` for each of ``keys`` (index tensors or slices), in order, the next one read
    ahead when ``images`` are stored. Close the iterator (``contextlib.closing``) when leaving
    early: that waits for the read in flight and stops the thread."""
    if not isinstance(images, StoredImages):
        for key in keys:
            yield images[key]
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cnnkit-prefetch")
    try:
        keys = iter(keys)
        first = next(keys, None)
        if first is None:
            return
        pending = pool.submit(images.__getitem__, first)
        for key in keys:
            # Queued behind the pending read, so it runs while the caller uses that one.
            following = pool.submit(images.__getitem__, key)
            yield pending.result()
            pending = following
        yield pending.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
