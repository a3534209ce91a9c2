"""How imbalanced a data set's classes are, said where it matters (issue 20)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Above this ratio of the largest class to the smallest, the data is imbalanced: loading names the
# smallest classes and the settings that counter it, epoch lines and reports add balanced accuracy
# and macro-F1.
IMBALANCE_RATIO = 3.0


def class_balance_summary(labels: Sequence[int] | Any, class_names: Sequence[str]) -> dict[str, Any]:
    """``{"class_counts": {name: count}, "imbalance_ratio": largest / smallest}`` of integer
    ``labels`` (a sequence, numpy array or tensor; or multi-hot rows, one column a label, whose
    counts are images a label); the ratio is None when a class has no image."""
    shape = getattr(labels, "shape", ())
    if len(shape) == 2:
        counts = [int(count) for count in (labels > 0).sum(0).tolist()]
        return _summary(counts, class_names)
    counts = [0] * len(class_names)
    for label in (int(value) for value in labels):
        if not 0 <= label < len(class_names):
            raise ValueError(f"Labels must be in [0, {len(class_names)}). Received: label={label}")
        counts[label] += 1
    return _summary(counts, class_names)


def _summary(counts: list[int], class_names: Sequence[str]) -> dict[str, Any]:
    smallest, largest = min(counts), max(counts)
    return {
        "class_counts": dict(zip(class_names, counts, strict=True)),
        "imbalance_ratio": round(largest / smallest, 2) if smallest else None,
    }


# What the line suggests when the caller names nothing it does about the imbalance.
SETTINGS = "To counter it: --set class_weights=balanced, logit_adjustment=1 or sampler=balanced."
MULTI_LABEL_SETTINGS = "To weigh rare labels up: --set class_weights=balanced (positive weights)."


def imbalance_note(summary: dict[str, Any], remedy: str = SETTINGS, shown: int = 3) -> str | None:
    """The line for data whose imbalance ratio passes ``IMBALANCE_RATIO`` (None below it), ending
    with ``remedy``: what is done about it, or the settings that counter it."""
    ratio = summary["imbalance_ratio"]
    if ratio is not None and ratio <= IMBALANCE_RATIO:
        return None
    counts = summary["class_counts"]
    smallest = sorted(counts, key=lambda name: counts[name])[:shown]
    named = ", ".join(f"{name} ({counts[name]:,})" for name in smallest)
    largest = max(counts, key=lambda name: counts[name])
    ratio_text = f"{ratio:g}" if ratio is not None else "unbounded: a class has no training image"
    return (
        f"Classes are imbalanced: {largest} has {counts[largest]:,} training images, the smallest "
        f"{named}; ratio {ratio_text}. {remedy}"
    )
