"""The images an ONNX export is verified on: the user's, else the run's own data, else synthetic.

Real images matter: a graph can agree with PyTorch on noise and still differ where activations
saturate or classes are confidently predicted, which only real pictures reach.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from cnnkit.checkpoint import Checkpoint
from cnnkit.data import DataError, cnnkit_home, load_dataset
from cnnkit.data.bounded_read import READ_ERRORS
from cnnkit.data.decode import decode_image
from cnnkit.data.download import CIFAR10_FILENAME
from cnnkit.inference.image_inputs import InputItem, ItemReader, expand_inputs

CIFAR10 = "cifar10"


def verification_images(
    checkpoint: Checkpoint, verify_data: str | os.PathLike | None, count: int
) -> tuple[np.ndarray, str]:
    """uint8 ``(n, size, size, 3)`` images (``n <= count``) and a description of where they came from.

    ``verify_data`` must yield images (an error otherwise); the run's data (``config["data"]``)
    is used only when it is on this machine (CIFAR-10 is never downloaded for this), and
    deterministic synthetic images stand in when it is not.
    """
    size = int(checkpoint.image_size)
    if verify_data is not None:
        images = images_from_source(verify_data, size, count)
        if images is None or not len(images):
            raise ValueError(f"No images to verify the export on. Received: verify_data={str(verify_data)!r}")
        return images, f"from {verify_data}"
    run_data = checkpoint.config.get("data")
    if run_data:
        try:
            images = images_from_source(run_data, size, count)
        except (DataError, OSError):
            images = None  # moved or deleted since training: synthetic images still catch export bugs
        if images is not None and len(images):
            return images, f"the run's data, {run_data}"
    return synthetic_images(count, size), "synthetic images"


def images_from_source(source: str | os.PathLike, size: int, count: int) -> np.ndarray | None:
    """Up to ``count`` images spread evenly over ``source``; None if it is not on this machine.

    ``source`` is what ``cnnkit predict`` takes (files, folders, globs, zips: only the chosen
    images are decoded), or a data set ``load_dataset`` reads (a CIFAR-10 archive or folder).
    """
    if os.fspath(source) == CIFAR10:
        if not (cnnkit_home() / CIFAR10_FILENAME).is_file():
            return None
        return _split_sample(CIFAR10, size, count)
    items = [item for item in expand_inputs(source) if item.error is None]
    if items:
        chosen = [items[index] for index in _spread(len(items), count)]
        with ItemReader() as reader:
            images = [_decoded(reader, item, size) for item in chosen]
        decoded = [image for image in images if image is not None]
        return np.stack(decoded) if decoded else None
    if not Path(source).exists():
        return None
    return _split_sample(source, size, count)


def synthetic_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    """Deterministic uint8 images: half pixel noise, half smooth blobs (large uniform regions)."""
    generator = np.random.default_rng(seed)
    noise = generator.integers(0, 256, size=(count, size, size, 3), dtype=np.uint8)
    cells = max(1, size // 4)
    coarse = generator.integers(0, 256, size=(count, cells, cells, 3), dtype=np.uint8)
    blocks = np.repeat(np.repeat(coarse, -(-size // cells), axis=1), -(-size // cells), axis=2)
    smooth = blocks[:, :size, :size]
    return np.where((np.arange(count) % 2 == 0)[:, None, None, None], noise, smooth)


def _split_sample(source: str | os.PathLike, size: int, count: int) -> np.ndarray:
    splits = load_dataset(source, image_size=size, progress=False)
    split = splits.test if splits.test is not None else splits.train
    # Only the chosen images are read: a large set stays in its store on disk.
    return split.images[torch.from_numpy(_spread(len(split.images), count))].numpy()


def _spread(total: int, count: int) -> np.ndarray:
    # Evenly over the set: folders are sorted by class, so the first images would be one class.
    return np.unique(np.linspace(0, total - 1, min(total, count)).round().astype(int))


def _decoded(reader: ItemReader, item: InputItem, size: int) -> np.ndarray | None:
    try:
        return decode_image(reader.read(item), size, item.path)
    except READ_ERRORS:  # includes decode_image's DataError, a ValueError
        return None  # an unreadable file among the user's images: the others still verify
