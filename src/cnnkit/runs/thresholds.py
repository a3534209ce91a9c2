"""What a multi-label run decides after training (issue 21): a threshold a label for ``best.pt``.

A label is predicted where its sigmoid reaches its threshold. 0.5 suits a label seen in half the
images; a rare label's best cut is usually lower. Each label's threshold is chosen where its F1
on the **validation** split is highest (never the test split) and written into ``best.pt``, so
that evaluate, predict, export and serve decide the same way. Without a validation split every
label keeps 0.5, and the report says so.
"""

from __future__ import annotations

from typing import Any

from cnnkit.api import Classifier
from cnnkit.checkpoint import load_checkpoint, save_checkpoint
from cnnkit.runtime.device import precision_name
from cnnkit.tasks.multi_label import DEFAULT_THRESHOLD


def choose_best_thresholds(run: Any) -> dict[str, Any] | None:
    """Choose ``best.pt``'s thresholds on ``run``'s validation split and write them into it.
    Returns what was chosen and its effect on validation micro- and macro-F1 (None for a
    single-label run)."""
    if not run.classifier.task.multi_label:
        return None
    validation = run.val_data
    if validation is None or len(validation) == 0:
        return {"chosen_on": None, "thresholds": dict.fromkeys(run.classifier.class_names, DEFAULT_THRESHOLD)}
    path = run.folder / "best.pt"
    checkpoint = load_checkpoint(path)
    device, precision = str(run.classifier.device), precision_name(run.classifier.precision)
    classifier = Classifier.from_checkpoint(checkpoint, device=device, precision=precision)
    choice = classifier.choose_thresholds(validation.images, validation.labels)
    checkpoint.thresholds = classifier.thresholds
    save_checkpoint(path, checkpoint)
    return {"chosen_on": "validation", **choice}


def describe_thresholds(chosen: dict[str, Any]) -> str:
    """The line a run prints about its thresholds."""
    if chosen["chosen_on"] is None:
        return (
            f"Thresholds: {DEFAULT_THRESHOLD} for every label (no validation split to choose them on); "
            "predict --threshold sets another."
        )
    values = list(chosen["thresholds"].values())
    before, after = chosen["before"], chosen["after"]
    return (
        f"Thresholds: one a label for its best validation F1 ({min(values):.2f} to {max(values):.2f}), "
        f"written into best.pt: validation micro-F1 {before['micro_f1']:.4f} -> {after['micro_f1']:.4f}, "
        f"macro-F1 {before['macro_f1']:.4f} -> {after['macro_f1']:.4f} (at 0.5 -> at the thresholds)."
    )
