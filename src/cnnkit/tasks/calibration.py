"""Calibrated probabilities. Temperature scaling (Guo et al., ICML 2017): one number that divides
the logits so that the probabilities say how often the model is right; shared by both tasks: the
negative log-likelihood minimised is the task's evaluation loss (cross-entropy, or binary
cross-entropy a label). Single-label models then get a confidence map (top-label calibration):
``choose_confidence_map``, ``apply_confidence_map``."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

# The search interval of log(temperature): 0.05 to 20, wider than any trained network needs.
_LOG_LOW, _LOG_HIGH = math.log(0.05), math.log(20.0)
_GOLDEN = (math.sqrt(5) - 1) / 2


def fit_temperature(task: Any, logits: torch.Tensor, labels: torch.Tensor, steps: int = 60) -> float:
    """The temperature minimising ``task``'s mean evaluation loss of ``logits / T`` on ``labels``
    (validation images, never the test set). The loss is convex in 1/T, so a golden-section search
    over log T finds it to about 1e-6 in 60 steps: deterministic, unlike an optimiser's run."""
    import torch

    logits, labels = logits.double(), labels.long()

    def loss(log_temperature: float) -> float:
        return float(task.evaluation_loss_sum(logits / math.exp(log_temperature), labels)) / len(labels)

    low, high = _LOG_LOW, _LOG_HIGH
    left, right = high - _GOLDEN * (high - low), low + _GOLDEN * (high - low)
    left_loss, right_loss = loss(left), loss(right)
    for _ in range(steps):
        if left_loss < right_loss:
            high, right, right_loss = right, left, left_loss
            left = high - _GOLDEN * (high - low)
            left_loss = loss(left)
        else:
            low, left, left_loss = left, right, right_loss
            right = low + _GOLDEN * (high - low)
            right_loss = loss(right)
    with torch.no_grad():
        return math.exp((low + high) / 2)


# Top-label calibration (Gupta and Ramdas, ICLR 2022) after the temperature: an isotonic map of
# the top probability, fitted on validation. Why: a network trained with label smoothing (every
# cnnkit recipe) is over-confident between 0.75 and 0.93 yet right at 0.99, a shape no single
# temperature undoes. On benchmarks/calibration.py's logits (CIFAR-10, 8,000 validation and 10,000
# test images) the temperature alone left test ECE at 1.50 %, the map after it 0.85 %.
_MIN_MAP_IMAGES = 200  # fewer validation images than this: the temperature alone
_MAP_SEED = 0
_DECISION_MARGIN = 1e-4
_TINY = 1e-30
_SMALLEST_PROBABILITY = 1e-30  # the floor of a mapped probability before its log: no -inf logits


