"""The metrics of a pass over labelled images, defined once for training, validation and evaluation.

Each metric is a mean over images: a batch adds its sum, the pass divides by the image count.
To add one, add its per-batch sum to ``BATCH_SUMS``: the epoch line, ``metrics.csv``, the
validation columns (``val_<name>``) and resumed runs all follow.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

# name -> what one batch adds: f(summed loss, logits (N, classes), integer targets (N,)).
BATCH_SUMS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "loss": lambda loss_sum, logits, targets: loss_sum,
    "accuracy": lambda loss_sum, logits, targets: (logits.argmax(1) == targets).sum(),
}
VALIDATION_PREFIX = "val_"


def reported_metric_names() -> list[str]:
    """The history's metric columns in order: training metrics, then their validation twins."""
    return [*BATCH_SUMS, *(VALIDATION_PREFIX + name for name in BATCH_SUMS)]


class RunningMetrics:
    """Sums of a pass, kept on the device so that adding a batch never waits for it."""

    def __init__(self, device: torch.device, sums: dict[str, float] | None = None, count: int = 0) -> None:
        sums = sums or {}
        self.sums = {
            name: torch.tensor(float(sums.get(name, 0.0)), device=device, dtype=torch.float64)
            for name in BATCH_SUMS
        }
        self.count = count

    def add(self, loss_sum: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """One batch: its summed loss, its logits and targets."""
        for name, batch_sum in BATCH_SUMS.items():
            self.sums[name] += batch_sum(loss_sum.detach(), logits.detach(), targets).double()
        self.count += len(targets)

    def totals(self) -> dict[str, float]:
        """The sums as plain numbers (syncs the device)."""
        return {name: value.item() for name, value in self.sums.items()}

    def values(self) -> dict[str, float]:
        return mean_values(self.totals(), self.count)


def mean_values(totals: dict[str, float], count: int) -> dict[str, float]:
    """Sums over ``count`` images -> each metric's mean."""
    return {name: totals[name] / max(1, count) for name in BATCH_SUMS}


def score_logits(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """The metrics of ``logits`` against ``labels`` (mean cross-entropy loss), plus ``count``."""
    labels = labels.long().to(logits.device)
    running = RunningMetrics(logits.device)
    running.add(F.cross_entropy(logits.float(), labels, reduction="sum"), logits, labels)
    return {**running.values(), "count": running.count}
