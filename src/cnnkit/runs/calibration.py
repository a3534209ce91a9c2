"""What a single-label run does about its probabilities after training (issue 22): temperature
scaling of ``best.pt`` (the recipe's ``calibration="temperature"``, the default), then a map of
the top probability where it helps (``tasks.calibration``).

A network trained to low loss is over-confident: its 0.99 is right less often than 99 % of the
time. One temperature dividing the logits, fitted on the **validation** split's negative log-
likelihood (Guo et al., ICML 2017: a CIFAR-10 ResNet-110 from 4.6 % to 0.8 % expected
calibration error), makes the probabilities say how often the model is right; the decisions do
not change. Label smoothing leaves a shape one temperature cannot undo (over-confident between
0.75 and 0.93, right at 0.99): an isotonic map of the top probability, fitted on the same split
and kept only when it lowers held-out halves' calibration error, takes care of it. It is written
into ``best.pt`` so that evaluate, predict, export and serve give calibrated probabilities.
Multi-label runs decide by a threshold a label (``runs.thresholds``) and are not temperature-
scaled.
"""

from __future__ import annotations

from typing import Any

from cnnkit.api import Classifier
from cnnkit.checkpoint import load_checkpoint, save_checkpoint
from cnnkit.runtime.device import precision_name

TURN_OFF = "--set calibration=none"


def calibrate_best_checkpoint(run: Any) -> dict[str, Any] | None:
    """Fit ``best.pt``'s temperature on ``run``'s validation split and write it in. Returns what
    was chosen with the validation ECE, NLL and Brier score before and after; ``chosen_on`` None
    without a validation split; None for a multi-label run or ``calibration="none"``."""
    if run.classifier.task.multi_label or run.recipe.calibration == "none":
        return None
    validation = run.val_data
    if validation is None or len(validation) == 0:
        return {"method": "temperature scaling", "chosen_on": None, "temperature": None}
    path = run.folder / "best.pt"
    checkpoint = load_checkpoint(path)
    device, precision = str(run.classifier.device), precision_name(run.classifier.precision)
    classifier = Classifier.from_checkpoint(checkpoint, device=device, precision=precision)
    choice = classifier.calibrate(validation.images, validation.labels)
    checkpoint.temperature, checkpoint.confidence_map = choice["temperature"], choice["confidence_map"]
    save_checkpoint(path, checkpoint)
    mapped = choice["confidence_map"] is not None
    return {
        "method": "temperature scaling" + (" and top-label isotonic map" if mapped else ""),
        "chosen_on": "validation",
        "temperature": choice["temperature"],
        "confidence_map_knots": len(choice["confidence_map"][0]) if mapped else 0,
        "validation_before": choice["before"],
        "validation_after": choice["after"],
    }


def describe_calibration(calibration: dict[str, Any]) -> str:
    """The line a run prints about its calibration."""
    if calibration["chosen_on"] is None:
        return "Calibration: none (no validation split to fit a temperature on); probabilities as trained."
    before, after = calibration["validation_before"], calibration["validation_after"]
    return (
        f"Calibration: best.pt's logits divided by temperature {calibration['temperature']:.3f}"
        + (", then its top probability mapped" if calibration.get("confidence_map_knots") else "")
        + ", fitted on the validation split: expected calibration error "
        f"{before['ece']:.4f} -> {after['ece']:.4f}, "
        f"NLL {before['nll']:.4f} -> {after['nll']:.4f} ({TURN_OFF} turns this off)."
    )
