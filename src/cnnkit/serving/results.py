"""A prediction request's answers: each upload's top classes or label set, or its error.

What ``POST /v1/predict`` and ``POST /v1/explain`` answer with, from the probabilities the model
gave; the task (``cnnkit.tasks``) ranks and decides, never this module.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cnnkit.serving.uploads import Upload
from cnnkit.tasks import SINGLE_LABEL


def rank_results(
    uploads: list[Upload],
    outcomes: list[np.ndarray | str],
    class_names: list[str],
    top_k: int,
    task: Any = SINGLE_LABEL,
    thresholds: Any = None,
    min_confidence: float | None = None,
) -> list[dict[str, Any]]:
    """One result dict per upload (see ``schemas.ImageResult``) from its probabilities or error:
    its ``top_k`` classes (and, given ``min_confidence``, whether it is ``uncertain``), or (a
    multi-label ``task``) its label set at ``thresholds`` (None: 0.5 each) and every label's
    probability."""
    rows = [outcome for outcome in outcomes if not isinstance(outcome, str)]
    found: list[dict[str, Any]] = []
    if rows:
        probabilities = np.stack(rows)
        found = (
            _label_sets(probabilities, class_names, task, thresholds)
            if task.multi_label
            else _top_classes(probabilities, class_names, task, top_k, min_confidence)
        )
    results = []
    next_found = iter(found)
    for upload, outcome in zip(uploads, outcomes, strict=True):
        if isinstance(outcome, str):
            results.append({"name": upload.name, "error": outcome})
        else:
            results.append({"name": upload.name, **next(next_found)})
    return results


def _top_classes(
    probabilities: np.ndarray, class_names: list[str], task: Any, top_k: int, min_confidence: float | None
) -> list[dict]:
    """Each row's ``{"predictions"}``: its ``top_k`` classes, ranked by the task (cnnkit.tasks);
    with ``min_confidence``, ``uncertain`` too."""
    order, values = task.top_k(probabilities, top_k)
    values = values.astype(np.float64).round(6)
    doubts = task.uncertain(probabilities, min_confidence)
    return [
        {
            **({} if doubt is None else {"uncertain": doubt}),
            "predictions": [
                {"class": class_names[index], "probability": value}
                for index, value in zip(indices, row, strict=True)
            ],
        }
        for indices, row, doubt in zip(order.tolist(), values.tolist(), doubts, strict=True)
    ]


def _label_sets(probabilities: np.ndarray, class_names: list[str], task: Any, thresholds: Any) -> list[dict]:
    """Each row's ``{"labels", "probabilities"}``: the labels at or above their ``thresholds``,
    most probable first (decided before rounding), and every label's probability."""
    sets = task.label_sets(probabilities, class_names, thresholds)
    rounded = probabilities.astype(np.float64).round(6).tolist()
    return [
        {
            "labels": [{"label": name, "probability": round(value, 6)} for name, value in chosen],
            "probabilities": dict(zip(class_names, row, strict=True)),
        }
        for chosen, row in zip(sets, rounded, strict=True)
    ]
