"""``load_dataset``: one entry point for every supported data source, decoded once into a store."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cnnkit.data.cache import cnnkit_home, hash_listing, remembered_hash_file
from cnnkit.data.cifar10 import (
    META_FILE,
    TEST_BATCH,
    TRAIN_BATCHES,
    find_cifar10_folder,
    read_cifar10_archive,
    read_cifar10_folder,
)
from cnnkit.data.dataset import DataSplits, ImageData
from cnnkit.data.decode import resize_array
from cnnkit.data.download import download_cifar10, expected_cifar10_md5
from cnnkit.data.errors import DataError
from cnnkit.data.folders import (
    ImageSource,
    decode_source,
    displayed,
    displayed_folders,
    resolve_workers,
    scan_folder,
    scan_zip,
)
from cnnkit.data.readers import FOLDER, ZIP
from cnnkit.data.skipped import first_problem, skipped_summary, strict_error
from cnnkit.data.store import CachedSplits, StoreWriter, format_bytes, load_or_build, store_path
from cnnkit.data.stored_images import StoredImages
from cnnkit.progress import ProgressBar

CIFAR10_NAME = "cifar10"
_CIFAR10_SIDE = 32
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_ALLOWED_SOURCES = (
    "'cifar10', a CIFAR-10 .tar.gz or cifar-10-batches-py folder, an image folder "
    "(DIR/<class>/<image>) or a .zip of one"
)

Splits = tuple[ImageData, ImageData | None]


def load_dataset(
    source: str | os.PathLike | None = CIFAR10_NAME,
    image_size: int | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
    workers: int | None = None,
    strict: bool = False,
    in_memory: bool | None = None,
    refresh_cache: bool = False,
    labels: str | os.PathLike | None = None,
) -> DataSplits:
    """Load a data set, decoding it once into a store on disk and reading the store afterwards.

    Args:
        source: ``None`` or ``"cifar10"`` to download (once) and read the official CIFAR-10
            archive (``CNNKIT_CIFAR10_URL`` overrides its URL); a path to that ``.tar.gz``, to a
            ``cifar-10-batches-py`` folder or a folder holding one; or any other folder or
            ``.zip`` of images laid out as ``<class>/<image>`` (see ``load_image_folder``).
        image_size: side of the square images to produce (shorter side resized, then center
            crop); ``None`` keeps the images' own size, which must then be the same for all.
        cache_dir: folder for the downloaded archive, with the stores of decoded images in its
            ``cache/`` subfolder; default ``cnnkit_home()``.
        progress: show progress bars and timing lines on stderr.
        workers: processes decoding image files; ``None`` means one per CPU core.
        strict: for image folders and zips, raise ``DataError`` at the first file that is not
            a usable image instead of skipping it; hidden and system files (``.DS_Store``,
            ``__MACOSX/``, ``Thumbs.db``, ``desktop.ini``) are skipped even then. Skipped files
            are listed in ``DataSplits.skipped``, also when read back from the store.
        in_memory: hold the images in memory as one tensor (True), or leave them in the store
            and read them as they are indexed (False, ``StoredImages``); None (the default)
            decides by size: stores up to 256 MiB (``CNNKIT_IN_MEMORY_MB``) are read whole.
        refresh_cache: decode the source again into a new store even when one exists (and hash
            a zip's bytes again). A folder's store is keyed by its files' names, sizes and
            modification times, not their bytes: a file rewritten with the same size and time
            is not noticed until the store is refreshed. A damaged store is rebuilt anyway.
        labels: a multi-label table (``image,labels`` rows, see ``data.label_table``) for an image
            folder or zip, naming its images by their paths below its root. Without it, a
            ``labels.csv`` in the data (at its root, or the shallowest one) is used; without
            either, the class folders give one label an image.

    Raises:
        DataError: missing or unsupported source, corrupt archive, a class folder without a
            usable image, a failed download, or (strict) a file that is not a usable image.
    """
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1
    ):
        raise ValueError(
            f"image_size must be a positive integer or None. Received: image_size={image_size!r}"
        )
    workers = resolve_workers(workers)
    label_file = _label_file(labels)
    home = Path(cache_dir).expanduser() if cache_dir is not None else cnnkit_home()
    loader = _SourceLoader(
        home / "cache", image_size, workers, progress, strict, in_memory, refresh_cache, label_file
    )
    if source is None or source == CIFAR10_NAME:
        loader.refuse_label_table(CIFAR10_NAME)  # before any download
        md5 = expected_cifar10_md5()
        archive = download_cifar10(home, md5=md5, progress=progress)
        # download_cifar10 verified the md5, which identifies the content: no second hash.
        description = f"{CIFAR10_NAME} ({archive})"
        splits = loader.cifar10(f"md5:{md5}", lambda: read_cifar10_archive(archive), description)
        return DataSplits(*splits, description)
    if not isinstance(source, str | os.PathLike):
        raise ValueError(f"source must be a string, a path or None. Received: source={source!r}")
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"Data source {path} does not exist; expected {_ALLOWED_SOURCES}")
    if path.is_dir():
        return _load_folder(loader, path)
    return _load_file(loader, path)


class _SourceLoader:
    """Runs a source's decoder through its store, with the shared load settings."""

    def __init__(
        self,
        cache_dir: Path,
        image_size: int | None,
        workers: int,
        progress: bool,
        strict: bool,
        in_memory: bool | None = None,
        refresh: bool = False,
        label_file: Path | None = None,
    ):
        self.cache_dir = cache_dir
        self.image_size = image_size
        self.workers = workers
        self.progress = progress
        self.strict = strict
        self.in_memory = in_memory
        self.refresh = refresh
        self.label_file = label_file

    def cached(
        self,
        kind: str,
        content_hash: str,
        image_size: int | None,
        build: Callable[[StoreWriter | None], CachedSplits],
        source: str,
    ) -> CachedSplits:
        """The stored splits for this content and size, built by ``build(writer)`` the first time
        (or again, when refreshing); ``source`` describes the data for ``cnnkit cache list``."""
        path = store_path(self.cache_dir, kind, content_hash, image_size)
        started = time.perf_counter()
        splits, existed = load_or_build(
            path, build, self.progress, self.in_memory, source, image_size, self.refresh
        )
        if self.progress and existed:
            count = splits.image_count
            elapsed = time.perf_counter() - started
            size = format_bytes(sum(split.images.numel() for split in _present(splits)))
            how = (
                f"Mapped {count:,} decoded images ({size}, read as batches need them)"
                if isinstance(splits.train.images, StoredImages)
                else f"Loaded {count:,} decoded images ({size})"
            )
            print(f"{how} from cache {path} in {elapsed:.2f}s", file=sys.stderr)
            if splits.skipped:
                print(skipped_summary(splits.skipped, count + len(splits.skipped)), file=sys.stderr)
        return splits

    def refuse_label_table(self, source: str) -> None:
        """A label table is for image folders and zips: CIFAR-10 brings its own labels."""
        if self.label_file is not None:
            raise DataError(
                f"A label table is for image folders and zips; {source} is CIFAR-10, labelled by its "
                f"own batches. Received: labels={str(self.label_file)!r}"
            )

    def cifar10(self, content_hash: str, read: Callable[[], Splits], source: str) -> Splits:
        """Store and (unless the size is the native 32) resize CIFAR-10 splits."""
        self.refuse_label_table(source)
        size = self.image_size
        if size in (None, _CIFAR10_SIDE):
            # Both mean "as stored": they share one store. The writer stores what read() returns.
            splits = self.cached("cifar10", content_hash, None, lambda writer: CachedSplits(*read()), source)
            return splits.train, splits.test

        def read_resized(writer: StoreWriter | None) -> CachedSplits:
            train, test = read()
            return CachedSplits(
                _resize(train, size, self.progress),
                _resize(test, size, self.progress) if test is not None else None,
            )

        splits = self.cached("cifar10", content_hash, size, read_resized, source)
        return splits.train, splits.test

    def images(self, kind: str, path: Path, content_hash: str, scan: Callable[[], ImageSource]) -> DataSplits:
        """Load the image folder or zip at ``path`` (listed by ``scan()``) through its store."""

        if self.label_file is not None:
            # The table is part of the content: another table is another store.
            table = hashlib.sha256(self.label_file.read_bytes()).hexdigest()
            content_hash = f"{content_hash}|labels:{table}"

        def build(writer: StoreWriter | None) -> CachedSplits:
            source = scan()
            source.label_file = self.label_file
            decoded = decode_source(source, self.image_size, self.workers, self.progress, self.strict, writer)
            return CachedSplits(
                decoded.train, decoded.test, decoded.skipped, decoded.validation, decoded.folders
            )

        description = f"image {kind} ({path})"
        if self.label_file is not None:
            description = f"image {kind} ({path}, labels {self.label_file})"
        splits = self.cached(kind, content_hash, self.image_size, build, description)
        skipped = displayed(kind, path, splits.skipped)
        # A strict load that decodes raises before anything is stored; one that finds a store
        # written without strict must refuse the same files.
        problem = first_problem(skipped) if self.strict else None
        if problem is not None:
            raise strict_error(problem)
        folders = displayed_folders(kind, path, splits.folders)
        return DataSplits(splits.train, splits.test, description, skipped, splits.validation, folders)


def _label_file(labels: str | os.PathLike | None) -> Path | None:
    """The label table given apart from the data, checked to be a file."""
    if labels is None:
        return None
    if not isinstance(labels, str | os.PathLike):
        raise ValueError(f"labels must be a path to a .csv table or None. Received: labels={labels!r}")
    path = Path(labels).expanduser()
    if not path.is_file():
        raise DataError(
            f"Label table {path} does not exist or is not a file (expected a .csv of image,labels rows)"
        )
    return path


def _load_folder(loader: _SourceLoader, path: Path) -> DataSplits:
    cifar_folder = find_cifar10_folder(path)
    if cifar_folder is not None:
        listing = [
            (name, status.st_size, status.st_mtime_ns)
            for name in (*TRAIN_BATCHES, TEST_BATCH, META_FILE)
            if (cifar_folder / name).is_file()
            for status in [(cifar_folder / name).stat()]
        ]
        description = f"{CIFAR10_NAME} ({cifar_folder})"
        splits = loader.cifar10(hash_listing(listing), lambda: read_cifar10_folder(cifar_folder), description)
        return DataSplits(*splits, description)
    source, listing_hash = scan_folder(path)
    return loader.images(FOLDER, path, listing_hash, lambda: source)


def _load_file(loader: _SourceLoader, path: Path) -> DataSplits:
    name = path.name.lower()
    if name.endswith(".zip"):
        # Hash before listing: on a store hit the zip's directory never needs reading.
        content_hash = remembered_hash_file(path, loader.cache_dir, refresh=loader.refresh)
        return loader.images(ZIP, path, content_hash, lambda: scan_zip(path))
    if name.endswith(_ARCHIVE_SUFFIXES):
        description = f"{CIFAR10_NAME} ({path})"
        content_hash = remembered_hash_file(path, loader.cache_dir, refresh=loader.refresh)
        splits = loader.cifar10(content_hash, lambda: read_cifar10_archive(path), description)
        return DataSplits(*splits, description)
    raise DataError(f"Unsupported data file {path}; expected {_ALLOWED_SOURCES}")


def _resize(data: ImageData, size: int, progress: bool) -> ImageData:
    resized = np.empty((len(data), size, size, 3), dtype=np.uint8)
    images = data.images.numpy()
    with ProgressBar(len(data), f"Resizing to {size}x{size}", enabled=progress) as bar:
        for index, image in enumerate(images):
            resized[index] = resize_array(image, size)
            bar.update(1)
    return ImageData(torch.from_numpy(resized), data.labels, data.class_names, data.names)


def _present(splits: CachedSplits) -> list[ImageData]:
    return [split for split in (splits.train, splits.validation, splits.test) if split is not None]
