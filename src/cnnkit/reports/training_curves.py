"""Training history on disk: ``metrics.csv`` (one row an epoch) and ``curves.png``."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from cnnkit.fileio import atomic_write_bytes, atomic_write_text


def write_metrics_csv(path: str | os.PathLike, rows: list[dict[str, float]]) -> None:
    """All epochs so far, rewritten atomically each time (a crash never leaves half a row)."""
    if not rows:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _format(value) for key, value in row.items()})
    atomic_write_text(path, buffer.getvalue())


def read_metrics_csv(path: str | os.PathLike) -> list[dict[str, float]]:
    with open(path, newline="", encoding="utf-8") as file:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(file)]


def plot_curves(path: str | os.PathLike, rows: list[dict[str, float]], title: str = "") -> None:
    """Loss and accuracy (multi-label: mAP), train vs validation: the picture that shows overfitting."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [int(row["epoch"]) for row in rows]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    score = "accuracy" if "accuracy" in rows[0] else "map"
    for axis, metric in zip(axes, ("loss", score), strict=True):
        axis.plot(epochs, [row[metric] for row in rows], "o-", label=f"train {metric}")
        if "val_" + metric in rows[0]:
            axis.plot(epochs, [row["val_" + metric] for row in rows], "o-", label=f"validation {metric}")
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    if title:
        figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    atomic_write_bytes(Path(path), buffer.getvalue())


def _format(value: float) -> str:
    if isinstance(value, int) or (float(value).is_integer() and abs(value) < 1e9):
        return str(int(value))
    return f"{value:.6g}"
