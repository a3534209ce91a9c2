"""Which images the paths a user gives name (files, folders, globs, .zip archives), and their bytes.

A path that names no image is not an exception but an item carrying its error, so that one
mistyped path among many still lets the others be predicted.
"""

from __future__ import annotations

import glob
import os
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass

# From the torch-free submodule: predicting with an ONNX model must not import torch.
from cnnkit.data.bounded_read import read_file, read_member
from cnnkit.data.decode import IMAGE_EXTENSIONS, is_image_name

PathArgument = str | os.PathLike
_WILDCARDS = frozenset("*?[")
_SUPPORTED = f"supported extensions: {', '.join(IMAGE_EXTENSIONS)}"


@dataclass(frozen=True)
class InputItem:
    """One image to predict, or an input that yields none.

    Attributes:
        path: how results name it: the file's path as given, or ``archive.zip/member/name.jpg``.
        file: the image file to read, or the .zip archive holding ``member``.
        member: the image's name inside the archive ``file``; ``None`` for a plain file.
        error: why there is no image to read (a missing path, a folder without images, ...).
    """

    path: str
    file: str = ""
    member: str | None = None
    error: str | None = None


def expand_inputs(paths: Iterable[PathArgument] | PathArgument) -> list[InputItem]:
    """Every image that ``paths`` name, in the order given, each once.

    A path is an image file; a folder (searched recursively, images by extension, hidden files
    and ``__MACOSX`` skipped); a .zip archive (its image members, named ``archive.zip/member``);
    a member or folder inside one (``archive.zip/cats/1.jpg``, as results name them); or, when no
    such file exists, a glob pattern (``*``, ``?``, ``[...]``, ``**`` for any depth), expanded
    here because Windows shells and quoted arguments leave patterns alone. Folders, archives and
    patterns are sorted within. A path that yields no image becomes an item with ``error`` set.
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    items = []
    seen: set[tuple[str, str | None]] = set()
    for path in paths:
        for item in _expand_path(os.fspath(path)):
            key = _identity(item)
            if key not in seen:
                seen.add(key)
                items.append(item)
    return items


def _identity(item: InputItem) -> tuple[str, str | None]:
    # The same file reached twice (a folder, then a glob inside it) is predicted once.
    if item.error is not None:
        return item.path, None
    return os.path.normcase(os.path.abspath(item.file)), item.member


def _expand_path(path: str) -> list[InputItem]:
    if os.path.isdir(path):
        return _folder_items(path) or [InputItem(path, error=f"no images in this folder ({_SUPPORTED})")]
    if os.path.isfile(path):
        return _zip_items(path, "") if _is_zip_name(path) else [_file_item(path, path)]
    archive, member = _split_zip_path(path)
    if archive is not None:
        return _zip_items(archive, member)
    if _WILDCARDS & set(path):
        return _glob_items(path)
    return [InputItem(path, error="no such file or folder")]


def _file_item(path: str, file: str, member: str | None = None) -> InputItem:
    # Named directly but not an image by its extension: say so rather than skip it silently.
    if not is_image_name(path):
        return InputItem(path, error=f"not an image file ({_SUPPORTED})")
    return InputItem(path, file, member)


def _folder_items(folder: str) -> list[InputItem]:
    files = []
    visited = set()
    for directory, subdirectories, names in os.walk(folder, followlinks=True):
        # A link back up the tree would otherwise make the walk endless.
        real = os.path.realpath(directory)
        if real in visited:
            subdirectories[:] = []
            continue
        visited.add(real)
        subdirectories[:] = [name for name in subdirectories if not _is_hidden(name)]
        files += [
            os.path.join(directory, name) for name in names if is_image_name(name) and not _is_hidden(name)
        ]
    return [InputItem(file, file) for file in sorted(files, key=_path_key)]


def _zip_items(archive: str, inside: str) -> list[InputItem]:
    shown = f"{archive}/{inside}" if inside else archive
    try:
        with zipfile.ZipFile(archive) as opened:
            members = [info.filename for info in opened.infolist() if not info.is_dir()]
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        return [InputItem(shown, error=f"not a readable zip archive ({error})")]
    if inside in members:
        return [_file_item(shown, archive, inside)]
    prefix = inside.rstrip("/") + "/" if inside else ""
    images = [
        member
        for member in members
        if member.startswith(prefix) and is_image_name(member) and not any(map(_is_hidden, member.split("/")))
    ]
    if not images:
        where = "at this path in the archive" if inside else "in this archive"
        return [InputItem(shown, error=f"no images {where} ({_SUPPORTED})")]
    return [InputItem(f"{archive}/{member}", archive, member) for member in sorted(images, key=_path_key)]


def _glob_items(pattern: str) -> list[InputItem]:
    items = []
    for match in sorted(glob.glob(pattern, recursive=True), key=_path_key):
        if "__MACOSX" in _path_key(match):  # glob already skips dot files, unless the pattern names them
            continue
        if os.path.isdir(match):
            items += _folder_items(match)
        elif _is_zip_name(match):
            items += _zip_items(match, "")
        elif is_image_name(match):  # a pattern may well match other files: only images count
            items.append(InputItem(match, match))
    return items or [InputItem(pattern, error="no images match this pattern")]


def _split_zip_path(path: str) -> tuple[str | None, str]:
    """``("a/b.zip", "cats/1.jpg")`` for ``a/b.zip/cats/1.jpg`` when ``a/b.zip`` is a file."""
    parts = path.replace(os.sep, "/").split("/")
    for end in range(1, len(parts)):
        archive = "/".join(parts[:end])
        if _is_zip_name(archive) and os.path.isfile(archive):
            return archive, "/".join(parts[end:])
    return None, ""


def _is_zip_name(path: str) -> bool:
    return path.lower().endswith(".zip")


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _path_key(path: str) -> list[str]:
    # By component, so a folder's files stay together however their names compare to '/'.
    return path.replace(os.sep, "/").split("/")


class ItemReader:
    """Reads the bytes of items, keeping the last zip archive open: its members come in a row."""

    def __init__(self) -> None:
        self.archive_path: str | None = None
        self.archive: zipfile.ZipFile | None = None

    def read(self, item: InputItem) -> bytes:
        """The file's content, capped (``bounded_read``): raises one of ``bounded_read.READ_ERRORS``."""
        if item.error is not None:
            raise ValueError(f"{item.path} has no image to read: {item.error}")
        if item.member is None:
            return read_file(item.file)
        if item.file != self.archive_path or self.archive is None:
            self.close()
            self.archive = zipfile.ZipFile(item.file)
            self.archive_path = item.file
        return read_member(self.archive, item.member)

    def close(self) -> None:
        if self.archive is not None:
            self.archive.close()
        self.archive_path, self.archive = None, None

    def __enter__(self) -> ItemReader:
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()
