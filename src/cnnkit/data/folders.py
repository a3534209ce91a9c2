"""Image-folder sources: DIR/<class>/<image> (maybe under train/ and test/), or a .zip of one."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from cnnkit.data.bounded_read import READ_ERRORS, describe_read_error, read_file
from cnnkit.data.dataset import DataSplits, ImageData
from cnnkit.data.errors import DataError, ImageDecodeError
from cnnkit.data.label_table import find_label_table, table_layout
from cnnkit.data.layout import FolderLayout, resolve_layout
from cnnkit.data.parallel_decode import DecodeJob, ImageOutput, decode_images
from cnnkit.data.readers import FOLDER, ZIP, display_name, list_folder, list_zip, open_reader
from cnnkit.data.skipped import (
    EMPTY_FOLDER,
    OUTSIDE_CLASSES,
    UNSAFE,
    SkippedFile,
    first_problem,
    skipped_summary,
    strict_error,
)
from cnnkit.data.store import format_bytes

if TYPE_CHECKING:
    from cnnkit.data.store import StoreWriter


@dataclass
class ImageSource:
    """The files of a folder or zip archive.

    Attributes:
        kind: ``readers.FOLDER`` or ``readers.ZIP``.
        path: the folder or the zip file.
        names: relative POSIX paths of the files with an image extension.
        skipped: the other files (not images, OS clutter), with relative paths.
    """

    kind: str
    path: Path
    names: list[str]
    skipped: list[SkippedFile] = field(default_factory=list)
    empty_folders: list[str] = field(default_factory=list)  # relative, ending in "/"
    # A multi-label table given apart from the data (``--labels``); else a labels.csv among the
    # source's files is used, and without one the class folders give the labels.
    label_file: Path | None = None


@dataclass
class DecodedSource:
    """The splits decoded from an image source, and the files left out (with relative paths)."""

    train: ImageData
    test: ImageData | None
    skipped: list[SkippedFile]
    validation: ImageData | None = None
    folders: dict[str, str] = field(default_factory=dict)  # each split's folder, relative ("" the root)


def scan_folder(path: Path) -> tuple[ImageSource, str]:
    """List the files below folder ``path``; also return a digest of the listing for caching."""
    listing = list_folder(path)
    return ImageSource(FOLDER, path, listing.images, listing.skipped, listing.empty_folders), listing.digest


def scan_zip(path: Path) -> ImageSource:
    """List the members of the zip archive at ``path``."""
    listing = list_zip(path)
    return ImageSource(ZIP, path, listing.images, listing.skipped, listing.empty_folders)


def displayed(kind: str, path: Path, skipped: list[SkippedFile]) -> list[SkippedFile]:
    """``skipped`` with relative paths turned into what the user would name: path or member in zip."""
    return [SkippedFile(display_name(kind, path, file.path), file.reason) for file in skipped]


def displayed_folders(kind: str, path: Path, folders: dict[str, str]) -> dict[str, str]:
    """Each split's relative folder as the user would name it (the source itself for "")."""
    return {
        split: display_name(kind, path, prefix) if prefix else str(path) for split, prefix in folders.items()
    }


def decode_source(
    source: ImageSource,
    image_size: int | None,
    workers: int,
    progress: bool,
    strict: bool = False,
    writer: StoreWriter | None = None,
) -> DecodedSource:
    """Resolve the layout of ``source`` and decode its train (validation, test) images into tensors,
    or, given a store ``writer``, into the store being written (the splits then hold its images).

    Files that are not usable images are skipped and returned; with ``strict`` the first one
    that is not OS clutter raises ``DataError`` (before any decoding when the listing shows it).
    """
    layout, skipped = _resolve_source_layout(source)
    problem = first_problem(displayed(source.kind, source.path, sorted(skipped, key=_by_path)))
    if strict and problem is not None:
        raise strict_error(problem)
    started = time.perf_counter()
    job = DecodeJob(source.kind, str(source.path), image_size)
    if writer is not None:
        writer.begin(sum(len(getattr(layout, split) or []) for split in ("train", "validation", "test")))
    outputs = writer.output if writer is not None else lambda split: None
    train, failures = _decode_split(job, layout, "train", workers, progress, strict, outputs("train"))
    skipped += failures
    # Without image_size the held-out images must match the training size exactly.
    held_out_job = replace(
        job, expected_shape=tuple(train.images.shape[1:]), reference_name=job.display_name(train.names[0])
    )
    held_out: dict[str, ImageData | None] = {"validation": None, "test": None}
    for split in held_out:
        if getattr(layout, split):
            held_out[split], failures = _decode_split(
                held_out_job, layout, split, workers, progress, strict, outputs(split)
            )
            skipped += failures
    skipped.sort(key=_by_path)
    if progress:
        decoded = [split for split in (train, *held_out.values()) if split is not None]
        _report_decoded(source, decoded, skipped, time.perf_counter() - started, workers)
    return DecodedSource(train, held_out["test"], skipped, held_out["validation"], layout.prefixes())


