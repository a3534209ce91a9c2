"""What a run does about imbalanced classes with no flag (the recipe's ``imbalance_handling="auto"``).

A network trained on skewed classes favours the large ones. Two measured steps (docs/benchmarks.md,
"Issue 20"; Menon et al., ICLR 2021) counter it:
1. before training, a recipe with no imbalance setting of its own trains with the logit-adjusted
   loss at ``AUTO_LOGIT_ADJUSTMENT`` (half the paper's tau: the full one over-corrects on a short
   schedule);
2. after training, post-hoc logit adjustment adds ``-tau * log(prior)`` to ``best.pt``'s logits,
   ``tau`` chosen where the validation split's balanced accuracy is highest (negative when step 1
   went too far), kept in ``best.pt`` as its ``logit_offset`` so that evaluate, predict, export
   and serve all decide the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cnnkit.api import Classifier
from cnnkit.checkpoint import load_checkpoint, save_checkpoint
from cnnkit.data.balance import IMBALANCE_RATIO
from cnnkit.recipes import Recipe
from cnnkit.runtime.device import precision_name
from cnnkit.tasks.single_label import MINIMUM_VALIDATION_IMAGES

TURN_OFF = "--set imbalance_handling=none"
# The logit-adjusted loss's tau a recipe without its own imbalance setting trains with.
AUTO_LOGIT_ADJUSTMENT = 0.5


def is_imbalanced(imbalance_ratio: float | None) -> bool:
    """A ratio of the largest class to the smallest above ``IMBALANCE_RATIO`` (None: a class has
    no training image)."""
    return imbalance_ratio is None or imbalance_ratio > IMBALANCE_RATIO


# The recipe fields that counter imbalance in training: set by the user, the loss is theirs.
TRAINING_SETTINGS = ("class_weights", "logit_adjustment", "sampler")


def imbalance_plan(
    recipe: Recipe, imbalance_ratio: float | None, has_validation: bool, user_set: Iterable[str] = ()
) -> tuple[Recipe, str | None]:
    """(the recipe to train, what is done about the imbalance in words; None when nothing is).
    ``user_set``: the fields the user set (``--set``), which are kept even at their defaults."""
    if recipe.imbalance_handling != "auto" or not is_imbalanced(imbalance_ratio):
        return recipe, None
    steps = []
    untouched = recipe.class_weights == "none" and not recipe.logit_adjustment and recipe.sampler == "shuffle"
    if untouched and not set(TRAINING_SETTINGS) & set(user_set):
        recipe = recipe.replace(logit_adjustment=AUTO_LOGIT_ADJUSTMENT)
        steps.append(f"training uses the logit-adjusted loss (logit_adjustment={AUTO_LOGIT_ADJUSTMENT:g})")
    if has_validation:
        steps.append("best.pt's logits are then adjusted for the class prior, as far as validation says")
    return recipe, f"Countering it: {'; '.join(steps)} ({TURN_OFF} turns this off)."


def wants_adjustment(recipe: Any, imbalance_ratio: float | None, has_validation: bool) -> bool:
    """Whether a run adjusts ``best.pt``: the recipe's ``auto``, imbalanced classes (a ratio above
    ``IMBALANCE_RATIO``, or a class without training images) and a validation split to choose on."""
    return recipe.imbalance_handling == "auto" and is_imbalanced(imbalance_ratio) and has_validation


def adjust_best_checkpoint(run: Any) -> dict[str, Any] | None:
    """Choose ``tau`` on ``run``'s validation split for its ``best.pt`` and write the offset into it
    (unless the plain logits score best). Returns what was chosen (None when the run does not adjust)."""
    if run.classifier.task.multi_label:  # a threshold a label instead (runs.thresholds)
        return None
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
        "noise": choice["noise"],  # one standard error of the plain balanced accuracy
        "fewest_validation_images": choice["fewest_images"],  # of a class: below 5, none is taken
        "logit_offset": choice["offset"],
    }


def describe_adjustment(adjustment: dict[str, Any]) -> str:
    """The line a run prints about its adjustment."""
    before = adjustment["validation_balanced_accuracy_before"]
    fewest = adjustment["fewest_validation_images"]
    if adjustment["logit_offset"] is None and fewest < MINIMUM_VALIDATION_IMAGES:
        return (
            f"Imbalanced classes: no logit adjustment, as a class has only {fewest} validation "
            f"image(s) (choosing one takes {MINIMUM_VALIDATION_IMAGES}); best.pt decides as trained."
        )
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
