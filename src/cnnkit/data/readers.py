"""Listing and reading image files from a folder or straight out of a .zip archive.

Readers are opened by ``(kind, path)`` so that each decoding process can open its own handle:
a zip file handle shared across processes would interleave their seeks.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cnnkit.data.bounded_read import (
    READ_ERRORS,
    describe_read_error,
    encrypted_reason,
    is_encrypted,
    read_file,
    read_member,
)
from cnnkit.data.cache import hash_listing
from cnnkit.data.decode import is_image_name
from cnnkit.data.errors import DataError, ImageDecodeError
from cnnkit.data.skipped import (
    SkippedFile,
    clutter_reason,
    not_image_reason,
    path_clutter,
    unsafe_member_reason,
)

FOLDER = "folder"
ZIP = "zip"


class ImageReader(Protocol):
    """Reads the bytes of files named by their relative POSIX path."""

    def read(self, name: str) -> bytes: ...

    def read_head(self, name: str, size: int) -> bytes: ...

    def close(self) -> None: ...


class FolderReader:
    """Reads files below a root folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def read(self, name: str) -> bytes:
        try:
            return read_file(self.root / name)
        except READ_ERRORS as error:
            raise ImageDecodeError(
                display_name(FOLDER, self.root, name), describe_read_error(error)
            ) from error

    def read_head(self, name: str, size: int) -> bytes:
        """The first ``size`` bytes of file ``name`` (its header, for the image's size)."""
        with open(self.root / name, "rb") as file:
            return file.read(size)

    def close(self) -> None:
        """Nothing to release: each read opens and closes its own file."""


class ZipReader:
    """Reads members of a zip archive without extracting it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.archive = _open_zip(self.path)

    def read(self, name: str) -> bytes:
        try:
            return read_member(self.archive, name)
        except READ_ERRORS as error:
            # One damaged, encrypted, oddly compressed or inflating member must not stop the others.
            raise ImageDecodeError(display_name(ZIP, self.path, name), describe_read_error(error)) from error

    def read_head(self, name: str, size: int) -> bytes:
        """The first ``size`` bytes of member ``name``: only what is needed is inflated."""
        with self.archive.open(name) as member:
            return member.read(size)

    def close(self) -> None:
        self.archive.close()


def open_reader(kind: str, path: Path) -> ImageReader:
    """Open a reader of ``kind`` (``FOLDER`` or ``ZIP``) on ``path``."""
    if kind == FOLDER:
        return FolderReader(path)
    if kind == ZIP:
        return ZipReader(path)
    raise ValueError(f"kind must be '{FOLDER}' or '{ZIP}'. Received: kind={kind!r}")


def display_name(kind: str, path: str | Path, name: str) -> str:
    """How to name file ``name`` of a source in messages: a path for folders, member in zip for zips."""
    if kind == ZIP:
        return f"{name} in {path}"
    # Path() would drop the trailing slash that marks a skipped folder.
    return str(Path(path) / name) + ("/" if name.endswith("/") else "")


@dataclass
class Listing:
    """The files of a folder or zip, sorted by what loading does with them.

    Attributes:
        images: relative POSIX paths of the files with an image extension (which may still
            fail to decode), in listing order.
        skipped: non-image files and OS clutter (hidden and system files; a hidden or system
            folder is one entry ending in ``/``), with relative paths.
        digest: for folders, a digest of every path, size and modification time seen, so that
            any edit (also of a skipped file) changes the cache key; ``None`` for zips.
        empty_folders: folders holding no file and no folder, relative, ending in ``/``.
    """

    images: list[str]
    skipped: list[SkippedFile]
    digest: str | None = None
    empty_folders: list[str] = field(default_factory=list)  # holding nothing at all, ending in "/"


def list_folder(root: Path) -> Listing:
    """List every file below ``root`` (following links), without descending into clutter folders."""
    images: list[str] = []
    skipped: list[SkippedFile] = []
    stats: list[tuple[str, int, int]] = []
    empty_folders: list[str] = []
    for directory, subdirectories, files in os.walk(root, followlinks=True):
        relative_directory = Path(directory).relative_to(root).as_posix()
        prefix = "" if relative_directory == "." else relative_directory + "/"
        if prefix and not files and not subdirectories:
            empty_folders.append(prefix)
            stats.append((prefix, 0, 0))
        kept = []
        for name in sorted(subdirectories):
            reason = clutter_reason(name, is_folder=True)
            if reason is None:
                kept.append(name)
            else:
                skipped.append(SkippedFile(prefix + name + "/", reason))
                stats.append((prefix + name + "/", 0, 0))
        # Pruning in place stops os.walk from descending into clutter folders at all.
        subdirectories[:] = kept
        for name in sorted(files):
            relative = prefix + name
            reason = clutter_reason(name, is_folder=False)
            if reason is not None:
                skipped.append(SkippedFile(relative, reason))
                stats.append((relative, 0, 0))
                continue
            try:
                status = os.stat(os.path.join(directory, name))
            except OSError as error:
                # A dangling link or a file removed meanwhile: one file, not a reason to stop.
                skipped.append(SkippedFile(relative, f"cannot read ({error.strerror or error})"))
                stats.append((relative, -1, -1))
                continue
            stats.append((relative, status.st_size, status.st_mtime_ns))
            if is_image_name(name):
                images.append(relative)
            else:
                skipped.append(SkippedFile(relative, not_image_reason(name)))
    return Listing(images, skipped, hash_listing(stats), empty_folders)


def list_zip(path: Path) -> Listing:
    """List the members of the zip archive at ``path``; each clutter folder is one entry."""
    images: list[str] = []
    skipped: dict[str, SkippedFile] = {}
    with _open_zip(path) as archive:
        archive_names = archive.namelist()
        for info in archive.infolist():
            name = info.filename
            unsafe = unsafe_member_reason(name)
            clutter = path_clutter(name)
            if unsafe is not None:
                skipped.setdefault(name, SkippedFile(name, unsafe))
            elif clutter is not None:
                skipped.setdefault(clutter[0], SkippedFile(*clutter))
            elif info.is_dir():
                continue
            elif is_image_name(name):
                if is_encrypted(info):
                    # Refused whole, up front: each image failing alone would end as "no usable
                    # image" in a class, and an archive is encrypted as a whole, not by member.
                    raise DataError(f"{path}: {encrypted_reason(name)}")
                images.append(name)
            else:
                skipped.setdefault(name, SkippedFile(name, not_image_reason(name)))
    return Listing(images, list(skipped.values()), empty_folders=_empty_zip_folders(archive_names))


def _empty_zip_folders(names: list[str]) -> list[str]:
    """Folder entries (``dog/``) of an archive that no other member lies below."""
    folders = [name for name in names if name.endswith("/")]
    return [folder for folder in folders if not any(n != folder and n.startswith(folder) for n in names)]


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        raise DataError(
            f"{path} is not a readable zip archive ({error}); expected a .zip of an image "
            "folder laid out as <class>/<image>"
        ) from error
