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
from cnnkit.data.skipped import SkippedFile

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


def read_label_table(text: str, source: str, image_paths: Sequence[str]) -> LabelTable:
    """Parse a ``labels.csv`` (its ``text``; ``source`` names it in messages) against the data's
    ``image_paths`` (relative POSIX paths)."""
    known = set(image_paths)
    rows: dict[str, list[str]] = {}
    skipped: list[SkippedFile] = []
    for number, row in _table_rows(text, source):
        path = _normal_path(row[0])
        where = f"{source} row {number}: {path or '(empty)'}"
        if path not in known:
            skipped.append(SkippedFile(where, "names no image of the data"))
        elif path in rows:
            skipped.append(SkippedFile(where, "a second row for the same image (the first is kept)"))
        else:
            cells = row[1:]
            rows[path] = list(
                dict.fromkeys(label for cell in cells for label in _SEPARATORS.split(cell) if label)
            )
    unlabelled = [path for path in image_paths if path not in rows]
    skipped += [SkippedFile(path, f"no row in {source}") for path in unlabelled]
    paths = [path for path in image_paths if path in rows]
    if not paths:
        raise DataError(
            f"{source} labels none of the data's {len(known)} images: its first column must "
            "name each image by its path below the data's root, e.g. photos/beach.jpg"
        )
    label_names = sorted({label for path in paths for label in rows[path]})
    if not label_names:
        raise DataError(f"{source} gives no labels: every row's labels are empty.")
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
