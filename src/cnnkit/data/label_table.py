"""Multi-label data's labels: a ``labels.csv`` table beside the images (issue 21).

One row an image, ``image,labels``: the image's path relative to the data's root (folder or zip),
then its labels separated by spaces, ``;`` or ``|``; an empty cell is an image with none of the
labels. A first row ``image,labels`` is a header. Rows naming no image of the data, second rows
for an image and images without a row are skipped with a reason (as unreadable images are), so
that ``skipped.txt`` lists them; a table that leaves nothing to train on is a one-line error.
Torch-free: the labels come back as a numpy multi-hot matrix.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cnnkit.data.errors import DataError
from cnnkit.data.layout import VALIDATION_FOLDERS, FolderLayout
from cnnkit.data.skipped import LABEL_TABLE_PREFIX, SkippedFile

LABEL_TABLE = "labels.csv"
_SEPARATORS = re.compile(r"[\s;|]+")
_HEADERS = ("image", "path", "file", "filename")


@dataclass
class LabelTable:
    """The labels of a multi-label data set.

    Attributes:
        label_names: every label the table names, sorted (label index -> name).
        paths: the images with a row, in the data's order (the order of ``image_paths`` given).
        labels: uint8 ``(len(paths), len(label_names))``: 1 where the image has the label.
        skipped: rows and images left out, with the reason.
    """

    label_names: list[str]
    paths: list[str]
    labels: np.ndarray
    skipped: list[SkippedFile] = field(default_factory=list)

    def label_counts(self) -> dict[str, int]:
        """Images a label."""
        return dict(zip(self.label_names, self.labels.sum(0).tolist(), strict=True))


def read_label_table(
    text: str, source: str, image_paths: Sequence[str], displayed: str | None = None
) -> LabelTable:
    """Parse a ``labels.csv`` (its ``text``; ``source`` names it in skipped rows' paths and reasons,
    ``displayed`` (default ``source``) in errors) against the data's
    ``image_paths`` (relative POSIX paths)."""
    known = set(image_paths)
    displayed = displayed or source
    rows: dict[str, list[str]] = {}
    skipped: list[SkippedFile] = []
    for number, row in _table_rows(text, displayed):
        path = _normal_path(row[0])
        where = f"{source} row {number}: {path or '(empty)'}"
        if path not in known:
            skipped.append(SkippedFile(where, f"{LABEL_TABLE_PREFIX}names no image of the data"))
        elif path in rows:
            skipped.append(
                SkippedFile(where, f"{LABEL_TABLE_PREFIX}a second row for the same image (the first is kept)")
            )
        else:
            cells = row[1:]
            rows[path] = list(
                dict.fromkeys(label for cell in cells for label in _SEPARATORS.split(cell) if label)
            )
    unlabelled = [path for path in image_paths if path not in rows]
    skipped += [SkippedFile(path, f"{LABEL_TABLE_PREFIX}no row in {source}") for path in unlabelled]
    paths = [path for path in image_paths if path in rows]
    if not paths:
        raise DataError(
            f"{displayed} labels none of the data's {len(known)} images: its first column must "
            "name each image by its path below the data's root, e.g. photos/beach.jpg"
        )
    label_names = sorted({label for path in paths for label in rows[path]})
    if not label_names:
        raise DataError(f"{displayed} gives no labels: every row's labels are empty.")
    index = {name: position for position, name in enumerate(label_names)}
    labels = np.zeros((len(paths), len(label_names)), dtype=np.uint8)
    for position, path in enumerate(paths):
        labels[position, [index[label] for label in rows[path]]] = 1
    return LabelTable(label_names, paths, labels, skipped)


def _table_rows(text: str, source: str) -> list[tuple[int, list[str]]]:
    """(row number, cells) of each non-empty row, the header left out."""
    rows = [
        (number, [cell.strip() for cell in row])
        for number, row in enumerate(csv.reader(io.StringIO(text)), start=1)
        if any(cell.strip() for cell in row)
    ]
    if rows and rows[0][1][0].lower() in _HEADERS:
        rows = rows[1:]
    if not rows:
        raise DataError(f"{source} has no rows: it needs one row an image, image,labels.")
    return rows


def _normal_path(text: str) -> str:
    """A path as the data lists it: forward slashes, no leading ``./``."""
    path = text.replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    return path


def find_label_table(other_files: Sequence[str]) -> str | None:
    """The ``labels.csv`` among a source's non-image files (relative paths): the shallowest one,
    e.g. at the root or in the one folder a zip holds; None without one.

    Raises:
        DataError: two tables at the same depth (which one labels the images is unclear).
    """
    tables = [path for path in other_files if path.rsplit("/", 1)[-1].lower() == LABEL_TABLE]
    if not tables:
        return None
    depth = min(path.count("/") for path in tables)
    shallowest = sorted(path for path in tables if path.count("/") == depth)
    if len(shallowest) > 1:
        raise DataError(
            f"Found {len(shallowest)} label tables ({', '.join(shallowest[:3])}): keep one {LABEL_TABLE} "
            "at the data's root, naming every image by its path below it"
        )
    return shallowest[0]


def table_layout(
    image_paths: Sequence[str], table_path: str, text: str, source: str
) -> tuple[FolderLayout, list[SkippedFile]]:
    """The multi-label layout of a source whose ``labels.csv`` (at relative ``table_path``, its
    ``text``; ``source`` names it in errors) labels the images below its folder. Beside a
    ``train/`` folder, the table's images under ``val/`` (``valid/``, ``validation/``) and
    ``test/`` are those splits, as in a class-folder layout. Returns the layout (each image's label
    a tuple of 0 and 1, one a label) and what was skipped, with paths relative to the source."""
    folder = table_path[: table_path.rfind("/") + 1]  # "" or "some/folder/"
    below = [path[len(folder) :] for path in image_paths if path.startswith(folder)]
    # Skipped rows are named by the table's relative path: the source's name is put before it.
    table = read_label_table(text, table_path or source, below, displayed=source)
    skipped = [
        SkippedFile(folder + file.path if file.path in below else file.path, file.reason)
        for file in table.skipped
    ]
    skipped += [
        SkippedFile(path, f"{LABEL_TABLE_PREFIX}outside the folder of {table_path}")
        for path in image_paths
        if not path.startswith(folder)
    ]
    rows = {
        path: tuple(int(value) for value in row) for path, row in zip(table.paths, table.labels, strict=True)
    }
    tops = {path.split("/", 1)[0] for path in table.paths if "/" in path}
    validation_folder = next((name for name in VALIDATION_FOLDERS if name in tops), None)
    if "train" not in tops or ("test" not in tops and validation_folder is None):
        labelled = [(folder + path, rows[path]) for path in table.paths]
        return FolderLayout(table.label_names, labelled, None, train_prefix=folder), skipped

    def split(name: str | None) -> list[tuple[str, tuple[int, ...]]] | None:
        if name is None or name not in tops:
            return None
        return [(folder + path, row) for path, row in rows.items() if path.startswith(name + "/")]

    layout = FolderLayout(table.label_names, split("train") or [], split("test"), folder + "train/")
    layout.validation = split(validation_folder)
    layout.test_prefix = folder + "test/" if layout.test is not None else None
    layout.validation_prefix = folder + f"{validation_folder}/" if layout.validation is not None else None
    skipped += [
        SkippedFile(folder + path, f"{LABEL_TABLE_PREFIX}outside the train, validation and test folders")
        for path in table.paths
        if path.split("/", 1)[0] not in {"train", "test", validation_folder}
    ]
    return layout, skipped
