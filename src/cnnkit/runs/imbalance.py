"""Imbalanced classes after training: ``best.pt``'s decision adjusted for the class prior.

A network trained on skewed classes favours the large ones. Post-hoc logit adjustment (Menon et
al., ICLR 2021, section 4) adds ``-tau * log(prior)`` to its logits; ``tau`` is chosen where the
validation split's balanced accuracy is highest, and kept in ``best.pt`` as its ``logit_offset``,
so that evaluate, predict, export and serve all decide the same way.
"""

from __future__ import annotations

from typing import Any

from cnnkit.api import Classifier
from cnnkit.checkpoint import load_checkpoint, save_checkpoint
from cnnkit.data.balance import IMBALANCE_RATIO
from cnnkit.runtime.device import precision_name

TURN_OFF = "--set decision_adjustment=none"


def wants_adjustment(recipe: Any, imbalance_ratio: float | None, has_validation: bool) -> bool:
    """Whether a run adjusts ``best.pt``: the recipe's ``auto``, imbalanced classes (a ratio above
    ``IMBALANCE_RATIO``, or a class without training images) and a validation split to choose on."""
    imbalanced = imbalance_ratio is None or imbalance_ratio > IMBALANCE_RATIO
    return recipe.decision_adjustment == "auto" and imbalanced and has_validation


def adjust_best_checkpoint(run: Any) -> dict[str, Any] | None:
    """Choose ``tau`` on ``run``'s validation split for its ``best.pt`` and write the offset into it
    (unless the plain logits score best). Returns what was chosen (None when the run does not adjust)."""
    validation = run.val_data
    has_validation = validation is not None and len(validation) > 0
    counts = run.classifier.task.class_counts(run.train_data.labels, len(run.classifier.class_names))
    ratio = counts.max() / counts.min() if counts.min() else None
    if not wants_adjustment(run.recipe, ratio, has_validation):
        return None
    path = run.folder / "best.pt"
    checkpoint = load_checkpoint(path)
    device, precision = str(run.classifier.device), precision_name(run.classifier.precision)
    classifier = Classifier.from_checkpoint(checkpoint, device=device, precision=precision)
    choice = classifier.adjust_for_imbalance(validation.images, validation.labels, counts.tolist())
    if choice["offset"] is not None:
        checkpoint.logit_offset = choice["offset"]
        save_checkpoint(path, checkpoint)
    return {
        "method": "post-hoc logit adjustment",
        "tau": choice["tau"],
        "chosen_on": "validation",
        "validation_balanced_accuracy_before": choice["before"],
        "validation_balanced_accuracy_after": choice["after"],
        "logit_offset": choice["offset"],
    }


def describe_adjustment(adjustment: dict[str, Any]) -> str:
    """The line a run prints about its adjustment."""
    before = adjustment["validation_balanced_accuracy_before"]
    if adjustment["logit_offset"] is None:
        return (
            f"Imbalanced classes: no logit adjustment beat the plain model on the validation split "
            f"(balanced accuracy {before:.4f}); best.pt decides as trained."
        )
    return (
        f"Imbalanced classes: best.pt's logits shifted by {-adjustment['tau']:+g} x log(class prior), "
        f"chosen on the validation split (balanced accuracy {before:.4f} -> "
        f"{adjustment['validation_balanced_accuracy_after']:.4f}). {TURN_OFF} turns this off."
    )
