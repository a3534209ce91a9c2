"""Temperature scaling (Guo et al., ICML 2017): one number that divides the logits so that the
probabilities say how often the model is right. Shared by both tasks: the negative log-likelihood
minimised is the task's evaluation loss (cross-entropy, or binary cross-entropy a label)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

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
