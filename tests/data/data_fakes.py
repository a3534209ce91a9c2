"""Helpers for data-layer tests: fake CIFAR-10 files in the official format, image trees."""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

FAKE_CLASSES = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGES_PER_BATCH = 20
BATCH_NAMES = [f"data_batch_{number}" for number in range(1, 6)] + ["test_batch"]


class Python2Pickler(pickle._Pickler):
    """Writes bytes the way Python 2 wrote str (BINSTRING), as the real CIFAR-10 files do.

    Python 3's protocol 2 would write bytes as calls to ``_codecs.encode``, a global the real
    files never name, and that the restricted unpickler rightly refuses.
    """

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def save_bytes_as_python2_str(self, value: bytes) -> None:
        if len(value) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(value)]) + value)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(value)) + value)
        self.memoize(value)

    def save_str_as_python2_str(self, value: str) -> None:
        # Python 2 wrote the ASCII strings inside numpy's dtype state as str too.
        self.save_bytes_as_python2_str(value.encode("latin-1"))

    def save_global(self, obj: object, name: str | None = None) -> None:
        # Files written by numpy 1.x name numpy.core, which numpy 2 renamed to numpy._core.
        if getattr(obj, "__name__", None) == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)

    dispatch[bytes] = save_bytes_as_python2_str
    dispatch[str] = save_str_as_python2_str


def python2_pickle(value: object) -> bytes:
    """Pickle ``value`` with protocol 2 in the byte layout of a Python 2 cPickle file."""
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(value)
    return buffer.getvalue()


@dataclass
class FakeCifar:
    """A small CIFAR-10 in the official format, and the arrays it was made from."""

    data: dict[str, np.ndarray]  # batch name -> (N, 3072) uint8 rows, CHW order
    labels: dict[str, list[int]]
    archive: Path  # cifar-10-python.tar.gz
    folder: Path  # extracted cifar-10-batches-py
    md5: str


def fake_batch_files(seed: int = 0) -> tuple[dict[str, bytes], dict, dict]:
    """Return the pickled files of a fake CIFAR-10 plus its data and labels per batch."""
    generator = np.random.default_rng(seed)
    files, data, labels = {}, {}, {}
    for name in BATCH_NAMES:
        data[name] = generator.integers(0, 256, (IMAGES_PER_BATCH, 3072), dtype=np.uint8)
        labels[name] = [int(value) for value in generator.integers(0, 10, IMAGES_PER_BATCH)]
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels[name],
            b"data": data[name],
            b"filenames": [f"{name}_{index}.png".encode() for index in range(IMAGES_PER_BATCH)],
        }
        files[name] = python2_pickle(batch)
    meta = {b"label_names": [name.encode() for name in FAKE_CLASSES], b"num_vis": 3072}
    files["batches.meta"] = python2_pickle(meta)
    return files, data, labels


def write_cifar_archive(path: Path, files: dict[str, bytes]) -> Path:
    """Write ``files`` as a tar.gz under the official ``cifar-10-batches-py/`` prefix."""
    with tarfile.open(path, "w:gz") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return path


def pattern_image(width: int, height: int, seed: int) -> np.ndarray:
    """A deterministic (height, width, 3) uint8 image, different for each seed."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG")


def write_image_tree(
    root: Path, layout: dict[str, int], size: tuple[int, int] = (6, 4), seed: int = 0
) -> dict[str, np.ndarray]:
    """Write PNGs (lossless, so pixels compare exactly) for ``{"class/sub/path": count}``.

    Returns the pixels of each file keyed by its path relative to ``root``.
    """
    written = {}
    for folder, count in layout.items():
        for index in range(count):
            relative = f"{folder}/{index:03d}.png"
            pixels = pattern_image(*size, seed=seed + len(written))
            write_png(root / relative, pixels)
            written[relative] = pixels
    return written