def isotonic_blocks(confidences: np.ndarray, outcomes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Isotonic regression of ``outcomes`` (0/1) on ``confidences`` by pool-adjacent-violators:
    (each block's mean confidence, its mean outcome), both increasing. Equal confidences are
    pooled first, as scikit-learn's ``IsotonicRegression`` does."""
    values, inverse = np.unique(np.asarray(confidences, dtype=np.float64), return_inverse=True)
    counts = np.bincount(inverse).astype(np.float64)
    sums = np.bincount(inverse, weights=np.asarray(outcomes, dtype=np.float64))
    x_sums = values * counts
    blocks: list[list[float]] = []  # [outcome sum, count, confidence sum]
    for outcome_sum, count, x_sum in zip(sums, counts, x_sums, strict=True):
        blocks.append([outcome_sum, count, x_sum])
        # Merge while the previous block's mean is not below this one's (equal means merge too).
        while len(blocks) > 1 and blocks[-2][0] * blocks[-1][1] >= blocks[-1][0] * blocks[-2][1]:
            last = blocks.pop()
            blocks[-1] = [blocks[-1][0] + last[0], blocks[-1][1] + last[1], blocks[-1][2] + last[2]]
    table = np.array(blocks)
    return table[:, 2] / table[:, 1], table[:, 0] / table[:, 1]


def fit_confidence_map(probabilities: np.ndarray, labels: np.ndarray) -> list[list[float]]:
    """Knots ``[confidences, accuracies]`` of the isotonic map from an image's top probability to
    how often such images are right; between knots the map is linear, beyond them flat."""
    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels)
    classes = probabilities.shape[1]
    centres, accuracies = isotonic_blocks(probabilities.max(1), probabilities.argmax(1) == labels)
    # A top probability is never below 1/classes: nor is the map.
    return [centres.tolist(), np.clip(accuracies, 1.0 / classes, 1.0).tolist()]


def apply_confidence_map(probabilities: torch.Tensor, knots: torch.Tensor) -> torch.Tensor:
    """``probabilities`` (N, classes) with each top probability replaced by the map's value
    (``knots``: (2, M) confidences and accuracies) and the others scaled to sum to the rest. The
    decision never changes: the new top stays above the scaled second. Elementwise operations,
    a top-k and a scatter only, so that it traces and exports to ONNX."""
    import torch

    centres, accuracies = knots[0], knots[1]
    top2 = probabilities.topk(2, dim=1)
    top, second, index = top2.values[:, :1], top2.values[:, 1:2], top2.indices[:, :1]
    widths = centres[1:] - centres[:-1]
    slopes = (accuracies[1:] - accuracies[:-1]) / widths.clamp_min(1e-12)
    rises = torch.minimum(torch.clamp(top - centres[:-1], min=0.0), widths) * slopes
    mapped = accuracies[0] + rises.sum(dim=1, keepdim=True)
    # The rest summed, not 1 - top: a top of 1.0 in float32 still has others of 1e-12.
    others = probabilities.scatter(1, index, 0.0)
    rest = others.sum(dim=1, keepdim=True)
    # At the bound the scaled second equals the new top (second * (1 - m) / rest = m); a margin
    # of 1e-4, kept in float32, leaves the decision to the same class.
    mapped = torch.maximum(mapped, second / (rest + second).clamp_min(_TINY) + _DECISION_MARGIN)
    scaled = torch.where(
        rest > 0,
        others * ((1.0 - mapped) / rest.clamp_min(_TINY)),
        torch.ones_like(others) * ((1.0 - mapped) / (probabilities.shape[1] - 1)),  # all underflowed
    )
    return scaled.scatter(1, index, mapped)


def apply_calibration(
    logits: torch.Tensor, inverse_temperature: torch.Tensor | None, knots: torch.Tensor | None
) -> torch.Tensor:
    """Calibrated logits: ``logits`` times ``inverse_temperature`` (1 / T), then, with ``knots``
    (single-label), the log of the mapped softmax probabilities (whose softmax gives them back).
    The last step of every prediction (``runtime.PixelClassifier``) and of evaluate's report."""
    import torch

    if inverse_temperature is not None:
        logits = logits * inverse_temperature
    if knots is not None:
        mapped = apply_confidence_map(torch.softmax(logits, dim=1), knots)
        logits = torch.log(mapped.clamp_min(_SMALLEST_PROBABILITY))
    return logits


def choose_confidence_map(probabilities: np.ndarray, labels: np.ndarray) -> list[list[float]] | None:
    """The confidence map of ``probabilities`` (validation, temperature applied) when it earns its
    place: fitted on each half of the images, it must lower the other half's expected calibration
    error on average; else None (the temperature alone). Fewer than 200 images: None."""
    import torch

    from cnnkit.reports.calibration import expected_calibration_error

    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels)
    if len(labels) < _MIN_MAP_IMAGES:
        return None
    order = np.random.default_rng(_MAP_SEED).permutation(len(labels))
    halves = (order[: len(order) // 2], order[len(order) // 2 :])
    before = after = 0.0
    for fitted, judged in (halves, halves[::-1]):
        knots = torch.tensor(fit_confidence_map(probabilities[fitted], labels[fitted]), dtype=torch.float64)
        mapped = apply_confidence_map(torch.from_numpy(probabilities[judged]), knots).numpy()
        before += expected_calibration_error(probabilities[judged], labels[judged])
        after += expected_calibration_error(mapped, labels[judged])
    return fit_confidence_map(probabilities, labels) if after < before else None


def check_confidence_map(knots: Any) -> list[list[float]]:
    """``knots`` as two lists of floats (confidences strictly increasing, accuracies
    non-decreasing, all within [0, 1], at least one knot), or a one-line ``ValueError``."""
    try:
        table = np.asarray(knots, dtype=np.float64)
    except (TypeError, ValueError):
        table = np.empty((0,))
    valid = (
        table.ndim == 2
        and table.shape[0] == 2
        and table.shape[1] >= 1
        and bool(np.isfinite(table).all())
        and table.min() >= 0
        and table.max() <= 1
        and bool((np.diff(table[0]) > 0).all())
        and bool((np.diff(table[1]) >= 0).all())
    )
    if not valid:
        from cnnkit.messages import short_repr

        raise ValueError(
            "confidence_map must be [confidences, accuracies]: two lists of the same length, in [0, 1], "
            f"the first increasing, the second non-decreasing. Received: {short_repr(knots)}"
        )
    return table.tolist()
