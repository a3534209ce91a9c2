"""The best epoch by one monitored metric, and early stopping on it: two callbacks, as Keras's
``ModelCheckpoint(save_best_only=True)`` and ``EarlyStopping(restore_best_weights=True)``.

Any history column can be monitored (``engine.metrics``: ``val_macro_f1``, ``val_loss``...); its
metric says which way is better. Without validation data a ``val_`` monitor falls back to its
training twin. Both keep their state across ``--resume`` (``state_key``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from cnnkit.engine.callbacks import EpochEnd, TrainingView
from cnnkit.engine.metrics import VALIDATION_PREFIX, check_metric_name, is_better


def monitored_column(monitor: str, has_validation: bool) -> str:
    """The history column ``monitor`` reads: its training twin when there is no validation."""
    return monitor if has_validation else monitor.removeprefix(VALIDATION_PREFIX)


class BestEpoch:
    """Tracks the best value of ``monitor``; sets ``history.best_epoch`` and, on each new best,
    calls ``on_best(view)`` (the run folder writes ``best.pt`` then). A worse epoch changes nothing."""

    state_key = "best_epoch"

    def __init__(self, monitor: str, on_best: Callable[[TrainingView], Any] | None = None) -> None:
        self.monitor = check_metric_name(monitor)
        self.on_best = on_best
        self.value: float | None = None
        self.epoch: int | None = None

    def on_epoch_end(self, state: EpochEnd) -> None:
        column = monitored_column(self.monitor, state.view.has_validation)
        value = state.metrics[column]
        if is_better(column, value, self.value):
            self.value, self.epoch = value, state.epoch
            state.history.best_epoch = state.epoch
            if self.on_best is not None:
                self.on_best(state.view)

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value, self.epoch = state["value"], state["epoch"]


class EarlyStopping:
    """Stops after ``patience`` epochs without a better ``monitor`` value, and ends the run on the
    best weights (kept on the model's device)."""

    state_key = "early_stopping"

    def __init__(self, monitor: str, patience: int) -> None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1. Received: patience={patience}")
        self.monitor = check_metric_name(monitor)
        self.patience = patience
        self.value: float | None = None
        self.epoch: int | None = None
        self.weights: dict[str, torch.Tensor] | None = None

    def on_train_begin(self, view: TrainingView) -> None:
        if not view.has_validation and self.monitor.startswith(VALIDATION_PREFIX):
            raise ValueError(
                f"Early stopping watches validation metrics: use a validation split. "
                f"Received: patience={self.patience} with no validation images"
            )

    def on_epoch_end(self, state: EpochEnd) -> None:
        value = state.metrics[self.monitor]
        if is_better(self.monitor, value, self.value):
            self.value, self.epoch = value, state.epoch
            self.weights = {
                name: tensor.detach().clone() for name, tensor in state.model.state_dict().items()
            }
        elif state.epoch - self.epoch >= self.patience:
            state.view.request_stop(
                f"Early stopping: {self.monitor} has not improved for {self.patience} epochs; "
                f"restoring the weights of epoch {self.epoch}."
            )

    def on_train_end(self, view: TrainingView) -> None:
        """Keras's ``restore_best_weights``: the run hands back its best model."""
        if self.weights is not None:
            view.model.load_state_dict(self.weights)

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "epoch": self.epoch, "weights": self.weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value, self.epoch = state["value"], state["epoch"]
        weights = state["weights"]
        self.weights = None if weights is None else {name: tensor.clone() for name, tensor in weights.items()}
