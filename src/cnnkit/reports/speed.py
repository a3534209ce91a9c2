"""How fast a model runs in each format: the bar chart ``cnnkit benchmark`` draws (matplotlib only)."""

from __future__ import annotations

import os
from typing import Any


def plot_throughput(path: str | os.PathLike, rows: list[dict[str, Any]], title: str = "") -> None:
    """Images a second, a bar a format, grouped by batch size (one panel each, its own scale:
    batch 1 and batch 64 differ by orders of magnitude). ``rows``: ``cnnkit benchmark``'s, the
    skipped formats left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [row for row in rows if not row.get("skipped")]
    sizes = sorted({row["batch_size"] for row in measured})
    figure, axes = plt.subplots(1, max(1, len(sizes)), figsize=(4.5 * max(1, len(sizes)), 3.6), squeeze=False)
    for axis, size in zip(axes[0], sizes, strict=False):
        chosen = [row for row in measured if row["batch_size"] == size]
        names = [row["format"] for row in chosen]
        rates = [row["images_per_second"] for row in chosen]
        bars = axis.barh(names, rates, color="#4878a8")
        axis.bar_label(bars, labels=[f"{rate:,.0f}" for rate in rates], padding=3, fontsize=8)
        axis.set_title(f"batch {size}")
        axis.set_xlabel("images / second")
        axis.invert_yaxis()
        axis.margins(x=0.25)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
