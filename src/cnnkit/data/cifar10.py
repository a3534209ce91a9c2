"""Reading the CIFAR-10 python archive, packed (.tar.gz) or extracted (cifar-10-batches-py/)."""

from __future__ import annotations

import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnkit.data.dataset import ImageData
from cnnkit.data.errors import DataError
from cnnkit.data.safe_pickle import load_restricted_pickle

CIFAR10_CLASSES: list[str] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
CIFAR10_FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{number}" for number in range(1, 6))
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"
_SIDE = 32
_ROW_BYTES = 3 * _SIDE * _SIDE


def find_cifar10_folder(path: Path) -> Path | None:
    """Return the ``cifar-10-batches-py`` folder at or directly inside ``path``, if any."""
    if (path / TRAIN_BATCHES[0]).is_file():
        return path
    if (path / CIFAR10_FOLDER / TRAIN_BATCHES[0]).is_file():
        return path / CIFAR10_FOLDER
    return None


def read_cifar10_archive(path: Path) -> tuple[ImageData, ImageData | None]:
    """Read train and test splits straight out of ``cifar-10-python.tar.gz`` (no extraction)."""
    wanted = {*TRAIN_BATCHES, TEST_BATCH, META_FILE}
    files: dict[str, bytes] = {}
    try:
        # Streaming mode ("r|*") reads the gzip once front to back, never seeking backwards.
        with tarfile.open(path, "r|*") as archive:
            for member in archive:
                name = member.name.rsplit("/", 1)[-1]
                if member.isfile() and name in wanted and name not in files:
                    extracted = archive.extractfile(member)
                    files[name] = extracted.read() if extracted else b""
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise DataError(
            f"{path} is not a readable CIFAR-10 archive ({error}); "
            "expected cifar-10-python.tar.gz as published (a tar.gz of cifar-10-batches-py/)"
        ) from error
    return _assemble(files, str(path))


def read_cifar10_folder(folder: Path) -> tuple[ImageData, ImageData | None]:
    """Read train and test splits from an extracted ``cifar-10-batches-py`` folder."""
    files = {
        name: (folder / name).read_bytes()
        for name in (*TRAIN_BATCHES, TEST_BATCH, META_FILE)
        if (folder / name).is_file()
    }
    return _assemble(files, str(folder))


def _assemble(files: dict[str, bytes], source: str) -> tuple[ImageData, ImageData | None]:
    missing = [name for name in TRAIN_BATCHES if name not in files]
    if missing:
        raise DataError(
            f"{source} lacks {', '.join(missing)}: a CIFAR-10 source must hold "
            f"{', '.join(TRAIN_BATCHES)} (and usually {TEST_BATCH}, {META_FILE})"
        )
    class_names = _read_class_names(files.get(META_FILE), f"{source}:{META_FILE}")
    train_parts = [_read_batch(files[name], f"{source}:{name}") for name in TRAIN_BATCHES]
    train = _to_image_data(train_parts, class_names, source)
    test = None
    if TEST_BATCH in files:
        test_part = _read_batch(files[TEST_BATCH], f"{source}:{TEST_BATCH}")
        test = _to_image_data([test_part], class_names, source)
    return train, test


def _read_class_names(data: bytes | None, name: str) -> list[str]:
    if data is None:
        return list(CIFAR10_CLASSES)
    meta = load_restricted_pickle(data, name)
    names = _field(meta, "label_names", name)
    if not isinstance(names, list) or not names:
        raise DataError(f"{name} has no label_names list; expected the 10 CIFAR-10 class names")
    return [item.decode() if isinstance(item, bytes) else str(item) for item in names]


def _read_batch(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode one batch into HWC images (N, 32, 32, 3) and integer labels (N,)."""
    batch = load_restricted_pickle(data, name)
    pixels = _field(batch, "data", name)
    if (
        not isinstance(pixels, np.ndarray)
        or pixels.dtype != np.uint8
        or pixels.ndim != 2
        or pixels.shape[1] != _ROW_BYTES
    ):
        shape = getattr(pixels, "shape", type(pixels).__name__)
        raise DataError(f"{name} holds data of shape {shape}; CIFAR-10 batches hold uint8 (N, {_ROW_BYTES})")
    labels = np.asarray(_field(batch, "labels", name))
    if labels.shape != (pixels.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{name} holds {labels.shape} labels for {pixels.shape[0]} images; "
            "expected one integer label per image"
        )
    # Rows store the red plane, then green, then blue (CHW); the library uses HWC.
    images = pixels.reshape(-1, 3, _SIDE, _SIDE).transpose(0, 2, 3, 1)
    return images, labels.astype(np.int64)


def _field(batch: Any, key: str, name: str) -> Any:
    if isinstance(batch, dict):
        # Python 2 pickles decode their keys as bytes; re-pickled copies may use str.
        for candidate in (key.encode(), key):
            if candidate in batch:
                return batch[candidate]
    raise DataError(f"{name} has no '{key}' entry; expected a CIFAR-10 batch dictionary")


def _to_image_data(
    parts: list[tuple[np.ndarray, np.ndarray]], class_names: list[str], source: str
) -> ImageData:
    images = np.concatenate([part[0] for part in parts])
    labels = np.concatenate([part[1] for part in parts])
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise DataError(f"{source} holds labels up to {labels.max()} but only {len(class_names)} class names")
    return ImageData(torch.from_numpy(images), torch.from_numpy(labels), class_names)
