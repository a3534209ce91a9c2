"""Pictures of an evaluation: the confusion matrix (counts and row-normalised) and the errors
(each beside its Grad-CAM overlay when given one)."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit.fileio import atomic_write_bytes
from cnnkit.reports.classification import Misclassification

# Above this many classes the cells are too small for numbers; the colours still read.
CELL_TEXT_MAX_CLASSES = 30
GALLERY_COLUMNS = 5
# White pixels between an image and its overlay in one panel, as a share of the image's width.
PAIR_GAP = 0.06


def plot_confusion_matrix(
    path: str | os.PathLike,
    matrix: Any,
    class_names: Sequence[str],
    normalize: bool = False,
    title: str = "",
) -> None:
    """Rows = true class, columns = predicted; ``normalize`` divides each row by its total (recall).

    The figure grows with the class count and the fonts shrink, so 2 to ~100 classes stay readable;
    a row of a class absent from the data stays 0 when normalised (named ``(n=0)`` on the axis).
    """
    plt = _pyplot()
    counts = np.asarray(matrix, dtype=np.int64)
    class_count = len(class_names)
    if counts.shape != (class_count, class_count):
        raise ValueError(
            f"matrix must be ({class_count}, {class_count}) for {class_count} class names. "
            f"Received: shape={counts.shape}"
        )
    supports = counts.sum(axis=1)
    values = counts / np.maximum(supports, 1)[:, None] if normalize else counts
    side = float(np.clip(2.5 + 0.28 * class_count, 5.0, 30.0))
    label_size = float(np.clip(220 / class_count, 7.0, 10.0))  # a cell stays >= ~19 pt
    figure, axis = plt.subplots(figsize=(side + 1.2, side), constrained_layout=True)
    image = axis.imshow(
        values, cmap="Blues", vmin=0, vmax=1 if normalize else max(1, int(counts.max())), aspect="equal"
    )
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.02, label="recall" if normalize else "images")
    row_labels = list(class_names)
    if normalize:  # the row totals are gone from the picture: keep them on the axis
        row_labels = [f"{name} (n={n})" for name, n in zip(class_names, supports, strict=True)]
    _label_axes(axis, list(class_names), row_labels, label_size)
    if class_count <= CELL_TEXT_MAX_CLASSES:
        _write_cells(axis, values, normalize, float(np.clip(160 / class_count, 5.0, 11.0)))
    default_title = "Confusion matrix, rows normalised (recall)" if normalize else "Confusion matrix"
    axis.set_title(title or default_title, fontsize=12)
    _save(figure, path)


def _label_axes(axis, column_labels: list[str], row_labels: list[str], font_size: float) -> None:
    ticks = np.arange(len(column_labels))
    few = len(column_labels) <= 10
    axis.set_xticks(ticks, labels=column_labels, fontsize=font_size, rotation=45 if few else 90)
    axis.set_yticks(ticks, labels=row_labels, fontsize=font_size)
    if few:  # slanted names end under their column
        for label in axis.get_xticklabels():
            label.set_horizontalalignment("right")
            label.set_rotation_mode("anchor")
    axis.set_xlabel("predicted class", fontsize=11)
    axis.set_ylabel("true class", fontsize=11)


def _write_cells(axis, values: np.ndarray, normalize: bool, font_size: float) -> None:
    # White text on dark cells, black on light: readable whatever the value.
    threshold = (1.0 if normalize else max(1, values.max())) / 2
    for row, column in np.ndindex(values.shape):
        value = values[row, column]
        text = f"{value:.2f}" if normalize else str(int(value))
        if normalize and value == 0:
            text = "0"  # fewer digits keep a sparse matrix quiet
        axis.text(
            column,
            row,
            text,
            ha="center",
            va="center",
            fontsize=font_size,
            color="white" if value > threshold else "black",
        )


def plot_misclassified(
    path: str | os.PathLike,
    images: Any,
    errors: Sequence[Misclassification],
    total_errors: int | None = None,
    title: str = "",
    overlays: Mapping[int, np.ndarray] | None = None,
) -> None:
    """A gallery of ``errors`` in the given order (most confident first), each panel titled with
    the true class, the predicted class and its probability, and the file name when known.

    ``images`` is indexable by ``Misclassification.index`` and yields uint8 ``(H, W, 3)`` pixels.
    ``overlays``: Grad-CAM overlays (uint8 ``(h, w, 3)``) by ``Misclassification.index``, where
    the model saw its wrong class; a panel with one shows the image's centre ``h x w`` (what the
    network saw) and the overlay side by side, so the two line up.
    """
    total = len(errors) if total_errors is None else total_errors
    if not errors:
        save_empty_gallery(path, "No misclassified images")
        return
    overlays = overlays or {}
    paired = any(error.index in overlays for error in errors)
    figure, axes = gallery_figure(len(errors), 4.2 if paired else 2.3, 2.7)
    for axis, error in zip(axes, errors, strict=False):
        picture = np.asarray(images[error.index])
        if error.index in overlays:
            picture = side_by_side(picture, np.asarray(overlays[error.index]))
        axis.imshow(picture, interpolation="nearest")
        lines = [f"true: {error.true_class}", f"pred: {error.predicted_class} ({error.probability:.2f})"]
        lines.append(_shorten(error.name) if error.name else f"#{error.index}")
        axis.set_title("\n".join(lines), fontsize=8)
    heading = title or "Most confident errors"
    explained = "; right: where the model saw the predicted class (Grad-CAM)" if paired else ""
    figure.suptitle(f"{heading}: {len(errors)} of {total}, highest predicted probability first{explained}")
    _save(figure, path)


def side_by_side(image: np.ndarray, overlay: np.ndarray) -> np.ndarray:
    """``image``'s centre, the overlay's size (the crop the network saw), a white gap, then
    ``overlay``: one uint8 picture. An image smaller than the overlay is shown whole, padded."""
    height, width = overlay.shape[:2]
    top, left = max(0, (image.shape[0] - height) // 2), max(0, (image.shape[1] - width) // 2)
    crop = np.full_like(overlay, 255)
    part = image[top : top + height, left : left + width]
    crop[: part.shape[0], : part.shape[1]] = part
    gap = np.full((height, max(1, round(width * PAIR_GAP)), 3), 255, dtype=np.uint8)
    return np.concatenate([crop, gap, overlay.astype(np.uint8)], axis=1)


def gallery_figure(count: int, panel_width: float, panel_height: float) -> tuple[Any, list[Any]]:
    """A figure of ``count`` image panels, ``GALLERY_COLUMNS`` a row, their axes hidden."""
    columns = min(GALLERY_COLUMNS, count)
    rows = math.ceil(count / columns)
    figure, axes = _pyplot().subplots(
        rows,
        columns,
        figsize=(panel_width * columns, panel_height * rows),
        squeeze=False,
        constrained_layout=True,
    )
    for axis in axes.flat:
        axis.axis("off")
    return figure, list(axes.flat)


def save_empty_gallery(path: str | os.PathLike, message: str) -> None:
    """A small picture saying there was nothing to show."""
    figure, axis = _pyplot().subplots(figsize=(4, 1.5), constrained_layout=True)
    axis.axis("off")
    axis.text(0.5, 0.5, message, ha="center", va="center", fontsize=12)
    _save(figure, path)


def _shorten(name: str, width: int = 28) -> str:
    # Keep the end: the file name says more than the folders above it.
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: str | os.PathLike) -> None:
    plt = _pyplot()
    buffer = io.BytesIO()
    # "tight" grows the canvas to fit long class names rather than cutting labels off.
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight", pad_inches=0.2)
    plt.close(figure)
    atomic_write_bytes(Path(path), buffer.getvalue())
