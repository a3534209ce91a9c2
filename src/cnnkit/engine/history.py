"""What training reports: the per-epoch history, the callback protocol, the Keras-like epoch line."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

if TYPE_CHECKING:
    from cnnkit.engine.trainer import Trainer


@dataclass
class History:
    """One row of metrics per epoch; ``history.history["val_accuracy"]`` reads like Keras."""

    rows: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None  # by the recipe's monitored metric

    @property
    def history(self) -> dict[str, list[float]]:
        keys = self.rows[0].keys() if self.rows else []
        return {key: [row[key] for row in self.rows] for key in keys}


@dataclass
class EpochEnd:
    """What a callback sees after each epoch (``trainer`` gives the full state to save)."""

    epoch: int  # 1-based
    epochs: int
    metrics: dict[str, float]
    history: History
    model: nn.Module
    optimizer: torch.optim.Optimizer
    trainer: Trainer
    improved: bool  # the monitored metric is the best so far (best.pt material)


class Callback(Protocol):
    def on_epoch_end(self, state: EpochEnd) -> None: ...


def format_epoch_line(epoch: int, epochs: int, metrics: dict[str, float]) -> str:
    """``Epoch 1/5 - 5.1s - 0.127 ms/sample - loss: 1.3853 - accuracy: 0.4956 - val_loss: ...``"""
    parts = [
        f"Epoch {epoch}/{epochs}",
        f"{metrics['seconds']:.1f}s",
        f"{metrics['ms_per_sample']:.3f} ms/sample",
    ]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if key in metrics:
            parts.append(f"{key}: {metrics[key]:.4f}")
    return " - ".join(parts)
