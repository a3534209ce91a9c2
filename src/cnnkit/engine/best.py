"""The best model so far, by one monitored metric, and early stopping on it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class BestModel:
    """Tracks the best value of ``monitor`` over epochs; with ``patience``, stops and restores.

    ``monitor`` is a history column: a loss is better lower, anything else higher. With
    ``patience`` > 0 the best weights are kept (on the model's device) so that the run can end on
    them, as Keras's ``EarlyStopping(restore_best_weights=True)`` does.
    """

    def __init__(self, monitor: str, patience: int = 0) -> None:
        self.monitor = monitor
        self.patience = patience
        self.value: float | None = None
        self.epoch: int | None = None
        self.weights: dict[str, torch.Tensor] | None = None
        self.should_stop = False

    def update(self, epoch: int, metrics: dict[str, float], model: nn.Module) -> bool:
        """Record ``epoch``'s metrics; True if it is the best so far."""
        value = metrics[self.monitor]
        lower_is_better = self.monitor.endswith("loss")
        improved = self.value is None or (value < self.value if lower_is_better else value > self.value)
        if improved:
            self.value, self.epoch = value, epoch
            if self.patience:
                self.weights = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        elif self.patience and epoch - self.epoch >= self.patience:
            self.should_stop = True
        return improved

    def restore(self, model: nn.Module) -> None:
        """Put the best weights back (only kept, and only needed, with early stopping)."""
        if self.patience and self.weights is not None:
            model.load_state_dict(self.weights)

    def state_dict(self) -> dict[str, Any]:
        return {"best_value": self.value, "best_epoch": self.epoch, "best_weights": self.weights}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.value, self.epoch = state["best_value"], state["best_epoch"]
        weights = state["best_weights"]
        self.weights = (
            None if weights is None else {name: tensor.to(device) for name, tensor in weights.items()}
        )