def _resolve_source_layout(source: ImageSource) -> tuple[FolderLayout, list[SkippedFile]]:
    """The source's layout (a label table's, else its class folders') and what it leaves out."""
    # Unsafe zip names (absolute, climbing out) are no paths in the layout: they lead nowhere.
    others = [file.path for file in source.skipped if file.category != UNSAFE]
    table = _label_table(source, others)
    if table is not None:
        table_path, text, name = table
        layout, left_out = table_layout(source.names, table_path, text, name)
        return layout, [file for file in source.skipped if file.path != table_path] + left_out
    layout = resolve_layout(source.names, str(source.path), others)
    skipped = source.skipped + [SkippedFile(path, OUTSIDE_CLASSES) for path in layout.unused(source.names)]
    # An empty folder among the class folders is no class: say so rather than drop it silently.
    class_levels = set(layout.prefixes().values())
    skipped += [
        SkippedFile(folder, EMPTY_FOLDER)
        for folder in source.empty_folders
        if folder[: folder.rstrip("/").rfind("/") + 1] in class_levels
    ]
    return layout, skipped


def _label_table(source: ImageSource, other_files: list[str]) -> tuple[str, str, str] | None:
    """(its relative path, its text, its name for messages) of the source's label table, or None."""
    if source.label_file is not None:
        # Given apart from the data: it names images from the data's root.
        name = str(source.label_file)
        try:
            data = read_file(source.label_file)
        except READ_ERRORS as error:
            raise DataError(f"Cannot read the label table {name} ({describe_read_error(error)})") from None
        return "", _table_text(data, name), name
    table_path = find_label_table(other_files)
    if table_path is None:
        return None
    reader = open_reader(source.kind, source.path)
    try:
        data = reader.read(table_path)
    except ImageDecodeError as error:
        raise DataError(f"{error.name}: cannot read the label table ({error.reason})") from None
    finally:
        reader.close()
    name = display_name(source.kind, source.path, table_path)
    return table_path, _table_text(data, name), name


