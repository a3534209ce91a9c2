"""Cache of decoded tensors, keyed by the content of the source they were decoded from.

Decoding 50,000 JPEGs or gunzipping the CIFAR-10 archive takes seconds; reading the decoded
arrays back from one uncompressed ``.npz`` takes a fraction of one.
"""

from __future__ import annotations

import hashlib
import os
import sys
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cnnkit.data.dataset import ImageData
from cnnkit.data.skipped import SkippedFile
from cnnkit.fileio import atomic_open

# Bump when the decoding (resize policy, colour handling) or the file layout changes, so that
# caches written by older code are never mistaken for current ones.
# 2: 16-bit and float images scaled, CMYK without Adobe marker, files skipped; names stored.
# 3: empty class folders and unsafe zip member names are listed as skipped.
# 4: a validation split, and the folder each split came from.
CACHE_FORMAT_VERSION = 4

_SPLITS = ("train", "test", "validation")


def cnnkit_home() -> Path:
    """Return cnnkit's data folder: ``$CNNKIT_HOME`` or ``~/.cache/cnnkit``, created if missing."""
    configured = os.environ.get("CNNKIT_HOME")
    home = Path(configured).expanduser() if configured else Path.home() / ".cache" / "cnnkit"
    home.mkdir(parents=True, exist_ok=True)
    return home


def hash_file(path: Path) -> str:
    """Return the blake2b hex digest of the bytes of ``path``."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, lambda: hashlib.blake2b(digest_size=20)).hexdigest()


def hash_listing(entries: Iterable[tuple[str, int, int]]) -> str:
    """Return a digest of ``(relative path, size, mtime_ns)`` entries, in sorted order.

    Cheaper than hashing the bytes of a folder of images, and any edit, addition or removal
    changes a size or a modification time.
    """
    digest = hashlib.blake2b(digest_size=20)
    for relative_path, size, mtime_ns in sorted(entries):
        digest.update(f"{relative_path}\0{size}\0{mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_path(cache_dir: Path, kind: str, content_hash: str, image_size: int | None) -> Path:
    """Return the cache file for a source of ``kind`` with ``content_hash`` at ``image_size``."""
    key = hashlib.blake2b(
        f"{CACHE_FORMAT_VERSION}|{kind}|{content_hash}|{image_size}".encode(), digest_size=16
    ).hexdigest()
    return cache_dir / f"{kind}-{key}.npz"


@dataclass
class CachedSplits:
    """What the cache holds for one source: its splits and the files skipped while decoding it.

    ``skipped`` paths are relative to the source, so that a moved folder still names its files.
    """

    train: ImageData
    test: ImageData | None
    skipped: list[SkippedFile] = field(default_factory=list)
    validation: ImageData | None = None
    folders: dict[str, str] = field(default_factory=dict)  # relative to the source


def save_cache(path: Path, splits: CachedSplits) -> None:
    """Write ``splits`` to ``path`` atomically; failures are reported on stderr, not raised.

    A cache that cannot be written (full disk, read-only home) only costs speed next time,
    so it must not abort the load that already succeeded.
    """
    arrays: dict[str, np.ndarray] = {
        "class_names": np.array(splits.train.class_names, dtype=np.str_),
        "skipped_paths": _encode_strings([file.path for file in splits.skipped]),
        "skipped_reasons": _encode_strings([file.reason for file in splits.skipped]),
        "folders": _encode_strings([f"{split}\t{folder}" for split, folder in splits.folders.items()]),
    }
    for name, split in zip(_SPLITS, (splits.train, splits.test, splits.validation), strict=True):
        if split is not None:
            arrays[f"{name}_images"] = split.images.numpy()
            arrays[f"{name}_labels"] = split.labels.numpy()
            if split.names is not None:
                arrays[f"{name}_names"] = _encode_strings(split.names)
    try:
        with atomic_open(path, "wb") as file:
            np.savez(file, **arrays)
    except OSError as error:
        print(
            f"Could not write the data cache {path} ({error}); continuing without it.",
            file=sys.stderr,
        )


def load_cache(path: Path) -> CachedSplits | None:
    """Read splits written by ``save_cache``; ``None`` when missing or unreadable.

    A corrupt file (interrupted copy, disk error) is reported and ignored so the caller rebuilds it.
    """
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as arrays:
            class_names = [str(name) for name in arrays["class_names"]]
            splits = [
                _read_split(arrays, name, class_names) if f"{name}_images" in arrays else None
                for name in _SPLITS
            ]
            paths = _decode_strings(arrays["skipped_paths"])
            reasons = _decode_strings(arrays["skipped_reasons"])
            folders = dict(entry.split("\t", 1) for entry in _decode_strings(arrays["folders"]))
            if len(paths) != len(reasons):
                raise ValueError(f"{len(paths)} skipped paths but {len(reasons)} reasons")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        print(f"Ignoring unreadable data cache {path} ({error}); rebuilding it.", file=sys.stderr)
        return None
    if splits[0] is None:
        return None
    skipped = [SkippedFile(name, reason) for name, reason in zip(paths, reasons, strict=True)]
    return CachedSplits(splits[0], splits[1], skipped, splits[2], folders)


def _read_split(arrays: np.lib.npyio.NpzFile, name: str, class_names: list[str]) -> ImageData:
    images = torch.from_numpy(arrays[f"{name}_images"])
    labels = torch.from_numpy(arrays[f"{name}_labels"])
    names = _decode_strings(arrays[f"{name}_names"]) if f"{name}_names" in arrays else None
    # ImageData validates dtypes and shapes, so a mangled cache surfaces here as ValueError.
    return ImageData(images, labels, class_names, names)


def _encode_strings(strings: list[str]) -> np.ndarray:
    # One UTF-8 byte array joined by NUL (which no file name holds): a fixed-width numpy string
    # array would take 4 bytes a character times the longest name, for every name.
    # surrogateescape round-trips file names that are not valid UTF-8.
    return np.frombuffer("\0".join(strings).encode("utf-8", "surrogateescape"), dtype=np.uint8)


def _decode_strings(array: np.ndarray) -> list[str]:
    if array.dtype != np.uint8 or array.ndim != 1:
        raise ValueError(f"expected a 1-D uint8 string array, got {array.dtype} {array.shape}")
    if array.size == 0:
        return []
    return array.tobytes().decode("utf-8", "surrogateescape").split("\0")
