"""Working out classes and splits from the paths of the images in a folder or zip.

Pure functions of the list of image paths, so folders and zips follow identical rules.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from cnnkit.data.decode import IMAGE_EXTENSIONS
from cnnkit.data.errors import DataError
from cnnkit.data.skipped import clutter_reason

_LAYOUT_HELP = "expected DIR/<class>/<image>, or DIR/train/<class>/<image> with DIR/test (or val)"


@dataclass
class FolderLayout:
    """Classes and the labelled image paths of each split.

    Attributes:
        class_names: sorted class folder names of the training split (label index -> name).
        train: ``(path, label)`` of each training image, sorted by label then path.
        test: same for the test split, or ``None`` without one.
        test_folder: the folder the test split came from ("test" or "val"), or ``None``.
        train_prefix: the path of the training class folders' parent ("" or ending in "/").
        test_prefix: the same for the test split, or ``None``.
    """

    class_names: list[str]
    train: list[tuple[str, int]]
    test: list[tuple[str, int]] | None
    test_folder: str | None = None
    train_prefix: str = ""
    test_prefix: str | None = None

    def unused(self, paths: list[str]) -> list[str]:
        """The ``paths`` in neither split: images beside the class folders or in other folders."""
        used = {path for path, _ in self.train}
        used.update(path for path, _ in self.test or ())
        return [path for path in paths if path not in used]


def resolve_layout(paths: list[str], source: str, other_paths: list[str] | None = None) -> FolderLayout:
    """Find the classes and splits of the images at ``paths`` (relative POSIX paths).

    A level holding a single folder and no images is descended into, unless that folder holds
    images itself (then it is the only class). A level with ``train/``
    and ``test/`` (or ``val/``) folders is split into those; otherwise each folder is a class.
    ``other_paths`` are the source's files skipped by type (other file types, hidden files): a
    folder among the class folders holding only such files is an error, a class without images.

    Raises:
        DataError: no images, or no class folders, a class folder without image files, or a
            test class unknown to training.
    """
    other_paths = other_paths or []
    if not paths:
        found = f"; found only other files, like {other_paths[0]}" if other_paths else ""
        raise DataError(
            f"{source} holds no images{found} ({_LAYOUT_HELP}; images are files ending in "
            f"{', '.join(IMAGE_EXTENSIONS)})"
        )
    prefix = ""
    while True:
        folders, loose_files = _children(paths, prefix)
        if loose_files or len(folders) != 1:
            break
        only = next(iter(folders))
        if _children(paths, prefix + only + "/")[1]:
            # The single folder holds images itself: it is the one class (fine for evaluation).
            break
        prefix += only + "/"
    if "train" in folders and ("test" in folders or "val" in folders):
        test_folder = "test" if "test" in folders else "val"
        train_prefix, test_prefix = prefix + "train/", prefix + test_folder + "/"
        class_names, train = _class_layout(paths, train_prefix, source, other_paths)
        test = _test_split(paths, test_prefix, class_names, source, other_paths)
        return FolderLayout(class_names, train, test, test_folder, train_prefix, test_prefix)
    class_names, train = _class_layout(paths, prefix, source, other_paths)
    return FolderLayout(class_names, train, None, train_prefix=prefix)


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


def _class_layout(
    paths: list[str], prefix: str, source: str, other_paths: list[str]
) -> tuple[list[str], list[tuple[str, int]]]:
    folders, loose_files = _children(paths, prefix)
    if not folders:
        location = f"{source}/{prefix}".rstrip("/")
        raise DataError(f"{location} holds images ({loose_files[0]}) but no class folders; {_LAYOUT_HELP}")
    other_folders, _ = _children(other_paths, prefix)
    # An OS clutter folder (__MACOSX/, .git/) beside the classes is no class: it was skipped.
    empty = sorted(
        name for name in other_folders if name not in folders and clutter_reason(name, is_folder=True) is None
    )
    if empty:
        raise DataError(
            f"Class folder {source}/{prefix}{empty[0]} holds no image files (only files like "
            f"{other_folders[empty[0]][0]}); add images of the class or remove the folder"
        )
    class_names = sorted(folders)
    labelled = [(path, label) for label, name in enumerate(class_names) for path in sorted(folders[name])]
    return class_names, labelled


def _test_split(
    paths: list[str], prefix: str, class_names: list[str], source: str, other_paths: list[str]
) -> list[tuple[str, int]]:
    test_names, test_images = _class_layout(paths, prefix, source, other_paths)
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
