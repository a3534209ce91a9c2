"""Working out classes and splits from the paths of the images in a folder or zip.

Pure functions of the list of image paths, so folders and zips follow identical rules.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from cnnkit.data.errors import DataError

_LAYOUT_HELP = "expected DIR/<class>/<image>, or DIR/train/<class>/<image> with DIR/test (or val)"


@dataclass
class FolderLayout:
    """Classes and the labelled image paths of each split.

    Attributes:
        class_names: sorted class folder names of the training split (label index -> name).
        train: ``(path, label)`` of each training image, sorted by label then path.
        test: same for the test split, or ``None`` without one.
        test_folder: the folder the test split came from ("test" or "val"), or ``None``.
    """

    class_names: list[str]
    train: list[tuple[str, int]]
    test: list[tuple[str, int]] | None
    test_folder: str | None = None


def resolve_layout(paths: list[str], source: str) -> FolderLayout:
    """Find the classes and splits of the images at ``paths`` (relative POSIX paths).

    A level holding a single folder and no images is descended into. A level with ``train/``
    and ``test/`` (or ``val/``) folders is split into those; otherwise each folder is a class.

    Raises:
        DataError: no images, or no class folders, or a test class unknown to training.
    """
    if not paths:
        raise DataError(f"{source} holds no images ({_LAYOUT_HELP}; image types by extension)")
    prefix = ""
    while True:
        folders, loose_files = _children(paths, prefix)
        if loose_files or len(folders) != 1:
            break
        prefix += next(iter(folders)) + "/"
    if "train" in folders and ("test" in folders or "val" in folders):
        test_folder = "test" if "test" in folders else "val"
        class_names, train = _class_layout(paths, prefix + "train/", source)
        test = _test_split(paths, prefix + test_folder + "/", class_names, source)
        return FolderLayout(class_names, train, test, test_folder)
    class_names, train = _class_layout(paths, prefix, source)
    return FolderLayout(class_names, train, None)


def _children(paths: list[str], prefix: str) -> tuple[dict[str, list[str]], list[str]]:
    """Group the paths below ``prefix`` by their first folder; also return loose files there."""
    folders: dict[str, list[str]] = defaultdict(list)
    loose_files = []
    for path in paths:
        if not path.startswith(prefix):
            continue
        head, separator, _ = path[len(prefix) :].partition("/")
        if separator:
            folders[head].append(path)
        else:
            loose_files.append(path)
    return folders, loose_files


def _class_layout(paths: list[str], prefix: str, source: str) -> tuple[list[str], list[tuple[str, int]]]:
    folders, loose_files = _children(paths, prefix)
    if not folders:
        location = f"{source}/{prefix}".rstrip("/")
        raise DataError(f"{location} holds images ({loose_files[0]}) but no class folders; {_LAYOUT_HELP}")
    class_names = sorted(folders)
    labelled = [(path, label) for label, name in enumerate(class_names) for path in sorted(folders[name])]
    return class_names, labelled


def _test_split(paths: list[str], prefix: str, class_names: list[str], source: str) -> list[tuple[str, int]]:
    test_names, test_images = _class_layout(paths, prefix, source)
    index = {name: label for label, name in enumerate(class_names)}
    unknown = [name for name in test_names if name not in index]
    if unknown:
        raise DataError(
            f"{source}/{prefix.rstrip('/')} has class folder '{unknown[0]}' that train/ lacks; "
            f"test classes must be among the training classes: {', '.join(class_names)}"
        )
    # Test labels follow the training class order, matched by folder name.
    return sorted(
        ((path, index[test_names[label]]) for path, label in test_images),
        key=lambda item: (item[1], item[0]),
    )