def _table_text(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{name} is not UTF-8 text ({error.reason} at byte {error.start})") from None


def has_label_table(path: str | os.PathLike) -> bool:
    """Whether the folder or zip at ``path`` holds a ``labels.csv``: its runs are multi-label."""
    path = Path(path).expanduser()
    if path.is_dir():
        source, _ = scan_folder(path)
    elif path.is_file() and path.suffix.lower() == ".zip":
        source = scan_zip(path)
    else:
        return False
    return find_label_table([file.path for file in source.skipped if file.category != UNSAFE]) is not None


def load_image_folder(
    path: str | os.PathLike,
    image_size: int | None = None,
    workers: int | None = None,
    progress: bool = True,
    strict: bool = False,
) -> DataSplits:
    """Decode an image folder or a .zip of one, without the tensor cache.

    Layout: ``DIR/<class>/<image>`` (classes are the sorted folder names), or
    ``DIR/train/<class>/<image>`` beside ``DIR/test/`` (or ``DIR/val/``) for a test split.
    A level holding a single folder and no images is descended into.

    Files that are not usable images (other file types, corrupt or truncated images, images
    outside the class folders, hidden and system files) are skipped and listed in
    ``DataSplits.skipped``. With ``strict``, the first of them raises ``DataError`` instead,
    except hidden and system files (``.DS_Store``, ``__MACOSX/``, ``Thumbs.db``,
    ``desktop.ini``), which the operating system put there and which are skipped anyway.

    Raises:
        DataError: missing path, no images, a class folder without a usable image, images of
            different sizes without ``image_size``, or (strict) a file that is not a usable image.
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
    decoded = decode_source(source, image_size, workers, progress, strict)
    skipped = displayed(source.kind, path, decoded.skipped)
    folders = displayed_folders(source.kind, path, decoded.folders)
    return DataSplits(
        decoded.train, decoded.test, f"image {source.kind} ({path})", skipped, decoded.validation, folders
    )


def resolve_workers(workers: int | None) -> int:
    """Validate ``workers``; ``None`` means one per CPU core."""
    if workers is None:
        return os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer or None. Received: workers={workers!r}")
    return workers


def _decode_split(
    job: DecodeJob,
    layout: FolderLayout,
    split: str,
    workers: int,
    progress: bool,
    strict: bool,
    output: ImageOutput | None = None,
) -> tuple[ImageData, list[SkippedFile]]:
    """Decode the files of ``split`` ("train", "validation" or "test") into ``output`` (default:
    memory); return it and its undecodable files."""
    labelled = getattr(layout, split)
    prefix = layout.prefixes()[split]
    names = [path for path, _ in labelled]
    # Named by where the images are, not by their role: evaluate decodes a test folder this way too.
    where = job.display_name(prefix) if prefix else job.path
    decoded = decode_images(job, names, workers, progress, f"Decoding images in {where}", strict, output)
    # One class index an image, or (a label table) one row of 0 and 1 an image.
    shape = (len(labelled), len(layout.class_names)) if layout.multi_label else (len(labelled),)
    all_labels = torch.tensor([label for _, label in labelled], dtype=torch.int64).reshape(shape)
    labels = all_labels[torch.from_numpy(decoded.kept)]
    failures = [SkippedFile(name, reason) for name, reason in decoded.failures]
    if not layout.multi_label:
        _check_classes_decoded(job, labelled, labels, layout.class_names, prefix, failures)
    kept_names = [name for name, kept in zip(names, decoded.kept.tolist(), strict=True) if kept]
    images = torch.from_numpy(decoded.images) if isinstance(decoded.images, np.ndarray) else decoded.images
    return ImageData(images, labels, layout.class_names, kept_names), failures


def _check_classes_decoded(
    job: DecodeJob,
    labelled: list[tuple[str, int]],
    labels: torch.Tensor,
    class_names: list[str],
    prefix: str,
    failures: list[SkippedFile],
) -> None:
    """Raise ``DataError`` naming a class folder of the split whose image files all failed."""
    counts = torch.bincount(labels, minlength=len(class_names)).tolist()
    # A class absent from a test folder is fine; one whose files all failed to decode is not.
    for label in sorted({label for _, label in labelled}):
        if counts[label] == 0:
            folder = prefix + class_names[label] + "/"
            examples = [file for file in failures if file.path.startswith(folder)]
            raise DataError(
                f"Class folder {job.display_name(folder)} has no usable image: all "
                f"{len(examples)} of its image files failed to decode ({examples[0].path}: "
                f"{examples[0].reason}); replace them or remove the folder"
            )


def _report_decoded(
    source: ImageSource, splits: list[ImageData], skipped: list[SkippedFile], elapsed: float, workers: int
) -> None:
    count = sum(len(split) for split in splits)
    size = format_bytes(sum(split.images.numel() for split in splits))
    print(
        f"Decoded {count:,} images ({size} as uint8) from {source.path} in "
        f"{elapsed:.1f}s ({workers} worker{'s' if workers > 1 else ''})",
        file=sys.stderr,
    )
    if skipped:
        print(skipped_summary(skipped, count + len(skipped)), file=sys.stderr)


def _by_path(file: SkippedFile) -> str:
    return file.path
