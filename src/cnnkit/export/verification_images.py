"""The images an ONNX export is verified on: the user's, else the run's own data, else synthetic;
and those an int8 export is calibrated and scored on (``int8_images``).

Real images matter: a graph can agree with PyTorch on noise and still differ where activations
saturate or classes are confidently predicted, which only real pictures reach.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnkit.checkpoint import Checkpoint, load_checkpoint
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
        chosen = [items[index] for index in spread_indices(len(items), count)]
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
    return split.images[torch.from_numpy(spread_indices(len(split.images), count))].numpy()


def spread_indices(total: int, count: int) -> np.ndarray:
    """At most ``count`` indices spread evenly over ``total`` items: folders come sorted by class,
    so the first images would be one class."""
    return np.unique(np.linspace(0, total - 1, min(total, count)).round().astype(int))


def _decoded(reader: ItemReader, item: InputItem, size: int) -> np.ndarray | None:
    try:
        return decode_image(reader.read(item), size, item.path)
    except READ_ERRORS:  # includes decode_image's DataError, a ValueError
        return None  # an unreadable file among the user's images: the others still verify


@dataclass(frozen=True)
class Int8Images:
    """What an int8 export is calibrated on and scored on (uint8 at the model's image size)."""

    calibration: np.ndarray
    held_out: np.ndarray
    labels: np.ndarray  # class indices of ``held_out``, in the checkpoint's class order
    calibration_source: str
    held_out_source: str


def int8_images(checkpoint_path: str | os.PathLike, calibration: Any, data: Any, count: int) -> Int8Images:
    """``count`` calibration images spread over the run's training split (or over
    ``calibration``), and the run's validation split (or ``data``'s test split, else all of it)
    with labels. A single-label checkpoint only; one-line errors where the images are missing."""
    from cnnkit.runs.evaluation import match_labels

    checkpoint = load_checkpoint(checkpoint_path)
    if checkpoint.task != "single_label":
        raise ValueError(
            "int8 export compares top-1 accuracy: single-label models only. Received: task='multi_label'"
        )
    train = held_out = None
    if calibration is None or data is None:
        run_splits = _run_splits(checkpoint)
        if run_splits is None:
            raise ValueError(
                "int8 needs real images to calibrate on and to score: the run's data is not on this "
                f"machine; give --calibration and --data. Received: data={checkpoint.config.get('data')!r}"
            )
        train, held_out = run_splits
        held_out_source = "the run's validation split"
    if data is not None:
        scored = load_dataset(data, image_size=checkpoint.resize_size)
        held_out = scored.test if scored.test is not None else scored.train
        held_out_source = f"{data} ({'test split' if scored.test is not None else 'all'})"
    if held_out is None:
        raise ValueError(
            "The run trained on all of its data, holding none out: give --data to score int8 on."
        )
    if calibration is None:
        calibration_images, calibration_source = (
            spread_images(checkpoint, train, count),
            "the run's training split",
        )
    else:
        calibration_images, calibration_source = (
            images_from_source(calibration, checkpoint.image_size, count),
            str(calibration),
        )
        if calibration_images is None or not len(calibration_images):
            raise ValueError(f"No images to calibrate int8 on. Received: calibration={str(calibration)!r}")
    labels = match_labels(held_out, checkpoint.class_names, False).numpy()
    return Int8Images(
        calibration_images, _at_size(checkpoint, held_out.images), labels, calibration_source, held_out_source
    )


def _run_splits(checkpoint: Checkpoint) -> tuple[Any, Any] | None:
    """The run's (training, validation) splits as it made them, or None where its data is not on
    this machine (CIFAR-10 is never downloaded for this)."""
    from cnnkit.runs.splits import training_splits

    run_data = checkpoint.config.get("data")
    local = Path(cnnkit_home() / CIFAR10_FILENAME if run_data == CIFAR10 else run_data or "")
    if not run_data or not local.exists() or checkpoint.recipe is None:
        return None
    return training_splits(load_dataset(run_data, image_size=checkpoint.resize_size), checkpoint.recipe)


def run_training_images(checkpoint: Checkpoint, count: int) -> np.ndarray | None:
    """``count`` images spread over the run's training split, at the network's size; None where
    the run's data is not on this machine."""
    run_splits = _run_splits(checkpoint)
    return None if run_splits is None else spread_images(checkpoint, run_splits[0], count)


def spread_images(checkpoint: Checkpoint, data: Any, count: int) -> np.ndarray:
    """``count`` images spread evenly over ``data`` (an ``ImageData``), at the network's size."""
    return _at_size(checkpoint, data.images[torch.from_numpy(spread_indices(len(data), count))])


def _at_size(checkpoint: Checkpoint, images: Any) -> np.ndarray:
    """Images stored at the checkpoint's resize size, as the network sees them (the centre crop)."""
    from cnnkit.runtime.normalization import center_crop_images

    if checkpoint.resize_size != checkpoint.image_size:
        images = center_crop_images(images, checkpoint.image_size)
    return np.ascontiguousarray(np.asarray(images))
