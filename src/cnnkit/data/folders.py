"""Image-folder sources: DIR/<class>/<image> (maybe under train/ and test/), or a .zip of one."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnkit.data.cache import hash_listing
from cnnkit.data.dataset import DataSplits, ImageData
from cnnkit.data.errors import DataError
from cnnkit.data.layout import resolve_layout
from cnnkit.data.parallel_decode import DecodeJob, decode_images
from cnnkit.data.readers import FOLDER, ZIP, list_folder_images, list_zip_images


@dataclass
class ImageSource:
    """The image files of a folder or zip archive.

    Attributes:
        kind: ``readers.FOLDER`` or ``readers.ZIP``.
        path: the folder or the zip file.
        names: relative POSIX paths of the visible image files.
    """

    kind: str
    path: Path
    names: list[str]


def scan_folder(path: Path) -> tuple[ImageSource, str]:
    """List the images below folder ``path``; also return a digest of the listing for caching."""
    listing = list_folder_images(path)
    source = ImageSource(FOLDER, path, [relative for relative, _, _ in listing])
    return source, hash_listing(listing)


def scan_zip(path: Path) -> ImageSource:
    """List the image members of the zip archive at ``path``."""
    return ImageSource(ZIP, path, list_zip_images(path))


def decode_source(
    source: ImageSource, image_size: int | None, workers: int, progress: bool
) -> tuple[ImageData, ImageData | None]:
    """Resolve the layout of ``source`` and decode its train (and test) images into tensors."""
    layout = resolve_layout(source.names, str(source.path))
    started = time.perf_counter()
    job = DecodeJob(source.kind, str(source.path), image_size)
    train_images = decode_images(
        job, [path for path, _ in layout.train], workers, progress, "Decoding train images"
    )
    train = _image_data(train_images, layout.train, layout.class_names)
    test = None
    if layout.test:
        # Without image_size the test images must match the training size exactly.
        reference = layout.train[0][0]
        test_job = DecodeJob(
            source.kind,
            str(source.path),
            image_size,
            train_images.shape[1:],
            job.display_name(reference),
        )
        names = [path for path, _ in layout.test]
        test_images = decode_images(test_job, names, workers, progress, "Decoding test images")
        test = _image_data(test_images, layout.test, layout.class_names)
    if progress:
        count = len(train) + (len(test) if test is not None else 0)
        elapsed = time.perf_counter() - started
        print(
            f"Decoded {count} images from {source.path} in {elapsed:.1f}s "
            f"({workers} worker{'s' if workers > 1 else ''})",
            file=sys.stderr,
        )
    return train, test


def load_image_folder(
    path: str | os.PathLike,
    image_size: int | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> DataSplits:
    """Decode an image folder or a .zip of one, without the tensor cache.

    Layout: ``DIR/<class>/<image>`` (classes are the sorted folder names), or
    ``DIR/train/<class>/<image>`` beside ``DIR/test/`` (or ``DIR/val/``) for a test split.
    A level holding a single folder and no images is descended into.

    Raises:
        DataError: missing path, no images, or an undecodable image.
    """
    path = Path(path).expanduser()
    workers = resolve_workers(workers)
    if not path.exists():
        raise DataError(f"{path} does not exist; expected an image folder or a .zip of one")
    if path.is_dir():
        source, _ = scan_folder(path)
    elif path.is_file() and path.suffix.lower() == ".zip":
        source = scan_zip(path)
    else:
        raise DataError(f"{path} is neither a folder nor a .zip file of images")
    train, test = decode_source(source, image_size, workers, progress)
    return DataSplits(train, test, f"image {source.kind} ({path})")


def resolve_workers(workers: int | None) -> int:
    """Validate ``workers``; ``None`` means one per CPU core."""
    if workers is None:
        return os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer or None. Received: workers={workers!r}")
    return workers


def _image_data(images: np.ndarray, labelled: list[tuple[str, int]], class_names: list[str]) -> ImageData:
    labels = torch.tensor([label for _, label in labelled], dtype=torch.int64)
    return ImageData(torch.from_numpy(images), labels, class_names)
