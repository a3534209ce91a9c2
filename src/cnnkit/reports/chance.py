"""Did a model learn anything? Its accuracy against always answering the largest class."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

# How many standard errors of the largest class's share an accuracy must clear to count as
# learned: two (a one-sided test at about 2.3 %), so that luck on a small validation set is not
# taken for learning, and a run that did learn is rarely called a failure.
STANDARD_ERRORS = 2.0


def chance_verdict(accuracy: float, class_counts: Sequence[int]) -> dict[str, Any]:
    """Whether ``accuracy``, measured on images whose labels have ``class_counts``, is clearly above
    what always answering the largest class scores on them.

    Within ``STANDARD_ERRORS`` binomial standard errors of that share (and at least one image
    above it) is "within noise": ``learned`` is False.
    """
    total = int(sum(class_counts))
    if total <= 0:
        raise ValueError(
            f"class_counts must hold at least one image. Received: class_counts={list(class_counts)}"
        )
    largest = max(class_counts) / total
    margin = max(STANDARD_ERRORS * math.sqrt(largest * (1 - largest) / total), 1 / total)
    return {
        "learned": bool(accuracy > largest + margin),
        "accuracy": float(accuracy),
        "largest_class_share": largest,
        "noise_margin": margin,
        "images": total,
    }


def map_chance_verdict(
    mean_average_precision: float, positives: Sequence[int], images: int
) -> dict[str, Any]:
    """Multi-label: whether mAP on ``images`` images, whose labels have ``positives`` images each
    (labels without one left out), is clearly above what random scores reach. A label's expected
    average precision under a random ranking is its share of positive images; the margin is a
    rough binomial one on the mean share (``STANDARD_ERRORS`` standard errors, at least 1/images).
    """
    shares = [count / images for count in positives if count] if images > 0 else []
    if not shares:
        raise ValueError(f"positives must hold a labelled image. Received: positives={list(positives)}")
    chance = sum(shares) / len(shares)
    margin = max(STANDARD_ERRORS * math.sqrt(chance * (1 - chance) / images), 1 / images)
    return {
        "learned": bool(mean_average_precision > chance + margin),
        "metric": "map",
        "map": float(mean_average_precision),
        "chance_map": chance,
        "noise_margin": margin,
        "images": images,
    }


def describe_failure(verdict: dict[str, Any]) -> str:
    """The plain line for a model that learned nothing (``verdict`` with its ``split``)."""
    if verdict.get("metric") == "map":
        return (
            f"This model learned nothing: its best {verdict['split']} mAP ({verdict['map']:.4f}) is "
            f"within noise (±{verdict['noise_margin']:.4f}) of random scores' "
            f"({verdict['chance_map']:.4f}, each label's share of {verdict['images']} images). Do not "
            "use its checkpoints as a result; try more epochs, or check that labels.csv matches the images."
        )
    return (
        f"This model learned nothing: its best {verdict['split']} accuracy ({verdict['accuracy']:.4f}) "
        "is within noise "
        f"(±{verdict['noise_margin']:.4f}) of always answering the largest class "
        f"({verdict['largest_class_share']:.4f} of {verdict['images']} images). Do not use its checkpoints "
        "as a result; try more epochs, --recipe tutorial, or check that the labels match the images."
    )
