"""Listing and reading image files from a folder or straight out of a .zip archive.

Readers are opened by ``(kind, path)`` so that each decoding process can open its own handle:
a zip file handle shared across processes would interleave their seeks.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Protocol

from cnnkit.data.decode import is_image_name
from cnnkit.data.errors import DataError

FOLDER = "folder"
ZIP = "zip"


class ImageReader(Protocol):
    """Reads the bytes of files named by their relative POSIX path."""

    def read(self, name: str) -> bytes: ...

    def close(self) -> None: ...


def is_hidden(relative_path: str) -> bool:
    """Whether any component is hidden (dot files, macOS ``__MACOSX`` resource folders)."""
    return any(part.startswith(".") or part == "__MACOSX" for part in relative_path.split("/"))


class FolderReader:
    """Reads files below a root folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def read(self, name: str) -> bytes:
        try:
            return (self.root / name).read_bytes()
        except OSError as error:
            raise DataError(f"Cannot read {self.root / name} ({error})") from error

    def close(self) -> None:
        """Nothing to release: each read opens and closes its own file."""


class ZipReader:
    """Reads members of a zip archive without extracting it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.archive = _open_zip(self.path)

    def read(self, name: str) -> bytes:
        try:
            return self.archive.read(name)
        except (OSError, KeyError, zipfile.BadZipFile, EOFError) as error:
            raise DataError(f"Cannot read {name} from {self.path} ({error})") from error

    def close(self) -> None:
        self.archive.close()


def open_reader(kind: str, path: Path) -> ImageReader:
    """Open a reader of ``kind`` (``FOLDER`` or ``ZIP``) on ``path``."""
    if kind == FOLDER:
        return FolderReader(path)
    if kind == ZIP:
        return ZipReader(path)
    raise ValueError(f"kind must be '{FOLDER}' or '{ZIP}'. Received: kind={kind!r}")


def list_folder_images(root: Path) -> list[tuple[str, int, int]]:
    """Return ``(relative POSIX path, size, mtime_ns)`` of every visible image below ``root``."""
    entries = []
    for directory, subdirectories, files in os.walk(root, followlinks=True):
        # Pruning in place stops os.walk from descending into hidden folders at all.
        subdirectories[:] = [name for name in subdirectories if not is_hidden(name)]
        relative_directory = Path(directory).relative_to(root).as_posix()
        prefix = "" if relative_directory == "." else relative_directory + "/"
        for name in files:
            if is_image_name(name) and not is_hidden(name):
                status = os.stat(os.path.join(directory, name))
                entries.append((prefix + name, status.st_size, status.st_mtime_ns))
    return entries


def list_zip_images(path: Path) -> list[str]:
    """Return the names of every visible image member of the zip archive at ``path``."""
    with _open_zip(path) as archive:
        return [
            info.filename
            for info in archive.infolist()
            if not info.is_dir() and is_image_name(info.filename) and not is_hidden(info.filename)
        ]


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        raise DataError(
            f"{path} is not a readable zip archive ({error}); expected a .zip of an image "
            "folder laid out as <class>/<image>"
        ) from error
