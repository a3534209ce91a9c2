"""Working out classes and splits from the paths of the images in a folder or zip.

Pure functions of the list of image paths, so folders and zips follow identical rules.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from cnnkit.data.decode import IMAGE_EXTENSIONS
from cnnkit.data.errors import DataError
from cnnkit.data.skipped import clutter_reason

_LAYOUT_HELP = "expected DIR/<class>/<image>, or DIR/train/<class>/<image> with DIR/val and/or DIR/test"
# A validation folder's accepted names, in order of preference.
VALIDATION_FOLDERS = ("val", "valid", "validation")


@dataclass
class FolderLayout:
    """Classes and the labelled image paths of each split.

    Attributes:
        class_names: sorted class folder names of the training split (label index -> name).
        train: ``(path, label)`` of each training image, sorted by label then path; for a
            multi-label table, the label is a tuple of 0 and 1 (one a label), in the table's order.
        test: same for the test split (a ``test/`` folder), or ``None`` without one.
        validation: same for the validation split (``val/``, ``valid/`` or ``validation/``), or ``None``.
        train_prefix: the path of the training class folders' parent ("" or ending in "/").
        test_prefix, validation_prefix: the same for those splits, or ``None``.
    """

    class_names: list[str]
    train: list[tuple[str, int]]
    test: list[tuple[str, int]] | None
    train_prefix: str = ""
    test_prefix: str | None = None
    validation: list[tuple[str, int]] | None = None
    validation_prefix: str | None = None

    @property
    def multi_label(self) -> bool:
        """Labels from a table (``data.label_table``): each a tuple of 0 and 1, one a label."""
        return bool(self.train) and isinstance(self.train[0][1], tuple)

    def unused(self, paths: list[str]) -> list[str]:
        """The ``paths`` in no split: images beside the class folders or in other folders."""
        used = {path for path, _ in self.train}
        used.update(path for path, _ in self.test or ())
        used.update(path for path, _ in self.validation or ())
        return [path for path in paths if path not in used]

    def prefixes(self) -> dict[str, str]:
        """Each split's folder (its class folders' parent), by split name."""
        named = {"train": self.train_prefix, "validation": self.validation_prefix, "test": self.test_prefix}
        return {split: prefix for split, prefix in named.items() if prefix is not None}


def resolve_layout(paths: list[str], source: str, other_paths: list[str] | None = None) -> FolderLayout:
    """Find the classes and splits of the images at ``paths`` (relative POSIX paths).

    A level holding a single folder and no images is descended into, unless that folder holds
    images itself (then it is the only class). A level with a ``train/`` folder beside ``test/``
    and/or a validation folder (``val/``, ``valid/`` or ``validation/``) is split into those;
    otherwise each folder is a class.
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
    validation_folder = next((name for name in VALIDATION_FOLDERS if name in folders), None)
    if "train" in folders and ("test" in folders or validation_folder is not None):
        train_prefix = prefix + "train/"
        class_names, train = _class_layout(paths, train_prefix, source, other_paths)
        layout = FolderLayout(class_names, train, None, train_prefix)
        if "test" in folders:
            layout.test_prefix = prefix + "test/"
            layout.test = _held_out_split(paths, layout.test_prefix, class_names, source, other_paths)
        if validation_folder is not None:
            layout.validation_prefix = prefix + validation_folder + "/"
            layout.validation = _held_out_split(
                paths, layout.validation_prefix, class_names, source, other_paths
            )
        return layout
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


def _held_out_split(
    paths: list[str], prefix: str, class_names: list[str], source: str, other_paths: list[str]
) -> list[tuple[str, int]]:
    test_names, test_images = _class_layout(paths, prefix, source, other_paths)
    index = {name: label for label, name in enumerate(class_names)}
    unknown = [name for name in test_names if name not in index]
    if unknown:
        raise DataError(
            f"{source}/{prefix.rstrip('/')} has class folder '{unknown[0]}' that train/ lacks; "
            f"its classes must be among the training classes: {', '.join(class_names)}"
        )
    # Held-out labels follow the training class order, matched by folder name.
    return sorted(
        ((path, index[test_names[label]]) for path, label in test_images),
        key=lambda item: (item[1], item[0]),
    )
