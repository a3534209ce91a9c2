"""Metrics as objects: a name, a direction, and update / result / reset. Defined once for the
epoch lines, ``metrics.csv``, the validation columns (``val_<name>``), evaluation reports,
``best.pt``, early stopping, ``tune`` and ``compare``.

A metric's state is one float64 tensor that each batch adds to: adding never waits for the
device, ranks under torchrun sum their states, and a stopped run saves them to continue exactly.
To add a metric, write one class here under ``@register_metric``: ``--monitor val_<name>`` then
picks ``best.pt`` by it, ``tune`` follows its direction and ``compare`` shows its column.

Why not torchmetrics (Apache-2.0, the Lightning team's)? It has these objects, and more (multi-
label average precision, calibration error). Measured on this project's CPU (2026-12-07): its
accuracy, balanced accuracy and macro-F1 updates took 272 us a batch of 2,000 against 41 us for
one bincount here, and importing it 0.6 s; both are small beside a training step. What decided is
that four metrics are ~100 lines over one confusion matrix, with states we sum across ranks and
save in ``weights_only`` checkpoints ourselves, against two more dependencies pinned beside torch.
A metric we would rather not write (multi-label AP, calibration) can still wrap a torchmetrics
object behind this same protocol.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

import torch

from cnnkit.messages import short_repr

VALIDATION_PREFIX = "val_"

# name -> class; filled by @register_metric below.
METRICS: dict[str, type[Metric]] = {}


def register_metric(cls: type[Metric]) -> type[Metric]:
    METRICS[cls.name] = cls
    return cls


class Metric:
    """A mean over the images of a pass: ``update`` per batch, ``result`` at the end.

    Subclasses give ``name``, ``higher_is_better``, ``state_shape`` and ``batch_state`` (what one
    batch adds to the state), and ``value`` (the result from the summed state and image count).
    """

    name: ClassVar[str]
    higher_is_better: ClassVar[bool] = True

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.state = torch.zeros(self.state_shape(num_classes), dtype=torch.float64, device=device)
        self.count = 0

    @staticmethod
    def state_shape(num_classes: int) -> tuple[int, ...]:
        return ()

    def batch_state(
        self, loss_sum: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    def value(self, state: torch.Tensor, count: int) -> float:
        return float(state) / max(1, count)

    def update(self, loss_sum: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """One batch: its summed loss, its logits ``(N, classes)`` and its targets."""
        self.state += self.batch_state(loss_sum.detach(), logits.detach(), targets).double()
        self.count += len(targets)

    def result(self) -> float:
        return self.value(self.state, self.count)

    def reset(self) -> None:
        self.state.zero_()
        self.count = 0


@register_metric
class Loss(Metric):
    """The mean training objective (for evaluation: cross-entropy without smoothing or weights)."""

    name = "loss"
    higher_is_better = False

    def batch_state(self, loss_sum, logits, targets):
        return loss_sum


@register_metric
class Accuracy(Metric):
    name = "accuracy"

    def batch_state(self, loss_sum, logits, targets):
        return (logits.argmax(1) == targets).sum()


class _ConfusionMetric(Metric):
    """A metric of the confusion matrix (rows: true class, columns: predicted)."""

    @staticmethod
    def state_shape(num_classes):
        return (num_classes, num_classes)

    def batch_state(self, loss_sum, logits, targets):
        classes = self.num_classes
        cells = targets.long() * classes + logits.argmax(1)
        return torch.bincount(cells, minlength=classes * classes).view(classes, classes)


@register_metric
class BalancedAccuracy(_ConfusionMetric):
    """The mean recall of the classes present (scikit-learn's ``balanced_accuracy_score``)."""

    name = "balanced_accuracy"

    def value(self, state, count):
        support = state.sum(1)
        present = support > 0
        if not present.any():
            return 0.0
        return float((state.diagonal()[present] / support[present]).mean())


@register_metric
class MacroF1(_ConfusionMetric):
    """The unweighted mean of every class's F1 (0 for a class never seen nor predicted), as the
    evaluation report's macro average."""

    name = "macro_f1"

    def value(self, state, count):
        correct = state.diagonal()
        denominator = state.sum(0) + state.sum(1)  # predicted + true: 2 tp + fp + fn
        f1 = torch.where(denominator > 0, 2 * correct / denominator.clamp_min(1), 0.0)
        return float(f1.mean())


def base_name(name: str) -> str:
    """``val_macro_f1`` -> ``macro_f1``: a history column's metric."""
    return name.removeprefix(VALIDATION_PREFIX)


def check_metric_name(name: str, what: str = "monitor") -> str:
    """``name`` (a metric, or ``val_`` and a metric) if known; else a one-line ``ValueError``."""
    if base_name(name) not in METRICS:
        allowed = ", ".join(VALIDATION_PREFIX + metric for metric in METRICS)
        raise ValueError(
            f"Unknown metric for {what}: allowed are {allowed} (or a name without val_ for the "
            f"training figure). Received: {what}={short_repr(name)}"
        )
    return name


def higher_is_better(name: str) -> bool:
    """The direction of a history column (``val_loss``: False)."""
    return METRICS[base_name(check_metric_name(name))].higher_is_better


def is_better(name: str, value: float, than: float | None) -> bool:
    """Whether ``value`` of column ``name`` beats ``than`` (None: anything does)."""
    if than is None:
        return True
    return value > than if higher_is_better(name) else value < than


class MetricSet:
    """Several metrics over one pass, updated together, sharing the image count."""

    def __init__(
        self,
        names: Iterable[str],
        num_classes: int,
        device: torch.device | str = "cpu",
        states: dict[str, torch.Tensor | float] | None = None,
        count: int = 0,
    ) -> None:
        self.metrics = {
            name: METRICS[check_metric_name(name, "metrics")](num_classes, device) for name in names
        }
        for name, state in (states or {}).items():
            if name in self.metrics:
                metric = self.metrics[name]
                metric.state.copy_(torch.as_tensor(state, dtype=torch.float64).reshape(metric.state.shape))
        self.count = count

    def update(self, loss_sum: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        for metric in self.metrics.values():
            metric.update(loss_sum, logits, targets)
        self.count += len(targets)

    def states(self) -> dict[str, torch.Tensor]:
        """Each metric's summed state, on the CPU (syncs the device): what a stopped run saves."""
        return {name: metric.state.cpu() for name, metric in self.metrics.items()}

    def values(self) -> dict[str, float]:
        return {name: metric.value(metric.state, self.count) for name, metric in self.metrics.items()}

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()
        self.count = 0


def metric_values(states: dict[str, torch.Tensor], count: int, num_classes: int) -> dict[str, float]:
    """Saved or summed states -> each metric's value."""
    return MetricSet(states, num_classes, "cpu", states, count).values()


def score_logits(
    logits: torch.Tensor, labels: torch.Tensor, names: Iterable[str] = ("loss", "accuracy")
) -> dict[str, float]:
    """The metrics ``names`` of ``logits`` against ``labels`` (loss: the single-label task's
    evaluation loss, mean cross-entropy), plus ``count``."""
    from cnnkit.tasks import SINGLE_LABEL

    labels = labels.long().to(logits.device)
    metrics = MetricSet(names, logits.shape[-1], logits.device)
    metrics.update(SINGLE_LABEL.evaluation_loss_sum(logits, labels), logits, labels)
    return {**metrics.values(), "count": metrics.count}
